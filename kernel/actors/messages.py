"""What the edge holds of the kernel: the mailboxes of the actors a request may ask."""

from __future__ import annotations

from dataclasses import dataclass

import trio
from foundry.kernel.actors.attestor.messages import AttestorMessage
from foundry.kernel.actors.engine.messages import EngineMessage
from foundry.kernel.actors.gate.messages import GateMessage
from foundry.kernel.actors.replay.messages import ReplayMessage
from foundry.kernel.actors.scheduler.messages import SchedulerMessage
from foundry.kernel.actors.store.messages import StoreMessage
from foundry.kernel.actors.tap.messages import TapMessage
from foundry.kernel.actors.telemetry.messages import TelemetryMessage


@dataclass(frozen=True)
class Mailboxes:
    """The actors an RPC handler may ask."""

    engine: trio.MemorySendChannel[EngineMessage]
    tap: trio.MemorySendChannel[TapMessage]
    scheduler: trio.MemorySendChannel[SchedulerMessage]
    replay: trio.MemorySendChannel[ReplayMessage]
    gate: trio.MemorySendChannel[GateMessage]
    attestor: trio.MemorySendChannel[AttestorMessage]
    store: trio.MemorySendChannel[StoreMessage]  # RunUserQuery, ExportParquet
    # The telemetry actor's, when [otel] endpoint is set (spans; senders never wait on it).
    telemetry: trio.MemorySendChannel[TelemetryMessage] | None = None
