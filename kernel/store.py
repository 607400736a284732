"""The store actor: the only owner of the DuckDB file.

It group-commits: it takes every Append waiting in its mailbox, writes them as one transaction of
columnar inserts on a worker thread, and only then answers their acks and hands their ``publish``
items to the tap broker — so nobody hears of a write before it is durable.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb
import trio

from foundry.analytics.schema import ddl

from .records import FinishedChain
from .store_messages import Append, Read
from .store_reads import recover_unfinished
from .store_tables import WRITERS
from .tap_messages import Publish

log = logging.getLogger("foundry.store")

StoreMessage = Append | Read


def trace_path(home: Path, chain: FinishedChain) -> Path:
    day = chain.started_at.strftime("%Y-%m-%d")
    return home / "traces" / day / f"{chain.workflow_id}.json"


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
        self._folders: set[str] = set()  # trace folders known to exist

    async def run(self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
        recovered = await trio.to_thread.run_sync(self._open)
        task_status.started(recovered)
        try:
            async with self._inbox, self._tap:
                while True:
                    try:
                        batch = [await self._inbox.receive()]
                    except trio.EndOfChannel:
                        break
                    batch.extend(self._drain())
                    await self._handle(batch)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._close)

    def _drain(self) -> list[StoreMessage]:
        more: list[StoreMessage] = []
        while len(more) < self._max_batch:
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
            await trio.to_thread.run_sync(self._write, [a.records for a in appends])
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
            return
        published = [item for a in appends for item in a.publish]
        for append in appends:
            if append.ack:
                append.ack.send(None)
        if published:
            await self._tap.send(Publish(tuple(published)))

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
        return recover_unfinished(self._con, self.write_records)

    def _close(self) -> None:
        if self._con is not None:
            self._con.execute("CHECKPOINT")
            self._con.close()
            self._con = None

    def _query(self, message: Read) -> Any:
        assert self._con is not None
        return message.query(self._con, *message.args)

    def _write(self, groups: Sequence[tuple[Any, ...]]) -> None:
        self.write_records([r for records in groups for r in records])

    def write_records(self, records: Sequence[Any]) -> None:
        """One transaction for every record; trace files first, so a crash never leaves a
        committed workflow row without its trace (an uncommitted one is recovered)."""
        assert self._con is not None
        if not records:
            return  # an empty Append is a barrier: its ack means all before it is durable
        by_kind: dict[type, list[Any]] = {}
        for record in records:
            by_kind.setdefault(type(record), []).append(record)
        for chain in by_kind.get(FinishedChain, ()):
            self._write_trace(trace_path(self.home, chain), chain.trace)
        self._con.execute("BEGIN TRANSACTION")
        try:
            for kind, rows in by_kind.items():
                WRITERS[kind].insert(self._con, rows)
            self._con.execute("COMMIT")
        except BaseException:
            self._con.execute("ROLLBACK")
            raise

    def _write_trace(self, path: Path, document: Any) -> None:
        """Four system calls a file (open, write, close, rename), folders made once: each call
        releases the GIL and may wait a switch interval to get it back from the busy trio thread,
        so the count matters more than the bytes."""
        folder = str(path.parent)
        if folder not in self._folders:
            os.makedirs(folder, exist_ok=True)
            self._folders.add(folder)
        final = f"{folder}/{path.name}"
        temporary = final + ".tmp"
        data = json.dumps(document, default=str).encode()
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(temporary, final)

