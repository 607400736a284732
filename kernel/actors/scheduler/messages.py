"""Messages the scheduler accepts, and the snapshots it answers with."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from foundry.kernel.actors.mailbox import Reply
from foundry.kernel.actors.store.messages import Pruned
from foundry.kernel.actors.tap.messages import Sink
from foundry.kernel.core.run_control import RunListQuery, RunSummary
from foundry.kernel.core.runs import RunEventRecord


@dataclass(frozen=True, slots=True)
class SubmitRun:
    """Start a run (answered with its id once it is durable)."""

    dag_json: str
    inputs: Mapping[str, Any]
    seed: int
    labels: Mapping[str, str]
    breakpoints: tuple[str, ...]
    idempotency_key: str
    reply: Reply[str]


@dataclass(frozen=True, slots=True)
class StepView:
    step_id: str
    idx: int
    type: str
    status: str
    attempt: int
    leased_at: datetime | None
    completed_at: datetime | None
    output: Any
    error: Any
    inputs: Any
    seed: int
    model: str
    usage: Mapping[str, float]
    span_id: str = ""  # W3C: the latest attempt's span ("" before the first lease)


@dataclass(frozen=True, slots=True)
class RunView:
    run_id: str
    status: str  # PENDING | RUNNING | SUCCEEDED | FAILED | CANCELED | PAUSED_AT_STEP
    dag_json: str
    inputs: Mapping[str, Any]
    seed: int
    labels: Mapping[str, str]
    breakpoints: tuple[str, ...]
    created_at: datetime
    updated_at: datetime
    steps: tuple[StepView, ...]
    error: str = ""
    parent_run_id: str = ""
    branch_step: str = ""
    paused_step: str = ""  # the step a paused run waits before
    trace_id: str = ""  # W3C: the run's trace
    span_id: str = ""  # the run's span, parent of its step attempts' spans
    attestation_ids: tuple[str, ...] = ()  # announced so far, in chain order


@dataclass(frozen=True, slots=True)
class GetRun:
    run_id: str
    reply: Reply[RunView]


@dataclass(frozen=True, slots=True)
class TapOpened:
    """The durable history so far; live events follow on the tapper's sink (possibly repeating
    history: skip ``seq`` ≤ the last one seen)."""

    history: Sequence[RunEventRecord]  # a tuple, or a stored run's ``SharedHistory``


@dataclass(frozen=True, slots=True)
class OpenTap:
    """Subscribe ``sink`` to a run's live events, then answer with its durable history."""

    run_id: str
    sink: Sink
    reply: Reply[TapOpened]


@dataclass(frozen=True, slots=True)
class UpdateBreakpoints:
    run_id: str
    add: tuple[str, ...]
    remove: tuple[str, ...]
    clear_all: bool
    reply: Reply[list[str]]


@dataclass(frozen=True, slots=True)
class PatchStep:
    run_id: str
    step_id: str
    inputs_patch: Mapping[str, Any] | None
    env: Mapping[str, Any] | None
    model: str | None
    note: str
    reply: Reply[str]


@dataclass(frozen=True, slots=True)
class ResumeRun:
    run_id: str
    reply: Reply[tuple[str, str]]  # (status, resumed step id)


@dataclass(frozen=True, slots=True)
class BranchRun:
    run_id: str
    from_step: str
    seed_mode: str  # unspecified | same | new | custom (``run_control.branch_seed``)
    seed: int | None
    inputs_patch: Mapping[str, Any]
    labels_patch: Mapping[str, Any]
    note: str
    reply: Reply[str]


@dataclass(frozen=True, slots=True)
class CancelRun:
    """Cancel an unfinished run: running observer steps at once, mutator steps after the
    shutdown grace; answered once the run has ended CANCELED, with the steps that were running."""

    run_id: str
    reason: str
    reply: Reply[tuple[str, tuple[str, ...]]]  # (status, cancelled step ids)


@dataclass(frozen=True, slots=True)
class ListRuns:
    """A page of runs, newest first, and the next page's token ("" on the last page)."""

    query: RunListQuery
    reply: Reply[tuple[list[RunSummary], str]]


SchedulerMessage = (
    SubmitRun
    | GetRun
    | OpenTap
    | UpdateBreakpoints
    | PatchStep
    | ResumeRun
    | BranchRun
    | CancelRun
    | ListRuns
    | Pruned
)
