"""The scheduler's decisions over a :class:`RunState`, sans-IO: which steps to lease next, what a
failed attempt leads to, how long an attempt may take, what recovery re-leases and how a run
ends. The scheduler actor does the I/O — leases, commits, running blocks, sleeping the delays
these return — and records what they decide as run events."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from foundry.kernel.core.dag import StepSpec, resolve, step_seeds
from foundry.kernel.core.ids import compact_json
from foundry.kernel.core.runs import RunState, StepState


@dataclass(frozen=True, slots=True)
class Starts:
    """Ready steps to lease now, in DAG order, and the first ready step a breakpoint holds back
    ("" when none does: the run goes on). ``held``: the ready steps not started because of that
    breakpoint (it and those after it), the only ones a ResumeRun needs to look at again, with
    the dependents of steps that finish meanwhile — not every step of a long run, per resume."""

    steps: tuple[StepState, ...]
    pause_at: str = ""
    held: tuple[str, ...] = ()


class Next(Enum):
    """What a run's driver waits for once it has started what it could."""

    STEP = "step"  # a running step to finish
    RESUME = "resume"  # a ResumeRun (paused at a breakpoint)
    STOP = "stop"  # nothing: the daemon is stopping, the run goes on at the next start
    END = "end"  # nothing: the run is over, record how it ended


def may_start(run: RunState, stopping: bool) -> bool:
    """May new steps start? Not once a step failed, the run paused or the daemon is stopping."""
    return run.status == "RUNNING" and not run.failed and not stopping


def starts(run: RunState, busy: set[str], candidates: Iterable[str] | None = None) -> Starts:
    """Every ready step in DAG order, stopping before the first one with a breakpoint (steps
    already running finish; nothing new starts until ResumeRun). ``candidates`` narrows the
    search (the dependents of a step that just finished; None: every step)."""
    ready = run.ready(busy, candidates)
    for index, step in enumerate(ready):
        if run.stops_at(step):
            held = tuple(s.spec.id for s in ready[index:])
            return Starts(tuple(ready[:index]), step.spec.id, held)
    return Starts(tuple(ready))


def next_wait(run: RunState, busy: bool, stopping: bool) -> Next:
    """What the driver waits for next; ``busy``: some of the run's steps are running."""
    if busy:
        return Next.STEP
    if run.status == "PAUSED_AT_STEP" and not run.failed:
        return Next.RESUME
    if stopping and not run.failed and unfinished(run):
        return Next.STOP
    return Next.END


def unfinished(run: RunState) -> bool:
    return any(not step.finished for step in run.steps.values())


def recover(run: RunState) -> list[str]:
    """After a restart: steps leased but never finished go back to pending, to be leased again
    with ``attempt + 1`` (their ids, in DAG order)."""
    interrupted = run.interrupted()
    for step in interrupted:
        step.status = "pending"
    return [step.spec.id for step in interrupted]


@dataclass(frozen=True, slots=True)
class Lease:
    """One attempt's ``step_leased`` facts: its number, its inputs serialized once (the lease
    records one copy, the block gets another), and its seed."""

    attempt: int
    inputs_json: str
    seed: int

    def payload(self, spec: StepSpec) -> dict[str, Any]:
        return {
            "attempt": self.attempt, "inputs": json.loads(self.inputs_json), "seed": self.seed,
            "model": spec.model, "env": dict(spec.env),
        }  # fmt: skip


def attempt_number(step: StepState) -> int:
    return step.attempt + 1


def lease(run: RunState, step: StepState) -> Lease:
    """The next attempt's lease. Raises UnresolvedReference, TypeError or ValueError when the
    step's inputs cannot be resolved into JSON (the step fails)."""
    spec = step.spec
    inputs = resolve(spec.inputs, run.submission.inputs, run.outputs())
    if not run.seeds:  # the run's first lease: every step's seed, in one go
        run.seeds = step_seeds(run.submission.seed, run.dag.steps)
    return Lease(attempt_number(step), compact_json(inputs), run.seeds[spec.id])


def attempt_limit(spec: StepSpec, block_timeout: float | None) -> float | None:
    """Seconds one attempt may take: the step's ``timeout``, else its block's (None: no limit)."""
    return spec.timeout if spec.timeout is not None else block_timeout


def retry_delay(
    spec: StepSpec, failures: int, block_retries: int, block_backoff: float
) -> float | None:
    """After an attempt failed (``failures`` attempts failed before it): the backoff before the
    next attempt, or None when the step has used its attempts and fails. The step's
    ``retry {max_attempts, backoff}`` wins over its block's ``retries``/``backoff``; the delay
    doubles per failure."""
    max_attempts = spec.retry.max_attempts if spec.retry else block_retries + 1
    if failures + 1 >= max_attempts:
        return None
    backoff = spec.retry.backoff if spec.retry else block_backoff
    return float(backoff * 2**failures)


def step_error(message: str, attempt: int = 0, timed_out: bool = False) -> dict[str, Any]:
    """A step's recorded error."""
    return {"message": message, "attempt": attempt, "timed_out": timed_out}


@dataclass(frozen=True, slots=True)
class Ending:
    """The event that ends a run: its kind, step and payload."""

    kind: str
    step_id: str = ""
    error: str = ""

    def payload(self) -> dict[str, Any]:
        return {"error": self.error} if self.kind == "run_failed" else {}


def ending(run: RunState) -> Ending:
    """How a run whose driver is done ends: failed at its first failed step, else succeeded."""
    failed = run.failed_steps()
    if not failed:
        return Ending("run_succeeded")
    step = failed[0]
    message = (step.error or {}).get("message", "") if isinstance(step.error, dict) else ""
    return Ending("run_failed", step.spec.id, f"step {step.spec.id!r} failed: {message}")
