"""W3C trace context (https://www.w3.org/TR/trace-context/): ids, their checks, ``traceparent``.

Every event and block execution carries a trace id (32 lowercase hex digits) and a span id (16);
an event's parent span is the block execution that emitted it, an execution's is its trigger
event's. A root event starts a new trace unless its Emit brings one (its ids, else its
``traceparent`` header). A FleetForge run is a trace
and each step attempt a span. Ids come from ``random.getrandbits`` (seeded from ``os.urandom`` and
reseeded after ``fork``): a few hundred nanoseconds each, and unguessable enough for ids that are
not secrets. Pure functions, standard library only.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

TRACE_ID_HEX = 32
SPAN_ID_HEX = 16
_HEX = re.compile(r"[0-9a-f]+")
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_getrandbits = random.getrandbits


class TraceContextError(ValueError):
    """A trace or span id, or a ``traceparent``, that is not valid; the message names the field."""


@dataclass(frozen=True, slots=True)
class SpanContext:
    """Where a span sits: its trace, its own id, and its parent's ("" for a trace's first)."""

    trace_id: str
    span_id: str
    parent_span_id: str = ""

    def child(self) -> SpanContext:
        """A new span under this one, in the same trace."""
        return SpanContext(self.trace_id, new_span_id(), self.span_id)

    def traceparent(self) -> str:
        """This span as a ``traceparent`` header value (sampled)."""
        return traceparent(self.trace_id, self.span_id)


def new_trace_id() -> str:
    """A random trace id: 32 lowercase hex digits, never all zero."""
    return f"{_getrandbits(128) or 1:032x}"


def new_span_id() -> str:
    """A random span id: 16 lowercase hex digits, never all zero."""
    return f"{_getrandbits(64) or 1:016x}"


def new_root() -> SpanContext:
    """The first span of a new trace."""
    return SpanContext(new_trace_id(), new_span_id())


def check_id(value: str, field: str, digits: int) -> str:
    """``value`` when it is a valid id of ``digits`` lowercase hex digits, not all zero; else
    :class:`TraceContextError` naming ``field``."""
    if len(value) != digits or not _HEX.fullmatch(value):
        raise TraceContextError(
            f"{field}: expected {digits} lowercase hex digits, got {value[:80]!r}"
        )
    if value.count("0") == digits:
        raise TraceContextError(f"{field}: an all-zero id is invalid (W3C trace context)")
    return value


def is_trace_id(value: str) -> bool:
    """A valid W3C trace id: 32 lowercase hex digits, not all zero."""
    return len(value) == TRACE_ID_HEX and _valid(value)


def is_span_id(value: str) -> bool:
    """A valid W3C span id: 16 lowercase hex digits, not all zero."""
    return len(value) == SPAN_ID_HEX and _valid(value)


def _valid(value: str) -> bool:
    return bool(_HEX.fullmatch(value)) and value.count("0") != len(value)


def given_context(trace_id: str, span_id: str, parent_span_id: str) -> SpanContext:
    """A root event's span from the ids its Emit brought ("" = not given).

    No trace id: a new trace (span ids without one are refused: they would belong to no trace).
    A trace id without a span id: the event gets a new span in that trace. ``parent_span_id``
    is the caller's span (what a ``traceparent`` header calls its parent-id).
    """
    if not trace_id:
        for name, value in (("span_id", span_id), ("parent_span_id", parent_span_id)):
            if value:
                raise TraceContextError(f"{name}: given without a trace_id")
        return new_root()
    check_id(trace_id, "trace_id", TRACE_ID_HEX)
    if span_id:
        check_id(span_id, "span_id", SPAN_ID_HEX)
    if parent_span_id:
        check_id(parent_span_id, "parent_span_id", SPAN_ID_HEX)
        if parent_span_id == span_id:
            raise TraceContextError("parent_span_id: a span cannot be its own parent")
    return SpanContext(trace_id, span_id or new_span_id(), parent_span_id)


def traceparent(trace_id: str, span_id: str, sampled: bool = True) -> str:
    """A W3C ``traceparent`` value: ``00-<trace id>-<span id>-<flags>``."""
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}"


def parse_traceparent(value: str, field: str = "TRACEPARENT") -> tuple[str, str]:
    """``(trace_id, parent span id)`` of a ``traceparent`` value; :class:`TraceContextError`
    naming ``field`` when it is not one. Version ``00`` must have exactly four parts; a later
    version may append more (the spec's forward compatibility); ``ff`` is invalid."""
    text = value.strip()
    match = _TRACEPARENT.fullmatch(text)
    if match is None:
        raise TraceContextError(
            f"{field}: expected 00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>, "
            f"got {value[:80]!r}"
        )
    version, trace_id, span_id, _flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest):
        raise TraceContextError(f"{field}: version {version} does not allow {text[:80]!r}")
    check_id(trace_id, f"{field} trace id", TRACE_ID_HEX)
    check_id(span_id, f"{field} parent id", SPAN_ID_HEX)
    return trace_id, span_id


def caller_traceparent(values: Sequence[str]) -> tuple[str, str] | None:
    """``(trace_id, parent span id)`` of the ``traceparent`` header a request came with (gRPC
    metadata or HTTP; ``values``: every one it carried), or None. As the W3C spec has a receiver
    do, a header that is not valid — or given more than once — is ignored, not refused: the
    call starts a new trace (an instrumented proxy's bad header is no error of the caller's)."""
    if len(values) != 1:
        return None
    value = values[0].strip(" \t")  # HTTP's optional whitespace, and no other
    if value != value.strip():  # (``parse_traceparent`` trims any: a \x1c, a \xa0)
        return None
    try:
        return parse_traceparent(value, "traceparent")
    except TraceContextError:
        return None
