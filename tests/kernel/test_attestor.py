"""The attestor's pieces in process: the key pair's permissions, and statements built from facts
alone (the same facts always make the same envelope)."""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from datetime import UTC, datetime

import pytest
import trio
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
from foundry.kernel.core.attest_records import (
    canonical,
    custom_attestation_id,
    json_digest,
    run_attestation_id,
)
from foundry.kernel.core.runs import RunEventRecord
from foundry.kernel.errors import ConfigError, NotFound, Unavailable
from hypothesis import given
from hypothesis import strategies as st

from tests.helpers import JSON

AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_keys_are_created_owner_only_once_and_reloaded(tmp_path):
    first = keys.load_or_create(tmp_path)
    folder = tmp_path / "keys"
    assert oct(os.stat(folder / "attestor.key").st_mode & 0o777) == "0o600"
    assert oct(os.stat(folder).st_mode & 0o777) == "0o700"
    assert keys.load_or_create(tmp_path).public_raw == first.public_raw
    assert (folder / "attestor.pub").read_text() == first.public_pem


def test_a_keys_folder_the_daemon_cannot_write_in_is_one_line_naming_the_file(tmp_path):
    """(A folder it may not search or write: a traceback, exit 1.) Root writes anywhere: a
    folder where the key is staged stands in for the refusal."""
    (tmp_path / "keys").mkdir(mode=0o700)
    (tmp_path / "keys" / "attestor.key.new").mkdir()
    with pytest.raises(ConfigError, match=r"attestor\.key\.new: the signing key cannot be used"):
        keys.load_or_create(tmp_path)


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


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
@pytest.mark.parametrize("target", ["keys/attestor.key", "keys"])
def test_a_key_or_folder_another_user_owns_is_refused(tmp_path, target):
    """Its owner could replace the signing key: the start went on (an attestation hunt)."""
    keys.load_or_create(tmp_path)
    os.chown(tmp_path / target, 65534, 65534)
    with pytest.raises(ConfigError, match="owned by uid 65534") as refused:
        keys.load_or_create(tmp_path)
    assert str(tmp_path / target) in str(refused.value)


@pytest.mark.parametrize("name", ["attestor.key", "attestor.pub"])
def test_a_fifo_in_a_keys_place_is_refused_not_waited_on(tmp_path, name):
    """A named pipe (mode 0600) as attestor.key, or as attestor.pub, held the start for good,
    with no word."""
    keys.load_or_create(tmp_path)
    key = tmp_path / "keys" / name
    key.unlink()
    os.mkfifo(key, 0o600)
    with pytest.raises(ConfigError, match="not a regular file") as refused:
        keys.load_or_create(tmp_path)
    assert str(key) in str(refused.value)


def test_a_key_linked_from_a_folder_anyone_may_write_is_refused(tmp_path):
    """A link to a 0600 key in a 0777 folder passed: anyone could replace what it names."""
    made = keys.load_or_create(tmp_path / "made")
    loose = tmp_path / "loose"
    loose.mkdir()
    loose.chmod(0o777)
    shutil.copyfile(tmp_path / "made" / "keys" / "attestor.key", loose / "attestor.key")
    (loose / "attestor.key").chmod(0o600)
    folder = tmp_path / "home" / "keys"
    folder.mkdir(parents=True, mode=0o700)
    (folder / "attestor.key").symlink_to(loose / "attestor.key")
    with pytest.raises(ConfigError, match="lets others write") as refused:
        keys.load_or_create(tmp_path / "home")
    assert str(loose) in str(refused.value)
    loose.chmod(0o700)  # its real folder owner-only: a linked key is fine
    assert keys.load_or_create(tmp_path / "home").public_raw == made.public_raw


