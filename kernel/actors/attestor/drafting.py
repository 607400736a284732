"""Drafting and signing a batch of attestations from plain facts: :func:`draft_batch`.

The signing process runs this (``signing_process.py``), off the daemon's interpreter lock; the
daemon runs the same function on a worker thread when it has no signing process, so both make
the same bytes. It imports only ``foundry.kernel.core.attest`` and ``attest_records`` (standard
library), which the signing process loads without the rest of ``foundry.kernel``.

A job is a tuple of plain values (``statements.job_of`` makes them from the notices):

- ``("step", run_id, step_id, block, attempt, usage, inputs, seed, model, output,
  attestation_id, created_at, seq)`` — the facts of a step attestation (its input and output
  hashes, claims, and its place in the run's hash chain are made here), and its row's own (the
  last three: only :func:`spool` reads them);
- ``("run", run_id, claims, outputs)`` — a run attestation: ``claims`` are ``run_claims``'s
  arguments but the chain's (``previous``, ``chain_length``), which come from the batch's chain
  heads; its artifact hash is ``json_digest`` of ``outputs`` (each step's output), signed as its
  ``outputs_hash`` claim;
- ``("claims", kind, run_id, claims, artifact_hash)`` — any other kind, its claims made by the
  daemon (``artifact_hash`` None: the subject's digest).

``heads`` maps a run to its chain head before the batch, ``(index, previous digest)``; the
batch's step attestations advance it, a run attestation closes it. Each job's result is
``(statement, keyid, signature, artifact_hash, previous)`` — the canonical statement (the DSSE
payload, as text), the signing key's id, its Ed25519 signature over the PAE (base64), the
attested hash, and the chain's previous digest (a step's or run's; None otherwise): the middle
columns of the ``attestation_statements`` row, in order (the daemon adds the ids before and the
time and seq after, without a Python call per row) — or, for a job whose facts cannot be
attested, the reason (a str).
"""

from __future__ import annotations

import io
import os
import pickle
from base64 import b64encode
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from foundry.kernel.core.attest import run_claims, step_claims
from foundry.kernel.core.attest_records import Unsigned, json_digest, unsigned

Job = tuple[Any, ...]
Heads = dict[str, tuple[int, str | None]]
Signed = tuple[str, str, str, str, str | None]  # statement, keyid, signature, hash, previous
Result = Signed | str  # or why the job's facts cannot be attested
Spool = tuple[str, list[tuple[Any, ...]]]  # a spool file's path, the row metas ``spool`` takes


def draft_batch(
    heads: Mapping[str, tuple[int, str | None]],
    jobs: Sequence[Job],
    sign: Callable[[bytes], bytes],
    keyid: str,
) -> tuple[list[Result], Heads]:
    """Each job's result, in order, and the chain heads after the batch (of the runs in
    ``heads`` or the jobs that the batch did not close); ``keyid`` is ``sign``'s key's."""
    chains: Heads = dict(heads)
    results: list[Result] = []
    for job in jobs:
        try:
            results.append(_draft(job, chains, sign, keyid))
        except Exception as exc:  # one job's bad facts must not stop the others
            results.append(f"{type(exc).__name__}: {exc}")
    return results, chains


def spool(
    path: str, metas: Sequence[Sequence[Any]], jobs: Sequence[Job], results: list[Result]
) -> list[Result | None]:
    """Write the ``attestation_statements`` rows of ``results`` to the new file ``path`` (CSV,
    owner-only; none if no job could be attested). A step job carries its row's meta (its last
    three values: attestation id, ``created_at`` in ISO 8601, seq); ``metas`` holds the
    others', in order (attestation id, run id, step id, kind, ``created_at``, seq). Returns what
    the daemon gets back instead of the rows: None for a row written, but the last row's result
    (whose signature the daemon checks), and the reason of each job that could not be
    attested."""
    lines: list[str] = []
    answer: list[Result | None] = []
    others = iter(metas)
    last = -1
    for n, (job, result) in enumerate(zip(jobs, results, strict=True)):
        meta = (job[10], job[1], job[2], "step", *job[11:13]) if job[0] == "step" else next(others)
        if isinstance(result, str):
            answer.append(result)
            continue
        attestation_id, run_id, step_id, kind, created_at, seq = meta
        statement, keyid, signature, digest, previous = result
        lines.append(_csv_line(attestation_id, run_id, step_id, kind, statement, keyid,
                               signature, digest, previous, created_at, seq))  # fmt: skip
        answer.append(None)
        last = n
    if lines:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as file:
            file.write("".join(lines))
        answer[last] = results[last]
    return answer


