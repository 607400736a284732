"""Conversions of GetAttestations: the attestor's records as ``Attestation`` messages.

``signature`` holds the whole DSSE envelope (JSON): the statement it signs is the source of
truth; ``claims`` is the statement's predicate as a Struct (numbers as doubles), ``artifact_hash``
the sha256 hex of what is attested, ``issued_at`` when it was attested.
"""

from __future__ import annotations

from foundry.kernel.core.attest_records import AttestationRecord
from foundry.kernel.core.governance import thawed
from foundry.proto import runtime_api as api
from foundry.proto.generated.google.protobuf import Struct


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
