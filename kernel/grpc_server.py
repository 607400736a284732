"""grpclib serving both services inside the trio process, through trio-asyncio.

Handlers live on the asyncio side and ask the trio actors through ``bridge.py`` (:func:`ask`).
Kernel errors become gRPC statuses here, in one table; anything unexpected becomes a generic
INTERNAL for the client and a logged traceback for the operator.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import trio
import trio_asyncio
from grpclib import GRPCError
from grpclib.const import Status
from grpclib.encoding.proto import ProtoCodec
from grpclib.server import Server

from . import errors
from .bridge import ask_actor

log = logging.getLogger("foundry.grpc")

T = TypeVar("T")

STATUS_OF: dict[type[errors.FoundryError], Status] = {
    errors.InvalidArgument: Status.INVALID_ARGUMENT,
    errors.NotFound: Status.NOT_FOUND,
    errors.FailedPrecondition: Status.FAILED_PRECONDITION,
    errors.AlreadyExists: Status.ALREADY_EXISTS,
    errors.Unavailable: Status.UNAVAILABLE,
    errors.ResourceExhausted: Status.RESOURCE_EXHAUSTED,
}


def to_grpc_error(exc: BaseException) -> GRPCError:
    for kind in type(exc).__mro__:
        if kind in STATUS_OF:
            return GRPCError(STATUS_OF[kind], str(exc))
    log.error("unexpected error in a request handler", exc_info=exc)
    return GRPCError(Status.INTERNAL, "internal error; the daemon log has the details")


async def ask(mailbox: trio.MemorySendChannel[Any], build: Callable[[Any], Any]) -> Any:
    """Ask an actor from a handler (see ``bridge.py``); kernel errors become gRPC statuses."""
    try:
        return await ask_actor(mailbox, build)
    except GRPCError:
        raise
    except Exception as exc:
        raise to_grpc_error(exc) from None


def bind(host: str, port: int) -> socket.socket:
    """Bind the listening socket; OSError (address in use, bad host) goes to the caller."""
    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = info[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


class RequestCodec(ProtoCodec):
    """Protobuf, except that a request that does not parse (say, invalid UTF-8 in a string) is the
    client's error, INVALID_ARGUMENT, not an application error (grpclib answers UNKNOWN)."""

    def decode(self, data: bytes, message_type: Any) -> Any:
        try:
            return super().decode(data, message_type)
        except Exception as exc:
            raise GRPCError(
                Status.INVALID_ARGUMENT,
                f"request: not a valid {getattr(message_type, '__name__', 'message')}: {exc}",
            ) from None


async def start_server(handlers: Sequence[Any], sock: socket.socket) -> Server:
    server = Server(list(handlers), codec=RequestCodec())
    await trio_asyncio.aio_as_trio(server.start)(sock=sock)
    return server


async def stop_server(server: Server) -> None:
    server.close()
    await trio_asyncio.aio_as_trio(server.wait_closed)()
