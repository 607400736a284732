"""Recorded facts never change: a block that writes into its payload or inputs changes neither
what was recorded nor what its siblings or downstream steps see."""

import dataclasses
import json
from contextlib import asynccontextmanager

import pytest
import trio
import trio.lowlevel
from foundry.kernel.actors.mailbox import ask
from foundry.kernel.actors.scheduler.actor import Scheduler
from foundry.kernel.actors.scheduler.messages import GetRun, SchedulerMessage, SubmitRun
from foundry.kernel.actors.store.actor import Store
from foundry.kernel.actors.store.messages import LoadRunEvents, StoreMessage
from foundry.kernel.actors.tap.actor import TapBroker
from foundry.kernel.actors.tap.messages import TapMessage
from foundry.kernel.blocks.api import Block, block
from foundry.kernel.blocks.registry import BlockRegistry
from foundry.kernel.config import SchedulerConfig

from .harness import GUARD_SECONDS, running_kernel

# --- the engine ---------------------------------------------------------------------------------


class AsyncMutator(Block):
    """Awaits (so it runs in the chain's task, not inline) and scribbles over its payload."""

    def __init__(self, name, seen):
        super().__init__(name, sinks=["go"])
        self.seen = seen

    async def run(self, ctx):
        await trio.lowlevel.checkpoint()
        self.seen.append((self.name, json.loads(json.dumps(ctx.payload))))
        ctx.payload["x"]["y"] = "async"
        ctx.payload["new"] = 1


@pytest.mark.parametrize("inline", [True, False])
async def test_a_block_that_mutates_its_payload_changes_neither_the_event_nor_its_siblings(
    tmp_path, inline
):
    seen = []

    def scribbler(name):
        @block(name, sinks=["go"])
        def fn(ctx):
            seen.append((name, json.loads(json.dumps(ctx.payload))))
            ctx.payload["x"]["y"] = name
            ctx.payload["x"]["list"].append(name)
            ctx.payload["new"] = name
            ctx.emit("next", ctx.payload)  # what it emits is its own changed copy

        return fn

    @block("Downstream", sinks=["next"])
    def downstream(ctx):
        seen.append(("Downstream", json.loads(json.dumps(ctx.payload))))
        ctx.payload["x"]["y"] = "downstream"

    blocks = (
        [scribbler("A"), scribbler("B"), downstream]
        if inline
        else [AsyncMutator("A", seen), AsyncMutator("B", seen), downstream]
    )
    original = {"x": {"y": 1, "list": [1]}}
    async with running_kernel(tmp_path, blocks) as k:
        emitted = await k.emit("go", original)
        trace = await k.finished(emitted.workflow_id)
        sql = "SELECT payload FROM events WHERE event_id = ?"
        [[stored]] = await k.query(sql, emitted.event_id)

    assert original == {"x": {"y": 1, "list": [1]}}
    assert [payload for name, payload in seen if name in ("A", "B")] == [original, original]
    [root] = [e for e in trace["events"] if e["event_type"] == "go"]
    assert root["payload"] == original
    assert json.loads(stored) == original
    for x in trace["block_executions"]:
        if x["block_name"] in ("A", "B"):
            assert x["trigger_payload"] == original
    if inline:  # each scribbler's emitted event keeps what it emitted, not what came after
        nexts = [e["payload"] for e in trace["events"] if e["event_type"] == "next"]
        assert sorted(p["new"] for p in nexts) == ["A", "B"]
        for p in nexts:
            assert p["x"] == {"y": p["new"], "list": [1, p["new"]]}
        assert sorted(p["new"] for name, p in seen if name == "Downstream") == ["A", "B"]


@pytest.mark.parametrize("inline", [True, False])
async def test_what_a_block_emits_is_its_payload_when_emitted(tmp_path, inline):
    """One dict emitted once an item, a nested value changed before each: every stored event
    held the last item (only the top level was copied at emit)."""

    async def changes_after_emitting(ctx):
        if not inline:
            await trio.lowlevel.checkpoint()
        message = {"batch": "b1", "item": {"i": None}, "seen": []}
        for i in range(3):
            message["item"]["i"] = i
            message["seen"].append(i)
            ctx.emit("item_ready", message)
        message["item"]["i"] = "after"
        # its own emission changed in place: what emit() took stands (stored, hashed and
        # delivered alike: the delivered one was the changed dict); one replaced is read afresh
        ctx.emissions[0].payload["item"]["i"] = "in place"
        ctx.emissions[1] = dataclasses.replace(ctx.emissions[1], payload={"item": {"i": 10}})

    delivered = []
    loop = block("Emits In A Loop", sinks=["go"])(changes_after_emitting)
    downstream = block("Gets Items", sinks=["item_ready"])(
        lambda ctx: delivered.append(ctx.payload["item"]["i"])
    )
    async with running_kernel(tmp_path, [loop, downstream]) as k:
        emitted = await k.emit("go", {})
        trace = await k.finished(emitted.workflow_id)
        sql = "SELECT payload FROM events WHERE event_type = 'item_ready'"
        stored = sorted(json.loads(row[0])["item"]["i"] for row in await k.query(sql))

    items = [e["payload"] for e in trace["events"] if e["event_type"] == "item_ready"]
    assert sorted(p["item"]["i"] for p in items) == [0, 2, 10] == stored == sorted(delivered)
    assert sorted(p.get("seen", []) for p in items) == [[], [0], [0, 1, 2]]


