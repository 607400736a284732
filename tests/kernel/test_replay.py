"""The replay actor over a stored run, with a fake store: a long replay lets the rest of the
daemon run between its steps."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import pytest
import trio
import trio.testing
from foundry.kernel.actors.mailbox import ask
from foundry.kernel.actors.replay.actor import MAX_REPLAYS, Replayer
from foundry.kernel.actors.replay.messages import Replay
from foundry.kernel.actors.store.messages import LoadRun
from foundry.kernel.blocks.api import BlockContext, BlockKind, block
from foundry.kernel.blocks.registry import BlockRegistry
from foundry.kernel.core.dag import parse_dag
from foundry.kernel.core.drift import Tolerance, similarity
from foundry.kernel.core.runs import RunState, RunSubmission
from foundry.kernel.errors import NotFound

T0 = datetime(2026, 12, 4, tzinfo=UTC)
STEPS = 300
TURNS: list[int] = [0]  # the other task's turns so far
SEEN: list[int] = []  # TURNS at each step's run


@block("double", kind=BlockKind.OBSERVER)
def _double(ctx: BlockContext) -> dict[str, int]:
    SEEN.append(TURNS[0])
    return {"n": 2 * ctx.payload["n"]}


def finished_run() -> tuple[RunSubmission, list]:
    """A chain of ``double`` steps that succeeded, as the store would answer LoadRun."""
    steps = [{"id": f"s{i:03d}", "type": "double", "inputs": {"n": i}} for i in range(STEPS)]
    dag_json = json.dumps({"steps": steps})
    submission = RunSubmission("run_1", dag_json, {}, 7, {}, (), "", T0)
    run = RunState.new(submission, parse_dag(dag_json, None))
    run.make_event("run_started", T0)
    for i in range(STEPS):
        step_id = f"s{i:03d}"
        run.make_event("step_leased", T0, step_id, attempt=1, inputs={"n": i}, seed=1, model="",
                       env={})  # fmt: skip
        run.make_event("step_completed", T0, step_id, attempt=1, output={"n": 2 * i}, usage={})
    run.make_event("run_succeeded", T0)
    return submission, list(run.events)


async def replayed(
    tmp_path: Any,
    blocks: list[Any],
    stored: Any,
    run_id: str,
    *,
    beside: Any = None,
    max_step_bytes: int = 4 * 1024 * 1024,
) -> Any:
    """A FULL replay of ``run_id`` by the real replay actor over a fake store answering
    ``stored`` (a run as LoadRun gives it), ``beside`` (a task) running meanwhile."""
    store_send, store_inbox = trio.open_memory_channel[object](1)
    inbox_send, inbox = trio.open_memory_channel[Replay](1)
    replayer = Replayer(BlockRegistry(blocks), inbox, store_send, home=tmp_path,  # type: ignore[arg-type]
                        tolerance=Tolerance(), max_step_bytes=max_step_bytes)  # fmt: skip

    async def store() -> None:
        async for message in store_inbox:
            assert isinstance(message, LoadRun)
            message.reply.send(stored)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store)
            await nursery.start(replayer.run)
            if beside is not None:
                nursery.start_soon(beside)
            result = await ask(inbox_send, lambda r: Replay(run_id, "full", r))
            nursery.cancel_scope.cancel()
    return result


async def test_a_long_replay_lets_other_tasks_run_between_its_steps(tmp_path):
    SEEN.clear()

    async def other() -> None:
        while True:
            TURNS[0] += 1
            await trio.lowlevel.checkpoint()

    result = await replayed(tmp_path, [_double], finished_run(), "run_1", beside=other)
    assert result.all_within_tolerance
    assert result.strategy == "live"
    assert [s.step_id for s in result.steps] == [f"s{i:03d}" for i in range(STEPS)]
    assert len(SEEN) == STEPS
    # trio runs a batch's tasks in either order: the other task's turn falls between two
    # steps at least every other step (none at all when a replay never yields)
    assert SEEN[-1] - SEEN[0] >= STEPS // 2


async def test_at_most_max_replays_run_at_once_and_replays_of_a_run_share_its_load(tmp_path):
    """30 ReplayRuns at once of a run of 10 MB of outputs each loaded the run and ran its steps
    again, all at once: 5.8 GB, the loop stalled 1.6 s (a hunt)."""
    running, most, loads = [0], [0], [0]

    @block("slow_double", kind=BlockKind.OBSERVER)
    async def slow_double(ctx: BlockContext) -> dict[str, int]:
        running[0] += 1
        most[0] = max(most[0], running[0])
        await trio.sleep(0.001)
        running[0] -= 1
        return {"n": 2 * ctx.payload["n"]}

    submission, events = finished_run()
    dag_json = submission.dag_json.replace('"double"', '"slow_double"')
    stored = (RunSubmission("run_1", dag_json, {}, 7, {}, (), "", T0), events)
    store_send, store_inbox = trio.open_memory_channel[object](8)
    inbox_send, inbox = trio.open_memory_channel[Replay](8)
    replayer = Replayer(BlockRegistry([slow_double]), inbox, store_send, home=tmp_path,  # type: ignore[arg-type]
                        tolerance=Tolerance())  # fmt: skip

    async def store() -> None:
        async for message in store_inbox:
            loads[0] += 1
            await trio.sleep(0.05)  # a load takes a while: replays asked meanwhile share it
            message.reply.send(stored)  # type: ignore[attr-defined]

    results: list[Any] = []

    async def replay() -> None:
        results.append(await ask(inbox_send, lambda r: Replay("run_1", "full", r)))

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store)
            await nursery.start(replayer.run)
            async with trio.open_nursery() as callers:
                for _ in range(6):
                    callers.start_soon(replay)
            nursery.cancel_scope.cancel()
    assert len(results) == 6
    assert all(r.all_within_tolerance for r in results)
    assert most[0] == MAX_REPLAYS  # steps of two replays at once, never more
    assert loads[0] < 6  # the first replays' load was shared


def test_the_similarity_of_large_outputs_is_quick_and_says_they_differ():
    """difflib's time grows with the product of the texts' lengths: a replayed error of 3.4 MB
    against its recorded 2,000 characters held the daemon's loop for 12 s."""
    started = time.perf_counter()
    far = similarity({"error": "x" * 2_000}, {"error": "y" * 3_400_000})
    assert time.perf_counter() - started < 1.0
    assert far < 0.01
    long = {"text": "a" * 100_000}
    changed = {"text": "a" * 50_000 + "b" + "a" * 49_999}  # the change is in neither end
    assert 0 < similarity(long, changed) < 1
    assert similarity(long, dict(long)) == 1.0


