"""proto3 JSON for simple messages without betterproto2's ``to_dict``/``from_dict``.

Those read every message class's type hints again on every call (``typing.get_type_hints``) and
re-case every name with a regex: about 0.3 ms for an EmitResponse here, most of a Connect JSON
Emit's codec time. A class whose fields are all strings, booleans, 32-bit integers, enums, lists
of those, or messages of the same kind gets a field table once (:func:`_fields`) and is
converted with it. Written, so is one with 64-bit integers, optional fields, plain maps,
well-known types (Struct, Value: their own ``to_dict``) and wrapped ones (a Timestamp); read, any
such class (and floats, bytes, oneofs) goes through betterproto2 unchanged. The output is
betterproto2's own (``tests/kernel/edge/test_http_units.py`` and ``test_upb_encode.py`` compare
them for every reply type)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from datetime import UTC, datetime
from functools import cache
from typing import Any, get_args, get_type_hints

import betterproto2
from foundry.kernel.edge.grpc.message_check import (
    WrongField,
    json_kind,
    refuse_fractions,
    refuse_wrong_shapes,
)

_SCALARS = frozenset({
    betterproto2.TYPE_STRING, betterproto2.TYPE_BOOL, betterproto2.TYPE_INT32,
    betterproto2.TYPE_UINT32, betterproto2.TYPE_SINT32, betterproto2.TYPE_FIXED32,
    betterproto2.TYPE_SFIXED32,
})  # fmt: skip
_WIDE = frozenset({
    betterproto2.TYPE_INT64, betterproto2.TYPE_UINT64, betterproto2.TYPE_SINT64,
    betterproto2.TYPE_FIXED64, betterproto2.TYPE_SFIXED64,
})  # fmt: skip
_WELL_KNOWN = "google.protobuf"

# name, JSON name, proto type, kind, repeated, type (a wrapped type: its wrapper's), optional
Field = tuple[str, str, str, str, bool, Any, bool]
_HELD = frozenset({"message", "known", "wrapped"})  # written whenever set, even empty


def _json_name(name: str) -> str:
    return str(betterproto2.Casing.CAMEL(name)).rstrip("_")


@cache
def _fields(kind: Any, wide: bool = False) -> tuple[Field, ...] | None:
    """The field table of a simple message class, or None. ``wide``, for writing only: also
    64-bit integers (decimal strings), optional fields, maps of plain keys and values,
    well-known types (Struct, Value: their own ``to_dict``) and wrapped ones (a Timestamp held
    as a datetime: wrapped back, as betterproto2 does) — a GetRun of 2,000 steps took 1.4 s of
    the daemon's loop through betterproto2's ``to_dict``, which reads every class's type hints
    again at each message."""
    if _WELL_KNOWN in (kind.__module__ or "") or not dataclasses.is_dataclass(kind):
        return None
    hints = get_type_hints(kind)
    fields: list[Field] = []
    for field in dataclasses.fields(kind):
        meta = betterproto2.FieldMetadata.get(field)
        if (meta.optional and not wide) or meta.group:
            return None
        if meta.proto_type == betterproto2.TYPE_MAP:  # of plain keys and values (labels)
            if not wide or meta.map_meta is None:
                return None
            if any(part.proto_type not in _SCALARS for part in meta.map_meta):
                return None
            fields.append((field.name, _json_name(field.name), meta.proto_type, "map", False,
                           None, False))  # fmt: skip
            continue
        hint = hints[field.name]
        inner = hint.__args__[0] if meta.repeated or meta.optional else hint
        if meta.proto_type == betterproto2.TYPE_MESSAGE:
            if meta.unwrap is not None:
                if not wide:
                    return None
                shape, inner = "wrapped", meta.unwrap()
            elif wide and _WELL_KNOWN in (inner.__module__ or ""):
                shape = "known"
            elif _fields(inner, wide) is None:
                return None
            else:
                shape = "message"
        elif meta.proto_type == betterproto2.TYPE_ENUM:
            shape = "enum"
        elif meta.proto_type in _SCALARS:
            shape = "scalar"
        elif wide and meta.proto_type in _WIDE:
            shape = "wide"
        else:
            return None
        fields.append((field.name, _json_name(field.name), meta.proto_type, shape,
                       bool(meta.repeated), inner, bool(meta.optional)))  # fmt: skip
    return tuple(fields)


def to_dict(message: Any) -> dict[str, Any]:
    kind: Any = type(message)  # a class is hashable; typeshed's type[Any] says otherwise
    # (a Trace of 10,000 events, its int64 and uint64 fields through betterproto2: ~0.65 ms an
    # event and execution, 7-10 s with the daemon's loop held)
    fields = _fields(kind, True)
    if fields is None:
        result: dict[str, Any] = message.to_dict()
        return result
    out: dict[str, Any] = {}
    for name, json_name, _, shape, repeated, inner, optional in fields:
        value = getattr(message, name)
        if repeated:
            if value:
                out[json_name] = [_value(v, shape, inner) for v in value]
        elif shape == "map":
            if value:
                out[json_name] = dict(value)
        elif optional or shape in _HELD:
            if value is not None:  # set: written, a default too
                out[json_name] = _value(value, shape, inner)
        elif value:  # a default (empty, 0, false, the zero enum) is left out
            out[json_name] = _value(value, shape, inner)
    return out


def _value(value: Any, shape: str, inner: Any) -> Any:
    if shape == "wide":  # proto3 JSON's 64-bit integers are decimal strings
        return str(value)
    if shape == "enum":  # as betterproto2: the proto name, or the number of an unknown value
        return (value.proto_name or value.name) if getattr(value, "name", "") else int(value)
    if shape == "message":
        return to_dict(value)
    if shape == "known":
        return value.to_dict()
    if shape == "wrapped":
        if type(value) is datetime and value.tzinfo is not None:
            return _timestamp_json(value)
        return inner.from_wrapped(value).to_dict()
    return value


def _timestamp_json(moment: datetime) -> str:
    """What betterproto2's Timestamp writes for ``moment`` (RFC 3339 in UTC, 0, 3 or 6 digits
    of fraction), without making a Timestamp of it and a datetime again (~11 µs a field, two
    of them an event of a Trace)."""
    moment = moment.astimezone(UTC)
    whole = moment.replace(microsecond=0, tzinfo=None).isoformat()
    micros = moment.microsecond
    if not micros:
        return f"{whole}Z"
    if not micros % 1000:
        return f"{whole}.{micros // 1000:03d}Z"
    return f"{whole}.{micros:06d}Z"


@cache
def _decoder(kind: Any) -> dict[str, tuple[str, Callable[[Any], Any]]] | None:
    """JSON name and proto name → (field, converter) for a class of singular scalars and enums
    only; None for any other class."""
    fields = _fields(kind)
    if fields is None or any(repeated or shape == "message"
                             for _, _, _, shape, repeated, _, _ in fields):  # fmt: skip
        return None
    table: dict[str, tuple[str, Callable[[Any], Any]]] = {}
    for name, json_name, proto_type, shape, _, inner, _ in fields:
        convert = _enum_reader(inner) if shape == "enum" else _scalar_reader(proto_type)
        table[json_name] = table[name] = (name, convert)
    return table


def from_dict(kind: Any, document: dict[str, Any]) -> Any:
    """The message of ``document`` (unknown keys ignored); values of a wrong type are kept for
    ``check_request`` to name."""
    table = _decoder(kind)
    if table is None:
        refuse_wrong_shapes(kind, document)  # from_dict iterates a string as a list
        refuse_fractions(kind, document)  # from_dict makes 1.5 the integer 1
        try:
            return kind.from_dict(document, ignore_unknown_fields=True)
        except _UNREADABLE as exc:
            path, value = _failing_key(kind, document)
            raise WrongField(f"{path}: {_unreadable(exc, value)}") from None
    values = {}
    for key, value in document.items():
        entry = table.get(key)
        if entry is not None:
            if entry[0] in values:
                raise WrongField(f"{entry[0]}: given twice, in two spellings of its name")
            try:
                values[entry[0]] = entry[1](value) if value is not None else None
            except ValueError as exc:
                raise WrongField(f"{entry[0]}: {str(exc)[:100]}") from None
    return kind(**{name: value for name, value in values.items() if value is not None})


def _unreadable(exc: Exception, value: Any) -> str:
    """Why betterproto2 could not read ``value``, in JSON's words: its own were Python's
    (``'int' object has no attribute 'tzinfo'`` for a Timestamp given a number)."""
    if isinstance(exc, OverflowError):
        return "out of range"  # a Timestamp past year 9999 overflows Python's dates
    if isinstance(exc, ValueError) and str(exc):
        return str(exc)[:100]
    if isinstance(value, str):  # a Timestamp, a Duration: their JSON is a string
        return f"{value[:40]!r} is not a value of this field's type"
    return f"a value of the wrong JSON type ({json_kind(value)})"


_UNREADABLE = (ValueError, TypeError, AttributeError, AssertionError, OverflowError)


def _failing_key(kind: Any, document: dict[str, Any], prefix: str = "") -> tuple[str, Any]:
    """The path of the first key betterproto2 cannot read alone (to name it in the error), into
    nested messages and lists of them (``spec.inputs``, ``evals[1].score``, not ``spec``), and
    the value found there."""
    for key, value in document.items():
        try:
            kind.from_dict({key: value}, ignore_unknown_fields=True)
        except _UNREADABLE:
            inner, repeated = _message_class(kind, str(key))
            path = prefix + _field_name(kind, str(key))[:40]
            if inner is None or len(prefix) >= 200:
                return path, value
            if isinstance(value, dict) and not repeated:
                return _failing_key(inner, value, path + ".")
            if isinstance(value, list) and repeated:
                return _failing_item(inner, value, path)
            return path, value
    return prefix.rstrip(".") or "request", document


def _failing_item(kind: Any, items: list[Any], path: str) -> tuple[str, Any]:
    """The path into the first item of a list of messages betterproto2 cannot read."""
    for index, item in enumerate(items):
        try:
            kind.from_dict(item, ignore_unknown_fields=True)
        except _UNREADABLE:
            where = f"{path}[{index}]"
            if isinstance(item, dict):
                return _failing_key(kind, item, where + ".")
            return where, item
    return path, items


def _field_name(kind: Any, key: str) -> str:
    """The proto name of the field a JSON key names, as betterproto2 reads keys; else the key."""
    name = betterproto2.casing.safe_snake_case(key)
    if dataclasses.is_dataclass(kind) and any(f.name == name for f in dataclasses.fields(kind)):
        return name
    return key


def _message_class(kind: Any, key: str) -> tuple[Any, bool]:
    """The message class of ``kind``'s message field named ``key`` (either case), or None; and
    whether the field is repeated."""
    if not dataclasses.is_dataclass(kind):
        return None, False
    for field in dataclasses.fields(kind):
        if key not in (field.name, _json_name(field.name)):
            continue
        meta = betterproto2.FieldMetadata.get(field)
        if meta.proto_type != betterproto2.TYPE_MESSAGE or meta.unwrap:
            return None, False
        hint = get_type_hints(kind)[field.name]
        classes = [c for c in (*get_args(hint), hint) if dataclasses.is_dataclass(c)]
        return (classes[0] if classes else None), bool(meta.repeated)
    return None, False


def _scalar_reader(proto_type: str) -> Callable[[Any], Any]:
    if proto_type in (betterproto2.TYPE_STRING, betterproto2.TYPE_BOOL):
        return _same
    return _integer


def _same(value: Any) -> Any:
    return value


def _integer(value: Any) -> Any:
    """proto3 JSON allows an integer as a number or a decimal string (words as
    ``message_check.refuse_fractions``'s, which the other classes' requests go through)."""
    if isinstance(value, bool):
        raise ValueError(f"{str(value).lower()} is not an integer")
    if isinstance(value, str):
        if _DECIMAL.fullmatch(value):
            return int(value)
        raise ValueError(f"{value[:40]!r} is not an integer (decimal digits, as a string)")
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        raise ValueError(f"{value!r} is not an integer")
    return value  # an integer (its range checked by check_request), else check_request names it


_DECIMAL = re.compile(r"-?[0-9]{1,20}")


def _enum_reader(kind: Any) -> Callable[[Any], Any]:
    renamed = kind.betterproto_renamed_proto_names_to_value()

    def read(value: Any) -> Any:  # as betterproto2's from_dict
        if isinstance(value, str):
            number = renamed.get(value)
            return kind(number) if number is not None else kind.from_string(value)
        if isinstance(value, int) and not isinstance(value, bool):  # ``true`` is no enum value
            return kind(value)
        raise ValueError("Enum value must be a string or an Enum instance")

    return read
