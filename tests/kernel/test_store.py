"""The store actor on a real DuckDB file: group commit, durable before acks and Watch, recovery."""

import dataclasses
import functools
import json
import os
import shutil
import threading
import time
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import duckdb
import pytest
import trio
import trio.testing
from foundry.analytics.migrations import migrate
from foundry.kernel.actors.mailbox import ask, reply_pair
from foundry.kernel.actors.store import actor as store_actor
from foundry.kernel.actors.store.actor import READERS, Store
from foundry.kernel.actors.store.attestations import load_unattested
from foundry.kernel.actors.store.journal import JournalCorrupt, decode, pending_records
from foundry.kernel.actors.store.looks import LOOK_BYTES, MAX_SPAN, MIN_SPAN, next_span
from foundry.kernel.actors.store.messages import (
    Append,
    Barrier,
    CountRows,
    GetStats,
    LoadAttestations,
    LoadIdempotencyKeys,
    LoadRecentEvents,
    LoadRun,
    LoadRunEvents,
    LoadRunSummaries,
    LoadTrace,
    LoadUnattested,
    LoadUnfinishedRuns,
    LoadWorkflow,
    RowCounts,
)
from foundry.kernel.actors.store.reads import RESTARTED
from foundry.kernel.actors.store.tables import record_is_large as tables_record_is_large
from foundry.kernel.actors.tap.actor import TapBroker
from foundry.kernel.actors.tap.messages import Publish, Subscribe
from foundry.kernel.blocks.api import block
from foundry.kernel.config import EngineConfig
from foundry.kernel.core.attest_records import (
    DerivedAttestationRows,
    SpooledAttestationRows,
    run_attestation_id,
)
from foundry.kernel.core.governance import EvalScenarioRecord, GateDecisionRecord
from foundry.kernel.core.ids import compact_json, event_id
from foundry.kernel.core.records import Event, ExecutionRecord, FinishedChain, trace_rows
from foundry.kernel.core.run_control import RunListQuery
from foundry.kernel.core.runs import RunEventRecord, RunSubmission
from foundry.kernel.core.throttle import Throttle
from foundry.kernel.core.trace_format import render
from foundry.kernel.errors import InvalidArgument, ResourceExhausted, Unavailable

from .harness import GUARD_SECONDS, run_sql, running_kernel

T0 = datetime(2026, 3, 4, 5, 6, 7, 890000, tzinfo=UTC)


def make_event(n, *, parent=None, event_type="tick", project="p", throttle=Throttle.FULL):
    at = T0 + timedelta(milliseconds=n)
    payload = {"n": n}
    eid = event_id(event_type, project, at, payload)
    return Event(
        id=eid,
        event_type=event_type,
        project=project,
        occurred_at=at,
        recorded_at=at,
        throttle=throttle,
        workflow_id=parent.workflow_id if parent else eid,
        payload=payload,
        payload_json=compact_json(payload),
        depth=parent.depth + 1 if parent else 0,
        parent_id=parent.id if parent else "",
        emitted_by="Emitter" if parent else "",
    )


def make_execution(trigger, emitted=()):
    return ExecutionRecord(
        workflow_id=trigger.workflow_id,
        block_name="Emitter",
        trigger=trigger,
        state="completed",
        success=True,
        summary="emitted",
        emitted=tuple(emitted),
        started_at=trigger.occurred_at,
        completed_at=trigger.occurred_at + timedelta(milliseconds=1),
        duration_ms=1,
        raw_output="out",
        exit_code=0,
        audit_artifacts=(),
        attempts=1,
        throttled=False,
    )


def count_events(con):
    return con.execute("SELECT count(*) FROM events").fetchone()[0]


def committed_events(home):
    """Events durable on disk, read without the store: the journal's records, then the rows
    DuckDB has and the mark of the last record it applied (a record applied between the two
    reads is in DuckDB's count, not the journal's)."""
    journaled = pending_records(home / "journal", 0)
    con = duckdb.connect(str(home / "foundry.duckdb"))
    try:
        (applied,) = con.execute("SELECT seq FROM journal_applied").fetchone()
        in_database = count_events(con)
    finally:
        con.close()
    in_journal = sum(
        len(rows)
        for record in journaled
        if record.seq > applied
        for table, rows in record.tables
        if table == "events"
    )
    return in_database + in_journal


def post_now(store_send, records, publish=()):
    """Put an Append in the mailbox without yielding, so many can pile up before the store runs."""
    reply, pending = reply_pair()
    store_send.send_nowait(Append(tuple(records), tuple(publish), reply))
    return pending


async def test_appends_posted_back_to_back_commit_as_one_group(tmp_path):
    tap_send, tap_receive = trio.open_memory_channel(100)
    store_send, store_receive = trio.open_memory_channel(1_000)
    events = [make_event(n) for n in range(300)]

    with trio.fail_after(GUARD_SECONDS):
        async with trio.open_nursery() as nursery:
            await nursery.start(Store(tmp_path, store_receive, tap_send).run)
            pendings = [post_now(store_send, [e], [e]) for e in events]

            await pendings[0].wait()
            # the first ack was answered: everything in its group is already committed
            assert committed_events(tmp_path) == 300
            for pending in pendings:
                assert await pending.wait() is None
            # one group commit, published once, in order, after the commit
            publish = await tap_receive.receive()
            assert publish == Publish(tuple(events))
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.WouldBlock):
                tap_receive.receive_nowait()
            store_send.close()

    con = duckdb.connect(str(tmp_path / "foundry.duckdb"))
    try:
        rows = con.execute("SELECT event_id, payload FROM events ORDER BY occurred_at").fetchall()
    finally:
        con.close()
    assert [r[0] for r in rows] == [e.id for e in events]
    assert json.loads(rows[5][1]) == {"n": 5}


async def test_a_group_is_at_most_max_batch_plus_one(tmp_path):
    tap_send, tap_receive = trio.open_memory_channel(100)
    store_send, store_receive = trio.open_memory_channel(100)
    events = [make_event(n) for n in range(7)]

    with trio.fail_after(GUARD_SECONDS):
        async with trio.open_nursery() as nursery:
            await nursery.start(Store(tmp_path, store_receive, tap_send, max_batch=2).run)
            pendings = [post_now(store_send, [e], [e]) for e in events]
            for pending in pendings:
                await pending.wait()
            store_send.close()
            groups = [p.items async for p in tap_receive]

    assert [len(g) for g in groups] == [3, 3, 1]
    assert [e for g in groups for e in g] == events


async def test_a_bad_append_fails_alone_and_the_rest_of_its_group_commits(tmp_path):
    tap_send, tap_receive = trio.open_memory_channel(100)
    store_send, store_receive = trio.open_memory_channel(100)
    before, after = make_event(1), make_event(3)
    # JSON Python accepts but the store's JSON column refuses (a lone surrogate)
    bad = dataclasses.replace(make_event(2), payload_json='{"n":"\\ud800"}')

    with trio.fail_after(GUARD_SECONDS):
        async with trio.open_nursery() as nursery:
            await nursery.start(Store(tmp_path, store_receive, tap_send).run)
            acks = [post_now(store_send, [e], [e]) for e in (before, bad, after)]
            assert await acks[0].wait() is None
            with pytest.raises(Unavailable, match="the store could not commit a write"):
                await acks[1].wait()
            assert await acks[2].wait() is None
            store_send.close()
            published = [e async for p in tap_receive for e in p.items]

    assert published == [before, after]  # never the one that did not commit
    assert committed_events(tmp_path) == 2


async def test_a_failed_commit_fails_its_ack_publishes_nothing_and_the_store_goes_on(tmp_path):
    tap_send, tap_receive = trio.open_memory_channel(100)
    store_send, store_receive = trio.open_memory_channel(100)
    good, later = make_event(1), make_event(2)

    with trio.fail_after(GUARD_SECONDS):
        async with trio.open_nursery() as nursery:
            await nursery.start(Store(tmp_path, store_receive, tap_send).run)
            # one append: its records commit together or not at all
            bad = post_now(store_send, [good, object()], [good])  # no table for object()
            with pytest.raises(KeyError):
                await bad.wait()
            assert committed_events(tmp_path) == 0
            await post_now(store_send, [later], [later]).wait()
            publish = await tap_receive.receive()
            store_send.close()

    assert publish.items == (later,)


async def test_published_items_reach_watchers_only_after_their_commit(tmp_path):
    tap_send, tap_receive = trio.open_memory_channel(100)
    store_send, store_receive = trio.open_memory_channel(100)
    events = [make_event(n, project="acme") for n in range(5)]
    seen = []

    with trio.fail_after(GUARD_SECONDS):
        async with trio.open_nursery() as nursery:
            await nursery.start(TapBroker(tap_receive, buffer=16).run)
            await nursery.start(Store(tmp_path, store_receive, tap_send.clone()).run)
            watch = await ask(tap_send, lambda r: Subscribe("events", "acme", r))
            for event in events:
                post_now(store_send, [event], [event])
            for _ in events:
                item = await watch.receive()
                # a watcher hears of an event only once a fresh reader can see it
                assert committed_events(tmp_path) >= len(seen) + 1
                seen.append(item)
            store_send.close()
            tap_send.close()

    assert seen == events


