"""Throttle semantics as pure decisions: what the engine does with a block under a throttle."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Throttle(StrEnum):
    """Belongs to an event and is inherited by every event it causes."""

    FULL = "full"
    AUDIT_ONLY = "audit_only"
    DRY_RUN = "dry_run"


class Action(StrEnum):
    RUN = "run"  # call Block.run
    AUDIT = "audit"  # call Block.audit (side-effect free)
    SIMULATE = "simulate"  # call Block.simulate; the block itself is skipped


@dataclass(frozen=True)
class Decision:
    action: Action
    deliver: bool  # are the block's emissions delivered downstream?
    state: str  # the state the execution ends in when it succeeds
    summary: str = ""  # the execution's summary when the block gives none (a throttle's word)
    quiet_summary: str = ""  # the same, when the block emitted nothing (else ``summary``)

    def summary_of(self, emitted: bool) -> str:
        return self.summary if emitted or not self.quiet_summary else self.quiet_summary


_RUN = Decision(Action.RUN, deliver=True, state="completed")
_AUDIT = Decision(
    Action.AUDIT, deliver=False, state="completed",
    summary="audited under AUDIT_ONLY: a mutator, run without side effects; what it would emit "
    "is recorded, not delivered",
    quiet_summary="audited under AUDIT_ONLY: a mutator, not run; it told nothing it would emit",
)  # fmt: skip
_SIMULATE = Decision(
    Action.SIMULATE, deliver=True, state="skipped",
    summary="skipped under DRY_RUN: a mutator; only the events it simulates are delivered",
)  # fmt: skip


def decide(throttle: Throttle, is_mutator: bool) -> Decision:
    """FULL runs everything. AUDIT_ONLY: observers run; a mutator only audits and what it would
    emit is recorded but not delivered. DRY_RUN: mutators are skipped; only the simulated events
    they offer are delivered."""
    if not is_mutator or throttle is Throttle.FULL:
        return _RUN
    if throttle is Throttle.AUDIT_ONLY:
        return _AUDIT
    return _SIMULATE
