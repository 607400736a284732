"""``upb_encode.encode`` against betterproto2's own ``bytes()``: for random messages of every
message type the services answer with (and everything they hold), the two serializations are the
same message. Messages are drawn from the descriptors — each field set or not, repeated ones and
maps of up to three entries, nested messages three deep — then parsed by betterproto2, which is
what a handler's reply is."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import betterproto2
import pytest
from foundry.kernel.edge.grpc import upb_encode
from foundry.kernel.edge.grpc.reflection import descriptor_pool_of_protos
from foundry.kernel.edge.grpc.server import RequestCodec
from foundry.kernel.edge.http import jsonfast
from foundry.proto import foundry_api, runtime_api
from google.protobuf.descriptor import FieldDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

F = FieldDescriptor
SERVICES = {"foundry.Foundry": foundry_api, "fleetforge.runtime.v1.RuntimeService": runtime_api}
# What every RPC of both services answers with (streams: each message), as betterproto2 classes.
REPLIES = sorted(
    {
        getattr(module, method.output_type.name)
        for service, module in SERVICES.items()
        for method in descriptor_pool_of_protos().FindServiceByName(service).methods
    },
    key=lambda cls: cls.__name__,
)
# Timestamps and durations betterproto2 holds as datetime / timedelta: in their range, whole µs.
SECONDS = {"google.protobuf.Timestamp": (0, 253_402_300_799), "google.protobuf.Duration": (
    -10**9, 10**9)}  # fmt: skip


def _scalar(field: Any) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind == F.TYPE_STRING:
        return st.text(max_size=12)
    if kind == F.TYPE_BYTES:
        return st.binary(max_size=12)
    if kind == F.TYPE_BOOL:
        return st.booleans()
    if kind in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
        floats = st.floats(allow_nan=False, width=64 if kind == F.TYPE_DOUBLE else 32)
        return st.one_of(st.just(0.0), st.just(-0.0), floats)
    if kind == F.TYPE_ENUM:
        return st.sampled_from([v.number for v in field.enum_type.values])
    if kind in (F.TYPE_INT64, F.TYPE_SINT64, F.TYPE_SFIXED64):
        return st.integers(-(2**63), 2**63 - 1)
    if kind in (F.TYPE_UINT64, F.TYPE_FIXED64):
        return st.integers(0, 2**64 - 1)
    if kind in (F.TYPE_UINT32, F.TYPE_FIXED32):
        return st.integers(0, 2**32 - 1)
    return st.integers(-(2**31), 2**31 - 1)


def _fill(draw: Any, message: Any, depth: int) -> None:
    descriptor = message.DESCRIPTOR
    if descriptor.full_name in SECONDS:
        low, high = SECONDS[descriptor.full_name]
        message.seconds = draw(st.integers(low, high))
        message.nanos = draw(st.integers(0, 999_999)) * 1000 * (1 if message.seconds >= 0 else 0)
        return
    for field in descriptor.fields:
        if not draw(st.booleans()):
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key_field = field.message_type.fields_by_name["key"]
            value_field = field.message_type.fields_by_name["value"]
            entries = getattr(message, field.name)
            for _ in range(draw(st.integers(0, 3 if depth else 0))):
                key = draw(_scalar(key_field))
                if value_field.message_type is not None:
                    _fill(draw, entries[key], depth - 1)
                else:
                    entries[key] = draw(_scalar(value_field))
        elif field.is_repeated:
            container = getattr(message, field.name)
            for _ in range(draw(st.integers(0, 3 if depth else 0))):
                if field.message_type is not None:
                    _fill(draw, container.add(), depth - 1)
                else:
                    container.append(draw(_scalar(field)))
        elif field.message_type is not None:
            if depth:
                sub = getattr(message, field.name)
                sub.SetInParent()
                _fill(draw, sub, depth - 1)
        else:
            setattr(message, field.name, draw(_scalar(field)))


@st.composite
def replies(draw: Any) -> betterproto2.Message:
    cls = draw(st.sampled_from(REPLIES))
    upb = upb_encode.upb_class_of(cls)()
    _fill(draw, upb, 3)
    return cls().parse(upb.SerializeToString())


def _same(a: bytes, b: bytes, cls: type) -> bool:
    upb = upb_encode.upb_class_of(cls)
    return bool(upb.FromString(a) == upb.FromString(b))


def test_every_reply_type_of_both_services_is_covered():
    methods = sum(len(descriptor_pool_of_protos().FindServiceByName(s).methods) for s in SERVICES)
    assert methods >= 20
    assert {runtime_api.GetRunResponse, foundry_api.TraceResponse} <= set(REPLIES)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reply=replies())
def test_a_reply_encoded_by_upb_is_the_message_betterproto2_writes(reply):
    encoded = upb_encode.encode(reply)
    assert _same(encoded, bytes(reply), type(reply)), type(reply).__name__
    assert RequestCodec(1 << 24).encode(reply, type(reply)) == encoded or _same(
        RequestCodec(1 << 24).encode(reply, type(reply)), encoded, type(reply)
    )


def test_wrapped_values_and_oneof_defaults_are_written_as_betterproto2_writes_them():
    """A oneof member or wrapper at its type's default is still written (it is set); NaN too."""
    from foundry.proto.generated.google.protobuf import Struct

    struct = Struct.from_dict({"zero": 0.0, "no": False, "empty": "", "nan": math.nan, "l": []})
    reply = runtime_api.GetAttestationsResponse(
        attestations=[runtime_api.Attestation(attestation_id="a", claims=struct)]
    )
    upb = upb_encode.upb_class_of(type(reply)).FromString(upb_encode.encode(reply))
    fields = upb.attestations[0].claims.fields
    assert sorted(fields) == ["empty", "l", "nan", "no", "zero"]
    assert fields["zero"].HasField("number_value")
    assert math.isnan(fields["nan"].number_value)


