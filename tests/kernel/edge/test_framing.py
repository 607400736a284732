"""``framing.check_framing``: bytes that are no whole message of the type are refused — which
betterproto2's parser takes, cut short — whatever their strings hold, for every request of every
service, behind both codecs."""

from __future__ import annotations

import re
from typing import Any

import pytest
from foundry.kernel.edge.grpc.framing import NOT_PROTOBUF, check_framing
from foundry.kernel.edge.grpc.message_check import WrongField
from foundry.kernel.edge.grpc.server import RequestCodec
from foundry.kernel.edge.http.codecs import BinaryCodec
from foundry.proto import admin_api, analytics_api, foundry_api, runtime_api
from foundry.proto.generated.google.protobuf import Struct
from grpclib import GRPCError
from grpclib.const import Status
from hypothesis import given, settings
from hypothesis import strategies as st

BASES = (
    foundry_api.FoundryBase,
    runtime_api.RuntimeServiceBase,
    analytics_api.AnalyticsBase,
    admin_api.AdminBase,
)
REQUESTS = sorted(
    {h.request_type for base in BASES for h in base().__mapping__().values()},
    key=lambda kind: kind.__name__,
)
GRPC = RequestCodec(1 << 20)
HTTP = BinaryCodec(1 << 20)

EMIT = bytes(foundry_api.EmitRequest(event_type="greet_requested", payload_json='{"name":"Ada"}'))
PATCH = bytes(
    runtime_api.PatchStepRequest(
        run_id="run_1", step_id="s1", inputs_patch=Struct.from_dict({"value": {"s": "hello"}})
    )
)


def _cut_inside_struct(data: bytes) -> bytes:
    """PATCH with its Struct's innermost string one byte shorter than its length says, every
    length around it one less: each enclosing message whole, the string cut."""
    out = bytearray(data[:-1])
    *enclosing, _string = _struct_lengths(data)
    for at in enclosing:
        out[at] -= 1
    return bytes(out)


def _struct_lengths(data: bytes) -> list[int]:
    """The offsets of the one-byte lengths of the fields that end with PATCH's last byte:
    inputs_patch, each nested map entry and Value, and last the string's own."""
    found, at, end = [], 0, len(data)
    while at < end:
        tag, length = data[at], data[at + 1]
        if at + 2 + length == end and tag & 7 == 2:
            found.append(at + 1)
            at, end = at + 2, end  # into the last field, which ends where its parent does
            continue
        at += 2 + length
    assert len(found) >= 4, found
    return found


@pytest.mark.parametrize("kind", REQUESTS, ids=lambda kind: kind.__name__)
def test_every_request_type_has_a_lenient_twin_and_an_empty_request_is_whole(kind):
    check_framing(b"", kind)
    check_framing(bytes(kind()), kind)


CUT = [
    (foundry_api.EmitRequest, EMIT[:-3]),  # inside payload_json
    (foundry_api.StatusRequest, b"\x0a\x10abc"),  # workflow_id: 16 bytes said, 3 sent
    (foundry_api.StatusRequest, b"\xff\xff\xff"),  # a tag that never ends
    (foundry_api.TraceRequest, b"\x0a\x05ab"),
    (runtime_api.PatchStepRequest, PATCH[:-1]),
    (runtime_api.PatchStepRequest, _cut_inside_struct(PATCH)),
]


@pytest.mark.parametrize(("kind", "data"), CUT, ids=lambda v: getattr(v, "__name__", ""))
def test_a_request_cut_short_is_refused_by_both_codecs(kind: Any, data: bytes):
    kind().parse(data)  # what betterproto2 alone takes without a word
    with pytest.raises(WrongField, match="not a whole protobuf message"):
        check_framing(data, kind)
    with pytest.raises(GRPCError) as refused:
        GRPC.decode(data, kind)
    assert refused.value.status == Status.INVALID_ARGUMENT
    assert refused.value.message == f"request: {NOT_PROTOBUF}"
    with pytest.raises(Exception, match="not a whole protobuf message"):
        HTTP.decode(data, kind)


def test_bad_utf_8_and_wrong_wire_types_are_still_named_not_called_unframed():
    bad_text = b"\x0a\x02\xff\xfe"  # event_type: two bytes, not UTF-8
    check_framing(bad_text, foundry_api.EmitRequest)  # framed: the codec names the field
    with pytest.raises(GRPCError, match=r"request: event_type: not valid UTF-8 \(byte 0 of"):
        GRPC.decode(bad_text, foundry_api.EmitRequest)
    # two bad fields: the offset is the named one's (project bad at byte 1 comes first on the
    # wire, event_type, bad at byte 3, first in field order)
    two = b"\x12\x02a\xff" + b"\x0a\x04abc\xff"
    with pytest.raises(GRPCError, match=r"event_type: not valid UTF-8 \(byte 3 of the field"):
        GRPC.decode(two, foundry_api.EmitRequest)
    # deep in a message, in a repeated field, in a map: named too (betterproto2 named none)
    deep = runtime_api.SubmitRunRequest(spec=runtime_api.RunSpec(
        dag_json="{}", breakpoints=["a", "BAD"], labels={"team": "BAD"}))  # fmt: skip
    for field, spelled in (("breakpoints[1]", b"*\x03BAD"), ("labels[0].value", b"\x12\x03BAD")):
        data = bytes(deep).replace(spelled, spelled[:2] + b"\xc3\x28\xff", 1)
        with pytest.raises(GRPCError, match=re.escape(f"request: spec.{field}: not valid UTF-8")):
            GRPC.decode(data, runtime_api.SubmitRunRequest)
        with pytest.raises(Exception, match=re.escape(f"request: spec.{field}: not valid UTF-8")):
            HTTP.decode(data, runtime_api.SubmitRunRequest)
    varint_text = b"\x08\x05"  # event_type sent as a varint
    check_framing(varint_text, foundry_api.EmitRequest)
    with pytest.raises(GRPCError, match="event_type: expected string"):
        GRPC.decode(varint_text, foundry_api.EmitRequest)


