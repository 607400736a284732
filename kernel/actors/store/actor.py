"""The store actor: the only owner of the DuckDB file and of the journal in front of it.

Writes are durable once they are in the journal (``journal.py``): the store group-commits —
it takes every Append waiting in its mailbox, turns their records into table rows, appends them
as one checksummed journal record and ``fdatasync``s it on its journal thread, or (a small group
someone waits for) in its writer process (``journal_writer.py``) — and only then
answers their acks and hands their ``publish`` items to the tap broker, so nobody hears of a
write before it is durable. The trace files of the chains that finished go to the trace
archivist (``archivist.py``).

DuckDB is the materialized, queryable view of the journal: a materializer task applies the
journaled rows in large batches (every ``materialize_delay`` seconds, or at once when a query
waits for them), each batch in one transaction with the journal's high-water mark
(``journal_applied``), then deletes the segments DuckDB has. On start the store replays exactly
the records DuckDB lacks.

Queries (the typed messages of ``messages.py``) see every write acknowledged before they
arrived: one that finds DuckDB behind the journal has the materializer catch up first. Then it
runs on a worker thread and a read cursor of its own (DuckDB runs cursors of one instance
concurrently), up to ``READERS`` at a time, in a transaction of its own. A slow query delays no
Emit and no ack.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import itertools
import logging
import math
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import trio
from foundry.analytics import sandbox
from foundry.analytics.migrations import SchemaTooNew, migrate
from foundry.analytics.parquet import lands_inside, refresh_archive_views
from foundry.analytics.schema import ddl
from foundry.kernel.actors.mailbox import Reply, cancel_when, refuse, reply_pair
from foundry.kernel.actors.store import retention
from foundry.kernel.actors.store.archivist import Archivist, FileWriter, frame
from foundry.kernel.actors.store.journal import SEGMENT_BYTES, Journal, PreparedAppend, encode
from foundry.kernel.actors.store.journal_writer import WriterGone, WriterProcess, hold_writer_lock
from foundry.kernel.actors.store.messages import (
    Append,
    Barrier,
    CommitHealth,
    ExportParquet,
    GetStats,
    Pruned,
    RetentionReport,
    RunRetention,
    RunUserQuery,
    StoreMessage,
    StoreQuery,
    StoreStats,
)
from foundry.kernel.actors.store.reads import QUERIES, recover_unfinished
from foundry.kernel.actors.store.tables import (
    TableRows,
    TableWriter,
    Unstorable,
    apply,
    check_encoded,
    journal_rows,
    merge,
    record_is_large,
    rows_in,
    spooled_paths,
    table_rows,
)
from foundry.kernel.actors.tap.messages import Publish
from foundry.kernel.actors.telemetry.messages import SpanOutbox, TracesStored
from foundry.kernel.actors.threads import JobThread, in_thread, waited_for
from foundry.kernel.core.attest_records import SPOOL
from foundry.kernel.core.records import FinishedChain
from foundry.kernel.errors import (
    ConfigError,
    DeadlineExceeded,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)

log = logging.getLogger("foundry.store")


# Scheduler ticks a commit waits for more appends: microseconds each, against milliseconds for a
# commit, and a durable step's completion then shares a commit with the next step's lease. A tick
# can also be long (the engine running many chains inline): the wait ends after LINGER_SECONDS.
LINGER_CHECKPOINTS = 8
LINGER_SECONDS = 0.001
# A group someone waits for, of at most this many rows, is encoded on the trio thread and
# appended by the writer process (``journal_writer.py``); a larger one on the journal thread
# (encoding it here would hold the trio thread: at 64, the engine benchmark's CPU per chain grew
# ~10%; a PatchStep, or a mutator's lease with the completion before it, is 1-3 records).
WRITER_PROCESS_RECORDS = 8

# A journaled write waits at most this long for DuckDB when no query asks for it (the analytics
# lag of an idle reader); batches this many rows or more go at once.
MATERIALIZE_DELAY = 0.2
MATERIALIZE_ROWS = 20_000
# Journaled rows DuckDB may lag by before commits wait for it: bounds the memory they hold.
BACKLOG_ROWS = 200_000
# Journal records replayed into DuckDB per transaction at start.
REPLAY_BATCH = 256
# How long a query waits for DuckDB to catch up with the journal before it gives up.
CATCH_UP_SECONDS = 30.0
# Tries a stopping store gives a failing database before it leaves the journal to the next start.
REOPEN_AFTER_FAILURES = 10  # failed attempts at one batch (one a second) before a new connection
STOPPING_ATTEMPTS = 3

# Queries at once, each on its own cursor and worker thread (commits use the default limiter).
DISABLED_COMPRESSION = "zstd"  # not used for new segments (``_connect``)
READERS = 4
# Analysts' queries at once (RunUserQuery), on cursors of their own: a heavy one holds up neither
# the store's own queries nor its commits.
USER_READERS = 2
INTERRUPT_AGAIN = 0.05  # seconds between a late query's interrupts (``_user_query_now``)

# After a commit of this many bytes of traces and payloads, the heap's free pages go back to the
# OS RELEASE_DELAY seconds later (once the engine, the tap and the archivist have let go of them).
LARGE_COMMIT_BYTES = 1 << 20
RELEASE_DELAY = 1.0

# DuckDB keeps every block of the database it wrote (at each checkpoint) or read in its buffers
# until memory_limit forces them out: measured, its memory grew with the file, ~49 MB over 90,000
# greeting chains. No setting lets them go (and the sandbox locks the settings), so once its
# buffers hold more than this and no query runs, the store checkpoints and reopens the database
# (the checkpoint, then ~30 ms, on a worker thread), which drops them; 0 never does.
CACHE_BYTES = 8 << 20
REOPEN_RETRY_SECONDS = 1.0  # a reopen DuckDB refused is tried again this often


@dataclass(frozen=True, slots=True)
class Prune:
    """A retention pass's delete (``retention.prune``), run in the commit sequence."""

    cutoff: datetime
    pass_id: str
    staged: dict[str, int]
    reply: Reply[tuple[list[tuple[str, datetime]], tuple[str, ...]] | None]


Write = Append | Barrier | Prune


@dataclass(frozen=True, slots=True)
class _Handed:
    """A group the trio thread encoded and handed the writer process (``prepared`` None: it
    had no rows to journal)."""

    prepared: PreparedAppend | None
    tables: list[TableRows]
    derived: list[TableRows]
    traces: bytes
    payload: bytes


