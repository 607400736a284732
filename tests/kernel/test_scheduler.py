"""The scheduler actor with fake blocks, an in-memory fake store and the autojump clock:
concurrency limits, retry backoff, timeouts, breakpoints, pause/resume, graceful stop and
recovery — virtual time only, no real sleeps, no shell, no database."""

from __future__ import annotations

import gc
import json
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing
from foundry.kernel.actors.mailbox import ask
from foundry.kernel.actors.scheduler.actor import Scheduler
from foundry.kernel.actors.scheduler.messages import (
    CancelRun,
    GetRun,
    OpenTap,
    PatchStep,
    ResumeRun,
    RunView,
    SchedulerMessage,
    SubmitRun,
    TapOpened,
    UpdateBreakpoints,
)
from foundry.kernel.actors.store.messages import (
    Append,
    Barrier,
    LoadIdempotencyKeys,
    LoadRun,
    LoadRunEvents,
    LoadUnfinishedRuns,
    StoredRun,
    StoreMessage,
)
from foundry.kernel.actors.tap.messages import Subscribe, TapMessage
from foundry.kernel.actors.telemetry.messages import SpanOutbox
from foundry.kernel.blocks.api import Block, BlockContext, BlockKind, Usage, block
from foundry.kernel.blocks.registry import BlockRegistry
from foundry.kernel.config import SchedulerConfig
from foundry.kernel.core.dag import parse_dag
from foundry.kernel.core.runs import TERMINAL_KINDS, RunEventRecord, RunState, RunSubmission
from foundry.kernel.errors import FailedPrecondition, InvalidArgument, Unavailable

T0 = datetime(2024, 1, 1, tzinfo=UTC)


# --- fakes ------------------------------------------------------------------------------------


class FakeStore:
    """Answers the store messages the scheduler sends, from memory: every Append commits at
    once; queries read what was appended (plus ``unfinished``, runs "left by a previous start")."""

    def __init__(self, unfinished: list[StoredRun] | None = None) -> None:
        self.records: list[Any] = []
        self.unfinished = unfinished or []
        self.loaded: list[str] = []  # runs GetRun read from the store (not in memory)
        self.histories: list[str] = []  # runs whose log a TapRun read from the store
        self._appended = trio.Event()

    async def run(self, inbox: trio.MemoryReceiveChannel[StoreMessage]) -> None:
        async with inbox:
            async for message in inbox:
                self.answer(message)

    def answer(self, message: Any) -> None:
        if isinstance(message, Append):
            self.records.extend(message.records)
            if message.ack is not None:
                message.ack.send(None)
            for reply, value in message.answers:
                reply.send(value)
            self._appended.set()
            self._appended = trio.Event()
        elif isinstance(message, Barrier | LoadIdempotencyKeys | LoadUnfinishedRuns):
            answers = {Barrier: None, LoadIdempotencyKeys: {}, LoadUnfinishedRuns: self.unfinished}
            message.reply.send(answers[type(message)])
        elif isinstance(message, LoadRunEvents):
            self.histories.append(message.run_id)
            message.reply.send(self.events(message.run_id))
        elif isinstance(message, LoadRun):
            self.loaded.append(message.run_id)
            message.reply.send(self._stored(message.run_id))
        else:  # a message this fake does not know: the asker hears so, the test fails loudly
            message.reply.fail(Unavailable(f"FakeStore cannot answer {type(message).__name__}"))

    def _stored(self, run_id: str) -> StoredRun | None:
        for record in self.records:
            if isinstance(record, RunSubmission) and record.run_id == run_id:
                return record, self.events(run_id)
        return None

    def events(self, run_id: str, kind: str = "") -> list[RunEventRecord]:
        return [
            r
            for r in self.records
            if isinstance(r, RunEventRecord) and r.run_id == run_id and kind in ("", r.kind)
        ]

    async def until(self, run_id: str, *kinds: str) -> RunEventRecord:
        """The first event of one of ``kinds``, once it is appended."""
        while True:
            appended = self._appended
            for event in self.events(run_id):
                if event.kind in kinds:
                    return event
            await appended.wait()


class HeldLoads(FakeStore):
    """A FakeStore whose LoadRun answers wait, while ``holding``, for :meth:`release`."""

    def __init__(self) -> None:
        super().__init__()
        self.holding = False
        self._held: list[Any] = []

    def answer(self, message: Any) -> None:
        if self.holding and isinstance(message, LoadRun):
            self.loaded.append(message.run_id)
            self._held.append(message)
            return
        super().answer(message)

    def release(self) -> None:
        self.holding = False
        for message in self._held:
            message.reply.send(self._stored(message.run_id))
        self._held.clear()


class Sleepy(Block):
    """Sleeps ``ctx.payload["s"]`` seconds (default 1), noting when and how many ran at once."""

    name = "sleepy"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.running = self.peak = 0
        self.started: list[tuple[str, float]] = []

    async def run(self, ctx: BlockContext) -> Any:
        self.started.append((ctx.step_id, trio.current_time()))
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await trio.sleep(ctx.payload.get("s", 1))
        finally:
            self.running -= 1
        return {"step": ctx.step_id}


class Flaky(Block):
    """Fails its first ``failures`` attempts, noting each attempt's number and time."""

    name = "flaky"

    def __init__(self, failures: int, **options: Any) -> None:
        super().__init__(**options)
        self.failures = failures
        self.attempts: list[tuple[int, float]] = []

    async def run(self, ctx: BlockContext) -> Any:
        self.attempts.append((ctx.attempt, trio.current_time()))
        await trio.lowlevel.checkpoint()
        if len(self.attempts) <= self.failures:
            raise RuntimeError(f"nope {len(self.attempts)}")
        return {"attempt": ctx.attempt}


@dataclass
class Harness:
    inbox: trio.MemorySendChannel[SchedulerMessage]
    store: FakeStore
    resumed: int = 0
    scheduler: Scheduler | None = None
    log: list[str] = field(default_factory=list)

    async def submit(self, steps: list[dict[str, Any]], breakpoints: tuple[str, ...] = ()) -> str:
        dag_json = json.dumps({"steps": steps})
        return await ask(self.inbox, lambda r: SubmitRun(dag_json, {}, 7, {}, breakpoints, "", r))

    async def get(self, run_id: str) -> RunView:
        return await ask(self.inbox, lambda r: GetRun(run_id, r))

    def kinds(self, run_id: str) -> list[str]:
        return [e.kind for e in self.store.events(run_id)]


@asynccontextmanager
async def running_scheduler(
    tmp_path: Any,
    blocks: list[Block],
    *,
    limit: int = 16,
    grace: float = 5.0,
    store: FakeStore | None = None,
    store_mailbox: int = 64,
    config: SchedulerConfig | None = None,
    spans: bool = False,
) -> AsyncIterator[Harness]:
    """A Scheduler on memory channels, a FakeStore for its store; leaving the block closes its
    mailbox, as the daemon does when it stops (steps in flight get ``grace`` seconds).
    ``spans``: it makes the spans of steps too (OpenTelemetry export on), into a channel read
    by no one."""
    store = store or FakeStore()
    inbox_send, inbox = trio.open_memory_channel[SchedulerMessage](64)
    store_send, store_inbox = trio.open_memory_channel[StoreMessage](store_mailbox)
    tap_send, tap_inbox = trio.open_memory_channel[TapMessage](64)
    span_send, span_inbox = trio.open_memory_channel[Any](10_000)
    scheduler = Scheduler(
        BlockRegistry(blocks), inbox, store_send, tap_send, home=tmp_path,
        config=config or SchedulerConfig(max_concurrent_steps=limit), shutdown_grace=grace,
        spans=SpanOutbox(span_send) if spans else None,
    )  # fmt: skip
    with tap_inbox, span_inbox, trio.fail_after(3600):  # virtual seconds: bounds a hung test
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store.run, store_inbox)
            nursery.start_soon(_subscribing, tap_inbox)
            resumed = await nursery.start(scheduler.run)
            try:
                yield Harness(inbox_send, store, resumed, scheduler=scheduler)
            finally:
                inbox_send.close()


async def _subscribing(inbox: trio.MemoryReceiveChannel[TapMessage]) -> None:
    """A tap broker that takes every subscription (and publishes nothing)."""
    async for message in inbox:
        if isinstance(message, Subscribe):
            message.reply.send(None)


def step(step_id: str, step_type: str = "sleepy", *, after: tuple[str, ...] = (), **extra: Any):
    return {"id": step_id, "type": step_type, "depends_on": list(after), **extra}


# --- runs kept in memory ----------------------------------------------------------------------


async def test_finished_runs_leave_memory_once_their_outputs_pass_recent_run_bytes(
    tmp_path, autojump_clock
):
    # each run's output is {"step":"a"}: 12 bytes, its lease's inputs {}: 2; 30 keep two runs,
    # the newest always stays
    config = SchedulerConfig(recent_run_bytes=30)
    async with running_scheduler(tmp_path, [Sleepy()], config=config) as h:
        run_ids = await _finished_runs(h, 3)
        views = [await h.get(run_id) for run_id in run_ids]
        assert h.store.loaded == run_ids[:1]  # the oldest was read back from the store
        assert [v.status for v in views] == ["SUCCEEDED"] * 3
        assert views[0].steps[0].output == {"step": "a"}


