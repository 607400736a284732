"""The replay actor: re-executes a finished run's steps in isolation and reports drift.

Modes: FULL re-executes every step that ran, each with exactly the inputs, seed, model and env
it was recorded with; mutators (side effects) are never re-executed — their recorded output
stands in. STEP_ONLY re-executes nothing and returns the recorded snapshots. DIFF is FULL but
returns only the steps whose drift is outside tolerance. The strategy is LIVE when any step ran
live, MOCKED when every result came from the recording. A replay writes nothing to the run.
"""

from __future__ import annotations

import copy
import logging
import secrets
import shutil
from functools import partial
from pathlib import Path
from typing import Any

import trio
from foundry.kernel.actors.mailbox import ask
from foundry.kernel.actors.replay.messages import Replay, ReplayedStep, ReplayResult
from foundry.kernel.actors.shared_reads import SharedReads
from foundry.kernel.actors.store.messages import LoadRun, StoredRun, StoreMessage
from foundry.kernel.actors.threads import in_thread
from foundry.kernel.blocks.api import BlockContext, BlockKind
from foundry.kernel.blocks.execution import attempt_once, reported_fault, settings_of
from foundry.kernel.blocks.registry import BlockRegistry
from foundry.kernel.core.dag import parse_dag
from foundry.kernel.core.drift import Tolerance, drift
from foundry.kernel.core.json_input import json_values_past, quoted
from foundry.kernel.core.planner import (
    MAX_STEP_BYTES,
    as_it_failed,
    attempt_limit,
    replayed_output,
    step_error,
)
from foundry.kernel.core.runs import RunEventRecord, RunState, RunSubmission, StepState
from foundry.kernel.core.throttle import Action
from foundry.kernel.errors import FailedPrecondition, NotFound

log = logging.getLogger("foundry.replay")
MAX_REPLAYS = 2  # replays running at once (one a core)
SCRATCH = "replays"  # under the home: each replay's artifact folders, while it runs


