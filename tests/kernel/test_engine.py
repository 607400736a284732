"""The engine with a real store and tap broker: throttles, chain order, limits, Status, Trace."""

import hashlib
import json
import sys
import threading
from datetime import datetime
from typing import Any

import pytest
import trio
import trio.testing
from foundry.kernel.actors.engine.messages import GetStatus
from foundry.kernel.actors.mailbox import ask
from foundry.kernel.actors.tap.messages import Overflow
from foundry.kernel.blocks.api import Block, BlockContext, BlockKind, Emission, block
from foundry.kernel.blocks.registry import load_blocks
from foundry.kernel.config import EngineConfig
from foundry.kernel.core.ids import compact_json, is_event_id, occurred_stamp
from foundry.kernel.core.status_query import StatusQuery
from foundry.kernel.core.throttle import Throttle
from foundry.kernel.core.trace_format import id_stamp
from foundry.kernel.core.tracecontext import is_trace_id
from foundry.kernel.errors import NotFound
from foundry.proto import foundry_api

from .harness import GUARD_SECONDS, run_sql, running_kernel

EVENT_KEYS = {
    "id", "event_type", "project", "occurred_at", "recorded_at", "throttle", "trace_id", "payload",
}  # fmt: skip
EXECUTION_KEYS = {
    "block_name", "trigger_event_id", "success", "summary", "emitted_event_ids", "duration_ms",
    "raw_output", "exit_code", "trigger_payload", "emitted_payloads", "audit_artifacts",
}  # fmt: skip


def executions(trace, name):
    return [x for x in trace["block_executions"] if x["block_name"] == name]


def events_of(trace, event_type):
    return [e for e in trace["events"] if e["event_type"] == event_type]


def drain(receive):
    items = []
    while True:
        try:
            items.append(receive.receive_nowait())
        except trio.WouldBlock:
            return items


# --- throttle × kind ------------------------------------------------------------------------


@pytest.mark.parametrize("throttle", list(Throttle))
async def test_an_observer_runs_and_delivers_under_every_throttle(tmp_path, throttle):
    ran = []

    @block("Look", sinks=["go"], kind=BlockKind.OBSERVER)
    def look(ctx):
        ran.append(("Look", ctx.throttle))
        ctx.emit("seen", {"n": 1})

    @block("After", sinks=["seen"])
    def after(ctx):
        ran.append(("After", ctx.throttle, dict(ctx.payload)))

    async with running_kernel(tmp_path, [look, after]) as k:
        emitted = await k.emit("go", throttle=throttle)
        trace = await k.finished(emitted.workflow_id)
        [view] = await k.status(emitted.workflow_id)

    assert ran == [("Look", throttle), ("After", throttle, {"n": 1})]
    [x] = executions(trace, "Look")
    assert (x["state"], x["success"], x["throttled"]) == ("completed", True, False)
    [seen] = events_of(trace, "seen")
    assert seen["throttled"] is False
    assert seen["throttle"] == throttle.value
    assert view.state == "completed"
    assert [(b.name, b.state, b.throttled) for b in view.task_blocks] == [
        ("Look", "completed", False),
        ("After", "completed", False),
    ]


class Deploy(Block):
    """A mutator with a real side effect: it writes a file."""

    name = "Deploy"
    kind = BlockKind.MUTATOR
    sinks = ("go",)

    def __init__(self, target):
        super().__init__()
        self.target = target
        self.calls = []

    async def run(self, ctx):
        self.calls.append("run")
        self.target.write_text("deployed")
        ctx.summary = "deployed"
        ctx.emit("deployed", {"via": "run"})

    async def audit(self, ctx):
        self.calls.append("audit")
        ctx.summary = "would deploy"
        ctx.emit("deployed", {"via": "audit"})

    async def simulate(self, ctx):
        self.calls.append("simulate")
        ctx.emit("deployed", {"via": "simulate"})


def mutator_chain(tmp_path):
    """go → Deploy (mutator) → deployed → Notify (observer), Announce (mutator, writes a file)."""
    deploy = Deploy(tmp_path / "deployed.txt")
    seen = []

    @block("Notify", sinks=["deployed"])
    def notify(ctx):
        seen.append(("Notify", ctx.throttle, ctx.payload["via"]))

    @block("Announce", sinks=["deployed"], kind=BlockKind.MUTATOR)
    def announce(ctx):
        seen.append(("Announce", ctx.throttle, ctx.payload["via"]))
        (tmp_path / "announced.txt").write_text("announced")

    return deploy, seen, [deploy, notify, announce]


async def test_a_mutator_under_full_acts_and_delivers(tmp_path):
    deploy, seen, blocks = mutator_chain(tmp_path)

    async with running_kernel(tmp_path / "home", blocks) as k:
        emitted = await k.emit("go", throttle=Throttle.FULL)
        trace = await k.finished(emitted.workflow_id)

    assert deploy.calls == ["run"]
    assert (tmp_path / "deployed.txt").read_text() == "deployed"
    assert (tmp_path / "announced.txt").exists()
    assert seen == [("Notify", Throttle.FULL, "run"), ("Announce", Throttle.FULL, "run")]
    [x] = executions(trace, "Deploy")
    assert (x["state"], x["success"], x["throttled"]) == ("completed", True, False)


async def test_a_mutator_under_audit_only_only_audits_and_its_events_go_nowhere(tmp_path):
    deploy, seen, blocks = mutator_chain(tmp_path)

    async with running_kernel(tmp_path / "home", blocks) as k:
        watch = await k.watch()
        emitted = await k.emit("go", throttle=Throttle.AUDIT_ONLY)
        trace = await k.finished(emitted.workflow_id)
        [view] = await k.status(emitted.workflow_id)
        watched = drain(watch)

    assert deploy.calls == ["audit"]
    assert not (tmp_path / "deployed.txt").exists()
    assert not (tmp_path / "announced.txt").exists()
    assert seen == []  # nothing downstream ran
    [x] = executions(trace, "Deploy")
    assert (x["state"], x["success"], x["throttled"]) == ("completed", True, True)
    assert x["summary"] == "would deploy"
    assert x["emitted_payloads"] == [{"via": "audit"}]
    [deployed] = events_of(trace, "deployed")
    assert deployed["throttled"] is True
    assert x["emitted_event_ids"] == [deployed["id"]]
    assert [x["block_name"] for x in trace["block_executions"]] == ["Deploy"]
    # recorded, and shown on Watch, but marked throttled
    assert [(e.event_type, e.throttled) for e in watched] == [("go", False), ("deployed", True)]
    assert [(b.name, b.state, b.throttled) for b in view.task_blocks] == [
        ("Deploy", "completed", True)
    ]
    assert view.state == "completed"


