"""A FleetForge run as an event-sourced state machine. Pure: no I/O.

Every state change of a run is a :class:`RunEventRecord` appended to its log (the ``run_events``
table); :meth:`RunState.apply` folds one into the state. The scheduler applies events as it makes
them, and recovery after a crash replays the stored log through the same method — there is one
code path for both.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from foundry.kernel.core.dag import Dag, StepSpec
from foundry.kernel.core.ids import compact_json

TERMINAL = frozenset({"SUCCEEDED", "FAILED", "CANCELED"})
TERMINAL_KINDS = frozenset({"run_succeeded", "run_failed", "run_canceled"})


@dataclass(frozen=True, slots=True)
class RunEventRecord:
    run_id: str
    seq: int
    step_id: str
    kind: str
    payload: Mapping[str, Any]
    occurred_at: datetime

    tap_topic = "runs"

    @property
    def tap_key(self) -> str:
        return self.run_id


@dataclass(frozen=True, slots=True)
class RunSubmission:
    """What was submitted: immutable, one row of the ``runs`` table."""

    run_id: str
    dag_json: str
    inputs: Mapping[str, Any]
    seed: int
    labels: Mapping[str, str]
    breakpoints: tuple[str, ...]
    idempotency_key: str
    created_at: datetime
    parent_run_id: str = ""
    branch_step: str = ""
    note: str = ""
    # W3C trace context: a run is a trace, with a span of its own that each step attempt's span
    # (``span_id`` in its step events' payloads) is a child of.
    trace_id: str = ""
    span_id: str = ""


def spec_difference(
    first: RunSubmission,
    dag_json: str,
    inputs: Mapping[str, Any],
    seed: int,
    labels: Mapping[str, str],
    breakpoints: Iterable[str],
) -> str:
    """The first field of a spec sent again under ``first``'s idempotency key that differs from
    ``first``'s, or "" when it is the same spec: the same DAG text, inputs (as JSON: ``1`` is not
    ``true``), seed, labels, and set of breakpoints."""
    if dag_json != first.dag_json:
        return "dag_json"
    if compact_json(inputs) != compact_json(first.inputs):
        return "inputs"
    if seed != first.seed:
        return "seed"
    if dict(labels) != dict(first.labels):
        return "labels"
    if set(breakpoints) != set(first.breakpoints):
        return "breakpoints"
    return ""


@dataclass(slots=True)
class StepState:
    spec: StepSpec
    status: str = "pending"  # pending | running | retrying | succeeded | failed | reused | canceled
    attempt: int = 0
    leased_at: datetime | None = None
    completed_at: datetime | None = None
    inputs: Mapping[str, Any] | None = None  # as resolved at the last lease
    seed: int = 0
    model: str = ""
    env: Mapping[str, str] = field(default_factory=dict)
    output: Any = None
    error: Any = None
    usage: Mapping[str, float] = field(default_factory=dict)
    failures: int = 0  # attempts that failed (a crash mid-attempt is not the step's failure)
    crashes: int = 0  # its last attempts in a row that a crash of the daemon interrupted
    span_id: str = ""  # W3C: the latest attempt's span
    # How many of its dependencies, in order, are known to have succeeded (success is final):
    # ``ready`` resumes from here, where it walked every dependency of every dependent on each
    # completion — cubic in a DAG whose steps each depend on all earlier ones (900 steps: 19 s).
    deps_met: int = 0

    @property
    def finished(self) -> bool:
        return self.status in ("succeeded", "failed", "reused", "canceled")

    @property
    def succeeded(self) -> bool:
        return self.status in ("succeeded", "reused")


@dataclass(slots=True, weakref_slot=True)  # (weakly held while shared: ``shared_reads``)
class RunState:
    submission: RunSubmission
    dag: Dag
    status: str = "PENDING"
    updated_at: datetime | None = None
    error: str = ""
    steps: dict[str, StepState] = field(default_factory=dict)
    events: list[RunEventRecord] = field(default_factory=list)
    breakpoints: set[str] = field(default_factory=set)
    released: set[str] = field(default_factory=set)  # resumed past their breakpoint
    paused_step: str = ""
    failed: list[str] = field(default_factory=list)  # steps that failed, in order
    canceling: bool = False  # CancelRun asked: nothing new starts, the run ends CANCELED
    ended: bool = False  # its last events are in the store's mailbox (the scheduler's ``_retire``)
    # Each step's seed (``dag.step_seed``), by step id: made at the run's first lease.
    seeds: dict[str, int] = field(default_factory=dict)
    # JSON bytes of each finished step's output (noted as it completes, else measured when a
    # lease asks: ``planner.output_bytes``), and of them all; each step's references, as its
    # inputs (patched or not) say (``planner.reference_bound``).
    output_sizes: dict[str, int] = field(default_factory=dict)
    # None: not counted yet (a run rebuilt from its log, a branch's reused steps), counted from
    # its steps' outputs when a completion asks (``planner.output_total``)
    output_total: int | None = 0
    # JSON bytes of its leases' inputs (``planner.input_total``); None: not counted yet
    input_total: int | None = 0
    inputs_size: int | None = None  # the run's inputs', measured when a reference needs it
    step_references: dict[str, list[tuple[str, ...]]] = field(default_factory=dict)

    @classmethod
    def new(cls, submission: RunSubmission, dag: Dag) -> RunState:
        state = cls(submission, dag, updated_at=submission.created_at)
        state.steps = {s.id: StepState(s) for s in dag.steps}
        state.breakpoints = set(submission.breakpoints)
        return state

    @property
    def run_id(self) -> str:
        return self.submission.run_id

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def make_event(
        self, kind: str, at: datetime, step_id: str = "", **payload: Any
    ) -> RunEventRecord:
        """Make the next event of this run and apply it."""
        event = RunEventRecord(self.run_id, len(self.events) + 1, step_id, kind, payload, at)
        self.apply(event)
        return event

    def apply(self, event: RunEventRecord) -> None:
        self.events.append(event)
        self.updated_at = event.occurred_at
        handler = _APPLY.get(event.kind)
        if handler is not None:
            handler(self, event)

    def outputs(self) -> Mapping[str, Any]:
        """Outputs of the steps that succeeded (a view: nothing is copied)."""
        return _Outputs(self.steps)

    def ready(self, busy: set[str], among: Iterable[str] | None = None) -> list[StepState]:
        """Pending steps whose dependencies all succeeded, in DAG order; ``among`` narrows the
        candidates (the dependents of a step that just finished)."""
        candidates = self.steps.values() if among is None else [self.steps[i] for i in among]
        found = [
            step
            for step in candidates
            if step.status == "pending" and step.spec.id not in busy and self._deps_met(step)
        ]
        return sorted(found, key=lambda s: s.spec.idx) if among is not None else found

    def _deps_met(self, step: StepState) -> bool:
        deps, met = step.spec.depends_on, step.deps_met
        while met < len(deps) and self.steps[deps[met]].succeeded:
            met += 1
        step.deps_met = met
        return met == len(deps)

    def interrupted(self) -> list[StepState]:
        """Steps leased but never finished: a killed daemon was running them."""
        return [s for s in self.steps.values() if s.status in ("running", "retrying")]

    def failed_steps(self) -> list[StepState]:
        return [self.steps[i] for i in dict.fromkeys(self.failed)]

    def stops_at(self, step: StepState) -> bool:
        """Does a breakpoint hold this step back?"""
        return step.spec.id in self.breakpoints and step.spec.id not in self.released

    def sorted_breakpoints(self) -> list[str]:
        order = {s.id: s.idx for s in self.dag.steps}
        return sorted(self.breakpoints, key=lambda b: order.get(b, 0))


class _Outputs(Mapping[str, Any]):
    __slots__ = ("_steps",)

    def __init__(self, steps: Mapping[str, StepState]) -> None:
        self._steps = steps

    def __getitem__(self, step_id: str) -> Any:
        step = self._steps[step_id]
        if not step.succeeded:
            raise KeyError(step_id)
        return step.output

    def __iter__(self) -> Iterator[str]:
        return (i for i, s in self._steps.items() if s.succeeded)

    def __len__(self) -> int:
        return sum(1 for s in self._steps.values() if s.succeeded)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge recursively, null removes a key."""
    if not isinstance(patch, Mapping):
        return patch
    merged = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


