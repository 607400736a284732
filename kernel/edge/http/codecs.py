"""Connect codecs over betterproto2 messages: protobuf binary and proto3 JSON.

A request is held to the gRPC port's rules: at most ``[daemon] max_message_bytes``, decoded,
then type-checked (``grpc.message_check.check_request``); anything wrong is INVALID_ARGUMENT
naming the field (RESOURCE_EXHAUSTED for the size), never an error of the daemon. A reply
already serialized (``grpc.internals.Encoded``, say Analytics.Query's rows) goes out as it is in
binary, and is read back once for JSON.
"""

from __future__ import annotations

import json
import logging
import re
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import betterproto2
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from foundry.kernel.core.json_input import MAX_DEPTH, DuplicateKey, each_key_once
from foundry.kernel.edge.grpc import upb_encode
from foundry.kernel.edge.grpc.framing import canonical, not_valid
from foundry.kernel.edge.grpc.internals import Encoded
from foundry.kernel.edge.grpc.message_check import (
    WrongField,
    check_request,
    coerce_json_numbers,
)
from foundry.kernel.edge.http import jsonfast
from foundry.kernel.edge.http.large_requests import DECODED
from foundry.kernel.edge.shared_replies import JSON_UTF8, PROTO, SHARED_REPLIES
from foundry.proto import runtime_api

log = logging.getLogger("foundry.http")


class JsonEncoded(Encoded):
    """A reply already written as proto3 JSON (``routes.json_reply``): the JSON codec sends it
    as it is."""

    __slots__ = ()


class TypedEncoded(Encoded):
    """A serialized reply and its message type (the JSON codec needs the type)."""

    __slots__ = ("kind",)

    def __init__(self, data: bytes, kind: type[betterproto2.Message]) -> None:
        super().__init__(data)
        self.kind = kind


def size_error(length: int, limit: int, *, whole: bool = True) -> ConnectError:
    """RESOURCE_EXHAUSTED for a request over the limit: ``length`` its size, or (not
    ``whole``) what was read of a body without a length when it passed the limit."""
    size = f"{length} bytes" if whole else f"more than {length} bytes (the rest was not read)"
    return ConnectError(
        Code.RESOURCE_EXHAUSTED,
        f"request: {size} is over the {limit}-byte message limit ([daemon] max_message_bytes)",
    )


class _CheckedCodec:
    protobuf = False  # its requests are protobuf bytes (else JSON text)

    def __init__(self, max_message_bytes: int) -> None:
        self._limit = max_message_bytes

    def _parse(self, data: bytes | bytearray, kind: type[betterproto2.Message]) -> Any:
        raise NotImplementedError

    def decode(self, data: bytes | bytearray, message_class: type[Any]) -> Any:
        ahead = DECODED.get()
        if ahead is not None and ahead.answers(data, message_class):
            return ahead.result()  # decoded on a worker thread (``large_requests``)
        if len(data) > self._limit:
            raise size_error(len(data), self._limit)
        try:
            message = self._parse(data, message_class)
            check_request(message)
        except WrongField as exc:
            raise ConnectError(Code.INVALID_ARGUMENT, f"request: {exc}") from None
        except RecursionError:  # Python's words were the answer ("maximum recursion depth")
            raise ConnectError(Code.INVALID_ARGUMENT, TOO_DEEP) from None
        except Exception as exc:  # RecursionError included: a hostile document
            protobuf = data if self.protobuf else None
            raise ConnectError(
                Code.INVALID_ARGUMENT, not_valid(protobuf, message_class, exc)
            ) from None
        return message


