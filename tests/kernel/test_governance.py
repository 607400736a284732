"""Governance without a daemon: eval-pack validation, the records and their conversions, the
``[gate]`` config, and the two governance hooks (``register_gate_rules``,
``register_eval_assertions``)."""

from __future__ import annotations

import importlib
import json
import math
import re
import sys
import textwrap
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from foundry.kernel import BUILTIN_GATE_RULES, ConfigError, InvalidArgument
from foundry.kernel.actors.gate.actor import new_id, run_facts
from foundry.kernel.actors.gate.patterns import re2_search
from foundry.kernel.actors.scheduler.messages import RunView, StepView
from foundry.kernel.blocks.registry import (
    DEFAULT_PLUGINS,
    BlockRegistry,
    load_blocks,
    load_config_blocks,
)
from foundry.kernel.config import Config
from foundry.kernel.core.evals import judge as judge_with
from foundry.kernel.core.gate_policy import (
    Budget,
    Coverage,
    CoverageComponent,
    Diff,
    Effect,
    GatePolicy,
    GateRequest,
    Metric,
    decide,
)
from foundry.kernel.core.governance import (
    DEFAULT_GATE_LIMIT,
    MAX_GATE_LIMIT,
    EvalScenarioRecord,
    ScenarioInput,
    StoredGate,
    check_gate_request,
    decision_record,
    gate_limit,
    parse_pack,
    parse_run_spec,
    synced_records,
)
from foundry.kernel.edge.grpc import governance as convert
from foundry.proto import runtime_api as api


def judge(*args, **kwargs):
    """``core.evals.judge`` with the daemon's regex engine (RE2)."""
    return judge_with(*args, search=re2_search, **kwargs)


DAG = json.dumps({"steps": [{"id": "a", "type": "transform", "inputs": {"value": 1}}]})
ENV_DAG = json.dumps({"steps": [{"id": "e", "type": "transform", "env": {"TONE": "x"}}]})
TYPES = {"transform"}
NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def no_env(step):
    return frozenset()


def pack_error(*scenarios, pack="p"):
    with pytest.raises(InvalidArgument) as caught:
        parse_pack(pack, list(scenarios), TYPES, no_env)
    return str(caught.value)


def good(slug, **fields):
    return ScenarioInput(slug, run_spec={"dag_json": DAG}, expected={"status": "ok"}, **fields)


# --- eval packs ---------------------------------------------------------------------------------


def test_parse_run_spec_accepts_the_proto3_json_forms():
    spec = parse_run_spec(
        {"dagJson": DAG, "seed": "7", "inputs": {"x": 1}, "labels": {"t": "q"},
         "breakpoints": ["a"]},
        TYPES, no_env,
    )  # fmt: skip
    assert (spec.seed, spec.breakpoints, dict(spec.labels)) == (7, ("a",), {"t": "q"})
    assert parse_run_spec({"dag_json": DAG, "seed": 3.0}, TYPES, no_env).seed == 3


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        (None, "run_spec: a RunSpec"),
        ({"dag_json": 5}, "run_spec.dag_json: a DAG"),
        (
            {"dag_json": DAG, "labels": {"a": 1}},
            "run_spec.labels['a']: a label's value is a string",
        ),
        ({"dag_json": DAG, "labels": {"": "v"}}, "run_spec.labels: a label needs a key"),
        ({"dag_json": DAG, "labels": {"k" * 300: "v"}}, "run_spec.labels: a label's key is at"),
        ({"dag_json": DAG, "labels": ["a"]}, "run_spec.labels: expected an object of strings"),
        ({"dag_json": DAG, "inputs": [1]}, "run_spec.inputs"),
        ({"dag_json": DAG, "seed": True}, "run_spec.seed"),
        ({"dag_json": DAG, "seed": 2**64}, "run_spec.seed: out of the int64 range"),
        # str.isdigit takes these; int() refused them with its own text
        ({"dag_json": DAG, "seed": "\u00b2"}, "run_spec.seed: expected a whole number"),
        ({"dag_json": DAG, "seed": "9" * 5000}, "run_spec.seed: expected a whole number"),
        ({"dag_json": ENV_DAG}, "run_spec.dag_json: step 'e': env.TONE"),
        ({"dag_json": '{"steps": []}'}, "run_spec.dag_json: steps: a DAG needs at least one"),
        # both JSON names: one would be checked, both stored
        ({"dag_json": "{not json", "dagJson": DAG}, "run_spec.dag_json: given twice"),
        ({"dagJson": "{not json", "dag_json": DAG}, "run_spec.dag_json: given twice"),
    ],
)
def test_parse_run_spec_names_the_field(spec, needle):
    with pytest.raises(InvalidArgument) as caught:
        parse_run_spec(spec, TYPES, no_env)
    assert needle in str(caught.value)


