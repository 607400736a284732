"""``foundry attest verify FILE`` on hostile files: each is INVALID with its reasons (exit 1,
``--json`` kept), never a traceback — a JSON object without an envelope, bytes that are not
UTF-8, a run's or step's statement whose predicate is no object. Found by a hostile-input hunt."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from foundry.kernel.core.attest import (
    PREDICATE_TYPES,
    attestation_digest,
    envelope,
    key_id,
    statement_for,
    step_claims,
)

from tests.helpers import cli_with_reader_gone


def _envelope(kind: str, predicate: object) -> str:
    statement = {"_type": "https://in-toto.io/Statement/v1", "subject": [],
                 "predicateType": PREDICATE_TYPES[kind], "predicate": predicate}  # fmt: skip
    payload = base64.b64encode(json.dumps(statement).encode()).decode()
    return json.dumps({"payloadType": "application/vnd.in-toto+json", "payload": payload,
                       "signatures": [{"keyid": "x", "sig": "AAAA"}]})  # fmt: skip


def _signed_step(
    statement_changes: dict[str, object], envelope_changes: dict[str, object], keyid: str = "x"
) -> str:
    """A step attestation's envelope with parts of its statement and envelope replaced."""
    statement = {"_type": "https://in-toto.io/Statement/v1",
                 "subject": [{"name": "run/r/step/s/attempt/1", "digest": {"sha256": "0" * 64}}],
                 "predicateType": PREDICATE_TYPES["step"], "predicate": {}}  # fmt: skip
    statement.update(statement_changes)
    payload = base64.b64encode(json.dumps(statement).encode()).decode()
    made = {"payloadType": "application/vnd.in-toto+json", "payload": payload,
            "signatures": [{"keyid": keyid, "sig": "AAAA"}]}  # fmt: skip
    made.update(envelope_changes)
    return json.dumps(made)


# A verifier runs on files someone else made (found by a hunt of the offline tools): a lone
# surrogate in payloadType was a traceback; 400,000 signatures, a million subjects took minutes
# and gigabytes; a 50 MB payloadType made a 100 MB reason.
_HOSTILE_PARTS = [
    pytest.param({}, {"payloadType": "\udfffapplication/vnd.in-toto+json"},
                 "payloadType: must be", id="a lone surrogate in payloadType"),
    pytest.param({}, {"signatures": [{"keyid": "x", "sig": "AAAA"}] * 20_000},
                 "signatures: 20,000 of them, more than 16", id="many signatures"),
    pytest.param({"subject": [{"name": "n", "digest": {"sha256": "0" * 64}}] * 5_000}, {},
                 "subject: 5,000 subjects, more than 1000", id="many subjects"),
    pytest.param({}, {"payloadType": "x" * 1_000_000}, "… (1,000,002 chars)",
                 id="a huge payloadType"),
]  # fmt: skip


@pytest.mark.parametrize(("statement", "changes", "reason"), _HOSTILE_PARTS)
def test_a_hostile_envelope_is_invalid_by_a_short_reason(tmp_path, statement, changes, reason):
    _, keyid, pubkey = _key_files(tmp_path)  # (a signature by the key: it is checked)
    target = tmp_path / "envelopes.jsonl"
    target.write_text(_signed_step(statement, changes, keyid))
    done = _verify(tmp_path, str(target), str(pubkey))
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert reason in done.stdout
    assert max(map(len, done.stdout.splitlines())) < 2_000


