"""Type-checking a decoded request, and bounding its ids.

betterproto2's decoder does not check wire types: a string field sent as a varint decodes to an
``int``, a message field sent as a varint to an ``int``, and the kernel would get values of the
wrong type. :func:`check_request` walks a decoded message by its public field metadata
(``betterproto2.FieldMetadata``) and raises :class:`WrongField` naming the first field whose
value is not of its declared type, nested too deeply, or (an id) too long.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import re
import typing
from functools import cache, lru_cache
from typing import Any

import betterproto2
from foundry.kernel.core.ids import MAX_ID_LENGTH
from foundry.proto.generated.google.protobuf import Value

MAX_NESTING = 64  # messages within messages (a Struct's Values count)
# A field's path deep in a Struct runs to ~1,600 characters, and error messages are cut at 400:
# past MAX_MESSAGE, its middle goes, so the reason (at the end) reaches the client.
MAX_MESSAGE = 300
PATH_HEAD, PATH_TAIL = 120, 100

_SCALAR: dict[str, type | tuple[type, ...]] = {
    betterproto2.TYPE_STRING: str,
    betterproto2.TYPE_BYTES: bytes,
    betterproto2.TYPE_BOOL: bool,
    betterproto2.TYPE_FLOAT: float,
    betterproto2.TYPE_DOUBLE: float,
    betterproto2.TYPE_ENUM: (enum.Enum, int),
    **dict.fromkeys(
        (betterproto2.TYPE_INT32, betterproto2.TYPE_INT64, betterproto2.TYPE_UINT32,
         betterproto2.TYPE_UINT64, betterproto2.TYPE_SINT32, betterproto2.TYPE_SINT64,
         betterproto2.TYPE_FIXED32, betterproto2.TYPE_FIXED64, betterproto2.TYPE_SFIXED32,
         betterproto2.TYPE_SFIXED64),
        int,
    ),
}  # fmt: skip
_UNWRAPPED_SPECIAL: dict[str, type] = {
    "Timestamp": datetime.datetime,
    "Duration": datetime.timedelta,
}


# A Struct's value that is none of its kinds (valid on the wire: an empty message, or a map entry
# without its value) has no JSON form: betterproto2's ``to_dict`` raises on it.
NO_KIND = (
    "a google.protobuf.Value with no kind set (null_value, number_value, string_value, "
    "bool_value, struct_value or list_value)"
)


class WrongField(ValueError):
    """A decoded field whose value is not what its declaration says; ``str`` names it."""


class UnreadField(WrongField):
    """A scalar field left None: betterproto2 read nothing for it (bytes that are no protobuf)."""


def check_request(message: Any) -> None:
    try:
        _check_message(message, "", 0)
    except WrongField as exc:
        text = str(exc)
        if len(text) <= MAX_MESSAGE:
            raise
        path, _, reason = text.rpartition(": ")  # no reason holds ": "; a key may
        if len(path) > PATH_HEAD + PATH_TAIL + 3:  # (a short one was written twice)
            path = f"{path[:PATH_HEAD]} … {path[-PATH_TAIL:]}"
        raise type(exc)(f"{path}: {reason}"[:400]) from None


@cache
def _fields(kind: Any) -> tuple[tuple[str, betterproto2.FieldMetadata], ...]:
    return tuple((f.name, betterproto2.FieldMetadata.get(f)) for f in dataclasses.fields(kind))


def _check_message(message: Any, where: str, depth: int) -> None:
    if depth > MAX_NESTING:
        raise WrongField(f"{where.rstrip('.') or 'request'}: nested deeper than {MAX_NESTING}")
    kind: Any = type(message)  # a class is hashable; typeshed's type[Any] says otherwise
    if kind is Value:
        _check_value_kind(message, where)
    for name, meta in _fields(kind):
        value = getattr(message, name)
        path = where + name
        if meta.proto_type == betterproto2.TYPE_MAP:
            _check_map(value, meta, path, depth)
        elif meta.repeated:
            if not isinstance(value, list):
                raise WrongField(f"{path}: expected a repeated {meta.proto_type}")
            for index, item in enumerate(value):
                if item is None:  # a deprecated group (wire type 3) decodes to None
                    raise WrongField(f"{path}[{index}]: expected {meta.proto_type}, got a group")
                _check_single(item, meta, f"{path}[{index}]", depth, name)
        else:
            _check_single(value, meta, path, depth, name)


def _check_value_kind(message: Value, where: str) -> None:
    """A Struct's value has one kind, and a ``null_value`` is NullValue's one member: another
    number (valid on the wire) made ``to_dict`` raise, and the request was answered INTERNAL."""
    kind, value = betterproto2.which_one_of(message, "kind")
    if kind == "":
        raise WrongField(f"{where.rstrip('.') or 'request'}: {NO_KIND}")
    if kind == "null_value" and value != 0:
        got = int(value) if isinstance(value, int) else value  # an enum member or its number
        raise WrongField(f"{where}null_value: NullValue has one value, NULL_VALUE (0), got {got}")


def _check_map(value: Any, meta: betterproto2.FieldMetadata, path: str, depth: int) -> None:
    if not isinstance(value, dict) or meta.map_meta is None:
        raise WrongField(f"{path}: expected a map")
    key_meta, value_meta = meta.map_meta
    for key, item in value.items():
        _check_single(key, key_meta, f"{path} key", depth, "")
        if item is None and value_meta.proto_type == betterproto2.TYPE_MESSAGE:
            raise WrongField(f"{path}[{str(key)[:40]!r}]: {NO_KIND}")  # an entry without one
        _check_single(item, value_meta, f"{path}[{str(key)[:40]!r}]", depth, "")


def _check_single(
    value: Any, meta: betterproto2.FieldMetadata, path: str, depth: int, name: str
) -> None:
    kind = meta.proto_type
    if kind == betterproto2.TYPE_MESSAGE:
        if value is None:
            return
        if meta.unwrap is not None:
            _check_unwrapped(value, meta.unwrap(), path)
        elif isinstance(value, betterproto2.Message):
            _check_message(value, path + ".", depth + 1)
        else:
            raise WrongField(f"{path}: expected a message, got a {_wire_kind(value)}")
        return
    expected = _SCALAR.get(kind)
    if value is None and (meta.optional or meta.group):
        return
    bad_int = kind in _BOOL_REFUSED and isinstance(value, bool)
    if expected is None or not isinstance(value, expected) or bad_int:
        refused = UnreadField if value is None else WrongField
        raise refused(f"{path}: expected {kind}, got a {_wire_kind(value)}")
    bounds = _RANGES.get(kind)
    if bounds is not None:
        _check_range(value, bounds, path, kind)
    too_long = isinstance(value, str) and len(value) > MAX_ID_LENGTH
    if kind == betterproto2.TYPE_STRING and too_long and _is_id(name):
        raise WrongField(f"{path}: longer than {MAX_ID_LENGTH} characters")


def _check_range(value: Any, bounds: tuple[int, int], path: str, kind: str) -> None:
    """An integer (an enum's number too) within its type's range. proto3 JSON reads any integer
    into any integer field (binary cannot carry one out of range): a seed past int64 was
    acknowledged, then refused by the store's columns, and lost."""
    low, high = bounds
    if not low <= value <= high:
        shown = str(int(value))
        if len(shown) > 40:  # 1e300 wrote its 301 digits
            shown = f"{shown[:20]}… ({len(shown.lstrip('-'))} digits)"
        raise WrongField(f"{path}: {shown} is out of the {kind} range ({low} to {high})")


_INT_TYPES = frozenset(k for k, v in _SCALAR.items() if v is int)
_BOOL_REFUSED = _INT_TYPES | {betterproto2.TYPE_ENUM}  # ``true`` is no number, nor an enum value
_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)
_RANGES: dict[str, tuple[int, int]] = {
    **dict.fromkeys((betterproto2.TYPE_INT32, betterproto2.TYPE_SINT32, betterproto2.TYPE_SFIXED32,
                     betterproto2.TYPE_ENUM), _INT32),
    **dict.fromkeys((betterproto2.TYPE_UINT32, betterproto2.TYPE_FIXED32), (0, 2**32 - 1)),
    **dict.fromkeys((betterproto2.TYPE_INT64, betterproto2.TYPE_SINT64, betterproto2.TYPE_SFIXED64),
                    _INT64),
    **dict.fromkeys((betterproto2.TYPE_UINT64, betterproto2.TYPE_FIXED64), (0, 2**64 - 1)),
}  # fmt: skip


