"""Attestations end to end over a real daemon (README.md, "Attestations"): every subject kind,
GetAttestations, ``foundry attest`` (pubkey, get, verify, export), the signing key's
permissions, a stored output changed behind the daemon's back, a broken chain, the switch."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import duckdb
import pytest
from foundry.kernel.core.attest_records import (
    EVAL_RESULT,
    GATE_DECISION,
    SPOOL,
    announced,
    custom_attestation_id,
    json_digest,
    run_attestation_id,
)
from foundry.kernel.core.governance import HISTORY_LIMIT
from foundry.proto import runtime_api as api
from foundry.proto.generated.google.protobuf import Struct
from grpclib import GRPCError
from grpclib.const import Status

from tests.daemon import Daemon
from tests.e2e.helpers import slowest_small_call_during
from tests.helpers import process_gone, wait_until
from tests.runs.helpers import (
    RESEARCH,
    assert_error,
    dag,
    of_kind,
    rpc_error,
    run_and_wait,
    submit,
    tap,
    wait_done,
    wait_for,
    wait_status,
)

TOPIC = {"topic": "otters"}

ARTIFACT_PLUGIN = """
from foundry.kernel import BlockContext, BlockKind, block, hookimpl


@block("write_note", kind=BlockKind.OBSERVER)
def write_note(ctx: BlockContext) -> dict:
    ctx.artifact_path("note.txt").write_text(str(ctx.inputs.get("text", "")))
    return {"written": True}


@block("leave_links", kind=BlockKind.OBSERVER)
def leave_links(ctx: BlockContext) -> dict:
    import os

    ctx.artifact_path("kept.txt").write_text("kept")
    os.symlink("/proc/self/environ", ctx.artifact_path("environ"))
    os.symlink(ctx.inputs["outside"], ctx.artifact_path("outside.txt"))
    return {"written": True}


@block("write_then_remove", kind=BlockKind.OBSERVER)
async def write_then_remove(ctx: BlockContext) -> dict:
    import os

    os.remove(await ctx.write_artifact("scratch.txt", "tmp"))  # it cleans up after itself
    await ctx.write_artifact("kept.txt", "kept")
    return {"written": True}


@block("claim_artifact", kind=BlockKind.OBSERVER)
def claim_artifact(ctx: BlockContext) -> dict:
    ctx.artifacts_written.append(ctx.inputs["path"])
    return {"written": True}


@hookimpl
def register_blocks():
    return [write_note, leave_links, write_then_remove, claim_artifact]
"""

EVERY_KIND = dag(
    {"id": "outline", "type": "llm", "model": "mock:small", "inputs": {"prompt": "Otters"}},
    {
        "id": "count",
        "type": "tool",
        "inputs": {"tool": "word_count", "args": {"text": "${steps.outline.output.text}"}},
    },
    {"id": "note", "type": "write_note", "inputs": {"text": "${steps.outline.output.text}"}},
)


@pytest.fixture(scope="module")
def daemon(shared_daemon, tmp_path_factory) -> Daemon:
    plugins = tmp_path_factory.mktemp("attest-plugins")
    (plugins / "attest_note_block.py").write_text(ARTIFACT_PLUGIN)
    env = {"PYTHONPATH": os.pathsep.join([str(plugins), os.environ.get("PYTHONPATH", "")])}
    return shared_daemon('[plugins]\nmodules = ["attest_note_block"]\n', env=env)


def attested(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each announced attestation, in order: its announcing event's payload, with its id, kind
    and step id."""
    found = []
    for e in events:
        announcement = announced(e["kind"], e["payload"])
        if announcement is not None:
            attestation_id, kind = announcement
            found.append({**e["payload"], "attestation_id": attestation_id, "kind": kind,
                          "step_id": e["step_id"], "seq": int(e["payload"]["seq"])})  # fmt: skip
    return found


def get(daemon: Daemon, ids: list[str]) -> list[api.Attestation]:
    request = api.GetAttestationsRequest(attestation_ids=ids)
    return list(daemon.call(lambda _, rt: rt.get_attestations(request)).attestations)