def _started(run: RunState, event: RunEventRecord) -> None:
    run.status = "RUNNING"


def _leased(run: RunState, event: RunEventRecord) -> None:
    step, p = run.steps[event.step_id], event.payload
    step.status, step.attempt, step.leased_at = "running", p["attempt"], event.occurred_at
    step.inputs, step.seed, step.model, step.env = p["inputs"], p["seed"], p["model"], p["env"]
    step.completed_at, step.error = None, None
    step.span_id = p.get("span_id", "")


def _retrying(run: RunState, event: RunEventRecord) -> None:
    step = run.steps[event.step_id]
    step.status, step.error = "retrying", event.payload["error"]
    step.failures += 1
    step.crashes = 0


def _interrupted(run: RunState, event: RunEventRecord) -> None:
    """A stopped daemon left the attempt leased: the step is to be leased again (or failed, after
    too many crashes in a row: ``planner.crash_looped``)."""
    step = run.steps[event.step_id]
    step.status = "pending"
    step.crashes = step.crashes + 1 if event.payload.get("crashed") else 0


def _completed(run: RunState, event: RunEventRecord) -> None:
    step, p = run.steps[event.step_id], event.payload
    step.status, step.completed_at = "succeeded", event.occurred_at
    step.output, step.usage, step.error = p["output"], p["usage"], None
    step.crashes = 0


