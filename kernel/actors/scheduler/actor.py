"""The scheduler: runs FleetForge DAGs durably.

A run's state is its event log (``kernel/runs.py``). The scheduler makes each event, applies it,
and appends it to the store, which publishes it to TapRun subscribers once committed. A step that
has side effects (a mutator block) starts only after its lease is durable; side-effect-free steps
run ahead of the commit and are simply redone after a crash. On start, every run without a
terminal event is picked up again: completed steps keep their outputs, an interrupted step is
leased again with ``attempt + 1``.

A run's driver leases the steps that became ready itself (when a concurrency slot is free) and
appends their leases in one pass behind the completion that made them ready, which the finished
step left for it: on a chain the completion and the next lease reach the store together and share
a group commit, and the next step's task starts while that commit is under way.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import trio
from foundry.kernel.actors.attestor.messages import Attest, AttestorMessage
from foundry.kernel.actors.mailbox import Pending, ask, cancel_when, refuse, reply_pair
from foundry.kernel.actors.scheduler.histories import SharedHistory, ended
from foundry.kernel.actors.scheduler.messages import (
    BranchRun,
    CancelRun,
    GetRun,
    ListRuns,
    OpenTap,
    PatchStep,
    ResumeRun,
    RunView,
    SchedulerMessage,
    StepView,
    SubmitRun,
    TapOpened,
    UpdateBreakpoints,
)
from foundry.kernel.actors.shared_reads import SharedReads
from foundry.kernel.actors.store.messages import (
    Append,
    Barrier,
    LoadIdempotencyKeys,
    LoadRun,
    LoadRunEvents,
    LoadRunSummaries,
    LoadSubmission,
    LoadUnfinishedRuns,
    Pruned,
    StoredRun,
    StoreMessage,
)
from foundry.kernel.actors.tap.messages import Subscribe, TapMessage
from foundry.kernel.actors.telemetry.messages import RunEnded, SpanOutbox, StepAttemptEnded
from foundry.kernel.actors.threads import in_thread
from foundry.kernel.blocks.api import BlockContext, BlockKind, Usage
from foundry.kernel.blocks.execution import (
    attempt_once,
    reported_fault,
    settings_of,
    step_model_refusal,
    usage_fault,
)
from foundry.kernel.blocks.registry import BlockRegistry
from foundry.kernel.config import SchedulerConfig
from foundry.kernel.core.attest_records import announced_ids, json_digest, run_attestation_id
from foundry.kernel.core.dag import (
    StepSpec,
    UnresolvedReference,
    check_dag_env,
    check_dag_models,
    parse_dag,
)
from foundry.kernel.core.ids import Clock, rfc3339
from foundry.kernel.core.json_input import (
    json_values_past,
    quoted,
    unpaired_surrogate_escape,
)
from foundry.kernel.core.planner import (
    LONE_SURROGATE,
    LargeLease,
    Lease,
    Next,
    Starts,
    attempt_limit,
    attempt_number,
    crash_error,
    crash_looped,
    forgotten,
    frozen_output,
    lease,
    may_start,
    next_wait,
    not_json_reason,
    not_retried,
    note_inputs,
    note_output,
    output_refused,
    recorded_total,
    recover,
    restarted_in_pause,
    retry_delay,
    starts,
    step_error,
    unreadable_output,
)
from foundry.kernel.core.records import RAW_OUTPUT_CHARS
from foundry.kernel.core.run_control import (
    MadePatch,
    RunSummary,
    branch_submission,
    branched_values,
    check_branchable,
    check_cancelable,
    check_resumable,
    finished_patch,
    made_patch,
    new_breakpoints,
    patchable_step,
    reusable_steps,
    run_ending,
    run_page,
)
from foundry.kernel.core.runs import (
    RunEventRecord,
    RunState,
    RunSubmission,
    StepState,
    spec_difference,
)
from foundry.kernel.core.throttle import Action
from foundry.kernel.core.tracecontext import new_root, new_span_id
from foundry.kernel.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable

log = logging.getLogger("foundry.scheduler")
TOOL_STEP = "tool"  # the step type whose attempts are granted a capability token
TOKEN_SECONDS = 86_400.0  # a token's life when its attempt has no time limit


PARSE_OFF_LOOP_BYTES = 64 * 1024  # a DAG this large (~600 steps, ~6 ms) is parsed on a thread
# A run's tasks waiting for their first concurrency slot, at most; ready steps past them wait in
# its driver's queue (38,000 ready steps made tasks at once held the loop 1.8 s: a hunt).
STEP_TASKS = 256
ROOM = ""  # on a driver's channel of ended steps: a queued step may be made a task now


def new_run_id() -> str:
    return f"run_{int(time.time() * 1000):012x}{secrets.token_hex(6)}"


_MICROSECOND = timedelta(microseconds=1)


@dataclass(eq=False, slots=True)
class _Queue:
    """A run's ready steps not made tasks yet (past ``STEP_TASKS`` tasks waiting for their
    first slot), and how many tasks wait so."""

    steps: deque[StepState] = field(default_factory=deque)
    waiting: int = 0

    def slot_taken(self, done: trio.MemorySendChannel[str]) -> None:
        """A task's first slot: room for a queued step (its driver hears so)."""
        self.waiting -= 1
        if self.steps:
            done.send_nowait(ROOM)


