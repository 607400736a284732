"""kernel/core/attest.py: canonical JSON, in-toto statements, DSSE envelopes, the hash chain.

Signing and verifying use ``cryptography``'s Ed25519; every envelope is also checked by an
independent DSSE implementation, ``securesystemslib.dsse``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from datetime import UTC, datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from foundry.kernel.core import attest
from foundry.kernel.core.attest import (
    KINDS,
    PAYLOAD_TYPE,
    PREDICATE_TYPES,
    STATEMENT_TYPE,
    AttestationError,
    artifact_claims,
    attestation_digest,
    canonical_json,
    capability_token_claims,
    custom_claims,
    digest_of,
    envelope,
    envelope_json,
    key_id,
    kind_of,
    pae,
    run_claims,
    sha256_hex,
    statement,
    statement_for,
    step_claims,
    subject_of,
    tool_claims,
    verify_chain,
    verify_envelope,
)
from foundry.kernel.errors import InvalidArgument
from hypothesis import assume, given
from hypothesis import strategies as st
from securesystemslib.dsse import Envelope
from securesystemslib.exceptions import VerificationError
from securesystemslib.signer import SSlibKey

from tests.helpers import JSON

H = {c: c * 64 for c in "0123456789abcdef"}  # sha256-hex-shaped values


# --- keys ---------------------------------------------------------------------------------------


class Key:
    """An Ed25519 key pair with the callables attest takes, and its securesystemslib twin."""

    def __init__(self, seed: int) -> None:
        self.private = Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)
        self.public = self.private.public_key()
        self.raw = self.public.public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.keyid = key_id(self.raw)
        self.sign = self.private.sign

    def verify(self, signature: bytes, message: bytes) -> bool:
        try:
            self.public.verify(signature, message)
        except InvalidSignature:
            return False
        return True

    def sslib(self) -> SSlibKey:
        return SSlibKey.from_crypto(self.public, keyid=self.keyid)


KEY = Key(7)
OTHER = Key(8)


def sslib_verifies(text: str, key: Key = KEY) -> bool:
    """securesystemslib's verdict on an envelope's JSON text."""
    try:
        Envelope.from_dict(json.loads(text)).verify([key.sslib()], 1)
    except VerificationError:
        return False
    return True


def ours_verifies(text: str, key: Key = KEY) -> bool:
    return verify_envelope(text, key.verify, key.keyid).ok


def signed(stmt: dict[str, Any], key: Key = KEY) -> str:
    return envelope_json(envelope(stmt, key.keyid, key.sign))


def a_statement() -> dict[str, Any]:
    return statement_for(
        "tool", tool_claims(run_id="r1", step_id="s1", tool="search", args_hash=H["a"],
                            output_hash=H["b"]),
    )  # fmt: skip


def payload_of(text: str) -> bytes:
    return base64.b64decode(json.loads(text)["payload"])


def with_payload(text: str, payload: bytes) -> str:
    env = json.loads(text)
    env["payload"] = base64.b64encode(payload).decode()
    return json.dumps(env)


# --- canonical JSON -----------------------------------------------------------------------------


def test_canonical_json_sorts_keys_and_has_no_whitespace():
    value = {"b": [1, 2, {"z": None, "a": True}], "a": {"y": False, "x": "t"}, "c": 1.5}
    assert (
        canonical_json(value) == b'{"a":{"x":"t","y":false},"b":[1,2,{"a":true,"z":null}],"c":1.5}'
    )


def test_canonical_json_is_rfc8785s_own_example():
    """The example of RFC 8785 §3.2.2, parsed by Python, gives the RFC's bytes."""
    source = (
        '{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],'
        ' "string": "\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/",'
        ' "literals": [null, true, false]}'
    )
    expected = (
        '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
        '"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    ).encode()
    assert canonical_json(json.loads(source)) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("é€😀", '"é€😀"'.encode()),  # UTF-8, not \u escapes
        ("\b\t\n\f\r\x00\x1f\x7f", b'"\\b\\t\\n\\f\\r\\u0000\\u001f\x7f"'),
        ('"\\/', b'"\\"\\\\/"'),
        ("\u2028", '"\u2028"'.encode()),
        (2**64, b"18446744073709551616"),
        (-0, b"0"),
        (1.0, b"1.0"),
        (0.1, b"0.1"),
        (1e-7, b"1e-07"),
        (1e16, b"1e+16"),
        (-0.0, b"-0.0"),
        ((1, "a"), b'[1,"a"]'),
        (MappingProxyType({"b": 1, "a": 2}), b'{"a":2,"b":1}'),
        ({}, b"{}"),
        ([], b"[]"),
        (True, b"true"),
        (None, b"null"),
    ],
)
def test_canonical_json_values(value, expected):
    assert canonical_json(value) == expected