_Q, _QQ = '"', '""'


def _csv_line(
    attestation_id: str, run_id: str, step_id: str, kind: str, statement: str, keyid: str,
    signature: str, artifact_hash: str, previous: str | None, created_at: str, seq: int,
) -> str:  # fmt: skip
    """An ``attestation_statements`` row as a CSV line (``store/tables.py`` reads it: every text
    quoted, its quotes doubled; NULL unquoted and empty). One formatted string: ``csv.writer``
    and ``json.dumps`` of the row took 3-4 times as long."""
    before = "" if previous is None else f'"{previous.replace(_Q, _QQ)}"'
    return (
        f'"{attestation_id.replace(_Q, _QQ)}","{run_id.replace(_Q, _QQ)}",'
        f'"{step_id.replace(_Q, _QQ)}","{kind.replace(_Q, _QQ)}","{statement.replace(_Q, _QQ)}",'
        f'"{keyid.replace(_Q, _QQ)}","{signature.replace(_Q, _QQ)}",'
        f'"{artifact_hash.replace(_Q, _QQ)}",{before},"{created_at.replace(_Q, _QQ)}",{int(seq)}\n'
    )


def dumps(value: Any) -> bytes:
    """Pickle (protocol 5) of a batch or its results: JSON values, bytes and tuples only (a
    mapping of another type as a dict); anything else raises ``pickle.PicklingError``."""
    buffer = io.BytesIO()
    pickler = _Pickler(buffer, protocol=5)
    pickler.fast = True  # no memo: the values are trees (JSON), each object written once anyway
    pickler.dump(value)
    return buffer.getvalue()


def loads(data: bytes) -> Any:
    """:func:`dumps`'s value back; a pickle naming any class but ``dict`` is refused
    (``pickle.UnpicklingError``): the two processes never make each other build objects."""
    return _Unpickler(io.BytesIO(data)).load()


class _Pickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        # Called only for what is not a str, int, float, bool, None, bytes, dict, list, tuple.
        if type(obj) is MappingProxyType:  # a recorded fact's payload: before the slow ABC check
            return dict, (dict(obj),)
        if obj is dict:  # the callable of a mapping's reduction below
            return NotImplemented
        if isinstance(obj, Mapping):
            return dict, (dict(obj),)
        raise pickle.PicklingError(f"{type(obj).__name__} is not a JSON value")


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("builtins", "dict"):
            return dict
        raise pickle.UnpicklingError(f"a batch may not hold {module}.{name}")


def _draft(job: Job, chains: Heads, sign: Callable[[bytes], bytes], keyid: str) -> Result:
    kind = job[0]
    if kind == "step":
        _, run_id, step_id, block, attempt, usage, inputs, seed, model, output = job[:10]
        index, previous = chains.get(run_id, (0, None))
        claims = step_claims(
            run_id=run_id, step_id=step_id, block=block, attempt=attempt,
            tokens_in=int(usage.get("tokens_in", 0)), tokens_out=int(usage.get("tokens_out", 0)),
            cost=float(usage.get("cost", 0.0)), input_hash=json_digest(inputs), seed=seed,
            model=model, previous=previous, index=index, output_hash=json_digest(output),
        )  # fmt: skip
        statement = unsigned("step", claims)
        chains[run_id] = (index + 1, statement.digest)
        return (*_signed(statement, sign, keyid), claims["output_hash"], previous)
    if kind == "run":
        _, run_id, given, outputs = job
        index, previous = chains.pop(run_id, (0, None))
        outputs_hash = json_digest(outputs)
        claims = run_claims(
            **given, previous=previous, chain_length=index, outputs_hash=outputs_hash
        )
        statement = unsigned("run", claims)
        return (*_signed(statement, sign, keyid), outputs_hash, previous)
    _, kind, _, claims, artifact_hash = job
    statement = unsigned(kind, claims)
    digest = artifact_hash or statement.subject["digest"]["sha256"]
    return (*_signed(statement, sign, keyid), digest, None)


def _signed(
    statement: Unsigned, sign: Callable[[bytes], bytes], keyid: str
) -> tuple[str, str, str]:
    return statement.payload.decode(), keyid, b64encode(sign(statement.pae)).decode()