async def test_a_mutator_under_dry_run_is_skipped_and_its_simulation_flows_on(tmp_path):
    deploy, seen, blocks = mutator_chain(tmp_path)

    async with running_kernel(tmp_path / "home", blocks) as k:
        emitted = await k.emit("go", throttle=Throttle.DRY_RUN)
        trace = await k.finished(emitted.workflow_id)
        [view] = await k.status(emitted.workflow_id)

    assert deploy.calls == ["simulate"]
    assert not (tmp_path / "deployed.txt").exists()
    # the simulated event reaches the observer, with the throttle inherited ...
    assert seen == [("Notify", Throttle.DRY_RUN, "simulate")]
    # ... so the downstream mutator is skipped too, and its side effect never happens
    assert not (tmp_path / "announced.txt").exists()
    states = {x["block_name"]: (x["state"], x["success"]) for x in trace["block_executions"]}
    assert states == {
        "Deploy": ("skipped", True),
        "Notify": ("completed", True),
        "Announce": ("skipped", True),
    }
    [deployed] = events_of(trace, "deployed")
    assert deployed["throttled"] is False
    assert deployed["throttle"] == "dry_run"
    assert [(b.name, b.state) for b in view.task_blocks] == [
        ("Deploy", "skipped"),
        ("Notify", "completed"),
        ("Announce", "skipped"),
    ]


@pytest.mark.parametrize(
    ("throttle", "delivered"),
    [(Throttle.FULL, True), (Throttle.AUDIT_ONLY, False), (Throttle.DRY_RUN, False)],
)
async def test_the_built_in_greeting_writes_its_file_only_under_full(tmp_path, throttle, delivered):
    registry = load_blocks(entry_points=False)

    async with running_kernel(tmp_path, registry) as k:
        emitted = await k.emit("greet_requested", {"name": "Ada"}, throttle=throttle)
        trace = await k.finished(emitted.workflow_id)

    written = list((tmp_path / "artifacts").rglob("greeting.txt"))
    assert [p.read_text() for p in written] == (["Hello, Ada!\n"] if delivered else [])
    [x] = executions(trace, "Deliver Greeting")
    assert x["audit_artifacts"] == [str(p) for p in written]
    assert [e["event_type"] for e in trace["events"]] == [
        "greet_requested",
        "greeting_composed",
        "greeting_delivered",
    ]


# --- chain order and inheritance -----------------------------------------------------------------


async def test_a_chain_runs_depth_first_in_registration_order(tmp_path):
    order = []

    def recorder(name, emits=()):
        def fn(ctx):
            order.append(f"{name}:{ctx.payload.get('n', '-')}")
            for event_type, n in emits:
                ctx.emit(event_type, {"n": f"{ctx.payload.get('n', '')}{n}"})

        return fn

    blocks = [
        block("A", sinks=["root"])(recorder("A", [("x", 1), ("x", 2)])),
        block("C", sinks=["x"])(recorder("C", [("y", "y")])),
        block("B", sinks=["root"])(recorder("B")),
        block("D", sinks=["x"])(recorder("D")),
        block("E", sinks=["y"])(recorder("E")),
    ]

    async with running_kernel(tmp_path, blocks) as k:
        emitted = await k.emit("root")
        trace = await k.finished(emitted.workflow_id)

    expected = ["A:-", "C:1", "E:1y", "D:1", "C:2", "E:2y", "D:2", "B:-"]
    assert order == expected
    ran = [
        f"{x['block_name']}:{x['trigger_payload'].get('n', '-')}" for x in trace["block_executions"]
    ]
    assert ran == expected


async def test_emitted_events_inherit_throttle_project_and_chain(tmp_path):
    @block("One", sinks=["a"])
    def one(ctx):
        ctx.emit("b", {"k": 1})

    @block("Two", sinks=["b"])
    def two(ctx):
        ctx.emit("c", {"k": 2})

    async with running_kernel(tmp_path, [one, two]) as k:
        emitted = await k.emit("a", project="acme", throttle=Throttle.AUDIT_ONLY)
        trace = await k.finished(emitted.workflow_id)

    root, b, c = trace["events"]
    assert [e["event_type"] for e in (root, b, c)] == ["a", "b", "c"]
    for event in (root, b, c):
        assert event["project"] == "acme"
        assert event["throttle"] == "audit_only"
        assert event["trace_id"] == root["trace_id"]  # one W3C trace per chain
    assert is_trace_id(root["trace_id"])
    assert (b["parent_id"], b["emitted_by"], b["depth"]) == (root["id"], "One", 1)
    assert (c["parent_id"], c["emitted_by"], c["depth"]) == (b["id"], "Two", 2)


async def test_every_event_id_follows_the_recipe(tmp_path):
    @block("One", sinks=["a"])
    def one(ctx):
        ctx.emit("b", {"z": [1, 2], "a": "é"})

    async with running_kernel(tmp_path, [one]) as k:
        emitted = await k.emit("a", {"y": 2, "x": 1}, project="acme")
        trace = await k.finished(emitted.workflow_id)

    assert emitted.event_id == emitted.workflow_id
    assert emitted.event_id == trace["events"][0]["id"]
    for event in trace["events"]:
        assert event["occurred_at"].endswith("Z")  # the trace file's form, as upstream's
        stamp = id_stamp(event["occurred_at"])  # the text its id hashed: the same digits
        assert stamp == occurred_stamp(datetime.fromisoformat(stamp))  # UTC, chrono AutoSi
        assert stamp.endswith("+00:00")
        material = (  # upstream's: raw UTF-8 ("é", not "\\u00e9"); see tests/kernel/test_ids.py
            event["event_type"] + event["project"] + stamp
            + json.dumps(event["payload"], separators=(",", ":"), sort_keys=True,
                         ensure_ascii=False)
        )  # fmt: skip
        digest = hashlib.sha256(material.encode()).hexdigest()[:24]
        assert event["id"] == "evt_" + digest


async def test_separate_chains_run_concurrently(tmp_path):
    release = trio.Event()
    started = trio.Event()

    @block("Waits", sinks=["slow"])
    async def waits(ctx):
        started.set()
        await release.wait()

    @block("Quick", sinks=["fast"])
    def quick(ctx):
        return "done"

    async with running_kernel(tmp_path, [waits, quick]) as k:
        slow = await k.emit("slow")
        await started.wait()
        fast = await k.emit("fast")
        fast_trace = await k.finished(fast.workflow_id)
        assert await k.trace(slow.workflow_id) is None
        release.set()
        slow_trace = await k.finished(slow.workflow_id)

    assert fast_trace["state"] == "completed"
    assert slow_trace["state"] == "completed"


# --- failures, retries, timeouts, limits ---------------------------------------------------------


async def test_a_failing_block_fails_the_workflow_but_its_siblings_still_run(tmp_path):
    ran = []

    @block("Breaks", sinks=["go"])
    def breaks(ctx):
        ran.append("Breaks")
        ctx.emit("never", {})
        raise RuntimeError("disk on fire")

    @block("Sibling", sinks=["go"])
    def sibling(ctx):
        ran.append("Sibling")

    @block("Never", sinks=["never"])
    def never(ctx):
        ran.append("Never")

    async with running_kernel(tmp_path, [breaks, sibling, never]) as k:
        emitted = await k.emit("go")
        trace = await k.finished(emitted.workflow_id)
        [view] = await k.status(emitted.workflow_id)

    assert ran == ["Breaks", "Sibling"]
    [bad] = executions(trace, "Breaks")
    assert bad["success"] is False
    assert bad["state"] == "failed"
    assert "disk on fire" in bad["summary"]
    assert bad["emitted_event_ids"] == []
    [good] = executions(trace, "Sibling")
    assert good["success"] is True
    assert trace["state"] == "failed"
    assert view.state == "failed"
    assert "Breaks" in view.error
    assert "disk on fire" in view.error
    assert [(b.name, b.state) for b in view.task_blocks] == [
        ("Breaks", "failed"),
        ("Sibling", "completed"),
    ]