def test_canonical_json_orders_keys_by_utf16_code_units():
    # By code point U+FFFF sorts before U+1F600; by UTF-16 units (0xD83D…) after, as in JCS.
    assert canonical_json({"\uffff": 1, "😀": 2, "a": 3}) == '{"a":3,"😀":2,"\uffff":1}'.encode()


@pytest.mark.parametrize(
    "value",
    [
        math.nan,
        math.inf,
        -math.inf,
        {"x": [math.nan]},
        {1: "a"},
        {"a": {2, 3}},
        b"bytes",
        datetime(2026, 1, 1, tzinfo=UTC),
        "\ud800",
        {"\udfff": 1},
        object(),
    ],
)
def test_canonical_json_refuses_what_is_not_json(value):
    with pytest.raises(AttestationError):
        canonical_json(value)


def test_canonical_json_refuses_deep_nesting():
    value: Any = 1
    for _ in range(attest.MAX_DEPTH + 1):
        value = [value]
    with pytest.raises(AttestationError, match="nested deeper"):
        canonical_json(value)


def test_attestation_error_is_invalid_argument_and_value_error():
    with pytest.raises(InvalidArgument):
        canonical_json(math.nan)
    with pytest.raises(ValueError, match="finite"):
        canonical_json(math.nan)


@given(JSON)
def test_canonical_json_round_trips_and_is_a_fixed_point(value):
    out = canonical_json(value)
    assert json.loads(out) == value
    assert canonical_json(json.loads(out)) == out


def _keys_below_surrogates(value):
    """Every object key, at any depth, sorts the same by code point and by UTF-16 unit."""
    if isinstance(value, dict):
        return all(
            max(map(ord, key), default=0) < 0xD800 and _keys_below_surrogates(item)
            for key, item in value.items()
        )
    if isinstance(value, list):
        return all(_keys_below_surrogates(item) for item in value)
    return True


@given(st.dictionaries(st.text(alphabet=st.characters(max_codepoint=0xD7FF)), JSON, max_size=6))
def test_canonical_json_is_json_dumps_sorted_for_bmp_keys(value):
    assume(_keys_below_surrogates(value))
    expected = json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    assert canonical_json(value) == expected.encode()


