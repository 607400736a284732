"""A chain in flight, as the engine tracks it: its events, block executions, and per-block slots
for Status. Owned by the engine; nothing else touches it.

The walk's decisions are here too, pure, for the engine's inline and awaited turns alike: which
blocks an event reaches and in which order (:func:`next_turn`), what the throttle makes a block
do and whether the engine may run it inline (:func:`plan_turn`), which emitted events are walked
next (:func:`descend`), and the chain's depth and event budget (:func:`check_limits`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import Enum
from typing import Any, Protocol

from foundry.kernel.core.failures import described
from foundry.kernel.core.ids import rfc3339
from foundry.kernel.core.records import (
    Event,
    ExecutionRecord,
    FinishedChain,
    new_finished,
    storable,
    trace_rows,
)
from foundry.kernel.core.throttle import Action, Decision, Throttle, decide
from foundry.kernel.core.trace_format import TraceRows, text_bytes
from foundry.kernel.errors import ChainLimitExceeded

SMALL_PAYLOAD = 1024  # bytes of JSON a retired workflow's root may keep
MUTATOR = "mutator"  # a mutator block's kind (BlockKind is the blocks package's; core is below it)


@dataclass(frozen=True, slots=True)
class BlockView:
    name: str
    state: str  # pending | running | completed | skipped | failed
    started_at: str
    completed_at: str
    throttled: bool


@dataclass(frozen=True, slots=True)
class WorkflowView:
    workflow_id: str
    workflow_type: str
    project: str
    state: str  # pending | running | completed | failed
    started_at: str
    completed_at: str
    error: str
    task_blocks: tuple[BlockView, ...]
    trace_id: str = ""  # W3C: the root event's trace


@dataclass(slots=True)
class BlockSlot:
    name: str
    state: str = "pending"
    started_at: datetime | None = None
    completed_at: datetime | None = None
    throttled: bool = False

    def view(self) -> BlockView:
        return BlockView(
            self.name,
            self.state,
            _stamp(self.started_at),
            _stamp(self.completed_at),
            self.throttled,
        )


@dataclass(slots=True)
class Visit:
    """An event's turn in the depth-first walk: the blocks it reaches (with "" or the error their
    payload filter raised), their Status slots, and how many have had their turn. ``reached`` is
    None until the walk gets to the event, so slots appear in Status in processing order."""

    event: Event
    reached: list[tuple[Any, str]] | None = None
    slots: list[BlockSlot] = field(default_factory=list)
    taken: int = 0


@dataclass(slots=True)
class Workflow:
    root: Event
    is_workflow: bool  # some block sinks the root type
    state: str = "pending"
    error: str = ""
    completed_at: datetime | None = None
    events: list[Event] = field(default_factory=list)
    executions: list[ExecutionRecord] = field(default_factory=list)
    slots: list[BlockSlot] = field(default_factory=list)
    # Records not yet sent to the store, the events among them for Watch, and the engine's
    # pending answers of the sends whose commit nothing has waited on yet (in order).
    unsent: list[Any] = field(default_factory=list)
    unpublished: list[Event] = field(default_factory=list)
    commits: list[Any] = field(default_factory=list)
    # The depth-first walk still to do (the top is next), and the trace once the chain ended.
    agenda: list[Visit] = field(default_factory=list)
    trace: TraceRows | None = None
    # Once retired the workflow no longer changes: its Status view is made once, when first asked.
    retired: bool = False
    retired_view: WorkflowView | None = None

    @property
    def id(self) -> str:
        return self.root.id

    def add_slot(self, name: str) -> BlockSlot:
        slot = BlockSlot(name)
        self.slots.append(slot)
        return slot

    def fail(self, reason: str) -> None:
        if not self.error:
            self.error = storable(reason)

    def final_state(self) -> str:
        return "failed" if self.error else "completed"

    def view(self) -> WorkflowView:
        if self.retired_view is not None:
            return self.retired_view
        view = self._view()
        if self.retired:
            self.retired_view = view
        return view

    def _view(self) -> WorkflowView:
        return WorkflowView(
            workflow_id=self.id,
            workflow_type=self.root.event_type,
            project=self.root.project,
            state=self.state,
            started_at=rfc3339(self.root.occurred_at),
            completed_at=_stamp(self.completed_at) if self.state in ("completed", "failed") else "",
            error=self.error,
            # Until its root is durable a workflow has not started, as far as anyone may know:
            # blocks that ran ahead of that commit are not shown.
            # In the order they started (the ones still pending after them, in walk order): the
            # order the database gives after a restart too — walk order put a block the first
            # event reached before one its emission reached, which had run first.
            task_blocks=tuple(s.view() for s in _by_start(self.slots))
            if self.state != "pending"
            else (),
            trace_id=self.root.trace_id,
        )

    def retire(self, trace_bytes: int) -> None:
        """The chain is stored: keep only what Status and Trace read of it while it is recent —
        the root's identity, the slots, and the trace rows unless their payloads and texts are
        over ``trace_bytes`` (Trace then reads the file, else the database). One large payload
        is not held until ``recent_workflows`` more chains have ended."""
        self.events, self.executions, self.unsent, self.unpublished = [], [], [], []
        self.agenda, self.commits, self.retired = [], [], True
        if len(self.root.payload_json) > SMALL_PAYLOAD:  # small ones cost less to keep than drop
            self.root = replace(self.root, payload={}, payload_json="")
        if self.trace is not None and text_bytes(self.trace) > trace_bytes:
            self.trace = None

    def finished(self, completed_at: datetime) -> FinishedChain:
        """The chain's end: its workflow row and trace file (kept for Trace while it is recent).

        An event no block sinks is no workflow and gets no trace file, only its rows: Trace finds
        it in the database. (A file per event nobody consumes is disk churn for nothing.)"""
        self.completed_at = completed_at
        state = self.final_state()
        total_ms = round((completed_at - self.root.occurred_at).total_seconds() * 1000)
        if self.is_workflow:
            self.trace = trace_rows(
                self.events,
                self.executions,
                total_ms,
                workflow_id=self.id,
                state=state,
                error=self.error,
            )
        return new_finished(
            workflow_id=self.id,
            workflow_type=self.root.event_type,
            project=self.root.project,
            throttle=self.root.throttle,
            state=state,
            error=self.error,
            started_at=self.root.occurred_at,
            completed_at=completed_at,
            event_count=len(self.events),
            # 0 marks an emit no block sinks (not a workflow; Status cannot find it). A workflow
            # whose blocks all passed its payload by is still one (cf. recover_unfinished).
            block_count=max(len(self.slots), 1) if self.is_workflow else 0,
            trace=self.trace,
            trace_id=self.root.trace_id,
        )


# --- the depth-first walk ---------------------------------------------------------------------


class Walker(Protocol):
    """What the walk reads of a block."""

    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def synchronous(self) -> bool: ...
    @property
    def retries(self) -> int: ...
    def accepts(self, payload: Mapping[str, Any]) -> bool: ...


@dataclass(frozen=True, slots=True)
class TurnPlan:
    """What a block's turn does: the throttle's decision; ``acts``: a mutator acting for real,
    so what caused it must be durable first; ``inline``: no commit to wait for and nothing to
    await, so the engine may run it in its own loop."""

    decision: Decision
    acts: bool
    inline: bool


# A block's turn in the walk: the event's visit, the block, "" or why it was refused, its Status
# slot, and its plan. (A plain tuple: a NamedTuple costs the engine 0.7 µs more per turn.)
Turn = tuple[Visit, Any, str, BlockSlot, TurnPlan]


class Walk(Enum):
    """Where an inline walk stopped, when not at a turn that must be awaited."""

    END = "end"  # no turn left: the chain ends
    YIELD = "yield"  # inline turns used up: other work goes first, then the walk goes on


def runs_now(synchronous: bool, retries: int, action: Action) -> bool:
    """Can a block run without awaiting? Synchronous, and no retry (with its backoff sleep)
    possible."""
    return synchronous and (retries == 0 or action is not Action.RUN)


@functools.lru_cache(maxsize=256)
def plan_turn(
    throttle: Throttle, mutator: bool, synchronous: bool, retries: int, refused: bool
) -> TurnPlan:
    """A turn's plan. A refused block (its payload filter raised) is only recorded: inline."""
    decision = decide(throttle, mutator)
    acts = decision.action is Action.RUN and mutator
    inline = refused or (not acts and runs_now(synchronous, retries, decision.action))
    return TurnPlan(decision, acts, inline)