# --- queries, barriers, and reads beside commits ------------------------------------------------


@asynccontextmanager
async def running_store(home, guard=GUARD_SECONDS, **options):
    store_send, store_receive = trio.open_memory_channel(1_000)
    tap_send, _tap_receive = trio.open_memory_channel(1_000)
    with trio.fail_after(guard):
        async with trio.open_nursery() as nursery:
            try:
                await nursery.start(Store(home, store_receive, tap_send, **options).run)
                yield store_send
            except BaseException:
                nursery.cancel_scope.cancel()
                raise
            finally:
                store_send.close()


def make_run(n, *, key="", finished=False):
    run_id = f"run_{n}"
    at = T0 + timedelta(seconds=n)
    submission = RunSubmission(
        run_id=run_id,
        dag_json='{"steps": []}',
        inputs={"n": n},
        seed=n,
        labels={"team": "a"},
        breakpoints=("s",),
        idempotency_key=key,
        created_at=at,
    )
    events = [RunEventRecord(run_id, 1, "", "run_started", {"n": n}, at)]
    if finished:
        events.append(RunEventRecord(run_id, 2, "", "run_succeeded", {}, at))
    return submission, events


async def test_unfinished_runs_are_read_together_oldest_first_each_with_its_events_in_order(
    tmp_path,
):
    """Read in one pass (a query a run took 17 s for 3,000 at start): their events interleaved
    with each other's and with finished runs', appended over several commits."""
    runs = [make_run(n, finished=n % 3 == 0) for n in range(40)]
    later = [RunEventRecord(s.run_id, 5, "a", "step_completed", {"output": n}, T0)
             for n, (s, _) in enumerate(runs)]  # fmt: skip
    async with running_store(tmp_path) as store:
        await post_now(store, [s for s, _ in reversed(runs)]).wait()  # rowids not by age
        await post_now(store, [e for _, events in runs for e in events]).wait()
        await post_now(store, list(reversed(later))).wait()
        unfinished = await ask(store, LoadUnfinishedRuns)
    expected = [(s, [*events, later[n]]) for n, (s, events) in enumerate(runs) if n % 3]
    assert unfinished == expected


async def test_a_runs_small_events_are_read_within_memory_limit_before_large_ones_after(
    tmp_path, caplog
):
    """A look never reaches past the rowids it wants, and a run's rows are read by its id:
    grown fourfold from a look of small rows, the third covered 126 of another run's 2 MB
    outputs stored after an unfinished run's last event, and the start ran out of a 64 MB
    limit (a review)."""
    paused, events = make_run(1)
    done, _ = make_run(2)
    for i in range(41):
        payload = {"output": i}
        events.append(RunEventRecord(paused.run_id, 2 + i, f"s{i}", "step_completed", payload, T0))
    large = [
        RunEventRecord(done.run_id, 1 + i, f"s{i}", "step_completed",
                       {"output": str(i % 10) * 2_000_000}, T0)
        for i in range(60)
    ]  # fmt: skip
    large.append(RunEventRecord(done.run_id, 61, "", "run_succeeded", {}, T0))
    async with running_store(tmp_path) as store:  # written without a limit
        await post_now(store, [paused, done, *events, *large]).wait()
    async with running_store(tmp_path, memory_limit="64MB") as store:
        unfinished = await ask(store, LoadUnfinishedRuns)
    assert unfinished == [(paused, events)]
    assert "memory_limit" not in caplog.text


async def test_each_query_message_is_answered_from_committed_rows(tmp_path):
    root = make_event(0, event_type="deploy_requested")
    child = make_event(1, parent=root, event_type="deploy_started")
    chain = FinishedChain(
        workflow_id=root.id,
        workflow_type=root.event_type,
        project=root.project,
        throttle=root.throttle,
        state="completed",
        error="",
        started_at=root.occurred_at,
        completed_at=root.occurred_at + timedelta(milliseconds=5),
        event_count=2,
        block_count=1,
        trace=None,
    )
    done, done_events = make_run(1, key="k1", finished=True)
    running, running_events = make_run(2)

    async with running_store(tmp_path) as store:
        records = [root, child, make_execution(root, [child]), chain]
        records += [done, *done_events, running, *running_events]
        await post_now(store, records).wait()
        workflow = await ask(store, lambda r: LoadWorkflow(root.id, r))
        trace = await ask(store, lambda r: LoadTrace(root.id, r))
        no_workflow = await ask(store, lambda r: LoadWorkflow(child.id, r))
        no_trace = await ask(store, lambda r: LoadTrace(child.id, r))
        run = await ask(store, lambda r: LoadRun("run_1", r))
        no_run = await ask(store, lambda r: LoadRun("run_9", r))
        events = await ask(store, lambda r: LoadRunEvents("run_2", r))
        unfinished = await ask(store, LoadUnfinishedRuns)
        keys = await ask(store, LoadIdempotencyKeys)
        counts = await ask(store, CountRows)
        stats = await ask(store, GetStats)

    row, blocks = workflow
    assert (row["workflow_id"], row["state"]) == (root.id, "completed")
    assert [b["block_name"] for b in blocks] == ["Emitter"]
    assert [e["id"] for e in trace["events"]] == [root.id, child.id]
    assert (trace["state"], trace["total_duration_ms"]) == ("completed", 5)
    # an execution's times as every other time of a trace file: chrono's AutoSi (``.890``, not
    # ``.890000``), read back from the database as the engine's live rows render them
    [x] = trace["block_executions"]
    assert (x["started_at"], x["completed_at"]) == (
        "2026-03-04T05:06:07.890Z",
        "2026-03-04T05:06:07.891Z",
    )
    live = render(trace_rows([root, child], [make_execution(root, [child])], 5,
                             workflow_id=root.id, state="completed", error=""))  # fmt: skip
    assert json.loads(live)["block_executions"] == trace["block_executions"]
    assert (no_workflow, no_trace, no_run) == (None, None, None)
    assert run == (done, done_events)
    assert events == running_events
    assert unfinished == [(running, running_events)]
    assert keys == {"k1": "run_1"}
    assert counts == RowCounts(
        workflows={"completed": 1}, events=2, block_executions=1, runs=2, run_events=3
    )
    assert (stats.commits, stats.reads) == (1, 10)


async def test_a_message_the_store_does_not_know_is_refused(tmp_path):
    @dataclasses.dataclass(frozen=True)
    class RunThisSql:
        sql: str
        reply: object

    async with running_store(tmp_path) as store:
        with pytest.raises(InvalidArgument, match="unknown request RunThisSql"):
            await ask(store, lambda r: RunThisSql("DROP TABLE events", r))
        assert await ask(store, CountRows)


async def test_a_database_error_reaches_the_asker_as_unavailable_and_the_store_goes_on(
    tmp_path, caplog
):
    async with running_store(tmp_path) as store:
        await run_sql(tmp_path, "ALTER TABLE runs RENAME TO runs_gone")
        with pytest.raises(Unavailable) as raised:
            await ask(store, lambda r: LoadRun("run_1", r))
        await run_sql(tmp_path, "ALTER TABLE runs_gone RENAME TO runs")
        for _ in range(2 * READERS):  # every cursor, the replaced one too
            assert await ask(store, lambda r: LoadRun("run_1", r)) is None

    assert str(raised.value) == "the store could not answer LoadRun; the daemon log has the details"
    assert isinstance(raised.value.__cause__, duckdb.Error)
    failures = [r for r in caplog.records if r.name == "foundry.store"]
    assert [r.getMessage() for r in failures] == ["query LoadRun failed"]  # once, with the
    assert failures[0].exc_info  # traceback


async def test_a_barrier_is_answered_once_every_write_sent_before_it_is_committed(tmp_path):
    held, gate = threading.Event(), threading.Event()

    def hold_first_commit(work):
        if work == "commit" and not held.is_set():
            held.set()
            gate.wait(GUARD_SECONDS)

    answered = []

    async def barrier(store, name):
        await ask(store, Barrier)
        answered.append((name, committed_events(tmp_path)))

    async with running_store(tmp_path, hold_for_test=hold_first_commit) as store:
        await barrier(store, "idle")  # nothing before it: answered at once
        async with trio.open_nursery() as nursery:
            ack = post_now(store, [make_event(1)])
            nursery.start_soon(barrier, store, "same group")
            await trio.to_thread.run_sync(held.wait)  # the commit is under way, and held
            nursery.start_soon(barrier, store, "next group")
            # a query is answered meanwhile: reads do not wait for commits
            assert await ask(store, lambda r: LoadRunEvents("run_1", r)) == []
            await trio.sleep(0.05)
            assert answered == [("idle", 0)]
            gate.set()
            await ack.wait()

    assert sorted(answered) == [("idle", 0), ("next group", 1), ("same group", 1)]