async def test_finished_runs_leases_count_toward_recent_run_bytes(tmp_path, autojump_clock):
    """A run in memory holds every lease's inputs: runs of small outputs and large inputs
    counted as their outputs alone, ~0, and recent_run_bytes did not bound them."""
    config = SchedulerConfig(recent_run_bytes=300)  # ~120 bytes a run: two of them
    async with running_scheduler(tmp_path, [Sleepy()], config=config) as h:
        run_ids = []
        for _ in range(3):
            run_ids.append(await h.submit([step("a", inputs={"pad": "p" * 100})]))
            await h.store.until(run_ids[-1], "run_succeeded")
        for run_id in run_ids:
            await h.get(run_id)
        assert h.store.loaded == run_ids[:1]


async def test_a_tap_of_a_run_that_ended_in_memory_reads_no_log_from_the_store(
    tmp_path, autojump_clock
):
    # every tap of a finished run parsed its whole log from DuckDB again: 30 taps of a run of
    # 20 MB of outputs held 2.4 GB; a run still in memory gives its own records, once durable
    config = SchedulerConfig(recent_run_bytes=30)  # two of them kept in memory
    async with running_scheduler(tmp_path, [Sleepy()], config=config) as h:
        run_ids = await _finished_runs(h, 3)
        for run_id in run_ids:
            opened = await ask(h.inbox, lambda r, i=run_id: OpenTap(i, _NoSink(), r))
            assert list(opened.history) == h.store.events(run_id)
        assert h.store.histories == run_ids[:1]  # the one no longer in memory
        running = await h.submit([step("a", inputs={"s": 60})])
        opened = await ask(h.inbox, lambda r: OpenTap(running, _NoSink(), r))
        assert h.store.histories == [*run_ids[:1], running]  # not ended: its durable log


async def test_taps_of_a_stored_ended_run_share_one_read_of_its_log(tmp_path, autojump_clock):
    """Each tap of a run no longer in memory read and held its own copy of the log: 200 taps
    of a run of 60 MB of outputs that never read took 16 GB (a hunt)."""
    config = SchedulerConfig(recent_run_bytes=30)  # two runs kept in memory
    async with running_scheduler(tmp_path, [Sleepy()], config=config) as h:
        stored = (await _finished_runs(h, 3))[0]
        opened: list[TapOpened] = []

        async def tap() -> None:
            opened.append(await ask(h.inbox, lambda r: OpenTap(stored, _NoSink(), r)))

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(tap)
        assert h.store.histories == [stored]  # one read for the five at once
        await tap()  # a tap while they still hold it: theirs
        assert h.store.histories == [stored]
        assert len({id(o.history) for o in opened}) == 1
        assert list(opened[0].history) == h.store.events(stored)
        opened.clear()
        gc.collect()
        await tap()  # the copy went with its last tapper
        assert h.store.histories == [stored, stored]


async def test_getruns_of_a_stored_run_at_once_share_one_load(tmp_path, autojump_clock):
    """Each GetRun of a run no longer in memory loaded and rebuilt its own copy: 30 at once of
    a run of 60 MB of outputs took 3.5 GB (a hunt)."""
    config = SchedulerConfig(recent_run_bytes=30)  # two runs kept in memory
    store = HeldLoads()
    async with running_scheduler(tmp_path, [Sleepy()], config=config, store=store) as h:
        stored = (await _finished_runs(h, 3))[0]
        views: list[RunView] = []

        async def get() -> None:
            views.append(await h.get(stored))

        store.holding = True
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(get)
            await trio.testing.wait_all_tasks_blocked()
            store.release()
        assert h.store.loaded == [stored]  # one load for the five at once
        assert {v.status for v in views} == {"SUCCEEDED"}
        await get()  # nobody holds the load now: read again
        assert h.store.loaded == [stored, stored]


async def _finished_runs(h: Harness, count: int) -> list[str]:
    """``count`` one-step runs, one after the other, each to its end."""
    run_ids = []
    for _ in range(count):
        run_ids.append(await h.submit([step("a")]))
        await h.store.until(run_ids[-1], "run_succeeded")
    return run_ids


class _NoSink:
    def offer(self, item: Any) -> bool:
        return True

    def close(self) -> None:
        pass

    @property
    def closed(self) -> bool:
        return False


# --- concurrency ------------------------------------------------------------------------------


async def test_no_more_steps_run_at_once_than_the_limit(tmp_path, autojump_clock):
    sleepy = Sleepy()
    async with running_scheduler(tmp_path, [sleepy], limit=2) as h:
        t0 = trio.current_time()
        run_id = await h.submit([step(f"s{i}") for i in range(5)])
        done = await h.store.until(run_id, *TERMINAL_KINDS)
    assert done.kind == "run_succeeded"
    assert sleepy.peak == 2
    assert sorted(t - t0 for _, t in sleepy.started) == [0, 0, 1, 1, 2]


@pytest.fixture
def step_tasks(monkeypatch):
    """STEP_TASKS made 3, and the most ``_run_step`` calls alive at once, as they run."""
    from foundry.kernel.actors.scheduler import actor

    monkeypatch.setattr(actor, "STEP_TASKS", 3)
    alive = {"now": 0, "peak": 0}
    real = Scheduler._run_step

    async def counted(self: Scheduler, *args: Any, **options: Any) -> None:
        alive["now"] += 1
        alive["peak"] = max(alive["peak"], alive["now"])
        try:
            await real(self, *args, **options)
        finally:
            alive["now"] -= 1

    monkeypatch.setattr(Scheduler, "_run_step", counted)
    return alive


async def test_ready_steps_past_step_tasks_wait_in_a_queue_not_as_tasks(
    tmp_path, autojump_clock, step_tasks
):
    # (38,000 ready steps, each a task at once, held the loop 1.8 s: a hunt)
    sleepy = Sleepy()
    async with running_scheduler(tmp_path, [sleepy], limit=2) as h:
        t0 = trio.current_time()
        run_id = await h.submit([step(f"s{i}") for i in range(12)] + [
            step("last", after=tuple(f"s{i}" for i in range(12)))])  # fmt: skip
        done = await h.store.until(run_id, *TERMINAL_KINDS)
    assert done.kind == "run_succeeded"
    assert step_tasks["peak"] == 2 + 3  # two holding a slot, three waiting for one
    assert sleepy.peak == 2
    assert sorted(s for s, _ in sleepy.started[:12]) == sorted(f"s{i}" for i in range(12))
    assert sleepy.started[12][0] == "last"
    assert [t - t0 for _, t in sleepy.started] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6]


async def test_a_run_takes_every_free_slot_past_step_tasks(tmp_path, autojump_clock, step_tasks):
    """The queue bounds tasks waiting for a slot, not slots: with 8 free, 8 steps run at once
    (a review: 300 slots ran 256 steps, the other 44 waited with slots free)."""
    sleepy = Sleepy()
    async with running_scheduler(tmp_path, [sleepy], limit=8) as h:
        t0 = trio.current_time()
        run_id = await h.submit([step(f"s{i}", inputs={"s": 10}) for i in range(20)])
        done = await h.store.until(run_id, *TERMINAL_KINDS)
    assert done.kind == "run_succeeded"
    assert sleepy.peak == 8
    assert sorted(t - t0 for _, t in sleepy.started) == [0] * 8 + [10] * 8 + [20] * 4


class FailsOnce(Block):
    """Fails each step's first attempt (its retry comes after the block's backoff)."""

    name = "fails_once"

    async def run(self, ctx: BlockContext) -> Any:
        await trio.lowlevel.checkpoint()
        if ctx.attempt == 1:
            raise RuntimeError("first attempt fails")
        return {"attempt": ctx.attempt}


async def test_steps_backing_off_do_not_hold_queued_steps_back(
    tmp_path, autojump_clock, step_tasks
):
    """A step backing off holds no slot, nor a place among the tasks waiting for one (a review:
    256 steps waiting 100 s to retry held a ready step back as long, every slot free)."""
    sleepy, flaky = Sleepy(), FailsOnce(retries=1, backoff=100.0)
    async with running_scheduler(tmp_path, [sleepy, flaky], limit=2) as h:
        t0 = trio.current_time()
        run_id = await h.submit([step(f"f{i}", "fails_once") for i in range(6)] + [step("w")])
        done = await h.store.until(run_id, *TERMINAL_KINDS)
    assert done.kind == "run_succeeded"
    assert dict(sleepy.started)["w"] - t0 < 1


async def test_a_breakpoint_added_to_a_queued_step_pauses_the_run_there(
    tmp_path, autojump_clock, step_tasks
):
    sleepy = Sleepy()
    async with running_scheduler(tmp_path, [sleepy], limit=1) as h:
        run_id = await h.submit([step(f"s{i}", inputs={"s": 5}) for i in range(8)])
        await h.store.until(run_id, "step_leased")
        await ask(h.inbox, lambda r: UpdateBreakpoints(run_id, ("s7",), (), False, r))
        paused = await h.store.until(run_id, "run_paused")
        await trio.sleep(100)
        assert paused.step_id == "s7"
        assert "s7" not in [s for s, _ in sleepy.started]
        await ask(h.inbox, lambda r: ResumeRun(run_id, r))
        done = await h.store.until(run_id, *TERMINAL_KINDS)
    assert done.kind == "run_succeeded"
    assert sorted(s for s, _ in sleepy.started) == sorted(f"s{i}" for i in range(8))