def test_parse_run_spec_uses_the_env_allowance_as_submit_run_does():
    allowed = parse_run_spec({"dag_json": ENV_DAG}, TYPES, lambda step: {"TONE"})
    assert allowed.dag_json == ENV_DAG


def test_parse_pack_names_the_scenario_and_field():
    assert "scenario 'b': slug: duplicate" in pack_error(good("b"), good("b"))
    assert "scenarios[1].slug: must not be empty" in pack_error(good("a"), good(""))
    assert pack_error(pack="").startswith("pack: must not be empty")
    assert "scenarios: a pack needs at least one" in pack_error()
    assert "scenario 'x': expected: an object with at least one" in pack_error(
        ScenarioInput("x", run_spec={"dag_json": DAG}, expected={})
    )
    assert "scenario 'x': title: longer than" in pack_error(good("x", title="t" * 20_000))
    assert "scenario 'x': run_spec.dag_json" in pack_error(
        ScenarioInput("x", run_spec={"dag_json": "[]"}, expected={"status": "ok"})
    )
    parse_pack("p", [good("a"), good("b")], TYPES, no_env)  # fine
    many = [good(f"s{n}") for n in range(1_001)]
    assert "scenarios: more than 1000 in one request (sync a larger pack in parts)" in pack_error(
        *many
    )


def test_an_expected_that_cannot_judge_any_run_is_refused_when_synced():
    """Found by a CLI hunt: a typo (``stauts``), a negative limit, a status of 5 were stored,
    and said only when a whole run was judged (an error result, scored 0)."""

    def refused(expected, **extra):
        scenario = ScenarioInput("x", run_spec={"dag_json": DAG}, expected=expected)
        with pytest.raises(InvalidArgument) as caught:
            parse_pack("p", [scenario], TYPES, no_env, extra)
        return str(caught.value)

    said = refused({"stauts": "succeeded", "max_tokens": -1, "status": 5})
    assert said.startswith("scenario 'x': expected: max_tokens must be a number >= 0, got -1")
    assert said.endswith("(and 2 more)")
    assert "unknown assertion type 'stauts'" in refused({"stauts": "succeeded"})
    assert "status must be a string, got 5" in refused({"status": 5})
    assert "steps.a.regex must be a string" in refused({"steps": {"a": {"regex": 5}}})
    assert "steps.a.min_steps: not a step-level" in refused({"steps": {"a": {"min_steps": 1}}})
    assert "min_steps must be a whole number" in refused({"min_steps": 1.5})
    assert "steps must be an object" in refused({"steps": [1]})
    assert "steps.a must be an object" in refused({"steps": {"a": 1}})
    assert "pattern longer than 1000" in refused({"steps": {"a": {"regex": "x" * 1001}}})

    class Tone:
        scopes = frozenset({"step"})

        def check(self, value, run, step_id):  # pragma: no cover - never judged here
            raise AssertionError

    # a plugin's type is known to the daemon that has the plugin, at its level only
    assert "unknown assertion type 'tone'" in refused({"steps": {"a": {"tone": "calm"}}})
    ok = ScenarioInput("x", run_spec={"dag_json": DAG},
                       expected={"steps": {"zz": {"tone": "calm", "equals": None}}})  # fmt: skip
    parse_pack("p", [ok], TYPES, no_env, {"tone": Tone()})  # (a step the spec lacks: fine)
    assert "tone: not a run-level" in refused({"tone": "calm"}, tone=Tone())