def test_a_first_start_killed_while_writing_the_public_key_leaves_a_home_that_starts(tmp_path):
    """Killed between the public key file's creation and its write, a first start left it
    empty: every later start refused it as damaged (a hunt). The start here is a real process,
    killed (SIGKILL) as it makes the public key's bytes durable."""
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from foundry.kernel.actors.attestor import keys
        calls = []
        real = os.fsync
        def fsync(fd):
            calls.append(fd)
            if len(calls) == 2:  # the private key's, then the public key's
                os.kill(os.getpid(), signal.SIGKILL)
            real(fd)
        os.fsync = fsync
        keys.load_or_create(Path({str(tmp_path)!r}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr
    folder = tmp_path / "keys"
    assert (folder / "attestor.key").stat().st_size > 0
    assert not (folder / "attestor.pub").exists()  # not there at all rather than empty
    made = keys.load_or_create(tmp_path)
    assert (folder / "attestor.pub").read_text() == made.public_pem


def test_a_public_key_written_short_fails_the_start_and_is_not_put_in_place(tmp_path):
    """A write past a file size limit (a quota, a nearly full disk) is short, then fails: the
    short public key was renamed into place, and every later start refused it (a review)."""
    keys.load_or_create(tmp_path)
    public = tmp_path / "keys" / "attestor.pub"
    public.unlink()  # made again from the signing key at the next start
    script = textwrap.dedent(f"""
        import resource, signal
        from pathlib import Path
        from foundry.kernel.actors.attestor import keys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (60, 60))
        keys.load_or_create(Path({str(tmp_path)!r}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert done.returncode == 1
    assert "the signing key cannot be used: File too large" in done.stderr
    assert not public.exists()
    assert keys.load_or_create(tmp_path).public_pem == public.read_text()


def test_a_damaged_public_key_refuses_the_start_not_made_again(tmp_path):
    """A damaged attestor.pub was made again from whatever key was beside it: a key put in
    its place then went unnoticed (the check needs the old public key)."""
    keys.load_or_create(tmp_path)
    public = tmp_path / "keys" / "attestor.pub"
    public.write_text("garbage")
    with pytest.raises(ConfigError, match="cannot be read as the public key") as refused:
        keys.load_or_create(tmp_path)
    assert str(public) in str(refused.value)
    assert public.read_text() == "garbage"  # kept for its owner to look at
    public.unlink()  # gone: made again from the signing key, as on the first start
    assert keys.load_or_create(tmp_path).public_pem == public.read_text()


def test_a_signing_key_replaced_in_place_is_refused_not_its_public_key_overwritten(tmp_path):
    # a valid 0600 key copied over attestor.key was taken silently, and attestor.pub, which
    # every earlier attestation verifies with, rewritten to the new key
    first = keys.load_or_create(tmp_path)
    other = keys.load_or_create(tmp_path / "elsewhere")
    folder = tmp_path / "keys"
    shutil.copyfile(tmp_path / "elsewhere" / "keys" / "attestor.key", folder / "attestor.key")
    with pytest.raises(ConfigError, match="the signing key was replaced") as refused:
        keys.load_or_create(tmp_path)
    assert str(folder / "attestor.key") in str(refused.value)
    assert (folder / "attestor.pub").read_text() == first.public_pem  # kept
    (folder / "attestor.pub").rename(folder / "old.pub")  # a rotation, made explicit
    assert keys.load_or_create(tmp_path).public_raw == other.public_raw


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
            seq + 1, "step_completed", step_id, attempt=1, output=output, usage=usage,
            artifacts=[], attestation_id=run_attestation_id("run_x", seq + 1), block="noop",
        )  # fmt: skip
        events += [leased, done]
        notices.append(Attest(done, (leased, done)))  # the completion announces it
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


# --- the step template, the records' JSON texts --------------------------------------------------

STEP_TEXT = st.text(min_size=1, max_size=12)


@given(
    run_id=STEP_TEXT, step_id=STEP_TEXT, block=STEP_TEXT, model=st.none() | STEP_TEXT,
    attempt=st.integers(0, 2**70), index=st.integers(0, 2**70), seed=st.none() | st.integers(),
    tokens=st.tuples(st.integers(0, 2**40), st.integers(0, 2**40)),
    cost=st.floats(0, 1e30, allow_nan=False, allow_infinity=False),
    first=st.booleans(),
)  # fmt: skip
def test_the_step_template_is_the_canonical_encoding(
    run_id, step_id, block, model, attempt, index, seed, tokens, cost, first
):
    from foundry.kernel.core.attest import step_claims
    from foundry.kernel.core.attest_records import step_claims_json

    claims = step_claims(
        run_id=run_id, step_id=step_id, block=block, attempt=attempt, tokens_in=tokens[0],
        tokens_out=tokens[1], cost=cost, input_hash="a" * 64, seed=seed, model=model,
        previous=None if first else "b" * 64, index=0 if first else index + 1,
        output_hash=None if first else "c" * 64,
    )  # fmt: skip
    try:
        expected = canonical_json(claims)
    except AttestationError:  # a lone surrogate: the template gives up too
        assert step_claims_json(claims) is None
        return
    assert step_claims_json(claims) == expected


def test_the_step_template_leaves_other_shapes_to_the_general_encoding():
    from foundry.kernel.core.attest_records import step_claims_json

    record = Signer(lambda m: b"s" * 64, "k", "1").record(_notices()[0], Chain())
    claims = json.loads(record.claims_json)
    assert step_claims_json(claims) == canonical_json(claims)
    assert step_claims_json({**claims, "extra": 1}) is None
    assert step_claims_json({**claims, "attempt": True}) is None
    assert step_claims_json({**claims, "usage": {**claims["usage"], "cost": 1}}) is None


def test_a_signed_record_is_frozen_and_carries_its_canonical_json(tmp_path):
    from types import MappingProxyType

    from foundry.kernel.actors.store.tables import _attestation_row
    from foundry.kernel.core.attest_records import AttestationRecord, stored_record
    from foundry.kernel.core.governance import json_text

    pair = keys.load_or_create(tmp_path)
    signer = Signer(pair.private.sign, key_id(pair.public_raw), "1.0")
    chain = Chain()
    for notice in _notices():
        record = signer.record(notice, chain)
        assert type(record.claims) is MappingProxyType
        assert type(record.subject) is MappingProxyType
        if record.kind == "step":
            assert type(record.claims["usage"]) is MappingProxyType
        assert record.claims_json.encode() == canonical_json(dict(record.claims))
        assert json.loads(record.subject_json) == json.loads(json_text(record.subject))
        row = _attestation_row(record)
        assert stored_record(row) == record  # the envelope's statement, key id and signature
        assert json.loads(row[4])["predicate"] == json.loads(record.claims_json)
        # Read back from the store, a record has no texts: its row encodes them.
        stored = AttestationRecord(**{
            f: getattr(record, f) for f in (
                "attestation_id", "run_id", "step_id", "kind", "subject", "predicate_type",
                "claims", "artifact_hash", "envelope", "previous", "created_at", "seq",
            )
        })  # fmt: skip
        assert stored == record
        assert _attestation_row(stored) == row
    from foundry.kernel.actors.attestor.messages import AttestCustom

    nested = {"reasons": ["a", {"b": [1]}], "x": {"y": 1.5}}
    custom = signer.record(AttestCustom("gate_decision", "g1", "", nested, AT), None)
    inner = custom.claims["claims"]
    assert type(inner) is MappingProxyType
    assert inner["reasons"] == ("a", {"b": (1,)})
    assert type(inner["reasons"][1]) is MappingProxyType
    expected = canonical_json({"label": "gate_decision", "claims": nested})
    assert custom.claims_json.encode() == expected


# --- the signing process ------------------------------------------------------------------------


def _jobs(n: int) -> list[tuple[object, ...]]:
    usage = {"tokens_in": 1, "tokens_out": 2, "cost": 0.5}
    jobs: list[tuple[object, ...]] = [
        ("step", "run_p", f"s{i}", "noop", 1, usage, {"i": i, "x": "y" * (i % 3)}, i, None,
         {"n": float(i)})
        for i in range(n)
    ]  # fmt: skip
    claims = {"label": "gate_decision", "claims": {"reasons": ["a"], "x": 1.5}}
    jobs.append(("claims", "custom", "", claims, None))
    jobs.append(("step", "run_p", "bad", "noop", -1, usage, {}, None, None, None))  # attempt < 0
    run = {"run_id": "run_p", "status": "SUCCEEDED", "spec_hash": "0" * 64, "seed": 1,
           "step_count": n, "tokens_in": n, "tokens_out": 2 * n, "cost": 0.5 * n,
           "daemon_version": "1.0", "parent_run_id": None, "branch_step": None}  # fmt: skip
    jobs.append(("run", "run_p", run, {f"s{i}": {"n": i} for i in range(n)}))
    return jobs


async def test_the_signing_process_drafts_and_signs_as_the_daemon_would(tmp_path):
    from types import MappingProxyType

    from foundry.kernel.actors.attestor.drafting import draft_batch
    from foundry.kernel.actors.attestor.signer import SignerProcess

    pair = keys.load_or_create(tmp_path)
    assert pair.path == tmp_path / "keys" / "attestor.key"
    process = await SignerProcess.start(pair.path, pair.public_raw)
    try:
        jobs = _jobs(600)
        heads = {"run_p": (3, "a" * 64)}
        drafted = await process.draft(heads, jobs)
        keyid = key_id(pair.public_raw)
        expected = draft_batch(heads, jobs, pair.private.sign, keyid)  # Ed25519: deterministic
        assert drafted == (*expected, False)  # no spool file named: the rows come back
        results, after = expected
        assert after == {}  # the run's attestation closed its chain
        assert isinstance(results[-2], str)  # that job alone
        assert "attempt" in results[-2]
        first = results[0]
        assert not isinstance(first, str)
        assert json.loads(first[0])["predicate"]["previous"] == "a" * 64
        assert json.loads(first[0])["predicate"]["index"] == 3
        assert first[1] == keyid
        assert first[3] == json_digest({"n": 0})  # the output's hash, 0.0 as 0
        pair.public.verify(__import__("base64").b64decode(first[2]), pae_of(first[0].encode()))
        # A frozen mapping goes as a dict; a value that is not JSON is not sent at all.
        frozen = ("claims", "custom", "", MappingProxyType({"label": "l", "claims": {}}), None)
        sign = pair.private.sign
        assert await process.draft({}, [frozen]) == (*draft_batch({}, [frozen], sign, keyid), False)
        assert await process.draft({}, [("claims", "custom", "", {"x": AT}, None)]) is None
        odd = [("claims", "custom", "", {"x": {1, 2}}, None)]  # a set: pickled, then refused
        assert await process.draft({}, odd) == (*draft_batch({}, odd, sign, keyid), False)
        assert await process.draft({}, _jobs(1)) == (*draft_batch({}, _jobs(1), sign, keyid), False)
    finally:
        await process.close()


async def test_a_signing_process_with_another_key_or_a_loose_key_is_not_trusted(tmp_path):
    from foundry.kernel.actors.attestor.signer import SignerFailed, SignerProcess

    pair = keys.load_or_create(tmp_path)
    other = keys.load_or_create(tmp_path / "other")
    process = await SignerProcess.start(pair.path, other.public_raw)
    with pytest.raises(SignerFailed, match="another key"):
        await process.draft({}, _jobs(1))
    await process.close()
    pair.path.chmod(0o644)
    process = await SignerProcess.start(pair.path, pair.public_raw)
    with pytest.raises(SignerFailed, match="ended"):
        await process.draft({}, _jobs(1))
    await process.close()


def test_a_batch_holding_a_class_is_refused_by_the_reader():
    import pickle

    from foundry.kernel.actors.attestor.drafting import dumps, loads

    assert loads(dumps(({"r": (1, None)}, [("step", b"x", 1.5, None, True)]))) == (
        {"r": (1, None)}, [("step", b"x", 1.5, None, True)],
    )  # fmt: skip
    with pytest.raises(pickle.PicklingError):
        dumps([AT])
    with pytest.raises(pickle.UnpicklingError, match="datetime"):
        loads(pickle.dumps([AT]))


def test_the_signing_process_ends_quietly_when_the_daemon_dies_mid_frame(tmp_path):
    """A daemon killed with -9 leaves its signing process a torn request, or no reader for its
    answer: it ends at once, without a traceback in the daemon's log (its stderr)."""
    from foundry.kernel.actors.attestor.drafting import dumps
    from foundry.kernel.actors.attestor.signer import PROGRAM

    pair = keys.load_or_create(tmp_path)
    argv = [sys.executable, "-I", str(PROGRAM), str(pair.path)]
    torn = subprocess.run(
        argv, input=b"\x00\x00\x01\x00\x80\x05", capture_output=True, timeout=30
    )  # a length of 256, then 2 bytes: the daemon died while writing
    assert (torn.returncode, torn.stderr) == (0, b"")
    assert torn.stdout == pair.public_raw  # it answered nothing for the torn frame
    read_end, write_end = os.pipe()
    os.close(read_end)  # no reader: the daemon is gone
    pipes = {"stdin": subprocess.PIPE, "stdout": write_end, "stderr": subprocess.PIPE}
    request = dumps(({}, _jobs(2)))
    with subprocess.Popen(argv, **pipes) as orphan:
        os.close(write_end)
        _, stderr = orphan.communicate(len(request).to_bytes(4, "big") + request, timeout=30)
    assert (orphan.returncode, stderr) == (0, b"")


# --- the actor, over a store that records what it is asked --------------------------------------


class FakeStore:
    """Answers the attestor's store messages; ``open_runs`` are unfinished at start."""

    def __init__(
        self,
        open_runs: tuple[str, ...],
        stored: dict[str, list[object]],
        logs: dict[str, list[RunEventRecord]] | None = None,
    ) -> None:
        self.open_runs, self.stored, self.logs = open_runs, stored, logs or {}
        self.looked_up: list[str] = []
        self.appended: list[object] = []
        self.kinds_by_record: list[tuple[str, set[str]]] = []  # each record's type, row kinds
        self.spooled_lines: list[int] = []  # each spooled batch's rows
        self.first_append = trio.Event()
        self.failed_lookups = 0  # lookups of chains to fail, first

    async def serve(self, inbox) -> None:  # type: ignore[no-untyped-def]
        from foundry.kernel.actors.store import messages as m
        from foundry.kernel.core.attest_records import SpooledAttestationRows, stored_record
        from foundry.kernel.core.run_control import RunSummary

        async for message in inbox:
            if isinstance(message, m.LoadRunSummaries):
                assert message.query.statuses
                message.reply.send([
                    RunSummary(r, "RUNNING", AT, AT, {}, "", "", 2, "", "") for r in self.open_runs
                ])  # fmt: skip
            elif isinstance(message, m.LoadUnattested):
                message.reply.send(list(self.logs))
            elif isinstance(message, m.LoadUnattestedGovernance):
                message.reply.send([])  # (the e2e tests lose and recover those)
            elif isinstance(message, m.LoadRunEvents):
                message.reply.send(list(self.logs.get(message.run_id, [])))
            elif isinstance(message, m.LoadRunAttestations):
                self.looked_up.append(message.run_id)
                if self.failed_lookups:  # DuckDB reopening: the store answers UNAVAILABLE
                    self.failed_lookups -= 1
                    message.reply.fail(Unavailable("the store could not answer"))
                    continue
                appended = [a for a in self.appended if a.run_id == message.run_id]  # type: ignore[attr-defined]
                message.reply.send([*self.stored.get(message.run_id, []), *appended])
            elif isinstance(message, m.LoadAttestations):
                found = {a.attestation_id: a for a in self.appended}  # type: ignore[attr-defined]
                message.reply.send([found[i] for i in message.attestation_ids if i in found])
            elif isinstance(message, m.Append):
                # A batch a record, decoded as the store reads them back (a spooled batch: its
                # file's lines counted, as DuckDB would read them)
                for r in message.records:
                    if isinstance(r, SpooledAttestationRows):
                        lines = (await trio.Path(r.path).read_text()).splitlines()
                        self.spooled_lines.append(len(lines))
                        self.kinds_by_record.append((type(r).__name__, {"step"}))
                        continue
                    self.appended.extend(stored_record(row) for row in r.rows)
                    self.kinds_by_record.append((type(r).__name__, {row[3] for row in r.rows}))
                assert message.ack is not None
                message.ack.send(None)
                self.first_append.set()
            else:
                raise AssertionError(message)


def _step_notice(run_id: str, step_id: str, seq: int, *, legacy: bool = False) -> Attest:
    """A step attestation's notice, announced by its ``step_completed`` (or, ``legacy``, by an
    ``attested`` event after it: a log an earlier release wrote)."""

    def event(seq: int, name: str, /, **payload: object) -> RunEventRecord:
        return RunEventRecord(run_id, seq, step_id, name, payload, AT)

    leased = event(seq, "step_leased", attempt=1, inputs={"x": 1}, seed=3, model="")
    usage = {"tokens_in": 1, "tokens_out": 2, "cost": 0.5}
    if legacy:
        done = event(seq + 1, "step_completed", attempt=1, output={"n": seq}, usage=usage)
        note = event(seq + 2, "attested", kind="step", block="noop", of=[seq, seq + 1],
                     attestation_id=run_attestation_id(run_id, seq + 2))  # fmt: skip
        return Attest(note, (leased, done))
    done = event(seq + 1, "step_completed", attempt=1, output={"n": seq}, usage=usage,
                 attestation_id=run_attestation_id(run_id, seq + 1), block="noop")  # fmt: skip
    return Attest(done, (leased, done))


async def test_only_runs_unfinished_at_start_have_their_chain_looked_up(tmp_path):

    pair = keys.load_or_create(tmp_path)
    signer = Signer(pair.private.sign, key_id(pair.public_raw), "1.0")
    earlier = signer.record(_step_notice("run_old", "a", 2), Chain())  # an earlier daemon's
    store = FakeStore(("run_old",), {"run_old": [earlier]})
    async with _running(pair, store) as (attestor, inbox_send, store_send):
        assert attestor._process is not None  # signing in a process of its own
        old, new = await _attest(
            inbox_send, _step_notice("run_old", "b", 5), _step_notice("run_new", "a", 2)
        )
        assert store.looked_up == ["run_old"]  # run_new began in this daemon: no query
        assert (old.claims["index"], old.previous) == (1, attestation_digest(earlier.envelope))
        assert (new.claims["index"], new.previous) == (0, None)

        os.kill(attestor._process.pid, 9)  # the signing process dies: the daemon signs
        (later,) = await _attest(inbox_send, _step_notice("run_new", "b", 5))
        assert attestor._process is None
        assert later.claims["index"] == 1
        assert store.looked_up == ["run_old"]
        _assert_signed(pair, [old, new, later])
        inbox_send.close()
    assert store_send._closed  # type: ignore[attr-defined]


async def test_a_chain_the_store_cannot_answer_yet_is_asked_again_not_the_daemon_ended(
    tmp_path, caplog
):
    # DuckDB reopening after a failed checkpoint answered a chain lookup UNAVAILABLE: the
    # attestor ended, and the whole daemon with it (exit 1)
    pair = keys.load_or_create(tmp_path)
    signer = Signer(pair.private.sign, key_id(pair.public_raw), "1.0")
    earlier = signer.record(_step_notice("run_old", "a", 2), Chain())
    store = FakeStore(("run_old",), {"run_old": [earlier]})
    store.failed_lookups = 2
    async with _running(pair, store) as (_, inbox_send, _):
        (record,) = await _attest(inbox_send, _step_notice("run_old", "b", 5))
        assert store.looked_up == ["run_old"] * 3
        assert (record.claims["index"], record.previous) == (
            1,
            attestation_digest(earlier.envelope),
        )
        _assert_signed(pair, [record])
        inbox_send.close()
    assert caplog.text.count("could not attest 1 fact(s) yet") == 2


async def test_a_chain_the_store_never_answers_is_given_up_and_the_stop_not_held(
    tmp_path, caplog, monkeypatch
):
    from foundry.kernel.actors.attestor import actor

    monkeypatch.setattr(actor, "RETRY_FOR", 1.0)
    pair = keys.load_or_create(tmp_path)
    signer = Signer(pair.private.sign, key_id(pair.public_raw), "1.0")
    earlier = signer.record(_step_notice("run_old", "a", 2), Chain())
    store = FakeStore(("run_old",), {"run_old": [earlier]})
    store.failed_lookups = 10**6  # DuckDB failed for good
    with trio.fail_after(20):
        async with _running(pair, store) as (_, inbox_send, _):
            with pytest.raises(NotFound):  # answered: nothing of it was stored
                await _attest(inbox_send, _step_notice("run_old", "b", 5))
            assert "the next start re-attests them" in caplog.text
            monkeypatch.setattr(actor, "RETRY_FOR", 3_600.0)
            await inbox_send.send(_step_notice("run_old", "c", 8))
            await trio.sleep(0.5)  # retrying
            inbox_send.close()  # the daemon stops: the attestor ends, not its tries


async def test_a_signing_process_that_answers_a_bad_signature_is_replaced_by_the_daemon(
    tmp_path,
):
    """The check of each batch's last signature runs on the attestor's checker thread (off the
    trio thread); a batch whose signature fails it is signed again in the daemon, so only good
    signatures are stored, and the thread ends with the attestor."""
    import base64

    pair = keys.load_or_create(tmp_path)
    async with _running(pair, FakeStore((), {})) as (attestor, inbox_send, _):
        process, checker = attestor._process, attestor._checker
        assert process is not None
        assert checker is not None
        honest = process.draft

        async def tampered(heads, jobs, to_spool=None):  # type: ignore[no-untyped-def]
            results, after, spooled = await honest(heads, jobs, to_spool)
            statement, keyid, signature, *rest = results[-1]
            raw = bytearray(base64.b64decode(signature))
            raw[0] ^= 1
            results[-1] = (statement, keyid, base64.b64encode(bytes(raw)).decode(), *rest)
            return results, after, spooled

        process.draft = tampered  # type: ignore[method-assign]
        records = await _attest(
            inbox_send, _step_notice("run_t", "a", 2), _step_notice("run_t", "b", 5)
        )
        assert attestor._process is None  # replaced: the daemon signs from now on
        assert [r.claims["index"] for r in records] == [0, 1]  # the chain as if signed once
        _assert_signed(pair, records)
        inbox_send.close()
    assert not checker._thread.is_alive()


async def test_a_signing_process_answer_is_read_whole_however_the_pipe_splits_it():
    """``SignerProcess._read``: frames split across chunks, or several in one chunk, come out
    whole and in order; an ended stream fails."""
    import trio
    from foundry.kernel.actors.attestor.signer import SignerFailed, SignerProcess

    class Chunks:
        def __init__(self, *chunks: bytes) -> None:
            self.chunks = list(chunks)

        async def receive_some(self, max_bytes: int) -> bytes:
            await trio.lowlevel.checkpoint()
            return self.chunks.pop(0) if self.chunks else b""

    class Ended:
        def poll(self) -> int:
            return 3

    process = SignerProcess.__new__(SignerProcess)
    process._pending, process._process = b"", Ended()  # type: ignore[assignment]
    body = bytes(range(256)) * 8
    process._stdout = Chunks(b"\x00\x00", b"\x08\x00" + body[:100], body[100:] + b"ab", b"cd")  # type: ignore[assignment]
    assert await process._read(4) == b"\x00\x00\x08\x00"
    assert await process._read(len(body)) == body
    assert await process._read(3) == b"abc"
    assert await process._read(1) == b"d"
    with pytest.raises(SignerFailed, match="exit status 3"):
        await process._read(1)


@contextlib.asynccontextmanager
async def _running(pair, store, spool=None):  # type: ignore[no-untyped-def]
    """An attestor (with its signing process) over ``store``: (attestor, its inbox, its store
    channel); the nursery ends with it."""
    import trio
    from foundry.kernel.actors.attestor.actor import Attestor

    store_send, store_receive = trio.open_memory_channel[object](16)
    inbox_send, inbox_receive = trio.open_memory_channel[object](16)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.serve, store_receive)
        attestor = Attestor(pair, inbox_receive, store_send, spool=spool)  # type: ignore[arg-type]
        await nursery.start(attestor.run)
        yield attestor, inbox_send, store_send


async def _attest(inbox_send, *notices: Attest) -> list:  # type: ignore[no-untyped-def]
    """Send the notices, then ask for their attestations (answered once they are stored)."""
    from foundry.kernel.actors.attestor.messages import GetAttestations
    from foundry.kernel.actors.mailbox import ask

    for notice in notices:
        await inbox_send.send(notice)
    ids = tuple(n.attested.payload["attestation_id"] for n in notices)
    return await ask(inbox_send, lambda r: GetAttestations(ids, r))  # type: ignore[no-any-return]


def _assert_signed(pair, records) -> None:  # type: ignore[no-untyped-def]
    """Each record's envelope carries a signature of its payload by ``pair``'s key."""
    import base64

    from cryptography.exceptions import InvalidSignature

    for record in records:
        envelope = json.loads(record.envelope)
        payload = base64.b64decode(envelope["payload"])
        try:
            pair.public.verify(base64.b64decode(envelope["signatures"][0]["sig"]), pae_of(payload))
        except InvalidSignature:  # pragma: no cover - the failure these tests look for
            pytest.fail(f"{record.attestation_id}: signature does not verify")


def pae_of(payload: bytes) -> bytes:
    from foundry.kernel.core.attest import PAYLOAD_TYPE, pae

    return pae(PAYLOAD_TYPE, payload)


async def test_a_notice_of_an_event_re_attested_at_start_is_attested_once(tmp_path):
    """The log already holds the ``attested`` event of a notice still in the mailbox (this
    daemon's first): recovery attests it from the log, the notice is skipped, the chain goes on."""
    import trio
    from foundry.kernel.actors.attestor.actor import Attestor
    from foundry.kernel.actors.attestor.messages import GetAttestations
    from foundry.kernel.actors.mailbox import ask

    pair = keys.load_or_create(tmp_path)
    first, second = _step_notice("run_new", "a", 2), _step_notice("run_new", "b", 5)
    store = FakeStore((), {}, {"run_new": list(first.facts)})
    store_send, store_receive = trio.open_memory_channel[object](16)
    inbox_send, inbox_receive = trio.open_memory_channel[object](16)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.serve, store_receive)
        await inbox_send.send(first)  # sent before the attestor looked at the log
        await nursery.start(Attestor(pair, inbox_receive, store_send).run)  # type: ignore[arg-type]
        await inbox_send.send(second)
        ids = (first.attested.payload["attestation_id"], second.attested.payload["attestation_id"])
        a, b = await ask(inbox_send, lambda r: GetAttestations(ids, r))  # type: ignore[arg-type]
        inbox_send.close()
    assert [r.attestation_id for r in store.appended] == list(ids)  # each once
    assert (a.claims["index"], b.claims["index"]) == (0, 1)
    assert b.previous == attestation_digest(a.envelope)


async def test_what_a_stopped_daemon_announced_is_re_attested_in_the_logs_order(tmp_path):
    """A log holding announced attestations the store lacks — a step's announced by its
    completion, and one by an ``attested`` event as an earlier release wrote it — is re-attested
    at start from the log alone: the same ids, one chain in the log's order, envelopes equal to
    what the live notices make."""
    import trio
    from foundry.kernel.actors.attestor.actor import Attestor

    pair = keys.load_or_create(tmp_path)
    old = _step_notice("run_gone", "a", 2, legacy=True)  # seqs 2-4
    new = _step_notice("run_gone", "b", 5)  # seqs 5-6
    log = [RunEventRecord("run_gone", 1, "", "run_started", {}, AT), *old.facts, old.attested,
           *new.facts]  # fmt: skip
    store = FakeStore((), {}, {"run_gone": log})
    store_send, store_receive = trio.open_memory_channel[object](16)
    inbox_send, inbox_receive = trio.open_memory_channel[object](16)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.serve, store_receive)
        await nursery.start(Attestor(pair, inbox_receive, store_send).run)  # type: ignore[arg-type]
        inbox_send.close()
    ids = [n.attested.payload["attestation_id"] for n in (old, new)]
    assert ids == [run_attestation_id("run_gone", 4), run_attestation_id("run_gone", 6)]
    assert [r.attestation_id for r in store.appended] == ids
    a, b = store.appended
    assert (a.claims["index"], b.claims["index"]) == (0, 1)
    assert b.previous == attestation_digest(a.envelope)
    signer = Signer(pair.private.sign, key_id(pair.public_raw), "1.0")
    chain = Chain()
    assert [signer.record(n, chain).envelope for n in (old, new)] == [a.envelope, b.envelope]


