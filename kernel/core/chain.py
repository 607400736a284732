"""A chain in flight, as the engine tracks it: its events, block executions, and per-block slots
for Status. Owned by the engine; nothing else touches it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from foundry.kernel.core.ids import rfc3339
from foundry.kernel.core.records import Event, ExecutionRecord, FinishedChain, storable, trace_rows
from foundry.kernel.core.trace_format import TraceRows


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
    # Records not yet sent to the store, the events among them for Watch, and the last send.
    unsent: list[Any] = field(default_factory=list)
    unpublished: list[Event] = field(default_factory=list)
    last_commit: Any = None  # the engine's pending answer of the chain's last commit
    # The depth-first walk still to do (the top is next), and the trace once the chain ended.
    agenda: list[Visit] = field(default_factory=list)
    trace: TraceRows | None = None

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
            task_blocks=tuple(s.view() for s in self.slots) if self.state != "pending" else (),
        )

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
        return FinishedChain(
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
        )


def _stamp(instant: datetime | None) -> str:
    return rfc3339(instant) if instant else ""