async def test_a_block_that_fails_twice_succeeds_on_its_third_attempt(tmp_path):
    attempts = []

    @block("Flaky", sinks=["go"], retries=2, backoff=0)
    def flaky(ctx):
        attempts.append(ctx.attempt)
        ctx.emit("tried", {"attempt": ctx.attempt})
        if ctx.attempt < 3:
            raise RuntimeError(f"attempt {ctx.attempt}")

    async with running_kernel(tmp_path, [flaky]) as k:
        emitted = await k.emit("go")
        trace = await k.finished(emitted.workflow_id)

    assert attempts == [1, 2, 3]
    [x] = executions(trace, "Flaky")
    assert (x["success"], x["attempts"], x["state"]) == (True, 3, "completed")
    assert x["emitted_payloads"] == [{"attempt": 3}]  # failed attempts' emissions never leak
    assert trace["state"] == "completed"


async def test_a_block_that_runs_too_long_times_out(tmp_path):
    @block("Hangs", sinks=["go"], timeout=0.05)
    async def hangs(ctx):
        await trio.sleep_forever()

    async with running_kernel(tmp_path, [hangs]) as k:
        emitted = await k.emit("go")
        trace = await k.finished(emitted.workflow_id)

    [x] = executions(trace, "Hangs")
    assert x["success"] is False
    assert "timed out" in x["summary"]
    assert trace["state"] == "failed"
    assert "timed out" in trace["error"]


async def test_a_self_emitting_loop_hits_the_depth_limit_and_stops(tmp_path):
    @block("Loop", sinks=["tick"])
    def loop(ctx):
        ctx.emit("tick", {"n": ctx.payload.get("n", 0) + 1})

    @block("Later", sinks=["tick"])
    def later(ctx):
        pass

    async with running_kernel(tmp_path, [loop, later], engine=EngineConfig(max_chain_depth=3)) as k:
        emitted = await k.emit("tick")
        trace = await k.finished(emitted.workflow_id)
        [view] = await k.status(emitted.workflow_id)
        stored = await k.query(
            "SELECT count(*) FROM events WHERE workflow_id = ?", emitted.event_id
        )
        stored_later = await k.query(
            "SELECT state FROM block_executions WHERE workflow_id = ? AND block_name = 'Later' "
            "ORDER BY started_at", emitted.event_id,
        )  # fmt: skip

    assert view.state == "failed"
    assert "chain depth limit 3" in view.error
    # Later on each tick: the chain stopped before its turn. Status showed them skipped;
    # Trace, the trace file and the store had no record of it (Status lost it once read back)
    later_states = [x["state"] for x in executions(trace, "Later")]
    assert later_states == ["skipped"] * 4  # depth-first: each tick's Loop went deeper first
    assert [b.state for b in view.task_blocks if b.name == "Later"] == later_states
    assert [state for (state,) in stored_later] == later_states
    assert trace["state"] == "failed"
    assert "depth limit" in trace["error"]
    # depths 0..3 each ran Loop once; the event at depth 4 was recorded but not processed
    assert len(executions(trace, "Loop")) == 4
    assert [e["depth"] for e in trace["events"]] == [0, 1, 2, 3, 4]
    assert stored == [(5,)]


async def test_a_fan_out_hits_the_event_limit(tmp_path):
    @block("Spray", sinks=["go"])
    def spray(ctx):
        for i in range(10):
            ctx.emit("drop", {"i": i})

    @block("Catch", sinks=["drop"])
    def catch(ctx):
        pass

    limits = EngineConfig(max_chain_events=5)
    async with running_kernel(tmp_path, [spray, catch], engine=limits) as k:
        emitted = await k.emit("go")
        trace = await k.finished(emitted.workflow_id)

    assert trace["state"] == "failed"
    assert "event limit 5" in trace["error"]
    assert executions(trace, "Catch") == []


async def test_a_block_whose_payload_filter_raises_fails_its_workflow_not_the_engine(tmp_path):
    def picky(payload):
        raise KeyError("wanted")

    @block("Picky", sinks=["go"], accepts=picky)
    def never_runs(ctx):
        raise AssertionError("must not run")

    @block("Fine", sinks=["go"])
    def fine(ctx):
        return "ok"

    async with running_kernel(tmp_path, [never_runs, fine]) as k:
        first = await k.emit("go")
        trace = await k.finished(first.workflow_id)
        # the engine is still serving
        second = await k.emit("go")
        await k.finished(second.workflow_id)

    assert trace["state"] == "failed"
    assert "Picky" in trace["error"]
    [x] = executions(trace, "Picky")
    assert x["success"] is False
    assert "wanted" in x["summary"]
    assert executions(trace, "Fine")[0]["success"] is True


async def test_a_non_json_emission_fails_the_block(tmp_path):
    @block("Weird", sinks=["go"])
    def weird(ctx):
        ctx.emit("out", {"when": object()})

    async with running_kernel(tmp_path, [weird]) as k:
        emitted = await k.emit("go")
        trace = await k.finished(emitted.workflow_id)

    [x] = executions(trace, "Weird")
    assert x["success"] is False
    assert "not JSON" in x["summary"]
    assert [e["event_type"] for e in trace["events"]] == ["go"]


# --- Status and Trace ------------------------------------------------------------------------


async def test_status_shows_running_then_completed_and_trace_waits_for_the_end(tmp_path):
    started, release = trio.Event(), trio.Event()

    @block("Slow", sinks=["go"])
    async def slow(ctx):
        started.set()
        await release.wait()

    @block("Next", sinks=["go"])
    def after(ctx):
        pass

    async with running_kernel(tmp_path, [slow, after]) as k:
        emitted = await k.emit("go", project="acme")
        await started.wait()
        [running] = await k.status(emitted.workflow_id)
        assert await k.trace(emitted.workflow_id) is None
        listed = await k.status()
        release.set()
        trace = await k.finished(emitted.workflow_id)
        [done] = await k.status(emitted.workflow_id)

    assert (running.state, running.completed_at, running.error) == ("running", "", "")
    assert (running.workflow_id, running.workflow_type, running.project) == (
        emitted.workflow_id,
        "go",
        "acme",
    )
    assert [(b.name, b.state) for b in running.task_blocks] == [
        ("Slow", "running"),
        ("Next", "pending"),
    ]
    assert running.task_blocks[0].started_at
    assert not running.task_blocks[0].completed_at
    assert [w.workflow_id for w in listed] == [emitted.workflow_id]
    assert done.state == "completed"
    assert done.completed_at
    assert done.completed_at >= done.started_at
    assert all(b.state == "completed" and b.completed_at for b in done.task_blocks)
    assert trace["state"] == "completed"