async def test_rows_lost_in_the_middle_of_a_chain_are_made_again_byte_for_byte(tmp_path):
    """Two gaps in a run's stored chain (b, and d): each is re-attested from the head just
    before it, so the envelopes are the lost ones, byte for byte. (From the chain's last head,
    b was made with index 5 and the last digest: another envelope under the same id, and the
    whole chain failed verification.)"""
    import trio
    from foundry.kernel.actors.attestor.actor import Attestor

    pair = keys.load_or_create(tmp_path)
    signer = Signer(pair.private.sign, key_id(pair.public_raw), "1.0")
    notices = [_step_notice("run_holes", s, 2 * n + 2) for n, s in enumerate("abcdef")]
    chain = Chain()
    original = [signer.record(n, chain) for n in notices]  # what the earlier daemon stored
    kept = [r for r in original if r.step_id not in ("b", "d")]
    log = [RunEventRecord("run_holes", 1, "", "run_started", {}, AT)]
    log += [e for n in notices for e in n.facts]
    store = FakeStore(("run_holes",), {"run_holes": kept}, {"run_holes": log})
    store_send, store_receive = trio.open_memory_channel[object](16)
    inbox_send, inbox_receive = trio.open_memory_channel[object](16)
    after = _step_notice("run_holes", "g", 14)  # the run goes on after the restart
    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.serve, store_receive)
        await nursery.start(Attestor(pair, inbox_receive, store_send).run)  # type: ignore[arg-type]
        await inbox_send.send(after)
        inbox_send.close()
    made = {r.step_id: r for r in store.appended}  # type: ignore[attr-defined]
    assert sorted(made) == ["b", "d", "g"]
    # it goes on from the whole chain's head (f), not from the last gap mended (d)
    assert made["g"].claims["index"] == 6
    assert made["g"].previous == attestation_digest(original[-1].envelope)
    lost = {r.step_id: r for r in original}
    assert made["b"].envelope == lost["b"].envelope
    assert made["d"].envelope == lost["d"].envelope
    assert (made["b"].claims["index"], made["d"].claims["index"]) == (1, 3)


