"""``foundry eval …`` and ``foundry gate …`` as a CI job runs them, against a real daemon:
sync a pack, run it three times at a commit, gate a change on the results, acknowledge the
follow-ups, list the decisions; then a worse pack at a new commit fails and regresses."""

from __future__ import annotations

import json

import pytest

PACK = """
pack = "{pack}"

[[scenarios]]
slug = "shape"
title = "The report carries the topic"
[scenarios.run_spec]
dag = '{{"steps": [{{"id": "shape", "type": "transform", "inputs": {{"merge": [{{"topic": "${{inputs.topic}}"}}, {{"fixed": 1}}]}}}}]}}'
inputs = {{topic = "otters"}}
[scenarios.expected]
status = "succeeded"
steps.shape.subset = {{topic = "{topic}"}}

[[scenarios]]
slug = "outline"
[scenarios.run_spec]
dag_file = "outline.dag.json"
inputs = {{topic = "otters"}}
seed = 7
[scenarios.expected]
status = "succeeded"
steps_count = 1
max_tokens = 100000
"""  # noqa: E501

OUTLINE = {"steps": [{"id": "outline", "type": "llm", "model": "mock:small",
                      "inputs": {"prompt": "Outline a note about ${inputs.topic}"}}]}  # fmt: skip

REQUEST = {
    "change_id": "chg-governance",
    "actor": "ci",
    "diffs": [
        {"path": "src/app.py", "lines_added": 12, "lines_deleted": 3, "novelty_score": 0.2},
        {"path": "src/auth/login.py", "lines_added": 4, "novelty_score": 0.1},
    ],
    "coverage": {"overall_ratio": 0.92, "minimum_ratio": 0.8},
    "budgets": [{"name": "cost", "actual": 1.0, "limit": 10.0}],
}


@pytest.fixture(scope="module")
def daemon(shared_daemon):
    return shared_daemon()


def run(daemon, *args, timeout=120):
    done = daemon.cli(*args, timeout=timeout)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def _run_ids(done):
    assert done.returncode == 0, (done.stdout, done.stderr)
    return {(r["slug"], r["index"]): r["run_id"] for r in json.loads(done.stdout)["runs"]}


def test_eval_run_again_reuses_its_runs_and_an_edited_scenario_gets_new_ones(daemon, tmp_path):
    (tmp_path / "outline.dag.json").write_text(json.dumps(OUTLINE))
    pack = tmp_path / "pack.toml"
    pack.write_text(PACK.format(pack="governance-reuse", topic="otters"))
    args = ("eval", "run", str(pack), "--commit", "ccc333", "--repeat", "2", "--json")
    first = _run_ids(run(daemon, *args))
    assert len(set(first.values())) == 4
    assert _run_ids(run(daemon, *args)) == first
    # the outline's DAG edited, the commit the same: new runs for it, the same for the other
    edited = {"steps": [{**OUTLINE["steps"][0], "inputs": {"prompt": "Outline ${inputs.topic}"}}]}
    (tmp_path / "outline.dag.json").write_text(json.dumps(edited))
    again = _run_ids(run(daemon, *args))
    assert [again["shape", i] for i in range(2)] == [first["shape", i] for i in range(2)]
    new = {again["outline", i] for i in range(2)}
    assert len(new) == 2
    assert not new & set(first.values())


