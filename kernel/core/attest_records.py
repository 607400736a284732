"""Attestations as recorded facts: the ``attestations`` row (:class:`AttestationRecord`) and the
ids. Standard library only. (The statements, envelopes and their checks are ``core/attest.py``.)

Ids are derived, never drawn: an attestation of a run is named after the ``attested`` run event
that announces it (``run_id`` and that event's ``seq``), one of a gate decision or an eval result
after that record's id. So a daemon that re-attests after a crash (``attested`` event durable,
attestation not yet) makes the same id — and, its statement being built only from the run's log,
the same envelope.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any

_EXACT = 2**53

KINDS = ("run", "step", "tool", "artifact", "capability_token", "custom")
GATE_DECISION = "gate_decision"
EVAL_RESULT = "eval_result"


def _frozen(value: Any) -> Any:
    if isinstance(value, Mapping):
        return MappingProxyType({k: _frozen(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_frozen(v) for v in value)
    return value


def json_numbers(value: Any) -> Any:
    """``value`` with integral floats (within ±2**53) as integers, recursively.

    JSON does not tell ``1.0`` from ``1``, and protobuf's ``Value`` carries every number as a
    double: hashing this form, a client that read an output through GetRun gets the digest the
    attestor signed."""
    if isinstance(value, float):
        return int(value) if value.is_integer() and abs(value) <= _EXACT else value
    if isinstance(value, Mapping):
        return {k: json_numbers(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_numbers(v) for v in value]
    return value


_dumps = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False
).encode


def canonical(value: Any) -> bytes:
    """``core.attest.canonical_json(value)``, byte for byte, at C speed when it can be.

    The standard library's encoder writes the same bytes as the canonical form whenever its
    output is ASCII (then no key can sort differently by UTF-16 code units, and no string holds
    a lone surrogate): sorted keys, no whitespace, the same escapes, ``repr`` floats, exact
    integers. Anything else — non-ASCII text, a type it cannot encode — goes the exact way."""
    from foundry.kernel.core.attest import canonical_json  # a sibling pure module

    try:
        text = _dumps(value)
    except (TypeError, ValueError, RecursionError):
        return canonical_json(value)
    return text.encode() if text.isascii() else canonical_json(value)


def json_digest(value: Any) -> str:
    """sha256 hex of the canonical JSON (``core.attest.canonical_json``) of
    :func:`json_numbers` of ``value``: how inputs, outputs, arguments and specs are hashed."""
    return hashlib.sha256(canonical(json_numbers(value))).hexdigest()


def subject_name(kind: str, claims: Mapping[str, Any]) -> str:
    """The subject name ``core.attest.subject_of`` gives a kind's claims."""
    if kind == "run":
        return f"run/{claims['run_id']}"
    if kind == "step":
        return f"run/{claims['run_id']}/step/{claims['step_id']}/attempt/{claims['attempt']}"
    if kind == "tool":
        return f"run/{claims['run_id']}/step/{claims['step_id']}/tool/{claims['tool']}"
    if kind == "artifact":
        return str(claims["uri"])
    if kind == "capability_token":
        return f"capability-token/{claims['token_id']}"
    return f"custom/{claims['label']}"


def signed_envelope(
    kind: str,
    claims: Mapping[str, Any],
    keyid: str,
    sign: Callable[[bytes], bytes],
) -> tuple[dict[str, Any], str, str]:
    """``(statement, envelope JSON, attestation digest)`` of a kind's claims (from the builders
    of ``core.attest``): the bytes ``envelope_json(envelope(statement_for(kind, claims), …))``
    makes, with each canonical encoding done once and at C speed (:func:`canonical`). A test
    holds the two to byte equality."""
    from foundry.kernel.core.attest import PAYLOAD_TYPE, PREDICATE_TYPES, STATEMENT_TYPE, pae

    if kind == "artifact":
        subject_digest = str(claims["sha256"])
    else:
        subject_digest = hashlib.sha256(canonical(claims)).hexdigest()
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": subject_name(kind, claims), "digest": {"sha256": subject_digest}}],
        "predicateType": PREDICATE_TYPES[kind],
        "predicate": dict(claims),
    }
    payload = canonical(statement)
    signature = sign(pae(PAYLOAD_TYPE, payload))
    envelope = {
        "payloadType": PAYLOAD_TYPE,
        "payload": base64.standard_b64encode(payload).decode("ascii"),
        "signatures": [{"keyid": keyid, "sig": base64.standard_b64encode(signature).decode()}],
    }
    return statement, canonical(envelope).decode(), hashlib.sha256(payload).hexdigest()


def run_attestation_id(run_id: str, seq: int) -> str:
    """The id of the attestation announced by the run event ``seq`` (``attested``) of a run."""
    return "att_" + hashlib.sha256(f"{run_id}\n{seq}".encode()).hexdigest()[:24]


def custom_attestation_id(label: str, record_id: str) -> str:
    """The id of the attestation of a gate decision / eval result (``label``) by its record id."""
    return "att_" + hashlib.sha256(f"{label}\n{record_id}".encode()).hexdigest()[:24]


@dataclass(frozen=True, slots=True)
class AttestationRecord:
    """One signed attestation (``attestations`` table, append-only)."""

    attestation_id: str
    run_id: str  # '' for a gate decision
    step_id: str  # '' for run-level subjects
    kind: str  # one of KINDS
    subject: Mapping[str, Any]  # the statement's subject entry: {name, digest}
    predicate_type: str
    claims: Mapping[str, Any]  # the statement's predicate
    artifact_hash: str | None  # "sha256:<hex>" of what is attested (output, file, outputs …)
    envelope: str  # the DSSE envelope, JSON
    previous: str | None  # the run's previous attestation digest (the hash chain)
    created_at: datetime  # = the statement's issued time
    seq: int = 0  # the ``attested`` run event's seq (0: not a run's)

    def __post_init__(self) -> None:
        object.__setattr__(self, "subject", _frozen(self.subject))
        object.__setattr__(self, "claims", _frozen(self.claims))