def cli(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return daemon.cli("attest", *args)


def test_a_token_of_a_sub_microsecond_time_limit_lives_a_microsecond_and_is_attested(daemon):
    """A tool step's ``timeout`` of 4e-7 s gave a token expiring as it was granted: its
    attestation was refused (expires_at not after issued_at), though announced (a hunt)."""
    tiny = dag({"id": "tiny", "type": "tool", "timeout": 4e-7,
                "inputs": {"tool": "echo", "args": {"x": 2}}})  # fmt: skip
    run_id = submit(daemon, tiny)
    wait_done(daemon, run_id)
    events = tap(daemon, run_id)
    (granted,) = of_kind(events, "capability_granted")
    assert granted["payload"]["expires_at"] > granted["payload"]["issued_at"]
    [token] = [n["attestation_id"] for n in attested(events) if n["kind"] == "capability_token"]
    wait_until(lambda: len(get(daemon, [token])) == 1, what="the token's attestation")


def test_every_subject_kind_is_attested_found_in_order_and_verifies(daemon):
    run_id = submit(daemon, EVERY_KIND)
    assert wait_done(daemon, run_id).status == api.RunStatus.SUCCEEDED
    events = tap(daemon, run_id)
    notes = attested(events)
    by_kind = {n["kind"]: n for n in notes}
    assert sorted(by_kind) == ["artifact", "capability_token", "run", "step", "tool"]
    assert sorted(n["step_id"] for n in notes if n["kind"] == "step") == [
        "count",
        "note",
        "outline",
    ]
    # a step's attestation rides on its completion: no event of its own, its id the completion's
    completions = of_kind(events, "step_completed")
    seqs = [int(e["payload"]["seq"]) for e in completions]
    assert [n["seq"] for n in notes if n["kind"] == "step"] == seqs
    for completion, seq in zip(completions, seqs, strict=True):
        assert completion["payload"]["attestation_id"] == run_attestation_id(run_id, seq)
        assert completion["payload"]["block"]
    assert {e["payload"]["kind"] for e in of_kind(events, "attested")} == {
        "artifact", "capability_token", "run", "tool"
    }  # fmt: skip
    assert events[-1]["kind"] == "run_succeeded"  # the run's attestation is announced before
    (granted,) = of_kind(events, "capability_granted", "count")
    token = granted["payload"]
    assert token["tool"] == "word_count"
    assert token["attempt"] == 1
    assert token["token_id"].startswith("cap_")
    assert token["expires_at"] > token["issued_at"]

    ids = [n["attestation_id"] for n in notes]
    # GetRun lists them too, in the same (chain) order, the run's own last
    detail = daemon.call(lambda _, rt: rt.get_run(api.GetRunRequest(run_id=run_id))).run
    assert list(detail.attestation_ids) == ids
    assert ids[-1] == by_kind["run"]["attestation_id"]
    found = get(daemon, list(reversed(ids)))  # request order, not storage order
    assert [a.attestation_id for a in found] == list(reversed(ids))
    # the signing process wrote their rows to files DuckDB read; none is left once it has them
    assert list((daemon.home / SPOOL).iterdir()) == []
    kinds = {a.attestation_id: _which(a) for a in found}
    assert kinds[by_kind["run"]["attestation_id"]] == ("run", {"runId": run_id})
    assert kinds[by_kind["capability_token"]["attestation_id"]] == (
        "capability_token", {"tokenId": token["token_id"]}
    )  # fmt: skip
    assert kinds[by_kind["tool"]["attestation_id"]] == ("tool", {"name": "word_count"})
    kind, artifact = kinds[by_kind["artifact"]["attestation_id"]]
    assert kind == "artifact"
    assert artifact["uri"].endswith(f"/{run_id}/note/note.txt")
    for attestation in found:
        envelope = json.loads(attestation.signature)
        assert envelope["payloadType"] == "application/vnd.in-toto+json"
        assert attestation.artifact_hash
        assert attestation.issued_at is not None

    for attestation_id in ids:
        done = cli(daemon, "verify", attestation_id)
        assert done.returncode == 0, (attestation_id, done.stdout, done.stderr)
        assert done.stdout.startswith("valid")


def _which(attestation: api.Attestation) -> tuple[str, dict[str, Any]]:
    subject = attestation.subject
    assert subject is not None
    name, value = next(iter(subject.to_dict().items()))
    return {"capabilityToken": "capability_token"}.get(name, name), value


def test_gate_decisions_and_eval_results_are_custom_attestations(daemon):
    decision, result, run_id = decide_and_judge(daemon)
    gate_id = custom_attestation_id(GATE_DECISION, decision.gate_id)
    eval_id = custom_attestation_id(EVAL_RESULT, result.result_id)
    gate, evaluation = get(daemon, [gate_id, eval_id])
    assert _which(gate) == ("custom", {"label": "gate_decision"})
    assert gate.claims.to_dict()["claims"]["gate_id"] == decision.gate_id
    assert _which(evaluation) == ("custom", {"label": "eval_result"})
    assert evaluation.claims.to_dict()["claims"]["run_id"] == run_id
    for attestation_id in (gate_id, eval_id):
        assert cli(daemon, "verify", attestation_id).returncode == 0


def decide_and_judge(daemon: Daemon) -> tuple[Any, Any, str]:
    """A gate decision, and an eval result of a run: (decision, result, run id)."""
    change = f"chg-{uuid.uuid4().hex[:8]}"
    request = api.CheckChangeGateRequest(change_id=change, revision="r1")
    decision = daemon.call(lambda _, rt: rt.check_change_gate(request)).decision
    run_id = run_and_wait(daemon, RESEARCH, inputs=TOPIC).run_id
    pack = f"pack-{uuid.uuid4().hex[:6]}"
    scenario = api.EvalScenarioDefinition(
        slug="s", title="S", run_spec=Struct.from_dict({"dag_json": RESEARCH}),
        expected=Struct.from_dict({"status": "succeeded"}),
    )  # fmt: skip
    daemon.call(
        lambda _, rt: rt.sync_eval_pack(api.SyncEvalPackRequest(pack=pack, scenarios=[scenario]))
    )
    recorded = api.RecordEvalResultRequest(pack=pack, slug="s", run_id=run_id, commit="abc")
    result = daemon.call(lambda _, rt: rt.record_eval_result(recorded)).result
    return decision, result, run_id


def test_attest_get_shows_whole_numbers_as_integers(daemon):
    # a Struct carries numbers as doubles: the claims showed "attempt": 1.0, "seed": 86…83.0
    run_id = run_and_wait(daemon, RESEARCH, inputs=TOPIC).run_id
    [step] = [a for a in attested(tap(daemon, run_id)) if a["kind"] == "step"][:1]
    shown = cli(daemon, "get", step["attestation_id"], "--json")
    assert shown.returncode == 0, shown.stderr
    [got] = json.loads(shown.stdout)
    assert got["claims"]["attempt"] == 1
    assert isinstance(got["claims"]["attempt"], int)
    assert isinstance(got["claims"]["seed"], int)
    text = cli(daemon, "get", step["attestation_id"])
    assert '"attempt":1,' in text.stdout
    assert '"attempt":1.0' not in text.stdout


def test_get_attestations_refuses_an_empty_list_and_names_unknown_ids(daemon):
    empty = rpc_error(daemon, lambda rt: rt.get_attestations(api.GetAttestationsRequest()))
    assert_error(empty, Status.INVALID_ARGUMENT, "attestation_ids")
    run_id = run_and_wait(daemon, RESEARCH, inputs=TOPIC).run_id
    known = attested(tap(daemon, run_id))[0]["attestation_id"]
    request = api.GetAttestationsRequest(attestation_ids=[known, "att_nope", "att_gone"])
    missing = rpc_error(daemon, lambda rt: rt.get_attestations(request))
    assert_error(missing, Status.NOT_FOUND, "att_nope", "att_gone")
    assert known not in (missing.message or "")


def test_a_large_gate_decisions_attestation_holds_up_no_one_and_its_reply_is_bounded(daemon):
    """A gate decision of 20,000 evals: its attestation's claims hold them all (an 8 MB reply),
    made and serialized on a worker thread (on the loop, 130,000 evals' reply of 55 MB held
    every other client 4 s); its id asked for more often than 64 MB of signed statements is
    refused, naming the field (20 times over came to 1.1 GB: 90 s of the loop)."""
    evals = [api.EvalMetric(name=f"m{i}", score=0.1, threshold=0.5) for i in range(20_000)]
    request = api.CheckChangeGateRequest(change_id="large", revision="r1", evals=evals)
    decision = daemon.call(lambda _, rt: rt.check_change_gate(request)).decision
    attestation_id = custom_attestation_id(GATE_DECISION, decision.gate_id)
    once = api.GetAttestationsRequest(attestation_ids=[attestation_id])
    reply, slowest = slowest_small_call_during(
        daemon, lambda: daemon.call(lambda _, rt: rt.get_attestations(once))
    )
    [got] = reply.attestations
    assert got.attestation_id == attestation_id
    scorecard = got.claims.to_dict()["claims"]["scorecard"]
    assert len(scorecard["evals"]["failing_metrics"]) == 20_000
    assert slowest < 0.5
    copies = (64 << 20) // len(got.signature) + 1
    many = api.GetAttestationsRequest(attestation_ids=[attestation_id] * copies)
    refused = rpc_error(daemon, lambda rt: rt.get_attestations(many))
    assert_error(refused, Status.RESOURCE_EXHAUSTED, "attestation_ids", "ask for fewer")
    twice = api.GetAttestationsRequest(attestation_ids=[attestation_id] * 2)
    assert len(daemon.call(lambda _, rt: rt.get_attestations(twice)).attestations) == 2


def test_pubkey_works_offline_and_matches_the_envelopes_key_id(daemon):
    done = subprocess.run(
        [sys.executable, "-m", "foundry.kernel.cli", "attest", "pubkey", "--json",
         "--home", str(daemon.home)],
        capture_output=True, text=True, check=True, env={**os.environ, "FOUNDRY_ADDR": "x:1"},
    )  # fmt: skip
    key = json.loads(done.stdout)
    assert key["public_key_pem"].startswith("-----BEGIN PUBLIC KEY-----")
    run_id = run_and_wait(daemon, RESEARCH, inputs=TOPIC).run_id
    first = attested(tap(daemon, run_id))[0]["attestation_id"]
    (attestation,) = get(daemon, [first])
    assert json.loads(attestation.signature)["signatures"][0]["keyid"] == key["key_id"]
    keys = daemon.home / "keys"
    assert stat.S_IMODE((keys / "attestor.key").stat().st_mode) == 0o600
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700


def test_export_verifies_offline_and_a_removed_or_swapped_step_breaks_the_chain(daemon, tmp_path):
    run_id = run_and_wait(daemon, RESEARCH, inputs=TOPIC).run_id
    exported = cli(daemon, "export", run_id)
    assert exported.returncode == 0, exported.stderr
    lines = exported.stdout.splitlines()
    assert len(lines) == len(attested(tap(daemon, run_id)))
    pubkey = tmp_path / "key.pem"
    pubkey.write_text((daemon.home / "keys" / "attestor.pub").read_text())

    def verify(name: str, chosen: list[str]) -> subprocess.CompletedProcess[str]:
        path = tmp_path / name
        path.write_text("\n".join(chosen) + "\n")
        return subprocess.run(
            [sys.executable, "-m", "foundry.kernel.cli", "attest", "verify", str(path),
             "--pubkey", str(pubkey)],
            capture_output=True, text=True, env={**os.environ, "FOUNDRY_HOME": str(tmp_path)},
        )  # fmt: skip

    assert verify("all.jsonl", lines).returncode == 0
    steps = [i for i, line in enumerate(lines) if '"step"' in _payload(line)]
    assert len(steps) == 3
    removed = [line for i, line in enumerate(lines) if i != steps[1]]
    broken = verify("removed.jsonl", removed)
    assert broken.returncode == 1
    assert "chain" in broken.stdout
    assert "previous" in broken.stdout
    swapped = list(lines)
    swapped[steps[0]], swapped[steps[1]] = swapped[steps[1]], swapped[steps[0]]
    assert verify("swapped.jsonl", swapped).returncode == 1
    # Without the run attestation (as a run not finished exports), the step attestations' links
    # are still checked: with one taken out from among them too, it was "valid"
    runs = [i for i, line in enumerate(lines) if '"run"' in _payload(line)]
    assert len(runs) == 1
    open_chain = [line for i, line in enumerate(lines) if i != runs[0]]
    unfinished = verify("unfinished.jsonl", open_chain)
    assert unfinished.returncode == 0, unfinished.stdout
    assert "no run attestation here" in unfinished.stderr
    stripped = verify(
        "stripped.jsonl", [ln for i, ln in enumerate(lines) if i not in (runs[0], steps[1])]
    )
    assert stripped.returncode == 1, stripped.stdout
    assert "previous" in stripped.stdout
    forged = json.loads(lines[0])
    forged["signatures"][0]["sig"] = forged["signatures"][0]["sig"][::-1]
    bad = verify("forged.jsonl", [json.dumps(forged)])
    assert bad.returncode == 1
    assert "signature" in bad.stdout
    # A file of one envelope with two "payload" keys: the last (genuine) one was verified while
    # readers keeping the first saw the forged one
    twice = '{"payload": "e30=", ' + json.dumps(json.loads(lines[0]))[1:]  # "{}" first
    duplicated = verify("duplicated.json", [twice])
    assert duplicated.returncode == 1, duplicated.stdout
    assert "duplicate key 'payload'" in duplicated.stdout
    # what `attest get --json` writes (a list of attestations, each with its envelope) verifies
    got = cli(daemon, "get", *(a.attestation_id for a in get(daemon, _ids(daemon, run_id))),
              "--json")  # fmt: skip
    assert got.returncode == 0, got.stderr
    listed = verify("got.json", [got.stdout])
    assert listed.returncode == 0, listed.stdout
    # A run attestation alone (its `attest get --json`, its export line) is valid with a note,
    # as step attestations without their run's are: its chain was "INVALID … digests to None"
    run_alone = verify("run.jsonl", [lines[runs[0]]])
    assert run_alone.returncode == 0, run_alone.stdout
    assert "none of its 3 step attestations is here" in run_alone.stderr
    assert "None" not in run_alone.stdout + run_alone.stderr


def _ids(daemon: Daemon, run_id: str) -> list[str]:
    detail = daemon.call(lambda _, rt: rt.get_run(api.GetRunRequest(run_id=run_id))).run
    return list(detail.attestation_ids)


@pytest.mark.parametrize("big", [12345678901234567, 2**53 + 1, -(2**53 + 1)])
def test_an_output_with_an_integer_past_2_53_verifies_by_id(daemon, big):
    """A Value carries a double: an integer past 2**53, hashed exactly, read back rounded, and
    an untouched output "was changed" (2**53 + 1 rounds to an integer again)."""
    spec = dag({"id": "big", "type": "transform", "inputs": {"merge": [{"v": big}]}})
    run_id = run_and_wait(daemon, spec).run_id
    for attestation_id in _ids(daemon, run_id):
        done = cli(daemon, "verify", attestation_id)
        assert done.returncode == 0, (attestation_id, done.stdout)


def test_an_artifact_gone_is_said_and_one_replaced_by_a_folder_is_invalid(daemon):
    run_id = submit(daemon, EVERY_KIND)
    assert wait_done(daemon, run_id).status == api.RunStatus.SUCCEEDED
    [artifact] = [a for a in get(daemon, _ids(daemon, run_id)) if _which(a)[0] == "artifact"]
    path = Path(_which(artifact)[1]["uri"].removeprefix("file://"))
    path.unlink()  # "valid", and nothing said
    gone = cli(daemon, "verify", artifact.attestation_id)
    assert gone.returncode == 0, gone.stdout
    assert "is not stored any more" in gone.stderr
    path.mkdir()  # "valid" too
    folder = cli(daemon, "verify", artifact.attestation_id)
    assert folder.returncode == 1, folder.stdout
    assert "cannot be read as a regular file" in folder.stdout


def test_a_run_of_more_attestations_than_a_request_takes_exports_and_verifies(daemon):
    # 1,000 steps make 1,001 attestations: export and verify asked GetAttestations for all at
    # once and failed with "attestation_ids: at most 1000 per request"
    steps = [{"id": "s0", "type": "transform", "inputs": {"value": 0}}]
    for i in range(1, 1_000):
        previous = f"${{steps.s{i - 1}.output}}"
        steps.append({"id": f"s{i}", "type": "transform", "inputs": {"value": previous}})
    run_id = run_and_wait(daemon, json.dumps({"steps": steps})).run_id
    exported = cli(daemon, "export", run_id)
    assert exported.returncode == 0, exported.stderr
    assert len(exported.stdout.splitlines()) == 1_001
    [run_attestation] = [a for a in attested(tap(daemon, run_id)) if a["kind"] == "run"]
    verified = cli(daemon, "verify", run_attestation["attestation_id"])
    assert verified.returncode == 0, verified.stdout + verified.stderr


def _payload(envelope: str) -> str:
    import base64

    statement = json.loads(base64.b64decode(json.loads(envelope)["payload"]))
    return json.dumps(statement["predicateType"].rsplit("/", 2)[-2])


def test_a_step_output_changed_in_the_database_is_reported(make_daemon):
    daemon = make_daemon()
    run_id = run_and_wait(daemon, RESEARCH, inputs=TOPIC).run_id
    notes = attested(tap(daemon, run_id))
    step_id = next(
        n["attestation_id"] for n in notes if (n["step_id"], n["kind"]) == ("count", "step")
    )
    run_attestation = next(n["attestation_id"] for n in notes if n["kind"] == "run")
    assert daemon.cli("attest", "verify", run_attestation).returncode == 0
    assert daemon.stop() == 0
    change_stored_output(daemon, run_id, "step_completed", {"words": 999})
    daemon.start()
    # a run rebuilt from the stored log lists the same ids
    detail = daemon.call(lambda _, rt: rt.get_run(api.GetRunRequest(run_id=run_id))).run
    assert list(detail.attestation_ids) == [n["attestation_id"] for n in notes]
    step = daemon.cli("attest", "verify", step_id)
    assert step.returncode == 1, step.stdout
    assert "count" in step.stdout
    assert "changed" in step.stdout
    run = daemon.cli("attest", "verify", run_attestation)
    assert run.returncode == 1
    assert "count" in run.stdout


FAILS_SECOND = dag(
    {"id": "a", "type": "transform", "inputs": {"x": 1}},
    {"id": "bad", "type": "tool", "depends_on": ["a"], "inputs": {"tool": "no_such_tool"}},
)


def test_a_run_rewritten_in_the_database_fails_its_run_attestations_verify(make_daemon):
    """With the daemon stopped, a failed run's failed step rewritten as completed (a forged
    output no step attestation covers), the run made succeeded, and the unsigned artifact_hash
    column set to match: its run attestation verified (an attestation hunt). The run's outputs
    digest is signed now (``outputs_hash``), and its claims are compared with the stored run."""
    daemon = make_daemon()
    run_id = submit(daemon, FAILS_SECOND, inputs={"n": 3}, seed=7)
    assert wait_done(daemon, run_id).status == api.RunStatus.FAILED
    (run_attestation,) = [n["attestation_id"] for n in attested(tap(daemon, run_id))
                          if n["kind"] == "run"]  # fmt: skip
    assert cli(daemon, "verify", run_attestation).returncode == 0
    (signed,) = get(daemon, [run_attestation])
    assert signed.claims.to_dict()["outputs_hash"] == signed.artifact_hash
    assert daemon.stop() == 0
    forged = {"a": {"x": 1}, "bad": {"forged": True}}
    with duckdb.connect(str(daemon.home / "foundry.duckdb")) as con:
        (seq, payload) = con.execute(
            "SELECT seq, payload FROM run_events WHERE run_id = ? AND kind = 'step_failed'",
            [run_id],
        ).fetchone()
        completed = {"artifacts": [], "attempt": 1, "block": "tool", "duration_ms": 0.1,
                     "exit_code": 0, "output": forged["bad"], "raw_output": "",
                     "span_id": json.loads(payload)["span_id"],
                     "usage": {"cost": 0.0, "tokens_in": 0, "tokens_out": 0}}  # fmt: skip
        con.execute(
            "UPDATE run_events SET kind = 'step_completed', payload = ? "
            "WHERE run_id = ? AND seq = ?",
            [json.dumps(completed), run_id, seq],
        )
        con.execute("UPDATE run_events SET kind = 'run_succeeded', payload = '{}' "
                    "WHERE run_id = ? AND kind = 'run_failed'", [run_id])  # fmt: skip
        con.execute("UPDATE attestation_statements SET artifact_hash = ? WHERE attestation_id = ?",
                    [json_digest(forged), run_attestation])  # fmt: skip
    daemon.start()
    done = cli(daemon, "verify", run_attestation)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "stored status 'SUCCEEDED', attested 'FAILED'" in done.stdout
    assert f"not the attested {signed.artifact_hash}" in done.stdout


def test_a_run_attestation_checks_the_stored_spec_whatever_its_breakpoints_became(make_daemon):
    """The run attestation's spec_hash hashes the spec with the breakpoints it was submitted
    with, signed beside it (UpdateBreakpoints changes the run's, which GetRun shows): verify
    recomputes it from the stored spec, so a DAG edited in the database is reported (it was
    not checked at all: an attestation hunt), while a run whose breakpoints changed verifies."""
    daemon = make_daemon()
    spec = dag(
        {"id": "a", "type": "transform", "inputs": {"x": 1}},
        {"id": "b", "type": "transform", "depends_on": ["a"], "inputs": {"n": [1, 2.5]}},
    )
    run_id = submit(daemon, spec, inputs={"n": 3, "deep": {"k": [1, {"z": 2.5}]}}, seed=7,
                    breakpoints=["b"], labels={"team": "x"})  # fmt: skip
    wait_status(daemon, run_id, api.RunStatus.PAUSED_AT_STEP)
    update = api.UpdateBreakpointsRequest(run_id=run_id, add=["a"], remove=["b"])
    daemon.call(lambda _, rt: rt.update_breakpoints(update))
    daemon.call(lambda _, rt: rt.resume_run(api.ResumeRunRequest(run_id=run_id)))
    assert wait_done(daemon, run_id).status == api.RunStatus.SUCCEEDED
    (run_attestation,) = [n["attestation_id"] for n in attested(tap(daemon, run_id))
                          if n["kind"] == "run"]  # fmt: skip
    (signed,) = get(daemon, [run_attestation])
    assert signed.claims.to_dict()["breakpoints"] == ["b"]
    done = cli(daemon, "verify", run_attestation)
    assert done.returncode == 0, done.stdout + done.stderr
    assert daemon.stop() == 0
    with duckdb.connect(str(daemon.home / "foundry.duckdb")) as con:
        con.execute("UPDATE runs SET dag_json = replace(dag_json, '2.5', '9.5') WHERE run_id = ?",
                    [run_id])  # fmt: skip
    daemon.start()
    done = cli(daemon, "verify", run_attestation)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"run {run_id}: stored spec_hash '" in done.stdout
    assert f"attested '{signed.claims.to_dict()['spec_hash']}'" in done.stdout


def test_the_attestations_of_a_run_retention_archived_verify_with_a_note(make_daemon):
    """Retention moves a finished run out of the live tables and keeps its attestations: their
    verify said ``NOT_FOUND: run_id: no run …`` and exit 1, as if invalid."""
    daemon = make_daemon("[store]\nretain_days = 0.0001\nretention_interval = 1\n")  # 8.64 s
    run_id = run_and_wait(daemon, RESEARCH, inputs=TOPIC).run_id
    by_kind = {n["kind"]: n["attestation_id"] for n in attested(tap(daemon, run_id))}
    assert {"step", "tool", "run"} <= by_kind.keys()

    def archived() -> bool:
        sql = f"SELECT count(*) FROM runs WHERE run_id = '{run_id}'"
        return json.loads(daemon.cli("sql", sql, "--json").stdout)["rows"] == [[0]]

    wait_until(archived, what="retention to archive the run", timeout=40, interval=0.5)
    daemon.restart()  # (until then the scheduler answers GetRun from its recent runs)
    with pytest.raises(GRPCError) as gone:
        daemon.call(lambda _, rt: rt.get_run(api.GetRunRequest(run_id=run_id)))
    assert gone.value.status == Status.NOT_FOUND
    for kind in ("step", "tool", "run"):
        done = cli(daemon, "verify", by_kind[kind])
        assert done.returncode == 0, (kind, done.stdout, done.stderr)
        assert f"note: run {run_id} is not stored any more" in done.stderr
    exported = cli(daemon, "export", run_id)
    assert exported.returncode == 1
    assert f"no run {run_id} is stored (retention archives finished runs)" in exported.stderr


def copy_statements(daemon: Daemon, pairs: list[tuple[str, str]]) -> None:
    """Into each target's row, the source attestation's genuinely signed statement (the daemon
    stopped): what someone who can write the database could do."""
    with duckdb.connect(str(daemon.home / "foundry.duckdb")) as con:
        for source, target in pairs:
            row = con.execute("SELECT statement, signature FROM attestation_statements WHERE "
                              "attestation_id = ?", [source]).fetchone()  # fmt: skip
            assert row is not None
            con.execute("UPDATE attestation_statements SET statement = ?, signature = ? WHERE "
                        "attestation_id = ?", [*row, target])  # fmt: skip


def test_another_runs_statement_copied_into_an_attestation_is_reported(make_daemon):
    """A step attestation's row given another run's genuinely signed statement (found by an
    attestation hunt: ``attest verify ID`` said valid, checking the output of the run the
    statement names): the id names one run, the signed statement another."""
    daemon = make_daemon()
    first, second = (run_and_wait(daemon, RESEARCH, inputs=TOPIC).run_id for _ in range(2))

    def step_attestation(run_id: str) -> str:
        return next(n["attestation_id"] for n in attested(tap(daemon, run_id))
                    if (n["step_id"], n["kind"]) == ("count", "step"))  # fmt: skip

    target, source = step_attestation(first), step_attestation(second)
    assert daemon.cli("attest", "verify", target).returncode == 0
    assert daemon.stop() == 0
    copy_statements(daemon, [(source, target)])
    daemon.start()
    verified = daemon.cli("attest", "verify", target)
    assert verified.returncode == 1, verified.stdout
    assert f"its signed statement is of run {second}, which its id {target} does not name" in (
        verified.stdout
    )


def test_another_steps_statement_of_the_same_kind_copied_into_a_row_is_reported(
    make_daemon, tmp_path
):
    """A tool call's, capability token's or artifact's row given another step's genuinely
    signed statement of the same run verified as valid (found by an attestation audit): their
    subjects name no step, and only step attestations had theirs compared."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "attest_note_block.py").write_text(ARTIFACT_PLUGIN)
    env = {"PYTHONPATH": os.pathsep.join([str(plugins), os.environ.get("PYTHONPATH", "")])}
    daemon = make_daemon('[plugins]\nmodules = ["attest_note_block"]\n', env=env)
    steps = dag(
        {"id": "count", "type": "tool", "inputs": {"tool": "word_count", "args": {"text": "a"}}},
        {"id": "count2", "type": "tool", "inputs": {"tool": "word_count", "args": {"text": "b c"}}},
        {"id": "note", "type": "write_note", "inputs": {"text": "one"}},
        {"id": "note2", "type": "write_note", "inputs": {"text": "two"}},
    )
    run_id = run_and_wait(daemon, steps).run_id
    ids = {(n["step_id"], n["kind"]): n["attestation_id"] for n in attested(tap(daemon, run_id))}
    pairs = [(ids[("count", k)], ids[("count2", k)]) for k in ("tool", "capability_token")]
    pairs.append((ids[("note", "artifact")], ids[("note2", "artifact")]))
    for _, target in pairs:
        assert daemon.cli("attest", "verify", target).returncode == 0
    assert daemon.stop() == 0
    copy_statements(daemon, pairs)
    daemon.start()
    for (_, target), (of, stored) in zip(pairs, [("count", "count2")] * 2 + [("note", "note2")],
                                         strict=True):  # fmt: skip
        verified = daemon.cli("attest", "verify", target)
        assert verified.returncode == 1, verified.stdout
        assert f"its signed statement is of step {of}, but it is stored as the" in verified.stdout
        assert f"attestation of step {stored}" in verified.stdout


def test_another_decisions_statement_copied_into_a_gate_or_eval_row_is_reported(make_daemon):
    """A gate decision's row given another decision's genuinely signed statement (a DENY's an
    ALLOW's) verified as valid (a hunt): a custom attestation's id is the hash of its label and
    record id, and nothing compared them. The same for an eval result's."""
    daemon = make_daemon()
    (decision, result, _), (other_decision, other, _) = (decide_and_judge(daemon) for _ in "ab")
    pairs = [
        (custom_attestation_id(GATE_DECISION, other_decision.gate_id),
         custom_attestation_id(GATE_DECISION, decision.gate_id),
         f"gate_decision {other_decision.gate_id}"),
        (custom_attestation_id(EVAL_RESULT, other.result_id),
         custom_attestation_id(EVAL_RESULT, result.result_id), f"eval_result {other.result_id}"),
    ]  # fmt: skip
    assert daemon.stop() == 0
    copy_statements(daemon, [(source, target) for source, target, _ in pairs])
    daemon.start()
    for source, target, said in pairs:
        assert cli(daemon, "verify", source).returncode == 0
        verified = cli(daemon, "verify", target)
        assert verified.returncode == 1, verified.stdout
        assert f"its signed statement is of {said}, whose attestation id is not {target}" in (
            verified.stdout
        )


def test_a_gate_decision_or_eval_result_changed_or_deleted_in_the_database_is_reported(
    make_daemon,
):
    """A DENY edited to ALLOW in gate_decisions, a failed result edited to passed in
    eval_results: verify compared the signed statement with the id only, and said valid while
    ListChangeGates served the forged verdict (a hunt)."""
    daemon = make_daemon()
    (decision, result, _), (gone_decision, gone_result, _) = (
        decide_and_judge(daemon) for _ in "ab"
    )
    gate_id, result_id = decision.gate_id, result.result_id
    for record in (custom_attestation_id(GATE_DECISION, gate_id),
                   custom_attestation_id(EVAL_RESULT, result_id)):  # fmt: skip
        assert cli(daemon, "verify", record).returncode == 0
    signed_effect = api.ChangeDecisionEffect(decision.effect).name.lower()
    forged_effect = "deny" if signed_effect != "deny" else "allow"
    assert daemon.stop() == 0
    with duckdb.connect(str(daemon.home / "foundry.duckdb")) as con:
        con.execute(
            "UPDATE gate_decisions SET effect = ? WHERE gate_id = ?", [forged_effect, gate_id]
        )
        con.execute("UPDATE eval_results SET outcome = 'failed' WHERE result_id = ?", [result_id])
        con.execute("DELETE FROM gate_decisions WHERE gate_id = ?", [gone_decision.gate_id])
        con.execute("DELETE FROM eval_results WHERE result_id = ?", [gone_result.result_id])
    daemon.start()
    verified = cli(daemon, "verify", custom_attestation_id(GATE_DECISION, gate_id))
    assert verified.returncode == 1, verified.stdout
    said = (f'gate_decision {gate_id}: the stored effect is "{forged_effect}", but its '
            f'attestation signed "{signed_effect}" — it was changed')  # fmt: skip
    assert said in verified.stdout
    verified = cli(daemon, "verify", custom_attestation_id(EVAL_RESULT, result_id))
    assert verified.returncode == 1, verified.stdout
    assert f'the stored outcome is "failed", but its attestation signed "{result.outcome}"' in (
        verified.stdout
    )
    for label, record_id in ((GATE_DECISION, gone_decision.gate_id),
                             (EVAL_RESULT, gone_result.result_id)):  # fmt: skip
        verified = cli(daemon, "verify", custom_attestation_id(label, record_id))
        assert verified.returncode == 1, verified.stdout
        assert f"{label} {record_id} is not stored as it was signed: not listed" in verified.stdout


def test_genuine_results_verify_and_a_deleted_one_is_invalid_beside_a_full_history(make_daemon):
    """Found by a review of the check above: a genuine result whose metrics hold an integer
    past 2**53 (a Struct lists it as a double) was called changed; a deleted result verified
    valid, "past what the daemon lists", because another scenario had a full history."""
    daemon = make_daemon()
    output = {"ok": True, "at_ns": 1765091234567890123}
    steps = dag({"id": "t", "type": "transform", "inputs": {"value": output}})
    run_id = run_and_wait(daemon, steps).run_id
    judged = {"status": "succeeded", "steps": {"t": {"subset": {"ok": True}}}}
    scenarios = [
        api.EvalScenarioDefinition(slug=slug, title=slug, expected=Struct.from_dict(judged),
                                   run_spec=Struct.from_dict({"dag_json": steps}))
        for slug in ("ns", "busy")
    ]  # fmt: skip
    daemon.call(
        lambda _, rt: rt.sync_eval_pack(api.SyncEvalPackRequest(pack="p", scenarios=scenarios))
    )

    def record(slug: str) -> Any:
        request = api.RecordEvalResultRequest(pack="p", slug=slug, run_id=run_id, commit="c")
        return daemon.call(lambda _, rt: rt.record_eval_result(request)).result

    kept, gone = record("ns"), record("ns")
    for _ in range(HISTORY_LIMIT):
        record("busy")
    verified = cli(daemon, "verify", custom_attestation_id(EVAL_RESULT, kept.result_id))
    assert verified.returncode == 0, verified.stdout
    assert daemon.stop() == 0
    with duckdb.connect(str(daemon.home / "foundry.duckdb")) as con:
        con.execute("DELETE FROM eval_results WHERE result_id = ?", [gone.result_id])
    daemon.start()
    verified = cli(daemon, "verify", custom_attestation_id(EVAL_RESULT, gone.result_id))
    assert verified.returncode == 1, verified.stdout
    assert "not stored as it was signed: not listed any more" in verified.stdout


def test_an_attestation_id_of_before_verifies_by_the_run_that_announced_it(make_daemon):
    """A daemon of before named a run's attestations by a hash (``att_`` + 24 hex of the run id
    and seq), and a migration kept those ids: they are not ``att_<run>_<seq>``, and verify
    called every one another attestation's statement (found by a review). Such an id verifies
    when the run the statement names announces it."""
    daemon = make_daemon()
    run_id = run_and_wait(daemon, RESEARCH, inputs=TOPIC).run_id
    note = next(n for n in attested(tap(daemon, run_id)) if (n["step_id"], n["kind"]) ==
                ("count", "step"))  # fmt: skip
    current = note["attestation_id"]
    seq = int(current.rsplit("_", 1)[1])
    legacy = "att_" + hashlib.sha256(f"{run_id}\n{seq}".encode()).hexdigest()[:24]
    assert daemon.stop() == 0
    with duckdb.connect(str(daemon.home / "foundry.duckdb")) as con:
        con.execute("UPDATE attestation_statements SET attestation_id = ? WHERE "
                    "attestation_id = ?", [legacy, current])  # fmt: skip
        con.execute("UPDATE run_events SET payload = replace(CAST(payload AS VARCHAR), ?, ?) "
                    "WHERE run_id = ? AND seq = ?", [current, legacy, run_id, seq])  # fmt: skip
    daemon.start()
    detail = daemon.call(lambda _, rt: rt.get_run(api.GetRunRequest(run_id=run_id))).run
    assert legacy in detail.attestation_ids
    verified = daemon.cli("attest", "verify", legacy)
    assert verified.returncode == 0, verified.stdout


def test_a_reused_output_changed_in_a_branch_is_reported(make_daemon):
    # A branch attests only the steps it ran: its reused outputs were covered by the run
    # attestation's artifact_hash column alone, unsigned — changed together with it in the
    # database, verify said valid
    daemon = make_daemon()
    source = run_and_wait(daemon, RESEARCH, inputs=TOPIC).run_id
    request = api.CreateBranchRunRequest(run_id=source, from_step="report")
    branch = daemon.call(lambda _, rt: rt.create_branch_run(request)).run_id
    assert wait_done(daemon, branch).status == api.RunStatus.SUCCEEDED
    [run_attestation] = [
        n["attestation_id"] for n in attested(tap(daemon, branch)) if n["kind"] == "run"
    ]
    assert daemon.cli("attest", "verify", run_attestation).returncode == 0
    assert daemon.stop() == 0
    change_stored_output(daemon, branch, "step_reused", {"words": 7777})
    daemon.start()
    verified = daemon.cli("attest", "verify", run_attestation)
    assert verified.returncode == 1, verified.stdout
    assert "step 'count': the stored output digests to" in verified.stdout
    assert f"(reused from run {source})" in verified.stdout


def test_a_branch_of_a_paused_run_verifies(daemon):
    # the reused steps are checked against the paused source's step attestations: verify asked
    # for the source's attestations as of a finished run, and said "export a finished run"
    source = submit(daemon, RESEARCH, inputs=TOPIC, breakpoints=("report",))
    wait_status(daemon, source, api.RunStatus.PAUSED_AT_STEP)
    request = api.CreateBranchRunRequest(run_id=source, from_step="report")
    branch = daemon.call(lambda _, rt: rt.create_branch_run(request)).run_id
    assert wait_done(daemon, branch).status == api.RunStatus.SUCCEEDED
    [run_attestation] = [
        n["attestation_id"] for n in attested(tap(daemon, branch)) if n["kind"] == "run"
    ]
    verified = daemon.cli("attest", "verify", run_attestation)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "not checked" not in verified.stderr


def test_a_signing_key_others_may_read_refuses_the_start(make_daemon):
    daemon = make_daemon()
    assert daemon.stop() == 0
    key = daemon.home / "keys" / "attestor.key"
    key.chmod(0o644)
    done = subprocess.run(
        [sys.executable, "-m", "foundry.kernel.cli", "serve", "--config", str(daemon.config),
         "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "FOUNDRY_HOME": str(daemon.home)},
    )  # fmt: skip
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert str(key) in lines[0]
    assert "0644" in lines[0]
    key.chmod(0o600)
    daemon.start()  # owner-only again: it starts


def test_attest_enabled_false_attests_nothing(make_daemon):
    daemon = make_daemon(textwrap.dedent("[attest]\nenabled = false\n"), name="off")
    run_id = run_and_wait(daemon, RESEARCH, inputs=TOPIC).run_id
    events = tap(daemon, run_id)
    assert not of_kind(events, "attested")
    assert not attested(events)  # no completion announces one either
    assert of_kind(events, "capability_granted")  # tokens are granted either way
    detail = daemon.call(lambda _, rt: rt.get_run(api.GetRunRequest(run_id=run_id))).run
    assert not detail.attestation_ids


def test_artifact_paths_are_files_the_step_wrote(daemon):
    run_id = submit(daemon, EVERY_KIND)
    wait_done(daemon, run_id)
    (artifact,) = [n for n in attested(tap(daemon, run_id)) if n["kind"] == "artifact"]
    assert Path(artifact["uri"]).read_text()


def test_links_a_step_leaves_are_not_artifacts_nor_attested(daemon, tmp_path):
    """Links in a step's artifact folder (found by a plugin-security hunt: one to
    /proc/self/environ had the daemon read its own environment and sign its digest, one to a
    file outside the folder signed that file) are not listed, read or attested."""
    outside = tmp_path / "outside.txt"
    outside.write_text("not the run's")
    run_id = submit(daemon, dag({"id": "links", "type": "leave_links",
                                 "inputs": {"outside": str(outside)}}))  # fmt: skip
    wait_done(daemon, run_id)
    (completed,) = of_kind(tap(daemon, run_id), "step_completed")
    assert [Path(p).name for p in completed["payload"]["artifacts"]] == ["kept.txt"]
    artifacts = [n for n in attested(tap(daemon, run_id)) if n["kind"] == "artifact"]
    assert [Path(a["uri"]).name for a in artifacts] == ["kept.txt"]


def test_an_artifact_the_step_removed_is_not_listed_and_its_run_exports(daemon, tmp_path):
    """A block that removed a file it wrote had it listed: its artifact attestation, announced,
    was never made (the file was gone), so the run could never be exported, and every start
    logged an error re-attesting it (a plugin hunt)."""
    run_id = submit(daemon, dag({"id": "tidy", "type": "write_then_remove"}))
    wait_done(daemon, run_id)
    (completed,) = of_kind(tap(daemon, run_id), "step_completed")
    assert [Path(p).name for p in completed["payload"]["artifacts"]] == ["kept.txt"]
    exported = cli(daemon, "export", run_id)
    assert exported.returncode == 0, exported.stderr
    envelopes = [json.loads(line) for line in exported.stdout.splitlines() if line.strip()]
    ids = [n["attestation_id"] for n in attested(tap(daemon, run_id))]
    assert len(envelopes) == len(ids) == 3  # step, its one artifact, run


@pytest.mark.parametrize("path", ["/etc/hostname", "rel.txt", "ARTIFACTS/../../escape.txt"])
def test_a_path_a_block_lists_outside_its_artifact_folder_fails_the_step(daemon, path):
    """A path appended to ``ctx.artifacts_written`` was taken as it was: /etc/hostname was
    signed as the run's artifact, and a relative path announced an attestation never made."""
    folder = daemon.home / "artifacts" / "runs"
    run_id = submit(daemon, dag({"id": "claim", "type": "claim_artifact", "inputs": {
        "path": path.replace("ARTIFACTS", str(folder))}}))  # fmt: skip
    wait_done(daemon, run_id)
    events = tap(daemon, run_id)
    (failed,) = of_kind(events, "step_failed")
    said = failed["payload"]["error"]["message"]
    assert said.startswith("ctx.artifacts_written holds '"), said
    assert said.endswith("', not a file in this execution's artifact folder"), said
    assert not [n for n in attested(events) if n["kind"] == "artifact"]


def _signers(pid: int) -> list[int]:
    children = [int(c) for listing in Path(f"/proc/{pid}/task").glob("*/children")
                for c in listing.read_text().split()]  # fmt: skip
    return [c for c in children if "signing_process.py" in _cmdline(c)]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return ""


def test_a_signing_process_signs_and_ends_with_a_killed_daemon(make_daemon):
    daemon = make_daemon(name="signer")
    run_id = run_and_wait(daemon, RESEARCH, inputs=TOPIC).run_id
    ids = [n["attestation_id"] for n in attested(tap(daemon, run_id))]
    assert cli(daemon, "verify", ids[-1]).returncode == 0  # signed by it: it verifies
    assert daemon.process is not None
    (signer,) = _signers(daemon.process.pid)
    assert str(daemon.home / "keys" / "attestor.key") in _cmdline(signer)  # it reads the file
    daemon.kill()  # SIGKILL: the signer's stdin ends, and so does the signer
    wait_until(lambda: process_gone(signer), what="the signing process to exit")


SLOW_NOTE = """
[store]
materialize_delay = 300

[[blocks]]
name = "slow_note"
type = "shell"
kind = "mutator"
command = ["sh", "-c", "sleep 0.02; printf '{\\"n\\":%s}' $FOUNDRY_INPUT_N"]
"""


FAN = 200  # observers that finish together: their attestations are one batch, spooled


def test_a_daemon_killed_with_attestations_on_their_way_makes_them_again_at_start(make_daemon):
    """kill -9 while a run's attestations are signed but not in DuckDB (DuckDB is given them
    only every 300 s here: at 30, a loaded CI machine took longer to reach the kill, and the
    spool was drained by then): a fan of observers' in the spool (a large batch), a chain of slow
    mutators' in the store's memory (batches of one or two). The next start clears the spool,
    re-attests every announced attestation from the stored log and resumes the run; then every
    id the run announced is found, each verifies, and the run's hash chain holds."""
    daemon = make_daemon(SLOW_NOTE)
    fan = [{"id": f"f{i:03d}", "type": "transform", "inputs": {"value": i}} for i in range(FAN)]
    steps = [{"id": "s000", "type": "slow_note", "depends_on": [f["id"] for f in fan],
              "inputs": {"n": 0}}] + [
        {"id": f"s{i:03d}", "type": "slow_note", "depends_on": [f"s{i - 1:03d}"],
         "inputs": {"n": i}}
        for i in range(1, 60)
    ]  # fmt: skip
    run_id = submit(daemon, dag(*fan, *steps))
    wait_for(
        daemon, run_id, lambda r: sum(s.status == "succeeded" for s in r.steps) >= FAN + 20,
        timeout=60, what="the fan and 20 chained steps done",
    )  # fmt: skip
    spooled = list((daemon.home / SPOOL).iterdir())
    daemon.kill()
    assert spooled, "no attestation was in the spool at the kill: nothing tested"

    daemon.start()
    assert wait_done(daemon, run_id, timeout=60).status == api.RunStatus.SUCCEEDED
    assert "re-attested" in daemon.stderr()
    ids = [n["attestation_id"] for n in attested(tap(daemon, run_id))]
    assert len(ids) == FAN + 61  # a step attestation each, and the run's
    assert [a.attestation_id for a in get(daemon, ids)] == ids
    done = cli(daemon, "verify", ids[-1])  # the run's: its chain of 260 step attestations
    assert done.returncode == 0, done.stdout + done.stderr
    assert list((daemon.home / SPOOL).iterdir()) == []


def change_stored_output(daemon, run_id, kind, output):
    """Rewrite the stored output of the run's step "count" (its ``kind`` event) in the
    database, as someone with the file could: the daemon is stopped."""
    with duckdb.connect(str(daemon.home / "foundry.duckdb")) as con:
        where = "WHERE run_id = ? AND step_id = 'count' AND kind = ?"
        (payload,) = con.execute(
            f"SELECT payload FROM run_events {where}", [run_id, kind]
        ).fetchone()
        changed = {**json.loads(payload), "output": output}
        con.execute(
            f"UPDATE run_events SET payload = ? {where}", [json.dumps(changed), run_id, kind]
        )


def test_a_gate_decisions_or_eval_results_lost_attestation_is_made_at_start(make_daemon):
    """Nothing announces these in a run log: a daemon stopped between a record's commit and its
    attestation's left it unattested for good (kill -9 right after CheckChangeGate's answer).
    Here the loss is made certain — the rows taken out of a stopped daemon's database — and
    the next start attests both again, under the same ids, and they verify."""
    daemon = make_daemon()
    decision, result, _ = decide_and_judge(daemon)
    ids = (
        custom_attestation_id(GATE_DECISION, decision.gate_id),
        custom_attestation_id(EVAL_RESULT, result.result_id),
    )
    assert len(get(daemon, list(ids))) == 2
    daemon.stop()
    with duckdb.connect(str(daemon.home / "foundry.duckdb")) as con:
        con.execute("DELETE FROM attestation_statements WHERE kind = 'custom'")
    daemon.start()
    assert [a.attestation_id for a in get(daemon, list(ids))] == list(ids)
    assert "attested 2 gate decision(s) and eval result(s)" in daemon.stderr()
    for attestation_id in ids:
        done = cli(daemon, "verify", attestation_id)
        assert done.returncode == 0, done.stdout + done.stderr
    daemon.restart()  # once: nothing is left to attest
    assert daemon.stderr().count("gate decision(s) and eval result(s)") == 1


def test_a_gate_decision_acknowledged_just_before_a_kill_is_attested_after_it(make_daemon):
    daemon = make_daemon()
    change = f"chg-{uuid.uuid4().hex[:8]}"
    request = api.CheckChangeGateRequest(change_id=change, revision="r1")
    decision = daemon.call(lambda _, rt: rt.check_change_gate(request)).decision
    daemon.kill()  # within the attestor's linger: its attestation was not stored yet
    daemon.start()
    [found] = get(daemon, [custom_attestation_id(GATE_DECISION, decision.gate_id)])
    assert found.claims.to_dict()["claims"]["gate_id"] == decision.gate_id


def test_a_large_submissions_run_attestation_verifies(make_daemon):
    """The spec hash of a run of more than 2,000 input and label values is made on a worker
    thread as the run starts (at its end, on the loop, 350,000 labels held it 0.5 s): the same
    hash, which verify recomputes from the stored spec."""
    daemon = make_daemon()
    inputs = {"big": list(range(3_000)), "f": [2.5, 1e300, -0.0], "s": "é"}
    labels = {f"k{i}": "v" for i in range(2_500)}
    run_id = submit(daemon, dag({"id": "a", "type": "transform", "inputs": {"x": 1}}),
                    inputs=inputs, labels=labels, seed=11)  # fmt: skip
    assert wait_done(daemon, run_id).status == api.RunStatus.SUCCEEDED
    (run_attestation,) = [n["attestation_id"] for n in attested(tap(daemon, run_id))
                          if n["kind"] == "run"]  # fmt: skip
    (signed,) = get(daemon, [run_attestation])
    spec = {"dag_json": dag({"id": "a", "type": "transform", "inputs": {"x": 1}}),
            "inputs": inputs, "seed": 11, "labels": labels, "breakpoints": []}  # fmt: skip
    assert signed.claims.to_dict()["spec_hash"] == json_digest(spec)
    done = cli(daemon, "verify", run_attestation)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_run_of_long_text_outputs_is_attested_replayed_and_read_whole(daemon):
    """Outputs of one long string each: one JSON value, yet as costly to encode as thousands
    (twenty of 3.9 MB held every other client 0.7-3 s, a hunt). Such steps' attestations are
    pickled for the signing process, their replay's outputs read back, and their GetRun made,
    on worker threads: each whole."""
    text = "ü" + "y" * 2_500_000
    steps = [{"id": f"s{i}", "type": "transform", "inputs": {"value": "${inputs.text}"}}
             for i in range(3)]  # fmt: skip
    run_id = submit(daemon, dag(*steps), inputs={"text": text})
    assert wait_done(daemon, run_id, timeout=120).status == api.RunStatus.SUCCEEDED
    detail = daemon.call(lambda _, rt: rt.get_run(api.GetRunRequest(run_id=run_id))).run
    assert [s.output.to_dict() for s in detail.steps] == [text] * 3
    replay = api.ReplayRunRequest(run_id=run_id, mode=api.ReplayMode.FULL)
    replayed = daemon.call(lambda _, rt: rt.replay_run(replay))
    assert replayed.all_within_tolerance
    assert [s.drift.current.to_dict() for s in replayed.steps] == [text] * 3
    notes = [n for n in attested(tap(daemon, run_id)) if n["kind"] == "step"]
    assert len(notes) == 3
    for note in notes:
        done = cli(daemon, "verify", note["attestation_id"])
        assert done.returncode == 0, (done.stdout, done.stderr)