def test_digests():
    assert sha256_hex(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert digest_of({"b": 1, "a": [2]}) == hashlib.sha256(b'{"a":[2],"b":1}').hexdigest()
    assert digest_of({"b": 1, "a": [2]}) == digest_of({"a": [2], "b": 1})


# --- statements and claims ----------------------------------------------------------------------


def test_statement_is_in_toto_v1():
    got = statement("run/r1", H["a"], PREDICATE_TYPES["custom"], {"label": "x", "claims": {}})
    assert got == {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": "run/r1", "digest": {"sha256": H["a"]}}],
        "predicateType": "https://foundry.dev/attestation/custom/v1",
        "predicate": {"label": "x", "claims": {}},
    }
    assert got["_type"] == STATEMENT_TYPE


def test_predicate_types_one_per_kind():
    assert KINDS == ("run", "step", "tool", "artifact", "capability_token", "custom")
    assert PREDICATE_TYPES == {
        "run": "https://foundry.dev/attestation/run/v1",
        "step": "https://foundry.dev/attestation/step/v1",
        "tool": "https://foundry.dev/attestation/tool/v1",
        "artifact": "https://foundry.dev/attestation/artifact/v1",
        "capability_token": "https://foundry.dev/attestation/capability-token/v1",
        "custom": "https://foundry.dev/attestation/custom/v1",
    }
    for kind, uri in PREDICATE_TYPES.items():
        assert kind_of(uri) == kind
    assert kind_of("https://slsa.dev/provenance/v1") is None


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("", H["a"], PREDICATE_TYPES["run"], {}), "name"),
        (("n", "ABC", PREDICATE_TYPES["run"], {}), "sha256"),
        (("n", H["a"].upper(), PREDICATE_TYPES["run"], {}), "sha256"),
        (("n", H["a"], "https://example.com/other/v1", {}), "predicateType"),
        (("n", H["a"], PREDICATE_TYPES["custom"], {"label": "x"}), "miss claims"),
        (("n", H["a"], PREDICATE_TYPES["custom"], {"label": "x", "claims": {1, 2}}), "set"),
    ],
)
def test_statement_refuses_malformed(args, match):
    with pytest.raises(AttestationError, match=match):
        statement(*args)


def run_kwargs(**overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "run_id": "r1", "status": "SUCCEEDED", "spec_hash": H["1"], "seed": 7, "step_count": 2,
        "tokens_in": 10, "tokens_out": 20, "cost": 0, "daemon_version": "0.1.0",
        "previous": H["2"], "chain_length": 2,
    }  # fmt: skip
    return kwargs | overrides


def step_kwargs(**overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "run_id": "r1", "step_id": "s1", "block": "llm", "attempt": 1, "tokens_in": 3,
        "tokens_out": 4, "cost": 0.25, "input_hash": H["3"], "seed": None, "model": "mock-small",
        "previous": None, "index": 0,
    }  # fmt: skip
    return kwargs | overrides


def test_run_claims():
    assert run_claims(**run_kwargs(parent_run_id="r0", branch_step="s2")) == {
        "run_id": "r1", "status": "SUCCEEDED", "spec_hash": H["1"], "seed": 7, "step_count": 2,
        "tokens_in": 10, "tokens_out": 20, "cost": 0.0, "parent_run_id": "r0",
        "branch_step": "s2", "daemon_version": "0.1.0", "previous": H["2"], "chain_length": 2,
    }  # fmt: skip
    plain = run_claims(**run_kwargs(parent_run_id="", branch_step=""))
    assert plain["parent_run_id"] is None
    assert plain["branch_step"] is None
    assert isinstance(plain["cost"], float)


def test_step_claims():
    assert step_claims(**step_kwargs(output_hash=H["4"])) == {
        "run_id": "r1", "step_id": "s1", "block": "llm", "attempt": 1,
        "usage": {"tokens_in": 3, "tokens_out": 4, "cost": 0.25}, "input_hash": H["3"],
        "output_hash": H["4"], "seed": None, "model": "mock-small", "previous": None, "index": 0,
    }  # fmt: skip


