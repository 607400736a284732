"""The scheduler's decisions over a :class:`RunState`, sans-IO: which steps to lease next, what a
failed attempt leads to, how long an attempt may take, what recovery re-leases and how a run
ends. The scheduler actor does the I/O — leases, commits, running blocks, sleeping the delays
these return — and records what they decide as run events."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from foundry.kernel.core.dag import (
    StepSpec,
    StepTooLarge,
    references,
    resolve,
    resolve_bounded,
    step_seeds,
)
from foundry.kernel.core.ids import compact_json
from foundry.kernel.core.json_input import check_struct_depth, cut_middle
from foundry.kernel.core.records import storable
from foundry.kernel.core.runs import RunState, StepState
from foundry.kernel.errors import InvalidArgument


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


def restarted_in_pause(run: RunState, busy: set[str], stopping: bool) -> tuple[StepState, ...]:
    """The steps of a paused run that a stopped daemon left mid-attempt (pending again, an
    attempt recorded), to lease again now: a pause lets steps already running finish. (They
    waited for a ResumeRun, and PatchStep refused them as "leased again".)"""
    if run.status != "PAUSED_AT_STEP" or run.failed or stopping:
        return ()
    return tuple(step for step in run.ready(busy) if step.attempt)


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


CRASHES_IN_A_ROW = 3  # attempts of a step a crash of the daemon interrupted before it fails


def crash_looped(step: StepState) -> bool:
    """Has a crash of the daemon interrupted the step's last ``CRASHES_IN_A_ROW`` attempts? A
    step whose command takes the daemon down (the OOM killer, a ``kill -9`` of its parent)
    would do so again at every start: it fails instead of being leased again."""
    return step.crashes >= CRASHES_IN_A_ROW


def crash_error(step: StepState) -> dict[str, Any]:
    return step_error(
        f"a crash of the daemon (it did not stop cleanly) interrupted its last {step.crashes} "
        "attempts in a row: not leased again, as a step that takes the daemon down would at "
        "every start",
        step.attempt,
    )


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


MAX_STEP_BYTES = 4 * 1024 * 1024  # ``[scheduler] max_step_bytes``' default
MAX_RUN_BYTES = 256 * 1024 * 1024  # ``[scheduler] max_run_bytes``' default


def lease(
    run: RunState, step: StepState, max_bytes: int = MAX_STEP_BYTES, max_run: int = MAX_RUN_BYTES
) -> Lease:
    """The next attempt's lease. Raises UnresolvedReference, TypeError or ValueError (among
    them StepTooLarge: resolved inputs of more than ``max_bytes`` of JSON, or more than what is
    left of the run's ``max_run`` — every lease is recorded, and references made a 124 KB
    request write 62 MB) when the step's inputs cannot be resolved into JSON (the step fails).
    Inputs whose references could substitute more than that are resolved with a running count,
    which stops them early."""
    spec = step.spec
    run_inputs, outputs = run.submission.inputs, run.outputs()
    if reference_bound(run, spec) > max_bytes:
        inputs = resolve_bounded(spec.inputs, run_inputs, outputs, max_bytes)
    else:
        inputs = resolve(spec.inputs, run_inputs, outputs)
    text = compact_json(inputs)
    if len(text) > max_bytes:
        raise StepTooLarge(f"inputs: {len(text):,} bytes of JSON once resolved, over the step "
                           f"limit of {max_bytes:,} ([scheduler] max_step_bytes)")  # fmt: skip
    if recorded_total(run) + len(text) > max_run:
        raise StepTooLarge(f"inputs: {len(text):,} bytes of JSON once resolved would take the "
                           f"run's recorded step inputs and outputs past {max_run:,} bytes "
                           "([scheduler] max_run_bytes)")  # fmt: skip
    try:  # an output substituted deep inside the inputs: deeper than clients could read
        check_struct_depth(text, inputs, "inputs (once resolved)")
    except InvalidArgument as exc:
        raise ValueError(str(exc)) from None
    if not run.seeds:  # the run's first lease: every step's seed, in one go
        run.seeds = step_seeds(run.submission.seed, run.dag.steps)
    return Lease(attempt_number(step), text, run.seeds[spec.id])


def reference_bound(run: RunState, spec: StepSpec) -> int:
    """At most what a step's references substitute, in JSON bytes: each reference counted as
    the whole output it names (or all of the run's inputs), as often as it appears."""
    found = run.step_references.get(spec.id)
    if found is None:
        found = run.step_references[spec.id] = references(spec.inputs)
    total = 0
    for path in found:
        total += output_bytes(run, path[1]) if path[0] == "steps" else _inputs_bytes(run)
    return total


def output_bytes(run: RunState, step_id: str) -> int:
    """The JSON bytes of a finished step's output (measured once)."""
    size = run.output_sizes.get(step_id)
    if size is None:
        size = run.output_sizes[step_id] = len(compact_json(run.steps[step_id].output))
    return size


def _inputs_bytes(run: RunState) -> int:
    if run.inputs_size is None:
        run.inputs_size = len(compact_json(run.submission.inputs))
    return run.inputs_size


def output_refused(
    run: RunState, size: int, max_step: int = MAX_STEP_BYTES, max_run: int = MAX_RUN_BYTES
) -> str:
    """Why a step's output of ``size`` JSON bytes is refused (its step fails), or ""."""
    if size > max_step:
        return (f"output: {size:,} bytes of JSON, over the step limit of {max_step:,} "
                "([scheduler] max_step_bytes)")  # fmt: skip
    if recorded_total(run) + size > max_run:
        return (f"output: the run's recorded step inputs and outputs would pass {max_run:,} "
                "bytes of JSON ([scheduler] max_run_bytes)")  # fmt: skip
    return ""


def note_output(run: RunState, step_id: str, size: int) -> None:
    """A completed step's output size, counted toward its run's."""
    run.output_sizes[step_id] = size
    run.output_total = output_total(run) + size


def note_inputs(run: RunState, size: int) -> None:
    """A recorded lease's inputs (``size`` JSON bytes), counted toward its run's budget."""
    run.input_total = input_total(run) + size


def input_total(run: RunState) -> int:
    """The JSON bytes of every lease's inputs the run recorded (each attempt's) and of its
    patches (:func:`patch_bytes`): counted once from its log for a run rebuilt from it, so a
    restart does not reset the run's budget."""
    if run.input_total is None:
        run.input_total = sum(
            len(compact_json(event.payload["inputs"])) if event.kind == "step_leased"
            else patch_bytes(event.payload)
            for event in run.events if event.kind in ("step_leased", "step_patched")
        )  # fmt: skip
    return run.input_total


def patch_bytes(payload: Mapping[str, Any]) -> int:
    """What a ``step_patched`` event's payload records of inputs, in JSON bytes: the patch, and
    the step's inputs before it."""
    return len(compact_json(payload["inputs_patch"])) + len(
        compact_json(payload["previous"]["inputs"])
    )


def recorded_total(run: RunState) -> int:
    """What counts toward ``[scheduler] max_run_bytes``: the run's step inputs and outputs."""
    return input_total(run) + output_total(run)


def output_total(run: RunState) -> int:
    """The JSON bytes of the run's step outputs so far: counted once for a run whose outputs
    were not noted as they came (rebuilt from its log, or a branch's reused steps), so a daemon
    restart or a branch does not reset the run's budget ([scheduler] max_run_bytes)."""
    if run.output_total is None:
        finished = ("succeeded", "reused")
        run.output_total = sum(
            output_bytes(run, step.spec.id) for step in run.steps.values()
            if step.status in finished
        )  # fmt: skip
    return run.output_total


def forgotten(finished: Sequence[tuple[str, int]], keep_runs: int, keep_bytes: int) -> list[str]:
    """Which finished runs (id, output bytes; oldest first) leave memory: the oldest, until at
    most ``keep_runs`` are left and their outputs come to at most ``keep_bytes`` — but never
    the newest (it was just finished: its client is likely to read it now). Their logs stay in
    the store, which GetRun reads them from."""
    total = sum(size for _, size in finished)
    dropped: list[str] = []
    for run_id, size in finished[:-1]:
        if len(finished) - len(dropped) <= keep_runs and total <= keep_bytes:
            break
        dropped.append(run_id)
        total -= size
    return dropped


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


# A step's output the store cannot hold: the attempt fails (its retries may do better), where its
# completion was acknowledged, then refused by the store, and the run lost it at the next start.
LONE_SURROGATE = (
    "the step's output is not valid Unicode: it holds a lone surrogate (half of a character "
    "outside the Basic Multilingual Plane: an emoji cut in two)"
)

MAX_ERROR_CHARS = 2_000  # of a step's recorded error message: its middle goes past it


def step_error(message: str, attempt: int = 0, timed_out: bool = False) -> dict[str, Any]:
    """A step's recorded error. A message past ``MAX_ERROR_CHARS`` loses its middle: a reference
    path of 1 MB made a 1 MB error, in GetRun three times over and in the log. A lone surrogate
    is kept escaped (``storable``): an LLM endpoint's error text with one left the run's end
    unstored, and GetRun INTERNAL."""
    return {"message": storable(cut_middle(message, MAX_ERROR_CHARS)), "attempt": attempt,
            "timed_out": timed_out}  # fmt: skip


def not_retried(error: Mapping[str, Any], failed_step: str) -> dict[str, Any]:
    """A retrying step's error, final: ``failed_step`` has failed the run, so no attempt more is
    made (a mutator's would be a side effect of a run already lost)."""
    return {**error, "message": f"{error.get('message', '')}{_NOT_RETRIED.format(failed_step)}"}


def as_it_failed(message: str) -> str:
    """A recorded error message without what :func:`not_retried` added: what the step's block
    said (a replay compares it with what the block says now: it drifted, by that note alone)."""
    found = _NOT_RETRIED_AT_END.search(message)
    return message[: found.start()] if found else message


_NOT_RETRIED = " (not retried: step {!r} failed the run)"
_NOT_RETRIED_AT_END = re.compile(r" \(not retried: step '[^']*' failed the run\)\Z")


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