def _is_id(name: str) -> bool:
    return name.endswith(("_id", "_ids")) or name in _ID_NAMES


_ID_NAMES = frozenset(
    {"idempotency_key", "slug", "pack", "from_step", "add", "remove", "breakpoints", "commit",
     "event_type", "project"}
)  # fmt: skip


def _check_unwrapped(value: Any, wrapper: type, path: str) -> None:
    expected = _UNWRAPPED_SPECIAL.get(wrapper.__name__)
    if expected is None:
        [(_, inner)] = _fields(wrapper)  # a wrapper type has one field, ``value``
        expected_scalar = _SCALAR[inner.proto_type]
        ok = isinstance(value, expected_scalar) and not (
            inner.proto_type in _INT_TYPES and isinstance(value, bool)
        )
        bounds = _RANGES.get(inner.proto_type) if ok else None
        if bounds is not None:  # CreateBranchRun's seed: 2^63 was stored nowhere (JSON)
            _check_range(value, bounds, path, wrapper.__name__)
    else:
        ok = isinstance(value, expected)
    if not ok:
        raise WrongField(f"{path}: expected a {wrapper.__name__}, got a {_wire_kind(value)}")


def _wire_kind(value: Any) -> str:
    """What a wrong value is, for the error message. Only proto3 JSON gets here (binary's wire
    types are checked as it is framed: ``framing.value_culprit``), so in JSON's words: they
    were the wire's, "got a varint" for ``"eventType": 5``."""
    if isinstance(value, bool):
        return f"boolean ({str(value).lower()})"
    if isinstance(value, int):
        return "number"
    if isinstance(value, float):
        return f"number with a fraction ({value!r})" if not value.is_integer() else "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bytes):
        return "bytes value"
    if isinstance(value, list):
        return "JSON array"
    return "JSON object" if isinstance(value, dict) else type(value).__name__