@settings(max_examples=300, deadline=None)
@given(cut=st.integers(0, len(PATCH)))
def test_a_prefix_is_taken_exactly_when_it_ends_at_a_field(cut: int):
    """A prefix of a request is a request (fewer fields) when it ends between two fields, and
    refused anywhere else: what the codecs take is what upb takes."""
    prefix = PATCH[:cut]
    if cut in _field_ends(PATCH):
        assert bytes(GRPC.decode(prefix, runtime_api.PatchStepRequest)) == prefix
    else:
        with pytest.raises(GRPCError) as refused:  # cut short, or (cut at a field) incomplete
            GRPC.decode(prefix, runtime_api.PatchStepRequest)
        assert refused.value.status == Status.INVALID_ARGUMENT


def _field_ends(data: bytes) -> set[int]:
    """The offsets at which a top-level field of ``data`` (length-delimited fields only) ends."""
    ends, at = {0}, 0
    while at < len(data):
        at += 1  # the tag: one byte for these field numbers
        length, shift = 0, 0
        while True:
            byte = data[at]
            at += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        at += length
        ends.add(at)
    return ends


def test_a_message_field_sent_twice_is_merged_and_a_oneofs_last_member_wins():
    """Valid protobuf betterproto2 read wrong: the concatenation of two messages is their merge
    (its parser kept the second ``spec`` alone: "spec.dag_json: a DAG is required"), and a
    oneof sent twice keeps its last member (it raised "more than one field set in oneof")."""
    first = runtime_api.SubmitRunRequest(spec=runtime_api.RunSpec(dag_json='{"steps": []}'))
    second = runtime_api.SubmitRunRequest(spec=runtime_api.RunSpec(seed=42))
    value = b"\x1a\x01a" + b"\x20\x01"  # Value: string_value "a", then bool_value true
    both = b"\x0a\x0a\x0a\x01x\x12\x05" + value  # Struct: fields["x"] = that Value
    two_members = bytes(runtime_api.SubmitRunRequest(spec=runtime_api.RunSpec(dag_json="{}")))
    two_members += b"\x0a" + bytes([len(both) + 2]) + b"\x12" + bytes([len(both)]) + both
    for codec in (GRPC, HTTP):
        merged = codec.decode(bytes(first) + bytes(second), runtime_api.SubmitRunRequest)
        assert (merged.spec.dag_json, merged.spec.seed) == ('{"steps": []}', 42)
        last = codec.decode(two_members, runtime_api.SubmitRunRequest)
        assert last.spec.inputs.fields["x"].bool_value is True


def test_a_large_request_upb_refuses_is_not_parsed_again_by_betterproto2(monkeypatch):
    """To name a field, bytes upb refused were parsed again by betterproto2 (pure Python): a
    4 MB gate check of 440,000 telemetry entries and one bad byte held the loop 6.3 s."""
    entry = b"\x0a\x01k\x12\x02\x08\x00"  # "k": null
    body = (b"\x0a" + bytes([len(entry)]) + entry) * 500_000
    length = len(body)
    varint = bytearray()
    while length >= 0x80:
        varint.append(length & 0x7F | 0x80)
        length >>= 7
    varint.append(length)
    data = bytes(runtime_api.CheckChangeGateRequest(change_id="c")) + b"\x3a" + varint + body
    parsed: list[int] = []
    real_parse = runtime_api.CheckChangeGateRequest.parse

    def parse(self, raw):
        parsed.append(len(raw))
        return real_parse(self, raw)

    monkeypatch.setattr(runtime_api.CheckChangeGateRequest, "parse", parse)
    with pytest.raises(GRPCError) as refused:
        RequestCodec(8 << 20).decode(data + b"\xff", runtime_api.CheckChangeGateRequest)
    assert refused.value.status == Status.INVALID_ARGUMENT
    assert NOT_PROTOBUF in (refused.value.message or "")
    assert parsed == []
    small = bytes(runtime_api.CheckChangeGateRequest(change_id="c")) + b"\xff"
    with pytest.raises(GRPCError):
        RequestCodec(8 << 20).decode(small, runtime_api.CheckChangeGateRequest)
    assert parsed == [len(small)]  # a small one still is, to name its field
