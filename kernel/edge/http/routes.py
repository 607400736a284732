"""Connect endpoints for the very service objects the gRPC port serves.

Each route comes from the service's grpclib mapping (path, cardinality, request and reply types),
so an RPC added to a service is on both ports at once; the HTTP route calls the service's object
API (``emit(message)``, the async generator ``watch(message)``), where grpclib calls the same
method through its generated stream adapter. Errors go through the one table (``errors.py``).
"""

from __future__ import annotations

import re
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Hashable,
    Iterable,
    Mapping,
    Sequence,
)
from contextlib import aclosing
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio
from connectrpc.method import IdempotencyLevel, MethodInfo, StreamType
from connectrpc.request import RequestContext
from connectrpc.server import Endpoint
from foundry.kernel.edge.grpc import upb_encode
from foundry.kernel.edge.grpc.internals import Encoded
from foundry.kernel.edge.http.codecs import (
    ENDED_RUN_TEXTS,
    JsonEncoded,
    TypedEncoded,
    ended_run_key,
    is_json,
    to_json,
)
from foundry.kernel.edge.http.errors import connect_error
from foundry.kernel.edge.shared_replies import PROTO
from foundry.kernel.edge.worker_threads import OffLoopReply, in_edge_thread, made_once
from foundry.proto import foundry_api, runtime_api
from grpclib.const import Cardinality

STREAM_TYPES = {
    Cardinality.UNARY_UNARY: StreamType.UNARY,
    Cardinality.UNARY_STREAM: StreamType.SERVER_STREAM,
}
_WORD = re.compile(r"(?<!^)(?=[A-Z])")


def python_name(method: str) -> str:
    """``GetAttestations`` → ``get_attestations`` (betterproto2's method names)."""
    return _WORD.sub("_", method).lower()


# The RPCs whose handler takes the call's ``traceparent`` headers too (W3C trace context: an
# instrumented client sends its span in that header; ``foundry_service.adopt_caller_context``)
TRACED = frozenset({"/foundry.Foundry/Emit"})