class Replayer:
    def __init__(
        self,
        registry: BlockRegistry,
        inbox: trio.MemoryReceiveChannel[Replay],
        store: trio.MemorySendChannel[StoreMessage],
        *,
        home: Path,
        tolerance: Tolerance,
        shutdown_grace: float = 10.0,
        max_step_bytes: int = MAX_STEP_BYTES,
    ) -> None:
        """``max_step_bytes``: ``[scheduler] max_step_bytes``, an output past which fails its
        step in a replay as in the run."""
        self._registry, self._inbox, self._store = registry, inbox, store
        self._home, self._tolerance, self._grace = home, tolerance, shutdown_grace
        self._max_step_bytes = max_step_bytes
        self._runs: SharedReads[RunState] = SharedReads()  # ended runs being replayed
        self._slots = trio.CapacityLimiter(MAX_REPLAYS)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        # What earlier replays left (a daemon killed during one): no replay is in progress.
        await in_thread(shutil.rmtree, self._home / SCRATCH, True)
        async with self._inbox, self._store, trio.open_nursery() as nursery:
            task_status.started()
            async for message in self._inbox:
                nursery.start_soon(self._answer, message)
            # Replays in flight get the grace period, as the scheduler's steps do (one whose
            # steps take minutes held the daemon's stop for as long).
            nursery.cancel_scope.deadline = trio.current_time() + self._grace
        if nursery.cancel_scope.cancelled_caught:
            log.warning("replays still running after the %g s shutdown grace were cancelled",
                        self._grace)  # fmt: skip

    async def _answer(self, message: Replay) -> None:
        """Replay for the asker, until it stops waiting (a client's deadline: each retry of a
        call that timed out re-executed every step again, all of them running at once)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_when_gone, message, nursery.cancel_scope)
            try:
                result = await self._replay(message.run_id, message.mode)
            except trio.Cancelled:
                message.reply.abandon()  # (the daemon stops: the asker, if any, is told)
                raise
            except Exception as exc:
                message.reply.fail(exc)
            else:
                message.reply.send(result)
            nursery.cancel_scope.cancel()

    async def _loaded(self, run_id: str) -> RunState:
        found: StoredRun | None = await ask(self._store, lambda r: LoadRun(run_id, r))
        if found is None:
            raise NotFound(f"run_id: no run {quoted(run_id)}")
        submission, events = found
        return await in_thread(_rebuilt, submission, events)  # a long run: ~20 µs a step

    async def _replay(self, run_id: str, mode: str) -> ReplayResult:
        # A replay holds its run, runs its steps again and compares their outputs: 30 at once
        # of a run of 10 MB of outputs took 5.8 GB and stalled the loop 1.6 s (a hunt). Replays
        # of one run share its load (each step gets a copy of its inputs), and at most
        # MAX_REPLAYS run at once: the others wait their turn, or until their asker goes — once
        # their run is found and finished (a refusal does not wait behind long replays).
        run = await self._runs.read(run_id, partial(self._loaded, run_id), _terminal)
        if not run.terminal:
            raise FailedPrecondition(f"run {run_id} is {run.status.lower()}; replay a finished run")
        async with self._slots:
            return await self._replayed(run, mode)

    async def _replayed(self, run: RunState, mode: str) -> ReplayResult:
        run_id = run.run_id
        scratch = self._home / SCRATCH / f"{run_id}-{secrets.token_hex(4)}"
        replayed = []
        try:
            for step in run.steps.values():
                if step.inputs is not None:
                    replayed.append(
                        await self._step(run, step, live=mode != "step_only", scratch=scratch)
                    )
                    # A plain function's step never yields: without this, a replay held the
                    # daemon's loop for all its steps in one go.
                    await trio.lowlevel.checkpoint()
        finally:  # what the steps wrote is theirs to compare, not to keep (a folder a replay)
            with trio.CancelScope(shield=True):
                await in_thread(shutil.rmtree, scratch, True)
        return ReplayResult(
            run_id=run_id,
            all_within_tolerance=all(r.drift.within_tolerance for r in replayed),
            strategy="live" if any(r.live for r in replayed) else "mocked",
            steps=tuple(r for r in replayed if mode != "diff" or not r.drift.within_tolerance),
        )

    async def _step(
        self, run: RunState, step: StepState, *, live: bool, scratch: Path
    ) -> ReplayedStep:
        recorded = _recorded_value(step)
        block = self._registry.by_name.get(step.spec.type)
        current, usage = recorded, dict(step.usage)
        # A mutator is never run again, nor a branch's reused step: it did not run in this run
        # (its recorded output stands, as a mutator's does).
        # Nor a cancelled step: it has no result to compare (it was stopped, not ended), and
        # run again it ran to its timeout, then drifted by "cancelled" alone.
        runs_live = (live and block is not None and block.kind is not BlockKind.MUTATOR
                     and step.status not in ("reused", "canceled"))  # fmt: skip
        if runs_live and block is not None:
            # its own copy: replays at once share the run, and a block may change what it is
            # given (the scheduler gives each attempt inputs parsed afresh)
            inputs = step.inputs or {}
            payload = (await in_thread(copy.deepcopy, inputs) if json_values_past((inputs,))
                       else copy.deepcopy(inputs))  # fmt: skip
            ctx = BlockContext(
                payload=payload, artifact_dir=scratch / step.spec.id,
                run_id=run.run_id, step_id=step.spec.id, seed=step.seed, model=step.model,
                env=dict(step.env or step.spec.env),
                attempt=max(step.attempt, 1),  # the recorded attempt's number, as it ran
            )  # fmt: skip
            limit = attempt_limit(step.spec, settings_of(block, ctx.payload).timeout)
            output, error, _ = await attempt_once(block, Action.RUN, ctx, limit)
            error = error or reported_fault(ctx)  # as the scheduler fails such an attempt
            if not error:  # and as it checks an output (a 3.9 MB string: ~0.1 s a step)
                large = json_values_past((output,))
                limit = self._max_step_bytes
                current, error = (await in_thread(replayed_output, output, limit) if large
                                  else replayed_output(output, limit))  # fmt: skip
            # an error is cut as the recorded one was: a 3.4 MB error against its recorded
            # 2,000 characters held the daemon's loop in difflib for 12 s; a failed attempt's
            # usage is not recorded (as the scheduler records none: an identical failure was
            # drift by the usage alone)
            if error:
                current, usage = {"error": step_error(error)["message"]}, {}
            else:
                spent = ctx.usage
                usage = {"tokens_in": spent.tokens_in, "tokens_out": spent.tokens_out,
                         "cost": spent.cost}  # fmt: skip
        # (compact JSON of both outputs and difflib: ~50 ms a step of MB outputs, off the loop)
        found = await in_thread(drift, recorded, current, step.usage, usage, self._tolerance)
        return ReplayedStep(step_id=step.spec.id, snapshot=_snapshot(step), drift=found,
                            live=runs_live)  # fmt: skip


async def _cancel_when_gone(message: Replay, scope: trio.CancelScope) -> None:
    await message.reply.wait_asker_gone()
    scope.cancel()


def _terminal(run: RunState) -> bool:
    return run.terminal


def _rebuilt(submission: RunSubmission, events: list[RunEventRecord]) -> RunState:
    """The run's state from its log (pure work: on a worker thread)."""
    run = RunState.new(submission, parse_dag(submission.dag_json, None))
    for event in events:
        run.apply(event)
    return run


def _recorded_value(step: StepState) -> Any:
    if step.succeeded:
        return step.output
    message = step.error.get("message", "") if isinstance(step.error, dict) else step.error
    return {"error": as_it_failed(message) if isinstance(message, str) else message}


def _snapshot(step: StepState) -> dict[str, Any]:
    return {
        "step_id": step.spec.id,
        "type": step.spec.type,
        "status": step.status,
        "attempt": step.attempt,
        "inputs": step.inputs,
        "seed": step.seed,
        "model": step.model,
        "output": step.output,
        "error": step.error,
        "usage": dict(step.usage),
    }
