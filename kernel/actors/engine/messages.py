"""Messages the engine accepts, and the views it answers with."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from foundry.kernel.actors.mailbox import Reply
from foundry.kernel.core.chain import BlockView as BlockView  # re-exported: views are replies
from foundry.kernel.core.chain import WorkflowView as WorkflowView
from foundry.kernel.core.throttle import Throttle


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


@dataclass(frozen=True, slots=True)
class GetStatus:
    """In-flight and recently finished workflows, or just ``workflow_id`` (NotFound if unknown)."""

    workflow_id: str
    reply: Reply[list[WorkflowView]]


@dataclass(frozen=True, slots=True)
class GetTrace:
    """The trace document of a completed chain, by root event id; None when there is none."""

    event_id: str
    reply: Reply[Mapping[str, Any] | None]


EngineMessage = Emit | GetStatus | GetTrace