def reached(blocks: Iterable[Walker], payload: Mapping[str, Any]) -> list[tuple[Any, str]]:
    """The blocks an event reaches, in registration order, each with "" or, when its payload
    filter raised, that error: a plugin's bug fails its execution, never the engine."""
    found: list[tuple[Any, str]] = []
    # a copy of the top level (for the event's filters together): a filter that changed the
    # event's own payload changed what later blocks received (the stored event unchanged)
    view = dict(payload)
    for block in blocks:
        try:
            if block.accepts(view):
                found.append((block, ""))
        except BaseException as exc:  # SystemExit too: a plugin's, not the engine's
            found.append((block, f"accepts() raised {described(exc)}"))
    return found


def next_turn(workflow: Workflow, sinks: Mapping[str, Sequence[Walker]]) -> Turn | None:
    """The next block to run: the first of the top visit's blocks that has not had its turn
    (``sinks``: the blocks sinking each event type, in registration order). None: the walk is
    over."""
    agenda = workflow.agenda
    while agenda:
        visit = agenda[-1]
        if visit.reached is None:
            visit.reached = reached(sinks.get(visit.event.event_type, ()), visit.event.payload)
            visit.slots = [workflow.add_slot(b.name) for b, _ in visit.reached]
        if visit.taken < len(visit.reached):
            block, refusal = visit.reached[visit.taken]
            plan = plan_turn(
                visit.event.throttle, block.kind == MUTATOR, block.synchronous, block.retries,
                bool(refusal),
            )  # fmt: skip
            return visit, block, refusal, visit.slots[visit.taken], plan
        agenda.pop()
    return None