class BinaryCodec(_CheckedCodec):
    """``application/proto`` (Connect) and ``application/grpc-web`` (gRPC-Web)."""

    protobuf = True

    def name(self) -> str:
        return "proto"

    def encode(self, message: Any) -> bytes:
        if isinstance(message, Encoded):
            return message.data
        with _reply_errors():
            if (key := ended_run_key(message, PROTO)) is not None:
                kept = ENDED_RUN_TEXTS.get(key)
                return kept or ENDED_RUN_TEXTS.put(key, upb_encode.encode(message))
            if isinstance(message, betterproto2.Message):  # (upb: the same message, in C)
                return SHARED_REPLIES.encoded(message, PROTO, upb_encode.encode)
            return bytes(message)

    def _parse(self, data: bytes | bytearray, kind: type[betterproto2.Message]) -> Any:
        return kind().parse(canonical(data, kind))  # framed, merged as protobuf says


class JsonCodec(_CheckedCodec):
    """``application/json``: proto3 JSON (camelCase names out; either case in). Unknown fields
    are ignored, as in binary, so older daemons take newer clients' requests."""

    def name(self) -> str:
        return "json"

    def encode(self, message: Any) -> bytes:
        if isinstance(message, JsonEncoded):
            return message.data
        with _reply_errors():
            if isinstance(message, TypedEncoded):
                message = message.kind().parse(message.data)
            return SHARED_REPLIES.encoded(message, JSON_UTF8, _to_json_bytes)

    def _parse(self, data: bytes | bytearray, kind: type[betterproto2.Message]) -> Any:
        if not bytes(data).strip():
            return kind()  # Connect allows an empty body for an empty message
        try:
            text = bytes(data).decode("utf-8-sig")  # (json.loads of bytes took UTF-16 and 32)
        except UnicodeDecodeError as exc:
            raise WrongField(f"not UTF-8 (byte {exc.start}): JSON is sent as UTF-8") from None
        try:
            document = _loaded(text)
        except DuplicateKey as exc:
            key = ascii(exc.key[:40])
            raise WrongField(f"{key}: a key given twice in one JSON object") from None
        if not isinstance(document, dict):
            raise WrongField(f"expected a JSON object, got {type(document).__name__}")
        if _ESCAPED_SURROGATE.search(data):  # only a \uD800-\uDFFF escape makes one
            _check_unicode(document, "")
        message = jsonfast.from_dict(kind, document)
        coerce_json_numbers(message)  # 5 for a double, "42" for an int64: proto3 JSON allows both
        return message


def _loaded(text: str) -> Any:
    """The JSON document, each object naming each key once (a proxy or a reviewer reading the
    first of two saw another request than the daemon ran)."""
    try:
        return json.loads(text, object_pairs_hook=each_key_once)
    except DuplicateKey:
        raise
    except ValueError as exc:
        if not _TOO_MANY_DIGITS.search(str(exc)):
            raise
    # An integer of more than ``sys.get_int_max_str_digits()`` digits: Python's words were the
    # answer, naming no field. Read as JSON's number (a double: infinite), the field it is in
    # refuses it by name as it refuses 1e400.
    return json.loads(text, object_pairs_hook=each_key_once, parse_int=_int_or_infinite)


_TOO_MANY_DIGITS = re.compile(r"limit \(\d+ digits\) for integer string conversion")


def _int_or_infinite(digits: str) -> int | float:
    """A JSON integer as an int, or one too long for that as a double (±inf)."""
    try:
        return int(digits)
    except ValueError:
        return float(digits)


TOO_DEEP = f"request: JSON nested too deep to read (a value holds at most {MAX_DEPTH} levels)"


# A lone surrogate reaches a JSON string only through an escape (UTF-8 cannot carry one); binary
# protobuf refuses it as invalid UTF-8. Let in, it failed deep in the daemon (an id's hash, a
# store query: INTERNAL or UNAVAILABLE) instead of being the client's error.
_ESCAPED_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")


def _check_unicode(value: Any, path: str) -> None:
    """Every string (and key) of a JSON document is valid Unicode, else :class:`WrongField`
    naming where (a lone surrogate)."""
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            raise WrongField(f"{path or 'request'}: text must be valid Unicode (a lone "
                             "surrogate)") from None  # fmt: skip
    elif isinstance(value, dict):
        for key, item in value.items():
            # first: a bad key must not reach the message (nor, but escaped, this one)
            _check_unicode(key, f"{path}.{ascii(key[:40])}".lstrip("."))
            _check_unicode(item, f"{path}.{key[:40]}".lstrip("."))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_unicode(item, f"{path}[{index}]")


