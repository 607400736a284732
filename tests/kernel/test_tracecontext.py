"""W3C trace context: id generation, the checks an Emit's ids pass, ``traceparent`` both ways,
and how a span's children are made (core/tracecontext.py)."""

from __future__ import annotations

import re

import pytest
from foundry.kernel.core.envpolicy import child_environment
from foundry.kernel.core.tracecontext import (
    SpanContext,
    TraceContextError,
    caller_traceparent,
    given_context,
    is_span_id,
    is_trace_id,
    new_root,
    new_span_id,
    new_trace_id,
    parse_traceparent,
    traceparent,
)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
CALLER = "b7ad6b7169203331"


def test_new_ids_are_lowercase_hex_of_the_right_length_and_differ():
    traces = {new_trace_id() for _ in range(1000)}
    spans = {new_span_id() for _ in range(1000)}
    assert len(traces) == 1000
    assert len(spans) == 1000
    assert all(re.fullmatch(r"[0-9a-f]{32}", t) and is_trace_id(t) for t in traces)
    assert all(re.fullmatch(r"[0-9a-f]{16}", s) and is_span_id(s) for s in spans)


def test_a_root_starts_a_trace_and_children_stay_in_it():
    root = new_root()
    assert root.parent_span_id == ""
    execution = root.child()
    emitted = execution.child()
    assert execution.trace_id == emitted.trace_id == root.trace_id
    assert execution.parent_span_id == root.span_id
    assert emitted.parent_span_id == execution.span_id
    assert len({root.span_id, execution.span_id, emitted.span_id}) == 3


def test_an_emit_without_ids_gets_a_new_trace():
    span = given_context("", "", "")
    assert is_trace_id(span.trace_id)
    assert is_span_id(span.span_id)
    assert span.parent_span_id == ""


def test_an_emit_with_a_trace_joins_it():
    assert given_context(TRACE, SPAN, CALLER) == SpanContext(TRACE, SPAN, CALLER)
    joined = given_context(TRACE, "", CALLER)  # the traceparent way: the caller's span is parent
    assert (joined.trace_id, joined.parent_span_id) == (TRACE, CALLER)
    assert is_span_id(joined.span_id)
    assert joined.span_id != CALLER


@pytest.mark.parametrize(
    ("ids", "field"),
    [
        (("4BF92F3577B34DA6A3CE929D0E0E4736", "", ""), "trace_id"),  # uppercase
        ((TRACE[:-1], "", ""), "trace_id"),  # too short
        ((TRACE + "0", "", ""), "trace_id"),  # too long
        (("g" * 32, "", ""), "trace_id"),  # not hex
        (("0" * 32, "", ""), "trace_id"),  # all zero
        ((TRACE, "0" * 16, ""), "span_id"),
        ((TRACE, "xyz", ""), "span_id"),
        ((TRACE, SPAN, SPAN[:8]), "parent_span_id"),
        ((TRACE, SPAN, "0" * 16), "parent_span_id"),
        ((TRACE, SPAN, SPAN), "parent_span_id"),  # its own parent
        (("", SPAN, ""), "span_id"),  # a span of no trace
        (("", "", CALLER), "parent_span_id"),
        ((" " + TRACE[1:], "", ""), "trace_id"),
    ],
)
def test_bad_ids_are_refused_naming_the_field(ids, field):
    with pytest.raises(TraceContextError) as caught:
        given_context(*ids)
    assert str(caught.value).startswith(f"{field}:")
    assert "\n" not in str(caught.value)


def test_traceparent_round_trips():
    value = traceparent(TRACE, SPAN)
    assert value == f"00-{TRACE}-{SPAN}-01"
    assert parse_traceparent(value) == (TRACE, SPAN)
    assert parse_traceparent(f"  00-{TRACE}-{SPAN}-00\n") == (TRACE, SPAN)
    assert traceparent(TRACE, SPAN, sampled=False).endswith("-00")


def test_a_later_version_may_carry_more_fields():
    assert parse_traceparent(f"01-{TRACE}-{SPAN}-01-whatever") == (TRACE, SPAN)


@pytest.mark.parametrize(
    "value",
    [
        "garbage",
        f"00-{TRACE}-{SPAN}",  # no flags
        f"00-{TRACE}-{SPAN}-01-extra",  # version 00 has exactly four parts
        f"ff-{TRACE}-{SPAN}-01",  # version ff is invalid
        f"00-{'0' * 32}-{SPAN}-01",  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent id
        f"00-{TRACE.upper()}-{SPAN}-01",
        f"00-{TRACE}-{SPAN}-1",
    ],
)
def test_a_bad_traceparent_is_one_line_naming_the_variable(value):
    with pytest.raises(TraceContextError) as caught:
        parse_traceparent(value)
    assert str(caught.value).startswith("TRACEPARENT")
    assert "\n" not in str(caught.value)


def test_a_child_process_gets_the_daemons_traceparent_and_nobody_elses():
    daemon = {"TRACEPARENT": f"00-{TRACE}-{CALLER}-01", "HOME": "/h"}
    mine = traceparent(TRACE, SPAN)
    env = child_environment(
        daemon, passed=("TRACEPARENT",), declared={"TRACEPARENT": "stale"},
        from_run={"TRACEPARENT": "forged"}, traceparent=mine,
    )  # fmt: skip
    assert env["TRACEPARENT"] == mine
    outside = child_environment(daemon, passed=("TRACEPARENT",), declared={"TRACEPARENT": "x"})
    assert "TRACEPARENT" not in outside  # no trace: no stale context either


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([f"00-{'4' * 32}-{'5' * 16}-01"], ("4" * 32, "5" * 16)),
        ([f" 01-{'4' * 32}-{'5' * 16}-00-later \t"], ("4" * 32, "5" * 16)),  # a later version
        ([], None),
        ([f"00-{'4' * 32}-{'5' * 16}-01"] * 2, None),  # given twice: W3C calls that invalid
        ([f"00-{'0' * 32}-{'5' * 16}-01"], None),
        ([f"00-{'4' * 32}-{'5' * 16}-01-more"], None),
        (["garbage"], None),
        # around the value, HTTP allows spaces and tabs only (h11 passes other bytes through)
        ([f"\x1c00-{'4' * 32}-{'5' * 16}-01"], None),
        ([f"00-{'4' * 32}-{'5' * 16}-01\x85"], None),
        ([f"\xa000-{'4' * 32}-{'5' * 16}-01"], None),
        ([f"00-{'4' * 32}-{'5' * 16}-01\n"], None),
    ],
)
def test_a_callers_traceparent_header_is_used_only_when_valid(values, expected):
    assert caller_traceparent(values) == expected