async def test_a_slow_read_delays_no_emit(tmp_path):
    """A real read (Trace of a chain with no file: the store's LoadTrace) held for 2 s on its
    worker thread: Emits, each answered by its root's commit, go on meanwhile."""
    reading = threading.Event()

    def slow_reads(work):
        if work == "read":
            reading.set()
            time.sleep(2.0)

    @block("Any", sinks=["tick"])
    def any_block(ctx):
        ctx.emit("tock", {})

    emits, read = [], []
    unknown = make_event(999).id

    async def slow_read(k):
        started = trio.current_time()
        assert await k.trace(unknown) is None
        read.append(trio.current_time() - started)

    async with running_kernel(tmp_path, [any_block], hold_store=slow_reads) as k:
        await k.emit("tick", {"n": -1})  # warm up
        async with trio.open_nursery() as nursery:
            nursery.start_soon(slow_read, k)
            await trio.to_thread.run_sync(reading.wait)
            held_until = trio.current_time() + 1.5  # well inside the 2 s
            while len(emits) < 20 and trio.current_time() < held_until:
                started = trio.current_time()
                await k.emit("tick", {"n": len(emits)})
                emits.append(trio.current_time() - started)
            assert read == []  # all of them while the read was held

    print(
        f"while a read was held {read[0]:.2f} s: {len(emits)} Emits, "
        f"slowest {max(emits) * 1000:.1f} ms"
    )
    assert read[0] >= 2.0
    assert len(emits) >= 5
    assert max(emits) < 0.2


async def test_at_most_readers_queries_run_at_once(tmp_path):
    lock, gate = threading.Lock(), threading.Event()
    inside = [0, 0]  # now, most
    full = trio.Event()
    token = trio.lowlevel.current_trio_token()

    def hold_reads(work):
        if work == "read":
            with lock:
                inside[0] += 1
                inside[1] = max(inside)
                if inside[0] == READERS:
                    trio.from_thread.run_sync(full.set, trio_token=token)
            gate.wait(GUARD_SECONDS)
            with lock:
                inside[0] -= 1

    async with (
        running_store(tmp_path, hold_for_test=hold_reads) as store,
        trio.open_nursery() as nursery,
    ):
        for n in range(READERS + 3):
            nursery.start_soon(ask, store, lambda r, n=n: LoadRun(f"run_{n}", r))
        await full.wait()
        await trio.sleep(0.1)
        assert inside[0] == READERS
        started = trio.current_time()
        await post_now(store, [make_event(1)]).wait()  # commits go on meanwhile
        assert trio.current_time() - started < 0.2
        gate.set()

    assert inside[1] == READERS


async def start_and_stop_store(home):
    """Run a store until it opens (and recovers), then close it; returns what it recovered."""
    store_send, store_receive = trio.open_memory_channel(10)
    tap_send, _tap_receive = trio.open_memory_channel(10)
    async with trio.open_nursery() as nursery:
        recovered = await nursery.start(Store(home, store_receive, tap_send).run)
        store_send.close()
    return recovered


async def test_a_chain_left_unfinished_is_marked_failed_on_the_next_start(tmp_path):
    root = make_event(0, event_type="deploy_requested", project="Zoë")
    child = make_event(1, parent=root, event_type="deploy_started", project="Zoë")
    execution = make_execution(root, [child])

    with trio.fail_after(GUARD_SECONDS):
        # a daemon that committed part of a chain and was killed: no workflows row
        store_send, store_receive = trio.open_memory_channel(10)
        tap_send, _tap_receive = trio.open_memory_channel(10)
        async with trio.open_nursery() as nursery:
            assert await nursery.start(Store(tmp_path, store_receive, tap_send).run) == []
            await post_now(store_send, [root, child, execution]).wait()
            store_send.close()

        assert await start_and_stop_store(tmp_path) == [root.id]
        assert await start_and_stop_store(tmp_path) == []  # recovered once, for good

    con = duckdb.connect(str(tmp_path / "foundry.duckdb"))
    try:
        [row] = con.execute(
            "SELECT workflow_id, workflow_type, state, error, event_count, block_count "
            "FROM workflows"
        ).fetchall()
    finally:
        con.close()
    assert row == (root.id, "deploy_requested", "failed", RESTARTED, 2, 1)
    assert RESTARTED.startswith("daemon restarted")

    path = tmp_path / "traces" / "2026-03-04" / f"{root.id}.json"
    trace = json.loads(path.read_text())
    # in the shape of every trace file (an OTel hunt: span_id after ours, "Zo\u00eb")
    assert '"project":"Zoë"' in path.read_text()  # compact, as every trace file
    assert list(trace["events"][0]) == [
        "id", "event_type", "project", "occurred_at", "recorded_at", "throttle", "trace_id",
        "span_id", "payload", "parent_id", "emitted_by", "depth", "throttled", "parent_span_id",
    ]  # fmt: skip
    assert trace["state"] == "failed"
    assert trace["error"] == RESTARTED
    assert [e["id"] for e in trace["events"]] == [root.id, child.id]
    [x] = trace["block_executions"]
    assert x["emitted_event_ids"] == [child.id]
    assert x["emitted_payloads"] == [{"n": 1}]
    assert x["trigger_payload"] == {"n": 0}


async def test_after_recovery_status_and_trace_report_the_failure(tmp_path):
    root = make_event(0, event_type="deploy_requested")
    with trio.fail_after(GUARD_SECONDS):
        store_send, store_receive = trio.open_memory_channel(10)
        tap_send, _tap_receive = trio.open_memory_channel(10)
        async with trio.open_nursery() as nursery:
            await nursery.start(Store(tmp_path, store_receive, tap_send).run)
            await post_now(store_send, [root]).wait()
            store_send.close()

    async with running_kernel(tmp_path, [], engine=EngineConfig()) as k:
        [view] = await k.status(root.id)
        trace = await k.trace(root.id)

    assert k.recovered == [root.id]
    assert view.state == "failed"
    assert view.error == RESTARTED
    assert view.completed_at
    assert trace["state"] == "failed"
    assert [e["id"] for e in trace["events"]] == [root.id]


async def test_a_finished_chain_is_not_recovered(tmp_path):
    async with running_kernel(tmp_path, []) as k:
        emitted = await k.emit("nobody_listens")
    assert k.recovered == []

    with trio.fail_after(GUARD_SECONDS):
        assert await start_and_stop_store(tmp_path) == []
    con = duckdb.connect(str(tmp_path / "foundry.duckdb"))
    try:
        rows = con.execute("SELECT workflow_id, state, block_count FROM workflows").fetchall()
    finally:
        con.close()
    assert rows == [(emitted.event_id, "completed", 0)]


# --- the journal: durable first, DuckDB as the materialized view ---------------------------------


def database_rows(home, sql="SELECT count(*) FROM events"):
    """What DuckDB itself holds (not the journal), through a connection of the test's own."""
    con = duckdb.connect(str(home / "foundry.duckdb"))
    try:
        return con.execute(sql).fetchone()[0]
    finally:
        con.close()


async def test_queries_see_every_acknowledged_write_while_the_database_lags(tmp_path):
    events = [make_event(n) for n in range(3)]
    async with running_store(tmp_path, materialize_delay=60) as store:
        for event in events:
            await post_now(store, [event]).wait()
        assert database_rows(tmp_path) == 0  # durable in the journal, not yet in DuckDB
        assert committed_events(tmp_path) == 3
        counts = await ask(store, CountRows)  # the query has DuckDB catch up first
        assert counts.events == 3
        assert database_rows(tmp_path) == 3
        assert database_rows(tmp_path, "SELECT seq FROM journal_applied") == 3
        # the journal holds nothing DuckDB lacks (its current segment stays, to be appended to)
        assert pending_records(tmp_path / "journal", 3) == []


async def test_a_store_stopped_before_materializing_replays_its_journal_at_start(tmp_path):
    events = [make_event(n) for n in range(4)]
    with trio.CancelScope() as killed:
        async with running_store(tmp_path, materialize_delay=60) as store:
            for event in events:
                await post_now(store, [event]).wait()
            killed.cancel()  # stops at once: the materializer never ran
    assert database_rows(tmp_path) == 0
    assert [r.seq for r in pending_records(tmp_path / "journal", 0)] == [1, 2, 3, 4]

    async with running_store(tmp_path) as store:
        assert database_rows(tmp_path) == 4  # replayed before the store answers anything
        assert (await ask(store, CountRows)).events == 4
        await post_now(store, [make_event(9)]).wait()
        assert (await ask(store, CountRows)).events == 5
    assert database_rows(tmp_path, "SELECT seq FROM journal_applied") == 5


async def test_a_record_the_database_already_has_is_not_applied_twice(tmp_path):
    """Killed after DuckDB committed a batch but before its segment was deleted: the mark,
    committed with the rows, makes the replay skip it."""
    saved = tmp_path / "saved"

    def keep_journal(work):
        if work == "materialize" and not saved.exists():
            shutil.copytree(tmp_path / "home" / "journal", saved)

    home = tmp_path / "home"
    async with running_store(home, hold_for_test=keep_journal) as store:
        await post_now(store, [make_event(1), make_event(2)]).wait()
        assert (await ask(store, CountRows)).events == 2
    shutil.rmtree(home / "journal")
    shutil.copytree(saved, home / "journal")  # as if the deletion never happened
    assert len(pending_records(home / "journal", 0)) == 1

    async with running_store(home) as store:
        assert (await ask(store, CountRows)).events == 2
    assert database_rows(home, "SELECT count(DISTINCT event_id) FROM events") == 2


