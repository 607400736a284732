"""``foundry eval`` / ``foundry gate``: reading pack and request files, and the text they print.

Pure: no daemon. The end-to-end flow is ``tests/e2e/test_cli_governance.py``.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

import pytest
from foundry.kernel.cli.evals import (
    format_table,
    idempotency_key,
    load_document,
    load_pack,
    report,
    results_at,
)
from foundry.kernel.cli.gates import (
    eval_evidence,
    format_decision,
    load_request,
    merge_evidence,
)
from foundry.kernel.cli.main import main
from foundry.kernel.core.evals import summarize
from foundry.kernel.errors import ConfigError, FoundryError
from foundry.proto import runtime_api as api
from foundry.proto.generated.google.protobuf import Struct

DAG = {"steps": [{"id": "echo", "type": "transform", "inputs": {"value": "${inputs.topic}"}}]}

PACK_TOML = """
pack = "smoke"

[[scenarios]]
slug = "inline"
title = "An inline DAG"
[scenarios.run_spec]
dag = '{"steps": [{"id": "echo", "type": "transform", "inputs": {"value": 1}}]}'
inputs = {topic = "otters", nested = {list = [1, 2.5, true]}}
seed = 7
labels = {team = "qa"}
breakpoints = ["echo"]
[scenarios.expected]
status = "succeeded"
steps.echo.equals = 1