async def test_status_lists_blocks_in_the_order_they_ran_from_memory_and_from_the_database(
    tmp_path,
):
    # From memory they came in walk order (Mut, Obs on go, Obs on mutated), from the database
    # by start (Obs on mutated ran first, depth first): a client pairing them by position got
    # two answers for one workflow
    @block("Mut", sinks=["go"])
    def mut(ctx):
        ctx.emit("mutated", {})

    @block("Obs", sinks=["go", "mutated"])
    def obs(ctx):
        return ctx.event_type

    async with running_kernel(tmp_path, [mut, obs], engine=EngineConfig(recent_workflows=1)) as k:
        first = await k.emit("go")
        await k.finished(first.workflow_id)
        [in_memory] = await k.status(first.workflow_id)
        second = await k.emit("go")
        await k.finished(second.workflow_id)
        [stored] = await k.status(first.workflow_id)  # evicted: read from the database

    def runs(view):
        return [(b.name, b.started_at) for b in view.task_blocks]

    assert runs(in_memory) == runs(stored)
    assert [b.started_at for b in stored.task_blocks] == sorted(
        b.started_at for b in stored.task_blocks
    )
    assert len(stored.task_blocks) == 3


async def test_status_shows_pending_until_the_root_is_durable(tmp_path):
    @block("Any", sinks=["go"])
    def any_block(ctx):
        pass

    stalled, gate = trio.Event(), threading.Event()
    token = trio.lowlevel.current_trio_token()

    def stall(work):
        # runs on the store's journal thread: hold the first commit until the test opens the gate
        if work == "commit" and not stalled.is_set():
            trio.from_thread.run_sync(stalled.set, trio_token=token)
            gate.wait(GUARD_SECONDS)

    emitted = []
    answered = trio.Event()

    async def emit(k):
        emitted.append(await k.emit("go"))
        answered.set()

    async with (
        running_kernel(tmp_path, [any_block], hold_store=stall) as k,
        trio.open_nursery() as nursery,
    ):
        try:
            nursery.start_soon(emit, k)
            await stalled.wait()  # the root's commit is held
            await trio.testing.wait_all_tasks_blocked()
            [pending] = await k.status()
            assert pending.state == "pending"
            assert pending.task_blocks == ()
            assert emitted == []  # Emit answers only once the root is durable
        finally:
            gate.set()
        await answered.wait()
        assert emitted[0].workflow_id == pending.workflow_id
        trace = await k.finished(pending.workflow_id)

    assert trace["state"] == "completed"


async def test_no_sink_means_no_workflow(tmp_path):
    @block("Other", sinks=["other"])
    def other(ctx):
        pass

    async with running_kernel(tmp_path, [other]) as k:
        watch = await k.watch()
        emitted = await k.emit("nobody_listens", {"a": 1})
        listed = await k.status()
        trace = await k.trace(emitted.event_id)
        with pytest.raises(NotFound):
            await k.status(emitted.event_id)
        watched = await watch.receive()

    assert emitted.workflow_id == ""
    assert is_event_id(emitted.event_id)
    assert listed == []
    assert watched.id == emitted.event_id
    assert [e["id"] for e in trace["events"]] == [emitted.event_id]
    assert trace["block_executions"] == []
    # no workflow, no trace file (Trace found it in the database), even after the store closed
    assert list(tmp_path.glob(f"traces/*/{emitted.event_id}.json")) == []


async def test_status_of_an_unknown_workflow_is_not_found(tmp_path):
    async with running_kernel(tmp_path, []) as k:
        with pytest.raises(NotFound, match="evt_"):
            await k.status("evt_" + "0" * 24)
        assert await k.trace("evt_" + "0" * 24) is None
        assert await k.trace("not-an-id") is None


async def test_the_trace_file_has_the_public_daemons_layout(tmp_path):
    registry = load_blocks(entry_points=False)

    async with running_kernel(tmp_path, registry) as k:
        emitted = await k.emit("greet_requested", {"name": "Ada"}, project="acme")
        trace = await k.finished(emitted.workflow_id)

    day = trace["events"][0]["occurred_at"][:10]
    path = tmp_path / "traces" / day / f"{emitted.workflow_id}.json"
    on_disk = json.loads(path.read_text())
    assert on_disk == json.loads(json.dumps(trace, default=str))
    assert {"events", "block_executions", "total_duration_ms"} <= set(on_disk)
    assert isinstance(on_disk["total_duration_ms"], int)
    assert on_disk["total_duration_ms"] >= 0
    assert len(on_disk["events"]) == 3
    assert len(on_disk["block_executions"]) == 2
    for event in on_disk["events"]:
        assert set(event) >= EVENT_KEYS
        assert event["throttle"] == "full"
        assert event["trace_id"] == on_disk["events"][0]["trace_id"]
    for execution in on_disk["block_executions"]:
        assert set(execution) >= EXECUTION_KEYS
    compose, deliver = on_disk["block_executions"]
    assert compose["trigger_payload"] == {"name": "Ada"}
    assert compose["emitted_payloads"] == [{"name": "Ada", "greeting": "Hello, Ada!"}]
    assert compose["emitted_event_ids"] == [on_disk["events"][1]["id"]]
    assert deliver["trigger_event_id"] == on_disk["events"][1]["id"]
    assert deliver["audit_artifacts"][0].endswith("greeting.txt")


async def test_finished_workflows_outlive_the_recent_list(tmp_path):
    @block("Only", sinks=["go"])
    def only(ctx):
        ctx.emit("gone", {})

    async with running_kernel(tmp_path, [only], engine=EngineConfig(recent_workflows=1)) as k:
        first = await k.emit("go", {"n": 1})
        first_trace = await k.finished(first.workflow_id)
        second = await k.emit("go", {"n": 2})
        await k.finished(second.workflow_id)
        listed = await k.status()
        # evicted from memory: Status reads the store, Trace reads the file
        [stored] = await k.status(first.workflow_id)
        from_disk = await k.trace(first.workflow_id)

    # newest first; the evicted one is listed from the store
    assert [w.workflow_id for w in listed] == [second.workflow_id, first.workflow_id]
    assert (stored.workflow_id, stored.workflow_type, stored.state) == (
        first.workflow_id,
        "go",
        "completed",
    )
    assert stored.completed_at
    assert [(b.name, b.state) for b in stored.task_blocks] == [("Only", "completed")]
    assert from_disk == json.loads(json.dumps(first_trace, default=str))


async def _trace_files(home, workflow_id):
    """The chain's trace file, once the archivist has written it."""
    while True:
        if paths := list((home / "traces").glob(f"*/{workflow_id}.json")):
            return paths
        await trio.sleep(0.005)  # noqa: ASYNC110 - a file, not an event, is waited for