async def test_a_notice_whose_facts_cannot_be_attested_is_logged_and_the_rest_stored(
    tmp_path, caplog
):
    """A step notice with a negative attempt: the signing process reports it alone; the batch's
    other attestations are stored, and the chain goes on from the last good one."""
    import trio
    from foundry.kernel.actors.attestor.actor import Attestor
    from foundry.kernel.actors.attestor.messages import GetAttestations
    from foundry.kernel.actors.mailbox import ask
    from foundry.kernel.errors import NotFound

    pair = keys.load_or_create(tmp_path)
    good, later = _step_notice("run_new", "a", 2), _step_notice("run_new", "c", 8)
    bad = _step_notice("run_new", "b", 5)
    leased, done = bad.facts
    bad = Attest(bad.attested, (leased, RunEventRecord(
        done.run_id, done.seq, done.step_id, done.kind, {**done.payload, "attempt": -1}, AT,
    )))  # fmt: skip
    store = FakeStore((), {})
    store_send, store_receive = trio.open_memory_channel[object](16)
    inbox_send, inbox_receive = trio.open_memory_channel[object](16)
    ids = [n.attested.payload["attestation_id"] for n in (good, bad, later)]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.serve, store_receive)
        await nursery.start(Attestor(pair, inbox_receive, store_send).run)  # type: ignore[arg-type]
        for notice in (good, bad, later):
            await inbox_send.send(notice)
        a, c = await ask(inbox_send, lambda r: GetAttestations((ids[0], ids[2]), r))  # type: ignore[arg-type]
        with pytest.raises(NotFound, match=ids[1]):
            await ask(inbox_send, lambda r: GetAttestations((ids[1],), r))  # type: ignore[arg-type]
        inbox_send.close()
    assert (a.claims["index"], c.claims["index"]) == (0, 1)
    assert c.previous == attestation_digest(a.envelope)
    assert f"could not attest the step of run run_new ({ids[1]})" in caplog.text
    assert "attempt" in caplog.text