async def test_a_cancel_ends_a_run_whose_ready_steps_are_queued(
    tmp_path, autojump_clock, step_tasks
):
    sleepy = Sleepy()
    async with running_scheduler(tmp_path, [sleepy], limit=1) as h:
        run_id = await h.submit([step(f"s{i}", inputs={"s": 50}) for i in range(10)])
        await h.store.until(run_id, "step_leased")
        t0 = trio.current_time()
        await ask(h.inbox, lambda r: CancelRun(run_id, "enough", r))
        await h.store.until(run_id, *TERMINAL_KINDS)
        assert trio.current_time() - t0 < 1
        view = await h.get(run_id)
    assert h.kinds(run_id)[-1] == "run_canceled"
    assert [s for s, _ in sleepy.started] == ["s0"]
    assert h.kinds(run_id).count("step_leased") == 1
    assert [s.status for s in view.steps] == ["canceled"] + ["skipped"] * 9


async def test_queued_steps_wait_out_a_pause_and_start_at_the_resume(
    tmp_path, autojump_clock, step_tasks
):
    sleepy = Sleepy()
    async with running_scheduler(tmp_path, [sleepy], limit=1) as h:
        run_id = await h.submit([step(f"s{i}") for i in range(6)], breakpoints=("s4",))
        await h.store.until(run_id, "run_paused")
        await trio.sleep(100)
        assert [s for s, _ in sleepy.started] == ["s0"]  # the others had not started
        assert (await h.get(run_id)).status == "PAUSED_AT_STEP"
        await ask(h.inbox, lambda r: ResumeRun(run_id, r))
        done = await h.store.until(run_id, *TERMINAL_KINDS)
    assert done.kind == "run_succeeded"
    assert sorted(s for s, _ in sleepy.started) == [f"s{i}" for i in range(6)]


async def test_the_limit_is_shared_by_every_run(tmp_path, autojump_clock):
    sleepy = Sleepy()
    async with running_scheduler(tmp_path, [sleepy], limit=1) as h:
        runs = [await h.submit([step("a"), step("b")]) for _ in range(2)]
        for run_id in runs:
            await h.store.until(run_id, *TERMINAL_KINDS)
    assert sleepy.peak == 1
    assert len(sleepy.started) == 4


async def test_a_step_starts_when_its_dependencies_succeeded(tmp_path, autojump_clock):
    sleepy = Sleepy()
    async with running_scheduler(tmp_path, [sleepy]) as h:
        t0 = trio.current_time()
        run_id = await h.submit(
            [step("a"), step("b", inputs={"s": 2}), step("c", after=("a", "b"))]
        )
        await h.store.until(run_id, *TERMINAL_KINDS)
    assert {s: t - t0 for s, t in sleepy.started} == {"a": 0, "b": 0, "c": 2}


# --- retries and timeouts -----------------------------------------------------------------------


async def test_a_failed_attempt_is_retried_after_the_steps_backoff(tmp_path, autojump_clock):
    flaky = Flaky(failures=2, retries=5, backoff=100)  # the step's policy wins over these
    async with running_scheduler(tmp_path, [flaky]) as h:
        run_id = await h.submit([step("a", "flaky", retry={"max_attempts": 3, "backoff": 0.5})])
        done = await h.store.until(run_id, *TERMINAL_KINDS)
        view = await h.get(run_id)
    assert done.kind == "run_succeeded"
    (n1, t1), (n2, t2), (n3, t3) = flaky.attempts
    assert (n1, n2, n3) == (1, 2, 3)
    assert (t2 - t1, t3 - t2) == (0.5, 1.0)
    retrying = h.store.events(run_id, "step_retrying")
    assert [(e.payload["attempt"], e.payload["delay"]) for e in retrying] == [(1, 0.5), (2, 1.0)]
    assert retrying[0].payload["error"] == {"message": "RuntimeError: nope 1", "attempt": 1,
                                            "timed_out": False}  # fmt: skip
    assert (view.steps[0].status, view.steps[0].attempt) == ("succeeded", 3)


async def test_the_blocks_retries_apply_without_a_policy_then_the_run_fails(
    tmp_path, autojump_clock
):
    flaky, sleepy = Flaky(failures=99, retries=1, backoff=2), Sleepy()
    async with running_scheduler(tmp_path, [flaky, sleepy]) as h:
        run_id = await h.submit([step("a", "flaky"), step("b", after=("a",))])
        done = await h.store.until(run_id, *TERMINAL_KINDS)
        view = await h.get(run_id)
    assert [n for n, _ in flaky.attempts] == [1, 2]
    assert flaky.attempts[1][1] - flaky.attempts[0][1] == 2.0
    assert [e.payload["delay"] for e in h.store.events(run_id, "step_retrying")] == [2.0]
    assert (done.kind, done.step_id) == ("run_failed", "a")
    assert done.payload == {"error": "step 'a' failed: RuntimeError: nope 2"}
    assert [(s.step_id, s.status) for s in view.steps] == [("a", "failed"), ("b", "skipped")]
    assert sleepy.started == []


class Fails(Block):
    """Fails every attempt after ``seconds``, noting each attempt's number."""

    def __init__(self, name: str, seconds: float, **options: Any) -> None:
        super().__init__(**options)
        self.name, self.seconds = name, seconds
        self.attempts: list[int] = []

    async def run(self, ctx: BlockContext) -> Any:
        self.attempts.append(ctx.attempt)
        await trio.sleep(self.seconds)
        raise RuntimeError("broken")


@pytest.mark.parametrize(
    ("f_takes", "t_takes", "f_attempts"),
    [(1.0, 0.5, [1]), (0.0, 0.5, [1]), (0.0, 3.0, [1, 2])],
    ids=["as-it-fails", "during-its-backoff", "after-a-retry"],
)
async def test_a_step_is_not_retried_once_another_step_failed_the_run(
    tmp_path, autojump_clock, f_takes, t_takes, f_attempts
):
    # after t failed the run, the scheduler still leased f's next attempt (a mutator's retry is
    # a side effect of a run already lost)
    f, t = Fails("f_block", f_takes), Fails("t_block", t_takes)
    async with running_scheduler(tmp_path, [f, t]) as h:
        started = trio.current_time()
        run_id = await h.submit([
            step("f", "f_block", retry={"max_attempts": 5, "backoff": 2.0}),
            step("t", "t_block"),
        ])  # fmt: skip
        done = await h.store.until(run_id, *TERMINAL_KINDS)
        took = trio.current_time() - started
        view = await h.get(run_id)
    assert (done.kind, done.step_id) == ("run_failed", "t")
    # as t fails, not once f's backoff (2 s, then 4 s) is over: the run was lost then
    assert took < max(f_takes, t_takes) + 0.1
    assert f.attempts == f_attempts
    assert {s.step_id: s.status for s in view.steps} == {"f": "failed", "t": "failed"}
    [final] = [e for e in h.store.events(run_id, "step_failed") if e.step_id == "f"]
    assert final.payload["error"]["message"] == (
        "RuntimeError: broken (not retried: step 't' failed the run)"
    )


async def test_an_attempt_over_the_steps_timeout_fails_timed_out(tmp_path, autojump_clock):
    async with running_scheduler(tmp_path, [Sleepy(timeout=1000)]) as h:
        t0 = trio.current_time()
        run_id = await h.submit([step("a", inputs={"s": 100}, timeout=5)])
        failed = await h.store.until(run_id, "step_failed")
    assert trio.current_time() - t0 == 5
    assert failed.payload["error"] == {"message": "timed out after 5s", "attempt": 1,
                                       "timed_out": True}  # fmt: skip


async def test_the_blocks_timeout_applies_when_the_step_sets_none(tmp_path, autojump_clock):
    async with running_scheduler(tmp_path, [Sleepy(timeout=2)]) as h:
        t0 = trio.current_time()
        run_id = await h.submit([step("a", inputs={"s": 100})])
        failed = await h.store.until(run_id, "step_failed")
        t1 = trio.current_time()
    assert failed.payload["error"]["message"] == "timed out after 2s"
    assert t1 - t0 == 2


async def test_a_timed_out_attempt_is_retried_like_any_failure(tmp_path, autojump_clock):
    async with running_scheduler(tmp_path, [Sleepy()]) as h:
        retry = {"max_attempts": 2, "backoff": 3}
        run_id = await h.submit([step("a", inputs={"s": 100}, timeout=1, retry=retry)])
        done = await h.store.until(run_id, *TERMINAL_KINDS)
    leases = h.store.events(run_id, "step_leased")
    assert [e.payload["attempt"] for e in leases] == [1, 2]
    assert h.store.events(run_id, "step_retrying")[0].payload["delay"] == 3.0
    assert done.kind == "run_failed"


# --- breakpoints, pause and resume ------------------------------------------------------------


async def test_a_breakpoint_pauses_before_its_step_until_resume(tmp_path, autojump_clock):
    sleepy = Sleepy()
    async with running_scheduler(tmp_path, [sleepy]) as h:
        run_id = await h.submit([step("a"), step("b", after=("a",))], breakpoints=("b",))
        paused = await h.store.until(run_id, "run_paused")
        await trio.sleep(60)  # a paused run stays paused
        view = await h.get(run_id)
        assert paused.step_id == "b"
        assert (view.status, [s.status for s in view.steps]) == (
            "PAUSED_AT_STEP", ["succeeded", "pending"]
        )  # fmt: skip
        assert [s for s, _ in sleepy.started] == ["a"]
        assert await ask(h.inbox, lambda r: ResumeRun(run_id, r)) == ("RUNNING", "b")
        done = await h.store.until(run_id, *TERMINAL_KINDS)
    assert done.kind == "run_succeeded"
    assert [s for s, _ in sleepy.started] == ["a", "b"]
    kinds = h.kinds(run_id)
    assert kinds[kinds.index("run_paused") :] == [
        "run_paused", "run_resumed", "step_leased", "step_completed", "run_succeeded"
    ]  # fmt: skip