@pytest.mark.parametrize("shape", ["lines", "a JSON array"])
def test_a_file_of_more_envelopes_than_an_export_has_is_one_line(tmp_path, shape):
    """A million lines of one byte each were checked one by one, for minutes (a hunt); so were
    the items of an array (a review)."""
    pubkey = tmp_path / "key.pem"
    pubkey.write_bytes(Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))  # fmt: skip
    target = tmp_path / "many.jsonl"
    many = 1_500_001
    target.write_bytes(b"x\n" * many if shape == "lines" else b"[" + b"{}," * (many - 1) + b"{}]")
    done = _verify(tmp_path, str(target), str(pubkey))
    assert done.returncode == 2, done.stderr
    assert "more than 1,500,000" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_ec_key_on_a_curve_openssl_does_not_know_is_no_ed25519_key(tmp_path):
    """brainpoolP160r1: cryptography's UnsupportedAlgorithm was a traceback (a hunt)."""
    pubkey = tmp_path / "key.pem"
    pubkey.write_text(  # openssl ecparam -name brainpoolP160r1 -genkey | openssl ec -pubout
        "-----BEGIN PUBLIC KEY-----\n"
        "MEIwFAYHKoZIzj0CAQYJKyQDAwIIAQEBAyoABLHE3Y7ACpRXovPxnBj1SDRrAGb5\n"
        "VLYQxd4/71yAzFafbEewlbNd5js=\n"
        "-----END PUBLIC KEY-----\n"
    )
    target = tmp_path / "envelopes.jsonl"
    target.write_text(_signed_step({}, {}))
    done = _verify(tmp_path, str(target), str(pubkey))
    assert done.returncode == 2, done.stderr
    assert "not an Ed25519 public key" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b'{"not": "an envelope"}', id="an object without an envelope"),
        # an export that failed wrote nothing: "valid", exit 0, with nothing verified
        pytest.param(b"", id="an empty file"),
        pytest.param(b"\n  \n", id="blank lines"),
        pytest.param(b"\xff\xfe\x00 not utf-8\n", id="bytes that are not UTF-8"),
        pytest.param(_envelope("run", [1, 2]).encode(), id="a run predicate that is a list"),
        pytest.param(
            _envelope("step", "text").encode() + b"\n" + _envelope("run", {}).encode(),
            id="a step predicate that is a string",
        ),  # fmt: skip
        # a run id that is no text was a set's key: a traceback (found by an attestation hunt)
        pytest.param(_envelope("step", {"run_id": ["a"]}).encode(), id="a list for a run id"),
        pytest.param(
            _envelope("step", {"run_id": {"a": 1}}).encode()
            + b"\n"
            + _envelope("run", {"run_id": {"a": 1}}).encode(),
            id="an object for a run id",
        ),  # fmt: skip
    ],
)
def test_a_hostile_file_is_invalid_with_reasons_not_a_traceback(tmp_path, content):
    pubkey = tmp_path / "key.pem"
    pubkey.write_bytes(Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))  # fmt: skip
    target = tmp_path / "envelopes.jsonl"
    target.write_bytes(content)
    done = subprocess.run(
        [sys.executable, "-m", "foundry.kernel.cli", "attest", "verify", str(target),
         "--pubkey", str(pubkey), "--json"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "FOUNDRY_HOME": str(tmp_path / "home")},
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    report = json.loads(done.stdout)
    assert report["valid"] is False
    assert report["problems"]


def _verify(tmp_path, target: str, pubkey: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "foundry.kernel.cli", "attest", "verify", target,
         "--pubkey", pubkey],
        capture_output=True, text=True, timeout=20,
        env={**os.environ, "FOUNDRY_HOME": str(tmp_path / "home")},
    )  # fmt: skip


@pytest.mark.parametrize("kind", ["fifo", "folder", "/dev/zero", "deep"])
def test_files_that_are_not_keys_or_envelopes_are_one_line(tmp_path, kind):
    """A FIFO blocked for good, /dev/zero filled the memory, a folder was taken for an
    attestation id ("cannot reach the daemon"), JSON nested 100,000 deep a traceback."""
    pubkey = tmp_path / "key.pem"
    pubkey.write_bytes(Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))  # fmt: skip
    odd = tmp_path / "odd"
    if kind == "fifo":
        os.mkfifo(odd)
    elif kind == "folder":
        odd.mkdir()
    elif kind == "deep":
        odd.write_text("[" * 100_000 + "]" * 100_000)
    path = "/dev/zero" if kind == "/dev/zero" else str(odd)
    for done in (_verify(tmp_path, "att_x", path), _verify(tmp_path, path, str(pubkey))):
        if kind == "deep" and "att_x" in done.args:
            continue  # a deep file as the key is no PEM, a case of its own
        assert done.returncode in (1, 2), done.stderr
        assert "Traceback" not in done.stderr
        assert done.stderr.count("\n") <= 1, done.stderr
        if kind != "deep":
            assert "not a regular file" in done.stderr, done.stderr


def _key_files(tmp_path):
    """A private key's signing function, and its public key's PEM file."""
    private = Ed25519PrivateKey.generate()
    pubkey = tmp_path / "key.pem"
    pubkey.write_bytes(private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))  # fmt: skip
    raw = private.public_key().public_bytes(serialization.Encoding.Raw,
                                            serialization.PublicFormat.Raw)  # fmt: skip
    return private.sign, key_id(raw), pubkey


def _chain(sign, keyid: str, steps: int) -> list[dict[str, object]]:
    """A run's first ``steps`` step attestations, chained, as the daemon signs them (the
    third's model makes base64's "+" and "/")."""
    made: list[dict[str, object]] = []
    previous = None
    for index in range(steps):
        claims = step_claims(
            run_id="run_a", step_id=f"s{index}", block="noop", attempt=1, tokens_in=0,
            tokens_out=0, cost=0.0, input_hash="0" * 64, seed=index,
            model="~~~>>>???" if index == 2 else None,
            previous=previous, index=index, output_hash="1" * 64,
        )  # fmt: skip
        made.append(envelope(statement_for("step", claims), keyid, sign))
        previous = attestation_digest(made[-1])
    return made