async def test_a_trace_rebuilt_from_the_database_is_the_trace_file(tmp_path):
    # Trace of a chain evicted from memory whose file is not written yet (the archivist is
    # behind) comes from the database: the same document, ``Z`` times included (it was
    # ``+00:00`` there, so Trace's answer depended on the archivist's pace).
    @block("Only", sinks=["go"])
    def only(ctx):
        ctx.emit("gone", {"n": ctx.payload["n"]})

    async with running_kernel(tmp_path, [only], engine=EngineConfig(recent_workflows=1)) as k:
        first = await k.emit("go", {"n": 1})
        await k.finished(first.workflow_id)
        second = await k.emit("go", {"n": 2})
        await k.finished(second.workflow_id)
        with trio.fail_after(10):  # the archivist writes it after the commit
            paths = await _trace_files(tmp_path, first.workflow_id)
        from_file = await k.trace(first.workflow_id)
        paths[0].unlink()
        from_database = await k.trace(first.workflow_id)

    assert from_file is not None
    assert from_database == from_file
    assert from_database["events"][0]["occurred_at"].endswith("Z")


async def test_a_trace_file_a_crash_cut_short_is_read_from_the_database(tmp_path):
    @block("Only", sinks=["go"])
    def only(ctx):
        ctx.emit("gone", {"n": ctx.payload["n"]})

    async with running_kernel(tmp_path, [only]) as k:
        emitted = await k.emit("go", {"n": 1})
        first_trace = await k.finished(emitted.workflow_id)
    [path] = (tmp_path / "traces").glob(f"*/{emitted.workflow_id}.json")
    path.write_bytes(path.read_bytes()[:40])  # as if the archivist had died mid-write

    async with running_kernel(tmp_path, [only]) as k:
        from_database = await k.trace(emitted.workflow_id)

    assert from_database is not None
    assert [e["id"] for e in from_database["events"]] == [e["id"] for e in first_trace["events"]]
    assert from_database["events"][1]["payload"] == {"n": 1}
    assert from_database["state"] == "completed"


async def test_watch_sees_every_event_in_order_filtered_by_project(tmp_path):
    @block("Echo", sinks=["ping"])
    def echo(ctx):
        ctx.emit("pong", {"n": ctx.payload["n"]})

    async with running_kernel(tmp_path, [echo]) as k:
        everything = await k.watch()
        only_a = await k.watch("a")
        first = await k.emit("ping", {"n": 1}, project="a")
        second = await k.emit("ping", {"n": 2}, project="b")
        await k.finished(first.workflow_id)
        await k.finished(second.workflow_id)
        all_items, a_items = drain(everything), drain(only_a)

    assert not any(isinstance(i, Overflow) for i in all_items)
    assert sorted((e.project, e.event_type) for e in all_items) == [
        ("a", "ping"),
        ("a", "pong"),
        ("b", "ping"),
        ("b", "pong"),
    ]
    assert [(e.event_type, e.payload) for e in a_items] == [("ping", {"n": 1}), ("pong", {"n": 1})]
    assert a_items[1].payload_json == compact_json({"n": 1})


async def test_a_workflow_no_block_accepted_stays_findable_after_eviction(tmp_path):
    @block("High Only", sinks=["alert"], accepts=lambda p: p.get("severity") == "high")
    def high_only(ctx):
        pass

    async with running_kernel(tmp_path, [high_only], engine=EngineConfig(recent_workflows=1)) as k:
        low = await k.emit("alert", {"severity": "low"})
        await k.finished(low.workflow_id)
        other = await k.emit("alert", {"severity": "high"})
        await k.finished(other.workflow_id)
        [view] = await k.status(low.workflow_id)

    assert low.workflow_id == low.event_id
    assert (view.workflow_id, view.state, view.task_blocks) == (low.workflow_id, "completed", ())


@pytest.mark.parametrize(
    "bad", [float("nan"), float("inf"), "\ud800"], ids=["nan", "infinity", "lone-surrogate"]
)
async def test_an_emission_that_is_not_strict_json_fails_the_block(tmp_path, bad):
    @block("Sloppy", sinks=["go"])
    def sloppy(ctx):
        ctx.emit("out", {"value": bad})

    @block("Downstream", sinks=["out"], kind=BlockKind.MUTATOR)
    def downstream(ctx):
        raise AssertionError("must not run")

    async with running_kernel(tmp_path, [sloppy, downstream]) as k:
        emitted = await k.emit("go")
        trace = await k.finished(emitted.workflow_id)
        stored = await k.query(
            "SELECT event_type FROM events WHERE workflow_id = ?", emitted.event_id
        )

    [x] = executions(trace, "Sloppy")
    assert x["success"] is False
    assert "not JSON" in x["summary"]
    assert stored == [("go",)]
    assert trace["state"] == "failed"


class _Boom(BaseException):
    """A plugin's own BaseException (not an Exception)."""


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text")


def _exits() -> None:
    sys.exit(3)


def _interrupts() -> None:
    raise KeyboardInterrupt


def _booms() -> None:
    raise _Boom("boom")


def _unprintable() -> None:
    raise _Unprintable


@pytest.mark.parametrize(
    ("raise_it", "said"),
    [
        (_exits, "SystemExit: 3"),
        (_interrupts, "KeyboardInterrupt"),
        (_booms, "_Boom: boom"),
        (_unprintable, "_Unprintable: <str() raised RuntimeError>"),
    ],
    ids=["sys.exit", "KeyboardInterrupt", "own-BaseException", "str-raises"],
)
@pytest.mark.parametrize("kind", ["sync", "async", "accepts"])
async def test_whatever_a_block_raises_fails_its_execution_not_the_engine(
    tmp_path, raise_it, said, kind
):
    # sys.exit() in one plugin block took the whole daemon down (only Exception was caught).
    def accepts(payload):
        raise_it()

    if kind == "sync":

        @block("Bad", sinks=["go"])
        def bad(ctx):
            raise_it()

    elif kind == "async":

        @block("Bad", sinks=["go"])
        async def bad(ctx):
            await trio.lowlevel.checkpoint()
            raise_it()

    else:

        @block("Bad", sinks=["go"], accepts=accepts)
        def bad(ctx):
            pass

    @block("Sibling", sinks=["go"])
    def sibling(ctx):
        pass

    async with running_kernel(tmp_path, [bad, sibling]) as k:
        emitted = await k.emit("go")
        trace = await k.finished(emitted.workflow_id)
        [view] = await k.status(emitted.workflow_id)
        again = await k.emit("go")  # the engine is still there
        await k.finished(again.workflow_id)

    [x] = executions(trace, "Bad")
    assert x["success"] is False
    assert said in x["summary"]
    assert [(b.name, b.state) for b in view.task_blocks] == [
        ("Bad", "failed"), ("Sibling", "completed")
    ]  # fmt: skip
    assert trace["state"] == "failed"