def test_a_class_outside_the_generated_modules_is_refused():
    class Stray(betterproto2.Message):
        pass

    with pytest.raises(TypeError, match="not a generated message class"):
        upb_encode.encode(Stray())


def test_fields_betterproto2_kept_as_unknown_are_written_back():
    unknown = b"\xb8\x3e\x07"  # field 999, varint 7: in no message of ours
    reply = runtime_api.PatchStepResponse().parse(
        bytes(runtime_api.PatchStepResponse(step_id="s1")) + unknown
    )
    encoded = upb_encode.encode(reply)
    assert encoded.endswith(unknown)
    assert _same(encoded, bytes(reply), type(reply))


@given(instant=st.datetimes(timezones=st.just(UTC)))
def test_a_timestamp_is_written_as_betterproto2_wraps_it(instant):
    from foundry.proto.generated.google.protobuf import Timestamp

    wrapped = Timestamp.from_datetime(instant)
    assert upb_encode._seconds_and_nanos(instant) == (wrapped.seconds, wrapped.nanos)


OFFSETS = st.timedeltas(min_value=-timedelta(hours=23, minutes=59),
                       max_value=timedelta(hours=23, minutes=59)).map(timezone)  # fmt: skip
# whole seconds and whole milliseconds are written with fewer digits: drawn as often as any µs
MICROS = st.one_of(st.just(0), st.integers(0, 999).map(lambda ms: ms * 1000),
                   st.integers(0, 999_999))  # fmt: skip


@given(
    instant=st.datetimes(
        min_value=datetime(1, 1, 2),
        max_value=datetime(9999, 12, 30),  # noqa: DTZ001
        timezones=st.one_of(st.just(UTC), OFFSETS),
    ),  # fmt: skip
    micros=MICROS,
)
def test_a_timestamp_is_written_as_json_as_betterproto2_writes_it(instant, micros):
    from foundry.proto.generated.google.protobuf import Timestamp

    instant = instant.replace(microsecond=micros)
    assert jsonfast._timestamp_json(instant) == Timestamp.from_datetime(instant).to_dict()


def test_a_naive_timestamp_is_refused_as_betterproto2_refuses_it():
    with pytest.raises(ValueError, match="timezone aware"):
        upb_encode._seconds_and_nanos(datetime(2026, 1, 1))  # noqa: DTZ001


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reply=replies())
def test_a_reply_written_as_json_fast_is_what_betterproto2_writes(reply):
    """``jsonfast.to_dict`` writes every reply type itself now (64-bit integers, optional and
    wrapped fields, maps, Struct and Value): a GetRun of 2,000 steps or a Trace of 10,000 events
    held the daemon's loop for seconds in betterproto2's ``to_dict``."""
    assert _written(jsonfast.to_dict, reply) == _written(type(reply).to_dict, reply), type(
        reply
    ).__name__


def _written(write: Any, reply: Any) -> Any:
    try:
        return write(reply)
    except ValueError as exc:  # a Value with no kind set: neither writes it
        return ("refused", str(exc))
