"""grpclib serving both services inside the trio process, through trio-asyncio.

Handlers live on the asyncio side and ask the trio actors through ``bridge.py`` (:func:`ask`).
Kernel errors become gRPC statuses here, in one table; anything unexpected becomes a generic
INTERNAL for the client and a logged traceback for the operator.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import trio
import trio_asyncio
from foundry.kernel import errors
from foundry.kernel.edge.grpc.bridge import ask_actor
from foundry.kernel.edge.grpc.internals import install_message_limit
from foundry.kernel.edge.grpc.loop import run_ready_callbacks_in_batches
from foundry.kernel.edge.grpc.message_check import WrongField, check_request
from grpclib import GRPCError
from grpclib.const import Handler, Status
from grpclib.encoding.proto import ProtoCodec
from grpclib.server import Server

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
            return GRPCError(STATUS_OF[kind], bounded_message(str(exc)))
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
    """Protobuf, checked: a request that does not parse (say, invalid UTF-8 in a string) or whose
    fields have the wrong wire type is the client's error, INVALID_ARGUMENT naming the field —
    grpclib would answer UNKNOWN, and betterproto2 would hand the kernel an ``int`` for a string."""

    def decode(self, data: bytes, message_type: Any) -> Any:
        name = getattr(message_type, "__name__", "message")
        try:
            message = super().decode(data, message_type)
            check_request(message)
        except WrongField as exc:
            raise GRPCError(Status.INVALID_ARGUMENT, f"request: {exc}") from None
        except Exception as exc:
            reason = f"{type(exc).__name__}: {str(exc)[:100]}"
            message_text = f"request: not a valid {name}: {reason}"
            raise GRPCError(Status.INVALID_ARGUMENT, message_text) from None
        return message


class GuardedService:
    """A service whose every handler maps escaping errors through :func:`to_grpc_error`: kernel
    errors become their status, anything else a generic INTERNAL and one logged traceback."""

    def __init__(self, service: Any) -> None:
        self._service = service

    def __mapping__(self) -> dict[str, Handler]:
        return {
            path: Handler(_guard(h.func), h.cardinality, h.request_type, h.reply_type)
            for path, h in self._service.__mapping__().items()
        }


def _guard(func: Callable[[Any], Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
    async def guarded(stream: Any) -> None:
        try:
            await func(stream)
        except GRPCError as exc:
            raise GRPCError(exc.status, bounded_message(exc.message), exc.details) from None
        except Exception as exc:
            raise to_grpc_error(exc) from None

    return guarded


MAX_ERROR_MESSAGE = 400


def bounded_message(message: str | None) -> str | None:
    """Error text that stays small in an HTTP/2 trailer, whatever a caller sent."""
    if message is None or len(message) <= MAX_ERROR_MESSAGE:
        return message
    return message[: MAX_ERROR_MESSAGE - 3] + "..."


@contextlib.asynccontextmanager
async def open_grpc_loop() -> AsyncIterator[None]:
    """The asyncio loop grpclib runs in, inside trio (trio-asyncio), batching ready callbacks."""
    run_ready_callbacks_in_batches()
    async with trio_asyncio.open_loop():
        yield


async def start_server(
    handlers: Sequence[Any], sock: socket.socket, *, max_message_bytes: int
) -> Server:
    install_message_limit(max_message_bytes)
    server = Server([GuardedService(h) for h in handlers], codec=RequestCodec())
    await trio_asyncio.aio_as_trio(server.start)(sock=sock)
    return server


async def stop_server(server: Server) -> None:
    server.close()
    await trio_asyncio.aio_as_trio(server.wait_closed)()
