"""FleetForge attestations: DSSE envelopes over in-toto Statement v1. Pure.

This module builds and checks the *bytes*; it never touches a key. Signing and signature
verification are injected as callables, so the core stays standard-library only:

- ``sign(message: bytes) -> bytes`` — e.g. ``Ed25519PrivateKey.sign`` from ``cryptography``;
- ``verify(signature: bytes, message: bytes) -> bool`` — True only when the signature is good
  (an exception raised by it counts as a bad signature). With ``cryptography``::

      def verify(signature: bytes, message: bytes) -> bool:
          try:
              public_key.verify(signature, message)
          except InvalidSignature:
              return False
          return True

The pieces, outside in (README.md, "Attestations", says the same for users):

**Envelope** (DSSE v1, https://github.com/secure-systems-lab/dsse)::

    {"payloadType": "application/vnd.in-toto+json",
     "payload": base64(canonical_json(statement)),
     "signatures": [{"keyid": key_id(public_key), "sig": base64(sign(pae(payloadType, payload)))}]}

base64 is the standard alphabet with padding (RFC 4648 §4). The signature covers
:func:`pae` of the payload type and the *decoded* payload bytes. :func:`envelope_json` is the
envelope's text as stored in ``Attestation.signature`` (canonical JSON, so the same statement and
key give the byte-identical text: Ed25519 signatures are deterministic).

**Statement** (in-toto Statement v1)::

    {"_type": "https://in-toto.io/Statement/v1",
     "subject": [{"name": NAME, "digest": {"sha256": HEX}}],
     "predicateType": PREDICATE_TYPES[kind],
     "predicate": CLAIMS}

``Attestation.claims`` is the predicate, ``Attestation.artifact_hash`` the subject's sha256.

**Kinds.** ``run``, ``step``, ``tool``, ``artifact``, ``capability_token``, ``custom`` (gate
decisions and eval results are ``custom`` with a label). Each has a predicate type URI under
:data:`PREDICATE_BASE` — ours, versioned: ``https://foundry.dev/attestation/<kind>/v1`` with the
kind spelt with a hyphen (``capability-token``) — and a claims builder (:func:`run_claims`,
:func:`step_claims`, :func:`tool_claims`, :func:`artifact_claims`,
:func:`capability_token_claims`, :func:`custom_claims`). :func:`statement_for` puts a kind's
claims in a statement with the subject name and digest :func:`subject_of` derives from them.

**Digests.** Every digest is lowercase sha256 hex (64 characters, no ``sha256:`` prefix). The
*attestation digest* of an envelope is the sha256 of its decoded payload bytes
(:func:`attestation_digest`); since the payload is ``canonical_json(statement)`` it equals
``digest_of(statement)``.

**Hash chain.** A run's step attestations form a chain in the order they were issued: step
attestation ``i`` (``index`` = i, from 0) names in ``previous`` the attestation digest of step
attestation ``i - 1`` (``None`` for the first), and the run attestation names the last one in its
``previous`` (``None`` when the run has none) and their number in ``chain_length``.
:func:`verify_chain` checks it, so a removed, inserted, reordered or altered step attestation is
detected. Tool, artifact and capability-token attestations name their run and step but are not
links of the chain.

**Key id.** :func:`key_id`: the sha256 hex of the raw 32-byte Ed25519 public key (RFC 8032
encoding, what ``public_bytes(Encoding.Raw, PublicFormat.Raw)`` returns).

Bad input to a builder raises :class:`AttestationError` (an ``InvalidArgument`` and a
``ValueError``). Verification never raises for a bad envelope: it returns the errors.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from foundry.kernel.core.ids import rfc3339
from foundry.kernel.core.json_input import each_key_once
from foundry.kernel.errors import InvalidArgument

__all__ = [
    "KINDS",
    "MAX_DEPTH",
    "PAYLOAD_TYPE",
    "PREDICATE_BASE",
    "PREDICATE_TYPES",
    "REQUIRED_CLAIMS",
    "STATEMENT_TYPE",
    "AttestationError",
    "Verified",
    "artifact_claims",
    "attestation_digest",
    "canonical_json",
    "capability_token_claims",
    "custom_claims",
    "digest_of",
    "envelope",
    "envelope_json",
    "is_sha256_hex",
    "key_id",
    "kind_of",
    "pae",
    "run_claims",
    "sha256_hex",
    "statement",
    "statement_for",
    "step_claims",
    "subject_of",
    "tool_claims",
    "verify_chain",
    "verify_envelope",
]

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_BASE = "https://foundry.dev/attestation/"
KINDS = ("run", "step", "tool", "artifact", "capability_token", "custom")
PREDICATE_TYPES: Mapping[str, str] = {
    kind: f"{PREDICATE_BASE}{kind.replace('_', '-')}/v1" for kind in KINDS
}
_KIND_OF_TYPE = {uri: kind for kind, uri in PREDICATE_TYPES.items()}

# The claims every predicate of a kind carries (the builders below produce exactly these keys;
# verification checks they are present).
REQUIRED_CLAIMS: Mapping[str, frozenset[str]] = {
    "run": frozenset({
        "run_id", "status", "spec_hash", "seed", "step_count", "tokens_in", "tokens_out", "cost",
        "parent_run_id", "branch_step", "daemon_version", "previous", "chain_length",
    }),
    "step": frozenset({
        "run_id", "step_id", "block", "attempt", "usage", "input_hash", "output_hash", "seed",
        "model", "previous", "index",
    }),
    "tool": frozenset({"run_id", "step_id", "tool", "args_hash", "output_hash"}),
    "artifact": frozenset({"uri", "sha256", "run_id", "step_id", "event_id"}),
    "capability_token": frozenset({
        "token_id", "tool", "run_id", "step_id", "attempt", "issued_at", "expires_at",
    }),
    "custom": frozenset({"label", "claims"}),
}  # fmt: skip

MAX_DEPTH = 128  # deepest nesting canonical_json accepts (as kernel/core/json_input.py)

_HEX64 = re.compile(r"[0-9a-f]{64}")


class AttestationError(InvalidArgument, ValueError):
    """A value cannot be attested: not canonical-JSON-able, or a claim is malformed.

    Both an ``InvalidArgument`` (the gRPC edge answers INVALID_ARGUMENT) and a ``ValueError``.
    The message names the field.
    """


# --- canonical JSON and digests -----------------------------------------------------------------


def canonical_json(value: Any) -> bytes:
    """The canonical JSON bytes of ``value``: what is hashed, signed and stored.

    Exactly:

    - UTF-8, no whitespace anywhere (separators ``,`` and ``:``), no byte-order mark;
    - objects (any ``Mapping``) must have ``str`` keys; members are sorted by their keys' UTF-16
      code units (RFC 8785 §3.2.3 — the same as code-point order unless a key holds characters
      beyond U+FFFF);
    - arrays: ``list`` and ``tuple``, in order;
    - strings: ``"`` and ``\\`` escaped with a backslash; U+0008, U+0009, U+000A, U+000C,
      U+000D as ``\\b \\t \\n \\f \\r``; other characters below U+0020 as ``\\u00xx`` (lowercase
      hex); every other character as itself, in UTF-8 (no ``\\uXXXX`` for non-ASCII). A lone
      surrogate is refused;
    - ``True``/``False``/``None`` as ``true``/``false``/``null``;
    - integers (``int`` other than ``bool``) in decimal, exactly, whatever their size;
    - floats as Python's ``repr`` — the shortest text that reads back to the same float
      (``0.1``, ``1.0``, ``1e-07``, ``1e+16``, ``-0.0``); NaN and infinities are refused.

    For the values the attestations hold (strings, integers within ±2**53, booleans, null,
    arrays, objects) this is RFC 8785 (JCS) byte for byte. It departs from JCS only in float
    spelling: JCS writes ECMAScript numbers (``1`` for ``1.0``, ``1e-7``, ``10000000000000000``,
    ``0`` for ``-0.0``), this writes ``repr``. Deterministic either way: the same value gives the
    same bytes, and ``canonical_json(json.loads(b)) == b`` for every output ``b``.

    Anything else (a set, bytes, a datetime, a non-str key, nesting deeper than
    :data:`MAX_DEPTH`) raises :class:`AttestationError`.
    """
    out: list[str] = []
    _encode(value, out, 0, "value")
    try:
        return "".join(out).encode("utf-8")
    except UnicodeEncodeError:  # unreachable: strings are checked as they are encoded
        raise AttestationError("value: text must be valid Unicode (lone surrogate)") from None


def _encode(value: Any, out: list[str], depth: int, path: str) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(_string(value, path))
    elif isinstance(value, int):
        out.append(int.__repr__(value))
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise AttestationError(f"{path}: numbers must be finite (got {value!r})")
        out.append(float.__repr__(value))
    elif isinstance(value, Mapping):
        if depth >= MAX_DEPTH:
            raise AttestationError(f"{path}: nested deeper than {MAX_DEPTH} levels")
        for key in value:
            if not isinstance(key, str):
                raise AttestationError(f"{path}: object keys must be strings, got {key!r}")
        out.append("{")
        for n, key in enumerate(sorted(value, key=lambda k: _utf16(k, path))):
            if n:
                out.append(",")
            out.append(_string(key, path))
            out.append(":")
            _encode(value[key], out, depth + 1, f"{path}.{key}")
        out.append("}")
    elif isinstance(value, list | tuple):
        if depth >= MAX_DEPTH:
            raise AttestationError(f"{path}: nested deeper than {MAX_DEPTH} levels")
        out.append("[")
        for n, item in enumerate(value):
            if n:
                out.append(",")
            _encode(item, out, depth + 1, f"{path}[{n}]")
        out.append("]")
    else:
        raise AttestationError(f"{path}: {type(value).__name__} is not a JSON value")


def _string(text: str, path: str) -> str:
    _utf16(text, path)  # refuses lone surrogates
    return json.dumps(text, ensure_ascii=False)


def _utf16(text: str, path: str) -> bytes:
    try:
        return text.encode("utf-16-be")
    except UnicodeEncodeError:
        raise AttestationError(f"{path}: text must be valid Unicode (lone surrogate)") from None


def sha256_hex(data: bytes) -> str:
    """Lowercase hex of the SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def digest_of(value: Any) -> str:
    """``sha256_hex(canonical_json(value))``."""
    return sha256_hex(canonical_json(value))


