"""Wire compatibility with the public Foundry daemon's newer protos, checked on the bytes.

Upstream's clients are prost-generated: a field number they know must arrive with the wire type
they expect (and a string must be UTF-8), or decoding fails; unknown numbers are skipped. So the
table below is upstream's messages as numbers and wire types (from the API document,
spec/foundry-grpc.txt, plus its newer trace-context fields named in issue 14), and a hand-written
decoder reads our daemon's real responses against it: a number < 100 upstream does not define,
or one it defines with another wire type, fails the test. (Our additive fields are >= 100.)

The other way round: bytes an upstream client sends or receives (trace context at 5/6/7) decode
in our client and are honoured by our daemon.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from foundry.proto import foundry_api as api

from tests.grpcio_client import StreamReader, raw_channel
from tests.helpers import DEADLINE, wait_until

VARINT, I64, LEN, I32 = 0, 1, 2, 5
STRING, BOOL, ENUM, UINT = "string", "bool", "enum", "uint"


@dataclass(frozen=True)
class Field:
    name: str
    wire: int
    kind: str  # STRING, BOOL, ENUM, UINT, or the nested message's name
    repeated: bool = False


def _s(name: str, repeated: bool = False) -> Field:
    return Field(name, LEN, STRING, repeated)


# Upstream's messages: number -> field. (TraceBlockExecution 6 is reserved there too.)
UPSTREAM: dict[str, dict[int, Field]] = {
    "EmitRequest": {
        1: _s("event_type"), 2: _s("project"), 3: Field("throttle", VARINT, ENUM),
        4: _s("payload_json"), 5: _s("trace_id"), 6: _s("span_id"), 7: _s("parent_span_id"),
    },
    "EmitResponse": {1: _s("event_id"), 2: _s("workflow_id")},
    "StatusResponse": {1: Field("workflows", LEN, "WorkflowStatus", repeated=True)},
    "WorkflowStatus": {
        1: _s("workflow_id"), 2: _s("workflow_type"), 3: _s("project"), 4: _s("state"),
        5: _s("started_at"), 6: _s("completed_at"),
        7: Field("task_blocks", LEN, "TaskBlockStatus", repeated=True), 8: _s("trace_id"),
    },
    "TaskBlockStatus": {
        1: _s("name"), 2: _s("state"), 3: _s("started_at"), 4: _s("completed_at"),
        5: Field("throttled", VARINT, BOOL),
    },
    "WatchResponse": {
        1: _s("event_id"), 2: _s("event_type"), 3: _s("project"), 4: _s("payload_json"),
        5: _s("trace_id"), 6: _s("span_id"), 7: _s("parent_span_id"),
    },
    "TraceResponse": {
        1: Field("found", VARINT, BOOL), 2: Field("events", LEN, "TraceEvent", repeated=True),
        3: Field("block_executions", LEN, "TraceBlockExecution", repeated=True),
        5: Field("total_duration_ms", VARINT, UINT),
    },
    "TraceEvent": {
        1: _s("event_id"), 2: _s("event_type"), 3: _s("project"), 4: _s("occurred_at"),
        5: Field("throttle", VARINT, ENUM), 6: _s("trace_id"), 7: _s("span_id"),
        8: _s("parent_span_id"),
    },
    "TraceBlockExecution": {
        1: _s("block_name"), 2: _s("trigger_event_id"), 3: Field("success", VARINT, BOOL),
        4: _s("summary"), 5: _s("emitted_event_ids", repeated=True),
        7: Field("duration_ms", VARINT, UINT), 8: _s("raw_output"),
        9: Field("exit_code", VARINT, "int32"), 10: _s("trigger_payload_json"),
        11: _s("emitted_payload_jsons", repeated=True), 12: _s("audit_artifacts", repeated=True),
        13: _s("span_id"), 14: _s("parent_span_id"),
    },
}  # fmt: skip
OURS_FROM = 100


class Collision(AssertionError):
    pass


def varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise Collision("truncated or overlong varint")
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at += 1
        if not byte & 0x80:
            return value, at
        shift += 7


def fields(data: bytes) -> list[tuple[int, int, Any]]:
    """The raw fields of a message: (number, wire type, value: int or bytes)."""
    found, at = [], 0
    while at < len(data):
        tag, at = varint(data, at)
        number, wire = tag >> 3, tag & 7
        if wire == VARINT:
            value, at = varint(data, at)
        elif wire == LEN:
            size, at = varint(data, at)
            value, at = data[at : at + size], at + size
            if len(value) != size:
                raise Collision(f"field {number}: truncated")
        elif wire in (I64, I32):
            width = 8 if wire == I64 else 4
            value, at = int.from_bytes(data[at : at + width], "little"), at + width
        else:
            raise Collision(f"field {number}: wire type {wire} (groups) upstream cannot skip")
        found.append((number, wire, value))
    return found


def decode(message: str, data: bytes) -> dict[str, Any]:
    """Decode ``data`` as upstream's ``message`` would, strictly: the fields it knows (repeated
    ones as lists); raises :class:`Collision` on any field a prost decoder of upstream's protos
    would fail on, or that upstream does not define below our additive range."""
    table, decoded = UPSTREAM[message], {}
    for number, wire, value in fields(data):
        spec = table.get(number)
        if spec is None:
            if number < OURS_FROM:
                raise Collision(f"{message}.{number}: not upstream's, and below {OURS_FROM}")
            continue  # ours: upstream skips it
        if wire != spec.wire:
            raise Collision(
                f"{message}.{number} ({spec.name}): wire type {wire}, upstream expects {spec.wire}"
            )
        item = _value(message, spec, value)
        if spec.repeated:
            decoded.setdefault(spec.name, []).append(item)
        else:
            decoded[spec.name] = item
    return decoded


def _value(message: str, spec: Field, value: Any) -> Any:
    if spec.kind == STRING:
        try:
            return value.decode("utf-8")  # prost refuses a string that is not UTF-8
        except UnicodeDecodeError:
            raise Collision(f"{message}.{spec.name}: not UTF-8") from None
    if spec.kind == BOOL:
        return bool(value)
    if spec.kind in UPSTREAM:
        return decode(spec.kind, value)
    return value


# --- the decoder itself catches what it must ------------------------------------------------------


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def field_bytes(number: int, value: int | str | bytes) -> bytes:
    if isinstance(value, int):
        return encode_varint(number << 3 | VARINT) + encode_varint(value)
    raw = value.encode() if isinstance(value, str) else value
    return encode_varint(number << 3 | LEN) + encode_varint(len(raw)) + raw


def test_the_decoder_fails_on_the_collisions_of_the_old_tags():
    # Our old WatchResponse: throttle (an enum, varint) at 5, where upstream has trace_id.
    old_watch = field_bytes(1, "evt_x") + field_bytes(5, 1)
    with pytest.raises(Collision, match=r"WatchResponse\.5 \(trace_id\): wire type 0"):
        decode("WatchResponse", old_watch)
    # Our old TraceEvent: throttled (bool) at 8, where upstream has parent_span_id.
    with pytest.raises(Collision, match="parent_span_id"):
        decode("TraceEvent", field_bytes(8, 1))
    # A field of ours below 100 that upstream does not define.
    with pytest.raises(Collision, match="below 100"):
        decode("TraceBlockExecution", field_bytes(15, 2))
    with pytest.raises(Collision, match="not UTF-8"):
        decode("EmitResponse", field_bytes(1, b"\xff"))
    assert decode("WatchResponse", field_bytes(100, 1) + field_bytes(5, "t")) == {"trace_id": "t"}


# --- the .proto: every field below 100 is upstream's, with its wire type --------------------------

# descriptor field type -> wire type (string, message, bytes; bool, enum, 64- and 32-bit ints)
_WIRE_OF_TYPE = {9: LEN, 11: LEN, 12: LEN, 8: VARINT, 14: VARINT, 3: VARINT, 4: VARINT,
                 5: VARINT, 13: VARINT}  # fmt: skip


def test_every_field_of_ours_below_100_is_upstreams_with_its_wire_type(grpcio_client):
    pb = grpcio_client.foundry_pb2
    for name, table in UPSTREAM.items():
        descriptor = pb.DESCRIPTOR.message_types_by_name[name]
        for f in descriptor.fields:
            if f.number >= OURS_FROM:
                continue
            assert f.number in table, f"{name}.{f.name} = {f.number}: not upstream's"
            spec = table[f.number]
            assert (f.name, _WIRE_OF_TYPE[f.type]) == (spec.name, spec.wire), f"{name}.{f.name}"
        missing = set(table) - {f.number for f in descriptor.fields}
        assert not missing, f"{name} lacks upstream's fields {sorted(missing)}"
    throttle = pb.DESCRIPTOR.enum_types_by_name["Throttle"]
    assert {v.name: v.number for v in throttle.values} == {
        "THROTTLE_FULL": 0, "THROTTLE_AUDIT_ONLY": 1, "THROTTLE_DRY_RUN": 2,
    }  # fmt: skip


# --- the daemon's real responses, decoded as upstream's client would ------------------------------

SHELL = """
[[blocks]]
name = "Shout"
type = "shell"
kind = "observer"
sinks = ["shout_requested"]
command = ["sh", "-c", "echo LOUD; exit 4"]
"""
FOUNDRY = "/foundry.Foundry/"
HEX32, HEX16 = re.compile(r"[0-9a-f]{32}"), re.compile(r"[0-9a-f]{16}")


@pytest.fixture(scope="module")
def daemon(shared_daemon):
    return shared_daemon(SHELL)


def unary(channel: grpc.Channel, method: str, body: bytes) -> bytes:
    call = channel.unary_unary(FOUNDRY + method, request_serializer=None,
                               response_deserializer=None)  # fmt: skip
    response: bytes = call(body, timeout=DEADLINE)
    return response


def emit_bytes(event_type: str, project: str, throttle: int = 0, **extra: str) -> bytes:
    body = field_bytes(1, event_type) + field_bytes(2, project)
    if throttle:
        body += field_bytes(3, throttle)
    numbers = {"payload_json": 4, "trace_id": 5, "span_id": 6, "parent_span_id": 7}
    return body + b"".join(field_bytes(numbers[k], v) for k, v in extra.items())


def finished_status(channel: grpc.Channel, workflow_id: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        raw = unary(channel, "Status", field_bytes(1, workflow_id))
        [workflow] = decode("StatusResponse", raw)["workflows"]
        return workflow if workflow["state"] in ("completed", "failed") else None

    return wait_until(check, what=f"workflow {workflow_id} to finish")


def trace(channel: grpc.Channel, event_id: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        reply = decode("TraceResponse", unary(channel, "Trace", field_bytes(1, event_id)))
        return reply if reply.get("found") else None

    return wait_until(check, what=f"the trace of {event_id}")


def test_every_response_decodes_strictly_as_upstreams(daemon):
    with raw_channel(daemon.address) as channel:
        watch = channel.unary_stream(FOUNDRY + "Watch", request_serializer=None,
                                     response_deserializer=None)  # fmt: skip
        reader = StreamReader(watch(field_bytes(1, "upwire"), timeout=60))
        try:
            _sync(channel, reader)
            audited = decode("EmitResponse", unary(channel, "Emit", emit_bytes(
                "greet_requested", "upwire", 1, payload_json='{"name":"Zoë"}')))  # fmt: skip
            shout = decode("EmitResponse", unary(channel, "Emit", emit_bytes(
                "shout_requested", "upwire")))  # fmt: skip
            watched = _watched(reader, count=4)  # greet, composed, withheld delivery, shout
        finally:
            reader.close()

        workflow = finished_status(channel, audited["workflow_id"])
        chain = trace(channel, audited["event_id"])
        failed = trace(channel, shout["event_id"])
        finished_status(channel, shout["workflow_id"])

    assert HEX32.fullmatch(workflow["trace_id"])
    assert [b["name"] for b in workflow["task_blocks"]] == ["Compose Greeting", "Deliver Greeting"]
    events = chain["events"]
    assert [e["event_type"] for e in events] == [
        "greet_requested", "greeting_composed", "greeting_delivered",
    ]  # fmt: skip
    assert {e["trace_id"] for e in events} == {workflow["trace_id"]}
    assert all(HEX16.fullmatch(e["span_id"]) for e in events)
    assert [e["throttle"] for e in events] == [1, 1, 1]  # AUDIT_ONLY, at upstream's number
    assert chain["total_duration_ms"] >= 0
    compose, deliver = chain["block_executions"]
    assert compose["parent_span_id"] == events[0]["span_id"]
    assert events[1]["parent_span_id"] == compose["span_id"]
    assert deliver["parent_span_id"] == events[1]["span_id"]
    [shouted] = failed["block_executions"]
    assert (shouted["exit_code"], shouted["raw_output"]) == (4, "LOUD\n")

    by_id = {w["event_id"]: w for w in watched}
    for event in events:
        seen = by_id[event["event_id"]]
        assert (seen["trace_id"], seen["span_id"]) == (event["trace_id"], event["span_id"])
        assert seen.get("parent_span_id", "") == event.get("parent_span_id", "")


def _sync(channel: grpc.Channel, reader: StreamReader) -> None:
    def arrived() -> bool:
        unary(channel, "Emit", emit_bytes("watch_probe", "upwire"))
        try:
            while True:
                raw = reader.get(timeout=0.2)
                assert isinstance(raw, bytes), raw
                if decode("WatchResponse", raw)["event_type"] == "watch_probe":
                    return True
        except Exception:  # queue.Empty: not yet
            return False

    wait_until(arrived, what="the raw Watch to go live")


def _watched(reader: StreamReader, count: int) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    while len(seen) < count:
        raw = reader.get(timeout=DEADLINE)
        assert isinstance(raw, bytes), raw
        decoded = decode("WatchResponse", raw)  # strict: a collision fails here
        if decoded["event_type"] != "watch_probe":
            seen.append(decoded)
    return seen


# --- upstream-shaped bytes in our client and our daemon -------------------------------------------

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
PARENT = "b7ad6b7169203331"


def test_an_upstream_watch_response_decodes_in_our_clients(grpcio_client):
    upstream = (
        field_bytes(1, "evt_" + "ab" * 12) + field_bytes(2, "greet_requested")
        + field_bytes(3, "up") + field_bytes(4, '{"name":"Zoë"}') + field_bytes(5, TRACE)
        + field_bytes(6, SPAN) + field_bytes(7, PARENT)
    )  # fmt: skip
    ours = api.WatchResponse.parse(upstream)
    assert (ours.event_type, ours.project, json.loads(ours.payload_json)) == (
        "greet_requested", "up", {"name": "Zoë"},
    )  # fmt: skip
    assert (ours.trace_id, ours.span_id, ours.parent_span_id) == (TRACE, SPAN, PARENT)
    assert ours.throttle == api.Throttle.FULL  # not a trace id misread as an enum
    grpcio = grpcio_client.foundry_pb2.WatchResponse.FromString(upstream)
    assert (grpcio.trace_id, grpcio.span_id, grpcio.parent_span_id) == (TRACE, SPAN, PARENT)


def test_an_upstream_emit_with_trace_context_is_honoured(daemon):
    with raw_channel(daemon.address) as channel:
        body = emit_bytes(
            "greet_requested", "upwire", payload_json='{"name":"Ada"}', trace_id=TRACE,
            span_id=SPAN, parent_span_id=PARENT,
        )  # fmt: skip
        emitted = decode("EmitResponse", unary(channel, "Emit", body))
        chain = trace(channel, emitted["event_id"])
        workflow = finished_status(channel, emitted["workflow_id"])
    root = chain["events"][0]
    assert (root["trace_id"], root["span_id"], root["parent_span_id"]) == (TRACE, SPAN, PARENT)
    assert {e["trace_id"] for e in chain["events"]} == {TRACE}
    assert workflow["trace_id"] == TRACE
