"""Emit's request and reply through upb (``fastproto.decode_emit_request`` and
``encode_emit_response``) against betterproto2's codec and ``check_request``: the same fields,
the same errors, the same bytes, for any input."""

from __future__ import annotations

from typing import Any

import pytest
from foundry.kernel.edge.grpc import fastproto, server
from foundry.kernel.edge.grpc.server import RequestCodec
from foundry.proto import foundry_api as api
from foundry.proto import runtime_api
from grpclib import GRPCError
from hypothesis import example, given, settings
from hypothesis import strategies as st

FIELDS = ("event_type", "project", "payload_json", "trace_id", "span_id", "parent_span_id")
CODEC = RequestCodec(1 << 20)


def outcome(data: bytes) -> tuple[str, Any]:
    """What the codec makes of ``data``: the fields the handler reads, or the error."""
    try:
        message = CODEC.decode(data, api.EmitRequest)
    except GRPCError as exc:
        return "error", (exc.status, exc.message)
    return "message", (*(getattr(message, f) for f in FIELDS), int(message.throttle))


def both_ways(data: bytes, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    fast = outcome(data)
    with monkeypatch.context() as patched:
        patched.delitem(server.FAST_DECODERS, api.EmitRequest)
        slow = outcome(data)
    return fast, slow


def test_a_plain_request_is_decoded_by_upb():
    data = bytes(api.EmitRequest(event_type="t", project="p", payload_json='{"n":1}'))
    assert type(fastproto.decode_emit_request(data)).__module__ != api.EmitRequest.__module__


TEXT = st.text(max_size=300)


@settings(max_examples=300, deadline=None)
@given(
    values=st.fixed_dictionaries({f: TEXT for f in FIELDS}),
    throttle=st.integers(0, 2**31 - 1),
    extra=st.binary(max_size=12),
)
@example(values=dict.fromkeys(FIELDS, "x" * 257), throttle=0, extra=b"")
@example(values=dict.fromkeys(FIELDS, ""), throttle=99, extra=b"")
@example(values=dict.fromkeys(FIELDS, ""), throttle=0, extra=b"\x08\x01")  # a varint event_type
@example(values=dict.fromkeys(FIELDS, ""), throttle=0, extra=b"\x0a\x02\xff\xfe")  # bad UTF-8
@example(values=dict.fromkeys(FIELDS, ""), throttle=0, extra=b"\x52\x01x")  # an unknown field
def test_emit_requests_decode_as_betterproto2_and_check_request_decode_them(
    values: dict[str, str], throttle: int, extra: bytes
):
    data = bytes(api.EmitRequest(**values, throttle=api.Throttle(throttle))) + extra
    with pytest.MonkeyPatch.context() as monkeypatch:
        fast, slow = both_ways(data, monkeypatch)
    assert fast == slow


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=64))
def test_any_bytes_decode_or_fail_as_before(data: bytes):
    with pytest.MonkeyPatch.context() as monkeypatch:
        fast, slow = both_ways(data, monkeypatch)
    assert fast == slow


@settings(max_examples=200, deadline=None)
@given(event_id=st.text(max_size=100), workflow_id=st.text(max_size=100))
def test_emit_responses_encode_to_betterproto2s_bytes(event_id: str, workflow_id: str):
    reply = api.EmitResponse(event_id=event_id, workflow_id=workflow_id)
    assert CODEC.encode(reply, api.EmitResponse) == bytes(reply)
    assert server.FAST_ENCODERS[api.EmitResponse] is fastproto.encode_emit_response


UNKNOWN = b"\xa0\x06\x01"  # field 100, a varint: a field this daemon does not know


@pytest.mark.parametrize("kind", [api.EmitRequest, api.StatusRequest])
def test_unknown_fields_never_reach_betterproto2(kind):
    # betterproto2 appends each unknown field to a bytes object: N² work on the daemon's loop
    # (a 3.9 MB request of 1.3 million held every connection for minutes)
    known = bytes(kind(project="p"))
    decoded = CODEC.decode(known + UNKNOWN * 1_000, kind)
    assert decoded == kind(project="p")
    assert not getattr(decoded, "_unknown_fields", b"")


def test_a_known_field_under_another_wire_type_is_still_named_among_few_unknown_ones():
    seed_as_fixed64 = b"\x0a\x09\x19" + b"\xff" * 8  # spec.seed (int64) as a 64-bit value
    with pytest.raises(GRPCError) as refused:
        CODEC.decode(seed_as_fixed64 + UNKNOWN * 10, runtime_api.SubmitRunRequest)
    assert "spec.seed: expected int64, got a 64-bit value" in str(refused.value.message)


def test_a_large_request_with_structs_is_decoded_off_the_loop_an_emit_is_not():
    # CheckChangeGate's upb decoder hands its Structs to betterproto2: 3.6 MB of them held the
    # loop 14 s (a review). An Emit is upb's alone, in C.
    assert CODEC.decodes_off_loop(runtime_api.CheckChangeGateRequest, 64 * 1024)
    assert not CODEC.decodes_off_loop(runtime_api.CheckChangeGateRequest, 1024)
    assert not CODEC.decodes_off_loop(api.EmitRequest, 64 * 1024)