UnaryCall = Callable[[Any, Sequence[str]], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class UnaryRoute:
    """A unary RPC: its request type and its handler call (errors raised as ConnectErrors),
    given the request and the call's ``traceparent`` headers (read by the :data:`TRACED`)."""

    input: type[Any]
    call: UnaryCall


@dataclass(frozen=True)
class Routes:
    endpoints: dict[str, Endpoint[Any, Any]]  # for connectrpc
    unary: dict[str, UnaryRoute]  # the same unary handler objects, for ``unary.py``


def endpoints(services: Iterable[Any]) -> Routes:
    """``/package.Service/Method`` → a Connect endpoint, for every unary and server-streaming
    RPC of ``services`` (client and bidi streams: none today; they stay gRPC-only)."""
    routes = Routes({}, {})
    for service in services:
        for path, handler in service.__mapping__().items():
            stream_type = STREAM_TYPES.get(handler.cardinality)
            if stream_type is None:
                continue
            service_name, _, name = path.strip("/").partition("/")
            method = MethodInfo(
                name=name,
                service_name=service_name,
                input=handler.request_type,
                output=handler.reply_type,
                idempotency_level=IdempotencyLevel.UNKNOWN,
                stream_type=stream_type,
            )
            function = getattr(service, python_name(name))
            if stream_type is StreamType.UNARY:
                traced = path in TRACED
                call = _unary(function, handler.reply_type, traced)
                route = UnaryRoute(handler.request_type, call)
                routes.unary[path] = route
                routes.endpoints[path] = Endpoint.unary(method, _with_context(route.call, traced))
            else:
                routes.endpoints[path] = Endpoint.server_stream(method, _streaming(function))
    return routes


def _unary(
    function: Callable[..., Awaitable[Any]], reply_type: type[Any], traced: bool
) -> UnaryCall:
    async def call(request: Any, traceparents: Sequence[str]) -> Any:
        try:
            if traced and traceparents:
                reply = await function(request, traceparents)
            else:
                reply = await function(request)
        except Exception as exc:
            raise connect_error(exc) from None
        if isinstance(reply, Encoded):
            return TypedEncoded(reply.data, reply_type)
        return reply

    return call


def _with_context(
    call: UnaryCall, traced: bool
) -> Callable[[Any, RequestContext[Any, Any]], Awaitable[Any]]:
    """connectrpc's handler signature; of the request context, a handler reads only the
    ``traceparent`` headers (the :data:`TRACED` ones) — but a reply that may be large, to a JSON
    request, is written as JSON on a worker thread (:func:`json_reply`)."""

    async def with_context(request: Any, ctx: RequestContext[Any, Any]) -> Any:
        headers = ctx.request_headers
        reply = await call(request, headers.getall("traceparent") if traced else ())
        json = is_json(ctx.request_headers.get("content-type", ""))
        if isinstance(reply, OffLoopReply):
            return await off_loop_reply(reply, json)
        if isinstance(reply, LARGE_REPLIES) and json:
            return await json_reply(reply)
        return reply

    return with_context


# Replies that grow with what is stored (a run's steps, workflows, rows): proto3 JSON of a
# 35,000-step GetRun (7.5 MB) took the trio thread ~5 s, every other call waiting meanwhile.
LARGE_REPLIES = (
    runtime_api.GetRunResponse,
    runtime_api.ReplayRunResponse,
    runtime_api.ListRunsResponse,
    foundry_api.StatusResponse,
    # a gate decision echoes its request's telemetry and metadata, Structs of any size (a 4 MB
    # one held the loop 8 s as JSON); the lists hold many of them
    runtime_api.CheckChangeGateResponse,
    runtime_api.ListChangeGatesResponse,
    runtime_api.ListEvalScenariosResponse,
    TypedEncoded,  # a reply the service encoded itself because it can be large (Query's rows)
)


async def off_loop_reply(reply: OffLoopReply, json: bool) -> Encoded:
    """``reply`` made and written as JSON (``json``) or protobuf on a worker thread; an ended
    run's, once for all its callers (:class:`EndedRunTexts`)."""
    write = _json_made if json else _proto_made
    data = None
    if reply.key is not None:  # made once for the callers that ask while it is made
        key = ("json" if json else PROTO, "off-loop", reply.key)
        made: list[bytes] = []

        async def make() -> None:
            made.append(ENDED_RUN_TEXTS.put(key, await in_edge_thread(write, reply.make,
                                                                      heavy=True)))  # fmt: skip

        kept = partial(ENDED_RUN_TEXTS.get, key)
        await made_once(_MAKING, key, lambda: kept() is not None, make, trio.Event)
        data = made[0] if made else kept()
    if data is None:  # a run that may change; or one dropped at once (past the budget)
        data = await in_edge_thread(write, reply.make, heavy=True)
    return JsonEncoded(data) if json else Encoded(data)


# Ended runs' replies being made now, by key (``off_loop_reply``)
_MAKING: dict[Hashable, trio.Event] = {}


def _json_made(make: Callable[[], Any]) -> bytes:
    return to_json(make()).encode()


def _proto_made(make: Callable[[], Any]) -> bytes:
    return upb_encode.encode(make())


async def json_reply(reply: Any) -> JsonEncoded:
    """``reply`` as the JSON codec writes it, made on a worker thread: the loop serves on
    (between the interpreter's switches) while it is made. An ended run's GetRun is written
    once for all its callers (:class:`EndedRunTexts`): 30 Connect callers reading nothing of a
    10 MB run held 30 texts (344 MB)."""
    key = ended_run_key(reply, "json")
    if key is not None and (text := ENDED_RUN_TEXTS.get(key)) is not None:
        return JsonEncoded(text)

    def write() -> bytes:
        message = reply.kind().parse(reply.data) if isinstance(reply, TypedEncoded) else reply
        return to_json(message).encode()

    text = await in_edge_thread(write)
    return JsonEncoded(text if key is None else ENDED_RUN_TEXTS.put(key, text))


def _streaming(
    function: Callable[[Any], AsyncIterator[Any]],
) -> Callable[[Any, RequestContext[Any, Any]], AsyncIterator[Any]]:
    async def call(request: Any, ctx: RequestContext[Any, Any]) -> AsyncIterator[Any]:
        try:
            async with aclosing(function(request)) as replies:  # type: ignore[type-var]
                async for reply in replies:
                    yield reply
        except Exception as exc:
            raise connect_error(exc) from None

    return call


def paths_by_service(routes: Mapping[str, Any]) -> set[str]:
    """The service prefixes served (``/foundry.Foundry/``): an unknown method under one of them,
    or an unknown service, answers UNIMPLEMENTED."""
    return {path.rsplit("/", 1)[0] + "/" for path in routes}