def coerce_json_numbers(message: Any, depth: int = 0) -> None:
    """Give numbers decoded from proto3 JSON their declared type, in place, before
    :func:`check_request`: JSON writes a whole double as ``5`` (an ``int`` once parsed) and a
    64-bit integer, bare or in a wrapper, may come as a decimal string (``"42"``). Anything else
    is left for :func:`check_request` to refuse."""
    if depth > MAX_NESTING or not isinstance(message, betterproto2.Message):
        return
    for name, meta in _fields(type(message)):
        value = getattr(message, name)
        if meta.proto_type == betterproto2.TYPE_MAP:
            if isinstance(value, dict) and meta.map_meta is not None:
                for key, item in value.items():
                    value[key] = _coerced(item, meta.map_meta[1], depth)
        elif meta.repeated:
            if isinstance(value, list):
                value[:] = [_coerced(item, meta, depth) for item in value]
        else:
            setattr(message, name, _coerced(value, meta, depth))


def _coerced(value: Any, meta: betterproto2.FieldMetadata, depth: int) -> Any:
    kind = meta.proto_type
    if kind == betterproto2.TYPE_MESSAGE:
        if meta.unwrap is not None and value is not None:
            wrapper = meta.unwrap()
            if wrapper.__name__ not in _UNWRAPPED_SPECIAL:
                [(_, inner)] = _fields(wrapper)
                return _scalar(value, inner.proto_type)
        coerce_json_numbers(value, depth + 1)
        return value
    return _scalar(value, kind)


_JSON_FLOAT = re.compile(
    r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?|NaN|-?Infinity", re.ASCII
)