def test_json_true_is_not_the_number_1():
    """Python's == has True == 1: a replay read {"v": true} against {"v": 1} as the same."""
    assert similarity({"v": True}, {"v": 1}) < 1.0
    assert similarity([False], [0.0]) < 1.0
    assert similarity({"v": 1}, {"v": 1.0}) == 1.0  # a Value carries every number as a double
    assert similarity({"a": [True, {"b": None}]}, {"a": [True, {"b": None}]}) == 1.0


CALLS: list[int] = []


@block("attempted", kind=BlockKind.OBSERVER)
def _attempted(ctx: BlockContext) -> dict[str, int]:
    CALLS.append(ctx.attempt)
    if ctx.attempt == 1:
        raise RuntimeError("the first attempt fails")
    return {"attempt": ctx.attempt}


def branch_with_a_retry() -> tuple[RunSubmission, list]:
    """A branch: ``r`` reused from its source (never run here), ``t`` succeeded at attempt 2."""
    steps = [{"id": "r", "type": "attempted"}, {"id": "t", "type": "attempted"}]
    dag_json = json.dumps({"steps": steps})
    submission = RunSubmission("run_b", dag_json, {}, 7, {}, (), "", T0)
    run = RunState.new(submission, parse_dag(dag_json, None))
    run.make_event("step_reused", T0, "r", output={"n": 4}, attempt=1, usage={}, inputs={},
                   seed=1, model="")  # fmt: skip
    run.make_event("run_started", T0)
    for attempt in (1, 2):
        run.make_event("step_leased", T0, "t", attempt=attempt, inputs={}, seed=1, model="",
                       env={})  # fmt: skip
        if attempt == 1:
            error = {"message": "RuntimeError: the first attempt fails", "attempt": 1}
            run.make_event("step_retrying", T0, "t", attempt=1, error=error, delay=0)
    run.make_event("step_completed", T0, "t", attempt=2, output={"attempt": 2}, usage={})
    run.make_event("run_succeeded", T0)
    return submission, list(run.events)


