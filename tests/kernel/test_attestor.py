"""The attestor's pieces in process: the key pair's permissions, and statements built from facts
alone (the same facts always make the same envelope)."""

from __future__ import annotations

import json
import math
import os
from datetime import UTC, datetime

import pytest
from foundry.kernel.actors.attestor import keys
from foundry.kernel.actors.attestor.messages import Attest
from foundry.kernel.actors.attestor.statements import Chain, Signer
from foundry.kernel.core.attest import (
    AttestationError,
    attestation_digest,
    canonical_json,
    key_id,
    verify_chain,
)
from foundry.kernel.core.attest_records import canonical, json_digest, run_attestation_id
from foundry.kernel.core.runs import RunEventRecord
from foundry.kernel.errors import ConfigError
from hypothesis import given

from tests.helpers import JSON

AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_keys_are_created_owner_only_once_and_reloaded(tmp_path):
    first = keys.load_or_create(tmp_path)
    folder = tmp_path / "keys"
    assert oct(os.stat(folder / "attestor.key").st_mode & 0o777) == "0o600"
    assert oct(os.stat(folder).st_mode & 0o777) == "0o700"
    assert keys.load_or_create(tmp_path).public_raw == first.public_raw
    assert (folder / "attestor.pub").read_text() == first.public_pem


@pytest.mark.parametrize(("target", "mode", "needle"), [
    ("keys/attestor.key", 0o644, "0644"), ("keys/attestor.key", 0o640, "0640"),
    ("keys", 0o777, "0777"),
])  # fmt: skip
def test_a_loose_key_or_folder_is_refused_naming_the_file_and_mode(tmp_path, target, mode, needle):
    keys.load_or_create(tmp_path)
    (tmp_path / target).chmod(mode)
    with pytest.raises(ConfigError) as refused:
        keys.load_or_create(tmp_path)
    message = str(refused.value)
    assert str(tmp_path / target) in message
    assert needle in message
    assert "\n" not in message


def _event(seq: int, name: str, step_id: str = "", /, **payload: object) -> RunEventRecord:
    return RunEventRecord("run_x", seq, step_id, name, payload, AT)


def _notices() -> list[Attest]:
    submitted = _event(1, "run_submitted", steps=2, seed=7)
    notices, events = [], [submitted]
    for step_id, output in (("a", {"n": 1}), ("b", {"n": 2.0})):
        seq = len(events) + 1
        leased = _event(seq, "step_leased", step_id, attempt=1, inputs={"x": 1}, seed=3, model="")
        usage = {"tokens_in": 1, "tokens_out": 2, "cost": 0.5}
        done = _event(
            seq + 1, "step_completed", step_id, attempt=1, output=output, usage=usage, artifacts=[]
        )
        attestation_id = run_attestation_id("run_x", seq + 2)
        note = _event(
            seq + 2, "attested", step_id, kind="step", block="noop",
            attestation_id=attestation_id, of=[seq, seq + 1],
        )  # fmt: skip
        events += [leased, done, note]
        notices.append(Attest(note, (leased, done)))
    run_note = _event(
        len(events) + 1, "attested", kind="run", outcome="run_succeeded",
        spec_hash="0" * 64, attestation_id=run_attestation_id("run_x", 99),
    )  # fmt: skip
    notices.append(Attest(run_note, tuple(events)))
    return notices


def _sign_all(signer: Signer) -> list[str]:
    chain = Chain()
    return [signer.record(n, chain).envelope for n in _notices()]


def test_the_same_facts_make_the_same_envelopes_and_a_valid_chain(tmp_path):
    pair = keys.load_or_create(tmp_path)
    signer = Signer(pair.private.sign, key_id(pair.public_raw), "1.0")
    first, again = _sign_all(signer), _sign_all(signer)
    assert first == again  # Ed25519 is deterministic, the statements canonical
    *steps, run = first
    assert verify_chain(steps, run) == ()
    claims = json.loads(__import__("base64").b64decode(json.loads(steps[1])["payload"]))
    assert claims["predicate"]["previous"] == attestation_digest(steps[0])
    assert claims["predicate"]["output_hash"] == json_digest({"n": 2})  # 2.0 hashes as 2
    assert verify_chain([steps[1], steps[0]], run)  # swapped: broken