async def test_steps_ready_before_the_breakpoint_still_start(tmp_path, autojump_clock):
    sleepy = Sleepy()
    async with running_scheduler(tmp_path, [sleepy]) as h:
        run_id = await h.submit([step("a"), step("b"), step("c")], breakpoints=("b",))
        await h.store.until(run_id, "run_paused")
        await trio.sleep(10)
        assert [s for s, _ in sleepy.started] == ["a"]
        await ask(h.inbox, lambda r: ResumeRun(run_id, r))
        await h.store.until(run_id, *TERMINAL_KINDS)
    assert sorted(s for s, _ in sleepy.started) == ["a", "b", "c"]


async def test_a_resume_starts_the_held_step_while_another_still_runs(tmp_path, autojump_clock):
    sleepy = Sleepy()
    async with running_scheduler(tmp_path, [sleepy]) as h:
        run_id = await h.submit([step("a", inputs={"s": 50}), step("b")], breakpoints=("b",))
        await h.store.until(run_id, "run_paused")
        await trio.sleep(10)
        await ask(h.inbox, lambda r: ResumeRun(run_id, r))
        resumed_at = trio.current_time()
        done = await h.store.until(run_id, *TERMINAL_KINDS)
    started = dict(sleepy.started)
    assert started["b"] - resumed_at < 1  # not once "a" ends, 40 s later
    assert done.kind == "run_succeeded"


async def test_a_resume_before_the_driver_waits_again_still_starts_the_held_step(
    tmp_path, autojump_clock, monkeypatch
):
    # The driver, busy after recording the pause (a full attestor mailbox on a fresh daemon),
    # found the run running again and waited for the step still running to end: the held step
    # started ~4 s after its ResumeRun (a hunt, on first runs)
    real_flush = Scheduler._flush

    async def slow_flush(self: Scheduler, run: RunState) -> None:
        if run.status == "PAUSED_AT_STEP":
            await trio.sleep(5)
        await real_flush(self, run)

    monkeypatch.setattr(Scheduler, "_flush", slow_flush)
    sleepy = Sleepy()
    async with running_scheduler(tmp_path, [sleepy]) as h:
        run_id = await h.submit([step("a", inputs={"s": 50}), step("b")], breakpoints=("b",))
        await h.store.until(run_id, "run_paused")
        await ask(h.inbox, lambda r: ResumeRun(run_id, r))
        resumed_at = trio.current_time()
        done = await h.store.until(run_id, *TERMINAL_KINDS)
    assert dict(sleepy.started)["b"] - resumed_at <= 5  # the driver's 5 s, not a's 50
    assert done.kind == "run_succeeded"


async def test_a_stop_in_a_pause_with_a_step_running_waits_for_it_without_spinning(
    tmp_path, monkeypatch
):
    # On a stop every wakeup was set and left in place: the driver's wait for the step or the
    # resume returned at once, again and again, for as long as the step ran (a review: 9,530
    # passes, 1.3 s of CPU in 2 s)
    real, passes = Scheduler._step_end_or_resume, [0]

    async def counted(self: Scheduler, *args: Any) -> Any:
        passes[0] += 1
        return await real(self, *args)

    monkeypatch.setattr(Scheduler, "_step_end_or_resume", counted)
    async with running_scheduler(tmp_path, [Sleepy()], grace=5) as h:
        run_id = await h.submit([step("a", inputs={"s": 0.5}), step("b")], breakpoints=("b",))
        await h.store.until(run_id, "run_paused")
    assert passes[0] < 5
    assert "step_completed" in h.kinds(run_id)  # a ended within the grace


async def test_a_run_that_fails_in_its_pause_leaves_no_wakeup_behind(tmp_path, autojump_clock):
    async with running_scheduler(tmp_path, [Flaky(99), Sleepy()]) as h:
        for _ in range(3):
            run_id = await h.submit([step("a", "flaky"), step("b")], breakpoints=("b",))
            assert (await h.store.until(run_id, *TERMINAL_KINDS)).kind == "run_failed"
        assert h.scheduler is not None
        assert h.scheduler._wakeups == {}


async def test_a_paused_run_with_a_step_running_cancels_and_stops_at_once(tmp_path, autojump_clock):
    async with running_scheduler(tmp_path, [Sleepy()]) as h:
        run_id = await h.submit([step("a", inputs={"s": 50}), step("b")], breakpoints=("b",))
        await h.store.until(run_id, "run_paused")
        t0 = trio.current_time()
        answer = await ask(h.inbox, lambda r: CancelRun(run_id, "enough", r))
        assert trio.current_time() - t0 < 1
        assert answer == ("CANCELED", ("a",))
    assert h.kinds(run_id)[-1] == "run_canceled"


async def test_a_breakpoint_added_to_a_live_run_holds_its_next_step(tmp_path, autojump_clock):
    sleepy = Sleepy()
    async with running_scheduler(tmp_path, [sleepy]) as h:
        run_id = await h.submit([step("a", inputs={"s": 10}), step("b", after=("a",))])
        await h.store.until(run_id, "step_leased")
        points = await ask(h.inbox, lambda r: UpdateBreakpoints(run_id, ("b",), (), False, r))
        paused = await h.store.until(run_id, "run_paused")
        assert (points, paused.step_id) == (["b"], "b")
        assert (await h.get(run_id)).status == "PAUSED_AT_STEP"
        await ask(h.inbox, lambda r: ResumeRun(run_id, r))
        done = await h.store.until(run_id, *TERMINAL_KINDS)
    assert done.kind == "run_succeeded"


# --- graceful stop and recovery ---------------------------------------------------------------


async def test_a_stop_gives_running_steps_the_grace_then_leaves_the_run(tmp_path, autojump_clock):
    async with running_scheduler(tmp_path, [Sleepy()], grace=5) as h:
        run_id = await h.submit([step("a", inputs={"s": 100})])
        await h.store.until(run_id, "step_leased")
        t0 = trio.current_time()
    assert trio.current_time() - t0 == 5
    assert h.kinds(run_id) == ["run_submitted", "run_started", "step_leased"]  # nothing failed


async def test_a_step_finishing_within_the_grace_is_recorded_and_nothing_new_starts(
    tmp_path, autojump_clock
):
    sleepy = Sleepy()
    async with running_scheduler(tmp_path, [sleepy], grace=5) as h:
        run_id = await h.submit([step("a", inputs={"s": 2}), step("b", after=("a",))])
        await h.store.until(run_id, "step_leased")
        t0 = trio.current_time()
    assert trio.current_time() - t0 == 2
    assert h.kinds(run_id)[-2:] == ["step_leased", "step_completed"]
    assert [s for s, _ in sleepy.started] == ["a"]


async def test_a_stop_does_not_wait_out_a_backoff(tmp_path, autojump_clock):
    flaky = Flaky(failures=99)
    async with running_scheduler(tmp_path, [flaky], grace=50) as h:
        run_id = await h.submit([step("a", "flaky", retry={"max_attempts": 3, "backoff": 1000})])
        await h.store.until(run_id, "step_retrying")
        t0 = trio.current_time()
    assert trio.current_time() - t0 == 0
    assert h.kinds(run_id)[-1] == "step_retrying"


async def test_a_stop_leaves_a_paused_run_paused(tmp_path, autojump_clock):
    async with running_scheduler(tmp_path, [Sleepy()]) as h:
        run_id = await h.submit([step("a")], breakpoints=("a",))
        await h.store.until(run_id, "run_paused")
        t0 = trio.current_time()
    assert trio.current_time() - t0 == 0
    assert h.kinds(run_id)[-1] == "run_paused"


def interrupted_run(steps: list[dict[str, Any]], make: Callable[[RunState], None]) -> StoredRun:
    """A run as a killed daemon left it in the store: its submission and its log."""
    dag_json = json.dumps({"steps": steps})
    submission = RunSubmission("run_old", dag_json, {}, 7, {}, (), "", T0)
    run = RunState.new(submission, parse_dag(dag_json, None))
    run.make_event("run_submitted", T0, steps=len(steps), seed=7)
    run.make_event("run_started", T0)
    make(run)
    return submission, list(run.events)


async def test_on_start_an_interrupted_step_is_leased_again_with_the_next_attempt(
    tmp_path, autojump_clock
):
    def lease(run: RunState, step_id: str, attempt: int) -> None:
        run.make_event("step_leased", T0, step_id, attempt=attempt, inputs={}, seed=1, model="",
                       env={})  # fmt: skip

    def left(run: RunState) -> None:
        lease(run, "a", 1)
        run.make_event("step_completed", T0, "a", output={"step": "a"}, usage={})
        lease(run, "b", 1)

    sleepy = Sleepy()
    stored = interrupted_run([step("a"), step("b", after=("a",))], left)
    async with running_scheduler(tmp_path, [sleepy], store=FakeStore([stored])) as h:
        done = await h.store.until("run_old", *TERMINAL_KINDS)
    assert h.resumed == 1
    assert done.kind == "run_succeeded"
    assert [s for s, _ in sleepy.started] == ["b"]  # a kept its output
    assert [
        (e.step_id, e.payload["attempt"]) for e in h.store.events("run_old", "step_leased")
    ] == [("b", 2)]