class Scheduler:
    def __init__(
        self,
        registry: BlockRegistry,
        inbox: trio.MemoryReceiveChannel[SchedulerMessage],
        store: trio.MemorySendChannel[StoreMessage],
        tap: trio.MemorySendChannel[TapMessage],
        *,
        home: Path,
        config: SchedulerConfig,
        shutdown_grace: float,
        attestor: trio.MemorySendChannel[AttestorMessage] | None = None,
        spans: SpanOutbox | None = None,
        after_crash: bool = False,
    ) -> None:
        """``attestor``: where completed steps, runs, tool calls, artifacts and capability tokens
        are announced for attestation (None: nothing is attested). ``spans``: where ended step
        attempts and runs go for OpenTelemetry export (None: nowhere). ``after_crash``: the
        last daemon on the home was killed outright (``supervisor.Stops``): the attempts it
        left leased count towards ``planner.crash_looped``."""
        self._after_crash = after_crash
        # Runs a crashed daemon left unfinished: every lease of theirs is durable before its
        # step runs, observers' too — an observer that kills the daemon at once, its lease not
        # yet committed, would leave nothing for the next start to count (``_recover``).
        self._cautious: set[str] = set()
        # The spec hash of a run of a large submission, made on a worker thread as it starts
        # (``_digest_spec_ahead``), for its run attestation at its end.
        self._spec_digests: dict[str, str] = {}
        self._spans = spans or SpanOutbox()
        self._registry, self._inbox, self._store, self._tap = registry, inbox, store, tap
        self._attestor = attestor
        self._home, self._config, self._grace = home, config, shutdown_grace
        # A step's artifact folder is <run id>/<step id> in it: given to its context as text (a
        # Path is made only if the block looks; two pathlib joins a step were 5-15% of a no-op
        # step's trio-thread time).
        self._artifacts = str(home / "artifacts" / "runs")
        self._clock = Clock()
        self._limiter = trio.CapacityLimiter(config.max_concurrent_steps)
        self._runs: OrderedDict[str, RunState] = OrderedDict()
        self._idempotency: dict[str, str] = {}
        # What stored ended runs read back gives: shared by the callers that hold it at once
        self._histories: SharedReads[SharedHistory] = SharedReads()  # TapRun's
        self._loaded: SharedReads[RunState] = SharedReads()  # GetRun's, CreateBranchRun's …
        self._durable: dict[str, trio.Event] = {}  # runs whose submission is being committed
        # Completed steps' events (and attestor notices) not appended yet, by run: see _complete
        self._held: dict[str, tuple[list[Any], list[Attest]]] = {}
        self._wakeups: dict[str, trio.Event] = {}  # paused runs waiting for ResumeRun
        # runs with a step backing off before its next attempt: woken once the run is lost
        self._backoffs: dict[str, trio.Event] = {}
        # Running steps' scopes, run id -> step id -> (scope, is a mutator): CancelRun's handles.
        self._running: dict[str, dict[str, tuple[trio.CancelScope, bool]]] = {}
        self._ended: dict[str, trio.Event] = {}  # runs a CancelRun waits to see end
        self._stopping = trio.Event()  # set when the mailbox closes: the daemon is stopping
        self._nursery: trio.Nursery | None = None
        self._handlers: dict[type, Callable[[Any], None]] = {
            SubmitRun: self._on_submit,
            GetRun: self._on_get,
            OpenTap: self._on_open_tap,
            UpdateBreakpoints: self._spawn(self._update_breakpoints),
            PatchStep: self._spawn(self._patch),
            ResumeRun: self._spawn(self._resume),
            BranchRun: self._spawn(self._branch),
            CancelRun: self._spawn(self._cancel),
            ListRuns: self._spawn(self._list),
            Pruned: self._forget_pruned,
        }

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await self._serve(task_status)
        finally:
            if self._attestor is not None:
                self._attestor.close()  # after the last notice: the attestor drains, then ends

    async def _serve(self, task_status: trio.TaskStatus[int]) -> None:
        async with self._inbox, self._store, self._tap, self._spans, trio.open_nursery() as nursery:
            self._nursery = nursery
            self._idempotency = await ask(self._store, LoadIdempotencyKeys)
            unfinished = await ask(self._store, LoadUnfinishedRuns)
            for submission, events in unfinished:
                run = self._rebuild(submission, events)
                self._runs[run.run_id] = run
                if self._after_crash:
                    self._cautious.add(run.run_id)
                nursery.start_soon(self._drive, run)
            task_status.started(len(unfinished))
            async for message in self._inbox:
                try:
                    self._handlers[type(message)](message)
                except Exception as exc:  # one bad request never stops the scheduler
                    refuse(message, exc, log)
            # Runs are checkpointed by their log: in-flight steps get the grace period (no new
            # step starts), then the next start leases them again. Paused runs have nothing in
            # flight: they stop waiting for a ResumeRun that can no longer come.
            self._stopping.set()
            for wakeup in (*self._wakeups.values(), *self._backoffs.values()):
                wakeup.set()
            nursery.cancel_scope.deadline = trio.current_time() + self._grace
        if nursery.cancel_scope.cancelled_caught:  # (a stop said nothing of what it cut short)
            log.warning("steps still running after the %g s shutdown grace were cancelled: the "
                        "next start leases them again", self._grace)  # fmt: skip

    # --- SubmitRun ----------------------------------------------------------------------------

    def _on_submit(self, message: SubmitRun) -> None:
        assert self._nursery is not None
        key = message.idempotency_key
        if key and key in self._idempotency:
            self._nursery.start_soon(self._answer_duplicate, self._idempotency[key], message)
            return
        submission = self._submission(message)
        if len(message.dag_json) >= PARSE_OFF_LOOP_BYTES:
            # Its id is taken now: a duplicate sent meanwhile waits for this one's outcome.
            self._durable[submission.run_id] = trio.Event()
            if key:
                self._idempotency[key] = submission.run_id
            self._nursery.start_soon(self._accept_parsed, message, submission)
            return
        try:
            run = self._new_run(message, submission)
        except InvalidArgument as exc:
            message.reply.fail(exc)
            return
        self._accept(message, run)

    async def _accept_parsed(self, message: SubmitRun, submission: RunSubmission) -> None:
        """A large DAG, parsed and checked on a worker thread: on the trio thread a DAG of
        40,000 steps (4 MB, the largest request) took ~0.8 s, when no other client, run or
        chain of the daemon got a turn."""
        try:
            run = await in_thread(self._new_run, message, submission)
        except BaseException as exc:
            self._idempotency.pop(message.idempotency_key, None)
            self._durable.pop(submission.run_id).set()  # a duplicate hears: retry
            if isinstance(exc, trio.Cancelled):
                message.reply.fail(Unavailable("the daemon is shutting down"))
                raise
            if not isinstance(exc, Exception):
                raise
            refuse(message, exc, log)  # InvalidArgument as it is; anything else logged
            return
        self._accept(message, run)

    def _accept(self, message: SubmitRun, run: RunState) -> None:
        assert self._nursery is not None
        self._runs[run.run_id] = run
        self._durable.setdefault(run.run_id, trio.Event())
        if message.idempotency_key:
            self._idempotency[message.idempotency_key] = run.run_id
        self._nursery.start_soon(self._start, run, run.submission, message)

    def _env_allowed(self, step: StepSpec) -> frozenset[str]:
        block = self._registry.by_name.get(step.type)
        return block.env_allowed(step.inputs) if block is not None else frozenset()

    def _submission(self, message: SubmitRun) -> RunSubmission:
        return _traced(
            RunSubmission(
                run_id=new_run_id(),
                dag_json=message.dag_json,
                inputs=dict(message.inputs),
                seed=message.seed,
                labels=dict(message.labels),
                breakpoints=tuple(dict.fromkeys(message.breakpoints)),
                idempotency_key=message.idempotency_key,
                created_at=self._clock.now(),
            )
        )

    def _new_run(self, message: SubmitRun, submission: RunSubmission) -> RunState:
        """The run of a submission, its DAG parsed and checked (InvalidArgument naming what is
        wrong). Pure work: on a worker thread for a large DAG."""
        dag = parse_dag(message.dag_json, self._registry.by_name.keys())
        check_dag_env(dag, self._env_allowed)
        check_dag_models(dag, partial(step_model_refusal, self._registry))
        step_ids = {s.id for s in dag.steps}
        for step_id in message.breakpoints:
            if step_id not in step_ids:
                raise InvalidArgument(f"spec.breakpoints: unknown step {quoted(step_id)}")
        return RunState.new(submission, dag)

    async def _start(self, run: RunState, submission: RunSubmission, message: SubmitRun) -> None:
        # Stamped as it goes to the store, not as it arrived: ListRuns pages newest first by
        # created_at, and a large DAG stamped at arrival reached the store after newer runs
        # (its parse took a worker thread ~1 s) — between two pages a client had already read.
        submission = replace(submission, created_at=self._clock.now())
        run.submission, run.updated_at = submission, submission.created_at
        submitted = run.make_event(
            "run_submitted", submission.created_at, steps=len(run.dag.steps), seed=submission.seed
        )
        try:
            await (await self._append([submission, submitted])).wait()
        except Exception as exc:
            self._runs.pop(run.run_id, None)
            self._idempotency.pop(submission.idempotency_key, None)
            message.reply.fail(exc)
            return
        finally:
            self._durable.pop(run.run_id).set()
        message.reply.send(run.run_id)
        await self._drive(run)

    async def _answer_duplicate(self, run_id: str, message: SubmitRun) -> None:
        """The run a key names — if ``message`` sends the spec it was submitted with: a key
        reused for another spec would otherwise answer a run that never ran what was sent."""
        pending = self._durable.get(run_id)
        if pending is not None:
            await pending.wait()
        if message.idempotency_key not in self._idempotency:
            message.reply.fail(Unavailable("the first submission with this key failed; retry"))
            return
        try:
            first = await self._submission_of(run_id)
            if first is None:  # its run was deleted by retention: the key is free again
                if self._idempotency.get(message.idempotency_key) == run_id:
                    del self._idempotency[message.idempotency_key]
                self._on_submit(message)  # as after a restart, which loads no such key
                return
            differs = spec_difference(first, message.dag_json, message.inputs, message.seed,
                                      message.labels, message.breakpoints)  # fmt: skip
        except Exception as exc:
            refuse(message, exc, log)  # Unavailable as it is; anything else logged
            return
        if differs:
            message.reply.fail(FailedPrecondition(
                f"idempotency_key: run {run_id} was submitted with this key and another spec "
                f"(its {differs} differs); send that spec unchanged, or use a new key"
            ))  # fmt: skip
        else:
            message.reply.send(run_id)

    def _forget_pruned(self, message: Pruned) -> None:
        """Retention archived these finished runs: their idempotency keys start new runs, and
        GetRun answers NOT_FOUND (both answered from memory as if the runs were live)."""
        pruned = set(message.run_ids)
        for run_id in pruned:
            run = self._runs.get(run_id)
            if run is not None and run.ended:
                del self._runs[run_id]
        self._idempotency = {k: v for k, v in self._idempotency.items() if v not in pruned}

    async def _submission_of(self, run_id: str) -> RunSubmission | None:
        """The submission of a key's run; None once retention has deleted it."""
        run = self._runs.get(run_id)
        if run is not None:
            return run.submission
        found: RunSubmission | None = await ask(self._store, lambda r: LoadSubmission(run_id, r))
        return found

    # --- driving a run --------------------------------------------------------------------------

    async def _drive(self, run: RunState) -> None:
        try:
            await self._digest_spec_ahead(run)
            await self._drive_to_end(run)
        finally:
            self._spec_digests.pop(run.run_id, None)

    async def _digest_spec_ahead(self, run: RunState) -> None:
        """A large submission's spec hash, made on a worker thread before its run goes (made at
        its end, on the loop, a run of 350,000 labels held the loop 0.5 s)."""
        sub = run.submission
        if self._attestor is not None and json_values_past((sub.inputs, sub.labels)):
            self._spec_digests[run.run_id] = await in_thread(json_digest, _spec_of(sub))

    async def _drive_to_end(self, run: RunState) -> None:
        if run.status == "PENDING":
            await self._until_a_slot(run)
            if not run.canceling and not self._stopping.is_set():
                await self._record(run, "run_started")
        if run.canceling:
            # Leased when the daemon stopped mid-cancel: the cancel ended them (they started;
            # whether they finished is not known), as it ends a step running now.
            for step in run.interrupted():
                await self._record(run, "step_canceled", step.spec.id, attempt=step.attempt)
        else:
            await self._recover(run)
        try:
            if not await self._drive_steps(run):
                return
        except Exception as exc:  # a write the store could not commit (a full disk, say)
            # The run stops here, unfinished: the next start goes on with it. (It took the
            # whole daemon down.)
            log.error("run %s stops until the next start: %s", run.run_id, _first_cause(exc))
            self._ended.pop(run.run_id, trio.Event()).set()  # a CancelRun waits no more
            return
        finally:
            self._flush_nowait(run)  # cancelled: what finished still goes to the store
        try:
            await self._end(run)
        finally:
            self._ended.pop(run.run_id, trio.Event()).set()
            self._cautious.discard(run.run_id)

    async def _recover(self, run: RunState) -> None:
        """The attempts a stopped daemon left leased: each recorded ``step_interrupted``
        (``crashed``: that daemon was killed outright), its step leased again with ``attempt +
        1`` — or failed, when crashes interrupted its last attempts one after another
        (``crash_looped``). A step backing off between attempts just goes on."""
        durable: Pending[None] | None = None
        for step in [s for s in run.interrupted() if s.status == "running"]:
            durable = await self._record_durable(
                run,
                "step_interrupted",
                step.spec.id,
                attempt=step.attempt,
                crashed=self._after_crash,
            )
            if crash_looped(step):
                error = crash_error(step)
                log.warning("run %s step %s: %s", run.run_id, step.spec.id, error["message"])
                await self._record(run, "step_failed", step.spec.id, attempt=step.attempt,
                                   error=error)  # fmt: skip
        # Durable before any step runs again (one commit for them all: the store commits in
        # order): an observer starts ahead of its lease's commit, and one that kills the daemon
        # at once would never have its crash counted.
        if durable is not None:
            await durable.wait()
        recover(run)

    async def _until_a_slot(self, run: RunState) -> None:
        """A run is PENDING while other runs' steps hold every concurrency slot: it starts at
        its turn for one (the limiter serves its waiters first come, first served), or once
        CancelRun or the daemon's stop wakes it. No wait while a slot is free."""
        if self._limiter.available_tokens > 0:
            return
        wakeup = self._wakeups.setdefault(run.run_id, trio.Event())
        async with trio.open_nursery() as waiting:
            waiting.start_soon(self._turn_for_a_slot, waiting.cancel_scope)
            await wakeup.wait()
            waiting.cancel_scope.cancel()
        if self._wakeups.get(run.run_id) is wakeup:
            del self._wakeups[run.run_id]

    async def _turn_for_a_slot(self, done: trio.CancelScope) -> None:
        async with self._limiter:
            pass  # the run's own steps take slots as ever (in turn with the other waiters)
        done.cancel()

    async def _drive_steps(self, run: RunState) -> bool:
        """Start steps as they become ready until the run is over (True) or stops waiting
        (False: the daemon is stopping)."""
        busy: set[str] = set()  # started, or queued to start
        queued = _Queue()
        candidates: set[str] | None = None  # None: look at every step
        # (a step's id as it ends, and ROOM once at most as a task takes its first slot)
        done_send, done_receive = trio.open_memory_channel[str](2 * len(run.steps) + 1)
        async with trio.open_nursery() as steps:
            while True:
                stopping = self._stopping.is_set() or run.canceling
                plan = None
                if may_start(run, stopping):
                    plan = starts(run, busy, candidates)
                    candidates = set(plan.held)  # a resume looks again at what a pause held
                elif again := restarted_in_pause(run, busy, stopping):
                    plan = Starts(again)  # (what the pause held stays for the resume)
                if plan is not None:
                    alone = await self._start_ready(run, plan, busy, steps, done_send, queued)
                    if alone is not None:
                        # Nothing else of this run can become ready before it ends: run here,
                        # not as a task (a spawn, a first step and a hand-back cost the trio
                        # thread ~50 µs a step), then straight to the next lease, which takes
                        # this step's completion along.
                        step, first = alone
                        await self._run_step(run, step, done_send, first)
                        done_receive.receive_nowait()  # its own id, sent as it ended
                        busy.discard(step.spec.id)
                        if candidates is not None:  # (None: a restarted pause's, every step)
                            candidates.update(run.dag.dependents.get(step.spec.id, ()))
                        # A step of a synchronous block may never have yielded: the rest of the
                        # daemon gets its turn between steps, as when a task ran each. A
                        # mutator's has, waiting for its lease's commit; the next lease goes
                        # at once, so what the others do now overlaps its commit's fdatasync.
                        if not self._is_mutator(step.spec):
                            await trio.lowlevel.checkpoint()
                        continue
                paused = run.status == "PAUSED_AT_STEP"  # (as planned: a resume may come next)
                await self._flush(run)  # completions no lease took along
                wait = next_wait(run, bool(busy), self._stopping.is_set())
                if run.canceling and wait is not Next.STEP:
                    break  # cancelled: what was running has ended
                if wait is Next.STEP:
                    finished = await self._step_end_or_resume(run, done_receive, paused)
                    if finished is None:
                        continue  # resumed: what the pause held may start beside the others
                    if finished != ROOM:
                        busy.discard(finished)
                        if candidates is not None:  # (itself too: held back, it is still to start)
                            candidates.update(run.dag.dependents.get(finished, ()))
                            candidates.add(finished)
                    if queued.steps:
                        self._start_queued(run, queued, busy, steps, done_send, candidates)
                elif wait is Next.RESUME:
                    if not await self._until_resumed(run):
                        return False  # the daemon is stopping; the run stays paused in its log
                elif wait is Next.STOP:
                    return False  # the daemon is stopping: no new steps; the next start goes on
                else:
                    break
        return True

    async def _end(self, run: RunState) -> None:
        end = run_ending(run)
        if end.kind == "run_failed":  # one line per failed run (README.md, "The daemon log")
            fields = {"run_id": run.run_id, "step_id": end.step_id, "error": end.error}
            log.warning("run %s failed: %s", run.run_id, end.error, extra=fields)
        records: list[RunEventRecord] = []
        notices: list[Attest] = []
        if self._attestor is not None:
            sub = run.submission
            digest = self._spec_digests.get(run.run_id) or json_digest(_spec_of(sub))
            self._attested(
                run, "run", "", tuple(run.events), records, notices,
                outcome=end.kind, spec_hash=digest, breakpoints=list(sub.breakpoints),
            )  # fmt: skip
        records.append(run.make_event(end.kind, self._clock.now(), end.step_id, **end.payload()))
        durable = await self._append(records)
        if notices:
            await self._notify(notices)
        # Whoever hears the run has ended (CancelRun's reply) may read it from the store next:
        # a ReplayRun right after CancelRun found it still paused.
        try:
            await durable.wait()
        except Exception as exc:  # the journal refused it (a full disk): the next start ends it
            log.error("the end of run %s is not stored: %s", run.run_id, exc)
        if self._spans.on:
            self._spans.offer(_run_ended(run, records[-1].occurred_at))
        with contextlib.suppress(OSError):  # its steps' commands wrote nothing: no empty folder
            os.rmdir(f"{self._artifacts}/{run.run_id}")
        self._retire(run)

    async def _start_ready(
        self,
        run: RunState,
        plan: Starts,
        busy: set[str],
        steps: trio.Nursery,
        done: trio.MemorySendChannel[str],
        queued: _Queue,
    ) -> tuple[StepState, tuple[_Leased, Pending[None] | None]] | None:
        """Lease what the planner says is ready; pause where it says a breakpoint holds. The
        run's only step to run, when that is all there is (a chain's next), is not started but
        returned, leased, for the driver to run itself.

        A step with a free concurrency slot is leased here, its lease appended with the others'
        in one write, before its task starts (the task's start then overlaps the commit a
        mutator waits for; on a chain the lease joins its predecessor's completion in the
        store's next group). A step without a slot, or whose lease fails, leases in its task.
        Every lease is made (a large one around a worker thread) before any of their events:
        an event of the run made meanwhile (a CancelRun's) would reach the store ahead of one
        made before it, and a live tapper lost the one behind (a review). A step past
        ``STEP_TASKS`` tasks waiting for a slot is ``queued``."""
        made: list[tuple[StepState, Any, Lease, object]] = []
        try:
            for step in plan.steps:
                busy.add(step.spec.id)
                if queued.steps or queued.waiting >= STEP_TASKS:
                    queued.steps.append(step)
                    continue
                ahead = await self._lease_ahead(run, step)
                if ahead is None:
                    queued.waiting += 1
                    steps.start_soon(self._run_step, run, step, done, None, queued)
                else:
                    made.append((step, *ahead))
        except BaseException:
            for *_, slot in made:
                self._limiter.release_on_behalf_of(slot)
            raise
        records: list[Any] = []
        notices: list[Attest] = []
        leased: list[tuple[StepState, _Leased]] = []
        for step, block, lease_made, slot in made:
            if self._held_back(run, step):  # (cancelled while a later lease was made)
                self._limiter.release_on_behalf_of(slot)
                queued.waiting += 1
                steps.start_soon(self._run_step, run, step, done, None, queued)
                continue
            ready = self._leased(run, step, block, lease_made)
            ready.slot = slot
            records.extend(ready.records)
            notices.extend(ready.notices)
            leased.append((step, ready))
        if leased:
            try:
                durable = await self._append_leases(run, records, [r for _, r in leased])
            except BaseException:
                for _, ready in leased:
                    self._limiter.release_on_behalf_of(ready.slot)
                raise
            if notices:
                await self._notify(notices)
            if (
                len(leased) == 1 and len(busy) == 1 and not plan.pause_at
                and run.status != "PAUSED_AT_STEP"  # (a resume must find the driver waiting)
            ):  # fmt: skip
                step, ready = leased[0]
                return step, (ready, durable)  # the run's only running step: the driver's
            for step, ready in leased:
                steps.start_soon(self._run_step, run, step, done, (ready, durable))
        if plan.pause_at:
            # Committed at once, not left to linger for company: nothing else of this run comes
            # until a ResumeRun, and its tappers wait for it (and the completion it takes along).
            await self._record_durable(run, "run_paused", plan.pause_at)
        return None

    def _start_queued(
        self,
        run: RunState,
        queued: _Queue,
        busy: set[str],
        steps: trio.Nursery,
        done: trio.MemorySendChannel[str],
        candidates: set[str] | None,
    ) -> None:
        """Make queued steps tasks while fewer than ``STEP_TASKS`` wait for their first slot.
        Once the run is paused, failed or cancelled, or the daemon stops, none starts: they are
        not busy any more, the driver looks at them again (as at a task's that was held back)."""
        if run.canceling or not may_start(run, self._stopping.is_set()):
            ids = [s.spec.id for s in queued.steps]
            busy.difference_update(ids)
            if candidates is not None:
                candidates.update(ids)
            queued.steps.clear()
            return
        while queued.steps and queued.waiting < STEP_TASKS:
            queued.waiting += 1
            steps.start_soon(self._run_step, run, queued.steps.popleft(), done, None, queued)

    async def _step_end_or_resume(
        self, run: RunState, done: trio.MemoryReceiveChannel[str], paused: bool
    ) -> str | None:
        """The id of the next of the run's steps to end — or, in a pause (``paused``: the run
        was paused as the driver planned), None once the run is resumed (or cancelled, or the
        daemon stops) first: a held step starts at its ResumeRun, not when a step still running
        at the pause ends, minutes later maybe."""
        if not paused or run.canceling or self._stopping.is_set():
            return await done.receive()  # (no resume can come: nothing to race)
        if run.status != "PAUSED_AT_STEP":
            return None  # resumed since: plan again
        resumed = self._wakeups.setdefault(run.run_id, trio.Event())
        ended: list[str] = []
        async with trio.open_nursery() as racing:
            racing.start_soon(cancel_when, resumed.wait, racing.cancel_scope)
            ended.append(await done.receive())  # (a cancelled receive takes nothing)
            racing.cancel_scope.cancel()
        if self._wakeups.get(run.run_id) is resumed and not resumed.is_set():
            del self._wakeups[run.run_id]  # (a run that fails in its pause left it for good)
        return ended[0] if ended else None

    async def _until_resumed(self, run: RunState) -> bool:
        """Wait for ResumeRun; False when the daemon stops first."""
        while run.status == "PAUSED_AT_STEP" and not run.canceling:
            if self._stopping.is_set():
                return False
            await self._wakeups.setdefault(run.run_id, trio.Event()).wait()
        return True

    async def _run_step(
        self,
        run: RunState,
        step: StepState,
        done: trio.MemorySendChannel[str],
        first: tuple[_Leased, Pending[None] | None] | None = None,
        queued: _Queue | None = None,
    ) -> None:
        """Run a step's attempts; ``first``: its first attempt, leased by the driver with a
        concurrency slot held for it (released here). Else ``queued`` counts it among the
        tasks waiting for their first slot until it has one."""
        running = self._running.setdefault(run.run_id, {})
        try:
            with trio.CancelScope() as scope:  # CancelRun's handle on this step
                running[step.spec.id] = (scope, self._is_mutator(step.spec))
                while not run.canceling:
                    if first is not None:
                        ready, durable = first
                        first = None
                        try:
                            delay = await self._execute(run, step, ready, durable)
                        finally:
                            self._limiter.release_on_behalf_of(ready.slot)
                    else:
                        async with self._limiter:
                            if queued is not None:  # its first slot: counted once
                                queued.slot_taken(done)
                                queued = None
                            delay = await self._attempt(run, step)
                    # A step backing off holds no concurrency slot. When the daemon stops, it
                    # stops waiting: the next start leases it again.
                    if delay is None or run.canceling:
                        break
                    await self._backoff(run, delay)
                    if run.failed and not run.canceling:  # another step failed the run meanwhile
                        error = _not_retried(run, step.error)
                        await self._record(
                            run, "step_failed", step.spec.id, attempt=step.attempt, error=error
                        )
                        break
                    if self._stopping.is_set():
                        break
            if run.canceling and not step.finished and _leased_ever(step):
                # (a step that never had a lease — it waited for a slot — ends "skipped")
                await self._record(run, "step_canceled", step.spec.id, attempt=step.attempt)
        finally:
            if first is not None:  # cancelled before its first attempt began
                self._limiter.release_on_behalf_of(first[0].slot)
            if queued is not None:  # it ended before it had a slot
                queued.waiting -= 1
            running.pop(step.spec.id, None)
            if not running:
                self._running.pop(run.run_id, None)
            done.send_nowait(step.spec.id)

    def _is_mutator(self, spec: StepSpec) -> bool:
        block = self._registry.by_name.get(spec.type)
        return block is not None and block.kind is BlockKind.MUTATOR

    async def _backoff(self, run: RunState, delay: float) -> None:
        """Sleep ``delay`` seconds, or until the daemon starts stopping or another step fails
        the run (no attempt more is made then: the run ended at once, not a backoff later)."""
        woken = self._backoffs.setdefault(run.run_id, trio.Event())
        if run.failed:
            woken.set()
        with trio.move_on_after(delay):
            await woken.wait()

    async def _attempt(self, run: RunState, step: StepState) -> float | None:
        """Lease and run one attempt; None when the step is finished (either way), else the
        backoff before the next attempt (the planner's)."""
        if self._held_back(run, step):
            return None
        spec = step.spec
        attempt = attempt_number(step)
        block = self._registry.by_name.get(spec.type)
        if block is None:
            gone = step_error(f"step type {spec.type!r} is not registered any more", attempt)
            await self._record(run, "step_failed", spec.id, attempt=attempt, error=gone)
            return None
        try:
            leased = await self._lease(run, step)
        except (UnresolvedReference, TypeError, ValueError) as exc:
            failure = step_error(str(exc), attempt)
            await self._record(run, "step_failed", spec.id, attempt=attempt, error=failure)
            return None
        if leased is None:
            return None
        ready = self._leased(run, step, block, leased)
        durable = await self._append_leases(run, ready.records, [ready])
        if ready.notices:  # a tool step's capability token (a coroutine a step cost ~1.5 µs)
            await self._notify(ready.notices)
        return await self._execute(run, step, ready, durable)

    def _held_back(self, run: RunState, step: StepState) -> bool:
        """Whether an attempt about to be leased is not, now."""
        if run.canceling:  # a slot came free while the cancel was being made durable
            return True
        # It waited for a slot (or its large lease) while the run paused or failed, a
        # breakpoint was put on it, or the daemon began to stop: it has not started, so it does
        # not now (it did — a mutator's side effect for a failed run). The driver looks at it
        # again: it pauses the run, starts once resumed, ends skipped, or the next start
        # leases it.
        return not _leased_ever(step) and bool(
            run.status == "PAUSED_AT_STEP" or run.stops_at(step) or run.failed
            or self._stopping.is_set()
        )  # fmt: skip

    async def _lease(self, run: RunState, step: StepState) -> Lease | None:
        """The attempt's lease (see ``planner.lease``); a large one's inputs resolved on a
        worker thread, and None when the attempt is held back meanwhile."""
        limits = self._config.max_step_bytes, self._config.max_run_bytes
        large = LargeLease.of(run, step.spec)
        if large is None:
            return lease(run, step, *limits)
        try:
            made = await in_thread(large.made, limits[0])
        except (UnresolvedReference, TypeError, ValueError):
            if self._stale(run, step, large):
                return None  # (the error of inputs patched since, or of an attempt held back)
            raise
        return None if self._stale(run, step, large) else made.lease(run, step, limits[1])

    def _stale(self, run: RunState, step: StepState, large: LargeLease) -> bool:
        """Whether a lease made on a worker thread is of no use now: its attempt is held back,
        or its step's inputs were patched meanwhile (in a pause that ended meanwhile, maybe)."""
        return self._held_back(run, step) or step.spec.inputs is not large.inputs

    async def _append_leases(
        self, run: RunState, records: list[Any], leased: list[_Leased]
    ) -> Pending[None] | None:
        """Append leases; what to wait on for their commit when a mutator is among them, or the
        run is cautious (None when not: nobody waits, so the store lets the group linger and
        an observer's lease usually commits with its completion)."""
        if run.run_id in self._cautious or any(r.block.kind is BlockKind.MUTATOR for r in leased):
            return await self._append(records)
        await self._send_store(Append(tuple(records), tuple(records)))
        return None

    async def _lease_ahead(
        self, run: RunState, step: StepState
    ) -> tuple[Any, Lease, object] | None:
        """The driver's lease of a ready step (its block, the lease, and the concurrency slot
        held for it, borrowed by that object; no event made yet); None when no slot is free, its
        block is gone, its inputs do not resolve or (a large lease: made on a worker thread
        meanwhile) it is held back now; its task then leases it, or fails it, itself. A small
        lease takes no turn of the loop."""
        block = self._registry.by_name.get(step.spec.type)
        if block is None:
            return None
        slot = object()
        try:
            self._limiter.acquire_on_behalf_of_nowait(slot)
        except trio.WouldBlock:
            return None
        try:
            leased = await self._lease(run, step)
        except (UnresolvedReference, TypeError, ValueError):
            leased = None
        except BaseException:
            self._limiter.release_on_behalf_of(slot)
            raise
        if leased is None:
            self._limiter.release_on_behalf_of(slot)
            return None
        return block, leased, slot

    def _leased(self, run: RunState, step: StepState, block: Any, leased: Lease) -> _Leased:
        """Make the events of a lease: the lease, and for a tool step its capability token
        and that token's attestation."""
        spec = step.spec
        span = new_span_id()  # the attempt's, a child of the run's span
        lease_event = run.make_event(
            "step_leased", self._clock.now(), spec.id, **leased.payload(spec), span_id=span
        )
        note_inputs(run, len(leased.inputs_json))
        records: list[Any] = [lease_event]
        notices: list[Attest] = []
        grant = None
        if spec.type == TOOL_STEP:  # (a tool block's settings are its own: no runs_as)
            limit = attempt_limit(spec, block.timeout)
            grant = self._grant(run, spec.id, leased.attempt, lease_event, limit)
            records.append(grant)
            self._attested(run, "capability_token", spec.id, (lease_event, grant), records, notices)
        return _Leased(block, leased, span, lease_event, grant, records, notices)

    async def _execute(
        self, run: RunState, step: StepState, ready: _Leased, durable: Pending[None] | None
    ) -> float | None:
        """Run a leased attempt (a mutator once ``durable``, its lease's commit, is through);
        record how it ended. None when the step is finished, else the backoff before the
        next attempt."""
        spec, block, leased, span = step.spec, ready.block, ready.leased, ready.span
        attempt, lease_event, grant = leased.attempt, ready.lease, ready.grant
        if block.kind is BlockKind.MUTATOR or run.run_id in self._cautious:
            assert durable is not None
            await durable.wait()  # side effects only once the lease is durable
        if len(leased.inputs_json) < PARSE_OFF_LOOP_BYTES:
            payload = json.loads(leased.inputs_json)
        else:  # (inputs of 300,000 keys: ~0.4 s of the loop)
            payload = await in_thread(json.loads, leased.inputs_json)
        # the step's settings by its resolved inputs (a shell step's ``${inputs.cmd}`` command)
        settings = settings_of(block, payload)
        limit = attempt_limit(spec, settings.timeout)
        ctx = BlockContext(
            payload=payload,
            artifact_dir=f"{self._artifacts}/{run.run_id}/{spec.id}",
            run_id=run.run_id,
            step_id=spec.id,
            seed=leased.seed,
            model=spec.model,
            env=dict(spec.env),
            attempt=attempt,
            trace_id=run.submission.trace_id,
            span_id=span,
        )
        started = time.perf_counter()
        try:
            output, error, timed_out = await attempt_once(block, Action.RUN, ctx, limit)
        except BaseException:  # cancelled (CancelRun, the daemon's stop): its span ends too
            if self._spans.on:
                ended = _attempt_ended(run, ctx, spec.type, lease_event, self._clock.now(),
                                       None, "canceled", canceled=True)  # fmt: skip
                self._spans.offer(ended)
            raise
        size = 0
        if not error:
            error = reported_fault(ctx)
        if not error:
            try:
                if json_values_past((output,)):  # (~0.5 s a 3 MB output on the loop)
                    text, output = await in_thread(frozen_output, output)
                else:
                    text, output = frozen_output(output)
            except trio.Cancelled:
                raise
            except BaseException as exc:  # noqa: BLE001 - whatever a plugin's value raises
                error = f"the step's output is not JSON: {not_json_reason(exc)}"
            else:
                size = len(text)
                error = output_refused(
                    run, size, self._config.max_step_bytes, self._config.max_run_bytes
                )
                if not error and unpaired_surrogate_escape(text):  # the store would refuse it
                    error = LONE_SURROGATE
                if not error and len(text) < PARSE_OFF_LOOP_BYTES:
                    error = unreadable_output(text, output)
                elif not error:  # a walk of a large output's every container: off the loop
                    error = await in_thread(unreadable_output, text, output)
        artifacts: list[str] = []
        if not error:
            if ctx.artifacts_touched:  # a scan, on a worker thread
                with trio.CancelScope(shield=True):  # what the step did is recorded, as ever
                    artifacts = await ctx.collect_artifacts()
            else:  # the names write_artifact kept: no await, so no shielded scope (~15 µs)
                artifacts = ctx.listed_artifacts()
            # again, with no await between it and note_output: steps running at once each
            # passed the check before any counted its output (450 KB past a 300 KB limit)
            error = output_refused(
                run, size, self._config.max_step_bytes, self._config.max_run_bytes
            )
        if self._spans.on:
            now = self._clock.now()
            self._spans.offer(_attempt_ended(run, ctx, spec.type, lease_event, now, output, error))
        if not error:
            completed = run.make_event(
                "step_completed", self._clock.now(), spec.id,
                attempt=attempt, output=output, duration_ms=_ms_since(started), span_id=span,
                usage={"tokens_in": ctx.usage.tokens_in, "tokens_out": ctx.usage.tokens_out,
                       "cost": ctx.usage.cost},
                raw_output=ctx.raw_output[-RAW_OUTPUT_CHARS:], exit_code=ctx.exit_code,
                artifacts=artifacts, **self._step_announcement(run, spec.type),
            )  # fmt: skip
            note_output(run, spec.id, size)
            await self._complete(run, lease_event, grant, completed)
            return None
        failure = step_error(error, attempt, timed_out)
        delay = retry_delay(spec, step.failures, settings.retries, settings.backoff)
        if delay is not None and run.failed:  # the run fails anyway: no attempt more
            failure = _not_retried(run, failure)
            delay = None
        if delay is None:
            await self._record(
                run, "step_failed", spec.id, attempt=attempt, error=failure, span_id=span
            )
            return None
        await self._record(
            run, "step_retrying", spec.id, attempt=attempt, error=failure, delay=delay,
            span_id=span,
        )  # fmt: skip
        return delay

    # --- capability tokens and attestations -----------------------------------------------------

    def _grant(
        self,
        run: RunState,
        step_id: str,
        attempt: int,
        lease_event: RunEventRecord,
        limit: float | None,
    ) -> RunEventRecord:
        """A capability token for this attempt of a tool step: which tool, for which run, step
        and attempt, issued now, expiring with the attempt's time limit (a day without one)."""
        inputs = lease_event.payload.get("inputs")
        tool = inputs.get("tool") if isinstance(inputs, dict) else None
        issued = self._clock.now()
        life = timedelta(seconds=limit if limit is not None else TOKEN_SECONDS)
        # at least a microsecond: a limit under half of one (4e-7 s) gave a token expired as it
        # was granted, which its attestation refuses (an announced attestation never made)
        expires = issued + max(life, _MICROSECOND)
        return run.make_event(
            "capability_granted", issued, step_id,
            token_id=f"cap_{secrets.token_hex(12)}", tool=tool if isinstance(tool, str) else "",
            attempt=attempt, lease_seq=lease_event.seq, issued_at=rfc3339(issued),
            expires_at=rfc3339(expires),
        )  # fmt: skip

    def _step_announcement(self, run: RunState, block: str) -> dict[str, str]:
        """What a step's ``step_completed`` carries to announce its step's attestation (nothing
        without an attestor): the id its seq (the run's next) names, and the block that ran.
        One event fewer a step than an ``attested`` of its own: a row in the journal and in
        DuckDB and a tap delivery a step (~6% of a no-op step, with an attestor that signed
        nothing)."""
        if self._attestor is None:
            return {}
        return {
            "attestation_id": run_attestation_id(run.run_id, len(run.events) + 1),
            "block": block,
        }

    def _attested(
        self,
        run: RunState,
        kind: str,
        step_id: str,
        facts: tuple[RunEventRecord, ...],
        records: list[Any],
        notices: list[Attest],
        **extra: Any,
    ) -> None:
        """Announce an attestation of ``facts``: its ``attested`` run event goes into
        ``records`` (appended with the facts), the attestor's notice into ``notices`` (sent once
        the append is in the store's mailbox, so the attestation commits after its facts)."""
        if self._attestor is None:
            return
        seq = len(run.events) + 1
        payload: dict[str, Any] = {
            "attestation_id": run_attestation_id(run.run_id, seq),
            "kind": kind,
            **extra,
        }
        if kind != "run":
            payload["of"] = [f.seq for f in facts]
        # (made by hand: the payload's "kind" is the attested subject's, not the event's)
        event = RunEventRecord(run.run_id, seq, step_id, "attested", payload,
                               self._clock.now())  # fmt: skip
        run.apply(event)
        records.append(event)
        notices.append(Attest(event, facts))

    async def _complete(
        self,
        run: RunState,
        lease_event: RunEventRecord,
        grant: RunEventRecord | None,
        completed: RunEventRecord,
    ) -> None:
        """Record a completed step: the completion, and the attestations of the step, its tool
        call and each artifact it wrote, in one append."""
        records: list[Any] = [completed]
        notices: list[Attest] = []
        step_id = completed.step_id
        if self._attestor is not None:  # the completion announces its step's attestation
            notices.append(Attest(completed, (lease_event, completed)))
        if grant is not None:
            self._attested(run, "tool", step_id, (lease_event, grant, completed), records, notices)
        for path in completed.payload["artifacts"]:
            self._attested(run, "artifact", step_id, (completed,), records, notices, uri=path)
        # Held for the driver, which appends it just before its next steps' leases (one pass
        # of the store's receiver for both): whatever else this run appends first takes it
        # along ahead of itself (_send_store), so the run's events reach the store in order.
        held_records, held_notices = self._held.setdefault(run.run_id, ([], []))
        held_records.extend(records)
        held_notices.extend(notices)

    async def _record_all(self, records: list[Any], notices: list[Attest]) -> None:
        """Append events made and applied already; then hand their notices to the attestor."""
        await self._send_store(Append(tuple(records), tuple(records)))
        if notices:
            await self._notify(notices)

    async def _notify(self, notices: list[Attest]) -> None:
        """Hand ``notices`` (not empty: callers look first, no coroutine for none) over."""
        assert self._attestor is not None
        try:
            for notice in notices:
                try:
                    self._attestor.send_nowait(notice)  # no scheduling pass per step
                except trio.WouldBlock:
                    await self._attestor.send(notice)  # the attestor is behind: wait for it
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise Unavailable("the daemon is shutting down") from None

    async def _record(self, run: RunState, kind: str, step_id: str = "", **payload: Any) -> None:
        """Make, apply and append an event; its commit comes with the next group commit."""
        event = run.make_event(kind, self._clock.now(), step_id, **payload)
        if kind == "step_failed" and run.run_id in self._backoffs:  # the run is lost
            self._backoffs[run.run_id].set()
        await self._send_store(Append((event,), (event,)))

    async def _record_durable(
        self, run: RunState, kind: str, step_id: str = "", **payload: Any
    ) -> Pending[None]:
        """As :meth:`_record`, and return what to wait on for the commit."""
        event = run.make_event(kind, self._clock.now(), step_id, **payload)
        return await self._append([event])

    async def _append(self, records: Sequence[Any]) -> Pending[None]:
        publish = tuple(r for r in records if isinstance(r, RunEventRecord))
        reply, pending = reply_pair()
        await self._send_store(Append(tuple(records), publish, reply))
        return pending

    async def _send_store(self, append: Append) -> None:
        """Into the store's mailbox without a scheduling pass while it has room (``send``
        always takes one: twice a step on a chain, where the store waits for exactly these);
        waits for room when it is full. The run's held completions go first, as an append of
        their own (a failed commit of theirs fails nothing else), then their notices."""
        held = self._held.pop(_run_of(append), None) if self._held else None
        if held is not None:
            await self._put(Append(tuple(held[0]), tuple(held[0])))
        await self._put(append)
        if held is not None and held[1]:
            await self._notify(held[1])

    async def _put(self, append: Append) -> None:
        try:
            try:
                self._store.send_nowait(append)
            except trio.WouldBlock:
                await self._store.send(append)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise Unavailable("the daemon is shutting down") from None

    async def _flush(self, run: RunState) -> None:
        """Append the run's held completions now (nothing else of the run is appended yet)."""
        held = self._held.pop(run.run_id, None)
        if held is not None:
            await self._record_all(*held)

    def _flush_nowait(self, run: RunState) -> None:
        """The held completions of a driver being cancelled, if the mailbox has room."""
        held = self._held.pop(run.run_id, None)
        if held is not None:
            with contextlib.suppress(trio.WouldBlock, trio.BrokenResourceError,
                                     trio.ClosedResourceError):  # fmt: skip
                self._store.send_nowait(Append(tuple(held[0]), tuple(held[0])))
                for notice in held[1]:
                    if self._attestor is not None:
                        self._attestor.send_nowait(notice)

    def _retire(self, run: RunState) -> None:
        """Keep a finished run in memory among the recent ones (``[scheduler] recent_runs``, and
        ``recent_run_bytes`` of their outputs: a run holds its outputs, and about as much again
        in the inputs they were resolved into — 1,000 runs of MB-sized outputs held GBs)."""
        run.ended = True
        self._backoffs.pop(run.run_id, None)
        self._runs.move_to_end(run.run_id)
        # Retired runs only: one whose end is still on its way to the store (``_end`` awaits
        # it) is terminal already, and forgetting it then left its own retirement a KeyError
        # that stopped the daemon.
        finished = [(rid, recorded_total(r)) for rid, r in self._runs.items() if r.ended]
        config = self._config
        for run_id in forgotten(finished, config.recent_runs, config.recent_run_bytes):
            del self._runs[run_id]

    def _rebuild(self, submission: RunSubmission, events: Sequence[Any]) -> RunState:
        run = RunState.new(submission, parse_dag(submission.dag_json, None))
        for event in events:
            run.apply(event)
        run.output_total = None  # its outputs so far count: measured if a step completes
        run.input_total = None  # and its leases' inputs: measured at its next lease
        return run

    # --- breakpoints, patch, resume, branch -----------------------------------------------------

    def _spawn(self, handler: Callable[[Any], Any]) -> Callable[[Any], None]:
        def start(message: Any) -> None:
            assert self._nursery is not None
            self._nursery.start_soon(self._answer, handler, message)

        return start

    async def _answer(self, handler: Callable[[Any], Any], message: Any) -> None:
        try:
            result = await handler(message)
        except Exception as exc:
            message.reply.fail(exc)
        else:
            message.reply.send(result)

    async def _target(self, run_id: str) -> RunState:
        """A run to act on: live ones from memory; a finished one is loaded (to say so)."""
        run = self._runs.get(run_id)
        return run if run is not None else await self._load(run_id)

    async def _update_breakpoints(self, message: UpdateBreakpoints) -> list[str]:
        run = await self._target(message.run_id)
        points = new_breakpoints(run, message.add, message.remove, message.clear_all)
        await (await self._record_durable(run, "breakpoints_updated", breakpoints=points)).wait()
        return points

    async def _patch(self, message: PatchStep) -> str:
        run = await self._target(message.run_id)
        made = await self._made_patch(run, message)
        payload = finished_patch(
            run, message.step_id, made, self._env_allowed, self._config.max_run_bytes,
            partial(step_model_refusal, self._registry),
        )  # fmt: skip
        note_inputs(run, made.recorded)  # before the event: its run may count its log
        await (await self._record_durable(run, "step_patched", message.step_id, **payload)).wait()
        return message.step_id

    async def _made_patch(self, run: RunState, message: PatchStep) -> MadePatch:
        """A PatchStep's patch made and checked: a large one (its patch or the inputs it
        records) on a worker thread, made again if another patch of the step came meanwhile."""
        patch = message.inputs_patch, message.env, message.model, message.note
        while True:
            spec = patchable_step(run, message.step_id).spec
            if not json_values_past((spec.inputs, message.inputs_patch, message.env)):
                return made_patch(run.dag, spec, *patch, self._config.max_step_bytes)
            try:
                made = await in_thread(
                    made_patch, run.dag, spec, *patch, self._config.max_step_bytes
                )
            except InvalidArgument:
                if patchable_step(run, message.step_id).spec is spec:
                    raise
                continue  # (refused as the step was: it is patched since)
            if patchable_step(run, message.step_id).spec is spec:  # (still paused, pending)
                return made

    async def _resume(self, message: ResumeRun) -> tuple[str, str]:
        run = await self._target(message.run_id)
        step_id = check_resumable(run)
        pending = await self._record_durable(run, "run_resumed", step_id)
        await pending.wait()
        wakeup = self._wakeups.pop(run.run_id, None)
        if wakeup is not None:
            wakeup.set()
        return run.status, step_id

    async def _branch(self, message: BranchRun) -> str:
        source = await self._target(message.run_id)
        check_branchable(source, message.from_step)
        sub, patches = source.submission, (message.inputs_patch, message.labels_patch)
        made = partial(branched_values, sub, *patches, self._config.max_step_bytes)
        large = json_values_past((sub.inputs, sub.labels, *patches))
        submission = branch_submission(
            source,
            run_id=new_run_id(),
            from_step=message.from_step,
            seed_mode=message.seed_mode,
            seed=message.seed,
            values=await in_thread(made) if large else made(),  # (180,000 keys: 1.4 s)
            note=message.note,
            created_at=self._clock.now(),
        )
        submission = _traced(submission)  # a branch is a run of its own: a trace of its own
        run = RunState.new(submission, source.dag)
        records: list[Any] = [submission, run.make_event(
            "run_submitted", submission.created_at, steps=len(run.dag.steps), seed=submission.seed,
            parent_run_id=source.run_id, branch_step=message.from_step, note=message.note,
        )]  # fmt: skip
        for reused in reusable_steps(source, message.from_step):
            step_id = reused.pop("step_id")
            records.append(run.make_event("step_reused", self._clock.now(), step_id, **reused))
        run.output_total = None  # the reused outputs count toward the branch's own
        await (await self._append(records)).wait()
        self._runs[run.run_id] = run  # only once durable: a failed commit leaves nothing behind
        assert self._nursery is not None
        self._nursery.start_soon(self._drive, run)
        return run.run_id

    # --- CancelRun and ListRuns -----------------------------------------------------------------

    async def _cancel(self, message: CancelRun) -> tuple[str, tuple[str, ...]]:
        """Record the cancel durably (a restarted daemon ends the run instead of resuming it),
        cancel what is running — a mutator only after the grace it gets at shutdown — and
        answer once the run has ended."""
        run = await self._target(message.run_id)
        check_cancelable(run)
        ended = self._ended.setdefault(run.run_id, trio.Event())
        if not run.canceling:
            reason = message.reason or "cancelled by CancelRun"
            await (await self._record_durable(run, "cancel_requested", reason=reason)).wait()
        running = self._running.get(run.run_id, {})
        # the steps running (a step's task is in the table while it waits for a slot, too)
        canceled = tuple(
            i for i in running if _leased_ever(run.steps[i]) and not run.steps[i].finished
        )
        for scope, mutator in list(running.values()):
            if mutator:
                scope.deadline = min(scope.deadline, trio.current_time() + self._grace)
            else:
                scope.cancel()
        backoff = self._backoffs.get(run.run_id)
        if backoff is not None:  # a step waiting to retry runs nothing: it ends now, grace or not
            backoff.set()
        wakeup = self._wakeups.pop(run.run_id, None)
        if wakeup is not None:
            wakeup.set()  # a paused run stops waiting for ResumeRun
        await ended.wait()
        # a mutator that finished within its grace was not cancelled: it ran, and succeeded
        # or failed (it was listed as cancelled, its side effect done)
        return run.status, tuple(i for i in canceled if run.steps[i].status == "canceled")

    async def _list(self, message: ListRuns) -> tuple[list[RunSummary], str]:
        await ask(self._store, Barrier)  # every event made so far is in the answer
        found: list[RunSummary] = await ask(
            self._store, lambda r: LoadRunSummaries(message.query, r)
        )
        return run_page(found, message.query)

    # --- GetRun and TapRun ----------------------------------------------------------------------

    def _on_get(self, message: GetRun) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(self._get, message)

    async def _get(self, message: GetRun) -> None:
        try:
            run = self._runs.get(message.run_id)
            if run is not None:
                view = run_view(run)
                await self._flush(run)
                await ask(self._store, Barrier)  # all it shows is durable
            else:  # a run of its own, not the scheduler's: its view may be made off the loop
                loaded = await self._load(message.run_id)
                big = len(loaded.submission.dag_json) >= PARSE_OFF_LOOP_BYTES
                view = await in_thread(run_view, loaded) if big else run_view(loaded)
        except Exception as exc:
            message.reply.fail(exc)
        else:
            message.reply.send(view)

    async def _history(self, run_id: str) -> Sequence[RunEventRecord]:
        """A run's durable events: a run that ended in memory gives its own once the store has
        committed what was sent before (its end among them) — the same records for every tap,
        and their encodings shared; each tap that read the store parsed the whole log again
        (30 taps of a run of 20 MB of outputs: 2.4 GB, and DuckDB out of memory)."""
        run = self._runs.get(run_id)
        if run is not None and run.ended:
            await ask(self._store, Barrier)
            return tuple(run.events)

        async def read() -> SharedHistory:
            found: list[RunEventRecord] = await ask(self._store, lambda r: LoadRunEvents(run_id, r))
            return SharedHistory(found)

        if run is not None:  # live: read after its tapper subscribed, its own
            return await read()
        return await self._histories.read(run_id, read, ended)  # one copy for all its taps

    async def _load(self, run_id: str) -> RunState:
        """A run not in memory, as stored: shared by its callers at once (they only read it; a
        run not in memory has ended)."""
        return await self._loaded.read(run_id, partial(self._load_once, run_id))

    async def _load_once(self, run_id: str) -> RunState:
        found: StoredRun | None = await ask(self._store, lambda r: LoadRun(run_id, r))
        if found is None:
            raise NotFound(f"run_id: no run {quoted(run_id)}")
        submission, events = found
        if len(submission.dag_json) >= PARSE_OFF_LOOP_BYTES:
            # a stored run of 20,000 steps took ~1 s to rebuild: no other client got a turn
            return await in_thread(self._rebuild, submission, events)
        return self._rebuild(submission, events)

    def _on_open_tap(self, message: OpenTap) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(self._open_tap, message)

    async def _open_tap(self, message: OpenTap) -> None:
        try:
            # Subscribe first, then read the durable history: nothing falls in between.
            await ask(self._tap, lambda r: Subscribe("runs", message.run_id, r, message.sink))
            history = await self._history(message.run_id)
            if not history:
                raise NotFound(f"run_id: no run {quoted(message.run_id)}")
        except Exception as exc:
            message.sink.close()
            message.reply.fail(exc)
        else:
            message.reply.send(TapOpened(history))