async def test_rows_the_database_refuses_are_set_aside_and_the_rest_still_land(tmp_path, caplog):
    good, later = make_event(1), make_event(2)
    # passes the store's own checks, but breaks the events table's NOT NULL on event_type
    refused = dataclasses.replace(make_event(3), event_type=None)
    async with running_store(tmp_path, materialize_delay=60) as store:
        for event in (good, refused, later):
            await post_now(store, [event]).wait()  # all three acknowledged: durable
        assert (await ask(store, CountRows)).events == 2  # the store carries on
    [aside] = (tmp_path / "journal" / "rejected").iterdir()
    assert aside.name == f"{2:020d}.rows"
    assert "journal record 2: the database refused 1 of its rows" in caplog.text
    assert database_rows(tmp_path, "SELECT seq FROM journal_applied") == 3


async def test_a_refused_row_takes_no_other_row_of_its_record_with_it(tmp_path, caplog):
    """A record holds every append of its group commit: one run's refused row set aside all
    of them (another run that had finished came back half done after a restart)."""
    good, neighbour, later = make_event(1), make_event(2), make_event(4)
    refused = dataclasses.replace(make_event(3), event_type=None)
    async with running_store(tmp_path, materialize_delay=60) as store:
        await post_now(store, [good]).wait()
        await post_now(store, [neighbour, refused]).wait()  # one record, one bad row
        await post_now(store, [later]).wait()
        assert (await ask(store, CountRows)).events == 3
    assert "journal record 2: the database refused 1 of its rows" in caplog.text
    [aside] = (tmp_path / "journal" / "rejected").iterdir()
    [(table, rows)] = decode(aside.read_bytes())
    assert (table, len(rows)) == ("events", 1)
    assert database_rows(tmp_path, "SELECT count(*) FROM events") == 3


async def test_a_refused_records_replaced_rows_keep_their_last_version(tmp_path):
    """A scenario written twice in one group commit beside a refused row: both versions were
    applied, broke the scenarios' unique key, and the whole record was set aside."""

    def scenario(title: str, seconds: int) -> EvalScenarioRecord:
        at = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)
        return EvalScenarioRecord(scenario_id="scn_1", pack="pk", slug="s", title=title,
                                  description="", run_spec={"dag_json": "{}"}, expected={},
                                  created_at=at, updated_at=at)  # fmt: skip

    refused = dataclasses.replace(make_event(1), event_type=None)
    async with running_store(tmp_path, materialize_delay=60) as store:
        waits = [post_now(store, [scenario("first", 0)]), post_now(store, [scenario("second", 1)]),
                 post_now(store, [refused])]  # fmt: skip
        for pending in waits:
            await pending.wait()
        await ask(store, CountRows)
    rows = database_rows(tmp_path, "SELECT list(title) FROM eval_scenarios")
    assert rows == ["second"]


async def test_a_refused_records_rows_are_applied_once_when_its_pass_is_cut_short(
    tmp_path, monkeypatch
):
    """Its rows were committed one at a time, its mark only at the end: a full disk (or a kill)
    in the middle of the pass, and the retry applied the rows committed so far again."""
    calls, real_apply = [0], store_actor.apply

    def full_disk_once(con, appender, tables):
        calls[0] += 1
        if calls[0] == 6:  # after the batch, the record, and a few of its rows were tried
            raise duckdb.IOException("No space left on device")
        return real_apply(con, appender, tables)

    monkeypatch.setattr(store_actor, "apply", full_disk_once)
    good = [make_event(n) for n in range(1, 41)]
    refused = dataclasses.replace(make_event(41), event_type=None)
    async with running_store(tmp_path, materialize_delay=60) as store:
        await post_now(store, [*good, refused]).wait()
        assert (await ask(store, CountRows)).events == 40
    assert calls[0] > 6
    assert database_rows(tmp_path, "SELECT count(*) FROM events") == 40


async def test_a_commit_whose_rollback_failed_too_is_retried_at_once_on_the_same_connection(
    tmp_path, monkeypatch, caplog
):
    """An analyst's query took DuckDB's memory: the commit failed, and its ROLLBACK as well.
    The connection stayed in the failed transaction: each retry's BEGIN failed until the tenth
    reopened the database (~10 s of reads waiting for acknowledged writes)."""
    real_apply, real_roll_back, failed = store_actor.apply, store_actor.roll_back, [0]

    def out_of_memory_once(con, appender, tables):
        failed[0] += 1
        if failed[0] == 1:
            raise duckdb.OutOfMemoryException("Out of Memory Error: could not allocate block")
        return real_apply(con, appender, tables)

    def rollback_out_of_memory_once(con):
        if failed[0] == 1:  # the transaction stays open and failed, as DuckDB leaves it
            raise duckdb.OutOfMemoryException("Out of Memory Error: could not allocate block")
        real_roll_back(con)

    monkeypatch.setattr(store_actor, "apply", out_of_memory_once)
    monkeypatch.setattr(store_actor, "roll_back", rollback_out_of_memory_once)
    async with running_store(tmp_path, materialize_delay=60) as store:
        await post_now(store, [make_event(1), make_event(2)]).wait()
        t0 = trio.current_time()
        assert (await ask(store, CountRows)).events == 2
        assert trio.current_time() - t0 < 5  # the second try, a second on: no reopen
    assert "opening the database again" not in caplog.text
    assert "Current transaction is aborted" not in caplog.text
    assert database_rows(tmp_path, "SELECT count(*) FROM events") == 2


async def test_a_store_stopping_while_the_database_fails_leaves_its_writes_to_the_journal(
    tmp_path, caplog
):
    async with running_store(tmp_path, materialize_delay=60) as store:
        await run_sql(tmp_path, "ALTER TABLE events RENAME TO events_gone")
        await post_now(store, [make_event(1)]).wait()  # durable in the journal
    # the store stopped (after its few tries) instead of retrying forever
    assert "stopping with 1 journal records the database lacks" in caplog.text
    await run_sql(tmp_path, "ALTER TABLE events_gone RENAME TO events")
    assert [r.seq for r in pending_records(tmp_path / "journal", 0)] == [1]

    async with running_store(tmp_path) as store:  # the next start applies it
        assert (await ask(store, CountRows)).events == 1


def sync_threads(monkeypatch):
    """The names of the threads each ``fdatasync`` of this process ran on, in order."""
    names = []
    fdatasync = os.fdatasync

    def recorded(fd):
        names.append(threading.current_thread().name)
        return fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", recorded)
    return names


async def test_the_journal_appends_and_syncs_off_the_trio_thread(tmp_path, monkeypatch):
    """The fdatasync is the one blocking call of a commit: it never runs on the daemon's loop,
    however idle the loop is or however small the group — on the journal thread, or in the
    writer process (``journal_writer.py``), whose syncs this process never makes."""
    threads = sync_threads(monkeypatch)
    tap_send, _tap_receive = trio.open_memory_channel(100)
    store_send, store_receive = trio.open_memory_channel(100)
    with trio.fail_after(GUARD_SECONDS):
        async with trio.open_nursery() as nursery:
            await nursery.start(Store(tmp_path, store_receive, tap_send).run)
            await post_now(store_send, [make_event(1)]).wait()  # a new segment
            await post_now(store_send, [make_event(2)]).wait()  # the writer process
            await post_now(store_send, [make_event(n) for n in range(3, 60)]).wait()
            store_send.close()
    assert committed_events(tmp_path) == 59
    assert len(threads) >= 2
    assert set(threads) == {"foundry-journal"}


async def test_writes_someone_waits_for_commit_while_the_loop_never_idles(tmp_path):
    """Behind a task that computes and yields, again and again (a loaded daemon), the journal
    thread still gets the interpreter lock for groups someone waits for — large ones (the
    thread's: without a short switch interval meanwhile, twenty of them took until the loop
    gave up), and a run's end, which its driver waits for."""
    from .test_threads import keep_busy

    tap_send, tap_receive = trio.open_memory_channel(100)
    store_send, store_receive = trio.open_memory_channel(100)
    busy_until = time.monotonic() + GUARD_SECONDS
    done = trio.Event()
    with trio.fail_after(2 * GUARD_SECONDS):
        async with trio.open_nursery() as nursery:
            await nursery.start(Store(tmp_path, store_receive, tap_send).run)
            await post_now(store_send, [make_event(0)]).wait()  # the segment, before the load
            nursery.start_soon(keep_busy, done, busy_until)
            for group in range(20):  # each to the journal thread: its encoding, write, sync
                large = [make_event(n) for n in range(1 + 40 * group, 41 + 40 * group)]
                await post_now(store_send, large).wait()
            end = make_event(801)
            post_now(store_send, [end], [end])
            published = []
            while end not in published:
                published.extend((await tap_receive.receive()).items)
            still_busy = time.monotonic() < busy_until
            done.set()
            store_send.close()
    assert still_busy, "the commits waited for the busy loop to give up"
    assert committed_events(tmp_path) == 802


