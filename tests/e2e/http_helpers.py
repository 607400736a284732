"""Helpers of the HTTP listener's end-to-end tests (``test_http_*.py``): the RPC table read from
the generated service bases, Connect and gRPC-Web framing by hand for raw ``httpx`` requests,
the ``connectrpc`` client (its own protocol code) over a small betterproto2 codec, and generic
gRPC calls (grpclib) to compare both ports."""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

import httpx
from connectrpc.client import ConnectClientSync
from connectrpc.method import IdempotencyLevel, MethodInfo, StreamType
from connectrpc.protocol import ProtocolType
from foundry.proto import analytics_api, foundry_api, runtime_api
from grpclib import GRPCError
from grpclib.client import Channel
from grpclib.const import Cardinality

from tests.daemon import Daemon

BASES = (foundry_api.FoundryBase, runtime_api.RuntimeServiceBase, analytics_api.AnalyticsBase)


def rpc_table() -> dict[str, Any]:
    """``/package.Service/Method`` → grpclib's Handler (cardinality, request and reply types)."""
    return {path: h for base in BASES for path, h in base().__mapping__().items()}


def url(daemon: Daemon, path: str) -> str:
    return f"http://{daemon.http_address}{path}"


# --- Connect and gRPC-Web framing ----------------------------------------------------------------


def envelope(data: bytes, flags: int = 0) -> bytes:
    return struct.pack(">BI", flags, len(data)) + data


def envelopes(body: bytes) -> list[tuple[int, bytes]]:
    """A streamed body's (flags, data) frames."""
    frames, offset = [], 0
    while offset < len(body):
        flags, length = struct.unpack_from(">BI", body, offset)
        frames.append((flags, body[offset + 5 : offset + 5 + length]))
        offset += 5 + length
    return frames


def connect_stream_json(daemon: Daemon, path: str, request: dict[str, Any]) -> tuple[list, dict]:
    """A Connect server-streaming call in JSON: (the messages, the end-of-stream document)."""
    response = httpx.post(
        url(daemon, path),
        content=envelope(json.dumps(request).encode()),
        headers={"content-type": "application/connect+json"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    frames = envelopes(response.content)
    *messages, (flags, end) = frames
    assert flags == 2, frames  # the end-of-stream frame comes last
    assert all(f == 0 for f, _ in messages)
    return [json.loads(m) for _, m in messages], json.loads(end)


def grpc_web_trailers(data: bytes) -> dict[str, str]:
    lines = data.decode().strip().split("\r\n")
    return {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}


def grpc_web_call(
    daemon: Daemon,
    path: str,
    body: bytes,
    content_type: str = "application/grpc-web+proto",
    headers: dict[str, str] | None = None,
) -> tuple[list[bytes], dict[str, str]]:
    """A gRPC-Web call with a raw body (and any more ``headers``): (the messages, the trailers —
    or, for a trailers-only answer, the headers)."""
    response = httpx.post(
        url(daemon, path), content=body,
        headers={"content-type": content_type, "x-grpc-web": "1", **(headers or {})},
    )  # fmt: skip
    if "grpc-status" in response.headers:
        return [], {k: v for k, v in response.headers.items() if k.startswith("grpc-")}
    frames = envelopes(response.content)
    messages = [data for flags, data in frames if not flags & 0x80]
    trailers = [data for flags, data in frames if flags & 0x80]
    assert len(trailers) == 1, frames
    return messages, grpc_web_trailers(trailers[0])


# --- the connectrpc client (binary) --------------------------------------------------------------


class BetterprotoCodec:
    """The client side's protobuf binary codec for betterproto2 messages."""

    def name(self) -> str:
        return "proto"

    def encode(self, message: Any) -> bytes:
        return bytes(message)

    def decode(self, data: bytes | bytearray, message_class: type[Any]) -> Any:
        return message_class().parse(bytes(data))


def method_info(path: str) -> MethodInfo[Any, Any]:
    handler = rpc_table()[path]
    service, _, name = path.strip("/").partition("/")
    streaming = handler.cardinality is Cardinality.UNARY_STREAM
    return MethodInfo(
        name=name, service_name=service, input=handler.request_type, output=handler.reply_type,
        idempotency_level=IdempotencyLevel.UNKNOWN,
        stream_type=StreamType.SERVER_STREAM if streaming else StreamType.UNARY,
    )  # fmt: skip


def connect_client(daemon: Daemon, protocol: ProtocolType = ProtocolType.CONNECT) -> Any:
    return ConnectClientSync(
        f"http://{daemon.http_address}", codec=BetterprotoCodec(), protocol=protocol,
        send_compression=None, timeout_ms=30_000,
    )  # fmt: skip


# --- the same call over gRPC ---------------------------------------------------------------------


def grpc_outcome(daemon: Daemon, path: str, request: Any) -> tuple[str, Any]:
    """("ok", reply or replies) or (the lower-case status name, message) over the gRPC port."""
    handler = rpc_table()[path]
    host, _, port = daemon.address.rpartition(":")

    async def call() -> tuple[str, Any]:
        channel = Channel(host, int(port))
        try:
            async with channel.request(
                path, handler.cardinality, handler.request_type, handler.reply_type, timeout=30
            ) as stream:
                await stream.send_message(request, end=True)
                replies = [m async for m in stream]
            single = handler.cardinality is Cardinality.UNARY_UNARY
            return "ok", replies[0] if single else replies
        except GRPCError as exc:
            return exc.status.name.lower(), exc.message
        finally:
            channel.close()

    return asyncio.run(call())