[[scenarios]]
slug = "from-file"
[scenarios.run_spec]
dag_file = "dags/echo.json"
[scenarios.expected]
status = "succeeded"
"""


@pytest.fixture
def pack_dir(tmp_path):
    (tmp_path / "dags").mkdir()
    (tmp_path / "dags" / "echo.json").write_text(json.dumps(DAG))
    return tmp_path


def write(path, text):
    path.write_text(text)
    return path


# --- pack files ---------------------------------------------------------------------------------


def test_a_toml_pack_becomes_scenario_definitions(pack_dir):
    pack = load_pack(write(pack_dir / "pack.toml", PACK_TOML))
    assert pack.name == "smoke"
    inline, from_file = pack.scenarios
    assert inline.slug == "inline"
    assert inline.title == "An inline DAG"
    assert json.loads(inline.run_spec["dag_json"])["steps"][0]["id"] == "echo"
    assert inline.run_spec["inputs"] == {"topic": "otters", "nested": {"list": [1, 2.5, True]}}
    assert inline.run_spec["seed"] == 7
    assert inline.run_spec["labels"] == {"team": "qa"}
    assert inline.run_spec["breakpoints"] == ["echo"]
    assert inline.expected == {"status": "succeeded", "steps": {"echo": {"equals": 1}}}
    # dag_file is read relative to the pack file, and defaults fill the rest
    assert json.loads(from_file.run_spec["dag_json"]) == DAG
    assert from_file.run_spec == {"dag_json": json.dumps(DAG), "inputs": {}, "seed": 0,
                                  "labels": {}, "breakpoints": []}  # fmt: skip
    request = pack.request()
    assert request.pack == "smoke"
    assert [s.slug for s in request.scenarios] == ["inline", "from-file"]
    assert request.scenarios[0].run_spec.to_dict()["dag_json"] == inline.run_spec["dag_json"]
    assert request.scenarios[0].expected.to_dict()["steps"] == {"echo": {"equals": 1}}
    spec = inline.spec()
    assert spec.seed == 7
    assert spec.labels == {"team": "qa"}
    assert spec.breakpoints == ["echo"]
    assert spec.inputs.to_dict()["topic"] == "otters"


def test_a_json_pack_may_give_the_dag_as_an_object(pack_dir):
    doc = {"pack": "j", "scenarios": [{"slug": "a", "run_spec": {"dag": DAG},
                                       "expected": {"status": "succeeded"}}]}  # fmt: skip
    pack = load_pack(write(pack_dir / "pack.json", json.dumps(doc)))
    assert json.loads(pack.scenarios[0].run_spec["dag_json"]) == DAG


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('pack = ""\n[[scenarios]]\nslug = "a"', "pack: expected a non-empty string"),
        ('pack = "p"', "scenarios: expected a non-empty list"),
        ('pack = "p"\nextra = 1\n[[scenarios]]\nslug = "a"', "extra: unknown key"),
        ('pack = "p"\n[[scenarios]]\ntitle = "x"', "scenarios[0].slug: expected a non-empty"),
        ('pack = "p"\n[[scenarios]]\nslug = "a"\nrun_spec = {dag = "{}"}',
         "scenario a: expected: expected a non-empty table"),
        ('pack = "p"\n[[scenarios]]\nslug = "a"\nexpected = {status = "x"}',
         "scenario a: run_spec: expected a table, got null"),
        ('pack = "p"\n[[scenarios]]\nslug = "a"\nexpected = {status = "x"}\n'
         'run_spec = {inputs = {}}', "run_spec: give exactly one of dag and dag_file"),
        ('pack = "p"\n[[scenarios]]\nslug = "a"\nexpected = {status = "x"}\n'
         'run_spec = {dag = "{nope"}', "run_spec.dag: not valid JSON"),
        ('pack = "p"\n[[scenarios]]\nslug = "a"\nexpected = {status = "x"}\n'
         'run_spec = {dag = "[1]"}', "run_spec.dag: expected a JSON object, got a list"),
        ('pack = "p"\n[[scenarios]]\nslug = "a"\nexpected = {status = "x"}\n'
         'run_spec = {dag_file = "missing.json"}', "run_spec.dag_file: cannot read"),
        ('pack = "p"\n[[scenarios]]\nslug = "a"\nexpected = {status = "x"}\n'
         'run_spec = {dag = "{}", seed = 1.5}', "run_spec.seed: expected a whole number"),
        ('pack = "p"\n[[scenarios]]\nslug = "a"\nexpected = {status = "x"}\n'
         'run_spec = {dag = "{}", labels = {a = 1}}', "run_spec.labels: expected a table of"),
        ('pack = "p"\n[[scenarios]]\nslug = "a"\nexpected = {status = "x"}\n'
         'run_spec = {dag = "{}", inputs = {when = 1979-05-27}}',
         "run_spec.inputs.when: date values are not JSON"),
        ('pack = "p"\n[[scenarios]]\nslug = "a"\nexpected = {status = "x"}\n'
         'run_spec = {dag = "{}", typo = 1}', "run_spec.typo: unknown key"),
        ('pack = "p"\n[[scenarios]]\nslug = "a"\nexpected = {x = 1}\nrun_spec = {dag = "{}"}\n'
         '[[scenarios]]\nslug = "a"\nexpected = {x = 1}\nrun_spec = {dag = "{}"}',
         "scenarios[1].slug: 'a' appears twice"),
        ("pack = [", "not valid TOML"),
        # 200 levels were "JSON nested too deeply to read", naming neither file nor key
        ('pack = "p"\n[[scenarios]]\nslug = "a"\nrun_spec = {dag = "{}"}\nexpected = '
         + "{x = " * 30 + "1" + "}" * 30, "scenario a: expected: nested deeper than 24 levels"),
        ('pack = "p"\n[[scenarios]]\nslug = "a"\nexpected = {x = 1}\nrun_spec = {dag = "{}", '
         "inputs = {a = " + "[" * 200 + "]" * 200 + "}}",
         "scenario a: run_spec.inputs: nested deeper than 24 levels"),
    ],
)  # fmt: skip
def test_a_bad_pack_file_is_one_line_naming_the_key(tmp_path, text, message):
    path = write(tmp_path / "pack.toml", text)
    with pytest.raises(ConfigError) as caught:
        load_pack(path)
    assert message in str(caught.value)
    assert str(caught.value).startswith(str(path))
    assert "\n" not in str(caught.value)


def test_documents_by_suffix(tmp_path):
    assert load_document(write(tmp_path / "a.json", '{"a": 1}')) == {"a": 1}
    assert load_document(write(tmp_path / "a.toml", "a = 1")) == {"a": 1}
    assert load_document(write(tmp_path / "a.txt", "a = 1")) == {"a": 1}  # JSON, then TOML
    for name, text, message in [
        ("b.json", "{", "not valid JSON"),
        ("b.json", "[1]", "expected an object at the top, got a list"),
        ("b.json", '{"a": NaN}', "not valid JSON"),
        ("b.txt", "{{", "neither valid JSON"),
        ("b.json", '{"a": {"b": 1, "b": 2}}', "not valid JSON: duplicate key 'b'"),
        ("b.txt", '{"a": 1, "a": 2}', "not valid JSON: duplicate key 'a'"),  # not read as TOML
        ("missing.json", None, "cannot read"),
    ]:
        path = tmp_path / name if text is None else write(tmp_path / name, text)
        with pytest.raises(ConfigError, match=message):
            load_document(path)


def test_a_key_given_twice_exits_2_naming_it(tmp_path, capsys):
    # The last value won: a reviewer reading the first change_id or expected saw another
    # request than the one sent (the daemon refuses these in DAGs and HTTP bodies too).
    gate = write(tmp_path / "gate.json", '{"change_id": "reviewed", "change_id": "other"}')
    pack = write(tmp_path / "pack.json", json.dumps({"pack": "p", "scenarios": [
        {"slug": "a", "run_spec": {"dag": "{}"}, "expected": {"status": "succeeded"}}]}
    ).replace('"expected": {', '"expected": {"status": "failed"}, "expected": {'))  # fmt: skip
    dag = write(tmp_path / "dag.json", json.dumps({"pack": "p", "scenarios": [
        {"slug": "a", "run_spec": {"dag": '{"steps": [], "steps": []}'},
         "expected": {"status": "succeeded"}}]}))  # fmt: skip
    for argv, key in [
        (["gate", "check", str(gate)], "change_id"),
        (["eval", "sync", str(pack)], "expected"),
        (["eval", "sync", str(dag)], "steps"),
        (["gate", "followup", "g", "--outcome", "approved", "--details", '{"a": 1, "a": 2}'], "a"),
        (["run", "submit", str(dag), "--inputs", '{"x": 1, "x": 2}'], "x"),
    ]:
        assert main([*argv, "--addr", "127.0.0.1:1"]) == 2, argv
        err = capsys.readouterr().err
        assert f"duplicate key {key!r}" in err, argv
        assert err.count("\n") == 1


def test_a_bad_pack_file_exits_2_before_calling_the_daemon(tmp_path, capsys):
    path = write(tmp_path / "pack.toml", 'pack = "p"')
    code = main(["eval", "sync", str(path), "--addr", "127.0.0.1:1"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("foundry: ")
    assert err.count("\n") == 1


def test_idempotency_keys_are_stable_bounded_and_name_the_spec():
    spec = {"dag_json": "{}", "inputs": {"b": 1, "a": [2]}, "seed": 3, "labels": {},
            "breakpoints": []}  # fmt: skip
    digest = hashlib.sha256(
        b'{"breakpoints":[],"dag_json":"{}","inputs":{"a":[2],"b":1},"labels":{},"seed":3}'
    ).hexdigest()[:12]
    assert idempotency_key("p", "s", "abc", 2, spec) == f"eval:p:s:abc:2:{digest}"
    reordered = {"seed": 3, "inputs": {"a": [2], "b": 1}, "dag_json": "{}", "breakpoints": [],
                 "labels": {}}  # fmt: skip
    assert idempotency_key("p", "s", "abc", 2, reordered) == f"eval:p:s:abc:2:{digest}"
    edited = {**spec, "seed": 4}
    assert idempotency_key("p", "s", "abc", 2, edited) != idempotency_key("p", "s", "abc", 2, spec)
    long = idempotency_key("p" * 200, "s", "abc", 2, spec)
    assert len(long) <= 256
    assert long == idempotency_key("p" * 200, "s", "abc", 2, spec)
    assert long != idempotency_key("p" * 200, "s", "abc", 3, spec)
    assert long != idempotency_key("p" * 200, "s", "abc", 2, edited)


# --- request files ------------------------------------------------------------------------------

REQUEST = {
    "change_id": "chg-1",
    "revision": "abc",
    "actor": "ci",
    "diffs": [{"path": "src/x.py", "lines_added": 10, "lines_deleted": 2, "novelty_score": 0.4,
               "risk_tags": ["auth"], "component": "core"},
              {"path": "README.md"}],
    "coverage": {"overall_ratio": 0.85, "minimum_ratio": 0.8,
                 "components": [{"name": "core", "coverage_ratio": 0.9, "required_ratio": 0.8},
                                {"name": "ui"}]},
    "evals": [{"name": "accuracy", "slug": "answers", "score": 0.9, "threshold": 0.8,
               "direction": "higher_is_better", "weight": 2},
              {"name": "latency", "score": 120, "direction": "lower_is_better"}],
    "budgets": [{"name": "cost", "actual": 3.5, "limit": 10}, {"name": "tokens", "actual": 5}],
    "telemetry": {"tokens": 1200},
    "metadata": {"pr": 42},
}  # fmt: skip


def test_a_json_request_file_becomes_the_request(tmp_path):
    request = load_request(write(tmp_path / "req.json", json.dumps(REQUEST)))
    assert (request.change_id, request.revision, request.actor) == ("chg-1", "abc", "ci")
    first, second = request.diffs
    assert (first.path, first.lines_added, first.lines_deleted) == ("src/x.py", 10, 2)
    assert first.novelty_score == 0.4
    assert first.risk_tags == ["auth"]
    assert first.component == "core"
    assert second.novelty_score is None
    assert request.coverage.overall_ratio == 0.85
    assert request.coverage.components[1].coverage_ratio is None
    accuracy, latency = request.evals
    assert accuracy.direction == api.MetricDirection.HIGHER_IS_BETTER
    assert (accuracy.threshold, accuracy.weight) == (0.8, 2.0)
    assert latency.direction == api.MetricDirection.LOWER_IS_BETTER
    assert latency.threshold is None
    assert request.budgets[1].limit is None
    assert request.telemetry.to_dict() == {"tokens": 1200}
    assert request.metadata.to_dict() == {"pr": 42}
    # it survives the wire
    again = api.CheckChangeGateRequest.parse(bytes(request))
    assert again.evals[0].threshold == 0.8
    assert again.diffs[1].novelty_score is None


def test_a_toml_request_file(tmp_path):
    text = """
    change_id = "chg-2"
    [coverage]
    overall_ratio = 0.5
    [[evals]]
    name = "accuracy"
    score = 0.7
    threshold = 0.8
    """
    request = load_request(write(tmp_path / "req.toml", text.replace("\n    ", "\n")))
    assert request.change_id == "chg-2"
    assert request.coverage.overall_ratio == 0.5
    assert request.evals[0].direction == api.MetricDirection.UNSPECIFIED
    assert request.telemetry is None


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"diffs": [{"path": "x", "lines_added": -1}]}, "diffs[0].lines_added: expected a whole"),
        ({"diffs": [{"path": "x", "novelty_score": "high"}]}, "diffs[0].novelty_score: expected a"),
        ({"diffs": {"path": "x"}}, "diffs: expected a list"),
        ({"evals": [{"name": "a"}]}, "evals[0].score: required"),
        ({"evals": [{"name": "a", "score": 1, "direction": "up"}]}, "evals[0].direction"),
        ({"budgets": [{"name": "a", "actual": True}]}, "budgets[0].actual: expected a number"),
        ({"coverage": {"components": [{"name": "a", "ratio": 1}]}},
         "coverage.components[0].ratio: unknown key"),
        ({"telemetry": [1]}, "telemetry: expected an object"),
        ({"change": "x"}, "change: unknown key"),
        ({"change_id": 5}, "change_id: expected a string"),
        ({"metadata": json.loads('{"k": ' * 200 + "1" + "}" * 200)},
         "metadata: nested deeper than 24 levels"),
    ],
)  # fmt: skip
def test_a_bad_request_file_is_one_line_naming_the_key(tmp_path, patch, message):
    path = write(tmp_path / "req.json", json.dumps({"change_id": "c", **patch}))
    with pytest.raises(ConfigError) as caught:
        load_request(path)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_bad_request_file_exits_2(tmp_path, capsys):
    path = write(tmp_path / "req.json", '{"evals": [{"name": "a"}]}')
    assert main(["gate", "check", str(path), "--addr", "127.0.0.1:1"]) == 2
    assert "evals[0].score" in capsys.readouterr().err
    path = write(tmp_path / "ok.json", "{}")
    assert main(["gate", "check", str(path), "--from-evals", "p", "--addr", "127.0.0.1:1"]) == 2
    assert main(["gate", "followup", "g", "--outcome", "approved", "--details", "[1]",
                 "--addr", "127.0.0.1:1"]) == 2  # fmt: skip


def test_an_unreachable_daemon_is_one_line_exit_1(tmp_path, capsys):
    path = write(tmp_path / "ok.json", "{}")
    assert main(["gate", "check", str(path), "--addr", "127.0.0.1:1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("foundry: cannot reach the daemon")
    assert err.count("\n") == 1


# --- eval evidence for the gate -----------------------------------------------------------------


def result(run_id, commit, outcome, score, tokens=10.0, cost=0.01, minute=0):
    return api.EvalResult(
        result_id=f"res-{run_id}-{minute}",
        run_id=run_id,
        scenario_id="sc",
        outcome=outcome,
        commit=commit,
        executed_at=datetime(2024, 1, 1, 0, minute, tzinfo=UTC),
        metrics=Struct.from_dict(
            {"score": score, "outcome": outcome, "tokens": tokens, "cost": cost, "latency_ms": 5}
        ),
    )


def test_results_at_a_commit_keep_the_latest_per_run():
    history = [
        result("r1", "abc", "failed", 0.5, minute=1),
        result("r1", "abc", "passed", 1.0, minute=2),  # recorded again: this one counts
        result("r2", "abc", "passed", 1.0, minute=3),
        result("r3", "def", "failed", 0.0, minute=4),
    ]
    kept = results_at(history, "abc")
    assert [(r.run_id, r.outcome) for r in kept] == [("r1", "passed"), ("r2", "passed")]
    assert results_at(history, "nope") == []


def test_eval_evidence_is_a_pass_rate_metric_per_scenario():
    scenarios = [
        api.EvalScenario(pack="p", slug="b", history=[
            result("r1", "abc", "passed", 1.0), result("r2", "abc", "failed", 0.5, minute=1),
            result("r3", "old", "passed", 1.0)]),
        api.EvalScenario(pack="p", slug="a", history=[result("r4", "abc", "passed", 1.0, 30)]),
    ]  # fmt: skip
    metrics, telemetry = eval_evidence(scenarios, "p", "abc")
    assert [(m.name, m.slug, m.score, m.threshold) for m in metrics] == [
        ("pass_rate", "a", 1.0, 1.0), ("pass_rate", "b", 0.5, 1.0)]  # fmt: skip
    assert all(m.direction == api.MetricDirection.HIGHER_IS_BETTER for m in metrics)
    assert telemetry["tokens"] == 40.0  # 30 (a) + 10 (b): one pass over the pack
    assert telemetry["eval_runs"] == 3
    request = api.CheckChangeGateRequest(
        change_id="c", evals=[api.EvalMetric(name="x", score=1.0),
                              api.EvalMetric(name="pass_rate", slug="b", score=0.0)],
        telemetry=Struct.from_dict({"total_tokens": 5}),
    )  # fmt: skip
    merge_evidence(request, metrics, telemetry, "abc")
    # the file's own pass_rate of b wins (both were sent: b failed and passed in one decision)
    assert [(m.name, m.slug, m.score) for m in request.evals] == [
        ("x", "", 1.0), ("pass_rate", "b", 0.0), ("pass_rate", "a", 1.0)]  # fmt: skip
    assert request.revision == "abc"
    merged = request.telemetry.to_dict()
    assert merged["total_tokens"] == 5
    assert "tokens" not in merged  # the file's own token count wins
    assert merged["eval_pack"] == "p"
    with pytest.raises(FoundryError, match="no results recorded at commit zzz for a, b"):
        eval_evidence(scenarios, "p", "zzz")
    with pytest.raises(FoundryError, match="no scenarios in pack"):
        eval_evidence([], "p", "abc")


# --- text output --------------------------------------------------------------------------------


def stats(*outcomes_scores):
    return summarize([{"outcome": o, "score": s, "latency_ms": 10.0, "tokens": 12, "cost": 0.002}
                      for o, s in outcomes_scores])  # fmt: skip


def test_the_eval_table_without_a_baseline():
    lines = format_table([
        report("outline", stats(("passed", 1.0), ("passed", 1.0), ("passed", 1.0))),
        report("report-long-name", stats(("passed", 1.0), ("failed", 0.5), ("passed", 1.0))),
    ])  # fmt: skip
    assert lines[0].split()[:2] == ["scenario", "pass"]
    assert lines[1].split() == ["outline", "3/3", "100%", "1.000", "±", "0.000", "10.0", "ms",
                                "12", "0.002000", "ok"]  # fmt: skip
    assert "2/3" in lines[2]
    assert "67%" in lines[2]
    assert "0.833 ± 0.289" in lines[2]
    assert lines[2].endswith("FAILED")
    # columns line up
    assert lines[1].index("3/3") == lines[2].index("2/3")


def test_the_eval_table_with_a_baseline_shows_deltas_and_regressions():
    base = stats(("passed", 1.0), ("passed", 1.0), ("passed", 1.0))
    lines = format_table(
        [
            report("steady", stats(("passed", 1.0), ("passed", 1.0), ("passed", 1.0)), base),
            report("worse", stats(("passed", 1.0), ("failed", 0.5), ("passed", 1.0)), base),
            report("new", stats(("passed", 1.0))),
        ],
        baseline_commit="0123456789abcdef",
    )
    text = "\n".join(lines)
    assert "vs 0123456789ab" in text
    steady = lines.index(next(line for line in lines if line.startswith("steady")))
    assert lines[steady].endswith("ok")
    assert "Δpass +0.00" in lines[steady + 1]
    assert "Δscore +0.000 (allowed drop 0.050)" in lines[steady + 2]
    worse = next(line for line in lines if line.startswith("worse"))
    assert worse.endswith("FAILED, REGRESSED")
    assert "regression: pass rate fell from 1.000 to 0.667" in text
    assert "(no results recorded at the baseline)" in text


def test_a_decision_as_text():
    decision = api.ChangeGateDecision(
        gate_id="gate_1", change_id="chg", revision="abc",
        effect=api.ChangeDecisionEffect.FOLLOW_UP,
        reasons=["coverage 0.71 is below the minimum 0.80"],
        followups=[api.FollowupAction(slug="raise-coverage", description="Add tests",
                                      recommended=True),
                   api.FollowupAction(slug="watch-eval", description="Watch", recommended=False)],
        scorecard=api.DecisionScorecard(
            novelty=api.NoveltySummary(max_novelty=0.5, avg_novelty=0.25,
                                       high_risk_paths=["src/auth/x.py"]),
            coverage=api.CoverageSummary(overall_ratio=0.71, components_below_threshold=["ui"]),
            evals=api.EvalSummary(failing_metrics=[], attention_metrics=["pass_rate (a)"],
                                  score_per_token=0.002),
            budgets=api.BudgetSummary(breaches=["cost"], near_limits=[]),
        ),
        acknowledgements=[api.ChangeGateFollowup(actor="alice",
                                                 outcome=api.FollowupOutcome.APPROVED,
                                                 note="ok")],
    )  # fmt: skip
    lines = format_decision(decision)
    assert lines[0] == "FOLLOW_UP  change chg @ abc  gate gate_1"
    assert "  - coverage 0.71 is below the minimum 0.80" in lines
    assert "  - raise-coverage: Add tests" in lines
    assert "  - watch-eval: Watch (not required)" in lines
    assert "  novelty   max 0.50  mean 0.25  high risk: src/auth/x.py" in lines
    assert "  coverage  overall 0.71  below threshold: ui" in lines
    assert "  evals     failing: none  attention: pass_rate (a)  score/token 0.002" in lines
    assert "  budgets   breaches: cost" in lines
    assert "  ack approved by alice  ok" in lines
