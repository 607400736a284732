"""Messages the engine accepts, and the views it answers with."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from foundry.kernel.actors.mailbox import Reply
from foundry.kernel.actors.store.messages import Pruned
from foundry.kernel.core.chain import BlockView as BlockView  # re-exported: views are replies
from foundry.kernel.core.chain import WorkflowView as WorkflowView
from foundry.kernel.core.status_query import StatusQuery
from foundry.kernel.core.throttle import Throttle
from foundry.kernel.core.tracecontext import SpanContext


@dataclass(frozen=True, slots=True)
class Emitted:
    event_id: str
    workflow_id: str  # empty when no block sinks the event type


@dataclass(frozen=True, slots=True)
class Emit:
    """Start a chain. Answered once the root event is durable."""

    event_type: str
    project: str
    throttle: Throttle
    payload: Mapping[str, Any]
    reply: Reply[Emitted]
    # The root event's span (W3C): the caller's trace context, checked; None = a new trace.
    span: SpanContext | None = None
    # The payload as stored and hashed (``ids.payload_json_of``), when the edge made it already
    # (a large one, on a worker thread); None: the engine makes it.
    payload_json: str | None = None


@dataclass(frozen=True, slots=True)
class GetStatus:
    """Just ``workflow_id`` (NotFound if unknown); without one, the workflows ``query`` picks,
    newest first: in flight, recently finished, and finished ones from the database."""

    workflow_id: str
    reply: Reply[list[WorkflowView]]
    query: StatusQuery = StatusQuery()


@dataclass(frozen=True, slots=True)
class GetTrace:
    """The trace document of a completed chain, by root event id; None when there is none."""

    event_id: str
    reply: Reply[Mapping[str, Any] | None]


EngineMessage = Emit | GetStatus | GetTrace | Pruned
