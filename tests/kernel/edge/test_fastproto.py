"""CheckChangeGate's upb path (``grpc/fastproto.py``) against the betterproto2 one it replaces on
the gRPC port: the same gate input from the same bytes, the same reply, and the same
INVALID_ARGUMENT (naming the field) for a request that is not plain."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from foundry.kernel.actors.gate.actor import decision_record
from foundry.kernel.core.gate_policy import GatePolicy, GateRequest, decide
from foundry.kernel.core.governance import GateFollowupRecord, StoredGate
from foundry.kernel.edge.grpc import fastproto, governance
from foundry.kernel.edge.grpc.internals import Encoded
from foundry.kernel.edge.grpc.message_check import check_request
from foundry.kernel.edge.grpc.runtime_service import _json_object
from foundry.kernel.edge.grpc.server import RequestCodec
from foundry.proto import runtime_api as api
from foundry.proto.generated.google.protobuf import Struct
from grpclib import GRPCError
from grpclib.const import Status

from bench.gate_check import hostile_request, to_proto, typical_request

NOW = datetime(2026, 12, 2, 1, 2, 3, 456789, tzinfo=UTC)
LIMIT = 4 * 1024 * 1024


def odd_request() -> api.CheckChangeGateRequest:
    """Optional wrappers missing and present, every direction, Structs with ints and nesting."""
    return api.CheckChangeGateRequest(
        change_id="chg-odd", revision="", actor="ci ü",
        diffs=[api.ChangeDiff(path="a.py"),
               api.ChangeDiff(path="src/auth/b.py", lines_added=3, novelty_score=0.0,
                              risk_tags=["auth", ""], component="core")],
        coverage=api.CoverageReport(minimum_ratio=0.8,
                                    components=[api.CoverageComponent(name="x"),
                                                api.CoverageComponent(name="y",
                                                                      coverage_ratio=0.1)]),
        evals=[api.EvalMetric(name=f"m{d}", slug="s", score=0.5, threshold=0.7,
                              direction=api.MetricDirection(d), weight=2.0)
               for d in (0, 1, 2)] + [api.EvalMetric(name="bare")],
        budgets=[api.BudgetSignal(name="cost", actual=3.0),
                 api.BudgetSignal(name="tokens", actual=9.5, limit=10.0)],
        telemetry=Struct.from_dict({"tokens": 120, "nested": {"a": [1, 2.5, "x", None, True]}}),
        metadata=Struct.from_dict({}),
    )  # fmt: skip


def slow(data: bytes) -> GateRequest:
    """The betterproto2 path: parse, check, convert (what the HTTP edge does)."""
    message = api.CheckChangeGateRequest().parse(data)
    check_request(message)
    return fastproto.gate_request(message, _json_object)


def fast(data: bytes) -> GateRequest:
    decoded = RequestCodec(LIMIT).decode(data, api.CheckChangeGateRequest)
    assert isinstance(decoded, fastproto.UpbRequest)
    return fastproto.gate_request(decoded, _json_object)


def stored_decision(request: GateRequest, acks: int = 0) -> StoredGate:
    record = decision_record("gate_1", request, decide(request, GatePolicy()), NOW)
    followups = tuple(
        GateFollowupRecord(f"fup_{i}", "gate_1", "rev", "approved", None if i else "ok",
                           {"n": i}, NOW)
        for i in range(acks)
    )  # fmt: skip
    return StoredGate(record, followups)


@pytest.mark.parametrize("make", [typical_request, hostile_request])
def test_the_bench_requests_decode_to_the_same_gate_input(make):
    data = bytes(to_proto(make()))
    assert fast(data) == slow(data) == make()


def test_missing_wrappers_directions_and_structs_decode_alike():
    data = bytes(odd_request())
    request = fast(data)
    assert request == slow(data)
    assert request.diffs[0].novelty_score is None
    assert request.diffs[1].novelty_score == 0.0
    assert request.coverage is not None
    assert request.coverage.overall_ratio is None
    assert request.telemetry["tokens"] == 120
    assert isinstance(request.telemetry["tokens"], int)


def test_a_request_without_coverage_or_structs_decodes_alike():
    data = bytes(api.CheckChangeGateRequest(change_id="c"))
    request = fast(data)
    assert request == slow(data)
    assert request.coverage is None
    assert dict(request.telemetry) == {}


@pytest.mark.parametrize("make", [typical_request, hostile_request])
@pytest.mark.parametrize("acks", [0, 2])
def test_the_reply_is_betterproto2s(make, acks):
    """Equal messages (the bytes may differ only in the order of a Struct's map entries, which
    protobuf leaves open)."""
    stored = stored_decision(make(), acks)
    expected = api.CheckChangeGateResponse(decision=governance.gate_decision(stored))
    data = fastproto.encode_response(stored)
    assert api.CheckChangeGateResponse().parse(data) == expected
    assert len(data) == len(bytes(expected))


def test_the_reply_of_odd_evidence_is_betterproto2s():
    stored = stored_decision(slow(bytes(odd_request())))
    expected = api.CheckChangeGateResponse(decision=governance.gate_decision(stored))
    assert api.CheckChangeGateResponse().parse(fastproto.encode_response(stored)) == expected


def _error(data: bytes) -> GRPCError:
    with pytest.raises(GRPCError) as raised:
        RequestCodec(LIMIT).decode(data, api.CheckChangeGateRequest)
    assert raised.value.status is Status.INVALID_ARGUMENT
    return raised.value


def _diff_field(number: int, payload: bytes) -> bytes:
    """A ``diffs`` entry (field 3) holding ``payload``."""
    return b"\x1a" + bytes([len(payload)]) + payload


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"\x08\x05", "change_id"),  # a string sent as a varint
        (bytes(api.CheckChangeGateRequest(change_id="c")) + _diff_field(3, b"\x08\x01"),
         "diffs[0].path"),
        (b"\x2a\x02\x18\x07", "evals[0].score"),  # a double sent as a varint
        (b"\x1b", "diffs[0]"),  # a deprecated group
    ],
)  # fmt: skip
def test_a_field_with_the_wrong_wire_type_is_named(body, field):
    assert field in (_error(body).message or "")


def test_ids_over_the_limit_are_named_on_the_upb_path_too():
    long_id = "c" * 257
    assert "change_id: longer than 256" in (
        _error(bytes(api.CheckChangeGateRequest(change_id=long_id))).message or ""
    )
    metric = api.EvalMetric(name="m", slug=long_id)
    message = _error(bytes(api.CheckChangeGateRequest(change_id="c", evals=[metric]))).message
    assert "evals[0].slug: longer than 256" in (message or "")


def test_invalid_utf8_is_invalid_argument_naming_the_field():
    body = b"\x0a\x03\xff\xfe\xfd"
    assert _error(body).message == "request: change_id: not valid UTF-8 (byte 0 of the field)"
    nested = bytes(api.CheckChangeGateRequest(change_id="c")) + _diff_field(3, b"\x0a\x01\xff")
    assert (_error(nested).message or "").startswith("request: diffs[0].path: not valid UTF-8")


@pytest.mark.parametrize("depth", [32, 80])  # upb parses the first, not the second
def test_a_struct_nested_too_deeply_is_named(depth):
    value: dict[str, object] = {"leaf": 1}
    for _ in range(depth):
        value = {"k": value}
    data = bytes(api.CheckChangeGateRequest(change_id="c", telemetry=Struct.from_dict(value)))
    message = _error(data).message or ""
    assert message.startswith("request: telemetry.fields['k']")
    assert message.endswith("nested deeper than 64")


def test_a_field_this_daemon_does_not_know_is_ignored():
    data = bytes(api.CheckChangeGateRequest(change_id="c")) + b"\xf8\x06\x01"  # field 111
    decoded = RequestCodec(LIMIT).decode(data, api.CheckChangeGateRequest)
    assert isinstance(decoded, api.CheckChangeGateRequest)  # the betterproto2 path
    assert fastproto.gate_request(decoded, _json_object).change_id == "c"


def test_a_plain_request_takes_the_upb_path():
    decoded = RequestCodec(LIMIT).decode(bytes(odd_request()), api.CheckChangeGateRequest)
    assert isinstance(decoded, fastproto.UpbRequest)


def test_the_reply_follows_the_kind_of_the_request():
    data = bytes(to_proto(typical_request()))
    stored = stored_decision(slow(data))
    expected = api.CheckChangeGateResponse(decision=governance.gate_decision(stored))
    by_upb = fastproto.reply(RequestCodec(LIMIT).decode(data, api.CheckChangeGateRequest), stored)
    assert isinstance(by_upb, Encoded)
    assert api.CheckChangeGateResponse().parse(by_upb.data) == expected
    assert fastproto.reply(api.CheckChangeGateRequest().parse(data), stored) == expected


@pytest.mark.parametrize("depth", [400, 5_000])
def test_a_struct_nested_too_deeply_for_betterproto2_is_still_named(depth):
    """Past ~110 levels betterproto2 ran out of Python's stack reading the bytes upb had refused
    (its own limit is 100), and the request was called not protobuf at all."""
    struct = b""  # built as bytes: betterproto2 could not write it either
    for _ in range(depth):
        value = b"\x2a" + _varint(len(struct)) + struct  # Value.struct_value (5)
        entry = b"\x0a\x01k\x12" + _varint(len(value)) + value  # key (1), value (2)
        struct = b"\x0a" + _varint(len(entry)) + entry  # Struct.fields (1)
    telemetry = b"\x3a" + _varint(len(struct)) + struct  # field 7
    data = bytes(api.CheckChangeGateRequest(change_id="c")) + telemetry
    assert api.CheckChangeGateRequest.FromString(data[: -len(telemetry)]).change_id == "c"
    message = _error(data).message or ""
    assert message.startswith("request: telemetry.fields")
    assert message.endswith("nested deeper than 64")


def _varint(number: int) -> bytes:
    out = bytearray()
    while number >= 0x80:
        out.append(number & 0x7F | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)