def test_an_expected_no_run_can_pass_or_fail_is_refused_when_synced():
    """Found by an eval audit: a pattern RE2 refuses, an empty ``steps`` or step were stored,
    and every result judged after was an error scored 0."""
    from foundry.kernel.actors.gate.patterns import re2_search

    def refused(expected):
        scenario = ScenarioInput("x", run_spec={"dag_json": DAG}, expected=expected)
        with pytest.raises(InvalidArgument) as caught:
            parse_pack("p", [scenario], TYPES, no_env, None, re2_search)
        return str(caught.value)

    said = refused({"steps": {"a": {"regex": "(unclosed"}}})
    assert said.startswith("scenario 'x': expected: steps.a.regex: missing ")
    assert said.endswith("(RE2 syntax)")
    assert "steps.a.regex:" in refused({"steps": {"a": {"regex": "(a)\\1"}}})  # backreference
    assert "steps.a.regex:" in refused({"steps": {"a": {"regex": "x(?=1)"}}})  # lookahead
    assert "steps: an object with at least one step's assertions" in refused({"steps": {}})
    assert "steps.a: an object with at least one assertion" in refused({"steps": {"a": {}}})
    fine = {"status": "succeeded", "steps": {"a": {"regex": "^[a-z]+ (world|you)$"}}}
    parse_pack("p", [ScenarioInput("x", run_spec={"dag_json": DAG}, expected=fine)], TYPES, no_env,
               None, re2_search)  # fmt: skip


def test_a_scenarios_inputs_are_as_deep_as_submit_run_takes_them():
    def nested(levels):
        value = {"leaf": 1}
        for _ in range(levels - 1):
            value = {"k": value}
        return value

    def spec(levels):
        return ScenarioInput("x", run_spec={"dag_json": DAG, "inputs": nested(levels)},
                             expected={"status": "succeeded"})  # fmt: skip

    parse_pack("p", [spec(24)], TYPES, no_env)  # run_spec is one level more: still taken
    assert "scenario 'x': run_spec: nested deeper than 25 levels" in pack_error(spec(25))


def test_synced_records_keep_ids_and_created_at_and_skip_unchanged_scenarios():
    ids = iter(["scn_1", "scn_2", "scn_3"])
    first_ids, rows = synced_records("p", [good("a"), good("b")], {}, NOW, lambda: next(ids))
    assert first_ids == ["scn_1", "scn_2"]
    assert [r.slug for r in rows] == ["a", "b"]
    existing = {r.slug: r for r in rows}
    later = NOW + timedelta(hours=1)
    again_ids, again = synced_records(
        "p", [good("b", title="B"), good("a"), good("c")], existing, later, lambda: next(ids)
    )
    assert again_ids == ["scn_2", "scn_1", "scn_3"]
    assert [(r.slug, r.title, r.created_at, r.updated_at) for r in again] == [
        ("b", "B", NOW, later),  # changed: rewritten with its id and created_at
        ("c", "", later, later),  # new
    ]  # "a" is unchanged: nothing to write


def test_records_are_frozen():
    record = EvalScenarioRecord("s", "p", "a", "", "", {"x": [1]}, {"status": "ok"}, NOW, NOW)
    with pytest.raises(TypeError):
        record.run_spec["x"] = 2  # type: ignore[index]
    assert record.run_spec["x"] == (1,)


# --- run facts and judging ----------------------------------------------------------------------


def view(status="SUCCEEDED"):
    step = StepView(
        step_id="a", idx=0, type="transform", status="succeeded", attempt=1,
        leased_at=NOW, completed_at=NOW + timedelta(milliseconds=250), output={"text": "otters"},
        error=None, inputs={}, seed=0, model="",
        usage={"tokens_in": 3, "tokens_out": 4, "cost": 0.5},
    )  # fmt: skip
    return RunView(
        run_id="run_1", status=status, dag_json=DAG, inputs={}, seed=0, labels={},
        breakpoints=(), created_at=NOW, updated_at=NOW + timedelta(seconds=1), steps=(step,),
    )  # fmt: skip