def is_sha256_hex(text: object) -> bool:
    """True for 64 lowercase hex characters — the only digest spelling attestations use."""
    return isinstance(text, str) and _HEX64.fullmatch(text) is not None


# --- statements ---------------------------------------------------------------------------------


def statement(
    subject_name: str, subject_digest_hex: str, predicate_type: str, predicate: Mapping[str, Any]
) -> dict[str, Any]:
    """An in-toto Statement v1 with one subject::

        {"_type": STATEMENT_TYPE, "subject": [{"name": subject_name,
         "digest": {"sha256": subject_digest_hex}}], "predicateType": predicate_type,
         "predicate": dict(predicate)}

    Raises :class:`AttestationError` unless the name is non-empty, the digest is sha256 hex, the
    predicate type is one of :data:`PREDICATE_TYPES` and the predicate is canonical-JSON-able.
    """
    built = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": subject_name, "digest": {"sha256": subject_digest_hex}}],
        "predicateType": predicate_type,
        "predicate": dict(predicate) if isinstance(predicate, Mapping) else predicate,
    }
    errors = _statement_errors(built)
    if errors:
        raise AttestationError("; ".join(errors))
    canonical_json(built)
    return built


def kind_of(statement_or_type: Mapping[str, Any] | str) -> str | None:
    """The kind (``"run"``, ``"step"``, …) of a statement or predicate type URI, or None."""
    if isinstance(statement_or_type, str):
        return _KIND_OF_TYPE.get(statement_or_type)
    predicate_type = statement_or_type.get("predicateType")
    return _KIND_OF_TYPE.get(predicate_type) if isinstance(predicate_type, str) else None