def test_other_claims():
    assert tool_claims(
        run_id="r1", step_id="s1", tool="search", args_hash=H["a"], output_hash=None
    ) == {"run_id": "r1", "step_id": "s1", "tool": "search", "args_hash": H["a"],
          "output_hash": None}  # fmt: skip
    assert artifact_claims(uri="file:///a/out.txt", sha256=H["b"], event_id="evt_1") == {
        "uri": "file:///a/out.txt", "sha256": H["b"], "run_id": None, "step_id": None,
        "event_id": "evt_1",
    }  # fmt: skip
    issued = datetime(2026, 11, 22, 8, 0, tzinfo=timezone(timedelta(hours=1)))
    token = capability_token_claims(
        token_id="cap_1", tool="search", run_id="r1", step_id="s1", attempt=2, issued_at=issued,
        expires_at="2026-11-22T07:05:00Z",
    )  # fmt: skip
    assert token == {
        "token_id": "cap_1", "tool": "search", "run_id": "r1", "step_id": "s1", "attempt": 2,
        "issued_at": "2026-11-22T07:00:00+00:00", "expires_at": "2026-11-22T07:05:00+00:00",
    }  # fmt: skip
    assert custom_claims("eval_result", {"score": 0.5}) == {
        "label": "eval_result",
        "claims": {"score": 0.5},
    }


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: run_claims(**run_kwargs(spec_hash="abc")), "spec_hash"),
        (lambda: run_claims(**run_kwargs(cost=-1.0)), "cost"),
        (lambda: run_claims(**run_kwargs(cost=math.nan)), "cost"),
        (lambda: run_claims(**run_kwargs(tokens_in=True)), "tokens_in"),
        (lambda: run_claims(**run_kwargs(step_count=-1)), "step_count"),
        (lambda: run_claims(**run_kwargs(run_id="")), "run_id"),
        (lambda: run_claims(**run_kwargs(seed="7")), "seed"),
        (lambda: step_claims(**step_kwargs(previous=H["1"])), "previous"),
        (lambda: step_claims(**step_kwargs(index=1)), "previous"),
        (lambda: step_claims(**step_kwargs(input_hash=None)), "input_hash"),
        (lambda: artifact_claims(uri="u", sha256=H["a"]), "exactly one"),
        (lambda: artifact_claims(uri="u", sha256=H["a"], run_id="r", event_id="e"), "exactly one"),
        (lambda: artifact_claims(uri="u", sha256=H["a"], event_id="e", step_id="s"), "step_id"),
        (lambda: capability_token_claims(
            token_id="t", tool="x", run_id="r", step_id="s", attempt=1,
            issued_at="2026-01-01T00:00:00Z", expires_at="2026-01-01T00:00:00Z"), "after"),
        (lambda: capability_token_claims(
            token_id="t", tool="x", run_id="r", step_id="s", attempt=1,
            issued_at=datetime(2026, 1, 1), expires_at="2026-01-02T00:00:00Z"), "UTC offset"),
        (lambda: capability_token_claims(
            token_id="t", tool="x", run_id="r", step_id="s", attempt=1,
            issued_at="yesterday", expires_at="2026-01-02T00:00:00Z"), "RFC 3339"),
        (lambda: custom_claims("", {}), "label"),
        (lambda: custom_claims("x", [1]), "object"),
        (lambda: custom_claims("x", {"v": math.inf}), "finite"),
        (lambda: subject_of("gate", {}), "kind"),
        (lambda: subject_of("run", {"run_id": "r"}), "missing"),
    ],
)  # fmt: skip
def test_claims_refuse_malformed(build, match):
    with pytest.raises(AttestationError, match=match):
        build()


def test_subjects_per_kind():
    step = step_claims(**step_kwargs())
    assert subject_of("step", step) == ("run/r1/step/s1/attempt/1", digest_of(step))
    run = run_claims(**run_kwargs())
    assert subject_of("run", run) == ("run/r1", digest_of(run))
    tool = tool_claims(run_id="r1", step_id="s1", tool="t", args_hash=H["a"], output_hash=None)
    assert subject_of("tool", tool) == ("run/r1/step/s1/tool/t", digest_of(tool))
    art = artifact_claims(uri="file:///x", sha256=H["c"], run_id="r1", step_id="s1")
    assert subject_of("artifact", art) == ("file:///x", H["c"])  # the content's digest
    custom = custom_claims("gate_decision", {"decision": "ALLOW"})
    assert subject_of("custom", custom) == ("custom/gate_decision", digest_of(custom))
    stmt = statement_for("artifact", art)
    assert stmt["subject"] == [{"name": "file:///x", "digest": {"sha256": H["c"]}}]
    assert stmt["predicate"] == art
    assert kind_of(stmt) == "artifact"


# --- PAE, key id, envelopes ---------------------------------------------------------------------