async def test_a_lone_notice_is_signed_after_one_look_and_a_stream_lingers(autojump_clock):
    """A batch waits for more notices only while they keep coming: one look (``FIRST_LOOK``)
    for a notice that trickles in alone (a gate decision, a slow step), up to ``LINGER`` for a
    stream, looking every ``POLL`` seconds after the first."""
    from types import SimpleNamespace

    import trio
    from foundry.kernel.actors.attestor.actor import BATCH, FIRST_LOOK, LINGER, POLL, Attestor

    send, receive = trio.open_memory_channel[object](BATCH)
    take = Attestor._take.__get__(SimpleNamespace(_inbox=receive))
    await send.send(_step_notice("run_a", "a", 2))
    started = trio.current_time()
    assert len(await take()) == 1
    assert trio.current_time() - started == pytest.approx(FIRST_LOOK)

    async def stream() -> None:
        for seq in range(200):
            await send.send(_step_notice("run_b", f"s{seq}", 3 * seq + 2))
            await trio.sleep(FIRST_LOOK / 2)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream)
        await trio.lowlevel.checkpoint()
        started = trio.current_time()
        batch = await take()
        assert trio.current_time() - started == pytest.approx(LINGER)  # not past it
        assert len(batch) >= LINGER / (FIRST_LOOK / 2)  # every notice of the stream, one batch
        assert POLL > FIRST_LOOK
        nursery.cancel_scope.cancel()