@pytest.mark.parametrize(
    ("emit", "said"),
    [
        (lambda ctx: ctx.emit("out", {"v": 10**400}), "not JSON: OverflowError"),
        (lambda ctx: setattr(ctx, "summary", {"a": 1}), "ctx.summary must be a str, not dict"),
        # these broke the chain's trace, or failed the workflow without recording the execution
        (lambda ctx: setattr(ctx, "raw_output", b"out"), "ctx.raw_output must be a str, not bytes"),
        (lambda ctx: setattr(ctx, "exit_code", 1.5), "ctx.exit_code must be an int, not float"),
        (lambda ctx: ctx.artifacts_written.append(7), "ctx.artifacts_written must be a list"),
        (lambda ctx: ctx.emissions.append(Emission(7, {})), "emission's event type must be a"),
        (lambda ctx: ctx.emissions.append(Emission("t" * 257, {})), "longer than 256 characters"),
        # its folder moved: the daemon listed (and signed) any folder's files as its artifacts
        (lambda ctx: setattr(ctx, "artifact_dir", "/etc"), "ctx.artifact_dir is the folder the"),
    ],
    ids=[
        "int-too-large",
        "summary-not-text",
        "raw-bytes",
        "exit-float",
        "artifact-int",
        "emission-int-type",
        "emission-long-type",
        "artifact-folder-moved",
    ],  # fmt: skip
)
async def test_a_block_result_the_store_cannot_take_fails_that_block_and_its_siblings_run(
    tmp_path, emit, said
):
    # These stopped the whole chain ("stopped: OverflowError ..."), naming no block, the
    # sibling skipped and the block left "running".
    @block("Odd", sinks=["go"])
    def odd(ctx):
        emit(ctx)

    @block("Sibling", sinks=["go"])
    def sibling(ctx):
        pass

    async with running_kernel(tmp_path, [odd, sibling]) as k:
        emitted = await k.emit("go")
        trace = await k.finished(emitted.workflow_id)
        [view] = await k.status(emitted.workflow_id)

    [x] = executions(trace, "Odd")
    assert x["success"] is False
    assert said in x["summary"]
    assert [(b.name, b.state) for b in view.task_blocks] == [
        ("Odd", "failed"), ("Sibling", "completed")
    ]  # fmt: skip
    assert "Odd" in view.error


class _Text(str):
    def __str__(self) -> str:
        return "not what was set"


async def test_text_of_a_str_subclass_is_recorded_as_plain_text(tmp_path):
    """marshal (the trace's rows) refuses a str subclass: a block that set one as its summary
    failed its chain's whole commit (Emit answered INTERNAL; a mutator's run went unrecorded)."""

    @block("Labelled", sinks=["go"])
    def labelled(ctx):
        ctx.summary = _Text("labelled")
        ctx.raw_output = _Text("said")
        ctx.emit(_Text("out"), {"n": 1})

    async with running_kernel(tmp_path, [labelled]) as k:
        emitted = await k.emit("go")
        trace = await k.finished(emitted.workflow_id)
        again = await k.trace(emitted.workflow_id)  # read back from the store too

    for got in (trace, again):
        [x] = executions(got, "Labelled")
        assert x["success"] is True
        assert x["summary"] == "labelled"
        assert [e["event_type"] for e in got["events"]] == ["go", "out"]


async def test_a_block_cannot_change_what_it_declared_once_registered(tmp_path):
    # one that renamed itself in run() was recorded in traces under a built-in's name, while
    # Status showed its own (a plugin hunt); a mutator could have made itself an observer
    class Renamer(Block):
        name = "Renamer"
        kind = BlockKind.MUTATOR
        sinks = ("go",)

        async def run(self, ctx):
            self.name = "Compose Greeting"

    class Demoter(Block):
        name = "Demoter"
        kind = BlockKind.MUTATOR
        sinks = ("go",)

        async def run(self, ctx):
            self.kind = BlockKind.OBSERVER

    async with running_kernel(tmp_path, [Renamer(), Demoter()]) as k:
        emitted = await k.emit("go")
        trace = await k.finished(emitted.workflow_id)
        [view] = await k.status(emitted.workflow_id)

    for name, field in (("Renamer", "name"), ("Demoter", "kind")):
        [x] = executions(trace, name)
        assert x["success"] is False
        assert (
            f"block {name!r}: its {field} is fixed once the daemon registered it" in (x["summary"])
        )
    assert sorted(b.name for b in view.task_blocks) == ["Demoter", "Renamer"]


async def test_a_function_block_that_returns_an_awaitable_runs_every_time(tmp_path):
    # a lambda around a coroutine function: the kernel awaits it from the first call on —
    # which broke once a registered block's declaration was fixed (a review)
    async def work(ctx):
        await trio.lowlevel.checkpoint()
        return {"ok": True}

    lazy = block("Lazy", sinks=["go"])(lambda ctx: work(ctx))
    async with running_kernel(tmp_path, [lazy]) as k:
        for _ in range(2):
            emitted = await k.emit("go")
            [x] = executions(await k.finished(emitted.workflow_id), "Lazy")
            assert x["success"] is True, x["summary"]


async def test_a_command_that_wrote_nothing_leaves_no_empty_folder(tmp_path):
    # every shell execution left artifacts/WORKFLOW_ID/ (and its own folder) behind, empty
    @block("Quiet", sinks=["go"])
    async def quiet(ctx):
        await ctx.run_command(["true"])

    @block("Writes", sinks=["write"])
    async def writes(ctx):
        folder = str(ctx.artifact_dir)
        await ctx.run_command(["sh", "-c", 'echo hi > "$FOLDER/out.txt"'], env={"FOLDER": folder})

    async with running_kernel(tmp_path, [quiet, writes]) as k:
        silent = await k.emit("go")
        await k.finished(silent.workflow_id)
        wrote = await k.emit("write")
        trace = await k.finished(wrote.workflow_id)

    assert not (tmp_path / "artifacts" / silent.workflow_id).exists()
    [x] = executions(trace, "Writes")
    [path] = x["audit_artifacts"]
    assert await trio.Path(path).read_text() == "hi\n"


async def test_a_blocks_own_summary_is_kept_to_its_ends(tmp_path):
    # a 50 MB summary was stored whole, in the trace file too (Trace: RESOURCE_EXHAUSTED)
    @block("Wordy", sinks=["go"])
    def wordy(ctx):
        ctx.summary = "start " + "x" * 5_000_000 + " end"

    async with running_kernel(tmp_path, [wordy]) as k:
        emitted = await k.emit("go")
        trace = await k.finished(emitted.workflow_id)
        again = await k.trace(emitted.workflow_id)

    for got in (trace, again):
        [x] = executions(got, "Wordy")
        assert x["success"] is True
        assert len(x["summary"]) < 2_100
        assert x["summary"].startswith("start xxx")
        assert x["summary"].endswith("xxx end")
        assert "(4,998,010 characters cut)" in x["summary"]


async def test_an_emission_larger_than_a_client_may_emit_fails_its_block(tmp_path):
    # a 6 MB emission ended every default gRPC client's Watch (4 MiB messages)
    @block("Big", sinks=["go"])
    def big(ctx):
        ctx.emit("small", {"n": 1})
        ctx.emit("huge", {"blob": "é" * 600})  # 600 characters, 1,200 bytes

    limits = EngineConfig(max_event_bytes=1_000)
    async with running_kernel(tmp_path, [big], engine=limits) as k:
        emitted = await k.emit("go")
        trace = await k.finished(emitted.workflow_id)

    [x] = executions(trace, "Big")
    assert x["success"] is False
    said = "emitted a 'huge' payload of 1,211 bytes of JSON, past [engine] max_event_bytes (1,000)"
    assert said in x["summary"]
    assert [e["event_type"] for e in trace["events"]] == ["go"]  # neither emission is stored


