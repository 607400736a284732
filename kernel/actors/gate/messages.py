"""The gate actor's messages: eval packs (sync, list, record a result) and change gates (check,
acknowledge, list). Answers are the recorded facts of ``core/governance.py``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from foundry.kernel.actors.mailbox import Reply
from foundry.kernel.core.gate_policy import GateRequest
from foundry.kernel.core.governance import (
    EvalResultRecord,
    GateFollowupRecord,
    ScenarioInput,
    StoredGate,
    StoredScenario,
)


@dataclass(frozen=True, slots=True)
class SyncEvalPack:
    """Create or update a pack's scenarios, all or nothing; answered with their ids in order."""

    pack: str
    scenarios: tuple[ScenarioInput, ...]
    reply: Reply[list[str]]


@dataclass(frozen=True, slots=True)
class ListEvalScenarios:
    """Every scenario (by pack, slug) with its newest results first."""

    reply: Reply[list[StoredScenario]]


@dataclass(frozen=True, slots=True)
class RecordEvalResult:
    """Judge a finished run against a scenario's ``expected`` and record the result."""

    pack: str
    slug: str
    run_id: str
    commit: str
    reply: Reply[EvalResultRecord]


@dataclass(frozen=True, slots=True)
class CheckChangeGate:
    """Decide, record and answer a change-gate decision."""

    request: GateRequest
    reply: Reply[StoredGate]


@dataclass(frozen=True, slots=True)
class RecordGateFollowup:
    """Acknowledge a gate decision (appended; a decision may have many)."""

    gate_id: str
    actor: str
    outcome: str  # one of core.governance.FOLLOWUP_OUTCOMES
    note: str | None
    details: Mapping[str, Any]
    reply: Reply[GateFollowupRecord]


@dataclass(frozen=True, slots=True)
class ListChangeGates:
    """Decisions newest first with their acknowledgements; ``change_id`` '' lists every change,
    ``limit`` 0 means the default (core.governance.DEFAULT_GATE_LIMIT)."""

    change_id: str
    limit: int
    reply: Reply[list[StoredGate]]


GateMessage = (
    SyncEvalPack
    | ListEvalScenarios
    | RecordEvalResult
    | CheckChangeGate
    | RecordGateFollowup
    | ListChangeGates
)