def _failed(run: RunState, event: RunEventRecord) -> None:
    step = run.steps[event.step_id]
    step.status, step.completed_at, step.error = "failed", event.occurred_at, event.payload["error"]
    # (a step whose inputs could not be resolved fails its first attempt before any lease)
    step.attempt, step.crashes = event.payload.get("attempt", step.attempt), 0
    run.failed.append(step.spec.id)


def _succeeded(run: RunState, event: RunEventRecord) -> None:
    run.status = "SUCCEEDED"


def _run_failed(run: RunState, event: RunEventRecord) -> None:
    run.status, run.error = "FAILED", str(event.payload.get("error", ""))


def _cancel_requested(run: RunState, event: RunEventRecord) -> None:
    run.canceling = True
    if run.status == "PAUSED_AT_STEP":  # it waits for ResumeRun no more: it is ending
        run.status, run.paused_step = "RUNNING", ""


def _step_canceled(run: RunState, event: RunEventRecord) -> None:
    step = run.steps[event.step_id]
    step.status, step.completed_at = "canceled", event.occurred_at
    step.error = {"message": "cancelled", "attempt": step.attempt, "timed_out": False}


def _run_canceled(run: RunState, event: RunEventRecord) -> None:
    run.status, run.paused_step = "CANCELED", ""


def _breakpoints(run: RunState, event: RunEventRecord) -> None:
    run.breakpoints = set(event.payload["breakpoints"])


def _paused(run: RunState, event: RunEventRecord) -> None:
    run.status, run.paused_step = "PAUSED_AT_STEP", event.step_id


def _resumed(run: RunState, event: RunEventRecord) -> None:
    run.status, run.paused_step = "RUNNING", ""
    run.released.add(event.step_id)


def _patched(run: RunState, event: RunEventRecord) -> None:
    step, p = run.steps[event.step_id], event.payload
    step.spec = patched_spec(step.spec, p.get("inputs_patch"), p.get("env"), p.get("model"))
    run.step_references.pop(event.step_id, None)  # its inputs say otherwise now


def patched_spec(
    spec: StepSpec,
    inputs_patch: Mapping[str, Any] | None,
    env: Mapping[str, Any] | None,
    model: str | None,
) -> StepSpec:
    """A step as a PatchStep leaves it: its inputs merge-patched, its env added to, its model
    replaced (when one is given)."""
    return replace(
        spec,
        inputs=merge_patch(spec.inputs, dict(inputs_patch or {})),
        env={**spec.env, **(env or {})},
        model=model if model is not None else spec.model,
    )


def _reused(run: RunState, event: RunEventRecord) -> None:
    step, p = run.steps[event.step_id], event.payload
    step.status, step.attempt, step.output = "reused", p["attempt"], p["output"]
    step.usage, step.inputs, step.seed, step.model = p["usage"], p["inputs"], p["seed"], p["model"]
    step.completed_at = event.occurred_at


_APPLY = {
    "run_started": _started,
    "step_leased": _leased,
    "step_retrying": _retrying,
    "step_interrupted": _interrupted,
    "step_completed": _completed,
    "step_failed": _failed,
    "run_succeeded": _succeeded,
    "run_failed": _run_failed,
    "cancel_requested": _cancel_requested,
    "step_canceled": _step_canceled,
    "run_canceled": _run_canceled,
    "breakpoints_updated": _breakpoints,
    "run_paused": _paused,
    "run_resumed": _resumed,
    "step_patched": _patched,
    "step_reused": _reused,
}