class _Leased:
    """An attempt leased, not yet run: its block, lease and span, the events (and
    attestor notices) its lease made, and the borrower of the concurrency slot the driver took
    for it (None: its task holds one)."""

    __slots__ = ("block", "grant", "lease", "leased", "notices", "records", "slot", "span")

    def __init__(
        self,
        block: Any,
        leased: Lease,
        span: str,
        lease: RunEventRecord,
        grant: RunEventRecord | None,
        records: list[Any],
        notices: list[Attest],
    ) -> None:
        self.block, self.leased, self.span = block, leased, span
        self.lease, self.grant, self.records, self.notices = lease, grant, records, notices
        self.slot: object | None = None


def run_view(run: RunState) -> RunView:
    sub = run.submission
    return RunView(
        run_id=run.run_id,
        status=run.status,
        dag_json=sub.dag_json,
        inputs=sub.inputs,
        seed=sub.seed,
        labels=sub.labels,
        breakpoints=tuple(run.sorted_breakpoints()),
        created_at=sub.created_at,
        updated_at=run.updated_at or sub.created_at,
        steps=tuple(_step_view(run, s) for s in run.steps.values()),
        error=run.error,
        parent_run_id=sub.parent_run_id,
        branch_step=sub.branch_step,
        paused_step=run.paused_step if run.status == "PAUSED_AT_STEP" else "",
        trace_id=sub.trace_id,
        span_id=sub.span_id,
        attestation_ids=announced_ids(run.events),
    )


