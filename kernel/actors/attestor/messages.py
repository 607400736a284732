"""Messages the attestor accepts: notices of facts to attest (from the scheduler and the gate
actor, sent after the facts were appended to the store) and the edge's ``GetAttestations``.

A notice carries the facts themselves — frozen run events or a governance record — never a
callable. The attestor builds each statement from them alone, so the same facts always make the
same envelope (also when a restarted daemon re-attests from the stored run log).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from foundry.kernel.actors.mailbox import Reply
from foundry.kernel.core.attest_records import AttestationRecord
from foundry.kernel.core.runs import RunEventRecord


@dataclass(frozen=True, slots=True)
class Attest:
    """Attest what a run event announces (``core.attest_records.announced``), held in the field
    ``attested``: a step's ``step_completed``, or an ``attested`` event for the other kinds.

    ``facts`` are the run events it covers, in order: for a step ``(step_leased,
    step_completed)``, a tool ``(step_leased, capability_granted, step_completed)``, an artifact
    ``(step_completed,)``, a capability token ``(step_leased, capability_granted)``, a run every
    event before ``attested`` (an ``attested`` event's payload's ``of`` lists the seqs, except
    for a run).
    """

    attested: RunEventRecord
    facts: tuple[RunEventRecord, ...]


@dataclass(frozen=True, slots=True)
class AttestCustom:
    """Attest a durable governance record: ``label`` ``gate_decision`` or ``eval_result``."""

    label: str
    record_id: str
    run_id: str  # the judged run of an eval result ('' for a gate decision)
    claims: Mapping[str, Any]
    issued_at: datetime


@dataclass(frozen=True, slots=True)
class GetAttestations:
    """The attestations with these ids in request order (NotFound naming the unknown ones).
    Answered after every notice sent before it has been stored."""

    attestation_ids: tuple[str, ...]
    reply: Reply[list[AttestationRecord]]


AttestorMessage = Attest | AttestCustom | GetAttestations
