"""What the engine records: events and block executions, immutable once made, and their trace form
(the file layout of the public Foundry daemon, plus a few extra keys)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .ids import rfc3339
from .throttle import Throttle


@dataclass(frozen=True, slots=True)
class Event:
    id: str
    event_type: str
    project: str
    occurred_at: datetime
    recorded_at: datetime
    throttle: Throttle
    trace_id: str  # the root event's id: the chain, and the workflow when blocks sink it
    payload: Mapping[str, Any]
    payload_json: str
    depth: int = 0
    parent_id: str = ""
    emitted_by: str = ""
    throttled: bool = False  # recorded but withheld from downstream blocks
    stamp: str = ""  # occurred_at in RFC 3339, when already computed

    tap_topic = "events"

    @property
    def tap_key(self) -> str:
        return self.project

    def to_trace(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "event_type": self.event_type,
            "project": self.project,
            "occurred_at": self.stamp or rfc3339(self.occurred_at),
            "recorded_at": rfc3339(self.recorded_at)
            if self.recorded_at != self.occurred_at or not self.stamp
            else self.stamp,
            "throttle": self.throttle.value,
            "trace_id": self.trace_id,
            "payload": self.payload,
            "parent_id": self.parent_id or None,
            "emitted_by": self.emitted_by or None,
            "depth": self.depth,
            "throttled": self.throttled,
        }


@dataclass(frozen=True, slots=True)
class ExecutionRecord:
    """One block's execution on one event, across all its attempts."""

    trace_id: str
    block_name: str
    trigger: Event
    state: str  # completed, skipped or failed
    success: bool
    summary: str
    emitted: tuple[Event, ...]
    started_at: datetime
    completed_at: datetime
    duration_ms: int
    raw_output: str
    exit_code: int
    audit_artifacts: tuple[str, ...]
    attempts: int
    throttled: bool

    def to_trace(self) -> dict[str, Any]:
        return {
            "block_name": self.block_name,
            "trigger_event_id": self.trigger.id,
            "success": self.success,
            "summary": self.summary,
            "emitted_event_ids": [e.id for e in self.emitted],
            "duration_ms": self.duration_ms,
            "raw_output": self.raw_output,
            "exit_code": self.exit_code,
            "trigger_payload": self.trigger.payload,
            "emitted_payloads": [e.payload for e in self.emitted],
            "audit_artifacts": list(self.audit_artifacts),
            "state": self.state,
            "throttled": self.throttled,
            "attempts": self.attempts,
            "started_at": rfc3339(self.started_at),
            "completed_at": rfc3339(self.completed_at),
        }


@dataclass(frozen=True, slots=True)
class FinishedChain:
    """A chain that ended: its workflow row and the trace document written to disk."""

    workflow_id: str
    workflow_type: str
    project: str
    throttle: Throttle
    state: str  # completed or failed
    error: str
    started_at: datetime
    completed_at: datetime
    event_count: int
    block_count: int
    trace: Mapping[str, Any]


def trace_document(
    events: list[Event], executions: list[ExecutionRecord], total_ms: int, **extra: Any
) -> dict[str, Any]:
    return {
        "events": [e.to_trace() for e in events],
        "block_executions": [x.to_trace() for x in executions],
        "total_duration_ms": total_ms,
        **extra,
    }
