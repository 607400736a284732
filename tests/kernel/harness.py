"""The kernel's actors wired together in-process, the way ``kernel/daemon.py`` wires them, minus
gRPC: a real TapBroker, Store (DuckDB file under a temp home) and Engine on trio memory channels."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from foundry.kernel.actors.engine.actor import Engine
from foundry.kernel.actors.engine.messages import (
    Emit,
    Emitted,
    EngineMessage,
    GetStatus,
    GetTrace,
    WorkflowView,
)
from foundry.kernel.actors.mailbox import ask
from foundry.kernel.actors.store.actor import Store
from foundry.kernel.actors.store.messages import Read, StoreMessage
from foundry.kernel.actors.tap.actor import TapBroker
from foundry.kernel.actors.tap.messages import Subscribe, TapMessage
from foundry.kernel.blocks.api import Block
from foundry.kernel.blocks.registry import BlockRegistry
from foundry.kernel.config import EngineConfig
from foundry.kernel.core.throttle import Throttle

MAILBOX = 1_024
GUARD_SECONDS = 10


@dataclass
class Kernel:
    home: Path
    engine: trio.MemorySendChannel[EngineMessage]
    tap: trio.MemorySendChannel[TapMessage]
    store: trio.MemorySendChannel[StoreMessage]
    recovered: list[str] = field(default_factory=list)

    async def emit(
        self,
        event_type: str,
        payload: Mapping[str, Any] | None = None,
        *,
        project: str = "p",
        throttle: Throttle = Throttle.FULL,
    ) -> Emitted:
        return await ask(
            self.engine, lambda r: Emit(event_type, project, throttle, dict(payload or {}), r)
        )

    async def status(self, workflow_id: str = "") -> list[WorkflowView]:
        return await ask(self.engine, lambda r: GetStatus(workflow_id, r))

    async def trace(self, event_id: str) -> Mapping[str, Any] | None:
        return await ask(self.engine, lambda r: GetTrace(event_id, r))

    async def finished(self, workflow_id: str) -> Mapping[str, Any]:
        """The trace once the workflow has ended.

        The store commits on a worker thread, which ``wait_all_tasks_blocked`` counts as blocked,
        so settling cannot tell us the chain is over; we poll Trace (None while in flight).
        """
        while True:
            document = await self.trace(workflow_id)
            if document is not None:
                return document
            await trio.sleep(0.002)

    async def watch(self, project: str | None = None) -> trio.MemoryReceiveChannel[Any]:
        return await ask(self.tap, lambda r: Subscribe("events", project, r))

    async def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        def run(con: Any) -> list[tuple[Any, ...]]:
            return con.execute(sql, list(params)).fetchall()

        return await ask(self.store, lambda r: Read(run, (), r))


@asynccontextmanager
async def running_kernel(
    home: Path,
    blocks: Iterable[Block] | BlockRegistry,
    *,
    engine: EngineConfig | None = None,
    tap_buffer: int = 256,
    grace: float = 5.0,
) -> AsyncIterator[Kernel]:
    """Start the actors; on a clean exit, stop them in the daemon's order (chains in flight get
    ``grace``); on an error, cancel everything. An absolute guard bounds the whole block."""
    registry = blocks if isinstance(blocks, BlockRegistry) else BlockRegistry(blocks)
    tap_send, tap_receive = trio.open_memory_channel[TapMessage](MAILBOX)
    store_send, store_receive = trio.open_memory_channel[StoreMessage](MAILBOX)
    engine_send, engine_receive = trio.open_memory_channel[EngineMessage](MAILBOX)
    with trio.fail_after(GUARD_SECONDS):
        async with trio.open_nursery() as nursery:
            try:
                await nursery.start(TapBroker(tap_receive, buffer=tap_buffer).run)
                store = Store(home, store_receive, tap_send.clone())
                recovered = await nursery.start(store.run)
                actor = Engine(
                    registry,
                    engine_receive,
                    store_send.clone(),
                    home=home,
                    config=engine or EngineConfig(),
                    shutdown_grace=grace,
                )
                await nursery.start(actor.run)
                yield Kernel(home, engine_send, tap_send, store_send, recovered)
            except BaseException:
                nursery.cancel_scope.cancel()
                raise
            finally:
                engine_send.close()
                store_send.close()
                tap_send.close()