def test_pae_is_the_dsse_spec_vector():
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )
    assert pae("", b"") == b"DSSEv1 0  0 "
    # lengths count bytes, not characters
    assert pae("tÿpe", b"\x00\xff") == "DSSEv1 5 tÿpe 2 ".encode() + b"\x00\xff"
    body = canonical_json(a_statement())
    assert pae(PAYLOAD_TYPE, body) == Envelope(body, PAYLOAD_TYPE, {}).pae()


def test_key_id_is_sha256_of_the_raw_public_key():
    assert KEY.keyid == hashlib.sha256(KEY.raw).hexdigest()
    der = KEY.public.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    assert key_id(der[-32:]) == KEY.keyid  # the openssl recipe in the docstring
    assert KEY.keyid != OTHER.keyid
    with pytest.raises(AttestationError):
        key_id(der)


def test_envelope_shape():
    stmt = a_statement()
    env = envelope(stmt, KEY.keyid, KEY.sign)
    assert set(env) == {"payloadType", "payload", "signatures"}
    assert env["payloadType"] == PAYLOAD_TYPE == "application/vnd.in-toto+json"
    assert base64.b64decode(env["payload"], validate=True) == canonical_json(stmt)
    [sig] = env["signatures"]
    assert sig["keyid"] == KEY.keyid
    raw = base64.b64decode(sig["sig"], validate=True)
    KEY.public.verify(raw, pae(PAYLOAD_TYPE, canonical_json(stmt)))  # raises if bad
    assert envelope_json(env) == canonical_json(env).decode()
    # securesystemslib reads and writes the same envelope
    assert Envelope.from_dict(json.loads(envelope_json(env))).to_dict() == env


def test_envelope_refuses_a_malformed_statement():
    stmt = a_statement() | {"_type": "https://in-toto.io/Statement/v0.1"}
    with pytest.raises(AttestationError, match="_type"):
        envelope(stmt, KEY.keyid, KEY.sign)
    with pytest.raises(AttestationError, match="keyid"):
        envelope(a_statement(), "", KEY.sign)


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_verifies_with_both_verifiers(kind):
    claims = {
        "run": run_claims(**run_kwargs()),
        "step": step_claims(**step_kwargs()),
        "tool": tool_claims(run_id="r", step_id="s", tool="t", args_hash=H["a"], output_hash=None),
        "artifact": artifact_claims(uri="file:///x", sha256=H["c"], run_id="r"),
        "capability_token": capability_token_claims(
            token_id="cap", tool="t", run_id="r", step_id="s", attempt=1,
            issued_at="2026-01-01T00:00:00+00:00", expires_at="2026-01-01T00:01:00+00:00"),
        "custom": custom_claims("gate_decision", {"decision": "DENY", "reasons": ["x"]}),
    }[kind]  # fmt: skip
    text = signed(statement_for(kind, claims))
    verified = verify_envelope(text, KEY.verify, KEY.keyid)
    assert verified.errors == ()
    assert verified.ok
    assert verified.kind == kind
    assert verified.statement == statement_for(kind, claims)
    assert verified.digest == digest_of(statement_for(kind, claims)) == attestation_digest(text)
    assert sslib_verifies(text)


def test_signing_is_deterministic():
    first = signed(a_statement())
    assert signed(a_statement()) == first
    # the statement's key order does not matter: the payload is canonical
    reordered = dict(reversed(list(a_statement().items())))
    assert signed(reordered) == first
    assert signed(a_statement(), OTHER) != first


def test_verify_envelope_takes_the_parsed_envelope_too():
    env = envelope(a_statement(), KEY.keyid, KEY.sign)
    assert verify_envelope(env, KEY.verify, KEY.keyid).ok


@pytest.mark.parametrize("position", [0, 10, 100, -1])
def test_a_flipped_payload_byte_fails_both_verifiers(position):
    text = signed(a_statement())
    payload = bytearray(payload_of(text))
    payload[position] ^= 0x01
    tampered = with_payload(text, bytes(payload))
    assert not ours_verifies(tampered)
    assert not sslib_verifies(tampered)
    assert ours_verifies(text)
    assert sslib_verifies(text)


