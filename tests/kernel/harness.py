"""The kernel in-process, minus gRPC: ``open_kernel`` (``kernel/actors/supervisor.py``, what the
daemon runs) on a real ``Config`` whose home is the test's temp folder, and a ``Kernel`` that asks
its actors and reads its DuckDB file."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import trio
from foundry.kernel.actors import supervisor
from foundry.kernel.actors.engine.messages import (
    Emit,
    Emitted,
    EngineMessage,
    GetStatus,
    GetTrace,
    WorkflowView,
)
from foundry.kernel.actors.mailbox import ask
from foundry.kernel.actors.replay.messages import ReplayMessage
from foundry.kernel.actors.scheduler.messages import SchedulerMessage
from foundry.kernel.actors.store.messages import CountRows, StoreMessage
from foundry.kernel.actors.tap.messages import Subscribe, TapMessage
from foundry.kernel.blocks.api import Block
from foundry.kernel.blocks.registry import BlockRegistry
from foundry.kernel.config import Config, EngineConfig, TapConfig
from foundry.kernel.core.throttle import Throttle

GUARD_SECONDS = 10


@dataclass
class Kernel:
    home: Path
    engine: trio.MemorySendChannel[EngineMessage]
    tap: trio.MemorySendChannel[TapMessage]
    scheduler: trio.MemorySendChannel[SchedulerMessage]
    replay: trio.MemorySendChannel[ReplayMessage]
    recovered: list[str] = field(default_factory=list)  # workflows the store marked failed
    store: trio.MemorySendChannel[StoreMessage] | None = None
    gate: trio.MemorySendChannel[Any] | None = None

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
        """SQL on the store's database once it holds every write acknowledged so far (the store
        applies its journal to DuckDB in batches; any query of its own waits for that)."""
        if self.store is not None:
            await ask(self.store, CountRows)
        return await run_sql(self.home, sql, *params)


async def run_sql(home: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Run SQL on a connection of the test's own to the store's database (DuckDB hands a process
    one instance per file, so it sees what the store committed): the store itself runs only its
    own queries."""

    def run() -> list[tuple[Any, ...]]:
        with duckdb.connect(str(home / "foundry.duckdb")) as con:
            # While the store runs this is its instance, UTC and locked (the SQL sandbox).
            if not con.execute("SELECT current_setting('lock_configuration')").fetchone()[0]:
                con.execute("SET TimeZone='UTC'")
            return con.execute(sql, list(params)).fetchall()

    return await trio.to_thread.run_sync(run)


@asynccontextmanager
async def running_kernel(
    home: Path,
    blocks: Iterable[Block] | BlockRegistry,
    *,
    engine: EngineConfig | None = None,
    tap_buffer: int = 256,
    grace: float = 5.0,
    hold_store: Callable[[str], None] | None = None,
) -> AsyncIterator[Kernel]:
    """Run ``open_kernel``; leaving the block stops the actors the daemon's way (chains in flight
    get ``grace``); an error cancels everything. An absolute guard bounds the whole block.
    ``hold_store`` is the store's ``hold_for_test``."""
    registry = blocks if isinstance(blocks, BlockRegistry) else BlockRegistry(blocks)
    config = Config(
        home=home,
        shutdown_grace=grace,
        engine=engine or EngineConfig(),
        tap=TapConfig(subscriber_buffer=tap_buffer),
    )
    recovered: list[str] = []
    with trio.fail_after(GUARD_SECONDS), trio.CancelScope() as scope:
        async with AsyncExitStack() as stack:
            opened = supervisor.open_kernel(
                config, registry, recovered=recovered, hold_store=hold_store
            )
            mailboxes = await stack.enter_async_context(opened)
            try:
                yield Kernel(home, mailboxes.engine, mailboxes.tap, mailboxes.scheduler,
                             mailboxes.replay, recovered, mailboxes.store,
                             mailboxes.gate)  # fmt: skip
            except BaseException:
                scope.cancel()
                raise