async def test_duckdb_catches_up_after_a_commit_someone_waits_for(tmp_path):
    """A commit someone waits for, on the journal thread, goes before DuckDB's catching up:
    both hold the interpreter lock for most of their work. The materializer waits for that one
    commit (never more: commits never stop) — unless a read wants DuckDB meanwhile."""
    gate, held = threading.Event(), threading.Event()
    order: list[str] = []
    holding = [False]

    def hold(work):
        if work == "commit" and holding[0]:
            held.set()
            gate.wait(GUARD_SECONDS)
        if work in ("commit", "materialize"):
            order.append(work)

    async with running_store(tmp_path, hold_for_test=hold, materialize_delay=0.05) as store:
        store.send_nowait(Append((make_event(1),), ()))  # nobody waits for it
        await ask(store, Barrier)  # journaled: DuckDB's delay runs from here
        holding[0] = True
        ack = post_now(store, [make_event(2)])
        await trio.to_thread.run_sync(held.wait)
        await trio.sleep(0.2)  # four delays: DuckDB would have caught up with the first
        assert order == ["commit"]  # the first's group (and the Barrier): not DuckDB yet
        # A read wants DuckDB: it does not wait for the held commit.
        assert (await ask(store, CountRows)).events == 1
        assert order == ["commit", "materialize"]
        gate.set()
        await ack.wait()
        assert (await ask(store, CountRows)).events == 2
    assert order[:3] == ["commit", "materialize", "commit"]


def attestation_row(n, home):
    """A signed ``attestation_statements`` row (its column order), as the attestor makes it."""
    from foundry.kernel.actors.attestor import keys
    from foundry.kernel.actors.attestor.messages import AttestCustom
    from foundry.kernel.actors.attestor.statements import Signer
    from foundry.kernel.actors.store.tables import WRITERS
    from foundry.kernel.core.attest import key_id
    from foundry.kernel.core.attest_records import AttestationRecord

    pair = keys.load_or_create(home)
    signer = Signer(pair.private.sign, key_id(pair.public_raw), "1.0")
    record = signer.record(AttestCustom("eval_result", f"r{n}", "run_1", {"n": n}, T0), None)
    return WRITERS[AttestationRecord].row(record)


async def test_a_runs_attestation_rows_reach_duckdb_after_their_facts_never_the_journal(
    tmp_path,
):
    """Rows a start would make again from journaled facts (``DerivedAttestationRows``) go to
    DuckDB alone, in their group's order; a read waits for them as for journaled rows — even
    when nothing else was journaled with them."""
    fact, keys_home = make_event(1), tmp_path / "keys-home"
    first, second = attestation_row(1, keys_home), attestation_row(2, keys_home)
    async with running_store(tmp_path, materialize_delay=60) as store:
        await post_now(store, [fact, DerivedAttestationRows((first,))]).wait()
        await post_now(store, [DerivedAttestationRows((second,))]).wait()
        found = await ask(store, lambda r: LoadAttestations((second[0],), r))
        assert [a.attestation_id for a in found] == [second[0]]
        assert (await ask(store, CountRows)).events == 1
    journaled_tables = {
        table for record in pending_records(tmp_path / "journal", 0) for table, _ in record.tables
    }
    assert "attestation_statements" not in journaled_tables
    assert database_rows(tmp_path, "SELECT count(*) FROM attestation_statements") == 2


async def test_an_attestation_row_duckdb_refuses_loses_nothing_else(tmp_path, caplog):
    """A run's attestation row DuckDB refuses is logged and dropped (a start makes it again):
    the facts committed with it, and the rows beside it in other groups, still land."""
    fact, keys_home = make_event(1), tmp_path / "keys-home"
    refused = DerivedAttestationRows(((None, *attestation_row(1, keys_home)[1:]),))  # NOT NULL
    kept = attestation_row(2, keys_home)
    async with running_store(tmp_path, materialize_delay=60) as store:
        await post_now(store, [fact, refused]).wait()
        await post_now(store, [DerivedAttestationRows((kept,))]).wait()
        assert (await ask(store, CountRows)).events == 1
    assert caplog.text.count("the database refused a row of attestation_statements") == 1
    assert database_rows(tmp_path, "SELECT count(*) FROM events") == 1
    assert database_rows(tmp_path, "SELECT attestation_id FROM attestation_statements") == kept[0]


def spool_file(home, rows, name="1.csv"):
    """A spool file of ``rows`` (``attestation_statements`` order) as the signing process
    writes one (``drafting.spool``)."""
    from foundry.kernel.actors.attestor.drafting import _csv_line
    from foundry.kernel.core.attest_records import SPOOL

    folder = home / SPOOL
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("".join(_csv_line(*row[:9], row[9].isoformat(), row[10]) for row in rows))
    return path


async def test_spooled_attestation_rows_are_read_by_duckdb_and_their_file_deleted(tmp_path):
    """A batch's rows in a spool file (``SpooledAttestationRows``): DuckDB reads the file in the
    transaction that stores them, after the facts of the same group; the file is deleted once
    they are committed, and the rows are the ones the attestor would have appended itself."""
    fact, keys_home = make_event(1), tmp_path / "keys-home"
    rows = [attestation_row(n, keys_home) for n in (1, 2, 3, 4)]
    path, other = spool_file(tmp_path, rows[:3]), spool_file(tmp_path, rows[3:], "2.csv")
    async with running_store(tmp_path, materialize_delay=60) as store:
        await post_now(store, [fact, SpooledAttestationRows(str(path), 3)]).wait()
        await post_now(store, [SpooledAttestationRows(str(other), 1)]).wait()
        # one materialization, both files (read by one statement: ``insert_spooled``)
        found = await ask(store, lambda r: LoadAttestations((rows[2][0], rows[3][0]), r))
        assert [a.attestation_id for a in found] == [rows[2][0], rows[3][0]]
    assert not path.exists()
    assert not other.exists()
    con = duckdb.connect(str(tmp_path / "foundry.duckdb"))
    try:
        stored = con.execute("SELECT * FROM attestation_statements ORDER BY attestation_id")
        assert stored.fetchall() == sorted(rows)  # each value as appended: text, time, seq
    finally:
        con.close()
    journaled_tables = {
        table for record in pending_records(tmp_path / "journal", 0) for table, _ in record.tables
    }
    assert not journaled_tables & {"attestation_statements", "attestation_statements (spooled)"}


async def test_a_spool_file_duckdb_refuses_or_that_is_gone_loses_nothing_else(tmp_path, caplog):
    """A spool file DuckDB cannot read (a torn line) is logged, deleted and its rows dropped — a
    start makes them again from the facts — and one that is gone is logged and skipped; the
    facts committed with them and the other files' rows still land."""
    fact, keys_home = make_event(1), tmp_path / "keys-home"
    torn = spool_file(tmp_path, [attestation_row(1, keys_home)], "torn.csv")
    torn.write_text(torn.read_text()[:-40])
    kept_row = attestation_row(2, keys_home)
    kept = spool_file(tmp_path, [kept_row], "kept.csv")
    gone = str(tmp_path / "spool" / "attestations" / "gone.csv")
    async with running_store(tmp_path, materialize_delay=60) as store:
        await post_now(store, [fact, SpooledAttestationRows(str(torn), 1)]).wait()
        await post_now(store, [SpooledAttestationRows(gone, 1)]).wait()
        await post_now(store, [SpooledAttestationRows(str(kept), 1)]).wait()
        assert (await ask(store, CountRows)).events == 1
    assert "the database refused a row of attestation_statements (spooled)" in caplog.text
    assert f"the spooled attestation rows {gone} are gone" in caplog.text
    assert not torn.exists()
    assert not kept.exists()
    assert database_rows(tmp_path, "SELECT count(*) FROM events") == 1
    assert (
        database_rows(tmp_path, "SELECT attestation_id FROM attestation_statements") == kept_row[0]
    )


# --- DuckDB invalidated by a checkpoint on large values ---------------------------------------


def _large_event(n):
    event = make_event(n)
    payload = {"n": n, "pad": "x" * 1_000_000 + str(n)}
    return dataclasses.replace(
        event, id=event_id("tick", "p", event.occurred_at, payload), payload=payload,
        payload_json=compact_json(payload),
    )  # fmt: skip


