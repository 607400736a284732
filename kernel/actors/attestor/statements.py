"""From facts to signed attestation records: the claims of each kind (``core/attest.py``), built
only from the notice's facts — frozen run events or a governance record — so the same facts make
the same envelope, live or when a restarted daemon re-attests from the stored log.

Hashes of JSON values (inputs, outputs, tool arguments) are ``core.attest_records.json_digest``:
``digest_of`` with integral floats written as integers, so a client hashing a step output it read
through GetRun (protobuf doubles) gets the digest the attestor signed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from foundry.kernel.actors.attestor.messages import Attest, AttestCustom
from foundry.kernel.core.attest import (
    PREDICATE_TYPES,
    artifact_claims,
    capability_token_claims,
    custom_claims,
    run_claims,
    sha256_hex,
    step_claims,
    tool_claims,
)
from foundry.kernel.core.attest_records import (
    AttestationRecord,
    Unsigned,
    custom_attestation_id,
    envelope_text,
    frozen_claims,
    json_digest,
    signed_record,
    unsigned,
)
from foundry.kernel.core.runs import RunEventRecord


def run_outputs(events: tuple[RunEventRecord, ...] | list[RunEventRecord]) -> dict[str, Any]:
    """Each step's recorded output (completed or reused; the last one wins), by step id."""
    return {
        e.step_id: e.payload.get("output")
        for e in events
        if e.kind in ("step_completed", "step_reused")
    }


@dataclass
class Chain:
    """A run's hash chain so far: the next step attestation's index and the previous digest."""

    index: int = 0
    previous: str | None = None


@dataclass(frozen=True, slots=True)
class Draft:
    """A notice's statement built, awaiting its signature (:meth:`Signer.draft`)."""

    statement: Unsigned
    kind: str
    claims: dict[str, Any]
    attestation_id: str
    run_id: str
    step_id: str
    issued_at: datetime
    seq: int
    previous: str | None
    artifact_hash: str | None


@dataclass(frozen=True)
class Signer:
    """Builds and signs attestation records: :meth:`draft` builds a statement, ``sign`` signs
    its PAE bytes, :meth:`finish` makes the record. The actor drafts and finishes on the trio
    thread and signs on a worker thread, where Ed25519 releases the interpreter lock."""

    sign: Callable[[bytes], bytes]
    keyid: str
    daemon_version: str

    def record(self, notice: Attest | AttestCustom, chain: Chain | None) -> AttestationRecord:
        """The signed record of a notice; a step attestation advances ``chain``."""
        draft = self.draft(notice, chain)
        return self.finish(draft, self.sign(draft.statement.pae))

    def draft(self, notice: Attest | AttestCustom, chain: Chain | None) -> Draft:
        """The statement of a notice, unsigned; a step attestation advances ``chain``. An
        artifact's draft reads (hashes) its file: build it off the trio thread."""
        if isinstance(notice, AttestCustom):
            claims = custom_claims(notice.label, notice.claims)
            return Draft(
                unsigned("custom", claims), "custom", claims,
                custom_attestation_id(notice.label, notice.record_id), notice.run_id, "",
                notice.issued_at, 0, None, None,
            )  # fmt: skip
        attested = notice.attested
        kind = attested.payload["kind"]
        assert chain is not None
        claims, artifact_hash, previous = _BUILDERS[kind](self, notice, chain)
        statement = unsigned(kind, claims)
        if kind == "step":
            chain.index, chain.previous = chain.index + 1, statement.digest
        return Draft(
            statement, kind, claims, attested.payload["attestation_id"], attested.run_id,
            attested.step_id, attested.occurred_at, attested.seq, previous, artifact_hash,
        )  # fmt: skip

    def finish(self, draft: Draft, signature: bytes) -> AttestationRecord:
        """The record of a draft and its signature."""
        statement = draft.statement
        return signed_record(
            draft.attestation_id, draft.run_id, draft.step_id, draft.kind, statement.subject,
            PREDICATE_TYPES[draft.kind], frozen_claims(draft.claims),
            draft.artifact_hash or statement.subject["digest"]["sha256"],
            envelope_text(statement.payload, self.keyid, signature), draft.previous,
            draft.issued_at, draft.seq, statement.subject_json, statement.claims_json,
        )  # fmt: skip