def test_the_check_of_a_signing_process_answer_refuses_any_signature_but_the_key_s(tmp_path):
    """``Attestor._good``: the last signature of a batch must verify with the daemon's public
    key (libsodium); a flipped byte, another key's signature, a short one, or bad base64 fails."""
    import base64

    import trio
    from foundry.kernel.actors.attestor.actor import Attestor
    from foundry.kernel.actors.attestor.drafting import draft_batch

    pair = keys.load_or_create(tmp_path)
    other = keys.load_or_create(tmp_path / "other")
    store_send, _ = trio.open_memory_channel(1)
    _, inbox = trio.open_memory_channel(1)
    attestor = Attestor(pair, inbox, store_send)
    results, _ = draft_batch({}, _jobs(2), pair.private.sign, key_id(pair.public_raw))
    statement, keyid, signature, *rest = results[-1]
    raw = base64.b64decode(signature)

    def answer(signature: bytes | str) -> list:
        text = signature if isinstance(signature, str) else base64.b64encode(signature).decode()
        return [results[0], (statement, keyid, text, *rest)]

    assert attestor._good(results)
    assert attestor._good([*results, "a job's error"])  # the last *signature* is checked
    assert not attestor._good(answer(raw[:-1] + bytes([raw[-1] ^ 1])))
    assert not attestor._good(answer(other.private.sign(b"anything")))
    assert not attestor._good(answer(raw[:63]))
    assert not attestor._good(answer("not base64!"))
    altered = (statement.replace('"', "'", 1), keyid, signature, *rest)
    assert not attestor._good([results[0], altered])