@pytest.mark.parametrize("position", [0, 31, 32, 63])
def test_a_flipped_signature_byte_fails_both_verifiers(position):
    text = signed(a_statement())
    env = json.loads(text)
    sig = bytearray(base64.b64decode(env["signatures"][0]["sig"]))
    sig[position] ^= 0x80
    env["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    tampered = json.dumps(env)
    errors = verify_envelope(tampered, KEY.verify, KEY.keyid).errors
    assert errors == (f"signatures: the signature by key {KEY.keyid!r} does not verify",)
    assert not sslib_verifies(tampered)


def test_the_payload_type_is_signed():
    text = signed(a_statement())
    env = json.loads(text)
    env["payloadType"] = "application/json"
    tampered = json.dumps(env)
    assert not sslib_verifies(tampered)
    errors = verify_envelope(tampered, KEY.verify, KEY.keyid).errors
    assert any("payloadType" in e for e in errors)
    assert any("does not verify" in e for e in errors)


def test_another_key_does_not_verify():
    text = signed(a_statement())
    errors = verify_envelope(text, OTHER.verify, OTHER.keyid).errors
    assert errors == (f"signatures: none by key {OTHER.keyid!r}",)
    # a signature claiming the key's id but made with another key
    forged = envelope(a_statement(), KEY.keyid, OTHER.sign)
    assert not verify_envelope(forged, KEY.verify, KEY.keyid).ok
    assert not sslib_verifies(envelope_json(forged))


def test_a_verifier_that_raises_counts_as_a_bad_signature():
    def broken(signature: bytes, message: bytes) -> bool:
        raise RuntimeError("hsm offline")

    assert not verify_envelope(signed(a_statement()), broken, KEY.keyid).ok


def _resigned(text_or_stmt: Any, payload: bytes | None = None) -> str:
    """An envelope validly signed by KEY over arbitrary payload bytes."""
    body = payload if payload is not None else canonical_json(text_or_stmt)
    sig = KEY.sign(pae(PAYLOAD_TYPE, body))
    return json.dumps({
        "payloadType": PAYLOAD_TYPE,
        "payload": base64.b64encode(body).decode(),
        "signatures": [{"keyid": KEY.keyid, "sig": base64.b64encode(sig).decode()}],
    })  # fmt: skip


def _bad(**changes: Any) -> dict[str, Any]:
    stmt = a_statement()
    for key, value in changes.items():
        if value is KeyError:
            del stmt[key]
        else:
            stmt[key] = value
    return stmt


@pytest.mark.parametrize(
    ("stmt", "match"),
    [
        (_bad(_type="https://in-toto.io/Statement/v0.1"), "_type"),
        (_bad(_type=KeyError), "_type"),
        (_bad(subject=[]), "subject"),
        (_bad(subject={"name": "x"}), "subject"),
        (_bad(subject=[{"digest": {"sha256": H["a"]}}]), "name"),
        (_bad(subject=[{"name": "x", "digest": {"sha512": H["a"]}}]), "sha256"),
        (_bad(subject=[{"name": "x", "digest": {"sha256": H["a"][:63]}}]), "sha256"),
        (_bad(predicateType="https://slsa.dev/provenance/v1"), "predicateType"),
        (_bad(predicate=[1]), "predicate"),
        (_bad(predicate={"tool": "x"}), "miss"),
    ],
)
def test_verify_envelope_checks_the_statement(stmt, match):
    text = _resigned(stmt)
    verified = verify_envelope(text, KEY.verify, KEY.keyid)
    assert any(match in e for e in verified.errors), verified.errors


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("not json", "not JSON"),
        ("[1]", "object"),
        ('{"payloadType": "a", "payloadType": "b"}', "duplicate"),
        (json.dumps({"payloadType": PAYLOAD_TYPE, "payload": "!!", "signatures": []}), "base64"),
        (json.dumps({"payloadType": PAYLOAD_TYPE, "payload": "e30=", "signatures": []}),
         "signatures"),
        (json.dumps({"payloadType": PAYLOAD_TYPE, "payload": "e30=",
                     "signatures": [{"keyid": 1, "sig": "x"}]}), "signatures[0]"),
        (json.dumps({"payloadType": PAYLOAD_TYPE, "payload": "e30=",
                     "signatures": [{"keyid": "k", "sig": "*"}]}), "not base64"),
        (_resigned(None, b"[1, 2]"), "payload: must be a JSON object"),
        (_resigned(None, b"{NaN"), "payload: not JSON"),
        (_resigned(None, b'{"a": NaN}'), "payload: not JSON"),
        (_resigned(None, json.dumps(a_statement()).encode()), "canonical"),
        (_resigned(None, b'{"_type": 1, "_type": 2}'), "duplicate"),
    ],
)  # fmt: skip
def test_verify_envelope_reports_malformed_envelopes(text, match):
    verified = verify_envelope(text, KEY.verify, KEY.keyid)
    assert not verified.ok
    assert any(match in e for e in verified.errors), verified.errors