def test_run_facts_carry_what_judge_reads():
    facts = run_facts(view())
    assert facts.finished_at == NOW + timedelta(seconds=1)
    step = facts.steps[0]
    assert (step.tokens_in, step.tokens_out, step.cost, step.output) == (
        3,
        4,
        0.5,
        {"text": "otters"},
    )
    expected = {
        "status": "succeeded",
        "max_tokens": 7,
        "steps": {"a": {"contains": "otters", "max_latency_ms": 250}},
    }
    judged = judge(facts, expected)
    assert judged.outcome == "passed", judged.errors
    assert run_facts(view("RUNNING")).finished_at is None


def test_new_ids_sort_by_time():
    assert new_id("gate").startswith("gate_")
    assert new_id("x") != new_id("x")


# --- change gates -------------------------------------------------------------------------------


def test_gate_limit_defaults_and_refuses_past_its_cap():
    assert gate_limit(0) == DEFAULT_GATE_LIMIT == 50
    assert gate_limit(7) == 7
    assert gate_limit(MAX_GATE_LIMIT) == MAX_GATE_LIMIT == 1000
    for limit in (MAX_GATE_LIMIT + 1, 2**32 - 1, -1):  # was silently cut to 1,000
        with pytest.raises(InvalidArgument, match=f"limit: must be from 0 .* to 1000, got {limit}"):
            gate_limit(limit)


BUDGET = Budget("cost", 1.0, 2.0)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"diffs": (Diff("a.py"), Diff(" "))}, "diffs[1].path: must not be empty"),
        ({"diffs": (Diff("a.py"), Diff("x" * 4097))}, "diffs[1].path: longer than 4096 char"),
        ({"diffs": (Diff(""), Diff("x" * 4097))}, "diffs[0].path: must not be empty"),
        ({"diffs": (Diff("a.py"), Diff(7))}, "diffs[1].path: expected a string"),  # type: ignore[arg-type]
        ({"evals": (Metric("m"), Metric("n" * 201))}, "evals[1].name: longer than 200 char"),
        ({"evals": (Metric(""),)}, "evals[0].name: must not be empty"),
        ({"budgets": (BUDGET, BUDGET, Budget(None))}, "budgets[2].name: expected a string"),  # type: ignore[arg-type]
        ({"diffs": (Diff("a", component="c"), Diff("b", component="c" * 201))},
         "diffs[1].component: longer than 200 char"),
        ({"diffs": (Diff("a", risk_tags=("auth",)), Diff("b", risk_tags=("db", "t" * 201)))},
         "diffs[1].risk_tags[1]: longer than 200 char"),
        ({"coverage": Coverage(0.9, 0.8, (CoverageComponent("a"), CoverageComponent("n" * 201)))},
         "coverage.components[1].name: longer than 200 char"),
        # left out of score_per_token without a word: weight inf made its metric vanish
        ({"evals": (Metric("a", weight=2.0), Metric("b", weight=math.inf))},
         "evals[1].weight: inf is not a finite number"),
        ({"evals": (Metric("a", weight=math.nan),)}, "evals[0].weight: nan is not a finite"),
        ({"evals": (Metric("p", "s"), Metric("p", "t"), Metric("p", "s"))},
         "evals[2]: metric 'p (s)' is given twice (also evals[0])"),
    ],
)  # fmt: skip
def test_check_gate_request_names_the_first_bad_name(fields, message):
    request = GateRequest("chg", **{"diffs": (Diff("x" * 4096),), **fields})

    with pytest.raises(InvalidArgument, match=re.escape(message)):
        check_gate_request(request)


