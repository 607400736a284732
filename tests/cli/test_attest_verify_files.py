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
from foundry.kernel.core.attest import PREDICATE_TYPES


def _envelope(kind: str, predicate: object) -> str:
    statement = {"_type": "https://in-toto.io/Statement/v1", "subject": [],
                 "predicateType": PREDICATE_TYPES[kind], "predicate": predicate}  # fmt: skip
    payload = base64.b64encode(json.dumps(statement).encode()).decode()
    return json.dumps({"payloadType": "application/vnd.in-toto+json", "payload": payload,
                       "signatures": [{"keyid": "x", "sig": "AAAA"}]})  # fmt: skip


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