@contextmanager
def _reply_errors() -> Iterator[None]:
    """A reply that cannot be serialized is the daemon's fault: logged once, answered INTERNAL
    (connectrpc would send the exception's text as ``unknown``)."""
    try:
        yield
    except Exception as exc:
        log.error("cannot serialize a reply", exc_info=exc)
        raise ConnectError(
            Code.INTERNAL, "internal error; the daemon log has the details"
        ) from None


def _to_json_bytes(message: betterproto2.Message) -> bytes:
    return to_json(message).encode()


def media_type(content_type: str) -> str:
    """A ``Content-Type``'s media type, lowercased, without its parameters — as connectrpc
    picks a codec by it (``application/proto; charset=json`` is proto)."""
    return content_type.partition(";")[0].strip().lower()


def is_json(content_type: str) -> bool:
    """A request of ``content_type`` is JSON (``application/json``, ``…+json``): its reply
    goes out as JSON."""
    return media_type(content_type).endswith("json")


def stream_forms(content_type: str) -> tuple[tuple[str, Callable[[Any], bytes]], ...]:
    """The form a stream of ``content_type`` goes out in (its codec's ``SHARED_REPLIES`` form)
    and its encoder: for a reply made ahead on a worker thread (``shared_replies``)."""
    if is_json(content_type):
        return ((JSON_UTF8, _to_json_bytes),)
    return ((PROTO, upb_encode.encode),)


def to_json(message: betterproto2.Message) -> str:
    """proto3 JSON, as betterproto2's ``to_json`` writes it (``jsonfast`` for simple messages)."""
    return json.dumps(jsonfast.to_dict(message))


_ENDED = frozenset((runtime_api.RunStatus.SUCCEEDED, runtime_api.RunStatus.FAILED,
                    runtime_api.RunStatus.CANCELED))  # fmt: skip


def ended_run_key(reply: Any, form: str) -> tuple[Any, ...] | None:
    """What names an ended run's GetRun reply in ``form`` (anything appended to a run moves
    its ``updated_at`` and its counts), or None for any other reply."""
    run = reply.run if isinstance(reply, runtime_api.GetRunResponse) else None
    if run is None or run.status not in _ENDED:
        return None
    return (form, run.run_id, run.status, run.updated_at, len(run.steps),
            len(run.attestation_ids))  # fmt: skip


class EndedRunTexts:
    """Ended runs' GetRun encodings (JSON, protobuf), the recent ones, within ``budget`` bytes
    (one larger is kept while it is the newest). Only the encodings: a reply's message, made
    again for each caller, is freed with its answer (held, its Value trees were ~30x its JSON)."""

    def __init__(self, budget: int = 64 << 20) -> None:
        self._budget, self._held = budget, 0
        self._texts: OrderedDict[Any, bytes] = OrderedDict()

    def get(self, key: Any) -> bytes | None:
        text = self._texts.get(key)
        if text is not None:
            self._texts.move_to_end(key)
        return text

    def put(self, key: Any, text: bytes) -> bytes:
        """Keep ``text`` for ``key``, or return the one kept meanwhile (made by another caller)."""
        kept = self._texts.get(key)
        if kept is not None:
            return kept
        self._texts[key] = text
        self._held += len(text)
        while len(self._texts) > 1 and self._held > self._budget:
            self._held -= len(self._texts.popitem(last=False)[1])
        return text

    @property
    def held_bytes(self) -> int:
        return self._held


ENDED_RUN_TEXTS = EndedRunTexts()
"""The process's: an ended run's GetRun is encoded once for all its HTTP callers (30 reading
nothing of a 10 MB run held 30 copies)."""