def test_check_gate_request_accepts_names_at_their_limits():
    check_gate_request(
        GateRequest(
            "chg",
            diffs=(Diff("x" * 4096, risk_tags=("t" * 200,), component="c" * 200), Diff(" a ")),
            evals=(Metric("m" * 200),),
            budgets=(Budget("b" * 200),),
            coverage=Coverage(components=(CoverageComponent("n" * 200), CoverageComponent(""))),
        )
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"coverage": Coverage(85.0)}, "coverage.overall_ratio: 85.0 is not a fraction"),
        ({"coverage": Coverage(0.9, -0.1)}, "coverage.minimum_ratio: -0.1 is not a fraction"),
        ({"coverage": Coverage(float("nan"))}, "coverage.overall_ratio: nan is not a fraction"),
        ({"coverage": Coverage(0.9, 0.8, (CoverageComponent("a", 0.5, 0.6),
                                          CoverageComponent("b", 92.0, 0.9)))},
         "coverage.components[1].coverage_ratio: 92.0 is not a fraction between 0 and 1"),
        ({"coverage": Coverage(components=(CoverageComponent("a", None, 80.0),))},
         "coverage.components[0].required_ratio: 80.0"),
        ({"diffs": (Diff("a", novelty_score=0.2), Diff("b"), Diff("c", novelty_score=1.5))},
         "diffs[2].novelty_score: 1.5 is not a fraction"),
        ({"diffs": (Diff("a", novelty_score=float("inf")),)}, "diffs[0].novelty_score: inf"),
        ({"diffs": (Diff("a", novelty_score=float("nan")),)}, "diffs[0].novelty_score: nan"),
    ],
)  # fmt: skip
def test_ratios_and_novelty_scores_must_be_fractions(fields, message):
    """A percentage given for a ratio (85 for 85%) would pass any required ratio."""
    with pytest.raises(InvalidArgument, match=re.escape(message)):
        check_gate_request(GateRequest("chg", **fields))


def test_fractions_at_their_bounds_and_absent_ones_are_accepted():
    check_gate_request(
        GateRequest(
            "chg",
            diffs=(Diff("a", novelty_score=0.0), Diff("b"), Diff("c", novelty_score=1.0)),
            coverage=Coverage(1.0, 0.0, (CoverageComponent("a"), CoverageComponent("b", 0, 1))),
        )
    )


def test_the_edge_converts_wrappers_enums_and_structs_both_ways():
    message = api.CheckChangeGateRequest(
        change_id="c", revision="r",
        diffs=[api.ChangeDiff(path="a.py", lines_added=2),
               api.ChangeDiff(path="b.py", novelty_score=0.95)],
        coverage=api.CoverageReport(overall_ratio=0.5,
                                    components=[api.CoverageComponent(name="x")]),
        evals=[api.EvalMetric(name="lat", score=2.0, threshold=1.0,
                              direction=api.MetricDirection.LOWER_IS_BETTER)],
        budgets=[api.BudgetSignal(name="cost", actual=1.0)],
        actor="ci",
    )  # fmt: skip
    request = convert.gate_request(message, telemetry={"tokens": 10}, metadata={})
    assert request.diffs[0].novelty_score is None
    assert request.diffs[1].novelty_score == 0.95
    assert request.coverage == Coverage(0.5, None, request.coverage.components)
    assert request.coverage.components[0].required_ratio is None
    assert request.evals[0].direction == "lower_is_better"
    assert request.evals[0].weight is None
    assert request.budgets[0].limit is None

    decision = decide(request, GatePolicy())
    record = decision_record("gate_1", request, decision, NOW)
    assert record.effect == "deny"
    proto = convert.gate_decision(StoredGate(record))
    assert proto.effect == api.ChangeDecisionEffect.DENY
    assert proto.reasons == list(decision.reasons)
    assert proto.scorecard.coverage.overall_ratio == 0.5
    assert proto.scorecard.evals.failing_metrics == ["lat"]
    assert proto.scorecard.evals.score_per_token == pytest.approx(0.2)
    assert proto.scorecard.telemetry.to_dict() == {"tokens": 10}
    assert proto.decided_at == NOW
    assert bytes(proto)  # serializable
    assert convert.followup_outcome(api.FollowupOutcome.DEFERRED) == "deferred"
    with pytest.raises(InvalidArgument, match="outcome"):
        convert.followup_outcome(api.FollowupOutcome.UNSPECIFIED)