async def test_a_runs_attestations_are_rows_duckdb_alone_gets_and_custom_ones_are_journaled(
    tmp_path,
):
    """A batch of a step's notice and a gate decision's: the step's row goes to the store as a
    ``DerivedAttestationRows`` (not journaled: a start makes it again from the run's log), the
    gate decision's as an ``AttestationRows`` (journaled: nothing announces it to re-attest)."""
    import trio
    from foundry.kernel.actors.attestor.actor import Attestor
    from foundry.kernel.actors.attestor.messages import AttestCustom, GetAttestations
    from foundry.kernel.actors.mailbox import ask

    pair = keys.load_or_create(tmp_path)
    step = _step_notice("run_new", "a", 2)
    gate = AttestCustom("gate_decision", "g1", "", {"effect": "allow"}, AT)
    ids = (step.attested.payload["attestation_id"], custom_attestation_id("gate_decision", "g1"))
    store = FakeStore((), {})
    store_send, store_receive = trio.open_memory_channel[object](16)
    inbox_send, inbox_receive = trio.open_memory_channel[object](16)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.serve, store_receive)
        await nursery.start(Attestor(pair, inbox_receive, store_send).run)  # type: ignore[arg-type]
        inbox_send.send_nowait(step)
        inbox_send.send_nowait(gate)  # one batch
        found = await ask(inbox_send, lambda r: GetAttestations(ids, r))  # type: ignore[arg-type]
        inbox_send.close()
    assert [a.attestation_id for a in found] == list(ids)
    assert sorted(store.kinds_by_record) == [
        ("AttestationRows", {"custom"}),
        ("DerivedAttestationRows", {"step"}),
    ]


async def test_a_custom_attestation_of_many_values_is_made_off_the_trio_thread(
    tmp_path, monkeypatch
):
    """A gate decision's claims of many values: its job (their canonical JSON) is made on a
    worker thread (130,000 evals held the loop ~0.5 s), a small one's on the trio thread."""
    import threading

    import trio
    from foundry.kernel.actors.attestor import actor
    from foundry.kernel.actors.attestor.messages import AttestCustom, GetAttestations
    from foundry.kernel.actors.mailbox import ask

    made_on: dict[str, str] = {}
    real = actor.job_of

    def job_of(notice, daemon_version):
        made_on[notice.record_id] = threading.current_thread().name
        return real(notice, daemon_version)

    monkeypatch.setattr(actor, "job_of", job_of)
    pair = keys.load_or_create(tmp_path)
    large = {"effect": "deny", "failing": [f"m{i}" for i in range(3_000)]}
    notices = [AttestCustom("gate_decision", g, "", c, AT)
               for g, c in (("small", {"effect": "allow"}), ("large", large))]  # fmt: skip
    ids = tuple(custom_attestation_id("gate_decision", n.record_id) for n in notices)
    store = FakeStore((), {})
    store_send, store_receive = trio.open_memory_channel[object](16)
    inbox_send, inbox_receive = trio.open_memory_channel[object](16)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.serve, store_receive)
        await nursery.start(actor.Attestor(pair, inbox_receive, store_send).run)  # type: ignore[arg-type]
        for notice in notices:
            inbox_send.send_nowait(notice)
        found = await ask(inbox_send, lambda r: GetAttestations(ids, r))  # type: ignore[arg-type]
        inbox_send.close()
    assert [a.attestation_id for a in found] == list(ids)
    assert found[1].claims["claims"]["failing"][2_999] == "m2999"
    assert made_on["small"] == threading.main_thread().name
    assert made_on["large"] != threading.main_thread().name


def test_run_attestation_ids_are_distinct_for_distinct_run_and_seq():
    pairs = [("run_a", 12), ("run_a_1", 2), ("run_a", 1), ("run_b", 12), ("run_a1", 2)]
    ids = [run_attestation_id(run_id, seq) for run_id, seq in pairs]
    assert len(set(ids)) == len(pairs)
    assert ids[0] == run_attestation_id("run_a", 12)  # derived: the same pair, the same id
    # never a custom attestation's (att_ + 24 hex, no underscore after the prefix)
    custom = custom_attestation_id("gate_decision", "run_a_12")
    assert "_" not in custom.removeprefix("att_")
    assert custom not in ids


def _spool_batch() -> tuple[list[object], list[object]]:
    """Jobs and metas of a batch: two steps (one announced the old way, one with an id that
    needs quoting in CSV), a step whose facts cannot be attested, and the run's attestation."""
    from foundry.kernel.actors.attestor.statements import job_of

    awkward = 'q"\\ü\U0001f600\x01,\r\n"'
    notices = [_step_notice("run_x", awkward, 2), _step_notice("run_x", "b", 4, legacy=True)]
    leased, done = _step_notice("run_x", "c", 7).facts
    bad = RunEventRecord(done.run_id, done.seq, done.step_id, done.kind,
                         {**done.payload, "attempt": -1}, AT)  # fmt: skip
    notices += [Attest(bad, (leased, bad)), _notices()[-1]]
    made = [job_of(n, "1.0") for n in notices]
    return [job for job, _ in made], [meta for _, meta in made]


