"""Whether a request's bytes are protobuf at all (:func:`check_framing`), and what they mean as
protobuf says (:func:`canonical`, for betterproto2's parser).

betterproto2's parser reads a length-delimited field with ``BytesIO.read``, which returns fewer
bytes than the length says without complaint: a request cut short decodes to a shorter string
(or a message missing its tail), a cut varint to whatever was read, and the kernel would act on
it — an Emit of half a payload, a Status of a prefix of an id. upb refuses such bytes, but it
also refuses invalid UTF-8 in a string, which the codecs must answer naming the field (as
betterproto2's path and ``message_check`` do). So the check parses with upb against a copy of
the schema in which every string field is ``bytes`` (and every map entry a plain message: a
bytes key is no map key; the wire format is the same): upb then refuses exactly the bytes that
are not a message of the type — a field running past the end, a malformed tag, varint or group,
or nesting deeper than upb's 100 messages (``message_check.MAX_NESTING``, 64, refuses less
first, naming the field). A field of the wrong wire type is no framing error: upb keeps it
aside, and ``message_check`` names it.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import betterproto2
from foundry.kernel.edge.grpc.message_check import (
    MAX_NESTING,
    UnreadField,
    WrongField,
    check_request,
)
from foundry.kernel.edge.grpc.reflection import descriptor_pool_of_protos, file_descriptors
from foundry.kernel.edge.grpc.upb_encode import proto_name_of
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, unknown_fields
from google.protobuf.message import DecodeError

NOT_PROTOBUF = (
    "the bytes are not a whole protobuf message (a field runs past the end, or a tag, varint "
    "or group is malformed)"
)
_STRING = descriptor_pb2.FieldDescriptorProto.TYPE_STRING
_BYTES = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES


def check_framing(data: bytes | bytearray, kind: type) -> None:
    """Raise :class:`WrongField` unless ``data`` is wire format for the betterproto2 message
    class ``kind`` (whatever its strings hold)."""
    try:
        _lenient_class(proto_name_of(kind)).FromString(bytes(data))
    except DecodeError:
        _name_a_deep_field(data, kind)
        raise WrongField(NOT_PROTOBUF) from None


def canonical(data: bytes | bytearray, kind: type) -> bytes:
    """``data`` as upb writes the message back (each field once, in field order): what protobuf
    says the bytes mean, for betterproto2's parser, which does not do it all — a message field
    sent twice is merged (it kept the second alone: a SubmitRunRequest sent in two parts lost
    its ``dag_json``), a oneof's last member wins (it raised "more than one field set in
    oneof"). Raises :class:`WrongField` as :func:`check_framing` does (upb parsed it already:
    the check costs nothing more)."""
    try:
        message = _lenient_class(proto_name_of(kind)).FromString(bytes(data))
    except DecodeError:
        _name_a_field(data, kind)  # nested too deeply for upb, say: the field is named
        _name_a_deep_field(data, kind)  # too deeply for betterproto2 too
        raise WrongField(NOT_PROTOBUF) from None
    # Unknown fields go: betterproto2 appends each to a bytes object, N² work on the daemon's
    # loop (a 3.9 MB request of 1.3 million held every connection for minutes). A known field
    # sent under another wire type is one of them: it is named while they are few.
    size = message.ByteSize()
    message.DiscardUnknownFields()
    unknown = size - message.ByteSize()
    if 0 < unknown <= NAMED_UNKNOWN_BYTES:
        wrong = value_culprit(data, kind)
        if wrong is not None:
            raise WrongField(wrong)
    encoded: bytes = message.SerializeToString()
    return encoded


# Unknown fields of a request up to this many bytes are looked through for a known field sent
# under another wire type (~1 µs a field); past it they are dropped unread, as protobuf does.
NAMED_UNKNOWN_BYTES = 64 * 1024
# Messages of a request looked through for it, at most (a 4 MB Struct holds ~100,000).
NAMED_MESSAGES = 2_000


# Fields looked at, at most, for a message nested too deep (a 4 MB request holds ~1 million;
# ~1 µs each, on the loop for the requests upb decodes).
DEEP_FIELDS_LOOKED_AT = 20_000
# Requests betterproto2 parses to name a field in, at most: pure Python, ~1.5 s a megabyte
# (a malformed 4 MB gate check held the loop 6.3 s).
NAMED_FIELD_BYTES = 64 * 1024


def _name_a_deep_field(data: bytes | bytearray, kind: type) -> None:
    """Raise :class:`WrongField` naming a message field nested deeper than ``MAX_NESTING`` in
    bytes upb refused, if that is why: past its own limit (100) upb says only that it cannot
    parse them, and betterproto2 ran out of Python's stack (~110 Struct levels) before
    ``check_request`` could name the field — the request was called not protobuf. The bytes
    are walked depth first, without recursion; malformed ones are left to the caller."""
    view = memoryview(bytes(data))
    schema = descriptor_pool_of_protos().FindMessageTypeByName(proto_name_of(kind))
    stack: list[tuple[int, int, Any, tuple[str, ...]]] = [(0, len(view), schema, ())]
    budget = DEEP_FIELDS_LOOKED_AT
    while stack and budget > 0:
        pos, end, message, path = stack.pop()
        while pos < end and (budget := budget - 1) > 0:
            tag = _varint(view, pos, end)
            if tag is None:
                return
            (number, wire), pos = divmod(tag[0], 8), tag[1]
            if wire == 2:
                length = _varint(view, pos, end)
                if length is None or length[1] + length[0] > end:
                    return
                field = message.fields_by_number.get(number)
                pos = length[1] + length[0]
                if field is not None and field.message_type is not None:
                    if len(path) >= MAX_NESTING:
                        shown = ".".join(path[:2]) + " … " + field.name
                        raise WrongField(f"{shown}: nested deeper than {MAX_NESTING}")
                    stack.append((pos, end, message, path))  # its siblings, after it
                    stack.append((length[1], pos, field.message_type, (*path, field.name)))
                    break
            elif wire == 0:
                skipped = _varint(view, pos, end)
                if skipped is None:
                    return
                pos = skipped[1]
            elif wire in (1, 5):
                pos += 8 if wire == 1 else 4
            else:
                return  # a group: none in our protos


def _varint(view: memoryview, pos: int, end: int) -> tuple[int, int] | None:
    """The varint at ``pos`` and where it ends; None when it runs past ``end`` or 10 bytes."""
    value = shift = 0
    while pos < end and shift < 70:
        byte = view[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    return None


def _name_a_field(data: bytes | bytearray, kind: type) -> None:
    """Raise :class:`WrongField` naming a field of ``data`` that ``check_request`` refuses,
    if betterproto2 can read the bytes at all (and they are few enough to read)."""
    if len(data) > NAMED_FIELD_BYTES:
        return
    try:
        parsed = kind().parse(bytes(data))
    except Exception:
        return
    try:
        check_request(parsed)
    except UnreadField:
        # A field betterproto2 left None: it read no such field, the bytes were not protobuf
        # (wire type 7, a group never ended): naming it named a field never sent.
        return


@cache
def _lenient_class(name: str) -> Any:
    return message_factory.GetMessageClass(_lenient_pool().FindMessageTypeByName(name))


@cache
def _lenient_pool() -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    for file in file_descriptors():
        lenient = descriptor_pb2.FileDescriptorProto()
        lenient.CopyFrom(file)
        for message in lenient.message_type:
            _strings_as_bytes(message)
        for extension in lenient.extension:
            _field_as_bytes(extension)
        pool.Add(lenient)
    return pool


def _strings_as_bytes(message: descriptor_pb2.DescriptorProto) -> None:
    message.options.ClearField("map_entry")
    for field in (*message.field, *message.extension):
        _field_as_bytes(field)
    for nested in message.nested_type:
        _strings_as_bytes(nested)


def _field_as_bytes(field: descriptor_pb2.FieldDescriptorProto) -> None:
    if field.type == _STRING:
        field.type = _BYTES
        field.ClearField("default_value")  # a string's default is text; a bytes one, escaped


def utf8_culprit(data: bytes | bytearray, kind: type) -> tuple[str, int] | None:
    """The path of a string field whose bytes are not UTF-8 in a request of the betterproto2
    message class ``kind`` (its parser says only ``UnicodeDecodeError``, naming no field), and
    the offset of the first bad byte in it; or None. Read with the lenient schema (strings as
    bytes), each field looked up in the real one."""
    name = proto_name_of(kind)
    try:
        message = _lenient_class(name).FromString(bytes(data))
    except DecodeError:
        return None
    return _culprit(message, descriptor_pool_of_protos().FindMessageTypeByName(name), "", 0)


def _culprit(message: Any, schema: Any, where: str, depth: int) -> tuple[str, int] | None:
    if depth > _MAX_DEPTH:
        return None
    for field, value in message.ListFields():
        real = schema.fields_by_number.get(field.number)
        if real is None:
            continue
        repeated = _repeated(real)
        for index, item in enumerate(value if repeated else (value,)):
            path = f"{where}{real.name}[{index}]" if repeated else f"{where}{real.name}"
            if real.type == _STRING:
                try:
                    item.decode("utf-8")
                except UnicodeDecodeError as exc:
                    return path, exc.start
            elif real.message_type is not None:
                found = _culprit(item, real.message_type, path + ".", depth + 1)
                if found is not None:
                    return found
    return None


_MAX_DEPTH = 100  # upb's own nesting limit: a message it parsed is no deeper

_WIRE = {0: "a varint", 1: "a 64-bit value", 2: "a length-delimited value", 3: "a group",
         5: "a 32-bit value"}  # fmt: skip
# What datetime and timedelta hold (betterproto2 makes them of these messages): 0001-01-01 to
# 9999-12-31, and 999,999,999 days.
_TIMESTAMP_SECONDS = (-62_135_596_800, 253_402_300_799)
_DURATION_SECONDS = (-86_399_999_913_600, 86_399_999_913_600)


def value_culprit(data: bytes | bytearray, kind: type) -> str | None:
    """What betterproto2 could not read in a request upb parsed, named: a known field sent with
    another wire type (upb keeps it as unknown; betterproto2 raised ``KeyError: 'int64'``), or a
    Timestamp or Duration past what Python's dates hold (``OverflowError``); or None."""
    name = proto_name_of(kind)
    try:
        message = _lenient_class(name).FromString(bytes(data))
    except DecodeError:
        return None
    schema = descriptor_pool_of_protos().FindMessageTypeByName(name)
    return _value_culprit(message, schema, "", 0, [NAMED_MESSAGES])


