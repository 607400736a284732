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
from foundry.kernel.core.failures import described, text_of
from foundry.kernel.core.ids import compact_json
from foundry.kernel.core.json_input import (
    check_struct_depth,
    cut_middle,
    json_values_past,
    oversized_number,
    unpaired_surrogate_escape,
)
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
    records one copy, the block gets another), and its seed; ``inputs``: read back from that
    text already (a large lease's, on the worker thread that made it), or None."""

    attempt: int
    inputs_json: str
    seed: int
    inputs: Any = None

    def payload(self, spec: StepSpec) -> dict[str, Any]:
        inputs = json.loads(self.inputs_json) if self.inputs is None else self.inputs
        return {
            "attempt": self.attempt, "inputs": inputs, "seed": self.seed, "model": spec.model,
            "env": dict(spec.env),
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
    which stops them early. A large lease is made in three parts (:class:`LargeLease`)."""
    spec = step.spec
    bound = reference_bound(run, spec)
    text = resolved_inputs(spec.inputs, run.submission.inputs, run.outputs(), bound, max_bytes)
    return leased_with(run, step, text, max_run)


def resolved_inputs(
    inputs: Any, run_inputs: Mapping[str, Any], outputs: Mapping[str, Any], bound: int,
    max_bytes: int,
) -> str:  # fmt: skip
    """A step's inputs resolved, as compact JSON of at most ``max_bytes`` (``bound``: what its
    references substitute at most, :func:`reference_bound`). Reads only what it is given: a
    large step's are resolved on a worker thread."""
    if bound > max_bytes:
        resolved = resolve_bounded(inputs, run_inputs, outputs, max_bytes)
    else:
        resolved = resolve(inputs, run_inputs, outputs)
    text = compact_json(resolved)
    if len(text) > max_bytes:
        raise StepTooLarge(f"inputs: {len(text):,} bytes of JSON once resolved, over the step "
                           f"limit of {max_bytes:,} ([scheduler] max_step_bytes)")  # fmt: skip
    try:  # an output substituted deep inside the inputs: deeper than clients could read
        check_struct_depth(text, resolved, "inputs (once resolved)")
    except InvalidArgument as exc:
        raise ValueError(str(exc)) from None
    return text


def leased_with(
    run: RunState, step: StepState, text: str, max_run: int, inputs: Any = None
) -> Lease:
    """The lease of resolved inputs (``text``; ``inputs``: read back from it already, or None),
    if the run's budget has room for them."""
    if recorded_total(run) + len(text) > max_run:
        raise StepTooLarge(f"inputs: {len(text):,} bytes of JSON once resolved would take the "
                           f"run's recorded step inputs and outputs past {max_run:,} bytes "
                           "([scheduler] max_run_bytes)")  # fmt: skip
    if not run.seeds:  # the run's first lease: every step's seed, in one go
        run.seeds = step_seeds(run.submission.seed, run.dag.steps)
    return Lease(attempt_number(step), text, run.seeds[step.spec.id], inputs)


# What a step's references substitute, at most, past which its lease is made on a worker thread
# (beside inputs of more than json_input.JSON_VALUES_ON_LOOP values).
LARGE_LEASE_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class LargeLease:
    """A lease of many JSON values, in three parts: what it needs, taken on the trio thread
    (:meth:`of`); its inputs resolved, serialized and read back on a worker thread
    (:meth:`made`; ~1-5 µs a value: 200,000 held the loop over a second); the lease made of
    them back on the trio thread (:meth:`lease`). The thread reads only what the step
    references, none of the state the trio thread changes meanwhile."""

    inputs: Any
    paths: tuple[tuple[str, ...], ...] | None  # None: many inputs, looked through on the thread
    run_inputs: Mapping[str, Any]
    outputs: Mapping[str, Any]  # the referenced outputs of steps that succeeded (or all)
    sizes: Mapping[str, int]  # their JSON bytes, where measured already
    inputs_size: int | None

    @classmethod
    def of(cls, run: RunState, spec: StepSpec) -> LargeLease | None:
        """The step's lease as such, or None when it is small enough to make on the loop (a
        bounded look: what is not measured yet is not measured here)."""
        outputs = run.outputs()
        if json_values_past((spec.inputs,)):  # its references are looked for on the thread
            every = dict(outputs)
            sizes = {i: n for i, n in run.output_sizes.items() if i in every}
            return cls(spec.inputs, None, run.submission.inputs, every, sizes, run.inputs_size)
        paths = step_references(run, spec)
        taken: dict[str, Any] = {}
        measured, unmeasured = 0, []  # each reference counted as often as it appears
        for path in paths:
            if path[0] != "steps":
                value, size = run.submission.inputs, run.inputs_size
            elif path[1] in outputs:
                value = taken.setdefault(path[1], outputs[path[1]])
                size = run.output_sizes.get(path[1])
            else:
                continue
            if size is None:
                unmeasured.append(value)
            else:
                measured += size
        if measured < LARGE_LEASE_BYTES and not json_values_past(unmeasured):
            return None
        sizes = {i: run.output_sizes[i] for i in taken if i in run.output_sizes}
        return cls(spec.inputs, tuple(paths), run.submission.inputs, taken, sizes,
                   run.inputs_size)  # fmt: skip

    def made(self, max_bytes: int) -> LeaseMade:
        """On the worker thread: the inputs resolved (at most ``max_bytes`` of JSON)."""
        sizes, inputs_size = dict(self.sizes), self.inputs_size
        bound = 0
        for path in self.paths if self.paths is not None else references(self.inputs):
            if path[0] != "steps":
                if inputs_size is None:
                    inputs_size = len(compact_json(self.run_inputs))
                bound += inputs_size
            elif path[1] in self.outputs:
                if path[1] not in sizes:
                    sizes[path[1]] = len(compact_json(self.outputs[path[1]]))
                bound += sizes[path[1]]
        text = resolved_inputs(self.inputs, self.run_inputs, self.outputs, bound, max_bytes)
        return LeaseMade(text, json.loads(text), sizes, inputs_size)


@dataclass(frozen=True, slots=True)
class LeaseMade:
    """A large lease's inputs as a worker thread made them, and the sizes it measured."""

    text: str
    inputs: Any
    output_sizes: Mapping[str, int]
    inputs_size: int | None

    def lease(self, run: RunState, step: StepState, max_run: int) -> Lease:
        """On the trio thread: the lease, the sizes measured kept for the run's next ones."""
        run.output_sizes.update(self.output_sizes)
        if self.inputs_size is not None:
            run.inputs_size = self.inputs_size
        return leased_with(run, step, self.text, max_run, self.inputs)


def step_references(run: RunState, spec: StepSpec) -> list[tuple[str, ...]]:
    """The references in a step's inputs (found once)."""
    found = run.step_references.get(spec.id)
    if found is None:
        found = run.step_references[spec.id] = references(spec.inputs)
    return found


def reference_bound(run: RunState, spec: StepSpec) -> int:
    """At most what a step's references substitute, in JSON bytes: each reference counted as
    the whole output it names (or all of the run's inputs), as often as it appears."""
    total = 0
    for path in step_references(run, spec):
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
        return _over_step_limit(size, max_step)
    if recorded_total(run) + size > max_run:
        return (f"output: the run's recorded step inputs and outputs would pass {max_run:,} "
                "bytes of JSON ([scheduler] max_run_bytes)")  # fmt: skip
    return ""


def _over_step_limit(size: int, max_step: int) -> str:
    return (f"output: {size:,} bytes of JSON, over the step limit of {max_step:,} "
            "([scheduler] max_step_bytes)")  # fmt: skip


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


def frozen_output(output: Any) -> tuple[str, Any]:
    """A step's output as JSON text, and read back from it: frozen before it is recorded."""
    text = compact_json(output)
    return text, json.loads(text)


def unreadable_output(text: str, output: Any) -> str:
    """Why an output (compact JSON ``text``) is one protobuf's clients could not read back —
    nested too deeply, or holding a number no double holds — or ""."""
    try:
        check_struct_depth(text, output, "output")
    except InvalidArgument as exc:
        return str(exc)
    too_big = oversized_number(text)
    return f"the step's output is not JSON a client can read: {too_big}" if too_big else ""


def not_json_reason(exc: BaseException) -> str:
    """Why an output could not be written as JSON. A plugin's value may raise anything while it
    is read (a dict subclass's ``items()`` raised KeyboardInterrupt: it ended the daemon, and
    each start after it, resuming the run — SIGINT reaches the daemon as a signal, never so)."""
    if isinstance(exc, RecursionError):  # nested ~1,000 deep: it left the run RUNNING for good
        return "nested too deep to write"
    if not isinstance(exc, TypeError | ValueError):
        return f"reading it raised {described(exc)}"
    text = text_of(exc, str)
    if "not supported between instances" in text:  # sorting mixed keys
        return "an object's keys are strings and numbers both (make them strings)"
    return text


def replayed_output(output: Any, max_step_bytes: int) -> tuple[Any, str]:
    """A replayed step's output as the scheduler records it, and "" — or None and the error the
    scheduler records instead: not JSON, past ``[scheduler] max_step_bytes``, a lone surrogate,
    unreadable by clients. (Replay took every output as it came: a step failed on its size
    was drift at every replay.) The run's own byte budget is not checked: what the run held
    when the step ran is not what it holds after."""
    try:
        text, value = frozen_output(output)
    except BaseException as exc:  # noqa: BLE001 - whatever a plugin's value raises
        return None, f"the step's output is not JSON: {not_json_reason(exc)}"
    if len(text) > max_step_bytes:
        return None, _over_step_limit(len(text), max_step_bytes)
    if unpaired_surrogate_escape(text):
        return None, LONE_SURROGATE
    unreadable = unreadable_output(text, value)
    return (None, unreadable) if unreadable else (value, "")


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