def test_url_safe_base64_is_accepted_as_dsse_allows():
    stmt = _bad(subject=[{"name": "ÿÿÿ>>>???", "digest": {"sha256": H["f"]}}])
    text = signed(stmt)
    env = json.loads(text)
    env["payload"] = base64.urlsafe_b64encode(payload_of(text)).decode()
    assert env["payload"] != json.loads(text)["payload"]  # the alphabet mattered
    assert verify_envelope(json.dumps(env), KEY.verify, KEY.keyid).ok


# --- the hash chain -----------------------------------------------------------------------------


def build_run(n_steps: int = 4, run_id: str = "r1", key: Key = KEY) -> tuple[list[str], str]:
    """What the attestor does: step attestations chained in order, then the run's."""
    steps: list[str] = []
    previous = None
    for i in range(n_steps):
        claims = step_claims(**step_kwargs(run_id=run_id, step_id=f"s{i}", previous=previous,
                                           index=i))  # fmt: skip
        stmt = statement_for("step", claims)
        steps.append(signed(stmt, key))
        previous = digest_of(stmt)
    run = run_claims(**run_kwargs(run_id=run_id, previous=previous, chain_length=n_steps,
                                  step_count=n_steps))  # fmt: skip
    return steps, signed(statement_for("run", run), key)


def test_an_intact_chain_verifies():
    steps, run = build_run()
    assert verify_chain(steps, run) == ()
    assert verify_chain(steps, run, verify=KEY.verify, expected_keyid=KEY.keyid) == ()
    assert [attestation_digest(s) for s in steps[:-1]] == [
        verify_envelope(s, KEY.verify, KEY.keyid).statement["predicate"]["previous"]
        for s in steps[1:]
    ]


@pytest.mark.parametrize("given", [(0,), (2,), (1, 2), (0, 1, 2, 3)], ids=str)
def test_a_stretch_of_a_chain_without_its_run_attestation_verifies(given):
    # one step attestation, or a run's so far: the links between them (each was "index is 2,
    # expected 0" when the stretch did not start the chain)
    steps, _ = build_run()
    assert verify_chain([steps[i] for i in given], None, run_id="r1") == ()


@pytest.mark.parametrize(("given", "said"), [((0, 2), "index is 2, expected 1"),
                                             ((1, 3), "index is 3, expected 2"),
                                             ((2, 1), "index is 1, expected 3")])  # fmt: skip
def test_a_gap_or_a_swap_in_a_stretch_without_its_run_attestation_is_detected(given, said):
    steps, _ = build_run()
    errors = verify_chain([steps[i] for i in given], None, run_id="r1")
    assert any(said in e for e in errors), errors
    assert any("previous is" in e for e in errors), errors


def test_an_empty_chain_verifies():
    steps, run = build_run(0)
    assert steps == []
    assert verify_chain([], run) == ()
    assert json.loads(payload_of(run))["predicate"]["previous"] is None


