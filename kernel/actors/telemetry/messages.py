"""What the engine and the scheduler tell the telemetry actor: spans that ended.

Sending never waits: :class:`SpanOutbox` offers a message with ``send_nowait`` and, when the
actor's mailbox is full (the exporter is behind), drops it and counts — telemetry never slows
the work it describes. The first drop is logged once, as a warning.
"""

from __future__ import annotations

import logging
import marshal
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO, cast

import trio
from foundry.kernel.core.records import Event, ExecutionRecord
from foundry.kernel.core.trace_format import TraceRows, framed_rows, text_bytes

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
    # A workflow's trace rows (``core.records.trace_rows``), which the engine made for its trace
    # file: when there, the chain goes to the exporter as they are (``chain_item``).
    trace: TraceRows | None = None


@dataclass(frozen=True, slots=True)
class TracesStored:
    """Trace files a commit made durable, as the store frames them for its archivist
    (``core.trace_format``): the workflows of that commit, one message for them all. Their rows
    are marshalled already, so the trio thread sends them on as they are; the exporter process
    makes each workflow's spans (``framed_spans``). A file framed as text (a chain a restart
    ended) has no rows and no spans."""

    frames: bytes
    completed: tuple[float, ...]  # each frame's chain end, POSIX seconds


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
    canceled: bool = False  # ended by a cancel (CancelRun, the daemon's stop), ``error`` says so


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


TelemetryMessage = SpanEnded | ChainEnded | TracesStored | StepAttemptEnded | RunEnded

# --- the exporter process's input (kernel/edge/otel.py) -------------------------------------------
# Frames on its stdin: a 4-byte big-endian length, then a ``marshal``-ed list of items (plain
# tuples, as cheap to make and write as anything; the same interpreter reads them). An item is a
# span record (12 fields), a workflow's trace rows (2: ``RowsRecord``), a commit's framed trace
# files (2: ``FramesRecord``, the first is bytes) or a chain record (6). Trace rows are the ones
# the engine made for the chain's trace file (``core.records.trace_rows``) with the chain's end;
# the store frames them for its archivist when it commits the chain, and those frames go to the
# exporter as they are (``TracesStored``): nothing is built per chain on the trio thread, and the
# exporter process turns each into the chain's spans (``rows_spans``). An event no block sinks
# (no rows), or a chain the store could not commit, goes as a chain record instead: its fields as
# they are at hand, times as POSIX seconds, no payloads (``chain_spans``), or, when the engine
# has its rows and they are small, as a ``RowsRecord``.

SpanRecord = tuple[
    str,
    str,
    str,
    str,
    str,
    int,
    int,
    bool,
    str,
    tuple[str, ...],
    tuple[AttributeValue, ...],
    bool,
]  # trace id, span id, parent span id, name, kind, start, end, ok, error, names, values, and
# whether the parent is remote: the caller's, from the traceparent of the Emit of a chain's root
EventFields = tuple[str, str, str, str, str, int, str, bool, str, str, str, float]
# id, type, project, throttle, workflow id, depth, emitted by, throttled, trace id, span id,
# parent span id, occurred at
ExecutionFields = tuple[
    str, str, int, bool, bool, str, bool, int, int, str, float, float, str, str, str, str, str, str
]  # fmt: skip
# block, state, attempts, throttled, success, error, ran a command, exit code, emitted events,
# span id, started, completed; its trigger's id, type, throttle, trace id, span id; workflow id
ChainRecord = tuple[tuple[EventFields, ...], tuple[ExecutionFields, ...], bool, str, str, float]
# events (the root first), executions, is a workflow, state, error, completed at
RowsRecord = tuple[TraceRows, float]  # a workflow's trace rows, its completion (POSIX seconds)
FramesRecord = tuple[bytes, tuple[float, ...]]  # a commit's trace frames, each chain's end
WireItem = SpanRecord | ChainRecord | RowsRecord | FramesRecord
FRAME_HEADER = 4
CHAIN_FIELDS = 6
ROWS_FIELDS = 2
ERROR_CHARS = 1_024  # of an error text a span's status carries
ROWS_BYTES = 16 * 1024  # payloads and block texts a chain's rows may carry to the exporter