# --- the scheduler ------------------------------------------------------------------------------


@asynccontextmanager
async def running_scheduler(home, blocks):
    tap_send, tap_receive = trio.open_memory_channel[TapMessage](1_024)
    store_send, store_receive = trio.open_memory_channel[StoreMessage](1_024)
    send, receive = trio.open_memory_channel[SchedulerMessage](1_024)
    with trio.fail_after(GUARD_SECONDS):
        async with trio.open_nursery() as nursery:
            try:
                await nursery.start(TapBroker(tap_receive, buffer=256).run)
                await nursery.start(Store(home, store_receive, tap_send.clone()).run)
                scheduler = Scheduler(
                    BlockRegistry(blocks), receive, store_send.clone(), tap_send.clone(),
                    home=home, config=SchedulerConfig(), shutdown_grace=1.0,
                )  # fmt: skip
                await nursery.start(scheduler.run)
                yield send, store_send
            except BaseException:
                nursery.cancel_scope.cancel()
                raise
            finally:
                send.close()
                store_send.close()
                tap_send.close()


async def test_a_step_that_mutates_its_inputs_changes_no_recorded_output_lease_or_downstream(
    tmp_path,
):
    downstream_saw = []

    @block("produce")
    def produce(ctx):
        return {"v": {"x": 1, "list": [1]}}

    @block("mutate")
    def mutate(ctx):
        got = json.loads(json.dumps(ctx.inputs))
        ctx.inputs["v"]["x"] = 999
        ctx.inputs["v"]["list"].append(999)
        ctx.inputs["whole"]["v"]["x"] = 999
        ctx.inputs["added"] = True
        return got

    @block("read")
    def read(ctx):
        downstream_saw.append(json.loads(json.dumps(ctx.inputs)))
        return dict(ctx.inputs)

    dag = {
        "steps": [
            {"id": "a", "type": "produce", "inputs": {}},
            {"id": "b", "type": "mutate", "inputs": {
                "v": "${steps.a.output.v}", "whole": "${steps.a.output}", "n": "${inputs.n}"}},
            {"id": "c", "type": "read", "depends_on": ["b"], "inputs": {
                "v": "${steps.a.output.v}", "n": "${inputs.n}"}},
        ]
    }  # fmt: skip
    submitted = {"n": {"deep": [1]}}
    async with running_scheduler(tmp_path, [produce, mutate, read]) as (scheduler, store):
        run_id = await ask(
            scheduler, lambda r: SubmitRun(json.dumps(dag), submitted, 7, {}, (), "", r)
        )
        view = await ask(scheduler, lambda r: GetRun(run_id, r))
        while view.status in ("PENDING", "RUNNING"):
            await trio.sleep(0.005)
            view = await ask(scheduler, lambda r: GetRun(run_id, r))

        events = await ask(store, lambda r: LoadRunEvents(run_id, r))  # decoded from the rows

    v = {"x": 1, "list": [1]}
    b_inputs = {"v": v, "whole": {"v": v}, "n": {"deep": [1]}}
    assert view.status == "SUCCEEDED", view
    steps = {s.step_id: s for s in view.steps}
    assert steps["a"].output == {"v": v}
    assert steps["b"].output == b_inputs  # what the step got was resolved from unchanged facts
    assert steps["b"].inputs == b_inputs
    assert downstream_saw == [{"v": v, "n": {"deep": [1]}}]
    assert steps["c"].output == {"v": v, "n": {"deep": [1]}}
    assert submitted == {"n": {"deep": [1]}}
    recorded = {(e.step_id, e.kind): e.payload for e in events}
    assert recorded["a", "step_completed"]["output"] == {"v": v}
    assert recorded["b", "step_leased"]["inputs"] == b_inputs
    assert recorded["c", "step_leased"]["inputs"] == {"v": v, "n": {"deep": [1]}}