def test_a_spooled_batch_is_the_rows_the_attestor_would_append(tmp_path):
    """``drafting.spool`` writes what the attestor would have made rows of itself: read back by
    DuckDB as the store reads it, the same rows; the answer is None a row but the last (whose
    signature the attestor checks), and the reason of the job that could not be attested."""
    import duckdb
    from foundry.analytics.schema import TABLES
    from foundry.kernel.actors.attestor.drafting import draft_batch, spool
    from foundry.kernel.actors.attestor.statements import attestation_row
    from foundry.kernel.actors.store.tables import WRITERS, insert_spooled
    from foundry.kernel.core.attest_records import SpooledAttestationRows

    pair = keys.load_or_create(tmp_path)
    jobs, metas = _spool_batch()
    results, _ = draft_batch({}, jobs, pair.private.sign, key_id(pair.public_raw))
    others = [(*m[:4], m[4].isoformat(), m[5]) for m in metas if m[3] != "step"]
    path = tmp_path / "batch.csv"
    answer = spool(str(path), others, jobs, results)
    assert answer[:2] == [None, None]
    assert isinstance(answer[2], str)  # the attempt < 0
    assert answer[3] == results[3]  # the last row's, for its signature check
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)
    expected = [attestation_row(m, r) for m, r in zip(metas, results, strict=True)
                if not isinstance(r, str)]  # fmt: skip
    con = duckdb.connect()
    con.execute(TABLES["attestation_statements"])
    insert_spooled(con, WRITERS[SpooledAttestationRows], [str(path)])
    assert con.execute("SELECT * FROM attestation_statements ORDER BY seq").fetchall() == expected
    with pytest.raises(FileExistsError):  # a file is never written twice
        spool(str(path), others, jobs, results)


async def test_the_signing_process_spools_a_batch_or_sends_its_rows_back(tmp_path):
    """Given a spool file, the signing process writes the rows there and answers Nones (but the
    last row's result); a file it cannot write (its folder is gone) gets the rows sent back."""
    from foundry.kernel.actors.attestor.drafting import draft_batch
    from foundry.kernel.actors.attestor.signer import SignerProcess

    pair = keys.load_or_create(tmp_path)
    jobs, metas = _spool_batch()
    expected, after = draft_batch({}, jobs, pair.private.sign, key_id(pair.public_raw))
    others = [(*m[:4], m[4].isoformat(), m[5]) for m in metas if m[3] != "step"]
    process = await SignerProcess.start(pair.path, pair.public_raw)
    try:
        path = tmp_path / "spool.csv"
        answer = await process.draft({}, jobs, (str(path), others))
        assert answer == ([None, None, expected[2], expected[3]], after, True)
        with path.open(newline="") as rows:
            assert len(list(csv.reader(rows))) == 3  # a row a line, but for quoted line ends
        missing = str(tmp_path / "gone" / "spool.csv")
        assert await process.draft({}, jobs, (missing, others)) == (expected, after, False)
    finally:
        await process.close()


async def test_the_attestor_clears_its_spool_at_start(tmp_path):
    """Files a stopped daemon left in the spool are of rows DuckDB has, or that the start makes
    again: the attestor starts with an empty, owner-only spool."""

    pair = keys.load_or_create(tmp_path)
    spool = tmp_path / "spool" / "attestations"
    spool.mkdir(parents=True)
    (spool / "000000000001.csv").write_text("x\n")
    async with _running(pair, FakeStore((), {}), spool=spool) as (attestor, inbox_send, _):
        assert attestor._process is not None
        assert list(spool.iterdir()) == []
        assert oct(spool.stat().st_mode & 0o777) == oct(0o700)
        inbox_send.close()


async def test_a_spool_that_cannot_be_made_leaves_the_rows_coming_back(tmp_path, caplog):
    """A spool folder the attestor cannot make (a file in its way) is logged, and batches are
    signed and stored as without one."""
    pair = keys.load_or_create(tmp_path)
    (tmp_path / "spool").write_text("in the way")
    store = FakeStore((), {})
    async with _running(pair, store, spool=tmp_path / "spool" / "attestations") as running:
        attestor, inbox_send, _ = running
        assert attestor._spool is None
        (found,) = await _attest(inbox_send, _step_notice("run_new", "a", 2))
        assert found.kind == "step"
        inbox_send.close()
    assert "could not prepare the attestation spool" in caplog.text


async def test_a_large_batch_is_spooled_and_a_small_one_comes_back(tmp_path):
    """A batch of ``SPOOL_ROWS`` step attestations is written by the signing process to a spool
    file DuckDB reads; a batch of one comes back and goes to the store as rows (a file and its
    read cost ~1 ms however few its rows: a run patched step by step attests one at a time)."""
    import trio
    from foundry.kernel.actors.attestor.actor import SPOOL_ROWS, Attestor

    pair = keys.load_or_create(tmp_path / "keys")
    store = FakeStore((), {})
    store_send, store_receive = trio.open_memory_channel[object](16)
    inbox_send, inbox_receive = trio.open_memory_channel[object](SPOOL_ROWS + 1)
    for i in range(SPOOL_ROWS):  # waiting before the attestor starts: one batch
        inbox_send.send_nowait(_step_notice("run_new", f"s{i}", 2 * i + 2))
    attestor = Attestor(pair, inbox_receive, store_send, spool=tmp_path / "spool")  # type: ignore[arg-type]
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store.serve, store_receive)
            await nursery.start(attestor.run)
            await store.first_append.wait()
            await inbox_send.send(_step_notice("run_new", "last", 2 * SPOOL_ROWS + 2))
            inbox_send.close()  # the attestor signs what it has, then ends
    assert store.kinds_by_record == [
        ("SpooledAttestationRows", {"step"}),
        ("DerivedAttestationRows", {"step"}),
    ]
    assert store.spooled_lines == [SPOOL_ROWS]
    (last,) = store.appended
    assert last.claims["index"] == SPOOL_ROWS  # the chain went on across the two batches


def test_a_key_a_full_disk_cut_short_is_not_left_for_the_next_start(tmp_path, monkeypatch):
    # an empty attestor.key was left, and every later start refused to load it
    real_write = os.write

    def full(fd: int, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(keys.os, "write", full)
    with pytest.raises(ConfigError, match="the signing key cannot be used: No space"):
        keys.load_or_create(tmp_path)  # one line, as any refused start
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == []
    monkeypatch.setattr(keys.os, "write", real_write)
    pair = keys.load_or_create(tmp_path)  # space again: made, and loads
    assert keys.load_or_create(tmp_path).public_raw == pair.public_raw
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == [
        keys.PRIVATE_KEY,
        keys.PUBLIC_KEY,
    ]
