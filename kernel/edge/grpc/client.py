"""A small asyncio client for the CLI (the kernel's event loop is trio; a client's need not be)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from foundry.kernel.config import DEFAULT_LISTEN, parse_listen
from foundry.proto import foundry_api, runtime_api
from grpclib.client import Channel


def default_address() -> str:
    return os.environ.get("FOUNDRY_ADDR") or DEFAULT_LISTEN


@asynccontextmanager
async def connect(
    address: str,
) -> AsyncIterator[tuple[foundry_api.FoundryStub, runtime_api.RuntimeServiceStub]]:
    host, port = parse_listen(address, key="--addr")
    channel = Channel(host, port)
    try:
        yield foundry_api.FoundryStub(channel), runtime_api.RuntimeServiceStub(channel)
    finally:
        channel.close()