async def test_a_resume_after_a_restart_in_a_pause_starts_the_held_step_at_once(
    tmp_path, autojump_clock
):
    # Started again in a pause with one step leased, the driver ran that step itself, waiting
    # for no resume: the held step started only once it ended (a crash hunt: 7 s late)
    def left(run: RunState) -> None:
        run.make_event("step_leased", T0, "a", attempt=1, inputs={"s": 50}, seed=1, model="",
                       env={})  # fmt: skip
        run.make_event("run_paused", T0, "b")

    sleepy = Sleepy()
    stored = interrupted_run([step("a", inputs={"s": 50}), step("b")], left)
    async with running_scheduler(tmp_path, [sleepy], store=FakeStore([stored])) as h:
        await trio.sleep(5)  # (virtual) a runs again, b held
        assert [s for s, _ in sleepy.started] == ["a"]
        assert (await h.get("run_old")).status == "PAUSED_AT_STEP"
        await ask(h.inbox, lambda r: ResumeRun("run_old", r))
        resumed_at = trio.current_time()
        done = await h.store.until("run_old", *TERMINAL_KINDS)
    assert dict(sleepy.started)["b"] - resumed_at < 1  # not once a ends, 45 s on
    assert done.kind == "run_succeeded"


class Quiet(Block):
    """Runs a command that writes nothing."""

    name = "quiet"

    async def run(self, ctx: BlockContext) -> Any:
        await ctx.run_command(["true"])
        return {}


async def test_a_runs_commands_that_wrote_nothing_leave_no_empty_folder(tmp_path):
    async with running_scheduler(tmp_path, [Quiet()]) as h:
        run_id = await h.submit([step("a", "quiet"), step("b", "quiet", after=("a",))])
        assert (await h.store.until(run_id, *TERMINAL_KINDS)).kind == "run_succeeded"
    assert not (tmp_path / "artifacts" / "runs" / run_id).exists()


class SlowStore(FakeStore):
    """Takes each message 10 ms after the last: its mailbox fills up."""

    async def run(self, inbox: trio.MemoryReceiveChannel[StoreMessage]) -> None:
        async with inbox:
            async for message in inbox:
                await trio.sleep(0.01)
                self.answer(message)