def test_eval_run_then_gate_then_followup(daemon, tmp_path):
    pack_name = "governance-e2e"
    (tmp_path / "outline.dag.json").write_text(json.dumps(OUTLINE))
    pack = tmp_path / "pack.toml"
    pack.write_text(PACK.format(pack=pack_name, topic="otters"))

    # sync: one scenario id per scenario
    done = run(daemon, "eval", "sync", str(pack), "--json")
    assert done.returncode == 0, done.stderr
    synced = json.loads(done.stdout)
    assert len(synced["scenario_ids"]) == 2
    assert set(synced["scenarios"]) == {"shape", "outline"}

    # run three times at a commit: every run passes, exit 0, a table per scenario
    done = run(daemon, "eval", "run", str(pack), "--commit", "aaa111", "--repeat", "3")
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert f"eval {pack_name}: 6/6 runs finished" in done.stderr, done.stderr
    rows = {line.split()[0]: line for line in done.stdout.splitlines() if line.split()}
    assert "3/3" in rows["shape"]
    assert rows["shape"].endswith("ok")
    assert "1.000 ± 0.000" in rows["outline"]
    assert done.stdout.rstrip().endswith("ok")

    # running it again reuses the runs (same idempotency keys)
    again = run(daemon, "eval", "run", str(pack), "--commit", "aaa111", "--repeat", "3", "--json")
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["ok"] is True
    first_runs = {(r["slug"], r["index"]): r["run_id"] for r in report["runs"]}
    assert len(set(first_runs.values())) == 6

    # eval list: the latest result per scenario
    done = run(daemon, "eval", "list", pack_name)
    assert done.returncode == 0, done.stderr
    assert f"{pack_name}/shape" in done.stdout
    assert "latest passed" in done.stdout
    assert "commit aaa111" in done.stdout

    # eval record by hand: prints each assertion
    run_id = first_runs[("shape", 0)]
    done = run(daemon, "eval", "record", pack_name, "shape", run_id, "--commit", "manual1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"passed  {pack_name}/shape  run {run_id}")
    assert "ok    steps.shape.subset" in done.stdout

    # the gate, fed by the pack's results: a high-risk path asks for a follow-up (exit 2)
    request = tmp_path / "request.json"
    request.write_text(json.dumps(REQUEST))
    done = run(daemon, "gate", "check", str(request), "--from-evals", pack_name,
               "--commit", "aaa111", "--json")  # fmt: skip
    assert done.returncode == 2, (done.stdout, done.stderr)
    decision = json.loads(done.stdout)
    assert decision["effect"] == "CHANGE_DECISION_EFFECT_FOLLOW_UP", decision
    assert decision["revision"] == "aaa111"
    assert any("auth/login.py" in reason for reason in decision["reasons"])
    assert not decision["scorecard"]["evals"]["failing_metrics"]
    assert decision["scorecard"]["evals"]["score_per_token"] is not None
    # a Struct's numbers are doubles: 2.0 was printed, where the README promises 2 (a hunt)
    assert type(decision["telemetry"]["eval_runs"]) is int
    gate_id = decision["gate_id"]

    # the same as text
    done = run(daemon, "gate", "check", str(request), "--from-evals", pack_name,
               "--commit", "aaa111")  # fmt: skip
    assert done.returncode == 2
    assert done.stdout.startswith("FOLLOW_UP  change chg-governance @ aaa111")
    assert "review-high-risk" in done.stdout

    # acknowledge the follow-up, then list the gate's decisions
    done = run(daemon, "gate", "followup", gate_id, "--outcome", "approved",
               "--note", "reviewed by security", "--actor", "alice",
               "--details", '{"ticket": "SEC-1"}')  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"approved by alice  gate {gate_id}" in done.stdout

    done = run(daemon, "gate", "list", "chg-governance", "--json")
    assert done.returncode == 0, done.stderr
    decisions = json.loads(done.stdout)
    assert len(decisions) == 2
    acked = next(d for d in decisions if d["gate_id"] == gate_id)
    assert [a["actor"] for a in acked["acknowledgements"]] == ["alice"]

    done = run(daemon, "gate", "list", "chg-governance", "--limit", "1")
    assert done.returncode == 0, done.stderr
    assert len([line for line in done.stdout.splitlines() if line.startswith("gate")]) <= 1
    assert "FOLLOW_UP" in done.stdout

    # a worse pack at a new commit: the shape scenario fails and regresses against the baseline
    pack.write_text(PACK.format(pack=pack_name, topic="beavers"))
    done = run(daemon, "eval", "run", str(pack), "--commit", "bbb222", "--repeat", "3",
               "--baseline", "aaa111")  # fmt: skip
    assert done.returncode == 1, (done.stdout, done.stderr)
    rows = {line.split()[0]: line for line in done.stdout.splitlines() if line.split()}
    assert "0/3" in rows["shape"]
    assert rows["shape"].endswith("FAILED, REGRESSED")
    assert rows["outline"].endswith("ok")
    assert "regression: pass rate fell from 1.000 to 0.000" in done.stdout
    assert "vs aaa111" in done.stdout

    # ... and the gate denies it (exit 1), naming the failing metric
    done = run(daemon, "gate", "check", str(request), "--from-evals", pack_name,
               "--commit", "bbb222")  # fmt: skip
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stdout.startswith("DENY")
    assert "pass_rate (shape)" in done.stdout

    # no results at an unknown commit: one line, exit 1
    done = run(daemon, "gate", "check", str(request), "--from-evals", pack_name,
               "--commit", "never")  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1
    assert "no results recorded at commit never" in done.stderr


def test_errors_are_one_line(daemon, tmp_path):
    pack = tmp_path / "bad.toml"
    pack.write_text('pack = "p"\n[[scenarios]]\nslug = "a"\n')
    done = run(daemon, "eval", "sync", str(pack))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert "scenario a: expected" in done.stderr
    # refused by the daemon (it knows its plugins' assertion types): a bad file all the same
    pack = tmp_path / "typo.json"
    pack.write_text(json.dumps({"pack": "p", "scenarios": [{
        "slug": "a", "run_spec": {"dag": {"steps": [{"id": "t", "type": "transform"}]}},
        "expected": {"stauts": "succeeded"}}]}))  # fmt: skip
    for command in ("sync", "run"):
        extra = ("--commit", "c") if command == "run" else ()
        done = run(daemon, "eval", command, str(pack), *extra)
        assert done.returncode == 2, done.stderr
        assert done.stderr.count("\n") == 1
        assert f"{pack}: scenario 'a': expected: stauts: unknown assertion type" in done.stderr
    # a pattern the daemon's engine (RE2) refuses: refused at the sync, not judged an error
    pack.write_text(json.dumps({"pack": "p", "scenarios": [{
        "slug": "a", "run_spec": {"dag": {"steps": [{"id": "t", "type": "transform"}]}},
        "expected": {"steps": {"t": {"regex": "(a)\\1"}}}}]}))  # fmt: skip
    done = run(daemon, "eval", "sync", str(pack))
    assert done.returncode == 2, done.stderr
    assert f"{pack}: scenario 'a': expected: steps.t.regex: " in done.stderr
    assert "(RE2 syntax)" in done.stderr

    # a request file the daemon refuses (found by a CLI hunt: exit 1, as a failing call)
    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    done = run(daemon, "gate", "check", str(empty))
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1
    assert f"{empty}: change_id" in done.stderr

    done = run(daemon, "eval", "record", "no-such-pack", "x", "run_missing", "--commit", "c")
    assert done.returncode == 1
    assert done.stderr.startswith("foundry: ")
    assert done.stderr.count("\n") == 1

    done = run(daemon, "gate", "followup", "gate_missing", "--outcome", "deferred")
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1


def test_an_integer_no_double_holds_is_a_one_line_error_naming_its_key(daemon, tmp_path):
    """A 401-digit integer in a pack's expected, a gate request's score or its telemetry ended
    the command in a traceback (OverflowError; struct.error building the request)."""
    huge = "1" + "0" * 400
    dag = json.dumps({"steps": [{"id": "a", "type": "transform", "inputs": {"value": 1}}]})
    files = {
        "pack.json": f'{{"pack": "big", "scenarios": [{{"slug": "a", "run_spec": {{"dag": {dag}}},'
                     f' "expected": {{"steps_count": {huge}}}}}]}}',
        "score.json": f'{{"change_id": "c", "evals": [{{"name": "m", "score": {huge}}}]}}',
        "tokens.json": f'{{"change_id": "c", "telemetry": {{"tokens": {huge}}}}}',
    }  # fmt: skip
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    for command, name, key in (("eval sync", "pack.json", "steps_count"),
                               ("gate check", "score.json", "evals[0].score"),
                               ("gate check", "tokens.json", "telemetry.tokens")):  # fmt: skip
        done = run(daemon, *command.split(), str(tmp_path / name))
        assert done.returncode == 2, (name, done.stderr)
        assert "Traceback" not in done.stderr
        assert done.stderr.count("\n") == 1, done.stderr
        assert key in done.stderr, done.stderr


def test_gate_from_evals_counts_every_result_at_the_commit_not_the_newest_hundred(daemon, tmp_path):
    """ListEvalScenarios' history holds a scenario's newest 100 results at any commit: a failed
    run at commit A, followed by 100 results at B, fell out of it, and the gate allowed A at a
    pass rate of 1.0 (found by a governance hunt); one more, and A had "no results"."""
    from foundry.proto import runtime_api as api
    from foundry.proto.generated.google.protobuf import Struct

    from tests.runs.helpers import run_and_wait

    ok_dag = json.dumps({"steps": [{"id": "a", "type": "transform",
                                    "inputs": {"merge": [{"x": 1}]}}]})  # fmt: skip
    bad_dag = json.dumps({"steps": [{"id": "t", "type": "tool",
                                     "inputs": {"tool": "no_such_tool", "args": {}}}]})  # fmt: skip
    definition = api.EvalScenarioDefinition(
        slug="s", run_spec=Struct.from_dict({"dag_json": ok_dag}),
        expected=Struct.from_dict({"status": "succeeded"}),
    )  # fmt: skip
    daemon.call(lambda _, rt: rt.sync_eval_pack(
        api.SyncEvalPackRequest(pack="window", scenarios=[definition])))  # fmt: skip
    ok, bad = (run_and_wait(daemon, dag).run_id for dag in (ok_dag, bad_dag))

    async def record(runtime, runs_and_commits):  # type: ignore[no-untyped-def]
        for run_id, commit in runs_and_commits:
            await runtime.record_eval_result(api.RecordEvalResultRequest(
                pack="window", slug="s", run_id=run_id, commit=commit))  # fmt: skip

    daemon.call(lambda _, rt: record(rt, [(bad, "A"), (ok, "A"), *[(ok, "B")] * 101]))
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"change_id": "chg-window", "coverage": {"overall_ratio": 0.95}}))
    done = run(daemon, "gate", "check", str(request), "--from-evals", "window", "--commit", "A")
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stdout.startswith("DENY")
    assert "pass_rate (s) scored 0.50" in done.stdout