def _value_culprit(
    message: Any, schema: Any, where: str, depth: int, budget: list[int]
) -> str | None:
    budget[0] -= 1
    if depth > _MAX_DEPTH or budget[0] < 0:
        return None
    for unknown in unknown_fields.UnknownFieldSet(message):
        field = schema.fields_by_number.get(unknown.field_number)
        if field is not None:
            wire = _WIRE.get(unknown.wire_type, f"wire type {unknown.wire_type}")
            return f"{where}{field.name}: expected {_type_name(field)}, got {wire}"
    out_of_range = _time_out_of_range(message, schema.full_name)
    if out_of_range:
        return f"{where.rstrip('.') or 'request'}: {out_of_range}"
    for field, value in message.ListFields():
        real = schema.fields_by_number.get(field.number)
        if real is None or real.message_type is None:
            continue
        repeated = _repeated(real)
        for index, item in enumerate(value if repeated else (value,)):
            path = f"{where}{real.name}[{index}]" if repeated else f"{where}{real.name}"
            found = _value_culprit(item, real.message_type, path + ".", depth + 1, budget)
            if found is not None:
                return found
    return None


def _time_out_of_range(message: Any, full_name: str) -> str:
    if full_name not in ("google.protobuf.Timestamp", "google.protobuf.Duration"):
        return ""
    timestamp = full_name == "google.protobuf.Timestamp"
    low, high = _TIMESTAMP_SECONDS if timestamp else _DURATION_SECONDS
    if not low <= message.seconds <= high:
        what = "0001-01-01 to 9999-12-31" if timestamp else "±999,999,999 days"
        return f"seconds {message.seconds} is out of range ({what})"
    if not -999_999_999 <= message.nanos <= 999_999_999 or (timestamp and message.nanos < 0):
        return f"nanos {message.nanos} is out of range (0 to 999,999,999)"
    return ""