@pytest.mark.parametrize("removed", [0, 1, 3])
def test_a_removed_step_attestation_is_detected(removed):
    steps, run = build_run()
    del steps[removed]
    errors = verify_chain(steps, run)
    assert errors
    assert any("chain_length" in e for e in errors)
    if removed == 3:
        assert any("run attestation: previous" in e for e in errors)
    else:
        assert any(f"step attestation {removed} " in e and "previous" in e for e in errors)


def test_swapped_step_attestations_are_detected():
    steps, run = build_run()
    steps[1], steps[2] = steps[2], steps[1]
    errors = verify_chain(steps, run)
    assert any("step attestation 1 ('s2'): index is 2" in e for e in errors)
    assert any("step attestation 2 ('s1'): previous" in e for e in errors)


def test_an_inserted_step_attestation_is_detected():
    steps, run = build_run()
    steps.insert(2, steps[1])
    assert verify_chain(steps, run)
    foreign, _ = build_run(run_id="r2")
    mixed = [*steps[:2], foreign[2], *steps[3:]]
    assert any("belongs to run 'r2'" in e for e in verify_chain(mixed, run))


@pytest.mark.parametrize("altered", [0, 2, 3])
def test_an_altered_and_resigned_step_attestation_is_detected(altered):
    """Even with the key, a changed step breaks the next link (or the run's)."""
    steps, run = build_run()
    stmt = json.loads(payload_of(steps[altered]))
    stmt["predicate"]["usage"]["tokens_out"] += 1
    steps[altered] = signed(stmt)
    assert ours_verifies(steps[altered])  # validly signed on its own
    errors = verify_chain(steps, run, verify=KEY.verify, expected_keyid=KEY.keyid)
    if altered == 3:
        assert any(e.startswith("run attestation: previous") for e in errors)
    else:
        assert any(f"step attestation {altered + 1} " in e and "previous" in e for e in errors)


def test_an_altered_unsigned_step_attestation_fails_its_signature():
    steps, run = build_run()
    payload = payload_of(steps[1]).replace(b'"tokens_out":4', b'"tokens_out":5')
    steps[1] = with_payload(steps[1], payload)
    errors = verify_chain(steps, run, verify=KEY.verify, expected_keyid=KEY.keyid)
    assert any(e.startswith("step attestation 1: signatures:") for e in errors)
    assert any("step attestation 2 ('s2'): previous" in e for e in errors)


def test_the_run_attestation_must_close_the_chain():
    steps, run = build_run()
    wrong_length = signed(statement_for("run", run_claims(**run_kwargs(
        previous=attestation_digest(steps[-1]), chain_length=3))))  # fmt: skip
    assert verify_chain(steps, wrong_length) == (
        "run attestation: chain_length is 3, but 4 step attestations were given",
    )
    not_a_run = steps[0]
    assert any("not a run attestation" in e for e in verify_chain(steps, not_a_run))
    assert any("not a step attestation" in e for e in verify_chain([run, *steps[1:]], run))


def test_verify_chain_reports_an_unreadable_envelope_and_the_signature_key():
    steps, run = build_run()
    steps[2] = "garbage"
    errors = verify_chain(steps, run)
    assert any(e.startswith("step attestation 2: envelope: not JSON") for e in errors)
    other_steps, other_run = build_run(key=OTHER)
    assert verify_chain(other_steps, other_run) == ()  # the links hold
    errors = verify_chain(other_steps, other_run, verify=KEY.verify, expected_keyid=KEY.keyid)
    assert len(errors) == 5
    assert all("none by key" in e for e in errors)
    with pytest.raises(AttestationError):
        verify_chain(steps, run, verify=KEY.verify)


def test_attestation_digest_is_the_statement_digest():
    stmt = a_statement()
    text = signed(stmt)
    assert attestation_digest(text) == sha256_hex(payload_of(text)) == digest_of(stmt)
    assert attestation_digest(json.loads(text)) == digest_of(stmt)
    with pytest.raises(AttestationError):
        attestation_digest("{}")
