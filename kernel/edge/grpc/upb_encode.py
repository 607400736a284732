"""Any betterproto2 reply serialized by upb, the C-backed ``protobuf`` runtime: the same message.

betterproto2 serializes in pure Python, and slowly — it looks up each field's default under
``warnings.catch_warnings``: 100 workflows of a StatusResponse (37 KB) took ~20 ms, a GetRun of a
1,000-step run (~250 KB) most of 300 ms of the daemon's time. Here the reply's values are copied
into the upb message of the same type (found by field number in the committed descriptor set,
``reflection.py``) and upb writes the bytes. The values are betterproto2's, with its rules for
what is written: a field that is None is not; a field equal to its default is not, unless it is
optional or in a oneof (its default is then None); a message field that is set is, even empty; a
wrapped type (DoubleValue …, held unwrapped as a float) is wrapped back by betterproto2's own
``from_wrapped``, a Timestamp (held as a datetime) by the same arithmetic as its
``from_datetime``, written straight into upb's fields; fields betterproto2 kept as unknown are
merged back.

This reads betterproto2's private per-class metadata (``_betterproto``: each field's number,
type, map and unwrap information, and default), so it is quarantined here; ``tests/kernel/edge/
test_upb_encode.py`` checks it against betterproto2's own parse for random messages of every type
the services use — and fails first if the metadata changes shape.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any

import betterproto2
from foundry.kernel.edge.grpc.reflection import descriptor_pool_of_protos
from google.protobuf import message_factory

GENERATED = "foundry.proto.generated."  # betterproto2's modules: this, then the proto package
TIMESTAMP = "google.protobuf.Timestamp"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class _Field:
    attribute: str  # betterproto2's name for it
    name: str  # upb's (the proto field's)
    kind: str  # "scalar", "message", "timestamp", "repeated", "repeated_message", "map", …
    unwrap: Callable[[], Any] | None  # the wrapper's class (its from_wrapped), if wrapped
    default: Any  # a scalar's default (None when optional or in a oneof: then always written)


def encode(message: betterproto2.Message) -> bytes:
    """``message`` serialized by upb: what ``bytes(message)`` means, in C."""
    out = upb_class_of(type(message))()
    _fill(out, message)
    data: bytes = out.SerializeToString()
    return data


@cache
def upb_class_of(cls: type) -> Any:
    """The upb class of a betterproto2 message class (its proto name from its module)."""
    pool = descriptor_pool_of_protos()
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(proto_name_of(cls)))


def proto_name_of(cls: type) -> str:
    """The full proto name of a betterproto2 message class (a top-level message's)."""
    module = cls.__module__
    if not module.startswith(GENERATED):
        raise TypeError(f"not a generated message class: {cls.__module__}.{cls.__name__}")
    return f"{module.removeprefix(GENERATED)}.{cls.__name__}"


def _fill(out: Any, message: betterproto2.Message) -> None:
    for field in _plan(type(message), out.DESCRIPTOR):
        value = getattr(message, field.attribute)
        if value is None:
            continue
        kind = field.kind
        if kind == "scalar":
            if value != field.default:
                setattr(out, field.name, value)
        elif kind == "message":
            target = getattr(out, field.name)
            target.SetInParent()  # a message that is set is written, even empty
            _fill(target, field.unwrap().from_wrapped(value) if field.unwrap else value)
        elif kind == "timestamp":  # held as a datetime
            target = getattr(out, field.name)
            target.seconds, target.nanos = _seconds_and_nanos(value)
        elif not value:
            continue  # an empty list or map is the default
        elif kind == "repeated":
            getattr(out, field.name).extend(value)
        elif kind == "repeated_message":
            add = getattr(out, field.name).add
            for item in value:
                _fill(add(), field.unwrap().from_wrapped(item) if field.unwrap else item)
        elif kind == "map":
            getattr(out, field.name).update(value)
        else:  # a map whose values are messages
            entries = getattr(out, field.name)
            for key, item in value.items():
                _fill(entries[key], item)
    unknown = message._unknown_fields
    if unknown:
        out.MergeFromString(unknown)


def _seconds_and_nanos(instant: datetime) -> tuple[int, int]:
    """A Timestamp's fields for ``instant``, as betterproto2's ``Timestamp.from_datetime``
    makes them (whole microseconds from the epoch, floored; a naive instant is refused)."""
    if instant.tzinfo is None:
        raise ValueError("datetime must be timezone aware")
    offset = instant - EPOCH
    micros = (offset.days * 86_400 + offset.seconds) * 1_000_000 + offset.microseconds
    seconds, micros = divmod(micros, 1_000_000)
    return seconds, micros * 1000


@cache
def _plan(cls: type, descriptor: Any) -> tuple[_Field, ...]:
    """How each of ``cls``'s fields is copied, by its number in the upb descriptor."""
    metadata = cls._betterproto  # type: ignore[attr-defined]
    plan = []
    for attribute, meta in metadata.meta_by_field_name.items():
        described = descriptor.fields_by_number[meta.number]
        is_message = described.message_type is not None
        if meta.map_meta:
            value_type = described.message_type.fields_by_name["value"]
            kind = "map_message" if value_type.message_type is not None else "map"
        elif meta.repeated:
            kind = "repeated_message" if is_message else "repeated"
        elif is_message and meta.unwrap and described.message_type.full_name == TIMESTAMP:
            kind = "timestamp"
        else:
            kind = "message" if is_message else "scalar"
        default = metadata.default_gen[attribute]() if kind == "scalar" else None
        plan.append(_Field(attribute, described.name, kind, meta.unwrap, default))
    return tuple(plan)