Built = tuple[dict[str, Any], str | None, str | None]  # claims, artifact hash, previous


def _step(signer: Signer, notice: Attest, chain: Chain) -> Built:
    leased, completed = notice.facts
    lp, cp = leased.payload, completed.payload
    usage = cp.get("usage") or {}
    claims = step_claims(
        run_id=completed.run_id, step_id=completed.step_id,
        block=notice.attested.payload.get("block") or "step", attempt=cp["attempt"],
        tokens_in=int(usage.get("tokens_in", 0)), tokens_out=int(usage.get("tokens_out", 0)),
        cost=float(usage.get("cost", 0.0)), input_hash=json_digest(lp["inputs"]),
        seed=lp.get("seed"), model=lp.get("model") or None, previous=chain.previous,
        index=chain.index, output_hash=json_digest(cp.get("output")),
    )  # fmt: skip
    return claims, claims["output_hash"], chain.previous


def _tool(signer: Signer, notice: Attest, chain: Chain) -> Built:
    leased, grant, completed = notice.facts
    inputs = leased.payload.get("inputs")
    args = inputs.get("args", {}) if isinstance(inputs, Mapping) else {}
    claims = tool_claims(
        run_id=completed.run_id, step_id=completed.step_id, tool=grant.payload["tool"] or "?",
        args_hash=json_digest(args), output_hash=json_digest(completed.payload.get("output")),
    )  # fmt: skip
    return claims, claims["output_hash"], None


def _artifact(signer: Signer, notice: Attest, chain: Chain) -> Built:
    path = Path(notice.attested.payload["uri"])
    content = hashlib.sha256(path.read_bytes()).hexdigest()
    completed = notice.facts[0]
    claims = artifact_claims(
        uri=path.as_uri(), sha256=content, run_id=completed.run_id, step_id=completed.step_id
    )
    return claims, content, None


def _capability(signer: Signer, notice: Attest, chain: Chain) -> Built:
    _, grant = notice.facts
    p = grant.payload
    claims = capability_token_claims(
        token_id=p["token_id"], tool=p["tool"] or "?", run_id=grant.run_id,
        step_id=grant.step_id, attempt=p["attempt"], issued_at=p["issued_at"],
        expires_at=p["expires_at"],
    )  # fmt: skip
    return claims, None, None


def _run(signer: Signer, notice: Attest, chain: Chain) -> Built:
    events = notice.facts
    p = notice.attested.payload
    usage = [e.payload.get("usage") or {} for e in events if e.kind == "step_completed"]
    submitted = events[0].payload if events and events[0].kind == "run_submitted" else {}
    claims = run_claims(
        run_id=notice.attested.run_id,
        status=p["outcome"].removeprefix("run_").upper(),
        spec_hash=p["spec_hash"],
        seed=submitted.get("seed"),
        step_count=int(submitted.get("steps", 0)),
        tokens_in=sum(int(u.get("tokens_in", 0)) for u in usage),
        tokens_out=sum(int(u.get("tokens_out", 0)) for u in usage),
        cost=sum(float(u.get("cost", 0.0)) for u in usage),
        daemon_version=signer.daemon_version,
        previous=chain.previous,
        chain_length=chain.index,
        parent_run_id=submitted.get("parent_run_id") or None,
        branch_step=submitted.get("branch_step") or None,
    )
    return claims, json_digest(run_outputs(events)), chain.previous


_BUILDERS: dict[str, Callable[[Signer, Attest, Chain], Built]] = {
    "step": _step,
    "tool": _tool,
    "artifact": _artifact,
    "capability_token": _capability,
    "run": _run,
}


__all__ = ["Chain", "Draft", "Signer", "json_digest", "run_outputs", "sha256_hex"]