@pytest.mark.parametrize(
    "claims",
    [
        {"label": "gate_decision", "claims": {"gate_id": "g", "reasons": ["a", "b"], "x": 1.5}},
        {"label": "eval_result", "claims": {"text": "otters ü €", "n": 10**20, "f": 1e-07}},
        {"label": "custom", "claims": {"\U0001f600": 1, "\ufb01": 2, "z": [None, True, -0.0]}},
    ],
)
def test_the_fast_envelope_is_byte_identical_to_the_core_one(tmp_path, claims):
    from foundry.kernel.core.attest import envelope, envelope_json, statement_for
    from foundry.kernel.core.attest_records import signed_envelope

    pair = keys.load_or_create(tmp_path)
    kid = key_id(pair.public_raw)
    built = custom_claims_of(claims)
    stmt, text, digest = signed_envelope("custom", built, kid, pair.private.sign)
    assert stmt == statement_for("custom", built)
    assert text == envelope_json(envelope(statement_for("custom", built), kid, pair.private.sign))
    assert digest == attestation_digest(text)


def custom_claims_of(claims: dict[str, object]) -> dict[str, object]:
    from foundry.kernel.core.attest import custom_claims

    return custom_claims(str(claims["label"]), claims["claims"])  # type: ignore[arg-type]


def test_the_fast_envelope_matches_the_core_one_for_every_run_kind(tmp_path):
    from foundry.kernel.core.attest import envelope, envelope_json, statement_for

    pair = keys.load_or_create(tmp_path)
    signer = Signer(pair.private.sign, key_id(pair.public_raw), "1.0")
    chain = Chain()
    for notice in _notices():
        record = signer.record(notice, chain)
        core = envelope_json(envelope(statement_for(record.kind, record.claims), signer.keyid,
                                      pair.private.sign))  # fmt: skip
        assert record.envelope == core


@given(JSON)
def test_the_fast_canonical_encoding_is_the_core_one_byte_for_byte(value):
    # st.text() draws characters beyond U+FFFF too: keys the two orders sort differently.
    assert canonical(value) == canonical_json(value)


@pytest.mark.parametrize(
    "value",
    [{"\uffff": 1, "\U0001f600": 2, "a": 3}, ["\x00\x1f\x7f", '"\\'], {"ü": ["€", 1e-07, -0.0]}],
)
def test_the_fast_canonical_encoding_matches_on_the_hard_cases(value):
    assert canonical(value) == canonical_json(value)


@pytest.mark.parametrize("value", [math.nan, {"x": math.inf}, "\ud800", {"\udfff": 1}, {1, 2}])
def test_the_fast_canonical_encoding_refuses_what_the_core_one_refuses(value):
    with pytest.raises(AttestationError):
        canonical(value)


def test_a_step_with_an_awkward_id_still_makes_the_core_envelope(tmp_path):
    from foundry.kernel.core.attest import envelope, envelope_json, statement_for

    pair = keys.load_or_create(tmp_path)
    signer = Signer(pair.private.sign, key_id(pair.public_raw), "1.0")
    step_id = 'q"\\ü\U0001f600\x01'
    leased = _event(1, "step_leased", step_id, attempt=1, inputs={"é": [1.0]}, seed=3, model="m")
    usage = {"tokens_in": 1, "tokens_out": 2, "cost": 0.25}
    done = _event(2, "step_completed", step_id, attempt=1, output={"\U0001f600": "x"}, usage=usage)
    note = _event(3, "attested", step_id, kind="step", block="b", attestation_id="att_1", of=[1, 2])
    record = signer.record(Attest(note, (leased, done)), Chain())
    core = envelope_json(envelope(statement_for("step", record.claims), signer.keyid,
                                  pair.private.sign))  # fmt: skip
    assert record.envelope == core
    assert record.subject["name"] == f"run/run_x/step/{step_id}/attempt/1"