def test_a_plugin_rule_part_that_is_not_json_is_kept_as_text():
    class Odd:
        name = "odd"

        def evaluate(self, request, policy):
            from foundry.kernel import RuleResult

            return RuleResult("allow", scorecard={"when": object, "ratio": float("nan")})

    decision = decide(GateRequest(change_id="c"), GatePolicy(), [*BUILTIN_GATE_RULES, Odd()])
    record = decision_record("g", GateRequest(change_id="c"), decision, NOW)
    extra = record.scorecard["extra"]["odd"]
    assert extra["ratio"] is None
    assert "object" in extra["when"]
    assert json.dumps(dict(record.scorecard), default=list)


class _NoText:
    def __repr__(self) -> str:
        raise RuntimeError("repr boom")

    __str__ = __repr__

    def __hash__(self) -> int:
        return 1


def test_a_plugin_rule_part_whose_text_fails_or_cannot_be_utf8_is_kept_as_text():
    # its repr raised after the rule was judged: CheckChangeGate answered INTERNAL
    class Odd:
        name = "odd"

        def evaluate(self, request, policy):
            from foundry.kernel import RuleResult

            part = {"bad": _NoText(), _NoText(): 1, "half": "a\udcffb"}
            return RuleResult("allow", scorecard=part)

    decision = decide(GateRequest(change_id="c"), GatePolicy(), [*BUILTIN_GATE_RULES, Odd()])
    record = decision_record("g", GateRequest(change_id="c"), decision, NOW)
    extra = record.scorecard["extra"]["odd"]
    assert extra["bad"] == "<_NoText: repr() raised RuntimeError>"
    assert extra["<_NoText: str() raised RuntimeError>"] == 1
    assert extra["half"] == "a\\udcffb"
    json.dumps(dict(record.scorecard), default=list).encode()  # a record the store takes


# --- config -------------------------------------------------------------------------------------


def test_gate_config_is_passed_through_and_validated_naming_file_and_key(tmp_path):
    path = tmp_path / "foundry.toml"
    path.write_text(
        '[gate]\nmin_coverage = 0.6\nmissing_evals = "deny"\n'
        '[gate.effects]\nbudgets = "follow_up"\n'
    )
    config = Config.from_toml(path)
    policy = config.gate_policy()
    assert policy.min_coverage == 0.6
    assert policy.missing_evals is Effect.DENY
    assert policy.effects == {"budgets": Effect.FOLLOW_UP}
    assert Config().gate_policy() == GatePolicy()

    path.write_text("[gate]\nmin_coverag = 0.6\n")
    with pytest.raises(ConfigError) as caught:
        Config.from_toml(path)
    assert str(caught.value).startswith(f"{path}: [gate].min_coverag: unknown key")
    path.write_text("[gate]\nmin_coverage = 2\n")
    with pytest.raises(ConfigError, match=r"\[gate\].min_coverage: expected a number in"):
        Config.from_toml(path)


def test_gate_config_naming_an_unknown_rule_is_refused_at_start(tmp_path):
    path = tmp_path / "foundry.toml"
    path.write_text('[gate]\nadvisory = ["budget"]\n')
    config = Config.from_toml(path)  # the rules are known only once plugins load
    with pytest.raises(ConfigError) as caught:
        load_config_blocks(config, entry_points=False)
    assert str(caught.value).startswith(f"{path}: [gate].advisory: unknown rule 'budget'")


# --- the hooks ----------------------------------------------------------------------------------


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    made = []

    def make(source):
        name = f"foundry_test_gov_{uuid.uuid4().hex[:8]}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        importlib.invalidate_caches()
        made.append(name)
        return name

    yield make
    for name in made:
        sys.modules.pop(name, None)


