"""What the engine records: events and block executions, immutable once made, and their trace form
(the file layout of the public Foundry daemon, plus a few extra keys)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar, cast

from foundry.kernel.core.ids import occurred_stamp, rfc3339
from foundry.kernel.core.throttle import Throttle
from foundry.kernel.core.trace_format import EventRow, ExecutionRow, TraceRows

_SCALARS = (str, int, float, bool, type(None))
# The last this many characters of a command's output are recorded, for a block execution as for
# a step attempt: a 60 MB output was stored whole, and its chain's Trace refused for good.
RAW_OUTPUT_CHARS = 65_536


_I64_MIN, _U64_MAX = -(2**63), 2**64 - 1


def decoded(payload: Mapping[str, Any], payload_json: str) -> dict[str, Any]:
    """``json.loads(payload_json)``, where ``payload_json`` is ``ids.payload_json_of(payload)``:
    a dict with text keys and values that JSON gives back as they are (text, booleans, null,
    floats, integers in serde_json's range) is copied (half the cost); anything else is decoded."""
    if type(payload) is dict:
        for key, value in payload.items():
            kind = type(value)
            if type(key) is not str or not (
                kind is str
                or kind is bool
                or value is None
                or kind is float
                or (kind is int and _I64_MIN <= value <= _U64_MAX)
            ):
                break
        else:
            return dict(sorted(payload.items()))  # in the JSON's order: keys sorted
    copy: dict[str, Any] = json.loads(payload_json)
    return copy


def own_copy(payload: Mapping[str, Any], payload_json: str) -> dict[str, Any]:
    """A copy of a recorded payload that its receiver may change freely: a shallow copy when
    every value is a scalar (most payloads; ~10x cheaper), else a decode of the recorded JSON."""
    if all(isinstance(value, _SCALARS) for value in payload.values()):
        return dict(payload)
    copy: dict[str, Any] = json.loads(payload_json)
    return copy


@dataclass(frozen=True, slots=True)
class Event:
    id: str
    event_type: str
    project: str
    occurred_at: datetime
    recorded_at: datetime
    throttle: Throttle
    workflow_id: str  # the root event's id: the chain, and the workflow when blocks sink it
    payload: Mapping[str, Any]
    payload_json: str
    depth: int = 0
    parent_id: str = ""
    emitted_by: str = ""
    throttled: bool = False  # recorded but withheld from downstream blocks
    stamp: str = ""  # occurred_at in RFC 3339, when already computed
    # W3C trace context (core.tracecontext): the root's trace, this event's span, and the span
    # of the block execution that emitted it (for a root: the caller's span, if it sent one).
    trace_id: str = ""
    span_id: str = ""
    parent_span_id: str = ""

    tap_topic = "events"

    @property
    def tap_key(self) -> str:
        return self.project

    def trace_row(self) -> EventRow:
        """This event as its trace file shows it (see ``trace_format.render``)."""
        stamp = self.stamp or rfc3339(self.occurred_at)
        recorded = (
            stamp if self.recorded_at == self.occurred_at else occurred_stamp(self.recorded_at)
        )
        return (
            self.id, self.event_type, self.project, stamp, recorded, self.throttle.value,
            self.trace_id, self.payload_json, self.parent_id, self.emitted_by, self.depth,
            self.throttled, self.span_id, self.parent_span_id,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class ExecutionRecord:
    """One block's execution on one event, across all its attempts: a span (``span_id``) in its
    trigger's trace, child of the trigger event's span."""

    workflow_id: str
    block_name: str
    trigger: Event
    state: str  # completed, skipped or failed
    success: bool
    summary: str
    emitted: tuple[Event, ...]
    started_at: datetime
    completed_at: datetime
    duration_ms: int
    raw_output: str
    exit_code: int
    audit_artifacts: tuple[str, ...]
    attempts: int
    throttled: bool
    span_id: str = ""
    ran_command: bool = True  # False: the trace shows raw_output and exit_code as null

    @property
    def trace_id(self) -> str:
        return self.trigger.trace_id

    @property
    def parent_span_id(self) -> str:
        return self.trigger.span_id

    def trace_row(self) -> ExecutionRow:
        """This execution as its trace file shows it (see ``trace_format.render``): its times in
        the form of every other time there, upstream's (chrono's AutoSi: ``.309Z``, not
        ``.309000Z``)."""
        return (
            self.block_name, self.trigger.id, self.success, self.summary,
            tuple([e.id for e in self.emitted]), self.duration_ms,
            *((self.raw_output, self.exit_code) if self.ran_command else (None, None)),
            self.trigger.payload_json, tuple([e.payload_json for e in self.emitted]),
            self.audit_artifacts, self.state, self.throttled, self.attempts,
            occurred_stamp(self.started_at), occurred_stamp(self.completed_at), self.span_id,
            self.trigger.span_id,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class FinishedChain:
    """A chain that ended: its workflow row and the trace document written to disk."""

    workflow_id: str
    workflow_type: str
    project: str
    throttle: Throttle
    state: str  # completed or failed
    error: str
    started_at: datetime
    completed_at: datetime
    event_count: int
    block_count: int
    # The trace file: the chain's rows (the archivist renders them), or its text; None for an
    # event no block sinks, which has no file.
    trace: TraceRows | str | None
    trace_id: str = ""  # W3C: the root event's trace


T = TypeVar("T")


def quick(cls: type[T]) -> type[T]:
    """``cls(...)`` for a frozen slots dataclass, ~4x cheaper, for the engine's hot path: a
    frozen ``__init__`` sets each field with ``object.__setattr__`` (~110 ns a field measured,
    1.8 µs for an event); this fills them as a mutable twin with the same slots does (plain
    stores), then makes the instance a ``cls`` — frozen from then on, equal to, hashing and
    pickling as ``cls(...)``'s. Typed as ``cls``, so its calls are checked as ``cls(...)``'s."""
    twin = dataclasses.make_dataclass(
        f"_{cls.__name__}Draft",
        [(f.name, f.type, _same_default(f)) for f in dataclasses.fields(cast(Any, cls))],
        slots=True,
        eq=False,
        repr=False,
    )
    if getattr(twin, "__slots__", None) != getattr(cls, "__slots__", ()):
        raise TypeError(f"{cls.__name__} is not a slots dataclass of its fields alone")

    def make(*args: Any, **kwargs: Any) -> T:
        made = twin(*args, **kwargs)
        made.__class__ = cls  # same slots: CPython lets the class change
        return cast(T, made)

    return cast(type[T], make)


def _same_default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return dataclasses.field(default=f.default)
    if f.default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=f.default_factory)
    return dataclasses.field()


new_event = quick(Event)
new_execution = quick(ExecutionRecord)
new_finished = quick(FinishedChain)


def trace_rows(
    events: Iterable[Event],
    executions: Iterable[ExecutionRecord],
    total_ms: int,
    *,
    workflow_id: str,
    state: str,
    error: str,
) -> TraceRows:
    """A chain's trace file as rows: ``trace_format.render`` makes the JSON text of them."""
    return (
        tuple(e.trace_row() for e in events),
        tuple(x.trace_row() for x in executions),
        total_ms,
        workflow_id,
        state,
        error,
    )


def storable(text: str) -> str:
    """Text the store can write. UTF-8 has no lone surrogates (how ``os.listdir`` and
    ``surrogateescape`` carry undecodable bytes), so a block's summary or file name with one would
    fail its chain's commit — the root's with it. They are kept as ``\\udcff`` escapes instead."""
    if text.isascii():
        return text
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()
    return text