def _type_name(field: Any) -> str:
    if field.message_type is not None:
        return f"a {field.message_type.full_name} message"
    names: dict[int, str] = {v: k.removeprefix("TYPE_").lower() for k, v in
                             descriptor_pb2.FieldDescriptorProto.Type.items()}  # fmt: skip
    return names.get(field.type, "another type")


def _repeated(field: Any) -> bool:
    """(``is_repeated`` is protobuf 5.29's; ``label`` is gone from upb's descriptors in 7)"""
    found = getattr(field, "is_repeated", None)
    return bool(found) if found is not None else field.label == field.LABEL_REPEATED


def not_valid(data: bytes | bytearray | None, kind: type, exc: Exception) -> str:
    """The INVALID_ARGUMENT message of a request ``kind``'s parser refused (``data``: its
    protobuf bytes, None for JSON): a string field's bad UTF-8, a field sent with another wire
    type than its own, a Timestamp or Duration out of range are named."""
    ours = isinstance(kind, type) and issubclass(kind, betterproto2.Message)
    if isinstance(exc, UnicodeDecodeError) and data is not None and ours:
        found = utf8_culprit(data, kind)
        if found is not None:
            return f"request: {found[0]}: not valid UTF-8 (byte {found[1]} of the field)"
    if data is not None and ours:  # (not health's or reflection's: upb's classes, no schema here)
        wrong = value_culprit(data, kind)
        if wrong is not None:
            return f"request: {wrong}"
    name = getattr(kind, "__name__", "message")
    return f"request: not a valid {name}: {type(exc).__name__}: {str(exc)[:100]}"
