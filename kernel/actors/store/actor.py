"""The store actor: the only owner of the DuckDB file.

It group-commits: it takes every Append waiting in its mailbox, writes them as one transaction of
batched inserts (DuckDB's appender) on a worker thread, and only then answers their acks and hands
their ``publish`` items to the tap broker — so nobody hears of a write before it is durable. Then
the trace files of the chains that finished go to the trace archivist (``trace_archive.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb
import trio
from foundry.analytics.schema import ddl
from foundry.kernel.actors.store.archivist import Archivist, FileWriter, frame
from foundry.kernel.actors.store.messages import Append, Read, StoreMessage
from foundry.kernel.actors.store.reads import recover_unfinished
from foundry.kernel.actors.store.tables import WRITERS
from foundry.kernel.actors.tap.messages import Publish
from foundry.kernel.core.records import FinishedChain

log = logging.getLogger("foundry.store")


# Scheduler ticks a commit waits for more appends: microseconds each, against milliseconds for a
# commit, and a durable step's completion then shares a commit with the next step's lease. A tick
# can also be long (the engine running many chains inline): the wait ends after LINGER_SECONDS.
LINGER_CHECKPOINTS = 8
LINGER_SECONDS = 0.001


def trace_path(home: Path, chain: FinishedChain) -> str:
    """``$FOUNDRY_HOME/traces/YYYY-MM-DD/<root event id>.json``, the day in UTC."""
    return f"{home}/traces/{chain.started_at.date().isoformat()}/{chain.workflow_id}.json"


class Store:
    def __init__(
        self,
        home: Path,
        inbox: trio.MemoryReceiveChannel[StoreMessage],
        tap: trio.MemorySendChannel[Publish],
        *,
        max_batch: int = 5_000,
    ) -> None:
        self.home = home
        self.path = home / "foundry.duckdb"
        self._inbox, self._tap, self._max_batch = inbox, tap, max_batch
        self._con: duckdb.DuckDBPyConnection | None = None
        self._appenders: dict[type, Any] = {}
        self._archivist = Archivist()

    async def run(
        self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        recovered = await trio.to_thread.run_sync(self._open)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self._archivist.run)
                task_status.started(recovered)
                try:
                    await self._serve()
                finally:
                    self._archivist.close()  # it writes what it was given, then stops
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._close)

    async def _serve(self) -> None:
        async with self._inbox, self._tap:
            while True:
                # What came in during the last commit goes at once: no scheduler pass to wait for
                # (behind a busy gRPC loop, each costs milliseconds).
                batch = self._drain(self._max_batch + 1)
                if not batch:
                    try:
                        batch = [await self._inbox.receive()]
                    except trio.EndOfChannel:
                        break
                    batch.extend(self._drain(self._max_batch))
                    await self._linger(batch)  # an idle store lets near-simultaneous writes join
                await self._handle(batch)

    async def _linger(self, batch: list[StoreMessage]) -> None:
        """Let appends that are about to come join this commit."""
        until = trio.current_time() + LINGER_SECONDS
        for _ in range(LINGER_CHECKPOINTS):
            await trio.lowlevel.checkpoint()
            batch.extend(self._drain(self._max_batch + 1 - len(batch)))
            if trio.current_time() >= until:
                return

    def _drain(self, room: int) -> list[StoreMessage]:
        more: list[StoreMessage] = []
        while len(more) < room:
            try:
                more.append(self._inbox.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        return more

    async def _handle(self, batch: list[StoreMessage]) -> None:
        appends = [m for m in batch if isinstance(m, Append)]
        if appends:
            await self._commit(appends)
        for message in batch:
            if isinstance(message, Read):
                await self._read(message)

    async def _commit(self, appends: list[Append]) -> None:
        try:
            traces = await trio.to_thread.run_sync(self._write, [a.records for a in appends])
        except Exception as exc:
            if len(appends) > 1:
                # One bad append must not fail the others grouped with it: commit each alone.
                for append in appends:
                    await self._commit([append])
                return
            log.exception("commit of an append failed")
            for append in appends:
                if append.ack:
                    append.ack.fail(exc)
                for reply, _ in append.answers:
                    reply.fail(exc)
            return
        published = [item for a in appends for item in a.publish]
        for append in appends:
            if append.ack:
                append.ack.send(None)
            for reply, value in append.answers:
                reply.send(value)
        if published:
            try:
                self._tap.send_nowait(Publish(tuple(published)))
            except trio.WouldBlock:
                await self._tap.send(Publish(tuple(published)))
        await self._archivist.send(traces)

    async def _read(self, message: Read) -> None:
        try:
            result = await trio.to_thread.run_sync(self._query, message)
        except Exception as exc:
            message.reply.fail(exc)
        else:
            message.reply.send(result)

    # --- on the worker thread --------------------------------------------------------------

    def _open(self) -> list[str]:
        self.home.mkdir(parents=True, exist_ok=True)
        self._con = duckdb.connect(str(self.path))
        self._con.execute("SET TimeZone='UTC'")
        for statement in ddl():
            self._con.execute(statement)
        return recover_unfinished(self._con, self._write_recovered)

    def _close(self) -> None:
        if self._con is not None:
            self._appenders.clear()
            self._con.execute("CHECKPOINT")
            self._con.close()
            self._con = None

    def _query(self, message: Read) -> Any:
        assert self._con is not None
        return message.query(self._con, *message.args)

    def _write(self, groups: Sequence[tuple[Any, ...]]) -> bytes:
        return self.write_records([r for records in groups for r in records])

    def _write_recovered(self, records: Sequence[Any]) -> None:
        FileWriter().write_all(self.write_records(records))

    def write_records(self, records: Sequence[Any]) -> bytes:
        """Commit every record in one transaction; returns the framed trace files of the chains
        that finished, for the archivist."""
        assert self._con is not None
        if not records:
            return b""  # an empty Append is a barrier: its ack means all before it is durable
        by_kind: dict[type, list[Any]] = {}
        for record in records:
            by_kind.setdefault(type(record), []).append(record)
        traces = b"".join(
            frame(trace_path(self.home, chain), chain.trace)
            for chain in by_kind.get(FinishedChain, ())
            if chain.trace is not None  # an event no block sinks has no trace file
        )
        self._con.execute("BEGIN TRANSACTION")
        try:
            for kind, rows in by_kind.items():
                appender = self._appender(kind)
                WRITERS[kind].append(appender, rows)
                appender.flush()
            self._con.execute("COMMIT")
        except BaseException:
            for appender in self._appenders.values():
                appender.clear()  # rows a failed append_rows kept must not reach the next commit
            self._con.execute("ROLLBACK")
            raise
        return traces

    def _appender(self, kind: type) -> Any:
        assert self._con is not None
        if kind not in self._appenders:
            self._appenders[kind] = WRITERS[kind].appender(self._con)
        return self._appenders[kind]
