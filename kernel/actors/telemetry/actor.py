"""The telemetry actor: spans out of the daemon, to an OpenTelemetry collector.

Started by the supervisor only when ``[otel] endpoint`` is set. The engine, the scheduler and
the store offer it what ended (a chain, a step attempt, a run, a commit's trace files:
``messages``) and never wait for it; it turns those into compact records (``spans``, pure: a
commit's workflows are the trace files' frames the store made for its archivist, as they are)
and writes them, a batch of messages per frame, to the exporter
process (``python -m foundry.kernel.edge.otel``), where they become OTLP spans and go out through
the OpenTelemetry SDK's exporter, off this process's GIL. A slow exporter fills the pipe, then
this mailbox, and then senders drop and count: nothing here can slow the engine.

An exporter that dies is started again (``Telemetry.run``): a crash or the OOM killer stopped
the export for the rest of the daemon's life, with one line in its log.

Stop: once every sender's outbox is closed (the engine's, the scheduler's and the store's),
the exporter's stdin closes; it flushes for up to ``FLUSH_SECONDS`` and exits (or is killed).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import trio
from foundry.kernel.actors.mailbox import take_batch
from foundry.kernel.actors.pipes import widen
from foundry.kernel.actors.telemetry.messages import TelemetryMessage, WireItem, frame
from foundry.kernel.actors.telemetry.spans import wire_items
from foundry.kernel.config import OtelConfig

log = logging.getLogger("foundry.telemetry")
exporter_log = logging.getLogger("foundry.otel")  # what the exporter process logs

EXPORTER = "foundry.kernel.edge.otel"
FLUSH_SECONDS = 2.0  # the exporter's (kernel/edge/otel.py)
EXIT_SECONDS = FLUSH_SECONDS + 3.0  # then it is killed
MAILBOX_BATCH = 512  # messages per frame at most
GATHER_SECONDS = 0.05  # how long the first message of a frame waits for others
STOP_POLL_SECONDS = 0.2  # how often the forwarder looks whether the daemon is stopping
RESTART_FIRST = 1.0  # seconds from an exporter's death to its restart, doubling while it dies young
RESTART_MOST = 60.0  # ...to this; an exporter that lived this long starts over at RESTART_FIRST


class Telemetry:
    def __init__(
        self, inbox: trio.MemoryReceiveChannel[TelemetryMessage], config: OtelConfig
    ) -> None:
        self._inbox, self._config = inbox, config
        self.written = 0  # span and chain records handed to the exporter
        self._lost = 0  # messages of spans a dying exporter's pipe refused
        self._holding = 0  # messages taken from the inbox and not yet written

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the exporter until the daemon stops; one that dies (a crash, the OOM killer) is
        started again, ``RESTART_FIRST`` seconds later, doubling to ``RESTART_MOST`` while they
        keep dying young — the spans of that wait are dropped, and counted."""
        process = await self._open()
        log.info("exporting spans to %s (%s)", self._config.endpoint, self._config.protocol)
        task_status.started()
        failures = 0
        async with self._inbox:
            while True:
                started = trio.current_time()
                if await self._export_with(process):
                    return
                lived = trio.current_time() - started
                failures = 1 if lived >= RESTART_MOST else failures + 1
                delay = min(RESTART_MOST, RESTART_FIRST * 2 ** (failures - 1))
                log.error("the OpenTelemetry exporter stopped (exit code %s): started again in "
                          "%.0f s, spans until then are dropped", process.returncode,
                          delay)  # fmt: skip
                dropped, stopping = await _drop_for(self._inbox, delay)
                dropped, self._lost = dropped + self._lost, 0
                if dropped:
                    log.warning("%d message(s) of spans not exported while the OpenTelemetry "
                                "exporter was down", dropped)  # fmt: skip
                if stopping:
                    return
                process = await self._open()

    async def _open(self) -> trio.Process:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", EXPORTER, json.dumps(vars(self._config))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,  # its log lines, for ours
            start_new_session=True,  # its stop is ours: closing stdin, not a terminal's Ctrl-C
            # gRPC's C core writes to stderr (the daemon's log) a line per failed handshake,
            # unformatted: ten in 12 s for a TLS mismatch. The exporter's one warning says it.
            env={**os.environ, "GRPC_VERBOSITY": os.environ.get("GRPC_VERBOSITY") or "NONE"},
        )
        assert process.stdin is not None
        widen(process.stdin)  # a frame is one write, not one per 64 KiB and a wait for each
        return process

    async def _export_with(self, process: trio.Process) -> bool:
        """Forward to ``process`` until the daemon stops (True) or the exporter dies (False)."""
        assert process.stdin is not None
        assert process.stdout is not None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_relay_log, process.stdout)
                async with process.stdin:
                    ended = await self._forward_until_stuck(process)
                    if ended is None:
                        process.kill()  # it takes nothing in: no flush to wait for either
                await _stop(process)  # it flushes, logs its totals and exits: its log ends
        except BaseException:
            process.kill()  # cancelled (a second signal stops at once) or failed: no flush
            raise
        finally:
            with trio.CancelScope(shield=True):
                await process.wait()
        return ended is not False

    async def _forward_until_stuck(self, process: trio.Process) -> bool | None:
        """:meth:`_forward`, bounded once the daemon stops (every sender closed its end): a
        write to an exporter that reads nothing (stopped, starved of CPU) held the stop for
        good. It gets ``FLUSH_SECONDS`` from then to take what is queued; None if it did not
        (what was left is dropped, said in one line), else what :meth:`_forward` says — False
        as soon as the exporter exits (not at the next write, maybe minutes later)."""
        assert process.stdin is not None
        exited = False
        async with trio.open_nursery() as nursery:
            forwarding = trio.CancelScope()

            async def bound_at_stop() -> None:
                # (no event tells when the last sender's clone closes: its count does)
                while self._inbox.statistics().open_send_channels:  # noqa: ASYNC110
                    await trio.sleep(STOP_POLL_SECONDS)
                forwarding.deadline = trio.current_time() + FLUSH_SECONDS

            async def watch_exit() -> None:
                nonlocal exited
                await process.wait()
                exited = True
                forwarding.cancel()

            nursery.start_soon(bound_at_stop)
            nursery.start_soon(watch_exit)
            ended = False
            with forwarding:
                ended = await self._forward(process.stdin)
            nursery.cancel_scope.cancel()
        if exited and (ended is not True or forwarding.cancelled_caught):
            self._lost += self._holding  # (taken, and gathering more, as it died)
            self._holding = 0
            return False  # it died: started again
        if not forwarding.cancelled_caught:
            return ended
        left = sum(1 for _ in _drained(self._inbox))
        log.warning("the OpenTelemetry exporter took nothing for %.0f s after the stop began: "
                    "killed, %d message(s) of spans not exported", FLUSH_SECONDS,
                    left + 1)  # fmt: skip
        return None

    async def _forward(self, exporter: trio.abc.SendStream) -> bool:
        """Write what comes in to the exporter: True once every sender closed its end (the daemon
        stops), False if the exporter stopped reading (it exited)."""
        while batch := await take_batch(self._inbox, MAILBOX_BATCH):
            # What comes in the next moment goes in the same frame: one write, one wake-up of
            # this task, for many chains (the exporter batches for seconds anyway).
            self._holding = len(batch)
            await trio.sleep(GATHER_SECONDS)
            batch += _waiting(self._inbox, MAILBOX_BATCH)
            items, self._holding = _items(batch), len(batch)
            del batch
            if not items:
                self._holding = 0
                continue
            try:
                await exporter.send_all(frame(items))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._lost += self._holding  # counted with those of the wait for a new exporter
                self._holding = 0
                return False
            self._holding = 0
            self.written += len(items)
        return True