async def test_an_emission_too_deep_to_encode_fails_naming_the_depth_limit(tmp_path):
    """One ~1,000 levels deep failed as "not JSON: RecursionError: maximum recursion depth
    exceeded while encoding a JSON object" (128 levels named the limit)."""

    def nested(levels: int) -> dict[str, Any]:
        payload: dict[str, Any] = {}
        for _ in range(levels):
            payload = {"a": payload}
        return payload

    @block("Deep", sinks=["go"])
    def deep(ctx):
        ctx.emit("deep_child", nested(ctx.payload["levels"]))

    async with running_kernel(tmp_path, [deep]) as k:
        for levels in (128, 1_200, 50_000):
            emitted = await k.emit("go", {"levels": levels})
            [x] = executions(await k.finished(emitted.workflow_id), "Deep")
            assert "payload nested deeper than 127 levels" in x["summary"], (levels, x["summary"])


def test_a_payload_that_is_not_an_object_is_refused_by_emit(tmp_path):
    """0, "", [] and False were emitted as {}, [("a", 1)] as {"a": 1}, and [1, 2] failed as
    "cannot convert dictionary update sequence element #0 to a sequence"."""
    ctx = BlockContext(payload={}, artifact_dir=tmp_path / "art")
    for payload in (0, "", [], False, [("a", 1)], [1, 2], "hello"):
        with pytest.raises(TypeError, match="emit: payload must be a JSON object"):
            ctx.emit("child", payload)  # type: ignore[arg-type]
    ctx.emit("child")
    ctx.emit("child", {"a": 1})
    assert [e.payload for e in ctx.emissions] == [{}, {"a": 1}]


def test_an_emission_at_the_limit_fits_a_default_clients_watch_message():
    # the limit applied to the payload alone let a WatchResponse pass 4 MiB by 183 bytes
    longest = "x" * 256  # ids, types and projects are at most 256 characters
    response = foundry_api.WatchResponse(
        event_id=longest, event_type=longest, project=longest, workflow_id=longest,
        payload_json="x" * EngineConfig().max_event_bytes, trace_id="0" * 32,
        span_id="0" * 16, parent_span_id="0" * 16, occurred_at="2026-12-05T10:00:00.123456+00:00",
        throttle=foundry_api.Throttle.DRY_RUN, throttled=True,
    )  # fmt: skip
    assert len(bytes(response)) <= 4 * 1024 * 1024


async def test_a_block_emitting_past_the_event_budget_stores_none_of_them(tmp_path):
    # The budget was checked once every emission was made an event and queued: a block that
    # emitted 30,000 with a budget of 10,000 had all 30,000 stored.
    @block("Flood", sinks=["go"])
    def flood(ctx):
        for i in range(500):
            ctx.emit("drop", {"i": i})

    @block("Catch", sinks=["drop"])
    def catch(ctx):
        raise AssertionError("must not run")

    async with running_kernel(
        tmp_path, [flood, catch], engine=EngineConfig(max_chain_events=50)
    ) as k:
        emitted = await k.emit("go")
        trace = await k.finished(emitted.workflow_id)
        stored = await k.query(
            "SELECT count(*) FROM events WHERE workflow_id = ?", emitted.event_id
        )

    [x] = executions(trace, "Flood")
    assert x["success"] is False
    assert "emitted 500 events, past the chain event limit 50" in x["summary"]
    # (50 emitted of 50 read like an off-by-one: the root counts)
    assert "the chain holds 1 already, its root included, room for 49" in x["summary"]
    assert stored == [(1,)]
    assert trace["state"] == "failed"


async def test_undecodable_text_from_a_block_is_stored_escaped(tmp_path):
    undecodable = b"report-\xff.txt".decode("utf-8", "surrogateescape")  # as os.listdir gives it

    @block("Lister", sinks=["go"])
    def lister(ctx):
        ctx.summary = f"found {undecodable}"  # not UTF-8 as it is: the store could not hold it

    @block("Namer", sinks=["go"])
    def namer(ctx):
        ctx.emit(f"listed-{undecodable}", {"count": 1})  # an event type nobody could store

    async with running_kernel(tmp_path, [lister, namer]) as k:
        emitted = await k.emit("go")
        trace = await k.finished(emitted.workflow_id)
        stored = await k.query(
            "SELECT block_name, summary, success FROM block_executions WHERE workflow_id = ? "
            "ORDER BY started_at",
            emitted.event_id,
        )

    assert stored[0] == ("Lister", "found report-\\udcff.txt", True)
    name, summary, success = stored[1]
    assert (name, success) == ("Namer", False)
    assert "event type that is not UTF-8" in summary
    [x] = executions(trace, "Lister")
    assert x["summary"] == "found report-\\udcff.txt"
    assert trace["state"] == "failed"


async def test_an_output_whose_repr_raises_is_summarized_and_the_chain_goes_on(tmp_path):
    class Opaque:
        def __repr__(self):
            raise RuntimeError("no repr for you")

    @block("Opaque Output", sinks=["go"])
    def opaque(ctx):
        ctx.emit("next", {})
        return Opaque()

    @block("Next", sinks=["next"])
    def after(ctx):
        return "ran"

    async with running_kernel(tmp_path, [opaque, after]) as k:
        emitted = await k.emit("go")
        trace = await k.finished(emitted.workflow_id)

    [x] = executions(trace, "Opaque Output")
    assert x["success"] is True
    assert x["summary"] == "<Opaque: repr() raised RuntimeError>"
    assert executions(trace, "Next")[0]["summary"] == "ran"
    assert trace["state"] == "completed"


@pytest.mark.parametrize(
    ("output", "summary"),
    [
        ({"score": 1, "note": "é"}, '{"score":1,"note":"é"}'),  # was {'score': 1, ...}
        ([1, None, True], "[1,null,true]"),
        (("a", 1.5), '["a",1.5]'),
        ({1}, "{1}"),  # not JSON: its repr
    ],
)
async def test_a_blocks_answer_is_summarized_as_compact_json(tmp_path, output, summary):
    @block("Answer", sinks=["go"])
    def answer(ctx):
        return output

    async with running_kernel(tmp_path, [answer]) as k:
        emitted = await k.emit("go")
        trace = await k.finished(emitted.workflow_id)
    assert executions(trace, "Answer")[0]["summary"] == summary


