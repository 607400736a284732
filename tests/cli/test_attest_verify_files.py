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
