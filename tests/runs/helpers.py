"""Small synchronous helpers over the grpclib client (``Daemon.call``) for the runs suite; the
polls are built on ``tests.helpers.wait_until``."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable
from typing import Any

import pytest
from foundry.proto import runtime_api as api
from foundry.proto.generated.google.protobuf import Struct
from grpclib import GRPCError
from grpclib.const import Status

from tests.daemon import Daemon
from tests.helpers import grpc_error, wait_until

TERMINAL = {api.RunStatus.SUCCEEDED, api.RunStatus.FAILED, api.RunStatus.CANCELED}


def dag(*steps: dict[str, Any]) -> str:
    return json.dumps({"steps": list(steps)})


def spec(
    dag_json: str,
    *,
    inputs: dict[str, Any] | None = None,
    seed: int = 0,
    labels: dict[str, str] | None = None,
    breakpoints: Iterable[str] = (),
) -> api.RunSpec:
    return api.RunSpec(
        dag_json=dag_json,
        inputs=Struct.from_dict(inputs or {}),
        seed=seed,
        labels=labels or {},
        breakpoints=list(breakpoints),
    )


def submit(daemon: Daemon, dag_json: str, *, key: str = "", **options: Any) -> str:
    request = api.SubmitRunRequest(spec=spec(dag_json, **options), idempotency_key=key)
    reply = daemon.call(lambda _, rt: rt.submit_run(request))
    assert reply.run_id
    return str(reply.run_id)


def get_run(daemon: Daemon, run_id: str) -> api.RunDetail:
    reply = daemon.call(lambda _, rt: rt.get_run(api.GetRunRequest(run_id=run_id)))
    assert reply.run is not None
    return reply.run


def wait_for(
    daemon: Daemon,
    run_id: str,
    until: Callable[[api.RunDetail], bool],
    *,
    timeout: float = 20.0,
    what: str = "",
) -> api.RunDetail:
    """Poll GetRun until ``until(run)``; fail with the last state after ``timeout`` seconds."""
    last: list[api.RunDetail] = []

    def check() -> api.RunDetail | None:
        last[:] = [get_run(daemon, run_id)]
        return last[0] if until(last[0]) else None

    def describe() -> str:
        states = {s.step_id: (s.status, s.attempt) for s in last[0].steps}
        return f"run {run_id} to get {what or until}: {last[0].status.name} {states}"

    return wait_until(check, what=describe, timeout=timeout, interval=0.03)


def wait_status(
    daemon: Daemon, run_id: str, *statuses: api.RunStatus, timeout: float = 20.0
) -> api.RunDetail:
    wanted = set(statuses) or TERMINAL
    return wait_for(
        daemon,
        run_id,
        lambda r: r.status in wanted,
        timeout=timeout,
        what=" or ".join(s.name for s in wanted),
    )


def wait_done(daemon: Daemon, run_id: str, timeout: float = 30.0) -> api.RunDetail:
    return wait_status(daemon, run_id, *TERMINAL, timeout=timeout)


def run_and_wait(daemon: Daemon, dag_json: str, **options: Any) -> api.RunDetail:
    return wait_done(daemon, submit(daemon, dag_json, **options))


def steps(run: api.RunDetail) -> dict[str, api.StepSummary]:
    return {s.step_id: s for s in run.steps}


def value(v: Any) -> Any:
    """A google.protobuf.Value as plain JSON (None for an unset one)."""
    return None if v is None else v.to_dict()


def outputs(run: api.RunDetail) -> dict[str, Any]:
    return {s.step_id: value(s.output) for s in run.steps}


def event_dict(event: api.RunEvent) -> dict[str, Any]:
    return {
        "run_id": event.run_id,
        "step_id": event.step_id,
        "kind": event.kind,
        "payload": value(event.payload),
        "occurred_at": event.occurred_at,
    }


async def _tap(runtime: Any, run_id: str, limit: int | None) -> list[dict[str, Any]]:
    events = []
    async for event in runtime.tap_run(api.TapRunRequest(run_id=run_id)):
        events.append(event_dict(event))
        if limit is not None and len(events) >= limit:
            break
    return events


def tap(
    daemon: Daemon, run_id: str, *, timeout: float = 30.0, limit: int | None = None
) -> list[dict[str, Any]]:
    """Every event TapRun streams for ``run_id`` until the stream ends (or ``limit`` events)."""
    return daemon.call(lambda _, rt: asyncio.wait_for(_tap(rt, run_id, limit), timeout))


# Run events of attestations (README.md, "Attestations"): left out of ``kinds``, which the tests
# of run mechanics compare with exact sequences.
ATTESTATION_KINDS = frozenset({"attested", "capability_granted"})


def kinds(events: list[dict[str, Any]], step_id: str | None = None) -> list[str]:
    return [
        e["kind"]
        for e in events
        if (step_id is None or e["step_id"] == step_id) and e["kind"] not in ATTESTATION_KINDS
    ]


def of_kind(
    events: list[dict[str, Any]], kind: str, step_id: str | None = None
) -> list[dict[str, Any]]:
    return [e for e in events if e["kind"] == kind and (step_id is None or e["step_id"] == step_id)]


def rpc_error(daemon: Daemon, call: Callable[[Any], Any]) -> GRPCError:
    """``tests.helpers.grpc_error`` for a ``call(runtime_stub)``."""
    return grpc_error(daemon, lambda _, runtime: call(runtime))


def assert_error(error: GRPCError, status: Status, *needles: str) -> None:
    assert error.status == status, (error.status, error.message)
    for needle in needles:
        assert needle in (error.message or ""), (needle, error.message)


def history(
    daemon: Daemon,
    run_id: str,
    until: Callable[[list[dict[str, Any]]], bool],
    *,
    settle: float = 0.2,
    timeout: float = 20.0,
) -> list[dict[str, Any]]:
    """The events of a live (e.g. paused) run so far, whose TapRun does not end: read until
    ``until(events)`` holds (failing after ``timeout`` s), then until nothing more arrives for
    ``settle`` s."""

    async def read_all(_: Any, runtime: Any) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        stream = runtime.tap_run(api.TapRunRequest(run_id=run_id)).__aiter__()
        deadline = time.monotonic() + timeout
        while True:
            waiting = settle if until(events) else deadline - time.monotonic()
            try:
                event = await asyncio.wait_for(stream.__anext__(), max(waiting, 0.001))
            except (TimeoutError, StopAsyncIteration):
                if until(events):
                    return events
                pytest.fail(f"run {run_id}: the events never matched {until}: {kinds(events)}")
            events.append(event_dict(event))

    return daemon.call(read_all)


def paused_at(step_id: str) -> Callable[[list[dict[str, Any]]], bool]:
    """``history`` predicate: the run paused before ``step_id``."""
    return lambda events: any(e["kind"] == "run_paused" and e["step_id"] == step_id for e in events)


# The README's example run: an llm outline, a word-count tool, a transform report.
RESEARCH = dag(
    {
        "id": "outline",
        "type": "llm",
        "model": "mock:small",
        "inputs": {"prompt": "Outline a note about ${inputs.topic}"},
    },
    {
        "id": "count",
        "type": "tool",
        "inputs": {"tool": "word_count", "args": {"text": "${steps.outline.output.text}"}},
    },
    {
        "id": "report",
        "type": "transform",
        "inputs": {
            "merge": [{"topic": "${inputs.topic}"}, {"words": "${steps.count.output.words}"}]
        },
    },
)
