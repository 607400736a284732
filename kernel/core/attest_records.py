"""Attestations as recorded facts: the ``attestations`` row (:class:`AttestationRecord`) and the
ids. Standard library only. (The statements, envelopes and their checks are ``core/attest.py``.)

Ids are derived, never drawn: an attestation of a run is named after the run event that
announces it (``run_id`` and that event's ``seq``: :func:`announced`), one of a gate decision or
an eval result after that record's id. So a daemon that re-attests after a crash (announcing
event durable, attestation not yet) makes the same id — and, its statement being built only from
the run's log, the same envelope.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from types import MappingProxyType
from typing import Any

from foundry.kernel.core.attest import (
    PAYLOAD_TYPE,
    PREDICATE_TYPES,
    REQUIRED_CLAIMS,
    STATEMENT_TYPE,
    AttestationError,
    canonical_json,
    is_sha256_hex,
)

_EXACT = 2**53

KINDS = ("run", "step", "tool", "artifact", "capability_token", "custom")
GATE_DECISION = "gate_decision"
EVAL_RESULT = "eval_result"


_SCALARS = frozenset({str, int, float, bool, type(None)})


def _frozen(value: Any) -> Any:
    # Scalars (most values) are kept without a call or an abstract-class check: this runs for
    # every attestation signed and every one read back.
    if isinstance(value, Mapping):
        return MappingProxyType(
            {k: v if type(v) in _SCALARS else _frozen(v) for k, v in value.items()}
        )
    if isinstance(value, list | tuple):
        return tuple(v if type(v) in _SCALARS else _frozen(v) for v in value)
    return value


def json_numbers(value: Any) -> Any:
    """``value`` with integral floats (within ±2**53) as integers and integers past ±2**53 as
    the doubles they round to, recursively.

    JSON does not tell ``1.0`` from ``1``, and protobuf's ``Value`` carries every number as a
    double: hashing this form, a client that read an output through GetRun gets the digest the
    attestor signed (an integer past 2**53 was hashed exactly, and an untouched output said it
    was changed)."""
    kind = type(value)
    if kind is int:
        return value if abs(value) <= _EXACT else _as_double(value)
    if kind is str or kind is bool or value is None:
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() and abs(value) <= _EXACT else value
    if isinstance(value, Mapping):
        return {k: json_numbers(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_numbers(v) for v in value]
    return value


def _as_double(value: int) -> float | int:
    """The double ``value`` rounds to, written as a double read back is (2**53 + 1 rounds to
    2**53, an integer again: hashed as a float, it did not match what GetRun gave back)."""
    try:
        double = float(value)
    except OverflowError:  # past any double: no Value carries it either
        return value
    return int(double) if abs(double) <= _EXACT else double


def _not_json(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not a JSON value")


# The standard library's C encoder called directly: ``json.dumps`` with these options (sorted
# keys, no whitespace, no NaN) without its per-call Python layers, which cost as much as the
# encoding itself for the small values attestations hold.
_c_make_encoder: Any = getattr(json.encoder, "c_make_encoder", None)
if _c_make_encoder is not None:  # CPython: always
    _c_encode = _c_make_encoder(
        None, _not_json, json.encoder.encode_basestring, None, ":", ",", True, False, False
    )

    def _dumps(value: Any) -> str:
        return "".join(_c_encode(value, 0))

    _string: Callable[[str], str] = json.encoder.encode_basestring

else:  # pragma: no cover - a Python without the _json accelerator
    _encoder = json.JSONEncoder(
        ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False
    )

    def _dumps(value: Any) -> str:
        return _encoder.encode(value)

    _string = _dumps


def canonical(value: Any) -> bytes:
    """``core.attest.canonical_json(value)``, byte for byte, at C speed when it can be.

    The standard library's encoder writes the canonical form — sorted keys, no whitespace, the
    same escapes, ``repr`` floats, exact integers — whenever no key can sort differently by
    UTF-16 code units than by code points (no character beyond U+FFFF) and no string holds a
    lone surrogate. Anything else — such text, a type it cannot encode — goes the exact way."""
    try:
        text = _string(value) if type(value) is str else _dumps(value)
        data = text.encode()  # a lone surrogate fails here
    except (TypeError, ValueError, RecursionError):
        return canonical_json(value)
    if len(data) == len(text) or max(text) < "\U00010000":
        return data
    return canonical_json(value)


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


# The canonical statement and envelope are spliced from these constant pieces around the parts
# that vary (each encoded once): their keys are already in canonical (sorted) order —
# "_type" < "predicate" < "predicateType" < "subject", "digest" < "name"; "payload" <
# "payloadType" < "signatures", "keyid" < "sig". A test holds the result to byte equality with
# ``core.attest``'s general path.
_PREDICATE_TYPE_JSON = {kind: canonical(uri) for kind, uri in PREDICATE_TYPES.items()}
_STATEMENT_HEAD = b'{"_type":' + canonical(STATEMENT_TYPE) + b',"predicate":'
_PAE_HEAD = b"DSSEv1 %d %b " % (len(PAYLOAD_TYPE.encode()), PAYLOAD_TYPE.encode())
_PAYLOAD_TYPE_TEXT = canonical(PAYLOAD_TYPE).decode()


@functools.lru_cache(maxsize=16)
def _json_string(text: str) -> str:
    return canonical(text).decode()


@dataclass(frozen=True, slots=True)
class Unsigned:
    """A statement ready to sign: its subject, canonical payload, the DSSE PAE bytes to sign and
    its attestation digest (sha256 of the payload); and the JSON texts of the subject and the
    claims (canonical) for the ``attestations`` row."""

    subject: Mapping[str, Any]  # frozen
    payload: bytes
    pae: bytes
    digest: str
    subject_json: str = ""
    claims_json: str = ""


def unsigned(kind: str, claims: Mapping[str, Any]) -> Unsigned:
    """The statement of a kind's claims (from the builders of ``core.attest``): the bytes
    ``canonical_json(statement_for(kind, claims))`` makes, with the claims encoded once
    (:func:`canonical`, or for a step's :func:`step_claims_json`) and the rest spliced around
    them."""
    claims_json = step_claims_json(claims) if kind == "step" else None
    if claims_json is None:
        claims_json = canonical(claims)
    if kind == "artifact":
        subject_digest = claims["sha256"]
        if not is_sha256_hex(subject_digest):  # spliced in as it is: never trust it unchecked
            raise AttestationError(f"sha256: must be sha256 hex, got {subject_digest!r}")
    else:
        subject_digest = hashlib.sha256(claims_json).hexdigest()
    name = subject_name(kind, claims)
    subject_json = b'{"digest":{"sha256":"%b"},"name":%b}' % (
        subject_digest.encode(),
        canonical(name),
    )
    payload = b"".join((
        _STATEMENT_HEAD, claims_json, b',"predicateType":', _PREDICATE_TYPE_JSON[kind],
        b',"subject":[', subject_json, b"]}",
    ))  # fmt: skip
    return Unsigned(
        frozen_subject(name, subject_digest),
        payload,
        b"%b%d %b" % (_PAE_HEAD, len(payload), payload),
        hashlib.sha256(payload).hexdigest(),
        subject_json.decode(),
        claims_json.decode(),
    )


_STEP_KEYS = frozenset(REQUIRED_CLAIMS["step"])
_USAGE_KEYS = frozenset(("cost", "tokens_in", "tokens_out"))


def step_claims_json(claims: Mapping[str, Any]) -> bytes | None:
    """``canonical(claims)`` of a step's claims as ``core.attest.step_claims`` makes them, from a
    template (a third of the time); None when they are shaped otherwise (then ``canonical``)."""
    usage = claims.get("usage")
    if (
        claims.keys() != _STEP_KEYS
        or not isinstance(usage, Mapping)
        or usage.keys() != _USAGE_KEYS
        or type(claims["attempt"]) is not int
        or type(claims["index"]) is not int
        or type(usage["tokens_in"]) is not int
        or type(usage["tokens_out"]) is not int
        or type(usage["cost"]) is not float
        or not math.isfinite(usage["cost"])
    ):
        return None
    try:
        text = (
            f'{{"attempt":{claims["attempt"]},"block":{_text(claims["block"])},'
            f'"index":{claims["index"]},"input_hash":{_text(claims["input_hash"])},'
            f'"model":{_text(claims["model"])},"output_hash":{_text(claims["output_hash"])},'
            f'"previous":{_text(claims["previous"])},"run_id":{_text(claims["run_id"])},'
            f'"seed":{_int(claims["seed"])},"step_id":{_text(claims["step_id"])},'
            f'"usage":{{"cost":{float.__repr__(usage["cost"])},'
            f'"tokens_in":{usage["tokens_in"]},"tokens_out":{usage["tokens_out"]}}}}}'
        )
        return text.encode()  # a lone surrogate fails here
    except (TypeError, ValueError):
        return None


def _text(value: Any) -> str:
    if value is None:
        return "null"
    if type(value) is not str:
        raise TypeError(value)
    return _string(value)


def _int(value: Any) -> str:
    if value is None:
        return "null"
    if type(value) is not int:
        raise TypeError(value)
    return int.__repr__(value)


_PREDICATE_TYPE_KEY = b',"predicateType":'
_SUBJECT_KEY = b',"subject":['


def statement_texts(payload: bytes) -> tuple[str, str]:
    """The canonical JSON texts of the claims and of the subject entry in a canonical statement
    (:func:`unsigned`'s payload), cut out of it. The statement-level keys are the last of their
    kind in it: a key inside the predicate comes before them, and a string's quotes are
    escaped."""
    cut = payload.rindex(_PREDICATE_TYPE_KEY)
    subject = payload.rindex(_SUBJECT_KEY, cut)
    return (
        payload[len(_STATEMENT_HEAD) : cut].decode(),
        payload[subject + len(_SUBJECT_KEY) : -2].decode(),
    )


def envelope_text(payload: bytes, keyid: str, signature: bytes) -> str:
    """The DSSE envelope's canonical JSON (``envelope_json`` of ``envelope(…)``) of a payload
    and its signature."""
    return "".join((
        '{"payload":"', base64.standard_b64encode(payload).decode("ascii"),
        '","payloadType":', _PAYLOAD_TYPE_TEXT, ',"signatures":[{"keyid":',
        _json_string(keyid), ',"sig":"', base64.standard_b64encode(signature).decode(),
        '"}]}',
    ))  # fmt: skip


def signed_envelope(
    kind: str,
    claims: Mapping[str, Any],
    keyid: str,
    sign: Callable[[bytes], bytes],
) -> tuple[dict[str, Any], str, str]:
    """``(statement, envelope JSON, attestation digest)`` of a kind's claims: the bytes
    ``envelope_json(envelope(statement_for(kind, claims), …))`` makes (:func:`unsigned` signed,
    :func:`envelope_text`). A test holds the two to byte equality."""
    statement = unsigned(kind, claims)
    text = envelope_text(statement.payload, keyid, sign(statement.pae))
    subject = statement.subject
    built = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": subject["name"], "digest": dict(subject["digest"])}],
        "predicateType": PREDICATE_TYPES[kind],
        "predicate": dict(claims),
    }
    return built, text, statement.digest


def run_attestation_id(run_id: str, seq: int) -> str:
    """The id of the attestation announced by the run event ``seq`` of a run: ``att_``, the run
    id, ``_``, the seq. No hash: the scheduler names each step's attestation as it completes,
    and a sha256 of the pair cost the trio thread ~1.5 µs an event (2–3% of a no-op step).
    Distinct pairs give distinct ids (the seq is the digits after the last ``_``), and none is
    a custom attestation's (``att_`` + 24 hex, no ``_``)."""
    return f"att_{run_id}_{seq}"


def announced(kind: str, payload: Mapping[str, Any] | None) -> tuple[str, str] | None:
    """(attestation id, subject kind) of the attestation a run event (its ``kind`` and
    ``payload``) announces, or None. A step's is announced by its ``step_completed`` itself
    (``attestation_id`` in its payload: no event of its own on a step's path); a tool call's, an
    artifact's, a capability token's and the run's by an ``attested`` event (``kind`` in its
    payload). One event announces at most one attestation, so its seq names it."""
    if payload is None:
        return None
    if kind == "attested":
        return payload["attestation_id"], payload["kind"]
    if kind == "step_completed" and "attestation_id" in payload:
        return payload["attestation_id"], "step"
    return None


def announced_ids(events: Iterable[Any]) -> tuple[str, ...]:
    """The ids of the attestations run events (``kind``, ``payload``) announce, in their order:
    a run's hash chain's."""
    return tuple(
        found[0]
        for e in events
        if e.kind in _ANNOUNCING and (found := announced(e.kind, e.payload)) is not None
    )


_ANNOUNCING = frozenset(("attested", "step_completed"))


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
    # The canonical JSON texts of ``subject`` and ``claims`` when the attestor made the record
    # (its row then spends no encoding on them); '' when read back from the store.
    subject_json: str = field(default="", compare=False, repr=False)
    claims_json: str = field(default="", compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "subject", _frozen(self.subject))
        object.__setattr__(self, "claims", _frozen(self.claims))


@dataclass(frozen=True, slots=True)
class AttestationRows:
    """A batch of attestations as the attestor hands them to the store, one record for the
    batch: their ``attestation_statements`` rows, in the table's column order
    (``store/tables.py``), made without decoding what was signed."""

    rows: tuple[tuple[Any, ...], ...]


@dataclass(frozen=True, slots=True)
class DerivedAttestationRows:
    """As :class:`AttestationRows`, for attestations of a run's facts (its steps, tool calls,
    artifacts, capability tokens, the run): what they sign is journaled, and a start re-attests
    any a stopped daemon announced but DuckDB lacks (the same envelopes: signing is
    deterministic) — so they are not journaled themselves, only written to DuckDB with, or
    after, the facts they attest. A gate decision's or an eval result's is an
    :class:`AttestationRows`, journaled: no run event announces it (a start attests a stored
    record that lacks one: ``attestor.actor._recover_governance``)."""

    rows: tuple[tuple[Any, ...], ...]


SPOOL = "spool/attestations"  # under the daemon's home: files of SpooledAttestationRows


@dataclass(frozen=True, slots=True)
class SpooledAttestationRows:
    """As :class:`DerivedAttestationRows`, written to a file by the signing process instead of
    coming back through the daemon: ``path`` (in the home's :data:`SPOOL`) holds ``rows`` rows
    of ``attestation_statements``, as CSV (``drafting.spool``: ``created_at`` in ISO 8601 with
    its offset). DuckDB reads the file itself, in the transaction that stores the rows; the
    store deletes it after. Not journaled, like the rows it carries: a start makes them again
    from the facts (and clears the spool)."""

    path: str
    rows: int


def stored_record(row: Sequence[Any]) -> AttestationRecord:
    """The record of an ``attestation_statements`` row (:class:`AttestationRows`' order): the
    statement decoded, the envelope made of it, its key id and signature (base64)."""
    (attestation_id, run_id, step_id, kind, statement, keyid, signature, artifact_hash,
     previous, created_at, seq) = row  # fmt: skip
    payload = statement.encode()
    parsed = json.loads(statement)
    claims_json, subject_json = statement_texts(payload)
    envelope = envelope_text(payload, keyid, base64.b64decode(signature, validate=True))
    return AttestationRecord(
        attestation_id, run_id, step_id, kind, parsed["subject"][0], parsed["predicateType"],
        parsed["predicate"], artifact_hash, envelope, previous, created_at, seq, subject_json,
        claims_json,
    )  # fmt: skip


_RECORD_FIELDS = tuple(f.name for f in fields(AttestationRecord))
_set = object.__setattr__


def frozen_claims(claims: dict[str, Any]) -> Mapping[str, Any]:
    """A builder's claims (``core.attest``: a fresh dict nobody else holds), frozen as an
    :class:`AttestationRecord` holds them — a step's at a tenth of the general walk's cost."""
    usage: Any = claims.get("usage")
    if type(usage) is dict and all(type(v) in _SCALARS for v in usage.values()):
        claims["usage"] = usage = MappingProxyType(usage)
    else:
        usage = _NOTHING
    if all(type(v) in _SCALARS or v is usage for v in claims.values()):
        return MappingProxyType(claims)
    return _frozen(claims)  # type: ignore[no-any-return]


_NOTHING = object()


def signed_record(*values: Any) -> AttestationRecord:
    """An :class:`AttestationRecord` of its field values in order, ``subject`` and ``claims``
    frozen already (:func:`frozen_claims`, :func:`frozen_subject`): not walked again."""
    record = object.__new__(AttestationRecord)
    for name, value in zip(_RECORD_FIELDS, values, strict=True):
        _set(record, name, value)
    return record


def frozen_subject(name: str, digest: str) -> Mapping[str, Any]:
    """A statement's subject entry, ``{"name", "digest": {"sha256"}}``, frozen."""
    return MappingProxyType({"name": name, "digest": MappingProxyType({"sha256": digest})})