def descend(workflow: Workflow, children: Sequence[Event]) -> None:
    """Walk a block's emitted events next, depth-first in emission order; withheld (throttled)
    ones are recorded, never delivered."""
    workflow.agenda.extend(Visit(c) for c in reversed(children) if not c.throttled)


def check_limits(
    workflow: Workflow,
    event: Event,
    block_name: str,
    children: Sequence[Event],
    *,
    max_depth: int,
    max_events: int,
) -> None:
    """Raise ChainLimitExceeded when a block's emissions take the chain past its depth limit or
    its event budget."""
    if children and event.depth + 1 > max_depth:
        raise ChainLimitExceeded(
            f"chain depth limit {max_depth} exceeded: block {block_name!r} "
            f"emitted {children[0].event_type} at depth {event.depth + 1} (a loop?)"
        )
    if len(workflow.events) > max_events:
        raise ChainLimitExceeded(
            f"chain event limit {max_events} exceeded after block {block_name!r} on "
            f"{event.event_type}"
        )


def _by_start(slots: list[BlockSlot]) -> list[BlockSlot]:
    started = [s for s in slots if s.started_at is not None]
    if len(started) < 2:  # the common chain: nothing to sort
        return slots
    started.sort(key=_started_at)  # stable: ties keep their walk order
    return started + [s for s in slots if s.started_at is None]


def _started_at(slot: BlockSlot) -> datetime:
    assert slot.started_at is not None
    return slot.started_at


def _stamp(instant: datetime | None) -> str:
    return rfc3339(instant) if instant else ""
