"""A large unary request decoded on a worker thread, not on the daemon's one thread.

connectrpc decodes a request where it reads it, synchronously, on the trio thread that serves
every client of both ports. betterproto2 and the request check cost ~5 µs an element of a
repeated field: a 1 MB ListRuns of packed statuses held both ports 5 s, a 2.7 MB Query of map
entries 8 s (a wire-level hunt). The gRPC port decodes such requests on a worker thread
(``grpc/server.py``: ``DECODE_OFF_LOOP_BYTES``); here, a unary call whose body says it is that
large is read whole first, its one message decoded on a worker thread, and the body handed to
connectrpc as it came — whose codec (``codecs._CheckedCodec``) then finds the message decoded
(:data:`DECODED`, by its bytes) and returns it, or raises what decoding it raised.
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from connectrpc.errors import ConnectError
from foundry.kernel.edge.worker_threads import in_edge_thread

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]

DECODE_OFF_LOOP_BYTES = 16 * 1024  # ~80 ms of the thread at worst (a packed field's bytes)
ENVELOPE_HEADER = 5


@dataclass(frozen=True, slots=True)
class Decoded:
    """A message decoded ahead: its bytes, its type, and what decoding them gave."""

    data: bytes
    kind: type[Any]
    message: Any = None
    error: BaseException | None = None

    def answers(self, data: bytes | bytearray | memoryview, kind: type[Any]) -> bool:
        return kind is self.kind and len(data) == len(self.data) and data == self.data

    def result(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.message


DECODED: contextvars.ContextVar[Decoded | None] = contextvars.ContextVar("decoded", default=None)


def worth_decoding_ahead(headers: Mapping[str, str], gzip: bool) -> bool:
    """A body that may hold a message of ``DECODE_OFF_LOOP_BYTES`` or more: a gzip one of any
    size (3 KB of it inflate to 3 MB of statuses: 20 s of the thread), another by its
    ``content-length``, or of no stated length (HTTP/2 needs none: a hostile client leaves it
    out)."""
    length = headers.get("content-length")
    return gzip or length is None or not length.isdigit() or int(length) >= DECODE_OFF_LOOP_BYTES


async def decoded_ahead(
    receive: Receive,
    enveloped: bool,
    decode: Callable[[bytes, type[Any]], Any],
    kind: type[Any],
    limit: int,
    inflate: Callable[[bytes], bytes] | None = None,
) -> tuple[Receive, Decoded | None]:
    """Read the body whole, decode its message on a worker thread — inflated there first, if
    it is compressed and ``inflate`` given (connectrpc inflates it again, on its thread: a few
    ms, linear, ``gzip_body``, and decodes the bytes it gets: :data:`DECODED` holds those); a
    ``receive`` that gives the body again, and what decoding gave (None: the client left, or
    the body is not one message this can read — connectrpc says what is wrong with it)."""
    parts: list[bytes] = []
    size = 0
    while True:
        try:
            event = await receive()
        except ConnectError as exc:  # the body's deadline, a compressed envelope: connectrpc
            return _raising(exc), None  # answers it, reading the body, as it always did
        if event["type"] != "http.request":
            return _again(event, receive), None
        parts.append(event.get("body", b""))
        size += len(parts[-1])
        if not event.get("more_body") or size > limit + ENVELOPE_HEADER:
            break
    body = b"".join(parts)
    whole = {"type": "http.request", "body": body, "more_body": bool(event.get("more_body"))}
    replay = _again(whole, receive)
    found = _message_bytes(body, inflate is not None) if enveloped else (body, inflate is not None)
    if found is None or size > limit + ENVELOPE_HEADER:
        return replay, None
    data, compressed = found
    if compressed and data and inflate is not None:
        return replay, await in_edge_thread(_inflated_and_decoded, data, inflate, decode, kind,
                                           heavy=True)  # fmt: skip
    if size < DECODE_OFF_LOOP_BYTES:
        return replay, None
    return replay, await in_edge_thread(_decoded, data, decode, kind, heavy=True)


def _decoded(data: bytes, decode: Callable[[bytes, type[Any]], Any], kind: type[Any]) -> Decoded:
    try:
        return Decoded(data, kind, decode(data, kind))
    except Exception as exc:  # (its ConnectError, raised again where connectrpc decodes)
        return Decoded(data, kind, error=exc)


def _inflated_and_decoded(
    data: bytes,
    inflate: Callable[[bytes], bytes],
    decode: Callable[[bytes, type[Any]], Any],
    kind: type[Any],
) -> Decoded | None:
    try:
        inflated = inflate(data)
    except Exception:  # (a bomb, a broken stream: connectrpc's inflate says so, as it did)
        return None
    return _decoded(inflated, decode, kind) if len(inflated) >= DECODE_OFF_LOOP_BYTES else None


def _message_bytes(body: bytes, compressed_too: bool) -> tuple[bytes, bool] | None:
    """The first message of an enveloped body (gRPC, gRPC-Web), whole, and whether its envelope
    says it is compressed (taken only if ``compressed_too``), else None (connectrpc decodes it
    before it finds a second one: a unary call's error)."""
    if len(body) < ENVELOPE_HEADER or body[0] not in ((0, 1) if compressed_too else (0,)):
        return None
    end = ENVELOPE_HEADER + int.from_bytes(body[1:ENVELOPE_HEADER], "big")
    return (body[ENVELOPE_HEADER:end], body[0] == 1) if len(body) >= end else None


def _raising(error: ConnectError) -> Receive:
    async def receiving() -> MutableMapping[str, Any]:
        raise error

    return receiving


def _again(first: MutableMapping[str, Any], receive: Receive) -> Receive:
    """A ``receive`` giving ``first``, then what ``receive`` gives."""
    pending = [first]

    async def receiving() -> MutableMapping[str, Any]:
        return pending.pop() if pending else await receive()

    return receiving