def test_register_gate_rules_built_ins_are_a_plugin_and_plugin_rules_follow_them(plugin):
    assert "foundry.plugins.gate_rules" in DEFAULT_PLUGINS
    name = plugin(
        """
        from foundry.kernel import Followup, RuleResult, hookimpl

        class Owners:
            name = "owners"

            def evaluate(self, request, policy):
                if request.metadata.get("owner"):
                    return RuleResult("allow")
                return RuleResult("follow_up", ("no owner named for the change",),
                                  (Followup("name-owner", "Name an owner"),), {"owner": None})

        @hookimpl
        def register_gate_rules():
            return [Owners()]
        """
    )
    registry = load_blocks([name], entry_points=False)
    assert [r.name for r in registry.gate_rules] == ["novelty", "coverage", "evals", "budgets",
                                                    "owners"]  # fmt: skip
    good = GateRequest(
        change_id="c", coverage=Coverage(0.9), metadata={"owner": "x"},
        evals=(),
    )  # fmt: skip
    policy = GatePolicy.from_mapping({"missing_evals": "allow"})
    assert decide(good, policy, registry.gate_rules).effect is Effect.ALLOW
    unowned = decide(
        GateRequest(change_id="c", coverage=Coverage(0.9)), policy, registry.gate_rules
    )
    assert unowned.effect is Effect.FOLLOW_UP
    assert "no owner named for the change" in unowned.reasons
    policy.check_rules(registry.gate_rules)
    GatePolicy.from_mapping({"advisory": ["owners"]}).check_rules(registry.gate_rules)


def test_register_gate_rules_refuses_a_duplicate_or_nameless_rule(plugin):
    twice = plugin(
        """
        from foundry.kernel import BUILTIN_GATE_RULES, hookimpl

        @hookimpl
        def register_gate_rules():
            return [BUILTIN_GATE_RULES[0]]
        """
    )
    with pytest.raises(ConfigError, match="two gate rules are named 'novelty'"):
        load_blocks([twice], entry_points=False)
    nameless = plugin(
        """
        from foundry.kernel import hookimpl

        @hookimpl
        def register_gate_rules():
            return [object()]
        """
    )
    with pytest.raises(ConfigError, match="needs a name and an evaluate"):
        load_blocks([nameless], entry_points=False)


def test_register_eval_assertions_contributes_a_type_judge_uses(plugin):
    name = plugin(
        """
        from dataclasses import dataclass
        from foundry.kernel import AssertionResult, hookimpl

        @dataclass(frozen=True)
        class MinWords:
            name: str = "min_words"
            scopes: frozenset = frozenset({"step"})

            def check(self, expected, facts, step_id):
                words = len(str(facts.step(step_id).output.get("text", "")).split())
                return AssertionResult(self.name, words >= expected, words, expected, step_id,
                                       f"{words} words")

        @hookimpl
        def register_eval_assertions():
            return {"min_words": MinWords()}
        """
    )
    registry = load_blocks([name], entry_points=False)
    assert sorted(registry.assertion_types) == ["min_words"]
    facts = run_facts(view())
    assert (
        judge(facts, {"steps": {"a": {"min_words": 1}}}, registry.assertion_types).outcome
        == "passed"
    )
    assert (
        judge(facts, {"steps": {"a": {"min_words": 5}}}, registry.assertion_types).outcome
        == "failed"
    )
    assert judge(facts, {"steps": {"a": {"min_words": 1}}}).outcome == "error"  # unknown without it


def test_register_eval_assertions_refuses_a_built_in_key(plugin):
    name = plugin(
        """
        from foundry.kernel import hookimpl

        @hookimpl
        def register_eval_assertions():
            return {"status": object()}
        """
    )
    with pytest.raises(ConfigError, match="'status' is already defined"):
        load_blocks([name], entry_points=False)


def test_a_registry_built_directly_has_the_built_in_rules():
    registry = BlockRegistry([])
    assert registry.gate_rules == tuple(BUILTIN_GATE_RULES)
    assert registry.assertion_types == {}