def test_an_export_in_url_safe_base64_verifies(tmp_path):
    """DSSE takes URL-safe base64 too: a genuine chain re-encoded so was INVALID ("index is 1,
    expected 0"): the chain's reader decoded the payload as standard base64, silently dropping
    its ``-`` and ``_``, and lost the step (found by an attestation hunt)."""
    sign, keyid, pubkey = _key_files(tmp_path)
    chain = _chain(sign, keyid, 6)
    lines = []
    for env in chain:
        payload = base64.b64decode(env["payload"])  # type: ignore[arg-type]
        (signature,) = env["signatures"]  # type: ignore[misc]
        lines.append(json.dumps({
            "payloadType": env["payloadType"],
            "payload": base64.urlsafe_b64encode(payload).decode(),
            "signatures": [{"keyid": keyid, "sig": base64.urlsafe_b64encode(
                base64.b64decode(signature["sig"])).decode()}],
        }))  # fmt: skip
    assert set("-_") & set(json.loads(lines[2])["payload"])  # a link in the middle
    target = tmp_path / "export.jsonl"
    target.write_text("\n".join(lines) + "\n")
    done = _verify(tmp_path, str(target), str(pubkey))
    assert done.returncode == 0, done.stdout
    assert done.stdout.startswith("valid")
    target.write_bytes("\r".join(lines).encode())  # lines ended by CR alone (a review)
    done = _verify(tmp_path, str(target), str(pubkey))
    assert done.returncode == 0, done.stdout


def test_fields_no_signature_covers_are_noted_not_taken_for_signed(tmp_path):
    """DSSE has a verifier ignore fields it does not know, so a genuine chain with an
    ``"approved_by"`` added stays valid — but it was said valid with nothing said of the field
    (nor of non-UTF-8 bytes in one), as if the verdict covered it (a hunt of the CLI)."""
    sign, keyid, pubkey = _key_files(tmp_path)
    lines = [json.dumps(env) for env in _chain(sign, keyid, 3)]
    added = json.loads(lines[1])
    added["approved_by"] = "NOT-UTF-8"
    added["signatures"][0]["note\nvalid"] = "a line of its own in the note, unescaped"
    lines[1] = json.dumps(added)
    target = tmp_path / "export.jsonl"
    target.write_bytes("\n".join(lines).encode().replace(b"NOT-UTF-8", b"\xff\xfe") + b"\n")
    done = _verify(tmp_path, str(target), str(pubkey))
    assert done.returncode == 0, done.stdout
    assert done.stdout.startswith("valid")
    assert (
        "note: envelope 2: 'approved_by', signatures[0].'note\\nvalid': not signed, "
        "ignored (as DSSE says)"
    ) in done.stderr  # fmt: skip (a key's newline escaped)
    assert "envelope 1:" not in done.stderr


def test_a_line_nested_too_deep_is_one_invalid_envelope_among_the_others(tmp_path):
    """A line of JSON nested 100,000 deep ended the whole check (exit 2) with nothing said of
    the envelopes beside it; it is one invalid envelope, named."""
    sign, keyid, pubkey = _key_files(tmp_path)
    (genuine,) = _chain(sign, keyid, 1)
    target = tmp_path / "export.jsonl"
    target.write_text(json.dumps(genuine) + "\n" + "[" * 100_000 + "\n")
    done = _verify(tmp_path, str(target), str(pubkey))
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert "envelope 2:" in done.stdout
    assert "envelope 1:" not in done.stdout


def test_an_id_too_long_for_a_file_name_is_taken_for_an_id(tmp_path):
    """``Path.is_file`` of a 300-byte name raised ENAMETOOLONG: a traceback before any
    daemon was asked. It is an attestation id (here no daemon answers: one line)."""
    _, _, pubkey = _key_files(tmp_path)
    done = _verify(tmp_path, "att_" + "x" * 300, str(pubkey))
    assert done.returncode in (1, 2), done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.count("\n") <= 1, done.stderr


@pytest.mark.parametrize("missing", ["gone/envelopes.jsonl", "envelopes.jsonl"])
def test_a_missing_file_is_said_to_be_missing_not_an_unknown_attestation(tmp_path, missing):
    """Found by a CLI hunt: a path to no file was asked of the daemon as an attestation id
    ("NOT_FOUND: no attestation '/tmp/…/envelopes.jsonl'", or "cannot reach the daemon")."""
    _, _, pubkey = _key_files(tmp_path)
    target = str(tmp_path / missing) if "/" in missing else missing
    done = _verify(tmp_path, target, str(pubkey))
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert f"{target}: no such file" in done.stderr


def test_an_invalid_verdict_stands_when_the_reader_of_the_output_is_gone(tmp_path):
    """``attest verify bad.jsonl | head -0`` exited 0: the closed pipe was taken for the end of
    the command, and its verdict lost (under ``pipefail``, INVALID counted as valid)."""
    pubkey = tmp_path / "key.pem"
    pubkey.write_bytes(Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))  # fmt: skip
    target = tmp_path / "envelopes.jsonl"
    target.write_text(_envelope("step", {"run_id": "r"}))
    code, err = cli_with_reader_gone(
        ["attest", "verify", str(target), "--pubkey", str(pubkey)],
        {**os.environ, "FOUNDRY_HOME": str(tmp_path / "home")},
    )
    assert code == 1, err
    assert "Traceback" not in err