def _scalar(value: Any, kind: str) -> Any:
    if isinstance(value, bool):
        return value
    if kind in (betterproto2.TYPE_DOUBLE, betterproto2.TYPE_FLOAT):
        if isinstance(value, int):
            return float(value)
        if isinstance(value, str) and len(value) <= 400 and _JSON_FLOAT.fullmatch(value):
            return float(value)  # proto3 JSON: "0.5", "1e-3", "NaN", "Infinity", "-Infinity"
    if kind in _INT_TYPES and isinstance(value, str) and _DECIMAL.fullmatch(value):
        return int(value)
    return value


_DECIMAL = re.compile(r"-?[0-9]{1,20}", re.ASCII)


# --- proto3 JSON: an integer field given a fraction ---------------------------------------------


def refuse_fractions(kind: Any, document: Any) -> None:
    """Raise :class:`WrongField` for anything but an integer — a number with a fraction
    (``1.5``), ``true``, a string other than decimal digits — given to an integer field anywhere
    in a proto3 JSON ``document`` of message class ``kind``. betterproto2's ``from_dict`` turns
    them into ``int(value)`` (1.5 and ``true`` into 1, ``" 12"`` into 12), where proto3 JSON
    refuses them. Likewise ``true`` or a string not a proto3 JSON number given to a double
    field: ``float(value)`` made ``true`` a budget's 1.0 (and a gate DENY). Only the paths that
    can hold a number are walked (:func:`_integer_paths`)."""
    _refuse_fractions(kind, document, "", 0)


def _refuse_fractions(kind: Any, document: Any, where: str, depth: int) -> None:
    if not isinstance(document, dict) or depth > MAX_NESTING or not _integer_paths(kind):
        return  # not an object: from_dict and check_request name what is wrong with it
    for key, value in document.items():
        # (a key longer than any field name's spelling names no field, and is not cached)
        found = _integer_path(kind, key) if type(key) is str and len(key) <= 128 else None
        if found is None or value is None:
            continue
        name, nested, shape = found
        path = where + name
        if shape == "map":
            items = value.items() if isinstance(value, dict) else ()
            for item_key, item in items:
                _refuse_in(item, nested, f"{path}[{str(item_key)[:40]!r}]", depth)
        elif shape == "repeated":
            for index, item in enumerate(value if isinstance(value, list) else ()):
                _refuse_in(item, nested, f"{path}[{index}]", depth)
        else:
            _refuse_in(value, nested, path, depth)


def _refuse_in(value: Any, nested: Any, path: str, depth: int) -> None:
    if nested is _ENUM:
        # from_dict took ``true`` as the value 1: a follow-up's APPROVED, a metric's direction
        if isinstance(value, bool | dict | list) or (
            isinstance(value, float) and not value.is_integer()
        ):
            raise WrongField(f"{path}: {_shown(value)} is not an enum value (its name, or its "
                             "number)")  # fmt: skip
        return
    if (nested is None or nested is _DOUBLE) and isinstance(value, dict):
        # proto3 JSON writes a wrapper (Int64Value, DoubleValue) as its value; from_dict also
        # took {"value": …}, unchecked: {"value": 1.5} was the seed 1, {"value": true} a limit
        raise WrongField(f"{path}: expected a number, got an object")
    if nested is _DOUBLE:
        if isinstance(value, bool):
            raise WrongField(f"{path}: {str(value).lower()} is not a number")
        if isinstance(value, str) and not (len(value) <= 400 and _JSON_FLOAT.fullmatch(value)):
            # float() took " 1", "1_000", "inf" and "nan", which proto3 JSON does not
            raise WrongField(f"{path}: {value[:40]!r} is not a number")
    elif nested is not None:
        _refuse_fractions(nested, value, path + ".", depth + 1)
    elif isinstance(value, bool):  # from_dict made ``true`` the seed 1
        raise WrongField(f"{path}: {str(value).lower()} is not an integer")
    elif isinstance(value, float) and not value.is_integer():
        raise WrongField(f"{path}: {value!r} is not an integer")
    elif isinstance(value, str) and not _DECIMAL.fullmatch(value):
        # from_dict's int() took " 12", "+12" and other scripts' digits, and answered "1e3"
        # with Python's own words, naming the message instead of the field
        raise WrongField(f"{path}: {value[:40]!r} is not an integer (decimal digits, as a string)")


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return (
        "an object"
        if isinstance(value, dict)
        else "a list"
        if isinstance(value, list)
        else (repr(value))
    )