def subject_of(kind: str, claims: Mapping[str, Any]) -> tuple[str, str]:
    """The subject ``(name, sha256 hex)`` of a kind's claims.

    Names (ids inserted verbatim):

    ==================  ================================================  =====================
    kind                name                                              digest
    ==================  ================================================  =====================
    run                 ``run/<run_id>``                                  ``digest_of(claims)``
    step                ``run/<run_id>/step/<step_id>/attempt/<attempt>``  ``digest_of(claims)``
    tool                ``run/<run_id>/step/<step_id>/tool/<tool>``        ``digest_of(claims)``
    artifact            ``<uri>``                                          the content's sha256
    capability_token    ``capability-token/<token_id>``                    ``digest_of(claims)``
    custom              ``custom/<label>``                                 ``digest_of(claims)``
    ==================  ================================================  =====================

    An artifact's subject is its content; the other subjects are records, and their record *is*
    the claims, so their digest is the claims' canonical digest.
    """
    _check_kind(kind)
    missing = REQUIRED_CLAIMS[kind] - claims.keys()
    if missing:
        raise AttestationError(f"{kind} claims: missing {', '.join(sorted(missing))}")
    if kind == "run":
        name = f"run/{claims['run_id']}"
    elif kind == "step":
        name = f"run/{claims['run_id']}/step/{claims['step_id']}/attempt/{claims['attempt']}"
    elif kind == "tool":
        name = f"run/{claims['run_id']}/step/{claims['step_id']}/tool/{claims['tool']}"
    elif kind == "artifact":
        return str(claims["uri"]), _hex(claims["sha256"], "artifact claims: sha256")
    elif kind == "capability_token":
        name = f"capability-token/{claims['token_id']}"
    else:
        name = f"custom/{claims['label']}"
    return name, digest_of(claims)