async def test_a_commit_durable_but_fatal_writes_its_derived_rows_once(tmp_path, monkeypatch):
    """DuckDB's "Transaction COMMIT succeeded and is durable, but the autocheckpoint failed":
    the reopened store skipped the journaled rows (the high-water mark) but wrote the rows only
    DuckDB gets (an attestation's) a second time. The failure is DuckDB's, made to happen here
    on the first commit holding an attestation."""
    real, fired = Store._transaction, []

    def transaction(self, tables, *, applied=None):
        real(self, tables, applied=applied)
        if not fired and any(table == "attestation_statements" for table, _ in tables):
            fired.append(True)
            raise duckdb.FatalException("FATAL Error: Transaction COMMIT succeeded and is "
                                        "durable, but the autocheckpoint failed")  # fmt: skip

    monkeypatch.setattr(Store, "_transaction", transaction)
    row = attestation_row(1, tmp_path / "keys")
    async with running_store(tmp_path, materialize_delay=60) as store:
        await post_now(store, [make_event(1), DerivedAttestationRows((row,))]).wait()
        assert (await ask(store, lambda r: CountRows(r))).events == 1
    assert fired
    assert database_rows(tmp_path, "SELECT count(*) FROM attestation_statements") == 1


async def test_a_read_that_finds_duckdb_invalidated_has_it_reopened_without_a_write(tmp_path):
    """A checkpoint failed on large values (1 MB payloads under a 64 MB limit) and invalidated
    the database: reads failed until the next write woke the materializer. A read that meets
    it wakes the store now, and it opens the database again."""
    failed_at = None
    # ~70 events of 1 MB before DuckDB fails: 3.5 s alone, 10 s beside a loaded suite
    async with running_store(
        tmp_path, guard=90, memory_limit="64MB", materialize_delay=60
    ) as store:
        for n in range(1, 200):
            await post_now(store, [_large_event(n)]).wait()
            try:
                await ask(store, lambda r: CountRows(r))
            except Unavailable:
                failed_at = n
                break
        assert failed_at is not None, "DuckDB never failed: the test needs a smaller limit"
        with trio.fail_after(30):  # no write: the failed read alone has it reopened
            while True:
                try:
                    counted = await ask(store, lambda r: CountRows(r))
                    break
                except Unavailable:
                    await trio.sleep(0.2)
        assert counted.events == failed_at
    assert database_rows(tmp_path) == failed_at


class _CheckpointFails:
    """A DuckDB connection whose CHECKPOINT fails as on a full disk (the outside world's fault,
    made to happen here); everything else is the real connection's."""

    def __init__(self, con, closed):
        self._con, self._closed = con, closed

    def execute(self, sql, *args):
        if sql == "CHECKPOINT":
            raise duckdb.IOException("Failed to create checkpoint: No space left on device")
        return self._con.execute(sql, *args)

    def close(self):
        self._closed.append(True)
        self._con.close()

    def __getattr__(self, name):
        return getattr(self._con, name)


def test_a_connection_whose_set_up_fails_is_closed(tmp_path, monkeypatch):
    """DuckDB keeps one instance a file while any connection to it is open: the connection of
    a reopen whose CHECKPOINT failed on a full disk (which invalidated the instance) was left
    open, and every later reopen failed ("database has been invalidated") after space came
    back, until the daemon was restarted."""
    real, closed = duckdb.connect, []
    monkeypatch.setattr(duckdb, "connect", lambda path: _CheckpointFails(real(path), closed))
    send, receive = trio.open_memory_channel(1)
    tap_send, _ = trio.open_memory_channel(1)
    store = Store(tmp_path, receive, tap_send)
    with pytest.raises(duckdb.IOException, match="No space left"):
        store._connect()
    assert closed == [True]
    monkeypatch.setattr(duckdb, "connect", real)
    store._connect().close()  # and the file opens again


def _large(event, n):
    """``event`` with a payload of ~3 MB (its own digits: a row DuckDB does not share)."""
    payload = {"n": n, "blob": str(n % 10) * 3_000_000}
    return dataclasses.replace(event, payload=payload, payload_json=compact_json(payload))


def _finished(root, events):
    return FinishedChain(
        workflow_id=root.id, workflow_type=root.event_type, project=root.project,
        throttle=root.throttle, state="completed", error="", started_at=root.occurred_at,
        completed_at=root.occurred_at + timedelta(milliseconds=5), event_count=len(events),
        block_count=1, trace=None,
    )  # fmt: skip


async def test_a_small_chains_trace_size_is_read_within_memory_limit_beside_large_events(
    tmp_path,
):
    """A trace's size joined each execution's trigger with every stored event, its payload read:
    under 64 MB beside 100 events of 1 MB it ran out of memory (and Traces at once failed
    under the default 256 MB; found by a resource hunt). Only the chain's events are read."""
    from foundry.kernel.actors.store import reads

    big = [_large_event(200 + n) for n in range(100)]  # each a workflow of its own, no block
    root = make_event(0, event_type="deploy_requested")
    child = make_event(1, parent=root)
    records = [*big, root, child, _finished(root, [root, child]), make_execution(root, [child])]
    async with running_store(tmp_path) as store:  # written without a limit
        await post_now(store, records).wait()
    con = duckdb.connect(str(tmp_path / "foundry.duckdb"), read_only=True)
    try:
        con.execute("SET memory_limit = '64MB'")
        size = reads._trace_size(con, root.id)
    finally:
        con.close()
    assert size >= len(root.payload_json) + len(child.payload_json)


async def test_small_runs_and_chains_read_back_beside_large_payloads_within_memory_limit(
    tmp_path, caplog
):
    # 90 MB of payloads in the same 2,048-row vectors as a small run's and a small chain's rows.
    # A query that returned the column it filters on read the whole vector: GetRun of the small
    # run, its ListRuns, Trace of the small chain, the attestor's start-up look and the store's
    # recovery of unfinished chains each ran out of a 64 MB limit (the default is 256 MB).
    big_root = make_event(100)
    big_chain = [_large(big_root, 100)]
    small_root = make_event(0, event_type="deploy_requested")
    small_child = make_event(1, parent=small_root)
    left_root = make_event(2, event_type="left_unfinished")
    big_run, _ = make_run(7, finished=True)
    small_run, small_events = make_run(8)
    big_events = [RunEventRecord(big_run.run_id, 1, "", "run_submitted", {"steps": 30}, T0)]
    for i in range(30):
        announced = run_attestation_id(big_run.run_id, i + 2)
        payload = {"output": str(i % 10) * 3_000_000, "attestation_id": announced}
        big_events.append(RunEventRecord(big_run.run_id, i + 2, f"s{i}", "step_completed",
                                         payload, T0))  # fmt: skip
        if i < 10:
            child = _large(make_event(101 + i, parent=big_root), 101 + i)
            big_chain.append(child)
    records = [big_run, small_run, big_chain[0], small_root, left_root, small_child]
    for n, event in enumerate(big_events):
        records.append(event)
        if n == 5:
            records += small_events
        if n < len(big_chain) - 1:
            records.append(big_chain[n + 1])
    records += [
        _finished(big_root, big_chain), _finished(small_root, [small_root, small_child]),
        make_execution(small_root, [small_child]),
        RunEventRecord(big_run.run_id, 32, "", "run_succeeded", {}, T0),
    ]  # fmt: skip
    async with running_store(tmp_path) as store:  # written without a limit
        await post_now(store, records).wait()

    with trio.fail_after(GUARD_SECONDS):
        store, store_receive = trio.open_memory_channel(10)
        tap_send, _tap_receive = trio.open_memory_channel(10)
        async with trio.open_nursery() as nursery:
            started = Store(tmp_path, store_receive, tap_send, memory_limit="64MB").run
            recovered = await nursery.start(started)  # the unfinished chain
            events = await ask(store, lambda r: LoadRunEvents(small_run.run_id, r))
            run = await ask(store, lambda r: LoadRun(small_run.run_id, r))
            unfinished = await ask(store, LoadUnfinishedRuns)
            listed = await ask(store, lambda r: LoadRunSummaries(RunListQuery(()), r))
            unattested = await ask(store, LoadUnattested)
            trace = await ask(store, lambda r: LoadTrace(small_root.id, r))
            store.close()
    assert recovered == [left_root.id]
    assert events == small_events
    assert run == (small_run, small_events)
    assert unfinished == [(small_run, small_events)]
    assert [(s.run_id, s.status, s.step_count) for s in listed] == [
        (small_run.run_id, "RUNNING", 0), (big_run.run_id, "SUCCEEDED", 30)
    ]  # fmt: skip
    assert unattested == [big_run.run_id]  # its announced steps have no attestation stored
    assert [e["id"] for e in trace["events"]] == [small_root.id, small_child.id]
    assert "memory_limit" not in caplog.text  # no query had to go beyond it
    # Long strings stored as they are: DuckDB's ZSTD decompressed a whole vector's payloads to
    # read one row (~0.5 s and ~800 MB for a small run's GetRun, outside the memory limit).
    con = duckdb.connect(str(tmp_path / "foundry.duckdb"), read_only=True)
    try:
        compressions = [
            (table, compression)
            for table in ("run_events", "events")
            for (compression,) in con.execute(
                f"SELECT DISTINCT compression FROM pragma_storage_info('{table}') "
                "WHERE column_name = 'payload' AND segment_type = 'JSON'"
            ).fetchall()
        ]
    finally:
        con.close()
    assert {table for table, _ in compressions} == {"run_events", "events"}
    assert all(c != "ZSTD" for _, c in compressions), compressions