def span_record(span: SpanEnded) -> SpanRecord:
    """A span as the exporter process reads it."""
    names = tuple(name for name, _ in span.attributes)
    values = tuple(value for _, value in span.attributes)
    return (
        span.trace_id,
        span.span_id,
        span.parent_span_id,
        span.name,
        span.kind,
        span.start_ns,
        span.end_ns,
        span.status_ok,
        span.error,
        names,
        values,
        False,
    )  # fmt: skip (a run's span has no parent; its steps' parent is the run's)


def chain_item(chain: ChainEnded) -> ChainRecord | RowsRecord:
    """A finished chain as the exporter process reads it (made on the trio thread): its trace
    rows as they are when it has them and they are small, else its fields."""
    rows = chain.trace
    if rows is not None and text_bytes(rows) <= ROWS_BYTES:
        return rows, chain.completed_at.timestamp()
    return chain_record(chain)


def chain_record(chain: ChainEnded) -> ChainRecord:
    """A finished chain as the exporter process reads it (made on the trio thread: fields only)."""
    return (
        tuple(map(_event_fields, chain.events)), tuple(map(_execution_fields, chain.executions)),
        chain.is_workflow, chain.state, chain.error[:ERROR_CHARS], chain.completed_at.timestamp(),
    )  # fmt: skip


def _event_fields(e: Event) -> EventFields:
    # ``_value_``: the throttle's text without ``.value``'s descriptor (a StrEnum is no str to
    # marshal); ``timestamp()`` is exact to the microsecond once rounded (``_ns``).
    return (
        e.id, e.event_type, e.project, e.throttle._value_, e.workflow_id, e.depth, e.emitted_by,
        e.throttled, e.trace_id, e.span_id, e.parent_span_id, e.occurred_at.timestamp(),
    )  # fmt: skip


def _execution_fields(x: ExecutionRecord) -> ExecutionFields:
    trigger = x.trigger
    return (
        x.block_name, x.state, x.attempts, x.throttled, x.success,
        "" if x.success else x.summary[:ERROR_CHARS], x.ran_command, x.exit_code, len(x.emitted),
        x.span_id, x.started_at.timestamp(), x.completed_at.timestamp(), trigger.id,
        trigger.event_type, trigger.throttle._value_, trigger.trace_id, trigger.span_id,
        x.workflow_id,
    )  # fmt: skip


# The attributes of a chain's spans, by kind: one tuple of names each, shared by all its spans.
WORKFLOW_ATTRIBUTES = (
    "foundry.workflow.id", "foundry.workflow.type", "foundry.workflow.state", "foundry.project",
    "foundry.throttle", "foundry.workflow.events", "foundry.workflow.block_executions",
)  # fmt: skip
EVENT_ATTRIBUTES = (
    "foundry.event.id", "foundry.event.type", "foundry.project", "foundry.throttle",
    "foundry.workflow.id", "foundry.event.depth",
)  # fmt: skip
EMITTED_ATTRIBUTES = (*EVENT_ATTRIBUTES, "foundry.event.emitted_by", "foundry.event.throttled")
EXECUTION_ATTRIBUTES = (
    "foundry.block.name", "foundry.block.state", "foundry.block.attempts",
    "foundry.block.throttled", "foundry.throttle", "foundry.event.id", "foundry.event.type",
    "foundry.workflow.id", "foundry.block.emitted",
)  # fmt: skip
COMMAND_ATTRIBUTES = (*EXECUTION_ATTRIBUTES, "foundry.block.exit_code")