def statement_for(kind: str, claims: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`statement` of a kind's claims (from its builder), subject from :func:`subject_of`."""
    name, digest = subject_of(kind, claims)
    return statement(name, digest, PREDICATE_TYPES[kind], claims)


# --- claims per kind ----------------------------------------------------------------------------


def run_claims(
    *,
    run_id: str,
    status: str,
    spec_hash: str,
    seed: int | None,
    step_count: int,
    tokens_in: int,
    tokens_out: int,
    cost: float,
    daemon_version: str,
    previous: str | None,
    chain_length: int,
    parent_run_id: str | None = None,
    branch_step: str | None = None,
    outputs_hash: str | None = None,
    breakpoints: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The predicate of a run attestation, issued when the run ends.

    - ``run_id``; ``status`` — the final status (e.g. ``"SUCCEEDED"``, ``"FAILED"``);
    - ``spec_hash`` — sha256 hex of the run's spec (``digest_of`` of it);
    - ``seed`` — the run's seed, or null;
    - ``step_count`` — steps in the run; ``tokens_in``, ``tokens_out``, ``cost`` (a float) —
      totals over the run;
    - ``parent_run_id``, ``branch_step`` — the run and step it was branched from; null (also
      for ``""``) when it is not a branch;
    - ``daemon_version`` — the version of the daemon that ran it;
    - ``previous`` — the attestation digest of the run's last step attestation (the chain head),
      null when there is none; ``chain_length`` — the number of step attestations in the chain;
    - ``outputs_hash`` — ``json_digest`` of ``{step_id: output}`` over its succeeded and reused
      steps (the ``artifact_hash``), signed: an output no step attestation covers (a failed
      step rewritten as completed) is covered by this. Absent from attestations made before it
      was added (their ``artifact_hash`` is unsigned);
    - ``breakpoints`` — the breakpoints it was submitted with, as ``spec_hash`` hashed them
      (UpdateBreakpoints changes the run's, not the spec's): with them a verifier recomputes
      ``spec_hash`` from the stored spec. Absent from attestations made before it was added.
    """
    return {
        "run_id": _text(run_id, "run_id"),
        "status": _text(status, "status"),
        "spec_hash": _hex(spec_hash, "spec_hash"),
        "seed": _optional_int(seed, "seed"),
        "step_count": _count(step_count, "step_count"),
        "tokens_in": _count(tokens_in, "tokens_in"),
        "tokens_out": _count(tokens_out, "tokens_out"),
        "cost": _cost(cost, "cost"),
        "parent_run_id": _optional_text(parent_run_id, "parent_run_id"),
        "branch_step": _optional_text(branch_step, "branch_step"),
        "daemon_version": _text(daemon_version, "daemon_version"),
        "previous": _optional_hex(previous, "previous"),
        "chain_length": _count(chain_length, "chain_length"),
        **({} if outputs_hash is None else {"outputs_hash": _hex(outputs_hash, "outputs_hash")}),
        **({} if breakpoints is None else {"breakpoints": _texts(breakpoints, "breakpoints")}),
    }


def step_claims(
    *,
    run_id: str,
    step_id: str,
    block: str,
    attempt: int,
    tokens_in: int,
    tokens_out: int,
    cost: float,
    input_hash: str,
    seed: int | None,
    model: str | None,
    previous: str | None,
    index: int,
    output_hash: str | None = None,
) -> dict[str, Any]:
    """The predicate of a step attestation, issued when a step attempt ends.

    - ``run_id``, ``step_id``, ``block`` (the block that ran it), ``attempt``;
    - ``usage`` — ``{"tokens_in", "tokens_out", "cost"}`` of this attempt (cost a float);
    - ``input_hash`` — sha256 hex of the step's resolved inputs; ``output_hash`` — of its output
      (``digest_of``), null when it produced none;
    - ``seed`` — the step's seed or null; ``model`` — the model it used, or null;
    - ``previous`` — the attestation digest of the run's previous step attestation, null for
      the first; ``index`` — its position in the run's chain, from 0.
    """
    index = _count(index, "index")
    previous = _optional_hex(previous, "previous")
    if (index == 0) != (previous is None):
        raise AttestationError("previous: must be null exactly for the first step (index 0)")
    return {
        "run_id": _text(run_id, "run_id"),
        "step_id": _text(step_id, "step_id"),
        "block": _text(block, "block"),
        "attempt": _count(attempt, "attempt"),
        "usage": {
            "tokens_in": _count(tokens_in, "tokens_in"),
            "tokens_out": _count(tokens_out, "tokens_out"),
            "cost": _cost(cost, "cost"),
        },
        "input_hash": _hex(input_hash, "input_hash"),
        "output_hash": _optional_hex(output_hash, "output_hash"),
        "seed": _optional_int(seed, "seed"),
        "model": _optional_text(model, "model"),
        "previous": previous,
        "index": index,
    }


def tool_claims(
    *, run_id: str, step_id: str, tool: str, args_hash: str, output_hash: str | None
) -> dict[str, Any]:
    """The predicate of a tool attestation: one tool call a step made.

    ``run_id``, ``step_id``; ``tool`` — the tool's name; ``args_hash`` — sha256 hex of its
    arguments (``digest_of``); ``output_hash`` — of its output, null when it returned none.
    """
    return {
        "run_id": _text(run_id, "run_id"),
        "step_id": _text(step_id, "step_id"),
        "tool": _text(tool, "tool"),
        "args_hash": _hex(args_hash, "args_hash"),
        "output_hash": _optional_hex(output_hash, "output_hash"),
    }


def artifact_claims(
    *,
    uri: str,
    sha256: str,
    run_id: str | None = None,
    step_id: str | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    """The predicate of an artifact attestation: a file a step or a block execution produced.

    ``uri`` — where it is (e.g. ``file:///…/artifacts/…``); ``sha256`` — hex of its content
    bytes (also the subject digest); and what produced it: ``run_id`` (with ``step_id``, or
    null for a run-level artifact) for a FleetForge run, or ``event_id`` for a Foundry block
    execution — exactly one of ``run_id`` and ``event_id``; the others are null.
    """
    run_id = _optional_text(run_id, "run_id")
    step_id = _optional_text(step_id, "step_id")
    event_id = _optional_text(event_id, "event_id")
    if (run_id is None) == (event_id is None):
        raise AttestationError("artifact claims: give exactly one of run_id and event_id")
    if step_id is not None and run_id is None:
        raise AttestationError("step_id: only with run_id")
    return {
        "uri": _text(uri, "uri"),
        "sha256": _hex(sha256, "sha256"),
        "run_id": run_id,
        "step_id": step_id,
        "event_id": event_id,
    }


def capability_token_claims(
    *,
    token_id: str,
    tool: str,
    run_id: str,
    step_id: str,
    attempt: int,
    issued_at: datetime | str,
    expires_at: datetime | str,
) -> dict[str, Any]:
    """The predicate of a capability-token attestation.

    A capability token is the kernel's grant letting one step attempt (``run_id``, ``step_id``,
    ``attempt``) call one tool (``tool``) until it expires. ``token_id``; ``issued_at`` and
    ``expires_at`` — aware datetimes or RFC 3339 texts, recorded as RFC 3339 in UTC
    (``2026-11-22T07:03:52.123456+00:00``); ``expires_at`` must be after ``issued_at``.
    """
    issued, expires = _instant(issued_at, "issued_at"), _instant(expires_at, "expires_at")
    if expires <= issued:
        raise AttestationError("expires_at: must be after issued_at")
    return {
        "token_id": _text(token_id, "token_id"),
        "tool": _text(tool, "tool"),
        "run_id": _text(run_id, "run_id"),
        "step_id": _text(step_id, "step_id"),
        "attempt": _count(attempt, "attempt"),
        "issued_at": rfc3339(issued),
        "expires_at": rfc3339(expires),
    }


def custom_claims(label: str, claims: Mapping[str, Any]) -> dict[str, Any]:
    """The predicate of a custom attestation: ``{"label": label, "claims": {...}}``.

    ``label`` names what is attested (``"gate_decision"``, ``"eval_result"``, …); ``claims`` is
    any JSON object (checked with :func:`canonical_json`).
    """
    if not isinstance(claims, Mapping):
        raise AttestationError(f"claims: must be an object, got {type(claims).__name__}")
    from foundry.kernel.core.attest_records import canonical  # its C-speed twin (imports us)

    built = {"label": _text(label, "label"), "claims": dict(claims)}
    canonical(built)  # a gate decision's claims are large: the pure-Python check took ~1 ms
    return built


def _check_kind(kind: str) -> None:
    if kind not in PREDICATE_TYPES:
        raise AttestationError(f"kind: {kind!r} is not one of {', '.join(KINDS)}")


def _text(value: object, field: str) -> str:
    if type(value) is str and value:  # the usual case, without an abstract-class check
        return value
    if not isinstance(value, str) or not value:
        raise AttestationError(f"{field}: must be a non-empty string, got {value!r}")
    return value


def _optional_text(value: object, field: str) -> str | None:
    return None if value is None or value == "" else _text(value, field)


def _texts(values: object, field: str) -> list[str]:
    if isinstance(values, str | bytes) or not isinstance(values, Sequence):
        raise AttestationError(f"{field}: must be a list of strings, got {values!r}")
    return [_text(value, f"{field}[{n}]") for n, value in enumerate(values)]


def _hex(value: object, field: str) -> str:
    if not is_sha256_hex(value):
        raise AttestationError(f"{field}: must be sha256 hex (64 lowercase hex), got {value!r}")
    assert isinstance(value, str)
    return value


def _optional_hex(value: object, field: str) -> str | None:
    return None if value is None else _hex(value, field)


def _count(value: object, field: str) -> int:
    if type(value) is int and value >= 0:
        return value
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise AttestationError(f"{field}: must be a non-negative integer, got {value!r}")
    return int(value)


def _optional_int(value: object, field: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise AttestationError(f"{field}: must be an integer or null, got {value!r}")
    return int(value)


def _cost(value: object, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AttestationError(f"{field}: must be a number, got {value!r}")
    cost = float(value)
    if not math.isfinite(cost) or cost < 0:
        raise AttestationError(f"{field}: must be finite and non-negative, got {value!r}")
    return cost


def _instant(value: datetime | str, field: str) -> datetime:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise AttestationError(f"{field}: not an RFC 3339 time: {value!r}") from None
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise AttestationError(f"{field}: must be a time with a UTC offset, got {value!r}")
    return value


# --- DSSE ---------------------------------------------------------------------------------------


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding, the bytes that are signed::

        "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body

    ``type`` is ``payload_type`` in UTF-8, LEN a byte count in ASCII decimal without leading
    zeros, SP one space. ``pae("http://example.com/HelloWorld", b"hello world")`` is
    ``b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"`` (the spec's example).
    """
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(kind), kind, len(payload), payload)


def key_id(public_key_raw: bytes) -> str:
    """The key id of an Ed25519 public key: sha256 hex of its raw 32 bytes (RFC 8032 encoding).

    Anyone can recompute it from the key alone, e.g. from a PEM public key:
    ``openssl pkey -pubin -in key.pem -outform DER | tail -c 32 | sha256sum``.
    """
    if not isinstance(public_key_raw, bytes | bytearray) or len(public_key_raw) != 32:
        raise AttestationError("public_key_raw: must be the 32 raw bytes of an Ed25519 key")
    return sha256_hex(bytes(public_key_raw))


def envelope(
    statement: Mapping[str, Any], keyid: str, sign: Callable[[bytes], bytes]
) -> dict[str, Any]:
    """A DSSE envelope over ``statement``, signed once with ``sign``.

    ``{"payloadType": PAYLOAD_TYPE, "payload": base64(canonical_json(statement)),
    "signatures": [{"keyid": keyid, "sig": base64(sign(pae(PAYLOAD_TYPE, payload)))}]}``.
    ``sign`` gets the PAE bytes and returns the raw signature (64 bytes for Ed25519). The
    statement must be well formed (as :func:`verify_envelope` checks it), else
    :class:`AttestationError`.
    """
    errors = _statement_errors(statement)
    if errors:
        raise AttestationError("statement: " + "; ".join(errors))
    if not isinstance(keyid, str) or not keyid:
        raise AttestationError("keyid: must be a non-empty string")
    payload = canonical_json(statement)
    signature = sign(pae(PAYLOAD_TYPE, payload))
    if not isinstance(signature, bytes | bytearray) or not signature:
        raise AttestationError("sign: must return the signature bytes")
    return {
        "payloadType": PAYLOAD_TYPE,
        "payload": _b64(payload),
        "signatures": [{"keyid": keyid, "sig": _b64(bytes(signature))}],
    }


def envelope_json(env: Mapping[str, Any]) -> str:
    """The envelope's canonical JSON text — what ``Attestation.signature`` holds."""
    return canonical_json(env).decode("utf-8")


def attestation_digest(env: str | Mapping[str, Any]) -> str:
    """The attestation digest: sha256 hex of the envelope's decoded payload bytes.

    For an envelope made by :func:`envelope` it equals ``digest_of(statement)``. Takes the
    envelope or its JSON text; raises :class:`AttestationError` when the payload is unreadable.
    """
    opened = _open(env)
    if opened.payload is None:
        raise AttestationError("envelope: " + "; ".join(opened.errors))
    return sha256_hex(opened.payload)


def _b64(data: bytes) -> str:
    return base64.standard_b64encode(data).decode("ascii")


def dsse_b64decode(text: object) -> bytes | None:
    """Standard or URL-safe base64 (DSSE accepts both), padded; None if it is neither."""
    if not isinstance(text, str):
        return None
    try:
        data = text.encode("ascii")
        try:
            return base64.b64decode(data, validate=True)
        except binascii.Error:
            return base64.b64decode(data, altchars=b"-_", validate=True)
    except (binascii.Error, UnicodeEncodeError):
        return None


# --- verification -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verified:
    """What :func:`verify_envelope` found.

    ``statement`` — the decoded statement when the payload could be read (present even when
    there are errors: trust it only when :attr:`ok`); ``errors`` — one line per problem, empty
    when the envelope verified; ``digest`` — the attestation digest (sha256 hex of the payload
    bytes) when the payload could be decoded.
    """

    statement: dict[str, Any] | None
    errors: tuple[str, ...]
    digest: str | None = None

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def kind(self) -> str | None:
        return None if self.statement is None else kind_of(self.statement)


@dataclass(frozen=True)
class _Opened:
    envelope: dict[str, Any] | None
    payload: bytes | None
    statement: dict[str, Any] | None
    errors: tuple[str, ...]


def verify_envelope(
    envelope_json: str | Mapping[str, Any],
    verify: Callable[[bytes, bytes], bool],
    expected_keyid: str,
) -> Verified:
    """Check an envelope (its JSON text, or the parsed object) against one public key.

    ``verify(signature, message) -> bool`` checks a raw signature over a message with the public
    key whose id is ``expected_keyid`` (an exception from it counts as False). Errors when:

    - the text is not JSON (duplicate keys and NaN refused) or not ``{"payloadType": str,
      "payload": str, "signatures": [{"keyid": str, "sig": str}, ...]}``;
    - ``payloadType`` is not :data:`PAYLOAD_TYPE`; ``payload`` or a ``sig`` is not base64;
    - no signature has ``keyid == expected_keyid``, or none of those verifies over
      ``pae(payloadType, payload)`` (signatures by other keys are ignored);
    - the payload is not a JSON object in canonical form (:func:`canonical_json`);
    - the statement is malformed: ``_type`` is not :data:`STATEMENT_TYPE`; ``subject`` is not a
      non-empty list of ``{"name": non-empty str, "digest": {"sha256": 64 lowercase hex, ...}}``;
      ``predicateType`` is not one of :data:`PREDICATE_TYPES`; ``predicate`` is not an object
      holding the kind's :data:`REQUIRED_CLAIMS`.
    """
    opened = _open(envelope_json)
    errors = list(opened.errors)
    if opened.envelope is not None and opened.payload is not None:
        errors.extend(_signature_errors(opened.envelope, opened.payload, verify, expected_keyid))
    digest = None if opened.payload is None else sha256_hex(opened.payload)
    return Verified(opened.statement, tuple(errors), digest)


def _open(env: str | Mapping[str, Any]) -> _Opened:
    """Everything :func:`verify_envelope` checks except the signatures."""
    if isinstance(env, str | bytes):
        try:
            parsed = json.loads(env, object_pairs_hook=each_key_once, parse_constant=_no_nan)
        except (ValueError, RecursionError) as exc:
            return _Opened(None, None, None, (f"envelope: not JSON ({str(exc)[:200]})",))
    else:
        parsed = env
    if not isinstance(parsed, Mapping):
        return _Opened(None, None, None, ("envelope: must be a JSON object",))
    parsed = dict(parsed)
    errors: list[str] = []
    payload_type = parsed.get("payloadType")
    if payload_type != PAYLOAD_TYPE:
        errors.append(f"payloadType: must be {PAYLOAD_TYPE!r}, got {_shown(payload_type)}")
    signatures = parsed.get("signatures")
    if not isinstance(signatures, list) or not signatures:
        errors.append("signatures: must be a non-empty list")
    elif len(signatures) > MAX_SIGNATURES:  # each one a check: 400,000 of them took minutes
        errors.append(f"signatures: {len(signatures):,} of them, more than {MAX_SIGNATURES}")
    else:
        for n, sig in enumerate(signatures):
            if (
                not isinstance(sig, Mapping)
                or not isinstance(sig.get("keyid"), str)
                or not isinstance(sig.get("sig"), str)
            ):
                errors.append(f"signatures[{n}]: must be {{'keyid': str, 'sig': str}}")
            elif dsse_b64decode(sig["sig"]) is None:
                errors.append(f"signatures[{n}].sig: not base64")
    payload = dsse_b64decode(parsed.get("payload"))
    if payload is None:
        errors.append("payload: missing or not base64")
        return _Opened(parsed, None, None, tuple(errors))
    try:
        decoded = json.loads(payload, object_pairs_hook=each_key_once, parse_constant=_no_nan)
    except (ValueError, RecursionError) as exc:
        errors.append(f"payload: not JSON ({str(exc)[:200]})")
        return _Opened(parsed, payload, None, tuple(errors))
    if not isinstance(decoded, dict):
        errors.append("payload: must be a JSON object (an in-toto statement)")
        return _Opened(parsed, payload, None, tuple(errors))
    subjects = decoded.get("subject")
    if isinstance(subjects, list) and len(subjects) > MAX_SUBJECTS:  # (before their walk)
        errors.append(f"subject: {len(subjects):,} subjects, more than {MAX_SUBJECTS}")
        return _Opened(parsed, payload, decoded, tuple(errors))
    try:
        canonical = canonical_json(decoded) == payload
    except AttestationError:
        canonical = False
    if not canonical:
        errors.append("payload: not in canonical JSON form")
    errors.extend(_statement_errors(decoded))
    return _Opened(parsed, payload, decoded, tuple(errors))


# An envelope's signatures and a statement's subjects, at most (ours have one each): each is
# work for a verifier, and a file of 400,000 signatures or a million subjects took minutes and
# gigabytes of a verifier run on a file someone else made.
MAX_SIGNATURES = 16
MAX_SUBJECTS = 1_000
SHOWN_CHARS = 100  # of a value a reason shows (a 50 MB payloadType made a 100 MB line)


def _shown(value: Any) -> str:
    """A value as a reason shows it: its repr, cut."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else f"{text[:SHOWN_CHARS]}… ({len(text):,} chars)"


def _signature_errors(
    env: Mapping[str, Any],
    payload: bytes,
    verify: Callable[[bytes, bytes], bool],
    expected_keyid: str,
) -> list[str]:
    signatures = env.get("signatures")
    if not isinstance(signatures, list) or len(signatures) > MAX_SIGNATURES:
        return []  # reported by _open
    mine = [s for s in signatures if isinstance(s, Mapping) and s.get("keyid") == expected_keyid]
    if not mine:
        return [f"signatures: none by key {expected_keyid!r}"]
    try:
        message = pae(str(env.get("payloadType")), payload)
    except UnicodeEncodeError:  # a lone surrogate: no signature is over it (_open reports it)
        return [f"signatures: the signature by key {expected_keyid!r} does not verify"]
    for sig in mine:
        raw = dsse_b64decode(sig.get("sig"))
        if raw is None:
            continue
        try:
            good = verify(raw, message) is True
        except Exception:  # the injected verifier's own failure mode: a bad signature
            good = False
        if good:
            return []
    return [f"signatures: the signature by key {expected_keyid!r} does not verify"]


def _no_nan(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def _statement_errors(stmt: Any) -> list[str]:
    if not isinstance(stmt, Mapping):
        return ["statement: must be an object"]
    errors: list[str] = []
    if stmt.get("_type") != STATEMENT_TYPE:
        errors.append(f"_type: must be {STATEMENT_TYPE!r}, got {_shown(stmt.get('_type'))}")
    subjects = stmt.get("subject")
    if not isinstance(subjects, list) or not subjects:
        errors.append("subject: must be a non-empty list")
    else:
        for n, subject in enumerate(subjects):
            if not isinstance(subject, Mapping):
                errors.append(f"subject[{n}]: must be an object")
                continue
            name = subject.get("name")
            if not isinstance(name, str) or not name:
                errors.append(f"subject[{n}].name: must be a non-empty string")
            digest = subject.get("digest")
            if not isinstance(digest, Mapping) or not is_sha256_hex(digest.get("sha256")):
                errors.append(f"subject[{n}].digest.sha256: must be 64 lowercase hex")
    predicate_type = stmt.get("predicateType")
    kind = _KIND_OF_TYPE.get(predicate_type) if isinstance(predicate_type, str) else None
    if kind is None:
        errors.append(f"predicateType: {_shown(predicate_type)} is not a Foundry predicate type")
    predicate = stmt.get("predicate")
    if not isinstance(predicate, Mapping):
        errors.append("predicate: must be an object")
    elif kind is not None:
        missing = REQUIRED_CLAIMS[kind] - predicate.keys()
        if missing:
            errors.append(f"predicate: {kind} claims miss {', '.join(sorted(missing))}")
    return errors


def verify_chain(
    step_envelopes_in_order: Sequence[str | Mapping[str, Any]],
    run_envelope: str | Mapping[str, Any] | None,
    *,
    verify: Callable[[bytes, bytes], bool] | None = None,
    expected_keyid: str | None = None,
    run_id: str | None = None,
) -> tuple[str, ...]:
    """Check a run's step attestations form the hash chain the run attestation closes.

    ``step_envelopes_in_order`` are the run's step attestations (envelopes or their JSON text)
    in the order they were issued (by ``index``); ``run_envelope`` its run attestation. Returns
    the errors, empty when the chain holds:

    - every envelope opens and holds a well-formed statement (as :func:`verify_envelope`, and
      with the signatures too when ``verify`` and ``expected_keyid`` are given);
    - each step statement is a step attestation of the run's ``run_id``;
    - step ``i`` has ``index == i`` and ``previous`` equal to the attestation digest
      (:func:`attestation_digest`) of step ``i - 1``, null for the first;
    - the run's ``previous`` is the last step's attestation digest (null when there are no
      steps) and its ``chain_length`` the number of steps.

    So a step attestation removed (anywhere), inserted, moved, or altered (its digest changes,
    so the next link — or the run's — no longer matches) is reported.

    ``run_envelope`` None: a stretch of a chain without its run attestation (a run not
    finished, an export of its attestations so far, one step attestation), of the run
    ``run_id``: the links between the step attestations given are checked — each the index
    after the one before it and naming its digest, from whatever index the first has (null
    ``previous`` only when that is 0); what came before the first or after the last cannot be.
    """
    if (verify is None) != (expected_keyid is None):
        raise AttestationError("verify_chain: give verify and expected_keyid together")
    errors: list[str] = []

    def opened(
        env: str | Mapping[str, Any], what: str
    ) -> tuple[str | None, dict[str, Any] | None, str | None]:
        """(kind, claims, attestation digest) of one envelope; its problems go to ``errors``."""
        if verify is not None and expected_keyid is not None:
            result = verify_envelope(env, verify, expected_keyid)
            statement, digest, problems = result.statement, result.digest, result.errors
        else:
            o = _open(env)
            statement, problems = o.statement, o.errors
            digest = None if o.payload is None else sha256_hex(o.payload)
        errors.extend(f"{what}: {p}" for p in problems)
        if statement is None:
            return None, None, digest
        predicate = statement.get("predicate")
        return kind_of(statement), (predicate if isinstance(predicate, dict) else None), digest

    run_claims_ = None
    if run_envelope is not None:
        run_kind, run_claims_, _ = opened(run_envelope, "run attestation")
        run_id = None
        if run_claims_ is not None:
            run_id = run_claims_.get("run_id")
            if run_kind != "run":
                errors.append("run attestation: not a run attestation")

    previous_digest: str | None = None
    start = 0  # a stretch without its run attestation starts where its first says
    for n, env in enumerate(step_envelopes_in_order):
        kind, claims, digest = opened(env, f"step attestation {n + start}")
        if n == 0 and run_envelope is None and claims is not None:
            first = claims.get("index")
            if type(first) is int and first > 0:
                start, previous_digest = first, claims.get("previous")
        i = n + start  # the chain's index of this one
        what = f"step attestation {i}"
        if claims is not None:
            what = f"step attestation {i} ({claims.get('step_id')!r})"
            if kind != "step":
                errors.append(f"{what}: not a step attestation")
            if claims.get("run_id") != run_id:
                errors.append(f"{what}: belongs to run {claims.get('run_id')!r}, not {run_id!r}")
            if claims.get("index") != i:
                errors.append(f"{what}: index is {claims.get('index')!r}, expected {i}")
            if claims.get("previous") != previous_digest:
                expected = "null (the first)" if i == 0 else repr(previous_digest)
                errors.append(
                    f"{what}: previous is {claims.get('previous')!r}, expected {expected}"
                    " — a step attestation was removed, inserted, reordered or altered"
                )
        previous_digest = digest

    if run_claims_ is not None:
        if run_claims_.get("previous") != previous_digest:
            errors.append(
                f"run attestation: previous is {run_claims_.get('previous')!r}, but "
                + (
                    f"the last step attestation digests to {previous_digest!r}"
                    if previous_digest is not None
                    else "no step attestation was given"
                )
                + " — the chain does not end where the run says"
            )
        if run_claims_.get("chain_length") != len(step_envelopes_in_order):
            errors.append(
                f"run attestation: chain_length is {run_claims_.get('chain_length')!r}, but"
                f" {len(step_envelopes_in_order)} step attestations were given"
            )
    return tuple(errors)