class _Counted:
    """A DuckDB connection that counts its statements."""

    def __init__(self, con):
        self.con, self.statements = con, 0

    def execute(self, *args):
        self.statements += 1
        return self.con.execute(*args)


def test_the_start_up_look_for_unattested_steps_reads_a_long_history_in_few_looks(tmp_path):
    # 6,000 completions of runs made without the attestor (one with an output that names the
    # key), and one announcement a stopped daemon left unattested. A look a 64 rowids took 7 s
    # for 80,000 such completions; the looks now grow with the payloads' size.
    con = duckdb.connect(str(tmp_path / "f.duckdb"))
    migrate(con, tmp_path)
    rows = []
    for run in range(300):
        for seq in range(1, 21):
            output = {"attestation_id": "mine"} if run == 7 else {"n": seq}
            rows.append((f"run_{run}", seq, f"s{seq}", "step_completed",
                         compact_json({"attempt": 1, "output": output}), T0))  # fmt: skip
    left = {"attempt": 1, "attestation_id": run_attestation_id("run_x", 2), "output": 1}
    rows.append(("run_x", 2, "s", "step_completed", compact_json(left), T0))
    con.executemany("INSERT INTO run_events VALUES (?, ?, ?, ?, ?, ?)", rows)
    counted = _Counted(con)
    assert load_unattested(counted) == ["run_x"]
    assert counted.statements <= 12


def test_a_look_covers_about_look_bytes_of_payloads():
    assert next_span(MIN_SPAN, 0, 0) == 4 * MIN_SPAN  # nothing read: grow
    assert next_span(64, 64, 64 * 100) == 256  # small payloads: at most fourfold a look
    assert next_span(MAX_SPAN, 2_000, 2_000) == MAX_SPAN
    assert next_span(64, 64, 64 * 3_000_000) == MIN_SPAN  # 3 MB payloads: the fewest rowids
    assert next_span(1_024, 1_024, LOOK_BYTES * 2) == 512  # twice the bytes: half the span


async def test_recent_events_with_large_payloads_are_read_newest_first_within_memory_limit(
    tmp_path, caplog
):
    # ListEvents (foundry watch --since, trace --follow) read every payload it considered at
    # once: six 3 MB events ran out of the 256 MB limit, and the backlog failed for good
    big = [_large(make_event(n, project="big"), n) for n in range(12)]  # 12 × 3 MB
    small = [make_event(100 + n, project="small") for n in range(5)]
    async with running_store(tmp_path) as store:  # written without a limit
        await post_now(store, [*big[:6], *small, *big[6:]]).wait()

    since = T0 - timedelta(days=1)
    with trio.fail_after(GUARD_SECONDS):
        store, store_receive = trio.open_memory_channel(10)
        tap_send, _tap_receive = trio.open_memory_channel(10)
        async with trio.open_nursery() as nursery:
            await nursery.start(Store(tmp_path, store_receive, tap_send, memory_limit="64MB").run)
            every, cut = await ask(
                store, lambda r: LoadRecentEvents(since, "", "", 100, 30 << 20, r)
            )
            some, more = await ask(
                store, lambda r: LoadRecentEvents(since, "big", "", 100, 8 << 20, r)
            )
            two, older = await ask(
                store, lambda r: LoadRecentEvents(since, "small", "", 2, 1 << 20, r)
            )
            store.close()
    newest_first = [e.id for e in sorted([*big, *small], key=lambda e: e.occurred_at, reverse=True)]
    assert [row[0] for row in every] == newest_first[: len(every)]
    assert 10 <= len(every) < 17  # 30 MB hold 9 or 10 of the 3 MB payloads (and the small)
    assert cut
    assert [row[0] for row in some] == [e.id for e in reversed(big)][:2]  # 8 MB: two of them
    assert more
    assert [row[0] for row in two] == [small[4].id, small[3].id]
    assert older  # a limit below what exists says so too
    assert json.loads(two[0][7]) == small[4].payload
    assert (two[0][2], two[0][4]) == ("small", small[4].workflow_id)
    assert "memory_limit" not in caplog.text


async def test_recent_events_stored_out_of_time_order_are_still_the_newest(tmp_path):
    # a clock stepped back stores newer events at lower rowids: the looks from the highest
    # rowid filled the budget with older ones, and the reply came back empty ("truncated")
    big = [_large(make_event(n, project="big"), n) for n in range(12)]  # 12 × 3 MB
    async with running_store(tmp_path) as store:
        await post_now(store, list(reversed(big))).wait()  # the newest stored first
        since = T0 - timedelta(days=1)
        rows, cut = await ask(store, lambda r: LoadRecentEvents(since, "big", "", 100, 8 << 20, r))
        three, more = await ask(store, lambda r: LoadRecentEvents(since, "", "", 3, 1 << 30, r))
    assert [row[0] for row in rows] == [big[11].id, big[10].id]
    assert cut
    assert [row[0] for row in three] == [big[11].id, big[10].id, big[9].id]
    assert more


# cache_bytes=1: the store closes and opens the database again after every batch, as it does
# routinely once DuckDB's cache is full
MOVED_OPTIONS = {"segment_bytes": 4096, "materialize_delay": 0.01, "cache_bytes": 1}


async def test_a_database_deleted_under_the_store_keeps_the_journal_whole(tmp_path, caplog):
    # the materializer went on writing into the deleted file and releasing the journal's
    # segments: the next start found records 1..789 missing, every acknowledged write gone;
    # and a reopen made a new empty file, on which every batch failed and reads hung
    async with running_store(tmp_path, **MOVED_OPTIONS) as store:
        for n in range(40):
            await post_now(store, [make_event(n)]).wait()
        await ask(store, CountRows)  # DuckDB has them: their segments are released
        (tmp_path / "foundry.duckdb").unlink()
        for n in range(40, 80):
            await post_now(store, [make_event(n)]).wait()
            await trio.sleep(0.02)  # a batch each: each would reopen the file
        assert (await ask(store, CountRows)).events == 80  # still the file it opened
    assert "foundry.duckdb was deleted or replaced under the running daemon" in caplog.text
    assert "CatalogException" not in caplog.text
    kept = pending_records(tmp_path / "journal", 0)
    assert {r.seq for r in kept} >= set(range(41, 81))  # every record since the deletion


async def test_a_database_replaced_under_the_store_stays_replaced_through_reopens(tmp_path, caplog):
    # a reopen took the replacement for the file opened first: releases went on, and the
    # next start had 49 of 80 acknowledged events without a word
    async with running_store(tmp_path, **MOVED_OPTIONS) as store:
        for n in range(10):
            await post_now(store, [make_event(n)]).wait()
        await ask(store, CountRows)
    shutil.copy(tmp_path / "foundry.duckdb", tmp_path / "copy.duckdb")
    async with running_store(tmp_path, **MOVED_OPTIONS) as store:
        for n in range(10, 40):
            await post_now(store, [make_event(n)]).wait()
        await ask(store, CountRows)
        os.replace(tmp_path / "copy.duckdb", tmp_path / "foundry.duckdb")
        for n in range(40, 80):
            await post_now(store, [make_event(n)]).wait()
            await trio.sleep(0.02)
        assert (await ask(store, CountRows)).events == 80
    assert "foundry.duckdb was deleted or replaced under the running daemon" in caplog.text
    kept = pending_records(tmp_path / "journal", 0)
    assert {r.seq for r in kept} >= set(range(41, 81))
    # what only the replaced file held is gone with it: the start says so, it does not start
    with pytest.raises(BaseExceptionGroup) as refused:
        async with running_store(tmp_path, **MOVED_OPTIONS):
            pass
    assert refused.group_contains(JournalCorrupt, match="has only up to 10; records 11..")


async def test_a_query_out_of_the_memory_limit_is_resource_exhausted_in_one_log_line(
    tmp_path, caplog
):
    # 30 MB of one run's payloads read at once under an 8 MB limit: a load clients can cause,
    # not a fault (concurrent TapRuns of a large run logged a traceback each)
    run, _ = make_run(1, finished=True)
    events = [RunEventRecord(run.run_id, i + 1, f"s{i}", "step_completed",
                             {"output": str(i) * 3_000_000}, T0) for i in range(10)]  # fmt: skip
    async with running_store(tmp_path) as store:
        await post_now(store, [run, *events]).wait()
    async with running_store(tmp_path, memory_limit="8MB") as store:
        with pytest.raises(ResourceExhausted, match="ran out of its memory limit answering"):
            await ask(store, lambda r: LoadRunEvents(run.run_id, r))
        assert await ask(store, lambda r: LoadRun("run_9", r)) is None  # and it goes on
    assert "ran out of [store] memory_limit" in caplog.text
    assert "Traceback" not in caplog.text