_MAPPED = dict[str, tuple[str, Any, str]]  # field name → (field name, message class or None, shape)
_DOUBLE = "double"  # in place of a message class: the path ends at a double (or float)
_ENUM = "enum"  # in place of a message class: the path ends at an enum
_FLOAT_TYPES = frozenset((betterproto2.TYPE_DOUBLE, betterproto2.TYPE_FLOAT))


@lru_cache(maxsize=4_096)
def _integer_path(kind: Any, key: str) -> tuple[str, Any, str] | None:
    """The integer path a JSON key of ``kind`` names, read as betterproto2's ``from_dict``
    reads keys (``safe_snake_case``: ``seed``, ``Seed``, ``SEED`` are one field)."""
    return _integer_paths(kind).get(betterproto2.casing.safe_snake_case(key))


@cache
def _integer_paths(kind: Any) -> _MAPPED:
    """The fields of message class ``kind`` that are, or lead to, integers (scalars, integer
    wrappers, messages holding some), by name."""
    _building.add(kind)
    try:
        hints = typing.get_type_hints(kind)
        paths: _MAPPED = {}
        for field in dataclasses.fields(kind):
            meta = betterproto2.FieldMetadata.get(field)
            found = _leads_to_integers(meta, hints[field.name])
            if found is not None:
                paths[field.name] = (field.name, found[0], found[1])
        return paths
    finally:
        _building.discard(kind)


_building: set[Any] = set()  # classes whose paths are being made (a recursive message)


def _leads_to_integers(meta: betterproto2.FieldMetadata, hint: Any) -> tuple[Any, str] | None:
    """(the message class to walk into, None for an integer itself or ``_DOUBLE`` for a
    double; the field's shape), or None when the field can hold no number."""
    if meta.proto_type == betterproto2.TYPE_MAP:
        if meta.map_meta is None:
            return None
        inner = _leads_to_integers(meta.map_meta[1], typing.get_args(hint)[1])
        return None if inner is None else (inner[0], "map")
    shape = "repeated" if meta.repeated else "single"
    if meta.proto_type == betterproto2.TYPE_ENUM:
        return _ENUM, shape
    if meta.proto_type in _INT_TYPES:
        return None, shape
    if meta.proto_type in _FLOAT_TYPES:
        return _DOUBLE, shape
    if meta.proto_type != betterproto2.TYPE_MESSAGE:
        return None
    if meta.unwrap is not None:
        wrapper = meta.unwrap()
        if wrapper.__name__ in _UNWRAPPED_SPECIAL:
            return None
        [(_, inner_meta)] = _fields(wrapper)
        if inner_meta.proto_type in _FLOAT_TYPES:
            return _DOUBLE, shape
        return (None, shape) if inner_meta.proto_type in _INT_TYPES else None
    nested = next(
        (arg for arg in (*typing.get_args(hint), hint) if isinstance(arg, type) and
         issubclass(arg, betterproto2.Message)), None,
    )  # fmt: skip
    if nested is None or nested.__module__.endswith("google.protobuf"):
        return None  # Struct, Value, ListValue: JSON of their own, without integers
    if nested in _building or _integer_paths(nested):
        return nested, shape
    return None


# --- proto3 JSON: an array where a list is declared, an object where a message or map is ---------


def refuse_wrong_shapes(kind: Any, document: Any) -> None:
    """Raise :class:`WrongField` for a repeated field given anything but an array, or a map or
    message field given anything but an object, anywhere in a proto3 JSON ``document`` of
    message class ``kind`` (null is the field's default). betterproto2's ``from_dict`` iterates
    what it gets: ``"riskTags": "security"`` became the tags ``s``, ``e``, ``c``, …"""
    _refuse_shapes(kind, document, "", 0)


