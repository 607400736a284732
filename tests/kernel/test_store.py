"""The store actor on a real DuckDB file: group commit, durable before acks and Watch, recovery."""

import dataclasses
import json
from datetime import UTC, datetime, timedelta

import duckdb
import pytest
import trio
import trio.testing
from foundry.kernel.actors.mailbox import ask, reply_pair
from foundry.kernel.actors.store.actor import Store
from foundry.kernel.actors.store.messages import Append, Read
from foundry.kernel.actors.store.reads import RESTARTED
from foundry.kernel.actors.tap.actor import TapBroker
from foundry.kernel.actors.tap.messages import Publish, Subscribe
from foundry.kernel.config import EngineConfig
from foundry.kernel.core.ids import compact_json, event_id
from foundry.kernel.core.records import Event, ExecutionRecord
from foundry.kernel.core.throttle import Throttle

from .harness import GUARD_SECONDS, running_kernel

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
        trace_id=parent.trace_id if parent else eid,
        payload=payload,
        payload_json=compact_json(payload),
        depth=parent.depth + 1 if parent else 0,
        parent_id=parent.id if parent else "",
        emitted_by="Emitter" if parent else "",
    )


def make_execution(trigger, emitted=()):
    return ExecutionRecord(
        trace_id=trigger.trace_id,
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
    """Rows a separate connection sees: only what was committed."""
    con = duckdb.connect(str(home / "foundry.duckdb"))
    try:
        return count_events(con)
    finally:
        con.close()


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
            with pytest.raises(duckdb.Error):
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


async def test_a_read_runs_a_query_on_the_store_thread(tmp_path):
    store_send, store_receive = trio.open_memory_channel(10)
    tap_send, _tap_receive = trio.open_memory_channel(10)

    def count_by_type(con, event_type):
        return con.execute(
            "SELECT count(*) FROM events WHERE event_type = ?", [event_type]
        ).fetchone()[0]

    def broken(con):
        return con.execute("SELECT nope FROM nowhere").fetchall()

    with trio.fail_after(GUARD_SECONDS):
        async with trio.open_nursery() as nursery:
            await nursery.start(Store(tmp_path, store_receive, tap_send).run)
            await post_now(store_send, [make_event(1), make_event(2, event_type="tock")]).wait()
            ticks = await ask(store_send, lambda r: Read(count_by_type, ("tick",), r))
            with pytest.raises(duckdb.Error):
                await ask(store_send, lambda r: Read(broken, (), r))
            tocks = await ask(store_send, lambda r: Read(count_by_type, ("tock",), r))
            store_send.close()

    assert (ticks, tocks) == (1, 1)


async def start_and_stop_store(home):
    """Run a store until it opens (and recovers), then close it; returns what it recovered."""
    store_send, store_receive = trio.open_memory_channel(10)
    tap_send, _tap_receive = trio.open_memory_channel(10)
    async with trio.open_nursery() as nursery:
        recovered = await nursery.start(Store(home, store_receive, tap_send).run)
        store_send.close()
    return recovered


async def test_a_chain_left_unfinished_is_marked_failed_on_the_next_start(tmp_path):
    root = make_event(0, event_type="deploy_requested")
    child = make_event(1, parent=root, event_type="deploy_started")
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