def _step_view(run: RunState, step: StepState) -> StepView:
    status = step.status
    if status == "pending" and run.terminal:
        status = "skipped"  # never started: an upstream step failed
    return StepView(
        step_id=step.spec.id,
        idx=step.spec.idx,
        type=step.spec.type,
        status=status,
        attempt=step.attempt,
        leased_at=step.leased_at,
        completed_at=step.completed_at,
        output=step.output,
        error=step.error,
        inputs=step.inputs,
        seed=step.seed,
        model=step.model,
        usage=step.usage,
        span_id=step.span_id,
    )


def _spec_of(sub: RunSubmission) -> dict[str, Any]:
    """What a run attestation's ``spec_hash`` digests."""
    return {"dag_json": sub.dag_json, "inputs": sub.inputs, "seed": sub.seed,
            "labels": sub.labels, "breakpoints": list(sub.breakpoints)}  # fmt: skip


def _attempt_ended(
    run: RunState,
    ctx: BlockContext,
    step_type: str,
    lease: RunEventRecord,
    ended: datetime,
    output: Any,
    error: str,
    *,
    canceled: bool = False,
) -> StepAttemptEnded:
    usage = ctx.usage if not usage_fault(ctx.usage) else Usage()  # (its failure says why)
    return StepAttemptEnded(
        run.submission.trace_id, ctx.span_id, run.submission.span_id, run.run_id, lease.step_id,
        step_type, ctx.attempt, error, lease.occurred_at, ended, ctx.model, output,
        (usage.tokens_in, usage.tokens_out, usage.cost), canceled,
    )  # fmt: skip


def _run_ended(run: RunState, ended: datetime) -> RunEnded:
    sub = run.submission
    return RunEnded(
        sub.trace_id, sub.span_id, "", run.run_id, run.status, run.error, sub.created_at, ended,
        len(run.steps), tuple(sorted(sub.labels.items())),
    )  # fmt: skip


def _run_of(append: Append) -> str:
    """The run an append of the scheduler's is about (each holds records of one run)."""
    return getattr(append.records[0], "run_id", "") if append.records else ""


def _traced(submission: RunSubmission) -> RunSubmission:
    """A new run's submission with its trace: a new one, and the run's own span in it."""
    root = new_root()
    return replace(submission, trace_id=root.trace_id, span_id=root.span_id)


def _first_cause(exc: BaseException) -> BaseException:
    """The first exception a task group's holds (its own text says only how many it holds)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _not_retried(run: RunState, failure: Any) -> dict[str, Any]:
    error = dict(failure) if isinstance(failure, Mapping) else {"message": str(failure)}
    return not_retried(error, run.failed[0])


def _leased_ever(step: StepState) -> bool:
    """Whether a step has had a lease (an attempt began), in this run's log."""
    return step.attempt > 0


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