def span_records(items: Iterable[WireItem]) -> Iterator[SpanRecord]:
    """The spans of a frame's items (the exporter process's side)."""
    for item in items:
        if len(item) == ROWS_FIELDS:
            if isinstance(item[0], bytes):
                yield from framed_spans(item)  # narrowed: only a FramesRecord starts so
            else:
                yield from rows_spans(cast(RowsRecord, item))
        elif len(item) == CHAIN_FIELDS:
            yield from chain_spans(cast(ChainRecord, item))
        else:
            yield cast(SpanRecord, item)


def framed_spans(item: FramesRecord) -> Iterator[SpanRecord]:
    """The spans of the workflows a commit's trace frames hold (text frames have none)."""
    blob, completed = item
    for rows, end in zip(framed_rows(blob), completed, strict=True):
        if rows is not None:
            yield from rows_spans((rows, end))


def rows_spans(item: RowsRecord) -> Iterator[SpanRecord]:
    """The spans of a workflow's trace rows (``trace_format``'s columns): the same spans as its
    chain record's (``chain_spans``)."""
    (events, executions, _, workflow, state, error), completed = item
    root, *emitted = events
    failed = state == "failed"
    values: tuple[AttributeValue, ...] = (
        root[0], root[1], state, root[2], root[5], len(events), len(executions),
    )  # fmt: skip
    yield (
        root[6], root[12], root[13], f"workflow {root[1]}", "internal", stamp_ns(root[3]),
        _ns(completed), not failed, error[:ERROR_CHARS] if failed else "", WORKFLOW_ATTRIBUTES,
        values, bool(root[13]),
    )  # fmt: skip
    for event in emitted:
        (id_, type_, project, stamp, _, throttle, trace_id, _, _, emitted_by, depth, throttled,
         span_id, parent_span_id) = event  # fmt: skip
        yield _point_span(
            stamp_ns(stamp), id_, type_, project, throttle, workflow, depth, emitted_by,
            throttled, trace_id, span_id, parent_span_id,
        )  # fmt: skip
    triggers = {event[0]: event for event in events}
    for x in executions:
        (name, trigger_id, success, summary, emitted_ids, _, _, exit_code, _, _, _, block_state,
         throttled, attempts, started, ended, span_id, trigger_span) = x  # fmt: skip
        trigger = triggers.get(trigger_id)  # an event of the chain (else: its root's trace)
        if trigger is None:
            trigger = ("", "", "", "", "", root[5], root[6])
        trigger_type, throttle, trace_id = trigger[1], trigger[5], trigger[6]
        values = (
            name, block_state, attempts, throttled, throttle, trigger_id, trigger_type, workflow,
            len(emitted_ids),
        )  # fmt: skip
        names: tuple[str, ...] = EXECUTION_ATTRIBUTES
        if exit_code is not None:  # it ran a command (the trace file's exit code is not null)
            names, values = COMMAND_ATTRIBUTES, (*values, exit_code)
        yield (
            trace_id, span_id, trigger_span, f"block {name}", "internal", stamp_ns(started),
            stamp_ns(ended), success, "" if success else summary[:ERROR_CHARS], names, values,
            False,
        )  # fmt: skip


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def stamp_ns(stamp: str) -> int:
    """Nanoseconds since the epoch of a trace row's time (``core.ids.rfc3339`` or
    ``occurred_stamp``: ISO 8601 with its offset, to the microsecond)."""
    return (datetime.fromisoformat(stamp) - _EPOCH) // _MICROSECOND * 1_000


def chain_spans(chain: ChainRecord) -> Iterator[SpanRecord]:
    """The spans of a finished chain: its workflow (or, for an event no block sinks, that event),
    then every other event and every block execution (README, *OpenTelemetry export*)."""
    events, executions, is_workflow, *_ = chain
    root, *emitted = events
    if is_workflow:
        yield _workflow_span(root, chain)
    else:  # no workflow: its id is no workflow's (Emit answers none, Status knows none)
        yield _event_span((*root[:4], "", *root[5:]), remote_parent=bool(root[10]))
    yield from map(_event_span, emitted)
    yield from map(_execution_span, executions)


