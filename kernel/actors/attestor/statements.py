"""From notices to jobs, and from signed drafts to rows: :func:`job_of` takes from a notice's
facts — frozen run events or a governance record — only what its statement needs (for a step or
a run the plain facts, for the rarer kinds their claims, ``core/attest.py``), which
``drafting.draft_batch`` drafts and signs; :func:`attestation_row` makes the stored row of the
result. The statement depends on nothing else, so the same facts make the same envelope, live or
when a restarted daemon re-attests from the stored log.

Hashes of JSON values (inputs, outputs, tool arguments) are ``core.attest_records.json_digest``:
``digest_of`` with integral floats written as integers, so a client hashing a step output it read
through GetRun (protobuf doubles) gets the digest the attestor signed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from operator import itemgetter
from pathlib import Path
from typing import Any, NamedTuple

from foundry.kernel.actors.attestor.drafting import Job, Signed, draft_batch
from foundry.kernel.actors.attestor.messages import Attest, AttestCustom
from foundry.kernel.blocks.files import artifact_sha256
from foundry.kernel.core.attest import (
    AttestationError,
    artifact_claims,
    capability_token_claims,
    custom_claims,
    sha256_hex,
    tool_claims,
)
from foundry.kernel.core.attest_records import (
    AttestationRecord,
    announced,
    custom_attestation_id,
    json_digest,
    stored_record,
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


class Meta(NamedTuple):
    """What the row of a job takes from its notice (the rest comes from its draft)."""

    attestation_id: str
    run_id: str
    step_id: str
    kind: str
    issued_at: datetime
    seq: int


def job_of(notice: Attest | AttestCustom, daemon_version: str) -> tuple[Job, Meta]:
    """A notice's job for :func:`drafting.draft_batch` (plain values, picklable) and its meta.
    An artifact's job reads (hashes) its file, a run's walks the whole run: make those off the
    trio thread."""
    found = step_job(notice)
    if found is not None:
        return found
    if isinstance(notice, AttestCustom):
        claims = custom_claims(notice.label, notice.claims)
        attestation_id = custom_attestation_id(notice.label, notice.record_id)
        meta = Meta(attestation_id, notice.run_id, "", "custom", notice.issued_at, 0)
        return ("claims", "custom", notice.run_id, claims, None), meta
    attested = notice.attested
    found_id = announced(attested.kind, attested.payload)
    if found_id is None:
        raise AttestationError(f"run event {attested.seq} ({attested.kind}) announces nothing")
    attestation_id, kind = found_id
    meta = Meta(attestation_id, attested.run_id, attested.step_id, kind, attested.occurred_at,
                attested.seq)  # fmt: skip
    return _JOBS[kind](notice, daemon_version), meta


_tuple_new = tuple.__new__


def step_job(notice: Attest | AttestCustom) -> tuple[Job, Meta] | None:
    """:func:`job_of` of a step's notice (most notices: its ``step_completed`` announces the
    attestation, as ``announced`` reads it), else None. The attestor makes a batch's one after
    another: each further call here cost ~0.5 µs a step, so the meta is made by
    ``tuple.__new__`` (the namedtuple's own ``__new__`` is a Python function). (Made by the
    scheduler as each step completed, the same lines cost it ~5 µs a step.)"""
    if type(notice) is not Attest:
        return None
    completed = notice.attested
    announcement = completed.payload
    attestation_id = announcement.get("attestation_id")
    if completed.kind != "step_completed" or attestation_id is None:
        return None
    leased, done = notice.facts  # ``done`` is ``completed`` (the facts are what is attested)
    job = _step_job(announcement.get("block"), completed, leased, done)
    meta = (attestation_id, done.run_id, done.step_id, "step", completed.occurred_at,
            completed.seq)  # fmt: skip
    return job, _tuple_new(Meta, meta)


# A row of ``attestation_statements`` is a meta's head, a signed draft (``drafting``: the
# statement as signed, the key id, the signature, the attested hash, the previous digest) and
# the meta's tail: these pick the head and the tail, in C.
ROW_HEAD = itemgetter(0, 1, 2, 3)  # attestation_id, run_id, step_id, kind
ROW_TAIL = itemgetter(4, 5)  # issued_at (created_at), seq


def attestation_row(meta: Meta, result: Signed) -> tuple[Any, ...]:
    """The ``attestation_statements`` row of a signed draft (``drafting.draft_batch``'s
    result), one at a time (the attestor joins a batch's in C, the same way)."""
    row: tuple[Any, ...] = ROW_HEAD(meta) + result + ROW_TAIL(meta)
    return row


@dataclass(frozen=True)
class Signer:
    """Signs one notice at a time, in the calling thread (tests, benchmarks): the
    attestor signs batches of them in its signing process, with the same code."""

    sign: Callable[[bytes], bytes]
    keyid: str
    daemon_version: str

    def record(self, notice: Attest | AttestCustom, chain: Chain | None) -> AttestationRecord:
        """The signed record of a notice; a step attestation advances ``chain``."""
        job, meta = job_of(notice, self.daemon_version)
        head = (chain.index, chain.previous) if chain is not None else (0, None)
        (result,), heads = draft_batch({meta.run_id: head}, [job], self.sign, self.keyid)
        if isinstance(result, str):
            raise AttestationError(result)
        if chain is not None and meta.kind == "step":
            chain.index, chain.previous = heads[meta.run_id]
        return stored_record(attestation_row(meta, result))


def _step(notice: Attest, daemon_version: str) -> Job:
    """A step announced by an ``attested`` event of its own (as a daemon of before the
    completion carried the announcement wrote it: its log may still hold some)."""
    leased, completed = notice.facts
    return _step_job(notice.attested.payload.get("block"), notice.attested, leased, completed)


def _step_job(
    block: str | None, announcing: RunEventRecord, leased: RunEventRecord, done: RunEventRecord
) -> Job:
    """The job (``drafting.py``) of a step attempt: its lease's and completion's facts, then
    its row's own — the announcing event's attestation id, time (ISO 8601) and seq: a spooled
    row is written from the job alone (``drafting.spool``)."""
    lp, cp = leased.payload, done.payload
    return (
        "step", done.run_id, done.step_id, block or "step", cp["attempt"], cp.get("usage") or {},
        lp["inputs"], lp.get("seed"), lp.get("model") or None, cp.get("output"),
        announcing.payload["attestation_id"], announcing.occurred_at.isoformat(), announcing.seq,
    )  # fmt: skip


def _tool(notice: Attest, daemon_version: str) -> Job:
    leased, grant, completed = notice.facts
    inputs = leased.payload.get("inputs")
    args = inputs.get("args", {}) if isinstance(inputs, Mapping) else {}
    claims = tool_claims(
        run_id=completed.run_id, step_id=completed.step_id, tool=grant.payload["tool"] or "?",
        args_hash=json_digest(args), output_hash=json_digest(completed.payload.get("output")),
    )  # fmt: skip
    return ("claims", "tool", completed.run_id, claims, claims["output_hash"])


def _artifact(notice: Attest, daemon_version: str) -> Job:
    path = Path(notice.attested.payload["uri"])
    content = artifact_sha256(path)  # the file itself, never what a link put there names
    completed = notice.facts[0]
    claims = artifact_claims(
        uri=path.as_uri(), sha256=content, run_id=completed.run_id, step_id=completed.step_id
    )
    return ("claims", "artifact", completed.run_id, claims, content)


def _capability(notice: Attest, daemon_version: str) -> Job:
    _, grant = notice.facts
    p = grant.payload
    claims = capability_token_claims(
        token_id=p["token_id"], tool=p["tool"] or "?", run_id=grant.run_id,
        step_id=grant.step_id, attempt=p["attempt"], issued_at=p["issued_at"],
        expires_at=p["expires_at"],
    )  # fmt: skip
    return ("claims", "capability_token", grant.run_id, claims, None)


def _run(notice: Attest, daemon_version: str) -> Job:
    events = notice.facts
    p = notice.attested.payload
    usage = [e.payload.get("usage") or {} for e in events if e.kind == "step_completed"]
    submitted = events[0].payload if events and events[0].kind == "run_submitted" else {}
    claims = {
        "run_id": notice.attested.run_id,
        "status": p["outcome"].removeprefix("run_").upper(),
        "spec_hash": p["spec_hash"],
        "seed": submitted.get("seed"),
        "step_count": int(submitted.get("steps", 0)),
        "tokens_in": sum(int(u.get("tokens_in", 0)) for u in usage),
        "tokens_out": sum(int(u.get("tokens_out", 0)) for u in usage),
        "cost": sum(float(u.get("cost", 0.0)) for u in usage),
        "daemon_version": daemon_version,
        "parent_run_id": submitted.get("parent_run_id") or None,
        "branch_step": submitted.get("branch_step") or None,
        # (announced since the claim was: a run ended before it has none)
        **({"breakpoints": p["breakpoints"]} if "breakpoints" in p else {}),
    }
    return ("run", notice.attested.run_id, claims, run_outputs(events))


_JOBS: dict[str, Callable[[Attest, str], Job]] = {
    "step": _step,
    "tool": _tool,
    "artifact": _artifact,
    "capability_token": _capability,
    "run": _run,
}


__all__ = [
    "Chain",
    "Meta",
    "Signer",
    "job_of",
    "json_digest",
    "step_job",
    "run_outputs",
    "sha256_hex",
]
