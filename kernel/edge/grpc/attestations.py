"""Conversions of GetAttestations: the attestor's records as ``Attestation`` messages.

``signature`` holds the whole DSSE envelope (JSON): the statement it signs is the source of
truth; ``claims`` is the statement's predicate as a Struct (numbers as doubles), ``artifact_hash``
the sha256 hex of what is attested, ``issued_at`` when it was attested.
"""

from __future__ import annotations

from collections.abc import Sequence

from foundry.kernel.core.attest_records import AttestationRecord
from foundry.kernel.core.governance import thawed
from foundry.proto import runtime_api as api
from foundry.proto.generated.google.protobuf import Struct
from grpclib import GRPCError
from grpclib.const import Status

# A GetAttestations reply's signed statements (envelopes: each holds its claims, in base64) at
# most, past one attestation: a gate decision's of 130,000 evals is a 55 MB reply, and its id
# asked 20 times in one request held the loop 90 s for 1.1 GB.
REPLY_BYTES = 64 << 20


def subject(record: AttestationRecord) -> api.AttestationSubject:
    claims = record.claims
    kind = record.kind
    if kind == "run":
        return api.AttestationSubject(run=api.AttestationRunSubject(run_id=record.run_id))
    if kind == "step":
        return api.AttestationSubject(
            step=api.AttestationStepSubject(run_id=record.run_id, step_id=record.step_id)
        )
    if kind == "tool":
        return api.AttestationSubject(tool=api.AttestationToolSubject(name=str(claims["tool"])))
    if kind == "artifact":
        return api.AttestationSubject(
            artifact=api.AttestationArtifactSubject(uri=str(claims["uri"]))
        )
    if kind == "capability_token":
        return api.AttestationSubject(
            capability_token=api.AttestationCapabilitySubject(token_id=str(claims["token_id"]))
        )
    return api.AttestationSubject(custom=api.AttestationCustomSubject(label=str(claims["label"])))


def attestation(record: AttestationRecord) -> api.Attestation:
    return api.Attestation(
        attestation_id=record.attestation_id,
        issued_at=record.created_at,
        subject=subject(record),
        artifact_hash=record.artifact_hash,
        claims=Struct.from_dict(thawed(record.claims)),
        signature=record.envelope,
    )


def check_reply_size(found: Sequence[AttestationRecord]) -> None:
    """RESOURCE_EXHAUSTED when the attestations asked for (each as often as asked) come to more
    than :data:`REPLY_BYTES` of signed statements; one alone is always answered."""
    total = sum(len(record.envelope) for record in found)
    if total > REPLY_BYTES and len(found) > 1:
        raise GRPCError(
            Status.RESOURCE_EXHAUSTED,
            f"attestation_ids: the {len(found)} attestations asked for come to {total >> 20} MB "
            f"of signed statements, over the reply's {REPLY_BYTES >> 20} MB; ask for fewer at a "
            "time",
        )


def reply(found: Sequence[AttestationRecord]) -> api.GetAttestationsResponse:
    """The attestations in request order, each made once however often it was asked for."""
    made = {record.attestation_id: attestation(record) for record in found}
    return api.GetAttestationsResponse(attestations=[made[r.attestation_id] for r in found])