# A group's commit: its journal seq, its journaled rows, its rows only DuckDB gets, its traces.
Committed = tuple[int, list[TableRows], list[TableRows], bytes]


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
        retain_days: float = 0.0,
        retention_interval: float = 3600.0,
        memory_limit: str | None = None,
        materialize_delay: float = MATERIALIZE_DELAY,
        segment_bytes: int = SEGMENT_BYTES,
        hold_for_test: Callable[[str], None] | None = None,
        cache_bytes: int = CACHE_BYTES,
        spans: SpanOutbox | None = None,
        pruned_to: Sequence[trio.MemorySendChannel[Any]] = (),
    ) -> None:
        """``hold_for_test`` is for tests only: called on the worker thread as each commit
        (``"commit"``: the journal append), each materialization (``"materialize"``) and each
        query, inside its transaction (``"read"``), begins, so a test can block there to hold
        that work up. The daemon passes None.

        ``spans`` (OpenTelemetry export on) gets the trace files of each commit
        (``TracesStored``): the workflows' spans come of them.

        ``retain_days`` > 0 archives and prunes finished work older than that (``retention.py``)
        at start and every ``retention_interval`` seconds; 0 keeps everything."""
        self.home = home
        self._pruned_to = tuple(pruned_to)  # the engine's and scheduler's mailboxes: Pruned
        self._spans = spans or SpanOutbox()
        self.path = home / "foundry.duckdb"
        self._database_file: tuple[int, int] | None = None  # (device, inode) when opened
        self._told_replaced = False
        self._inbox, self._tap, self._max_batch = inbox, tap, max_batch
        self._con: duckdb.DuckDBPyConnection | None = None
        self._cursors: list[duckdb.DuckDBPyConnection] = []  # idle read cursors
        self._readers = trio.CapacityLimiter(READERS)
        self._user_cursors: list[duckdb.DuckDBPyConnection] = []
        self._user_readers = trio.CapacityLimiter(USER_READERS)
        # Analysts' queries run on threads of their own at the lowest CPU priority: a heavy one
        # takes only the CPU that commits, Emits and the loop leave (DuckDB runs a query on the
        # calling thread, and on others only where it has more than one, on larger machines).
        self._user_threads = [
            JobThread(f"foundry-query-{i}", idle_priority=True) for i in range(USER_READERS)
        ]
        self._appenders: dict[str, Any] = {}  # by table
        # The connection a failed commit could not roll back (see _transaction), if any.
        self._aborted_on: duckdb.DuckDBPyConnection | None = None
        self._db_applied = 0  # the high-water mark DuckDB holds (worker thread's view)
        self._archivist = Archivist()
        self._hold_for_test = hold_for_test
        self._cache_bytes = cache_bytes
        self._cache_full = False  # DuckDB's buffers hold more than cache_bytes: reopen it
        self._commits = self._reads = 0
        self._queries: trio.Nursery | None = None
        self._closing = trio.Event()  # the mailbox closed: the daemon is stopping
        self._pending: list[Write] = []  # writes waiting for the next group commit
        self._inflight: list[Write] | None = None  # the group whose journal append is queued
        self._idle = False  # the commit loop waits for writes (or lingers): none in flight
        self._waiting = False  # the idle commit loop waits in the journal thread's wait()
        self._room = trio.Event()
        self._ended = False  # the mailbox has closed: commit what is queued, then stop
        self._memory_limit = memory_limit  # DuckDB's, its block cache included ([store])
        self._background: trio.Nursery | None = None
        self._release: trio.CancelScope | None = None  # a pending release_free_heap
        self._retain_days, self._retention_interval = retain_days, retention_interval
        self._retention = trio.Lock()  # one pass at a time
        # held from a pass's delete until its files are in the archive, and while a user
        # query's snapshot is taken (``sandbox.run_query``): no snapshot falls in between
        self._archive_gate = threading.Lock()
        self._journal = Journal(home / "journal", segment_bytes=segment_bytes)
        self._writer = JobThread("foundry-journal")
        self._writer_lock = -1  # journal/writer.lock, held while this store (or its child) lives
        self._writer_process: WriterProcess | None = None  # None: the thread appends all
        self._handed: _Handed | None = None  # the group the trio thread handed the writer process
        # Set once a group someone waits for, on the journal thread, is through (or a read
        # wants DuckDB): DuckDB's catching up waits for it — both hold the interpreter lock for
        # most of their work, and the write's waiter comes first.
        self._commit_first: trio.Event | None = None
        self._materialize_delay = materialize_delay
        self._backlog: list[tuple[int, list[TableRows]]] = []  # journaled, not yet in DuckDB
        # Rows only DuckDB gets (``TableWriter.journaled``), committed after their facts: the
        # groups of them made and the groups DuckDB has (``_caught_up`` waits for both counts).
        self._derived: list[TableRows] = []
        self._derived_made = self._derived_applied = 0
        self._backlog_rows = 0
        self._journaled = self._applied = 0  # seq of the last record journaled / in DuckDB
        self._caught = trio.Event()  # set (and replaced) each time DuckDB catches up some
        self._reopened = trio.Event()  # set when a database a reopen left closed opens again
        self._fatal_reopens = 0  # reopens after DuckDB invalidated the database
        self._invalid: duckdb.FatalException | None = None  # met, and not reopened yet
        self._reconnecting: trio.CancelScope | None = None  # _reconnect_loop's
        self._hurry = trio.Event()  # someone waits: materialize now
        self._backlog_ready = trio.Event()
        self._committing = True  # the commit loop runs: more backlog may come
        self._database = trio.Lock()  # the write connection: materializer or retention
        self._failures = _FailureLog()
        self._commits_work = True  # the last commit went through (CommitHealth)

    async def run(
        self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            recovered = await trio.to_thread.run_sync(self._open_within_memory)
        except (OSError, duckdb.IOException) as exc:
            raise ConfigError(_unopenable(self.path, exc)) from None
        except duckdb.Error as exc:  # a full disk: its WAL or checkpoint could not be written
            if _NO_SPACE not in str(exc):
                raise
            raise ConfigError(f"{self.path}: DuckDB cannot write it: {_NO_SPACE}; free some "
                              "space, then start again") from None  # fmt: skip
        self._writer.start()
        self._writer_process = await self._start_writer_process()
        for thread in self._user_threads:
            thread.start()
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self._archivist.run)
                self._background = nursery
                task_status.started(recovered)
                try:
                    await self._serve()
                finally:
                    self._archivist.close()  # it writes what it was given, then stops
                    if self._writer_process is not None:
                        await self._writer_process.close()
                    if self._release is not None:
                        self._release.cancel()
                    if self._reconnecting is not None:
                        self._reconnecting.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._close)

    async def _serve(self) -> None:
        """Two tasks: one takes the mailbox as it comes (queries start at once, writes queue),
        the other commits the queued writes group after group. A commit in progress delays no
        query, and a query no commit."""
        async with self._tap, self._spans, trio.open_nursery() as nursery:
            self._queries = nursery  # queries in flight finish before the store closes
            nursery.start_soon(self._commit_loop)
            nursery.start_soon(self._materialize_loop)
            passes = trio.CancelScope()
            nursery.start_soon(self._retention_loop, passes)
            try:
                await self._receive()
            finally:
                self._closing.set()  # analysts' queries in flight are cut short
                passes.cancel()  # a pass already staged still gets its Prune committed

    async def _receive(self) -> None:
        async with self._inbox:
            while True:
                try:
                    self._take(await self._inbox.receive())
                    # the rest already waiting in one go: a checkpoint per message costs
                    while len(self._pending) <= self._max_batch:
                        self._take(self._inbox.receive_nowait())
                except trio.WouldBlock:
                    pass
                except trio.EndOfChannel:
                    break
                if self._idle and any(map(_awaited, self._pending)):
                    self._start_commit()  # at once: no pass of the loop to wake the committer
                elif self._pending:
                    self._wake_committer()
                while len(self._pending) > self._max_batch:
                    # a full group waits: the rest stays in the (bounded) mailbox meanwhile
                    self._room = trio.Event()
                    await self._room.wait()
        self._ended = True
        self._wake_committer()

    def _take(self, message: StoreMessage) -> None:
        """Queue a write; start a query; answer GetStats; refuse anything else."""
        if isinstance(message, Append | Barrier):
            self._pending.append(message)
        elif isinstance(message, RunRetention):
            assert self._queries is not None
            self._queries.start_soon(self._retain_now, message.reply)
        elif isinstance(message, GetStats):
            message.reply.send(StoreStats(commits=self._commits, reads=self._reads))
        elif isinstance(message, RunUserQuery):
            assert self._queries is not None
            self._queries.start_soon(self._user_query, message)
        elif type(message) in QUERIES:
            assert self._queries is not None
            self._queries.start_soon(self._query, message)
        else:
            refuse(message, KeyError(type(message)), log)

    async def _commit_loop(self) -> None:
        try:
            await self._commit_groups()
        finally:
            self._committing = False  # the materializer drains what is journaled, then stops
            self._hurry.set()
            self._backlog_ready.set()

    async def _commit_groups(self) -> None:
        while True:
            if self._inflight is None and not self._pending:
                if self._ended:
                    return
                self._idle = True  # the receiver may start the next commit itself
                await self._idle_wait()
                if self._inflight is None:
                    if not self._pending:
                        continue
                    await self._linger()  # an idle store lets near-simultaneous writes join
            # What came in during the last commit goes at once: no scheduler pass to wait for
            # (behind a busy gRPC loop, each costs milliseconds).
            if self._inflight is None:
                self._start_commit()
            batch, self._inflight = self._inflight, None
            assert batch is not None
            await self._handle(batch)
            del batch  # not held while waiting: a large write would stay resident

    async def _idle_wait(self) -> None:
        """Wait for writes: the journal thread's signal, which comes when a commit the receiver
        started is through (the loop then finishes it at once: no pass of its own in between),
        or when the receiver wakes it (:meth:`_wake_committer`)."""
        self._waiting = True
        try:
            await self._writer.wait()
        finally:
            self._waiting = False

    def _wake_committer(self) -> None:
        """Have the idle commit loop look at what is queued (once per wait)."""
        if self._waiting:
            self._waiting = False
            self._writer.wake()

    def _start_commit(self) -> None:
        """Take the next group and hand its journal append to the journal thread; the commit
        loop finishes it (``_handle``). Called by the commit loop, or by the receiver when the
        loop is idle and a write someone waits for has come."""
        batch = self._pending[: self._max_batch + 1]
        del self._pending[: len(batch)]
        self._room.set()
        appends = [m for m in batch if isinstance(m, Append)]
        job = self._hand_off(appends) if appends else None
        if job is not None:  # its end wakes the idle loop
            waited = any(map(_awaited, appends))
            self._writer.submit(job, waited=waited)
            if waited:
                self._commit_first = trio.Event()
        else:
            self._wake_committer()
        self._inflight, self._idle = batch, False

    async def _start_writer_process(self) -> WriterProcess | None:
        try:
            return await WriterProcess.start(self._writer_lock)
        except OSError:
            log.exception("no writer process: the journal thread appends every write")
            return None

    def _hand_off(self, appends: list[Append]) -> Callable[[], Any] | None:
        """The journal thread's job for a group's append — or None: a small group someone
        waits for, encoded here and handed to the writer process (no wait). The thread takes
        a group nobody waits for (the engine's: its encoding stays off the trio thread, and
        the thread's handoffs cost no one a wait), a large group, a record of many JSON values
        (its encoding held the loop: ``tables.record_is_large``), a record too large for a
        message, a new segment or zeros to write first; all of them without a writer process,
        or while a test holds commits."""
        records = [r for a in appends for r in a.records]
        if (
            self._writer_process is None
            or self._hold_for_test is not None
            or len(records) > WRITER_PROCESS_RECORDS
            or not any(map(_awaited, appends))
            or sum(map(rows_in, records)) > WRITER_PROCESS_RECORDS  # the attestor's batch
            or any(map(record_is_large, records))  # (its JSON made here held the loop)
        ):
            return self._journal_job(appends)
        try:
            tables, derived, traces, payload = self._encoded(records)
        except Exception:  # the journal thread's job raises it again, for _commit to handle
            return self._journal_job(appends)
        prepared = self._journal.prepare(payload) if tables else None
        try:
            handed = not tables or (prepared is not None and self._writer_process.send(prepared))
        except WriterGone as exc:
            self._lose_writer_process(exc)
            handed = False
        if not handed:
            return self._append_job(payload, tables, derived, traces)  # encoded once
        self._handed = _Handed(prepared, tables, derived, traces, payload)
        return None

    def _append_job(
        self, payload: bytes, tables: list[TableRows], derived: list[TableRows], traces: bytes
    ) -> Callable[[], Committed]:
        """The journal thread's job for a record encoded already."""
        return lambda: (self._journal.append(payload), tables, derived, traces)

    async def _journal_result(self) -> Committed:
        """The outcome of the group in flight: from the writer process, or the journal
        thread's job."""
        handed, self._handed = self._handed, None
        if handed is None:
            result: Committed = await self._writer.result()
            return result
        if handed.prepared is None:  # no rows: nothing to journal
            return self._journal.last_seq, handed.tables, handed.derived, handed.traces
        assert self._writer_process is not None
        try:
            await self._writer_process.acknowledged()
        except WriterGone as exc:
            # The record may be on disk or not: the thread writes it again, the same bytes at
            # the same offset (nothing moved on since).
            self._lose_writer_process(exc)
            again = self._append_job(handed.payload, handed.tables, handed.derived, handed.traces)
            result = await self._writer.run(again)
            return result
        seq = self._journal.appended(handed.prepared)
        return seq, handed.tables, handed.derived, handed.traces

    def _lose_writer_process(self, why: Exception) -> None:
        log.warning("%s: the journal thread appends every write from now on", why)
        process, self._writer_process = self._writer_process, None
        if process is not None and self._background is not None:
            self._background.start_soon(process.close)

    def _journal_job(self, appends: list[Append]) -> Callable[[], Any]:
        groups = [a.records for a in appends]
        return lambda: self._journal_write(groups)

    async def _linger(self) -> None:
        """Let appends that are about to come join this commit (the receiver queues them) —
        but only while nobody waits on one: a write someone waits for (an Emit's reply, a
        mutator's lease, a PatchStep) goes at once, taking along what was appended before it
        (a step's completion, appended without waiting, so shares its successor's lease's
        commit)."""
        until = trio.current_time() + LINGER_SECONDS
        for _ in range(LINGER_CHECKPOINTS):
            if self._inflight is not None or any(map(_awaited, self._pending)):
                return
            await trio.lowlevel.checkpoint()
            if trio.current_time() >= until or len(self._pending) > self._max_batch:
                return

    async def _handle(self, batch: list[Write]) -> None:
        appends = [m for m in batch if isinstance(m, Append)]
        if appends:
            await self._commit(appends, submitted=True)
        for message in batch:
            if isinstance(message, Prune):
                await self._prune(message)
        for message in batch:
            if isinstance(message, Barrier):
                message.reply.send(None)  # every write before it is through its commit

    async def _say_commits_work(self, committing: bool, reason: str = "") -> None:
        """Tell the tap (the health service) that commits fail now, or work again."""
        self._commits_work = committing
        await self._tap.send(Publish((CommitHealth(committing, reason),)))

    async def _commit(self, appends: list[Append], *, submitted: bool = False) -> None:
        """Finish the commit of ``appends`` (``submitted``: its journal job is queued already)."""
        try:
            if not submitted:
                self._writer.submit(self._journal_job(appends), waited=any(map(_awaited, appends)))
            try:
                seq, tables, derived, traces = await self._journal_result()
            finally:
                self._let_duckdb_go()
        except Exception as exc:
            if len(appends) > 1 and not isinstance(exc, OSError):
                # One bad append must not fail the others grouped with it: commit each alone
                # (not when the journal cannot write at all: a full disk, each failed again).
                for append in appends:
                    await self._commit([append])
                return
            self._failures.failed(exc)
            if self._commits_work and isinstance(exc, OSError):  # the journal cannot write
                await self._say_commits_work(False, f"{type(exc).__name__}: {exc}")
            error = _client_error(exc, "could not commit a write")
            for append in appends:
                if append.ack:
                    append.ack.fail(error)
                for reply, _ in append.answers:
                    reply.fail(error)
            return
        self._commits += 1
        if self._failures.unreported:
            self._failures.succeeded()
        if not self._commits_work:
            await self._say_commits_work(True)
        if tables:
            self._journaled = seq
            self._backlog.append((seq, tables))
        if derived:  # after the facts they attest: in this group, or journaled before it
            self._derived.extend(derived)
            self._derived_made += 1
        if tables or derived:
            self._backlog_rows += sum(len(rows) for _, rows in (*tables, *derived))
            self._backlog_ready.set()
            if self._backlog_rows >= MATERIALIZE_ROWS:
                self._hurry.set()
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
        if traces and self._spans.on:
            self._spans.offer(TracesStored(traces, _trace_ends(appends)))
        weight = len(traces) + sum(len(getattr(i, "payload_json", "")) for i in published)
        if weight >= LARGE_COMMIT_BYTES:
            self._release_memory_soon()
        if self._backlog_rows > BACKLOG_ROWS:
            await self._caught_up(None)  # DuckDB is far behind: commits wait (bounded memory)

    # --- materializing: DuckDB catches up with the journal ---------------------------------

    async def _materialize_loop(self) -> None:
        while self._backlog or self._derived or self._committing:
            if self._invalid is not None:  # a read or a checkpoint found DuckDB invalidated
                await self._recover_from_fatal(self._invalid)
                continue
            if not (self._backlog or self._derived):
                await self._backlog_ready.wait()
                self._backlog_ready = trio.Event()
                continue
            if self._committing and not self._hurry.is_set():
                with trio.move_on_after(self._materialize_delay):
                    await self._hurry.wait()  # more rows join this batch meanwhile
            self._hurry = trio.Event()
            if self._commit_first is not None:  # one commit at most: commits never stop
                await self._commit_first.wait()
            await self._materialize()

    async def _materialize(self) -> None:
        while self._con is None:  # a reopen failed: _reconnect_loop opens it again
            if not self._committing:  # stopping: the next start applies them from the journal
                log.error("stopping with %d journal records the database lacks", len(self._backlog))
                self._backlog, self._derived, self._backlog_rows = [], [], 0
                return
            with trio.move_on_after(REOPEN_RETRY_SECONDS):
                await self._reopened.wait()
        batch, self._backlog, self._backlog_rows = self._backlog, [], 0
        derived, self._derived, made = self._derived, [], self._derived_made
        for attempt in itertools.count(1):
            try:
                async with self._database:
                    await trio.to_thread.run_sync(self._apply_logged, batch, derived)
                break
            except duckdb.FatalException as exc:
                if "COMMIT succeeded" in str(exc):  # durable: the journaled rows are skipped
                    derived = []  # by the high-water mark; these would be written twice
                await self._recover_from_fatal(exc)  # then the batch again, on the new one
                if self._con is None:  # stopping: the next start applies them from the journal
                    log.error("stopping with %d journal records the database lacks", len(batch))
                    return
            except Exception as exc:
                # the traceback once, then a line each retry (a full disk: 70 lines a second)
                log.error("could not bring the database up to the journal (attempt %d: %s); "
                          "retrying in 1 s", attempt, sandbox.cut(str(_first_error(exc))),
                          exc_info=exc if attempt == 1 else None)  # fmt: skip
                if not self._committing and attempt >= STOPPING_ATTEMPTS:
                    # stopping: the records stay in the journal, and the next start applies them
                    log.error("stopping with %d journal records the database lacks", len(batch))
                    return
                await trio.sleep(1.0)  # the records stay in the journal and in memory
                if attempt % REOPEN_AFTER_FAILURES == 0:
                    # A connection that met a full disk can keep failing once there is room
                    # again (DuckDB fixed its temp space at what was free then, none: "failed to
                    # offload" for good, until a restart). A new one starts afresh.
                    await self._recover_from_fatal(exc, keep_limit=True)
                    if self._con is None:
                        log.error("stopping with %d journal records the database lacks",
                                  len(batch))  # fmt: skip
                        return
        if batch:
            self._applied = batch[-1][0]
        self._derived_applied = made
        self._caught.set()
        self._caught = trio.Event()
        if self._cache_full and self._committing:
            await self._drop_cache()

    async def _caught_up(
        self, limit: float | None = CATCH_UP_SECONDS, *, read: bool = False
    ) -> None:
        """Return once DuckDB has every write journaled before this call (and the rows only
        DuckDB gets, committed before it: ``TableWriter.journaled``); Unavailable after
        ``limit`` seconds (the log says why the materializer is stuck). A ``read`` fails at once
        while a failed reopen leaves the database closed: DuckDB does not catch up meanwhile."""
        target, derived = self._journaled, self._derived_made
        with trio.move_on_after(math.inf if limit is None else limit):
            while True:
                if read and self._reconnecting is not None:
                    self._require_open()
                if self._caught_with(target, derived):
                    return
                caught = self._caught
                self._hurry.set()
                self._let_duckdb_go()  # a read (or memory) comes before a commit's waiter
                with waited_for():  # the materializer's thread is waited for now
                    await caught.wait()
        raise Unavailable("the store's database is behind its journal; the daemon log says why")

    def _caught_with(self, journaled: int, derived: int) -> bool:
        return self._applied >= journaled and self._derived_applied >= derived

    def _let_duckdb_go(self) -> None:
        if self._commit_first is not None:
            self._commit_first.set()
            self._commit_first = None

    async def _readable(self) -> None:
        await self._caught_up(read=True)

    def _require_open(self) -> None:
        """Unavailable while a failed reopen leaves the database closed (``_reconnect_loop``).
        A reader checks again once it holds its slot: a reopen may have failed meanwhile."""
        if self._con is None:
            raise Unavailable(
                "the store's database could not be opened again; the daemon log says why"
            )

    async def _drop_cache(self) -> None:
        """Reopen the database (``_reopen``) if no query runs; else the next batch tries again.
        Queries wait meanwhile: it holds every reader slot."""
        async with self._database:
            limiters = ((self._readers, READERS), (self._user_readers, USER_READERS))
            if any(limiter.borrowed_tokens for limiter, _ in limiters):
                return
            slots = [(limiter, object()) for limiter, n in limiters for _ in range(n)]
            for limiter, borrower in slots:
                limiter.acquire_on_behalf_of_nowait(borrower)
            try:
                await trio.to_thread.run_sync(self._reopen)
                self._wake_if_invalid()
            except Exception as exc:
                log.error(
                    "could not open the database again after releasing its cache (%s): writes "
                    "go on to the journal, queries answer UNAVAILABLE; retrying every %g s",
                    sandbox.cut(str(exc)), REOPEN_RETRY_SECONDS,
                )  # fmt: skip
                self._reopened = trio.Event()
                self._reconnecting = trio.CancelScope()
                assert self._background is not None
                self._background.start_soon(self._reconnect_loop, self._reconnecting)
                self._caught.set()  # reads waiting for DuckDB to catch up fail now instead
                self._caught = trio.Event()
            finally:
                for limiter, borrower in slots:
                    limiter.release_on_behalf_of(borrower)

    async def _recover_from_fatal(self, exc: Exception, *, keep_limit: bool = False) -> None:
        """DuckDB invalidated the database (a checkpoint that could not fit in its memory
        limit: a row group's large values are held at once): every call on it fails from then
        on. Open it again — without ``[store] memory_limit`` from now on, as the same row group
        would fail the next checkpoint too — until it opens or the store stops; the journal has
        every write meanwhile. ``keep_limit``: a connection that failed on and on, reopened as
        it was."""
        if keep_limit:
            log.error("DuckDB keeps failing (%s): opening the database again",
                      sandbox.cut(str(_first_error(exc))))  # fmt: skip
        elif self._memory_limit:
            log.error(
                "DuckDB failed (%s): reopening the database without [store] memory_limit = %s "
                "(DuckDB's own limit, 80%% of RAM, from now on; raise the setting to keep a "
                "limit)", sandbox.cut(str(exc)), self._memory_limit,
            )  # fmt: skip
            self._memory_limit = None
        else:
            log.error("DuckDB failed (%s): reopening the database", sandbox.cut(str(exc)))
        self._invalid = None
        while True:
            if self._fatal_reopens:  # again: not at the pace of a failing loop
                await trio.sleep(REOPEN_RETRY_SECONDS)
            self._fatal_reopens += 1
            slots = [(limiter, object()) for limiter, n in ((self._readers, READERS),
                     (self._user_readers, USER_READERS)) for _ in range(n)]  # fmt: skip
            for limiter, borrower in slots:  # no query runs on the old connection meanwhile
                await limiter.acquire_on_behalf_of(borrower)
            try:
                async with self._database:
                    await trio.to_thread.run_sync(self._reopen_invalidated)
                return
            except Exception as failed:
                log.error("could not open the database again (%s); retrying every %g s",
                          sandbox.cut(str(failed)), REOPEN_RETRY_SECONDS)  # fmt: skip
            finally:
                for limiter, borrower in slots:
                    limiter.release_on_behalf_of(borrower)
            if not self._committing:
                return

    def _wake_if_invalid(self) -> None:
        if self._invalid is not None:  # found by a worker thread: the materializer reopens it
            self._backlog_ready.set()

    def _found_invalid(self, exc: BaseException) -> None:
        """Note that DuckDB invalidated the database (a reader or a checkpoint met it): the
        materializer opens it again, without waiting for the next write."""
        if isinstance(exc, duckdb.FatalException):
            self._invalid = self._invalid or exc
            self._wake_if_invalid()

    def _drop_handles(self) -> None:
        """Close the connection and its cursors, whatever state DuckDB is in (a call on an
        invalidated database fails: ignored)."""
        for handle in [*self._cursors, *self._user_cursors, self._con]:
            with contextlib.suppress(Exception):
                if handle is not None:
                    handle.close()
        self._cursors.clear()
        self._user_cursors.clear()
        self._appenders.clear()
        self._con = None

    def _reopen_invalidated(self) -> None:
        """Close every handle on an invalidated database (its calls fail: ignored), open it
        again and read its high-water mark: what the failed commit made durable is not applied
        twice."""
        self._drop_handles()
        self._reconnect()
        assert self._con is not None
        row = self._con.execute("SELECT max(seq) FROM journal_applied").fetchone()
        self._db_applied = int(row[0]) if row and row[0] is not None else self._db_applied

    async def _reconnect_loop(self, scope: trio.CancelScope) -> None:
        """Open the database again until DuckDB lets us (see :meth:`_reconnect`)."""
        with scope:
            while True:
                await trio.sleep(REOPEN_RETRY_SECONDS)
                try:
                    async with self._database:
                        await trio.to_thread.run_sync(self._reconnect)
                except Exception as exc:
                    log.debug("the database does not open yet: %s", sandbox.cut(str(exc)))
                    continue
                log.warning("the database is open again")
                self._reopened.set()
                break
        self._reconnecting = None

    def _release_memory_soon(self) -> None:
        """After a large commit, hand the heap's free pages back to the OS (see
        :func:`release_free_heap`), once the rest of the kernel has let go of its records too."""
        if self._release is None and self._background is not None:
            self._release = trio.CancelScope()
            self._background.start_soon(self._release_memory, self._release)

    async def _release_memory(self, scope: trio.CancelScope) -> None:
        with scope:
            await trio.sleep(RELEASE_DELAY)
            self._release = None
            # DuckDB holds a large write's text in memory until its next checkpoint (its WAL
            # threshold may be far off): checkpoint now, so its allocator can hand it back too
            try:
                await self._caught_up()
            except Unavailable:  # DuckDB is failing (the materializer logs why): no checkpoint
                pass
            else:
                async with self._database:
                    await trio.to_thread.run_sync(self._checkpoint)
                self._wake_if_invalid()
            await trio.to_thread.run_sync(release_free_heap)

    # --- retention (retention.py): stage on a read cursor, prune in the commit sequence -----

    async def _retention_loop(self, scope: trio.CancelScope) -> None:
        if self._retain_days <= 0:
            return
        with scope:
            while True:
                try:
                    report = await self._retain()
                except Exception:
                    log.exception("retention pass failed (the rows stay; next pass retries)")
                else:
                    if report.archived:
                        log.info("archived %s", report.archived)
                await trio.sleep(self._retention_interval)

    async def _retain_now(self, reply: Reply[RetentionReport]) -> None:
        try:
            report = await self._retain()
        except Exception as exc:
            log.exception("retention pass failed")
            reply.fail(_client_error(exc, "could not archive old rows"))
        else:
            reply.send(report)

    def _clean_up_after(
        self, pass_id: str, workflows: list[tuple[str, datetime]], runs: tuple[str, ...]
    ) -> None:
        """A committed pass's files: noted first, so a daemon killed meanwhile, or a folder
        that cannot move now, is dealt with by a later pass (``retention.clean_up_left``)."""
        try:
            note = retention.note_cleanup(self.home, pass_id, workflows, runs)
        except OSError as exc:  # (a full disk: dealt with now all the same, not noted)
            log.error("retention: cannot note pass %s's files (%s)", pass_id, exc)
            retention.remove_trace_files(self.home, workflows)
            retention.archive_artifacts(self.home, [w for w, _ in workflows], runs)
            return
        retention.clean_up(self.home, note)

    async def _retain(self) -> RetentionReport:
        if self._retain_days <= 0:
            return RetentionReport(None, {})
        async with self._retention:
            await self._readable()
            await trio.to_thread.run_sync(retention.clean_up_left, self.home)
            cutoff = datetime.now(UTC) - timedelta(days=self._retain_days)
            pass_id = f"{cutoff:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
            staged = await trio.to_thread.run_sync(
                self._run_read,
                lambda cursor: retention.stage(cursor, self.home, cutoff, pass_id),
                limiter=self._readers,
            )
            if not any(staged.values()):
                await trio.to_thread.run_sync(retention.discard, self.home, pass_id)
                return RetentionReport(cutoff, {})
            reply, pending = reply_pair()
            self._pending.append(Prune(cutoff, pass_id, staged, reply))
            self._wake_committer()
            pruned = await pending.wait()
            if pruned is None:
                log.warning("retention: rows changed while being archived; next pass retries")
                return RetentionReport(cutoff, {})
            workflows, runs = pruned
            await trio.to_thread.run_sync(self._clean_up_after, pass_id, workflows, runs)
            await self._tell_pruned(Pruned(tuple(w for w, _ in workflows), runs))
            return RetentionReport(cutoff, staged)

    async def _tell_pruned(self, pruned: Pruned) -> None:
        """The engine and the scheduler forget what they held of the pruned rows."""
        for mailbox in self._pruned_to:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await mailbox.send(pruned)  # (stopping: nothing to forget)

    async def _prune(self, prune: Prune) -> None:
        try:
            await self._readable()  # every row journaled before it is in DuckDB
            async with self._database:
                con = self._con  # taken under the lock: a reopen (_drop_cache) replaces it
                assert con is not None
                pruned = await trio.to_thread.run_sync(
                    retention.prune, con, self.home, prune.cutoff, prune.pass_id, prune.staged,
                    self._archive_gate,
                )  # fmt: skip
        except Exception as exc:
            log.exception("retention: the delete failed (the rows stay)")
            await trio.to_thread.run_sync(retention.discard, self.home, prune.pass_id)
            prune.reply.fail(_client_error(exc, "could not prune archived rows"))
        else:
            prune.reply.send(pruned)

    async def _query(self, message: StoreQuery) -> None:
        try:
            if isinstance(message, ExportParquet) and lands_inside(
                Path(message.directory), self.home
            ):
                raise InvalidArgument(
                    f"directory: {message.directory[:100]!r} is inside the daemon's home "
                    f"({self.home}); export somewhere else"
                )
            await self._readable()
            result = await in_thread(self._run_query, message, limiter=self._readers)
        except duckdb.OutOfMemoryException as exc:  # load, not a fault: one line, no traceback
            log.error("query %s ran out of [store] memory_limit: %s", type(message).__name__,
                      sandbox.cut(str(exc)))  # fmt: skip
            message.reply.fail(ResourceExhausted(
                f"the store ran out of its memory limit answering {type(message).__name__} "
                "(queries at once, or large values); try again"
            ))  # fmt: skip
        except Exception as exc:
            self._found_invalid(exc)
            if isinstance(exc, duckdb.Error):
                log.exception("query %s failed", type(message).__name__)
            message.reply.fail(_client_error(exc, f"could not answer {type(message).__name__}"))
        else:
            message.reply.send(result)
        finally:
            self._reads += 1

    async def _user_query(self, message: RunUserQuery) -> None:
        """Run an analyst's SQL on a cursor of its own; a trio timer interrupts it at the limit,
        which counts from the query's arrival (its wait for a turn included)."""
        deadline = trio.current_time() + message.timeout
        try:
            await self._readable()
            acquired = False
            with trio.move_on_at(deadline):
                await self._user_readers.acquire()
                acquired = True
            if not acquired:
                raise DeadlineExceeded(
                    f"the query waited out its time limit ({message.timeout:g} s) for one of "
                    f"the {USER_READERS} analysts' cursors"
                )
            try:
                result = await self._user_query_now(message, deadline)
            finally:
                self._user_readers.release()
        except Exception as exc:
            if isinstance(exc, duckdb.Error):
                log.exception("an analytics query failed")
            message.reply.fail(_client_error(exc, "could not answer the query"))
        else:
            message.reply.send(result)
        finally:
            self._reads += 1

    async def _user_query_now(self, message: RunUserQuery, deadline: float) -> Any:
        self._require_open()
        cursor, thread = self._user_cursors.pop(), self._user_threads.pop()
        expired = gone = False
        timer = trio.CancelScope()
        interrupter = _Interrupter(cursor)

        async def expire() -> None:
            nonlocal expired, gone
            with timer:
                # Its deadline, or before: its asker gone (a Ctrl-C'd `foundry sql` kept an
                # analysts' cursor busy to the deadline), or the store stopping (a stop waited
                # for the query, 40 s past its grace).
                with trio.move_on_at(deadline) as waiting:
                    async with trio.open_nursery() as first:
                        first.start_soon(cancel_when, message.reply.wait_asker_gone,
                                         first.cancel_scope)  # fmt: skip
                        first.start_soon(cancel_when, self._closing.wait, first.cancel_scope)
                expired = waiting.cancelled_caught
                gone = not expired and not self._closing.is_set()
                # An interrupt that comes between the sandbox's statements (its checks,
                # DESCRIBE, the query) finds nothing running and is lost: the next one then ran
                # with no limit at all (139 s of a 1 ms one). Again until the job has ended.
                while True:
                    interrupter.interrupt()
                    await trio.sleep(INTERRUPT_AGAIN)

        assert self._queries is not None
        self._queries.start_soon(expire)
        try:
            return await thread.run(
                lambda: self._run_user_query(cursor, message, interrupter),
                waited=False,
                hurry_after=None,  # idle priority: the daemon's own work comes first
            )
        except duckdb.InterruptException:
            if gone:  # routine (README, "The daemon log"): no one hears this answer
                raise Unavailable("the caller went away: the query was cut short") from None
            if self._closing.is_set() and not expired:
                raise Unavailable("the daemon is stopping: the query was cut short") from None
            if not expired:
                raise
            raise DeadlineExceeded(
                f"the query ran out of its time limit ({message.timeout:g} s)"
            ) from None
        finally:
            timer.cancel()
            self._user_threads.append(thread)

    # --- on the worker thread --------------------------------------------------------------

    def _open(self) -> list[str]:
        self.home.mkdir(parents=True, exist_ok=True)
        map_large_blocks_apart()
        self._con = self._connect()
        self._upgrade_schema()
        for statement in ddl():
            self._con.execute(statement)
        retention.settle_staged(self._con, self.home)  # a pass a stopped daemon left half-done
        refresh_archive_views(self._con, self.home)  # after: over the files it published
        sandbox.lock_instance(self._con, self.home, readable=(self.home / SPOOL,))  # no SET after
        # Before reading the journal: the writer process of a daemon that died has ended.
        self._writer_lock = hold_writer_lock(self._journal.directory)
        try:
            self._replay_journal()
            self._open_cursors()
            return recover_unfinished(self._con, self._write_recovered)
        except BaseException:
            self._unlock_writer()  # a store that did not start holds nothing
            raise

    def _open_within_memory(self) -> list[str]:
        """:meth:`_open`; if DuckDB cannot within ``[store] memory_limit`` (a scan or a
        checkpoint holds a row group's large values at once: ~250 payloads of 1 MB under
        256 MB), again without the limit — the database stays usable, and the log says so."""
        try:
            return self._open()
        except (duckdb.OutOfMemoryException, duckdb.FatalException) as exc:
            if not self._memory_limit or _NO_SPACE in str(exc):  # (a full disk: not memory)
                raise
            log.error(
                "DuckDB could not open the database within [store] memory_limit = %s (%s): "
                "opening it without the limit (DuckDB's own, 80%% of RAM); raise the setting "
                "to keep one", self._memory_limit, sandbox.cut(str(exc)),
            )  # fmt: skip
            self._memory_limit = None
            self._drop_handles()
            return self._open()

    def _unlock_writer(self) -> None:
        if self._writer_lock >= 0:
            os.close(self._writer_lock)  # unlocks it (the writer process has ended)
            self._writer_lock = -1

    def _connect(self) -> duckdb.DuckDBPyConnection:
        con = duckdb.connect(str(self.path))
        try:
            return self._set_up(con)
        except BaseException:
            # DuckDB keeps one instance a file while any connection to it is open: a connection
            # kept after its CHECKPOINT failed on a full disk (which invalidated the instance)
            # made every reopen fail ("database has been invalidated") once space was back
            with contextlib.suppress(duckdb.Error):
                con.close()
            raise

    def _set_up(self, con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
        if self._database_file is None:  # the first open's: a reopen must find that file again
            self._database_file = _identity(self.path)
        if _locked(con):  # a connection of another kept the instance open: its settings stay
            return con
        # DuckDB compresses long strings (an average of 4 KiB up: payloads, outputs) with ZSTD a
        # whole vector at a time, so reading one row decompressed up to 2,048 rows' payloads:
        # after a restart, GetRun of a one-step run beside 20 runs of MB-sized outputs took
        # 0.5 s and ~800 MB outside [store] memory_limit, and with incompressible outputs every
        # run read failed. Stored as they are, long strings are read one row at a time (1 ms).
        # Segments written before stay as they were.
        con.execute(f"SET GLOBAL disabled_compression_methods = '{DISABLED_COMPRESSION}'")
        # The write-ahead log DuckDB replayed is checkpointed before the memory limit is set,
        # within DuckDB's own (80% of RAM): a checkpoint holds a row group's large values at
        # once, and under [store] memory_limit it could fail for good — the database did not
        # open again until the limit was raised by hand (~400 payloads of 1 MB did it).
        con.execute("CHECKPOINT")
        # Settings are instance-wide, and locked later: every cursor inherits the global zone.
        con.execute("SET GLOBAL TimeZone='UTC'")
        if self._memory_limit:  # validated by the config: a size such as 256MB
            con.execute(f"SET GLOBAL memory_limit = '{self._memory_limit}'")
        # DuckDB's allocator (its own jemalloc) keeps the pages it freed until it allocates
        # again; its background thread hands them back to the OS within seconds. Without it a
        # ~3.5 MB request's commit left ~55 MB resident for good.
        con.execute("SET GLOBAL allocator_background_threads = true")
        return con

    def _open_cursors(self) -> None:
        assert self._con is not None
        for _ in range(READERS):
            self._cursors.append(self._con.cursor())  # a connection of its own, same instance
        for _ in range(USER_READERS):
            self._user_cursors.append(self._con.cursor())

    def _reopen(self) -> None:
        """Checkpoint, close and reopen the database (no query runs): DuckDB frees its buffers,
        the blocks it kept cached included, when its last connection closes."""
        assert self._con is not None
        if self._database_moved():  # reopened, it would be another file, or a new empty one
            self._cache_full = False
            return
        try:
            self._con.execute("CHECKPOINT")
        except duckdb.FatalException as exc:  # the materializer reopens it (the caller wakes it)
            self._invalid = self._invalid or exc
            return
        except duckdb.Error as exc:  # a transaction in the way: the next batch tries again
            log.info("no checkpoint to reopen the database: %s", sandbox.cut(str(exc)))
            return
        self._cache_full = False
        for cursor in [*self._cursors, *self._user_cursors]:
            cursor.close()
        self._cursors.clear()
        self._user_cursors.clear()
        self._appenders.clear()  # each holds the connection open
        self._con.close()
        self._con = None
        self._reconnect()

    def _reconnect(self) -> None:
        """Open the database again after :meth:`_reopen` closed it, locked as before. DuckDB may
        refuse (another process opened the file meanwhile, the disk is full): the caller says
        so and retries; ``_con`` stays None until then."""
        if self._hold_for_test is not None:
            self._hold_for_test("reconnect")
        if self._database_moved():
            raise Unavailable(f"{self.path} was deleted or replaced: not opened again")
        con = self._connect()
        try:
            if not _locked(con):
                sandbox.lock_instance(con, self.home, readable=(self.home / SPOOL,))
        except BaseException:
            con.close()
            raise
        self._con = con
        self._open_cursors()

    def _upgrade_schema(self) -> None:
        """Apply pending migrations (analytics/migrations.py); refuse a newer database."""
        assert self._con is not None
        try:
            before, after = migrate(self._con, self.home, source=str(self.path))
        except SchemaTooNew as exc:
            self._con.close()
            self._con = None
            raise ConfigError(str(exc)) from None
        if before and before != after:
            log.warning("upgraded %s from schema version %d to %d", self.path, before, after)

    def _close(self) -> None:
        self._writer.stop()
        for thread in self._user_threads:
            thread.stop()
        try:
            self._release_journal(keep_current=False)  # all of it, if applied
        except OSError:  # the segments stay: the next start deletes what DuckDB has
            log.exception("could not delete the journal's applied segments")
        self._journal.close()
        self._unlock_writer()
        for cursor in [*self._cursors, *self._user_cursors]:
            cursor.close()
        self._cursors.clear()
        self._user_cursors.clear()
        if self._con is not None:
            self._appenders.clear()
            try:
                self._con.execute("CHECKPOINT")
            except duckdb.Error as exc:  # invalidated: its log is checkpointed at the next start
                log.error("no checkpoint at the stop: %s", sandbox.cut(str(exc)))
            self._con.close()
            self._con = None

    def _run_query(self, message: StoreQuery) -> Any:
        # The limiter lets at most READERS threads here at once: there is always an idle cursor.
        self._require_open()
        cursor = self._cursors.pop()
        healthy = False
        try:
            if isinstance(message, ExportParquet):  # it reads the archive: as a user's query,
                with self._archive_gate:  # its snapshot is not one between a retention pass's
                    cursor.execute("BEGIN TRANSACTION")  # delete and its files' publishing
                    cursor.execute("SELECT count(*) FROM retention_passes").fetchall()
            else:
                cursor.execute("BEGIN TRANSACTION")  # one snapshot for the query's statements
            if self._hold_for_test is not None:
                self._hold_for_test("read")
            result = QUERIES[type(message)](cursor, message)
            cursor.execute("ROLLBACK")
            healthy = True
            return result
        finally:
            if healthy:
                self._cursors.append(cursor)
            else:  # a cursor a failed query left in a transaction is replaced, not reused
                cursor.close()
                assert self._con is not None
                self._cursors.append(self._con.cursor())

    def _run_read(self, read: Callable[[duckdb.DuckDBPyConnection], Any]) -> Any:
        """``read(cursor)`` on an idle read cursor in a transaction of its own (a snapshot)."""
        self._require_open()
        cursor = self._cursors.pop()
        healthy = False
        try:
            cursor.execute("BEGIN TRANSACTION")
            result = read(cursor)
            cursor.execute("ROLLBACK")
            healthy = True
            return result
        finally:
            if healthy:
                self._cursors.append(cursor)
            else:
                cursor.close()
                assert self._con is not None
                self._cursors.append(self._con.cursor())

    def _run_user_query(
        self, cursor: duckdb.DuckDBPyConnection, message: RunUserQuery, interrupter: _Interrupter
    ) -> Any:
        healthy = False
        try:
            result = sandbox.run_query(
                cursor, message.sql, message.params, message.max_rows, message.max_bytes,
                self._archive_gate, interrupter.interrupted,
            )  # fmt: skip
            healthy = True
            if message.encode_rows is not None:
                return replace(result, rows_wire=message.encode_rows(result.rows))
            return result
        except sandbox.QueryTooLarge as exc:
            healthy = True  # the sandbox rolled its transaction back
            raise ResourceExhausted(str(exc)) from None
        except (sandbox.QueryRefused, sandbox.QueryFailed) as exc:
            healthy = True  # the sandbox rolled its transaction back
            raise InvalidArgument(str(exc)) from None
        finally:
            interrupter.finish()  # before the cursor is closed, or is the next query's
            if healthy:
                self._user_cursors.append(cursor)
            else:  # interrupted or broken: a fresh cursor, never one left mid-transaction
                cursor.close()
                assert self._con is not None
                self._user_cursors.append(self._con.cursor())

    # --- the journal and the materialized view ---------------------------------------------

    def _journal_write(self, groups: Sequence[tuple[Any, ...]]) -> Committed:
        """Journal the records of a group (durable on return): (its seq, its journaled rows,
        its rows only DuckDB gets, the framed trace files of the chains that finished)."""
        if self._hold_for_test is not None:
            self._hold_for_test("commit")
        records = [r for records in groups for r in records]
        tables, derived, traces, payload = self._encoded(records)
        if not tables:  # an Append may carry only answers, or only rows DuckDB alone gets
            return self._journal.last_seq, tables, derived, traces
        return self._journal.append(payload), tables, derived, traces

    def _encoded(
        self, records: Sequence[Any]
    ) -> tuple[list[TableRows], list[TableRows], bytes, bytes]:
        """A group's rows to journal, its rows only DuckDB gets (``TableWriter.journaled``), the
        framed trace files of its finished chains, and the journal record's payload (b""
        without rows); raises what DuckDB would refuse of the journaled ones, before anything
        is told (DuckDB refusing the others loses nothing: see ``_apply_derived``)."""
        tables, derived = journal_rows(records)
        traces = self._traces(records)
        payload = encode(tables) if tables else b""
        check_encoded(tables, payload)
        return tables, derived, traces, payload

    def _traces(self, records: Sequence[Any]) -> bytes:
        return b"".join(
            frame(trace_path(self.home, r), r.trace)
            for r in records
            if isinstance(r, FinishedChain) and r.trace is not None  # none if no block sinks it
        )

    def _replay_journal(self) -> None:
        """Apply the journal records DuckDB lacks (a daemon killed before materializing)."""
        assert self._con is not None
        row = self._con.execute("SELECT max(seq) FROM journal_applied").fetchone()
        if row is None or row[0] is None:
            self._con.execute("INSERT INTO journal_applied VALUES (0)")
        self._db_applied = int(row[0]) if row and row[0] is not None else 0
        recovered = self._journal.recover(self._db_applied)
        for start in range(0, len(recovered), REPLAY_BATCH):
            chunk = recovered[start : start + REPLAY_BATCH]
            self._apply_or_set_aside([(r.seq, list(r.tables)) for r in chunk])
        if recovered:
            log.info("replayed %d journal records into the database", len(recovered))
        # A start begins a new segment when DuckDB has the journal in full (the next crash's
        # recovery then reads only what this run of the daemon wrote).
        self._journal.release(self._db_applied, keep_current=False)
        self._applied = self._journaled = self._journal.last_seq

    def _checkpoint(self) -> None:
        if self._con is None:  # closed by a failed reopen: nothing to checkpoint
            return
        try:
            self._con.execute("CHECKPOINT")
        except duckdb.FatalException as exc:  # the materializer reopens it (the caller wakes it)
            self._invalid = self._invalid or exc
        except duckdb.Error as exc:  # a transaction in the way: the automatic one comes later
            log.info("no checkpoint after a large write: %s", sandbox.cut(str(exc)))

    def _apply_logged(
        self, batch: list[tuple[int, list[TableRows]]], derived: Sequence[TableRows] = ()
    ) -> None:
        if self._hold_for_test is not None:
            self._hold_for_test("materialize")
        if derived:
            try:
                self._apply(batch, derived)  # one transaction, as ever
            except duckdb.FatalException:
                raise  # the database is gone: the materializer opens it again
            except Exception:
                self._apply_or_set_aside(batch)  # then each on its own: a refusal stays local
                self._apply_derived(derived)
        else:
            self._apply_or_set_aside(batch)
        self._release_journal()
        if self._cache_bytes and not self._cache_full:
            self._cache_full = self._buffer_bytes() > self._cache_bytes

    def _release_journal(self, *, keep_current: bool = True) -> None:
        """Delete the journal's segments DuckDB has — unless its file was deleted or replaced
        under the daemon: what it has now no start reads, so the journal keeps every record."""
        if not self._database_moved():
            self._journal.release(self._db_applied, keep_current=keep_current)

    def _database_moved(self) -> bool:
        """Whether the database file the store opened is no longer at its path (deleted, or
        another file put there); the first time, says so in the log."""
        if _identity(self.path) == self._database_file:
            return False
        if not self._told_replaced:
            self._told_replaced = True
            log.error(
                "%s was deleted or replaced under the running daemon: the journal keeps every "
                "record from now on. Stop the daemon and put a copy of the file back: the next "
                "start applies from the journal what the copy lacks (or refuses, naming the "
                "records neither has)", self.path,
            )  # fmt: skip
        return True

    def _buffer_bytes(self) -> int:
        """DuckDB's buffer memory: cached blocks, rows not yet checkpointed, running queries."""
        assert self._con is not None
        row = self._con.execute("SELECT sum(memory_usage_bytes) FROM duckdb_memory()").fetchone()
        return int(row[0] or 0) if row else 0

    def _apply_or_set_aside(self, batch: Sequence[tuple[int, Sequence[TableRows]]]) -> None:
        """Apply ``batch``; if DuckDB refuses it, apply its records one by one, and set aside
        (``journal/rejected/``, logged) a record whose own rows it refuses, so one bad record
        cannot stop the rest. Other errors (disk full) propagate: the caller retries."""
        try:
            self._apply(batch)
        except duckdb.FatalException:
            raise  # the database is gone, not a record's rows: the materializer reopens it
        except Exception as exc:
            if len(batch) > 1:
                for item in batch:
                    self._apply_or_set_aside([item])
                return
            if not isinstance(exc, _REFUSED_ROWS):
                raise
            self._set_aside_refused(*batch[0], exc)

    def _set_aside_refused(self, seq: int, tables: Sequence[TableRows], exc: Exception) -> None:
        """A record DuckDB refuses: only its refused rows are set aside, the rest applied. A
        record holds its whole group commit — one run's bad row took other runs' rows with it
        (a run that had finished came back half done, its steps run again). The refused rows
        are found by trying halves of each table's rows, each try rolled back (a bad row among
        20,000 is ~30 tries, not 20,000 commits); then the rest and the record's mark commit in
        one transaction, so a pass cut short (a kill) leaves nothing to apply twice."""
        kept: list[TableRows] = []
        refused: list[TableRows] = []
        # as a batch is applied: an old journal's tables renamed, a replaced table's last rows
        for table, rows in merge([tables]):
            good, bad, exc = self._sorted_rows(table, list(rows), exc)
            if good:
                kept.append((table, good))
            if bad:
                refused.append((table, bad))
        if refused:
            self._set_aside(seq, refused, exc)  # the file first: a kill then redoes this pass
            try:
                self._transaction(kept, applied=seq)
                return
            except _REFUSED_ROWS as whole:  # the rows each taken, but not together
                exc = whole
        self._set_aside(seq, tables, exc)  # the record as a whole, as it is refused
        self._transaction([], applied=seq)

    def _sorted_rows(
        self, table: str, rows: list[Any], exc: Exception
    ) -> tuple[list[Any], list[Any], Exception]:
        """(rows DuckDB takes, rows it refuses, the last refusal) of one table's rows."""
        refusal = self._tried(table, rows)
        if refusal is None:
            return rows, [], exc
        if len(rows) == 1:
            return [], rows, refusal
        middle = len(rows) // 2
        good_a, bad_a, exc = self._sorted_rows(table, rows[:middle], refusal)
        good_b, bad_b, exc = self._sorted_rows(table, rows[middle:], exc)
        return good_a + good_b, bad_a + bad_b, exc

    def _tried(self, table: str, rows: list[Any]) -> Exception | None:
        """Whether DuckDB takes ``rows`` (None) or refuses them (its error), rolled back."""
        con = self._con
        assert con is not None
        con.execute("BEGIN TRANSACTION")
        try:
            apply(con, self._appender, [(table, rows)])
        except _REFUSED_ROWS as refusal:
            return refusal
        finally:
            for appender in self._appenders.values():
                appender.clear()
            self._appenders.clear()
            con.execute("ROLLBACK")
        return None

    def _apply(
        self,
        batch: Sequence[tuple[int, Sequence[TableRows]]],
        derived: Sequence[TableRows] = (),
    ) -> None:
        """One transaction: the rows of the records DuckDB lacks, and the new high-water mark;
        then ``derived`` (rows after their facts, which are in ``batch`` or in DuckDB)."""
        batch = [item for item in batch if item[0] > self._db_applied]
        if batch or derived:
            tables = merge([*(tables for _, tables in batch), derived])
            self._transaction(tables, applied=batch[-1][0] if batch else None)

    def _apply_derived(self, derived: Sequence[TableRows]) -> None:
        """Rows only DuckDB gets, each group's on its own, and a refused group's row by row: a
        row DuckDB refuses is logged and dropped — the next start makes it again from its
        journaled facts (and logs again if it is refused again)."""
        for table, rows in derived:
            try:
                self._transaction([(table, rows)])
                continue
            except _REFUSED_ROWS:
                pass
            for row in rows:
                try:
                    self._transaction([(table, [row])])
                except _REFUSED_ROWS as exc:
                    log.error("the database refused a row of %s (%s); the next start makes it "
                              "again", table, exc)  # fmt: skip
                    _delete_spooled([(table, [row])])  # a file of rows: the start makes them

    def _set_aside(self, seq: int, tables: Sequence[TableRows], exc: Exception) -> None:
        rejected = self.home / "journal" / "rejected"
        rejected.mkdir(mode=0o700, exist_ok=True)
        path = rejected / f"{seq:020d}.rows"
        path.write_bytes(encode(tables))
        count = sum(len(rows) for _, rows in tables)
        log.error("journal record %d: the database refused %d of its rows (%s); kept in %s", seq,
                  count, exc, path)  # fmt: skip

    def _transaction(self, tables: Sequence[TableRows], *, applied: int | None = None) -> None:
        con = self._con
        assert con is not None
        if self._aborted_on is con:
            con.execute("ROLLBACK")
            self._aborted_on = None
        con.execute("BEGIN TRANSACTION")
        try:
            apply(con, self._appender, tables)
            if applied is not None:
                con.execute("UPDATE journal_applied SET seq = ?", [applied])
            con.execute("COMMIT")
            _delete_spooled(tables)
        except BaseException:
            for appender in self._appenders.values():
                appender.clear()  # rows a failed append_rows kept must not reach the next commit
            self._appenders.clear()  # and the next try gets fresh ones (a table may have moved)
            try:
                roll_back(con)
            except duckdb.Error:
                # Out of memory, as the commit was (an analyst's query took DuckDB's memory
                # limit): the connection stayed in the failed transaction, and every BEGIN
                # after it failed ("Current transaction is aborted") until the tenth retry
                # reopened the database, ~10 s on. The next try rolls it back first.
                self._aborted_on = con
            raise
        if applied is not None:
            self._db_applied = applied

    def _write_recovered(self, records: Sequence[Any]) -> None:
        FileWriter().write_all(self.write_records(records))

    def write_records(self, records: Sequence[Any]) -> bytes:
        """Commit ``records`` straight to DuckDB in one transaction (recovery at start, before
        the journal takes writes); returns the framed trace files of the chains that finished."""
        tables = table_rows(records)
        if tables:
            self._transaction(tables)
        return self._traces(records)

    def _appender(self, writer: TableWriter) -> Any:
        assert self._con is not None
        if writer.table not in self._appenders:
            self._appenders[writer.table] = writer.appender(self._con)
        return self._appenders[writer.table]


def roll_back(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("ROLLBACK")


# Errors that mean DuckDB refuses a record's rows themselves (not its disk or memory).
_REFUSED_ROWS = (
    duckdb.ConstraintException,
    duckdb.ConversionException,
    duckdb.InvalidInputException,
    duckdb.TypeMismatchException,
    TypeError,
    ValueError,
)


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file at ``path``, None when there is none."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino


class _Interrupter:
    """Interrupts a query's cursor from the trio thread until its job says it is done, never
    after: the job then closes the cursor (an interrupt of a closed one raised in the store's
    nursery and took the store down) or hands it to the next query."""

    def __init__(self, cursor: duckdb.DuckDBPyConnection) -> None:
        self._cursor, self._lock, self._done = cursor, threading.Lock(), False
        self._interrupted = False

    def interrupt(self) -> None:
        with self._lock:
            self._interrupted = True
            if not self._done:
                with contextlib.suppress(duckdb.Error):
                    self._cursor.interrupt()

    def interrupted(self) -> bool:
        """Whether the query was interrupted (the sandbox stops converting its rows)."""
        return self._interrupted

    def finish(self) -> None:
        with self._lock:
            self._done = True


_NO_SPACE = os.strerror(28)  # ENOSPC's words, as DuckDB's messages hold them


def _unopenable(database: Path, exc: OSError | duckdb.IOException) -> str:
    """One line for a home the store cannot open (a folder where a file belongs, a file where a
    folder does, a database file DuckDB cannot read): it printed a 100-line traceback."""
    if isinstance(exc, OSError):
        where = exc.filename or database.parent
        return f"{where}: the store cannot use it: {exc.strerror or exc}; move it aside"
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return (f"{database}: DuckDB cannot open it ({sandbox.cut(reason)}); if the file is "
            "damaged, restore it, or move it aside")  # fmt: skip


def _delete_spooled(tables: Sequence[TableRows]) -> None:
    """Delete the files of spooled rows (``tables.spooled_paths``) DuckDB is done with."""
    for path in spooled_paths(tables):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _locked(con: duckdb.DuckDBPyConnection) -> bool:
    """The instance's settings are locked (the sandbox's lock_instance ran on it)."""
    row = con.execute("SELECT current_setting('lock_configuration')").fetchone()
    return bool(row and row[0])


def _awaited(write: Write) -> bool:
    """Someone waits for this write's commit."""
    if isinstance(write, Append):
        return write.ack is not None or bool(write.answers)
    return True  # a Barrier or a retention pass


def _trace_ends(appends: Sequence[Append]) -> tuple[float, ...]:
    """The end of each chain whose trace file a commit frames, in ``_traces``'s order."""
    return tuple(
        r.completed_at.timestamp()
        for a in appends
        for r in a.records
        if isinstance(r, FinishedChain) and r.trace is not None
    )


def _client_error(exc: Exception, what: str) -> Exception:
    """What the asker gets for a failure: a database error becomes Unavailable with a short
    message (the traceback is in the log, once); anything else goes as it is."""
    if isinstance(exc, OSError) and exc.errno and exc.strerror == os.strerror(exc.errno):
        # the system's words alone ("No space left on device"): no path of the daemon's
        error = Unavailable(f"the store {what}: {exc.strerror}; the daemon log has the details")
        error.__cause__ = exc
        return error
    if isinstance(exc, duckdb.Error | Unstorable | OSError):
        error = Unavailable(f"the store {what}; the daemon log has the details")
        error.__cause__ = exc
        return error
    return exc


def _first_error(exc: BaseException) -> BaseException:
    """The error that started it: DuckDB's "cannot rollback" replaced the write that failed (a
    full disk) as the exception raised."""
    for _ in range(20):
        if exc.__context__ is None:
            break
        exc = exc.__context__
    return exc


class _FailureLog:
    """One traceback for a kind of commit failure (its type and errno) in ``QUIET_SECONDS``,
    then a line with how many more there were: a full disk logged a 25-line traceback for every
    write that failed (1,073 in a minute), each append of a failed group again."""

    QUIET_SECONDS = 60.0

    def __init__(self) -> None:
        self._last: dict[tuple[type, int | None, str], tuple[float, int]] = {}
        self.unreported = 0  # failures logged by no line of their own yet

    def failed(self, exc: BaseException) -> None:
        key = (type(exc), getattr(exc, "errno", None), str(exc)[:200])
        now = time.monotonic()
        since, more = self._last.get(key, (-math.inf, 0))
        if now - since < self.QUIET_SECONDS:
            self._last[key] = (since, more + 1)
            self.unreported += 1
            return
        self._last[key] = (now, 0)
        self.unreported -= more
        if more:
            log.error("commit of an append failed (%d more like it in the last %.0f s): %s",
                      more, now - since, exc)  # fmt: skip
        log.error("commit of an append failed", exc_info=exc)

    def succeeded(self) -> None:
        """A commit went through: say how many failed since the last line (if any did)."""
        if self.unreported:
            log.error("%d more commit(s) of an append failed before commits worked again",
                      self.unreported)  # fmt: skip
        self._last.clear()
        self.unreported = 0


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim, libc.mallopt  # noqa: B018 (musl has neither)
    except (OSError, AttributeError):
        return None
    return libc


_GLIBC = _glibc()
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
MMAP_THRESHOLD = 1 << 20


def map_large_blocks_apart() -> None:
    """Give every C heap block of ``MMAP_THRESHOLD`` bytes or more a mapping of its own, unmapped
    when freed (process-wide). glibc's threshold otherwise rises to the largest block freed so
    far (up to 32 MiB): after one large request, blocks of its size come from the threads'
    arenas and stay resident — ~40 MB after a 3.5 MB payload, measured, ``malloc_trim`` or not."""
    if _GLIBC is not None:
        _GLIBC.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def release_free_heap() -> None:
    """Hand the C heap's free pages back to the OS (glibc's ``malloc_trim``; nothing elsewhere).
    glibc keeps freed memory for reuse, and pages freed among live small objects stay resident:
    after one ~3.5 MB request (its payload copied through JSON, trace rows, the commit and the
    trace file's frame) the daemon kept ~25 MB it no longer used. Releases the GIL (ctypes)."""
    if _GLIBC is not None:
        _GLIBC.malloc_trim(0)
