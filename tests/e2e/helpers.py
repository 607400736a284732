"""Small helpers of the end-to-end suite: one-shot Foundry RPCs with the grpclib client, polls
built on ``tests.helpers.wait_until``, a live Watch reader, and running the ``foundry`` CLI."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from foundry.proto import foundry_api as api
from grpclib import GRPCError

from tests.daemon import Daemon
from tests.helpers import DEADLINE, wait_until

EVENT_ID = r"^evt_[0-9a-f]{24}$"
FINISHED = ("completed", "failed")


# --- one-shot RPCs (grpclib) --------------------------------------------------------------------


def emit(
    daemon: Daemon,
    event_type: str,
    *,
    project: str = "p",
    payload: Mapping[str, Any] | None = None,
    throttle: api.Throttle = api.Throttle.FULL,
) -> api.EmitResponse:
    request = api.EmitRequest(
        event_type=event_type,
        project=project,
        throttle=throttle,
        payload_json=json.dumps(payload) if payload is not None else "",
    )
    return daemon.call(lambda foundry, _: foundry.emit(request))


def status(daemon: Daemon, workflow_id: str = "") -> list[api.WorkflowStatus]:
    reply = daemon.call(lambda f, _: f.status(api.StatusRequest(workflow_id=workflow_id)))
    return list(reply.workflows)


def trace(daemon: Daemon, event_id: str) -> api.TraceResponse:
    return daemon.call(lambda f, _: f.trace(api.TraceRequest(event_id=event_id)))


def finished(daemon: Daemon, workflow_id: str, timeout: float = DEADLINE) -> api.WorkflowStatus:
    """Poll Status until the workflow completed or failed; returns its status."""

    def check() -> api.WorkflowStatus | None:
        [workflow] = status(daemon, workflow_id)
        return workflow if workflow.state in FINISHED else None

    return wait_until(check, what=f"workflow {workflow_id} to finish", timeout=timeout)


def traced(daemon: Daemon, event_id: str, timeout: float = DEADLINE) -> api.TraceResponse:
    """Poll Trace until the chain's trace is found."""

    def check() -> api.TraceResponse | None:
        reply = trace(daemon, event_id)
        return reply if reply.found else None

    return wait_until(check, what=f"the trace of {event_id}", timeout=timeout)


def block(trace_reply: api.TraceResponse, name: str) -> api.TraceBlockExecution:
    [execution] = [x for x in trace_reply.block_executions if x.block_name == name]
    return execution


# --- a live Watch (grpclib, inside one asyncio.run) -----------------------------------------------

PROBE = "watch_probe"


class Watcher:
    """A Watch stream pumped into a queue by a task; ``async with`` it, then :meth:`sync`.

    The server gives no sign that a subscription is live, so :meth:`sync` emits probe events in
    the watched project until one arrives: every event committed after that is seen.
    """

    def __init__(self, foundry: api.FoundryStub, project: str = "") -> None:
        self.foundry, self.project = foundry, project
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Watcher:
        self._task = asyncio.create_task(self._pump())
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with suppress(asyncio.CancelledError):
            await self._task

    async def _pump(self) -> None:
        try:
            async for response in self.foundry.watch(api.WatchRequest(project=self.project)):
                await self.queue.put(response)
        except GRPCError as exc:
            await self.queue.put(exc)
            return
        await self.queue.put(None)

    async def sync(self, within: float = DEADLINE) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            await self.foundry.emit(api.EmitRequest(event_type=PROBE, project=self.project or "p"))
            with suppress(TimeoutError):
                while True:
                    item = await asyncio.wait_for(self.queue.get(), 0.2)
                    if isinstance(item, api.WatchResponse) and item.event_type == PROBE:
                        return
        raise AssertionError("the Watch subscription never went live")

    async def collect(
        self, done: Callable[[list[api.WatchResponse]], bool], within: float = DEADLINE
    ) -> list[api.WatchResponse]:
        """Events (probes left out) until ``done(events)``; fails after ``within`` seconds."""
        seen: list[api.WatchResponse] = []
        async with asyncio.timeout(within):
            while not done(seen):
                item = await self.queue.get()
                if not isinstance(item, api.WatchResponse):
                    raise AssertionError(f"the Watch stream ended early: {item!r}")
                if item.event_type != PROBE:
                    seen.append(item)
        return seen


# --- processes ------------------------------------------------------------------------------------


def foundry_cli(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """``python -m foundry.kernel.cli ARGS`` (the ``foundry`` entry point) as a subprocess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "foundry.kernel.cli", *args],
        capture_output=True, text=True, env=full_env, timeout=timeout, check=False,
    )  # fmt: skip


@contextmanager
def closed_port() -> Iterator[int]:
    """A local port that refuses connections (bound, never listening) while the block runs."""
    sock = socket.socket()
    try:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]
    finally:
        sock.close()


def kill_pid_file(path: Path) -> None:
    """Kill the process whose id a shell block wrote to ``path`` (an orphan of ``kill -9``)."""
    with suppress(FileNotFoundError, ValueError, ProcessLookupError):
        os.kill(int(path.read_text().strip()), signal.SIGKILL)


def slowest_small_call_during(daemon: Any, work: Callable[[], Any]) -> tuple[Any, float]:
    """``work()``'s result, and the slowest of the Status calls made back to back meanwhile."""
    done: list[Any] = []
    thread = threading.Thread(target=lambda: done.append(work()))
    thread.start()
    slowest = 0.0
    try:
        while thread.is_alive():
            asked = time.monotonic()
            status(daemon)
            slowest = max(slowest, time.monotonic() - asked)
    finally:
        thread.join(120)
    return done[0], slowest