def _ns(seconds: float) -> int:
    """Nanoseconds since the epoch of POSIX seconds made of a microsecond clock: rounding to
    the microsecond undoes the float's error (under 0.5 µs until 2106, 2**32 seconds)."""
    return round(seconds * 1e6) * 1_000


def _workflow_span(root: EventFields, chain: ChainRecord) -> SpanRecord:
    events, executions, _, state, error, completed = chain
    failed = state == "failed"
    values = (root[0], root[1], state, root[2], root[3], len(events), len(executions))
    return (
        root[8], root[9], root[10], f"workflow {root[1]}", "internal", _ns(root[11]),
        _ns(completed), not failed, error if failed else "", WORKFLOW_ATTRIBUTES, values,
        bool(root[10]),
    )  # fmt: skip


def _event_span(event: EventFields, remote_parent: bool = False) -> SpanRecord:
    (id_, type_, project, throttle, workflow, depth, emitted_by, throttled, trace_id, span_id,
     parent_span_id, occurred) = event  # fmt: skip
    return _point_span(
        _ns(occurred), id_, type_, project, throttle, workflow, depth, emitted_by, throttled,
        trace_id, span_id, parent_span_id, remote_parent,
    )  # fmt: skip


def _point_span(
    at: int,
    id_: str,
    type_: str,
    project: str,
    throttle: str,
    workflow: str,
    depth: int,
    emitted_by: str,
    throttled: bool,
    trace_id: str,
    span_id: str,
    parent_span_id: str,
    remote_parent: bool = False,
) -> SpanRecord:
    """An event: a point in time (``at``, ns), child of the block execution that emitted it (a
    root no block sinks: of the caller's span, ``remote_parent``)."""
    values: tuple[AttributeValue, ...] = (id_, type_, project, throttle, workflow, depth)
    names: tuple[str, ...] = EVENT_ATTRIBUTES
    if emitted_by:
        names, values = EMITTED_ATTRIBUTES, (*values, emitted_by, throttled)
    return (
        trace_id, span_id, parent_span_id, f"event {type_}", "internal", at, at, True, "",
        names, values, remote_parent,
    )  # fmt: skip


def _execution_span(execution: ExecutionFields) -> SpanRecord:
    """A block's execution on one event, all its attempts; child of the trigger's span. The exit
    code is there when the block ran a command (as the trace file's is not null)."""
    (name, state, attempts, throttled, success, error, ran_command, exit_code, emitted, span_id,
     started, completed, trigger_id, trigger_type, throttle, trace_id, trigger_span,
     workflow) = execution  # fmt: skip
    values: tuple[AttributeValue, ...] = (
        name, state, attempts, throttled, throttle, trigger_id, trigger_type, workflow, emitted,
    )  # fmt: skip
    names: tuple[str, ...] = EXECUTION_ATTRIBUTES
    if ran_command:
        names, values = COMMAND_ATTRIBUTES, (*values, exit_code)
    return (
        trace_id, span_id, trigger_span, f"block {name}", "internal", _ns(started),
        _ns(completed), success, error, names, values, False,
    )  # fmt: skip


def frame(items: list[WireItem]) -> bytes:
    data = marshal.dumps(items)
    return len(data).to_bytes(FRAME_HEADER, "big") + data


def read_frames(stream: BinaryIO) -> Iterator[list[WireItem]]:
    """The items a blocking stream carries, a frame at a time, until it ends."""
    while len(header := stream.read(FRAME_HEADER)) == FRAME_HEADER:
        size = int.from_bytes(header, "big")
        data = stream.read(size)
        if len(data) != size:
            return  # cut short: the daemon died while writing it
        items: list[WireItem] = marshal.loads(data)
        yield items


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