async def test_a_reused_step_is_not_run_again_and_a_retried_one_runs_as_its_attempt(tmp_path):
    """A branch's reused step was run live (it never ran in the branch) and reported as drift;
    a step that succeeded at attempt 2 was run as attempt 1 and failed."""
    CALLS.clear()
    result = await replayed(tmp_path, [_attempted], branch_with_a_retry(), "run_b")
    assert CALLS == [2]  # t alone, as attempt 2
    assert result.all_within_tolerance
    assert [(s.step_id, s.live) for s in result.steps] == [("r", False), ("t", True)]


@block("answers", kind=BlockKind.OBSERVER)
def _answers(ctx: BlockContext) -> Any:
    what = ctx.payload["what"]
    if what == "spend-then-fail":  # usage the scheduler does not record for a failed attempt
        ctx.record_usage(tokens_in=1, tokens_out=1, cost=0.001)
        raise RuntimeError("the endpoint took too long")
    if what == "fail":
        raise RuntimeError("the endpoint took too long")
    if what == "long":
        return {"text": "x" * 3_000}
    if what == "surrogate":
        return {"text": "\ud800 x"}
    ctx.usage = 5  # type: ignore[assignment]
    return {"ok": True}


def one_step_run(what: str, stored: dict[str, Any], *, failed: bool = False) -> tuple:
    dag_json = json.dumps({"steps": [{"id": "a", "type": "answers", "inputs": {"what": what}}]})
    submission = RunSubmission("run_r", dag_json, {}, 7, {}, (), "", T0)
    run = RunState.new(submission, parse_dag(dag_json, None))
    run.make_event("run_started", T0)
    run.make_event("step_leased", T0, "a", attempt=1, inputs={"what": what}, seed=1, model="",
                   env={})  # fmt: skip
    if failed:
        run.make_event("step_failed", T0, "a", attempt=1, error=stored)
        run.make_event("run_failed", T0, "a", error="x")
    else:
        run.make_event("step_completed", T0, "a", attempt=1, output=stored, usage={})
        run.make_event("run_succeeded", T0)
    return submission, list(run.events)


async def test_a_step_the_run_did_not_retry_replays_without_drift_for_that_note(tmp_path):
    # the scheduler adds "(not retried: …)" to the error it records: the block's own error,
    # the same now, was reported as drift
    error = {"message": "RuntimeError: the endpoint took too long (not retried: step 'b' "
             "failed the run)", "attempt": 1, "timed_out": False}  # fmt: skip
    result = await replayed(tmp_path, [_answers], one_step_run("fail", error, failed=True),
                            "run_r")  # fmt: skip
    assert result.all_within_tolerance, result.steps[0].drift


async def test_a_replayed_output_the_store_could_not_hold_is_the_error_it_would_be(tmp_path):
    # a lone surrogate in a replayed answer made the reply INTERNAL
    result = await replayed(tmp_path, [_answers], one_step_run("surrogate", {"text": "x"}),
                            "run_r")  # fmt: skip
    [step] = result.steps
    assert "lone surrogate" in json.dumps(step.drift.current)
    assert not result.all_within_tolerance


async def test_a_replayed_usage_the_scheduler_would_refuse_fails_the_step(tmp_path):
    result = await replayed(tmp_path, [_answers], one_step_run("bad-usage", {"ok": True}),
                            "run_r")  # fmt: skip
    [step] = result.steps
    assert "ctx.usage must be a Usage" in json.dumps(step.drift.current)


async def test_a_failure_after_spending_replays_without_drift_for_the_usage(tmp_path):
    # a failed attempt's usage is never recorded: the same failure replayed was drift by 2
    # tokens and 0.001 of cost (a hunt)
    error = {"message": "RuntimeError: the endpoint took too long", "attempt": 1,
             "timed_out": False}  # fmt: skip
    stored = one_step_run("spend-then-fail", error, failed=True)
    result = await replayed(tmp_path, [_answers], stored, "run_r")
    [step] = result.steps
    assert (step.drift.token_delta, step.drift.cost_delta) == (0, 0)
    assert result.all_within_tolerance