async def test_while_the_database_refuses_writes_acked_chains_wait_in_the_journal(tmp_path):
    """DuckDB failing (here: a table gone) does not fail a write: the journal has made it
    durable, the materializer retries, and the rows land once the database recovers."""
    archived = []
    acted = trio.Event()

    @block("Lister", sinks=["go"])
    def lister(ctx):
        ctx.emit("listed", {"count": 1})

    @block("Archive", sinks=["listed"], kind=BlockKind.MUTATOR)
    def archive(ctx):
        archived.append(ctx.payload)
        acted.set()  # a plain function: it runs on the trio thread

    async with running_kernel(tmp_path, [lister, archive]) as k:
        await run_sql(tmp_path, "ALTER TABLE block_executions RENAME TO block_executions_gone")
        refused = await k.emit("go")  # acknowledged: durable in the journal
        unsinked = await k.emit("nobody_listens")
        await acted.wait()  # the mutator's lease was durable: the chain went on
        await run_sql(tmp_path, "ALTER TABLE block_executions_gone RENAME TO block_executions")
        healthy = await k.emit("go")
        healthy_trace = await k.finished(healthy.workflow_id)
        refused_trace = await k.finished(refused.workflow_id)
        roots = await k.query("SELECT event_type FROM events WHERE depth = 0 ORDER BY occurred_at")

    assert archived == [{"count": 1}, {"count": 1}]  # once per chain
    assert unsinked.event_id
    assert roots == [("go",), ("nobody_listens",), ("go",)]
    assert healthy_trace["state"] == refused_trace["state"] == "completed"


async def until_finished(k, workflow_id):
    """Status until the workflow ends (its trace may not be storable, so Trace is no signal)."""
    while True:
        [view] = await k.status(workflow_id)
        if view.state in ("completed", "failed"):
            return view
        await trio.sleep(0.002)


async def test_status_lists_what_the_database_holds_beyond_the_engines_memory(tmp_path):
    """Status asks the database only when it may hold newer finished workflows than the engine:
    after a restart (what the last daemon finished) and after the engine dropped some from its
    recent ones. Either way the list is whole, newest first."""

    @block("Work", sinks=["go"])
    def work(ctx):
        pass

    async def run(k, first: int, count: int) -> list[str]:
        emitted = [(await k.emit("go", {"n": first + n})).workflow_id for n in range(count)]
        for workflow_id in emitted:
            await k.finished(workflow_id)
        return emitted

    small = EngineConfig(recent_workflows=2)
    async with running_kernel(tmp_path, [work], engine=small) as k:
        before = await run(k, 0, 4)  # two are dropped from memory
        first_listing = await k.status()
    async with running_kernel(tmp_path, [work]) as k:  # holds all it finishes
        after = await run(k, 10, 3)
        second_listing = await k.status()
        only_one = await ask(k.engine, lambda r: GetStatus("", r, StatusQuery(limit=1)))

    assert [v.workflow_id for v in first_listing] == before[::-1]
    assert [v.workflow_id for v in second_listing] == (before + after)[::-1]
    assert [v.workflow_id for v in only_one] == after[-1:]


async def test_a_payload_filter_cannot_change_what_the_next_blocks_receive(tmp_path):
    # accepts() got the event's own payload: its changes reached the next block (not the store)
    received = []

    class Meddler(Block):
        name, sinks = "Meddler", ("go",)

        def accepts(self, payload):
            payload.pop("secret")  # type: ignore[attr-defined]
            return True

        async def run(self, ctx):
            return None

    @block("Reader", sinks=["go"])
    def reader(ctx):
        received.append(dict(ctx.payload))

    async with running_kernel(tmp_path, [Meddler(), reader]) as k:
        emitted = await k.emit("go", {"id": 1, "secret": "s3"})
        trace = await k.finished(emitted.workflow_id)

    assert received == [{"id": 1, "secret": "s3"}]
    [x] = executions(trace, "Meddler")
    assert x["success"] is True


async def test_a_failing_block_that_set_what_cannot_be_recorded_fails_alone(tmp_path):
    # its own error reported, the field not recorded; it stopped the workflow (a TypeError
    # comparing the exit code) and its sibling never ran
    @block("Odd", sinks=["go"])
    def odd(ctx):
        ctx.exit_code = "3"
        ctx.raw_output = b"bytes"
        ctx.ran_command = True
        raise RuntimeError("broke")

    @block("Sibling", sinks=["go"])
    def sibling(ctx):
        pass

    async with running_kernel(tmp_path, [odd, sibling]) as k:
        emitted = await k.emit("go")
        trace = await k.finished(emitted.workflow_id)

    [x] = executions(trace, "Odd")
    assert x["success"] is False
    assert "RuntimeError: broke" in x["summary"]
    assert (x["exit_code"], x["raw_output"]) == (-1, "")
    [s] = executions(trace, "Sibling")
    assert s["success"] is True


async def test_a_mutator_never_acts_on_an_event_whose_send_the_store_refused(tmp_path):
    """A send the store refused mid-chain (an acting mutator's record and what it emitted, sent
    before the chain waits on its next block) was waited on by nothing: the next mutator's wait
    was on a later send, which the store took (it commits a failed group's sends one by one),
    and the mutator acted on an event never stored; the chain ended "completed" (a review).
    Here the store refuses the send that carries ``acted``: the chain fails, the second
    mutator does not act."""
    import math

    from foundry.kernel.actors.engine.actor import Engine
    from foundry.kernel.actors.engine.messages import Emit
    from foundry.kernel.actors.store.messages import Append
    from foundry.kernel.blocks.registry import BlockRegistry
    from foundry.kernel.errors import Unavailable

    acted: list[str] = []

    @block("Act", sinks=["go"], kind=BlockKind.MUTATOR)
    async def act(ctx: BlockContext) -> None:
        acted.append("Act")
        ctx.emit("acted", {"n": 1})

    @block("Slow", sinks=["acted"], kind=BlockKind.OBSERVER)
    async def slow(ctx: BlockContext) -> None:
        await trio.sleep(0.05)

    @block("Second", sinks=["acted"], kind=BlockKind.MUTATOR)
    async def second(ctx: BlockContext) -> None:
        acted.append("Second")

    async def refusing_store(inbox: trio.MemoryReceiveChannel[Any]) -> None:
        async for message in inbox:
            if not isinstance(message, Append):
                continue
            refused = any(getattr(r, "event_type", "") == "acted" for r in message.records)
            for reply, value in ((message.ack, None), *message.answers):
                if reply is None:
                    continue
                if refused:
                    reply.fail(Unavailable("could not commit a write (refused)"))
                else:
                    reply.send(value)

    engine_send, engine_receive = trio.open_memory_channel[Any](math.inf)
    store_send, store_receive = trio.open_memory_channel[Any](100)
    engine = Engine(BlockRegistry([act, slow, second]), engine_receive, store_send,
                    home=tmp_path, config=EngineConfig(), shutdown_grace=1)  # fmt: skip
    async with trio.open_nursery() as nursery:
        nursery.start_soon(refusing_store, store_receive)
        await nursery.start(engine.run)
        emitted = await ask(engine_send, lambda r: Emit("go", "p", Throttle.FULL, {}, r))
        with trio.fail_after(GUARD_SECONDS):
            while True:
                [view] = await ask(engine_send, lambda r: GetStatus(emitted.workflow_id, r))
                if view.state in ("completed", "failed"):
                    break
                await trio.sleep(0.01)
        await engine_send.aclose()
    assert view.state == "failed"
    assert "could not commit a write" in view.error
    assert acted == ["Act"]