def _refuse_shapes(kind: Any, document: Any, where: str, depth: int) -> None:
    if not isinstance(document, dict) or depth > MAX_NESTING:
        return
    refuse_both_spellings(kind, document, where)
    for key, value in document.items():
        found = _shaped_field(kind, key) if type(key) is str and len(key) <= 128 else None
        if found is None or value is None:
            continue
        name, shape, nested = found
        path = where + name
        if shape == "repeated":
            if not isinstance(value, list):
                raise WrongField(f"{path}: expected a JSON array, got {json_kind(value)}")
            if nested is not None:
                for index, item in enumerate(value):
                    _refuse_message(nested, item, f"{path}[{index}]", depth)
        elif shape == "map":
            if not isinstance(value, dict):
                raise WrongField(f"{path}: expected a JSON object, got {json_kind(value)}")
        else:
            _refuse_message(nested, value, path, depth)


def _refuse_message(kind: Any, value: Any, path: str, depth: int) -> None:
    if not isinstance(value, dict):
        raise WrongField(f"{path}: expected a JSON object, got {json_kind(value)}")
    _refuse_shapes(kind, value, path + ".", depth + 1)


def json_kind(value: Any) -> str:
    kinds = {str: "a string", bool: "a boolean", int: "a number", float: "a number",
             list: "an array", dict: "an object"}  # fmt: skip
    return kinds.get(type(value), "null")


def refuse_both_spellings(kind: Any, document: dict[Any, Any], where: str = "") -> None:
    """Raise :class:`WrongField` for a field a JSON object names twice, in two spellings
    (``runId`` and ``run_id``): ``from_dict`` took the last, so a proxy or a reviewer reading the
    first saw another request than the daemon ran (one key given twice:
    ``json_input.each_key_once``)."""
    if len(document) < 2:
        return
    seen: dict[str, str] = {}
    for key in document:
        name = _field_named(kind, key) if type(key) is str and len(key) <= 128 else None
        if name is None:
            continue
        if name in seen:
            raise WrongField(f"{where}{name}: given twice, as {seen[name]!r} and {key!r}")
        seen[name] = key


@lru_cache(maxsize=4_096)
def _field_named(kind: Any, key: str) -> str | None:
    """The field of ``kind`` a JSON key names, as ``from_dict`` reads keys; None for none."""
    name = betterproto2.casing.safe_snake_case(key)
    fields = getattr(kind, "__dataclass_fields__", {})
    return name if name in fields else None


@lru_cache(maxsize=4_096)
def _shaped_field(kind: Any, key: str) -> tuple[str, str, Any] | None:
    """(field name, "repeated" | "map" | "message", the message class of its values or None)
    of the field a JSON key of ``kind`` names — a field whose JSON must be an array or an object
    — or None (read as ``from_dict`` reads keys: ``riskTags``, ``risk_tags`` are one field)."""
    return _shaped_fields(kind).get(betterproto2.casing.safe_snake_case(key))


@cache
def _shaped_fields(kind: Any) -> dict[str, tuple[str, str, Any]]:
    hints = typing.get_type_hints(kind)
    shaped: dict[str, tuple[str, str, Any]] = {}
    for field in dataclasses.fields(kind):
        meta = betterproto2.FieldMetadata.get(field)
        if meta.proto_type == betterproto2.TYPE_MAP:
            shaped[field.name] = (field.name, "map", None)
            continue
        nested = _plain_message(meta, hints[field.name])
        if meta.repeated:
            shaped[field.name] = (field.name, "repeated", nested)
        elif nested is not None:
            shaped[field.name] = (field.name, "message", nested)
    return shaped


def _plain_message(meta: betterproto2.FieldMetadata, hint: Any) -> Any:
    """The message class a field holds, when its JSON is an object of its fields: not a
    wrapper (its JSON is the value), nor a well-known type (JSON of its own)."""
    if meta.proto_type != betterproto2.TYPE_MESSAGE or meta.unwrap is not None:
        return None
    nested = next(
        (arg for arg in (*typing.get_args(hint), hint) if isinstance(arg, type) and
         issubclass(arg, betterproto2.Message)), None,
    )  # fmt: skip
    if nested is None or nested.__module__.endswith("google.protobuf"):
        return None
    return nested