async def test_an_output_past_the_step_limit_fails_the_replayed_step_as_it_failed_the_run(
    tmp_path,
):
    # the scheduler failed the step on [scheduler] max_step_bytes; the replay took the output
    # as it came and reported it as drift at every replay (a hunt)
    error = {"message": "output: 3,011 bytes of JSON, over the step limit of 3,000 "
             "([scheduler] max_step_bytes)", "attempt": 1, "timed_out": False}  # fmt: skip
    result = await replayed(tmp_path, [_answers], one_step_run("long", error, failed=True),
                            "run_r", max_step_bytes=3_000)  # fmt: skip
    [step] = result.steps
    assert step.drift.current == {"error": error["message"]}
    assert result.all_within_tolerance


def _stored_run(run_id: str, block_type: str, inputs: dict[str, Any], output: Any) -> Any:
    """A one-step run of ``block_type`` that succeeded, as the store would answer LoadRun."""
    dag_json = json.dumps({"steps": [{"id": "s", "type": block_type, "inputs": inputs}]})
    submission = RunSubmission(run_id, dag_json, {}, 7, {}, (), "", T0)
    run = RunState.new(submission, parse_dag(dag_json, None))
    run.make_event("run_started", T0)
    run.make_event("step_leased", T0, "s", attempt=1, inputs=inputs, seed=1, model="", env={})
    run.make_event("step_completed", T0, "s", attempt=1, output=output, usage={})
    run.make_event("run_succeeded", T0)
    return submission, list(run.events)


async def _replays_at_once(tmp_path: Any, blocks: list[Any], stored: dict[str, Any], asks: Any):
    """``asks(ask_replay)`` with the real replay actor over a fake store answering ``stored``
    (run id → LoadRun's answer; None for any other)."""
    store_send, store_inbox = trio.open_memory_channel[object](8)
    inbox_send, inbox = trio.open_memory_channel[Replay](8)
    replayer = Replayer(BlockRegistry(blocks), inbox, store_send, home=tmp_path,  # type: ignore[arg-type]
                        tolerance=Tolerance())  # fmt: skip

    async def store() -> None:
        async for message in store_inbox:
            message.reply.send(stored.get(message.run_id))  # type: ignore[attr-defined]

    async def ask_replay(run_id: str) -> Any:
        return await ask(inbox_send, lambda r: Replay(run_id, "full", r))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store)
            await nursery.start(replayer.run)
            await asks(ask_replay)
            nursery.cancel_scope.cancel()


async def test_replays_at_once_share_the_run_but_each_step_gets_its_own_inputs(tmp_path):
    """Replays of one run share its load: a block that changed what it was given (appending to
    a list in its inputs) changed the other replay's inputs too, and both drifted (a review)."""

    @block("appender", kind=BlockKind.OBSERVER)
    async def appender(ctx: BlockContext) -> dict[str, int]:
        items = ctx.payload["box"]["items"]
        items.append(len(items))
        await trio.sleep(0.01)  # the other replay's step runs meanwhile
        return {"n": len(items)}

    stored = {"run_1": _stored_run("run_1", "appender", {"box": {"items": []}}, {"n": 1})}
    results: list[Any] = []

    async def asks(replay: Any) -> None:
        async with trio.open_nursery() as callers:
            for _ in range(2):
                callers.start_soon(lambda: _append(results, replay("run_1")))

    await _replays_at_once(tmp_path, [appender], stored, asks)
    assert [r.all_within_tolerance for r in results] == [True, True]


async def test_a_replay_refused_at_once_does_not_wait_behind_running_replays(tmp_path):
    """A replay of a run not found (or not finished) waited for a slot behind the replays
    running: NOT_FOUND took as long as they did (a review)."""
    release = trio.Event()

    @block("napper", kind=BlockKind.OBSERVER)
    async def napper(ctx: BlockContext) -> dict[str, int]:
        await release.wait()
        return {"n": 1}

    stored = {"run_1": _stored_run("run_1", "napper", {}, {"n": 1})}
    refused: list[float] = []

    async def asks(replay: Any) -> None:
        async with trio.open_nursery() as callers:
            for _ in range(MAX_REPLAYS):  # every slot taken, until released
                callers.start_soon(replay, "run_1")
            await trio.testing.wait_all_tasks_blocked()
            started = trio.current_time()
            with pytest.raises(NotFound):
                await replay("run_missing")
            refused.append(trio.current_time() - started)
            release.set()

    await _replays_at_once(tmp_path, [napper], stored, asks)
    assert refused[0] < 1.0


async def _append(results: list[Any], pending: Any) -> None:
    results.append(await pending)