async def test_appends_wait_for_room_in_a_full_store_mailbox_and_keep_their_order(
    tmp_path, autojump_clock
):
    """The scheduler hands its appends over without a scheduling pass while the store's mailbox
    has room; when it is full, they wait for room — none is lost or reordered."""
    store = SlowStore()
    chain = [step("a", "flaky")] + [step(f"s{i}", "flaky", after=("a",)) for i in range(6)]
    async with running_scheduler(tmp_path, [Flaky(0)], store=store, store_mailbox=1) as h:
        run_id = await h.submit(chain)
        await store.until(run_id, *TERMINAL_KINDS)
        view = await h.get(run_id)
    assert view.status == "SUCCEEDED"
    events = store.events(run_id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert h.kinds(run_id).count("step_completed") == 7


# --- the durable path: leases, completions and their commits -----------------------------------


class Mutating(Block):
    """A mutator: notes, as it runs, which of its run's events the store has committed."""

    name = "mutating"
    kind = BlockKind.MUTATOR

    def __init__(self, store: CommittingStore, **options: Any) -> None:
        super().__init__(**options)
        self.store = store
        self.ran: list[tuple[str, int]] = []  # (step id, lease seq committed when it ran)

    async def run(self, ctx: BlockContext) -> Any:
        leases = [e for e in self.store.committed if e.kind == "step_leased"]
        mine = [e.seq for e in leases if e.step_id == ctx.step_id]
        self.ran.append((ctx.step_id, mine[-1] if mine else 0))
        return {"n": ctx.payload.get("n", 0)}


class CommittingStore(FakeStore):
    """Takes what waits in its mailbox in one go (as the store's receiver does), notes each such
    batch, and commits — acknowledges — a batch only one scheduling pass later."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[Append]] = []
        self.committed: list[RunEventRecord] = []
        self.barriers: list[set[str]] = []  # the steps completed in the store at each Barrier

    async def run(self, inbox: trio.MemoryReceiveChannel[StoreMessage]) -> None:
        async with inbox:
            while True:
                try:
                    messages = [await inbox.receive()]
                except trio.EndOfChannel:
                    return
                while True:
                    try:
                        messages.append(inbox.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                self.batches.append([m for m in messages if isinstance(m, Append)])
                await trio.lowlevel.checkpoint()  # the commit takes a while
                for message in messages:
                    if isinstance(message, Append):
                        self.committed.extend(
                            r for r in message.records if isinstance(r, RunEventRecord)
                        )
                    elif isinstance(message, Barrier):
                        done = {e.step_id for e in self.committed if e.kind == "step_completed"}
                        self.barriers.append(done)
                    self.answer(message)


def chain_of(step_type: str, count: int) -> list[dict[str, Any]]:
    steps = [{"id": "s0", "type": step_type, "inputs": {"n": 0}}]
    for i in range(1, count):
        inputs = {"n": i, "prev": f"${{steps.s{i - 1}.output.n}}"}
        steps.append({"id": f"s{i}", "type": step_type, "inputs": inputs})
    return steps


async def test_a_mutator_runs_only_once_its_lease_is_committed(tmp_path, autojump_clock):
    store = CommittingStore()
    block = Mutating(store)
    async with running_scheduler(tmp_path, [block], store=store) as h:
        run_id = await h.submit(chain_of("mutating", 6))
        await store.until(run_id, *TERMINAL_KINDS)
    leases = {e.step_id: e.seq for e in store.events(run_id, "step_leased")}
    assert block.ran == [(f"s{i}", leases[f"s{i}"]) for i in range(6)]


async def test_a_steps_completion_reaches_the_store_with_the_next_steps_lease(
    tmp_path, autojump_clock
):
    """On a chain of mutators the completion of a step and the lease of the next arrive in the
    store's mailbox together (one commit for both): the completion first, as an append of its
    own (no acknowledgement: nobody waits for it), the lease with its acknowledgement."""
    store = CommittingStore()
    async with running_scheduler(tmp_path, [Mutating(store)], store=store) as h:
        run_id = await h.submit(chain_of("mutating", 5))
        await store.until(run_id, *TERMINAL_KINDS)
    for i in range(1, 5):
        [batch] = [b for b in store.batches if any(_leases(a, f"s{i}") for a in b)]
        kinds = [[(r.kind, r.step_id) for r in a.records] for a in batch]
        assert kinds == [[("step_completed", f"s{i - 1}")], [("step_leased", f"s{i}")]]
        assert batch[0].ack is None
        assert batch[1].ack is not None
    events = store.events(run_id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))


class FullDisk(CommittingStore):
    """Fails every append of a lease, as a store whose journal's disk is full."""

    def answer(self, message: Any) -> None:
        leases = isinstance(message, Append) and any(
            getattr(r, "kind", "") == "step_leased" for r in message.records
        )
        if leases and message.ack is not None:
            message.ack.fail(OSError(28, "No space left on device"))
            return
        super().answer(message)


async def test_a_lease_the_store_cannot_commit_stops_its_run_not_the_scheduler(
    tmp_path, autojump_clock, caplog
):
    # the failed commit went up the run's driver and ended the whole daemon
    store = FullDisk()
    block = Mutating(store)
    async with running_scheduler(tmp_path, [block], store=store) as h:
        run_id = await h.submit(chain_of("mutating", 3))
        await trio.sleep(1)
        view = await h.get(run_id)  # the scheduler still answers
        again = await h.submit(chain_of("mutating", 2))
        await trio.sleep(1)
        assert (await h.get(again)).status == "RUNNING"
    assert block.ran == []  # no side effect without its durable lease
    assert view.status == "RUNNING"  # unfinished: the next start goes on with it
    assert f"run {run_id} stops until the next start: [Errno 28] No space left" in caplog.text


async def test_a_chain_of_plain_functions_lets_the_rest_of_the_daemon_run_between_steps(tmp_path):
    """A chain's driver runs each step itself, and a plain function's step never yields: the
    driver does, between steps, so the rest of the daemon (an RPC, another run) gets turns all
    along the chain."""
    turns = 0
    seen: list[int] = []

    @block("plain", kind=BlockKind.OBSERVER, timeout=None)
    def plain(ctx: BlockContext) -> dict[str, Any]:
        seen.append(turns)
        return {"n": ctx.inputs["n"]}

    async def bystander() -> None:
        nonlocal turns
        while True:
            turns += 1
            await trio.lowlevel.checkpoint()

    async with (
        running_scheduler(tmp_path, [plain], store_mailbox=1_024) as h,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(bystander)
        run_id = await h.submit(chain_of("plain", 40))
        done = await h.store.until(run_id, *TERMINAL_KINDS)
        nursery.cancel_scope.cancel()
    assert done.kind == "run_succeeded"
    assert len(seen) == 40
    # trio runs a batch of ready tasks in either order: a step may come before the bystander's
    # turn in the same batch, never two steps in a row without one
    assert all(seen[i + 2] > seen[i] for i in range(len(seen) - 2))


def _leases(append: Append, step_id: str) -> bool:
    return any(getattr(r, "kind", "") == "step_leased" and r.step_id == step_id
               for r in append.records)  # fmt: skip


async def test_an_observers_lease_is_not_waited_for(tmp_path, autojump_clock):
    """Nobody waits for an observer's lease (it runs ahead of its commit): its append asks for
    no acknowledgement, so the store may commit it with the step's completion."""
    store = CommittingStore()
    async with running_scheduler(tmp_path, [Flaky(0)], store=store) as h:
        run_id = await h.submit([step("a", "flaky"), step("b", "flaky", after=("a",))])
        await store.until(run_id, *TERMINAL_KINDS)
    leases = [a for b in store.batches for a in b if _leases(a, "a") or _leases(a, "b")]
    assert len(leases) == 2
    assert all(a.ack is None for a in leases)
    assert h.kinds(run_id).count("step_completed") == 2


async def test_a_runs_end_is_waited_for_and_its_steps_are_not(tmp_path, autojump_clock):
    """The driver waits for the commit of a run's end (CancelRun answers once it is over, and
    its caller may read the run from the store next): the append has an acknowledgement (the
    store commits it at once, hurried past a busy loop); an observer's lease and completion
    have none."""
    store = CommittingStore()
    async with running_scheduler(tmp_path, [Flaky(0)], store=store) as h:
        run_id = await h.submit([step("a", "flaky"), step("b", "flaky", after=("a",))])
        await store.until(run_id, *TERMINAL_KINDS)
    appends = [a for b in store.batches for a in b]
    ends = [a for a in appends if any(getattr(r, "kind", "") in TERMINAL_KINDS for r in a.records)]
    assert len(ends) == 1
    assert ends[0].ack is not None
    assert ends[0].records[-1].kind == "run_succeeded"
    steps_only = [a for a in appends if _leases(a, "a") or _leases(a, "b")]
    assert len(steps_only) == 2
    assert not any(a.ack or a.answers for a in steps_only)


class Holding(CommittingStore):
    """Commits an append holding an event of one of ``kinds`` only once ``release`` is set (as
    a slow disk would)."""

    def __init__(self, *kinds: str) -> None:
        super().__init__()
        self.kinds = kinds
        self.release = trio.Event()
        self._later: trio.Nursery | None = None

    async def run(self, inbox: trio.MemoryReceiveChannel[StoreMessage]) -> None:
        async with trio.open_nursery() as self._later:  # the held commits, once released
            await super().run(inbox)
            self.release.set()  # the scheduler is gone: nothing waits for them any more

    def answer(self, message: Any) -> None:
        held = isinstance(message, Append) and any(
            getattr(r, "kind", "") in self.kinds for r in message.records
        )
        if not held:
            super().answer(message)
            return
        self.records.extend(message.records)  # in the mailbox, not yet durable
        self._appended.set()
        self._appended = trio.Event()

        async def later() -> None:
            await self.release.wait()
            self.committed.extend(message.records)
            assert message.ack is not None
            message.ack.send(None)

        assert self._later is not None
        self._later.start_soon(later)


async def test_cancel_answers_once_the_runs_end_is_committed(tmp_path, autojump_clock):
    # CancelRun answered CANCELED while run_canceled was still on its way to the store: a
    # ReplayRun sent right after read the run as paused and refused it.
    store = Holding(*TERMINAL_KINDS)
    async with running_scheduler(tmp_path, [Flaky(0)], store=store) as h:
        run_id = await h.submit([step("a", "flaky"), step("b", "flaky", after=("a",))], ("b",))
        await store.until(run_id, "run_paused")
        answered: list[Any] = []

        async def cancel() -> None:
            answered.append(await ask(h.inbox, lambda r: CancelRun(run_id, "enough", r)))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(cancel)
            await store.until(run_id, "run_canceled")
            await trio.sleep(1)  # virtual: the driver has long been waiting for the commit
            assert answered == []
            store.release.set()
    assert answered == [("CANCELED", ())]
    assert [e.kind for e in store.committed][-1] == "run_canceled"


async def test_a_run_being_cancelled_cannot_be_resumed(tmp_path, autojump_clock):
    # ResumeRun racing CancelRun was acknowledged ("resumed b") after cancel_requested was
    # durable, and b never ran
    store = Holding("cancel_requested")  # CancelRun waits for it: the run stays paused
    async with running_scheduler(tmp_path, [Flaky(0)], store=store) as h:
        run_id = await h.submit([step("a", "flaky"), step("b", "flaky", after=("a",))], ("b",))
        await store.until(run_id, "run_paused")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask, h.inbox, lambda r: CancelRun(run_id, "enough", r))
            await store.until(run_id, "cancel_requested")
            with pytest.raises(FailedPrecondition, match="is being cancelled, not paused"):
                await ask(h.inbox, lambda r: ResumeRun(run_id, r))
            # nor patched, nor its breakpoints changed: each was acknowledged, never to apply
            with pytest.raises(FailedPrecondition, match="is being cancelled: its steps will"):
                await ask(h.inbox, lambda r: PatchStep(run_id, "b", {"x": 1}, None, None, "", r))
            with pytest.raises(FailedPrecondition, match="is being cancelled; breakpoints"):
                await ask(h.inbox, lambda r: UpdateBreakpoints(run_id, (), (), True, r))
            store.release.set()
    assert not {"run_resumed", "step_patched", "breakpoints_updated"} & set(h.kinds(run_id))


async def test_getrun_shows_no_completion_the_store_has_not_taken(tmp_path, autojump_clock):
    """A completion the scheduler holds back for the next lease goes to the store before
    GetRun's Barrier: what GetRun shows is committed."""
    store = CommittingStore()
    views: list[RunView] = []
    async with running_scheduler(tmp_path, [Mutating(store)], store=store) as h:
        run_id = await h.submit(chain_of("mutating", 8))
        while not any(e.kind in TERMINAL_KINDS for e in store.events(run_id)):
            views.append(await h.get(run_id))
    assert len(views) == len(store.barriers)
    assert len(views) > 3
    for view, committed in zip(views, store.barriers, strict=True):
        shown = {s.step_id for s in view.steps if s.status == "succeeded"}
        assert shown <= committed


async def test_resume_answers_once_committed_and_the_run_goes_on(tmp_path, autojump_clock):
    store = CommittingStore()
    async with running_scheduler(tmp_path, [Flaky(0)], store=store) as h:
        run_id = await h.submit([step("a", "flaky"), step("b", "flaky", after=("a",))], ("b",))
        await store.until(run_id, "run_paused")
        status, step_id = await ask(h.inbox, lambda r: ResumeRun(run_id, r))
        assert (status, step_id) == ("RUNNING", "b")
        assert "run_resumed" in [e.kind for e in store.committed]  # told only once committed
        await store.until(run_id, *TERMINAL_KINDS)
    assert h.kinds(run_id)[-4:] == ["run_resumed", "step_leased", "step_completed",
                                    "run_succeeded"]  # fmt: skip


# --- a step's artifact folder ----------------------------------------------------------------


class Folders(Block):
    """Notes the artifact folder each step sees."""

    name = "folders"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.seen: dict[str, Any] = {}

    async def run(self, ctx: BlockContext) -> Any:
        self.seen[ctx.step_id] = ctx.artifact_dir
        return {}


async def test_a_step_sees_its_own_artifact_folder_as_a_path(tmp_path, autojump_clock):
    block = Folders()
    async with running_scheduler(tmp_path, [block]) as h:
        run_id = await h.submit([step("a.1", "folders"), step("b", "folders", after=("a.1",))])
        await h.store.until(run_id, *TERMINAL_KINDS)
    assert block.seen == {
        step_id: tmp_path / "artifacts" / "runs" / run_id / step_id for step_id in ("a.1", "b")
    }
    assert all(type(folder) is type(tmp_path) for folder in block.seen.values())


# --- large DAGs ----------------------------------------------------------------------------------


def sleepy_chain(count: int, prefix: str) -> list[dict[str, Any]]:
    """A chain of ``count`` sleepy steps (the first held by the breakpoint the test sets)."""
    return [
        step(f"{prefix}{i:05d}", after=(f"{prefix}{i - 1:05d}",) if i else (), inputs={"s": 0})
        for i in range(count)
    ]


async def test_a_large_dag_is_parsed_off_the_loop_while_a_small_one_is_answered(tmp_path):
    """A DAG of PARSE_OFF_LOOP_BYTES or more is parsed and checked on a worker thread: a small
    run submitted after it is accepted first (parsed on the loop, it waited for the large one's
    ~0.3 s); a duplicate of the large one, sent meanwhile, gets the same run; and a large DAG
    with an error is refused as a small one is."""
    from foundry.kernel.actors.scheduler.actor import PARSE_OFF_LOOP_BYTES
    from foundry.kernel.errors import InvalidArgument

    big = json.dumps({"steps": sleepy_chain(20_000, "b")})
    assert len(big) >= PARSE_OFF_LOOP_BYTES
    answered: list[tuple[str, str]] = []
    with trio.fail_after(60):
        async with running_scheduler(tmp_path, [Sleepy()]) as h:

            async def submit(name: str, dag_json: str, breakpoint: str, key: str = "") -> None:
                run_id = await ask(
                    h.inbox, lambda r: SubmitRun(dag_json, {}, 7, {}, (breakpoint,), key, r)
                )
                answered.append((name, run_id))

            small = json.dumps({"steps": sleepy_chain(3, "s")})
            async with trio.open_nursery() as nursery:
                nursery.start_soon(submit, "big", big, "b00000", "same-key")
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(submit, "again", big, "b00000", "same-key")
                nursery.start_soon(submit, "small", small, "s00000")
            assert [name for name, _ in answered] == ["small", "big", "again"]
            assert answered[1][1] == answered[2][1]  # the duplicate's run is the first's
            assert (await h.get(answered[1][1])).status == "PAUSED_AT_STEP"
            # ListRuns pages newest first by created_at: stamped as the big one arrived, it
            # reached the store after a newer run and fell between the pages a client read.
            stored = [r for r in h.store.records if isinstance(r, RunSubmission)]
            assert [r.run_id for r in stored] == [answered[0][1], answered[1][1]]
            assert stored[0].created_at <= stored[1].created_at
            assert (await h.get(answered[1][1])).created_at == stored[1].created_at

            broken = big.replace('"b19999"', '"b19998"', 1)  # a step id twice
            with pytest.raises(InvalidArgument, match="b19998"):
                await ask(h.inbox, lambda r: SubmitRun(broken, {}, 7, {}, (), "", r))


async def test_a_duplicate_of_a_large_dag_that_fails_hears_so_and_the_key_is_free_again(tmp_path):
    """A duplicate sent while a large DAG is being parsed waits for it; when the DAG is refused,
    the duplicate hears the first submission failed, and the key is taken by the next one."""
    from foundry.kernel.errors import InvalidArgument

    steps = sleepy_chain(20_000, "b")
    steps[-1]["id"] = steps[-2]["id"]  # a step id twice: refused after the whole parse
    broken = json.dumps({"steps": steps})
    outcomes: list[str] = []
    with trio.fail_after(60):
        async with running_scheduler(tmp_path, [Sleepy()]) as h:

            async def submit(dag_json: str) -> None:
                try:
                    await ask(h.inbox, lambda r: SubmitRun(dag_json, {}, 7, {}, (), "key-1", r))
                except (InvalidArgument, Unavailable) as exc:
                    outcomes.append(type(exc).__name__)
                else:
                    outcomes.append("accepted")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(submit, broken)
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(submit, broken)
            assert sorted(outcomes) == ["InvalidArgument", "Unavailable"]
            await submit(json.dumps({"steps": sleepy_chain(2, "s")}))
            assert outcomes[-1] == "accepted"


class SetsBytes(Block):
    """Sets the trace's raw output to bytes, as a block that ran a program its own way might."""

    name = "sets-bytes"

    async def run(self, ctx: BlockContext) -> Any:
        ctx.raw_output = b"from a subprocess"  # type: ignore[assignment]
        ctx.ran_command = True
        return {"ok": True}


async def test_a_step_setting_what_cannot_be_recorded_fails_naming_the_field(tmp_path):
    async with running_scheduler(tmp_path, [SetsBytes()]) as h:
        run_id = await h.submit([step("a", "sets-bytes")])
        await h.store.until(run_id, *TERMINAL_KINDS)
    [failed] = h.store.events(run_id, "step_failed")
    assert "ctx.raw_output must be a str, not bytes" in failed.payload["error"]["message"]
    assert h.store.events(run_id, "step_completed") == []


class SetsUsage(Block):
    """Sets its own ``ctx.usage`` (not through ``record_usage``) to what it was made with."""

    name = "sets-usage"

    def __init__(self, usage: Any) -> None:
        self.usage = usage

    async def run(self, ctx: BlockContext) -> Any:
        ctx.usage = self.usage
        return {"ok": True}


@pytest.mark.parametrize(
    ("usage", "said"),
    [
        (5, "ctx.usage must be a Usage (ctx.record_usage adds to it), not int"),  # ran forever
        (Usage(0, 0, math.nan), "ctx.usage.cost must be a number from 0"),  # lost its completion
        (Usage(-1, 0, 0.0), "ctx.usage.tokens_in must be a whole number from 0"),
    ],
)
@pytest.mark.parametrize("spans", [False, True], ids=["spans-off", "spans-on"])
async def test_a_step_setting_a_usage_that_cannot_be_recorded_fails_naming_it(
    tmp_path, usage, said, spans
):
    async with running_scheduler(tmp_path, [SetsUsage(usage)], spans=spans) as h:
        run_id = await h.submit([step("a", "sets-usage")])
        await h.store.until(run_id, *TERMINAL_KINDS)
    [failed] = h.store.events(run_id, "step_failed")
    assert said in failed.payload["error"]["message"]
    assert [e.kind for e in h.store.events(run_id)][-1] == "run_failed"


class Returns(Block):
    """Answers the value it was made with."""

    name = "returns"

    def __init__(self, value: Any) -> None:
        super().__init__()
        self.value = value

    async def run(self, ctx: BlockContext) -> Any:
        return self.value


def _nested(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels):
        value = {"a": value}
    return value


@pytest.mark.parametrize(
    ("value", "said"),
    [
        # recorded, then no GetRun or TapRun of the run could write it (a Value's double)
        ({"n": 10**400}, "is past what a double holds"),
        ({"n": -(10**400)}, "is past what a double holds"),
        # ("'<' not supported between instances of 'str' and 'int'", a hunt found)
        ({1: "a", "1": "b"}, "an object's keys are strings and numbers both"),
    ],
    ids=["huge-int", "huge-negative", "mixed-keys"],
)
async def test_an_output_no_client_could_read_fails_its_step(tmp_path, autojump_clock, value, said):
    async with running_scheduler(tmp_path, [Returns(value)]) as h:
        run_id = await h.submit([step("a", "returns")])
        done = await h.store.until(run_id, *TERMINAL_KINDS)
        view = await h.get(run_id)
    assert (done.kind, done.step_id) == ("run_failed", "a")
    assert said in done.payload["error"]
    assert view.steps[0].status == "failed"


@pytest.mark.parametrize(
    ("value", "said"),
    [
        # RecursionError escaped the output's check: the run stopped RUNNING, for good (a
        # CancelRun hung), and again at each start (5,000 values: judged on a worker thread)
        (_nested(5_000), "the step's output is not JSON: nested too deep to write"),
        ([None] * 3_000 + [{1: "a", "1": "b"}], "an object's keys are strings and numbers both"),
        ({"many": [None] * 3_000, "deep": _nested(5_000)}, "nested too deep to write"),
        ([None] * 3_000 + [{"x"}], "the step's output is not JSON"),
        ({"rows": [{"n": i, "f": i / 4, "s": f"r{i}"} for i in range(3_000)], "t": True}, ""),
    ],
    ids=["deep", "large-mixed-keys", "large-deep", "a-set", "fine"],
)
async def test_a_large_output_is_judged_as_a_small_one(tmp_path, value, said):
    """(Made JSON and read back on a worker thread: ~0.5 s of the loop for a 3 MB output. The
    real clock: trio's autojump clock jumps while a thread works.)"""
    async with running_scheduler(tmp_path, [Returns(value)]) as h:
        run_id = await h.submit([step("a", "returns")])
        done = await h.store.until(run_id, *TERMINAL_KINDS)
        view = await h.get(run_id)
    if said:
        assert (done.kind, done.step_id) == ("run_failed", "a")
        assert said in done.payload["error"]
    else:
        assert done.kind == "run_succeeded"
        assert view.steps[0].output == value
        assert view.steps[0].output is not value  # (frozen: read back from its JSON)


class EchoesInputs(Block):
    """Answers its inputs."""

    name = "echoes"

    async def run(self, ctx: BlockContext) -> Any:
        return dict(ctx.inputs)


LARGE_OUTPUT = {f"k{i}": i for i in range(20_000)}  # ~250 KB of JSON, 20,000 values


@pytest.fixture
def json_made_on_the_loop(monkeypatch) -> list[int]:
    """The sizes of the planner's and run control's JSON texts of 64 KiB or more made on the
    trio thread."""
    import threading

    from foundry.kernel.core import planner, run_control

    made: list[int] = []
    real = planner.compact_json

    def compact_json(value: Any) -> str:
        text = real(value)
        if len(text) >= 64 * 1024 and threading.current_thread() is threading.main_thread():
            made.append(len(text))
        return text

    monkeypatch.setattr(planner, "compact_json", compact_json)
    monkeypatch.setattr(run_control, "compact_json", compact_json)
    return made


@pytest.mark.parametrize(
    "inputs",
    [
        {"x": "${steps.a.output}", "again": "${steps.a.output}", "k7": "${steps.a.output.k7}"},
        {"text": "k3 is ${steps.a.output.k3}", "many": list(range(20_000))},
    ],
    ids=["referenced", "literal"],
)
async def test_a_large_lease_is_made_off_the_trio_thread(tmp_path, json_made_on_the_loop, inputs):
    """A step's inputs of many values are resolved, serialized and read back on a worker thread
    (~1-5 µs a value on the loop: 200,000 held every other call over a second), and leased as
    a small step's are. (The real clock: trio's autojump clock jumps while a thread works.)"""
    async with running_scheduler(tmp_path, [Returns(LARGE_OUTPUT), EchoesInputs()]) as h:
        run_id = await h.submit([step("a", "returns"), step("b", "echoes", inputs=inputs)])
        done = await h.store.until(run_id, *TERMINAL_KINDS)
        view = await h.get(run_id)
    assert done.kind == "run_succeeded", done.payload
    expected = dict(inputs)
    if "x" in inputs:
        expected.update(x=LARGE_OUTPUT, again=LARGE_OUTPUT, k7=7)
    else:
        expected["text"] = "k3 is 3"
    assert view.steps[1].output == expected
    [leased] = [e for e in h.store.events(run_id, "step_leased") if e.step_id == "b"]
    assert leased.payload["inputs"] == expected
    assert json_made_on_the_loop == []


async def test_a_large_lease_over_the_step_limit_fails_its_step(tmp_path, json_made_on_the_loop):
    config = SchedulerConfig(max_concurrent_steps=4, max_step_bytes=400_000)
    twice = {"x": "${steps.a.output}", "y": "${steps.a.output}"}  # ~500 KB once resolved
    async with running_scheduler(
        tmp_path, [Returns(LARGE_OUTPUT), EchoesInputs()], config=config
    ) as h:
        run_id = await h.submit([step("a", "returns"), step("b", "echoes", inputs=twice)])
        done = await h.store.until(run_id, *TERMINAL_KINDS)
    assert (done.kind, done.step_id) == ("run_failed", "b")
    assert "over 400,000 bytes of JSON, the step limit" in done.payload["error"]
    assert json_made_on_the_loop == []


async def test_a_large_step_ready_beside_a_breakpoint_starts_as_a_small_one(tmp_path):
    """The driver leases a large step too (around its worker thread), before the pause it
    plans: in its task, it was held back by that pause (a review)."""
    sleepy = Sleepy()
    async with running_scheduler(tmp_path, [sleepy]) as h:
        many = {"s": 0, "many": list(range(3_000))}
        run_id = await h.submit([step("a", inputs=many), step("b")], breakpoints=("b",))
        await h.store.until(run_id, "run_paused")
        await h.store.until(run_id, "step_completed")
        assert [s for s, _ in sleepy.started] == ["a"]
        await ask(h.inbox, lambda r: ResumeRun(run_id, r))
        await h.store.until(run_id, *TERMINAL_KINDS)
    assert sorted(s for s, _ in sleepy.started) == ["a", "b"]


@pytest.fixture
def lease_gate(monkeypatch) -> trio.Event:
    """A large lease's worker thread answers only once the test sets this (as a lease of
    200,000 values takes ~0.5-1 s)."""
    from foundry.kernel.actors.scheduler import actor
    from foundry.kernel.core.planner import LargeLease

    gate = trio.Event()
    real = actor.in_thread

    async def gated(function: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await real(function, *args, **kwargs)
        finally:
            if isinstance(getattr(function, "__self__", None), LargeLease):
                await gate.wait()

    monkeypatch.setattr(actor, "in_thread", gated)
    return gate


@pytest.mark.parametrize("reference", ["${steps.a.output.k7}", "${steps.a.output.nope}"])
async def test_a_large_lease_made_across_a_patch_of_its_step_is_made_again(
    tmp_path, lease_gate, reference
):
    """A step waiting for a slot leases in its task; a pause, a PatchStep and a resume while
    its worker thread made it: the lease (or the error) of the old inputs was recorded (a
    review). One slot: "b" waits for it while "c" runs, and leases once "c" ends, as the run
    pauses before "d"."""
    config = SchedulerConfig(max_concurrent_steps=1)
    blocks = [Returns(LARGE_OUTPUT), EchoesInputs(), Sleepy()]
    with trio.fail_after(60):  # (the real clock: the harness's bound is virtual seconds)
        async with running_scheduler(tmp_path, blocks, config=config) as h:
            inputs = {"k": reference, "big": "${steps.a.output}", "v": "old"}
            run_id = await h.submit(
                [step("a", "returns"), step("c", inputs={"s": 0.3}),
                 step("b", "echoes", after=("a",), inputs=inputs),
                 step("d", after=("c",), inputs={"s": 0})],
                breakpoints=("d",),
            )  # fmt: skip
            await h.store.until(run_id, "run_paused")
            patch = {"k": "${steps.a.output.k7}", "v": "new"}
            patched = await ask(h.inbox, lambda r: PatchStep(run_id, "b", patch, None, None, "", r))
            await ask(h.inbox, lambda r: ResumeRun(run_id, r))
            lease_gate.set()
            done = await h.store.until(run_id, *TERMINAL_KINDS)
    assert patched == "b"
    assert done.kind == "run_succeeded", done.payload
    [leased] = [e for e in h.store.events(run_id, "step_leased") if e.step_id == "b"]
    assert (leased.payload["inputs"]["k"], leased.payload["inputs"]["v"]) == (7, "new")


async def test_a_large_patch_is_made_off_the_trio_thread(tmp_path, json_made_on_the_loop):
    """A PatchStep of many values is merged, measured and checked on a worker thread (an
    inputs_patch of 180,000 keys held the loop 2-4 s, a hunt); the step runs as patched, and a
    patch past the step limit is refused naming the field."""
    many = {f"k{i}": i for i in range(20_000)}
    config = SchedulerConfig(max_concurrent_steps=4, max_step_bytes=400_000)
    async with running_scheduler(tmp_path, [EchoesInputs()], config=config) as h:
        run_id = await h.submit([step("a", "echoes", inputs={"v": 1})], breakpoints=("a",))
        await h.store.until(run_id, "run_paused")
        over = {"x": many, "y": many}  # ~500 KB
        with pytest.raises(InvalidArgument, match="inputs_patch: .* over the step limit"):
            await ask(h.inbox, lambda r: PatchStep(run_id, "a", over, None, None, "", r))
        await ask(h.inbox, lambda r: PatchStep(run_id, "a", {"x": many}, None, None, "", r))
        await ask(h.inbox, lambda r: ResumeRun(run_id, r))
        done = await h.store.until(run_id, *TERMINAL_KINDS)
        view = await h.get(run_id)
    assert done.kind == "run_succeeded", done.payload
    assert view.steps[0].output == {"v": 1, "x": many}
    assert json_made_on_the_loop == []


async def test_a_large_branch_is_made_off_the_trio_thread(tmp_path, json_made_on_the_loop):
    """CreateBranchRun's inputs and labels of many values are merged, checked and measured on
    a worker thread (an inputs_patch of 180,000 keys held the loop 1.4 s, 144,000 labels 2.2 s:
    a hunt); a patch past the step limit is refused naming the field."""
    from foundry.kernel.actors.scheduler.messages import BranchRun

    many = {f"k{i}": i for i in range(20_000)}
    labels = {f"l{i}": "v" for i in range(2_000)}  # (a run's labels: at most 16,384 characters)
    config = SchedulerConfig(max_concurrent_steps=4, max_step_bytes=400_000)
    async with running_scheduler(tmp_path, [EchoesInputs()], config=config) as h:
        source = await h.submit([step("a", "echoes", inputs={"v": 1})])
        await h.store.until(source, *TERMINAL_KINDS)

        def branch(inputs: dict[str, Any], labels: dict[str, Any]) -> Any:
            return lambda r: BranchRun(source, "a", "same", None, inputs, labels, "", r)

        with pytest.raises(InvalidArgument, match="inputs_patch: .* over the step limit"):
            await ask(h.inbox, branch({"x": many, "y": many}, {}))
        run_id = await ask(h.inbox, branch({"x": many}, labels))
        await h.store.until(run_id, *TERMINAL_KINDS)
        view = await h.get(run_id)
    assert view.status == "SUCCEEDED"
    assert view.inputs == {"x": many}
    assert view.labels == labels
    assert json_made_on_the_loop == []


async def test_a_cancel_while_a_large_lease_is_made_keeps_the_runs_events_in_order(
    tmp_path, lease_gate
):
    """The driver made "b"'s small lease event, then waited for "c"'s large lease: the
    CancelRun's event, made meanwhile, reached the store ahead of it, and a live tapper (which
    keeps only events past the last it sent) lost "b"'s lease (a review). Every lease is now
    made before their events: "b" is held back by the cancel."""
    inputs = {f"r{i}": "${steps.a.output}" for i in range(3)}
    with trio.fail_after(60):  # (the real clock: the harness's bound is virtual seconds)
        async with running_scheduler(tmp_path, [Returns(LARGE_OUTPUT), EchoesInputs()]) as h:
            run_id = await h.submit(
                [step("a", "returns"), step("b", "echoes", after=("a",), inputs={"k": 1}),
                 step("c", "echoes", after=("a",), inputs=inputs)]
            )  # fmt: skip
            await trio.sleep(0.5)  # "a" ended; "c"'s lease waits at the gate
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ask, h.inbox, lambda r: CancelRun(run_id, "enough", r))
                await h.store.until(run_id, "cancel_requested")
                lease_gate.set()
            await h.store.until(run_id, *TERMINAL_KINDS)
    seqs = [e.seq for e in h.store.events(run_id)]
    assert seqs == sorted(seqs)
    assert [e.step_id for e in h.store.events(run_id, "step_leased")] == ["a"]


async def test_many_references_to_a_moderate_output_make_a_large_lease(
    tmp_path, json_made_on_the_loop
):
    """Each reference counts: 150 of an output of 1,900 keys are 285,000 values once resolved
    (its lease was made on the loop: a review)."""
    moderate = {f"k{i}": i for i in range(1_900)}
    inputs = {f"r{i}": "${steps.a.output}" for i in range(150)}
    async with running_scheduler(tmp_path, [Returns(moderate), EchoesInputs()]) as h:
        run_id = await h.submit([step("a", "returns"), step("b", "echoes", inputs=inputs)])
        done = await h.store.until(run_id, *TERMINAL_KINDS)
        view = await h.get(run_id)
    assert done.kind == "run_succeeded", done.payload
    assert view.steps[1].output == {f"r{i}": moderate for i in range(150)}
    assert json_made_on_the_loop == []


async def test_a_large_number_a_double_holds_is_an_output(tmp_path, autojump_clock):
    value = {"n": 10**300, "s": "9" * 400}  # (309 digits in a row in a string: not a number)
    async with running_scheduler(tmp_path, [Returns(value)]) as h:
        run_id = await h.submit([step("a", "returns")])
        done = await h.store.until(run_id, *TERMINAL_KINDS)
    assert done.kind == "run_succeeded"