async def test_a_run_larger_than_the_memory_limit_reads_back_in_looks(tmp_path):
    # 400 steps of 100 KB outputs: read at once, DuckDB held a vector's 2,048 rows (here all
    # 40 MB) and every GetRun, TapRun and attest export of the run failed, for good
    run, _ = make_run(1, finished=True)
    events = [RunEventRecord(run.run_id, i + 1, f"s{i}", "step_completed",
                             {"output": f"{i:05d}" * 20_000}, T0) for i in range(400)]  # fmt: skip
    async with running_store(tmp_path) as store:
        await post_now(store, [run, *events]).wait()
    async with running_store(tmp_path, memory_limit="24MB") as store:
        stored, read = await ask(store, lambda r: LoadRun(run.run_id, r))
    assert stored == run
    assert [(e.seq, e.payload["output"][:5]) for e in read] == [
        (i + 1, f"{i:05d}") for i in range(400)
    ]


async def test_a_trace_read_from_the_database_keeps_to_the_trace_limit(tmp_path, monkeypatch):
    """Its size was estimated from payloads and block texts only: 85,000 small events read as
    1.7 MB, and their 38 MB trace was answered whole, where the trace file answered
    RESOURCE_EXHAUSTED. Here: 60 events of ~10-byte payloads against a 10,000-byte limit."""
    from foundry.kernel.actors.store import reads

    monkeypatch.setattr(reads, "check_trace_size", functools.partial(_limited, 10_000))
    root = make_event(0, event_type="burst")
    children = [make_event(n, parent=root, event_type="drop") for n in range(1, 60)]
    chain = FinishedChain(
        workflow_id=root.id, workflow_type=root.event_type, project=root.project,
        throttle=root.throttle, state="completed", error="", started_at=root.occurred_at,
        completed_at=root.occurred_at + timedelta(milliseconds=5), event_count=60,
        block_count=1, trace=None,
    )  # fmt: skip
    async with running_store(tmp_path) as store:
        await post_now(store, [root, *children, make_execution(root, children), chain]).wait()
        with pytest.raises(ResourceExhausted, match=r"over the 10,000"):
            await ask(store, lambda r: LoadTrace(root.id, r))


def _limited(limit: int, size: int, event_id: str) -> None:
    """``trace_format.check_trace_size`` with another limit."""
    if size > limit:
        raise ResourceExhausted(f"the trace of {event_id} is {size:,} bytes, over the {limit:,}")


def test_a_failure_like_the_last_logs_its_traceback_once_a_minute_then_a_count(caplog, monkeypatch):
    # a full disk logged a 25-line traceback for every write that failed: 1,073 in a minute
    from foundry.kernel.actors.store import actor

    now = [1000.0]
    monkeypatch.setattr(actor.time, "monotonic", lambda: now[0])
    failures = actor._FailureLog()
    full = OSError(28, "No space left on device")
    with caplog.at_level("ERROR", logger="foundry.store"):
        for _ in range(500):
            failures.failed(full)
        failures.failed(ValueError("another kind"))  # another kind: its own traceback
        now[0] += 61
        failures.failed(full)
        for _ in range(3):
            failures.failed(full)
        failures.succeeded()  # a commit went through: what no line said yet is counted
        failures.succeeded()  # (once)
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 3
    assert "499 more like it in the last 61 s" in caplog.text
    assert caplog.text.count("3 more commit(s) of an append failed before commits worked") == 1


def test_the_first_error_behind_duckdbs_cannot_rollback_is_the_one_named():
    from foundry.kernel.actors.store import actor

    def rollback_after_a_full_disk() -> None:
        try:
            raise OSError(28, "No space left on device")
        except OSError:
            raise RuntimeError("cannot rollback - no transaction is active") from None

    with pytest.raises(RuntimeError) as raised:
        rollback_after_a_full_disk()
    assert "No space left on device" in str(actor._first_error(raised.value))


def test_an_answer_for_a_write_the_disk_refused_says_why():
    from foundry.kernel.actors.store import actor

    error = actor._client_error(OSError(28, "No space left on device"), "could not commit a write")
    assert str(error) == (
        "the store could not commit a write: No space left on device; the daemon log has the "
        "details"
    )
    # words of the daemon's own (a path) stay in the log
    own = actor._client_error(OSError(2, "segment deleted from /home/x/journal"), "could not")
    assert str(own) == "the store could not; the daemon log has the details"


async def test_a_record_of_many_values_is_encoded_off_the_trio_thread(tmp_path, monkeypatch):
    """A small group someone waits for is encoded on the trio thread (no thread hop on the
    mutator's path), unless a record in it holds many JSON values: a submission of 300,000 keys
    held the loop 0.5 s there. Both are committed."""
    encoded_on: dict[str, str] = {}
    real = store_actor.journal_rows

    def journal_rows(records):
        for record in records:
            if isinstance(record, RunSubmission):
                encoded_on[record.run_id] = threading.current_thread().name
        return real(records)

    monkeypatch.setattr(store_actor, "journal_rows", journal_rows)
    small, _ = make_run(1)
    large = dataclasses.replace(make_run(2)[0], inputs={"x": [None] * 3_000})
    labelled = dataclasses.replace(make_run(3)[0], labels={str(i): "" for i in range(3_000)})
    async with running_store(tmp_path) as store:
        for submission in (small, large, labelled):
            await post_now(store, [submission]).wait()
        loaded = [await ask(store, lambda r, n=n: LoadRun(f"run_{n}", r)) for n in (1, 2, 3)]
    trio_thread = threading.main_thread().name
    assert encoded_on["run_1"] == trio_thread  # (handed to the writer process)
    assert encoded_on["run_2"] != trio_thread
    assert encoded_on["run_3"] != trio_thread
    assert [run is not None for run in loaded] == [True] * 3
    assert tables_record_is_large(large)
    assert tables_record_is_large(labelled)
    assert not tables_record_is_large(small)
    # one long string is as costly to encode as thousands of values: a DAG's text, an output
    assert tables_record_is_large(dataclasses.replace(small, dag_json=" " * 3_000_000))
    assert tables_record_is_large(dataclasses.replace(small, inputs={"x": "y" * 3_000_000}))


def test_a_gate_decision_of_many_values_is_a_large_record():
    """(Its row's JSON made on the trio thread held the loop 0.7 s for 130,000 evals.)"""
    at = datetime(2026, 1, 1, tzinfo=UTC)
    small = GateDecisionRecord("g1", "c", "r", "allow", (), (), {}, {}, {}, "me", at)
    evals = {"failing_metrics": [f"m{i}" for i in range(3_000)]}
    assert not tables_record_is_large(small)
    assert tables_record_is_large(dataclasses.replace(small, scorecard={"evals": evals}))
    assert tables_record_is_large(dataclasses.replace(small, telemetry={"a": [None] * 3_000}))


def test_an_eval_scenario_of_a_long_dag_is_a_large_record():
    at = datetime(2026, 1, 1, tzinfo=UTC)
    small = EvalScenarioRecord("scn_1", "p", "a", "", "", {"dag_json": "{}"}, {"x": 1}, at, at)
    assert not tables_record_is_large(small)
    long_dag = {"dag_json": " " * 3_000_000}
    assert tables_record_is_large(dataclasses.replace(small, run_spec=long_dag))
    assert tables_record_is_large(dataclasses.replace(small, expected={"x": [1] * 3_000}))


async def test_the_store_tells_the_tap_when_its_commits_fail_and_when_they_work_again(
    tmp_path, monkeypatch
):
    """The health service follows this (NOT_SERVING while every write is refused); one bad
    record is not a store that cannot commit, so only the journal's OSErrors count. And the
    store goes on once commits work again."""
    from foundry.kernel.actors.store import journal
    from foundry.kernel.actors.store.messages import CommitHealth

    still_linked = journal._still_linked
    disk_full = [False]

    def linked_unless_full(fd, directory):
        if disk_full[0]:
            raise OSError(28, "No space left on device")
        still_linked(fd, directory)

    monkeypatch.setattr(journal, "_still_linked", linked_unless_full)
    tap_send, tap_receive = trio.open_memory_channel(100)
    store_send, store_receive = trio.open_memory_channel(100)
    with trio.fail_after(GUARD_SECONDS):
        async with trio.open_nursery() as nursery:
            await nursery.start(Store(tmp_path, store_receive, tap_send).run)
            assert await post_now(store_send, [make_event(1)]).wait() is None
            disk_full[0] = True
            for n in (2, 3):  # told once, not per write refused
                with pytest.raises(Unavailable, match="No space left on device"):
                    await post_now(store_send, [make_event(n)]).wait()
            disk_full[0] = False
            assert await post_now(store_send, [make_event(4)]).wait() is None
            # DuckDB still catches up: the flag was first the commit loop's own, and one failed
            # commit stopped the materializer for good (a review)
            assert (await ask(store_send, CountRows)).events == 2
            store_send.close()
    told = []
    while True:
        try:
            told.extend((await tap_receive.receive()).items)
        except trio.EndOfChannel:
            break
    assert [(c.committing, "No space left" in c.reason) for c in told] == [
        (False, True), (True, False)
    ]  # fmt: skip
    assert all(isinstance(c, CommitHealth) for c in told)