async def _drop_for(
    inbox: trio.MemoryReceiveChannel[TelemetryMessage], seconds: float
) -> tuple[int, bool]:
    """Take and drop what comes in for ``seconds`` (senders never wait on us, exporter or not):
    how many messages, and whether every sender closed its end meanwhile (the daemon stops)."""
    dropped = 0
    with trio.move_on_after(seconds):
        async for _ in inbox:
            dropped += 1
        return dropped, True
    return dropped, False


def _drained(inbox: trio.MemoryReceiveChannel[TelemetryMessage]) -> list[TelemetryMessage]:
    """What is left in a closed inbox."""
    return _waiting(inbox, sys.maxsize)


def _waiting(
    inbox: trio.MemoryReceiveChannel[TelemetryMessage], limit: int
) -> list[TelemetryMessage]:
    found: list[TelemetryMessage] = []
    while len(found) < limit:
        try:
            found.append(inbox.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            break
    return found


def _items(batch: list[TelemetryMessage]) -> list[WireItem]:
    items: list[WireItem] = []
    for message in batch:
        try:
            items.extend(wire_items(message))
        except Exception:  # a bug in one span must not stop the export of the others
            log.exception("could not make spans of a %s", type(message).__name__)
    return items


async def _relay_log(stream: trio.abc.ReceiveStream) -> None:
    """The exporter's log records (JSON lines on its stdout), logged here: they land in the
    daemon's log, in its format."""
    pending = b""
    async for chunk in stream:
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            _log_line(line)


def _log_line(line: bytes) -> None:
    try:
        record = json.loads(line)
        level, message = int(record["level"]), str(record["message"])
    except (ValueError, TypeError, KeyError):
        level, message = logging.WARNING, line[:300].decode(errors="replace")
    exporter_log.log(level, "%s", message)


async def _stop(process: trio.Process) -> None:
    with trio.move_on_after(EXIT_SECONDS):
        await process.wait()
        return
    log.warning("the OpenTelemetry exporter did not stop in %.0f s: killed", EXIT_SECONDS)
    process.kill()
    await process.wait()
