"""What the engine and the scheduler tell the telemetry actor: spans that ended.

Sending never waits: :class:`SpanOutbox` offers a message with ``send_nowait`` and, when the
actor's mailbox is full (the exporter is behind), drops it and counts — telemetry never slows
the work it describes. The first drop is logged once, as a warning.
"""

from __future__ import annotations

import logging
import marshal
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, BinaryIO

import trio
from foundry.kernel.core.records import Event, ExecutionRecord

log = logging.getLogger("foundry.telemetry")

AttributeValue = str | int | float | bool
Attributes = tuple[tuple[str, AttributeValue], ...]


@dataclass(frozen=True, slots=True)
class SpanEnded:
    """One finished span. Ids are W3C hex (``core.tracecontext``); ``parent_span_id`` "" for a
    trace's first span. ``kind`` is an OpenTelemetry SpanKind name in lower case (internal,
    client, ...); times are nanoseconds since the Unix epoch."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: str
    start_ns: int
    end_ns: int
    status_ok: bool
    attributes: Attributes = ()
    error: str = ""  # the status description of a failed span


@dataclass(frozen=True, slots=True)
class ChainEnded:
    """A chain whose records are committed: the actor turns it into spans (the workflow, each
    event, each block execution), so the engine's part is one small message per chain."""

    events: tuple[Event, ...]  # the root first
    executions: tuple[ExecutionRecord, ...]
    is_workflow: bool  # some block sinks the root's type
    state: str  # completed or failed
    error: str
    completed_at: datetime


@dataclass(frozen=True, slots=True)
class StepAttemptEnded:
    """One attempt of a FleetForge step, finished either way: a span under its run's."""

    trace_id: str
    span_id: str
    parent_span_id: str  # the run's span
    run_id: str
    step_id: str
    step_type: str
    attempt: int
    error: str  # "" when it succeeded
    started_at: datetime
    completed_at: datetime
    model: str  # as the step asked for it ("provider:model" or a bare name), "" if none
    output: Any  # the step's frozen output (an llm step's names its provider and model)
    usage: tuple[int, int, float]  # tokens in, tokens out, cost


@dataclass(frozen=True, slots=True)
class RunEnded:
    """A FleetForge run that reached its end: the trace's root span."""

    trace_id: str
    span_id: str
    parent_span_id: str
    run_id: str
    status: str  # SUCCEEDED, FAILED or CANCELED
    error: str
    created_at: datetime
    completed_at: datetime
    steps: int
    labels: tuple[tuple[str, str], ...] = ()


TelemetryMessage = SpanEnded | ChainEnded | StepAttemptEnded | RunEnded

# --- the exporter process's input (kernel/edge/otel.py) -------------------------------------------
# Frames on its stdin: a 4-byte big-endian length, then a ``marshal``-ed list of span records —
# plain tuples, as cheap to make and write as anything (the same interpreter reads them). A
# record's attributes are two tuples, names and values: spans of one kind share one tuple of
# names, which ``marshal`` writes once a frame.

SpanRecord = tuple[
    str, str, str, str, str, int, int, bool, str, tuple[str, ...], tuple[AttributeValue, ...]
]  # trace id, span id, parent span id, name, kind, start, end, ok, error, names, values
FRAME_HEADER = 4


def span_record(span: SpanEnded) -> SpanRecord:
    """A span as the exporter process reads it."""
    names = tuple(name for name, _ in span.attributes)
    values = tuple(value for _, value in span.attributes)
    return (
        span.trace_id, span.span_id, span.parent_span_id, span.name, span.kind, span.start_ns,
        span.end_ns, span.status_ok, span.error, names, values,
    )  # fmt: skip


def frame(records: list[SpanRecord]) -> bytes:
    data = marshal.dumps(records)
    return len(data).to_bytes(FRAME_HEADER, "big") + data


def read_frames(stream: BinaryIO) -> Iterator[list[SpanRecord]]:
    """The span records a blocking stream carries, a frame at a time, until it ends."""
    while len(header := stream.read(FRAME_HEADER)) == FRAME_HEADER:
        size = int.from_bytes(header, "big")
        data = stream.read(size)
        if len(data) != size:
            return  # cut short: the daemon died while writing it
        records: list[SpanRecord] = marshal.loads(data)
        yield records


class SpanOutbox:
    """A sender's end of the telemetry mailbox that never blocks: a full mailbox drops the
    message and counts it (``dropped``); the first drop logs a warning. Without a channel
    (export off) it is off: senders check :attr:`on` before they build a message.

    ``async with`` closes it: the actor ends once every sender's outbox is closed."""

    __slots__ = ("_channel", "dropped")

    def __init__(self, channel: trio.MemorySendChannel[TelemetryMessage] | None = None) -> None:
        self._channel = channel
        self.dropped = 0

    @property
    def on(self) -> bool:
        return self._channel is not None

    def offer(self, message: TelemetryMessage) -> None:
        if self._channel is None:
            return
        try:
            self._channel.send_nowait(message)
        except trio.WouldBlock:
            self._drop(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the daemon is stopping: nothing more is exported

    def _drop(self, message: TelemetryMessage) -> None:
        self.dropped += 1
        if self.dropped == 1:
            log.warning(
                "OpenTelemetry export is behind: dropping spans (%s); further drops are "
                "counted and reported when the daemon stops",
                type(message).__name__,
            )

    def close(self) -> None:
        if self._channel is None:
            return
        self._channel.close()
        if self.dropped:
            log.warning("OpenTelemetry export: dropped %d message(s) of spans", self.dropped)

    async def __aenter__(self) -> SpanOutbox:
        return self

    async def __aexit__(self, *_: object) -> None:
        self.close()
