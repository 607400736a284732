"""The change-gate policy (kernel/core/gate_policy.py): rules at their boundaries, missing
evidence, advisory rules, effect precedence, reason texts and the [gate] table's validation."""

import dataclasses
import math
import pickle

import pytest
from foundry.kernel.core.gate_policy import (
    BUILTIN_RULES,
    DIRECTION_BY_NUMBER,
    EFFECT_NUMBERS,
    HIGH_RISK_REASONS,
    Budget,
    BudgetSummary,
    Coverage,
    CoverageComponent,
    CoverageSummary,
    Decision,
    Diff,
    Diffs,
    Direction,
    Effect,
    EvalSummary,
    Followup,
    GatePolicy,
    GateRequest,
    LazyColumn,
    Metric,
    NoveltySummary,
    Rule,
    RuleResult,
    decide,
    distinct_tags,
    scores_given,
    tokens_of,
)
from foundry.kernel.errors import ConfigError

EPS = 1e-9
POLICY = GatePolicy()
GOOD_COVERAGE = Coverage(overall_ratio=0.9, minimum_ratio=0.8)
GOOD_EVALS = (Metric("accuracy", "answers", score=0.9, threshold=0.5),)


def request(**fields):
    """A request that passes every built-in rule, with ``fields`` replaced."""
    base = {
        "change_id": "chg-1",
        "revision": "r1",
        "diffs": (Diff("src/app/main.py", 10, 2, novelty_score=0.1),),
        "coverage": GOOD_COVERAGE,
        "evals": GOOD_EVALS,
        "budgets": (),
    }
    base.update(fields)
    return GateRequest(**base)


def gate(policy=POLICY, rules=BUILTIN_RULES, **fields) -> Decision:
    return decide(request(**fields), policy, rules)


def test_a_clean_change_is_allowed_with_no_reasons():
    decision = gate()

    assert decision.effect is Effect.ALLOW
    assert decision.reasons == ()
    assert decision.followups == ()
    assert [outcome.name for outcome in decision.rules] == [
        "novelty", "coverage", "evals", "budgets",
    ]  # fmt: skip


# ------------------------------------------------------------------------- novelty


@pytest.mark.parametrize(
    ("score", "effect"),
    [
        (0.7, Effect.ALLOW),  # exactly at the follow-up threshold passes
        (0.7 + EPS, Effect.FOLLOW_UP),
        (0.9, Effect.FOLLOW_UP),  # exactly at the maximum does not deny
        (0.9 + EPS, Effect.DENY),
        (1.0, Effect.DENY),
        (0.0, Effect.ALLOW),
    ],
)
def test_novelty_boundaries(score, effect):
    decision = gate(diffs=(Diff("src/x.py", novelty_score=score),))

    assert decision.effect is effect


def test_novelty_reasons_name_the_path_the_score_and_the_threshold():
    denied = gate(diffs=(Diff("src/x.py", novelty_score=0.95),))
    followed = gate(diffs=(Diff("src/y.py", novelty_score=0.75),))

    assert denied.reasons == ("novelty 0.95 of src/x.py is above the maximum 0.90",)
    assert denied.followups[0].slug == "reduce-novelty"
    assert denied.followups[0].recommended
    assert followed.reasons == ("novelty 0.75 of src/y.py is above the follow-up threshold 0.70",)
    assert followed.followups[0].slug == "review-novelty"


def test_a_reason_just_past_a_threshold_does_not_print_both_numbers_equal():
    # with 2 (or 3) decimals both would read 0.90: more digits are shown until they differ
    decision = gate(diffs=(Diff("src/x.py", novelty_score=0.9001),))
    coverage = gate(coverage=Coverage(0.799, 0.8))

    assert decision.reasons == ("novelty 0.9001 of src/x.py is above the maximum 0.9",)
    assert coverage.reasons == ("coverage 0.799 is below the minimum 0.800",)


def test_novelty_summary_averages_only_scored_diffs():
    diffs = (
        Diff("a.py", novelty_score=0.2),
        Diff("b.py", novelty_score=None),
        Diff("c.py", novelty_score=0.6),
    )
    summary = gate(diffs=diffs).scorecard.novelty

    assert summary == NoveltySummary(max_novelty=0.6, avg_novelty=pytest.approx(0.4))


def test_no_scored_diffs_gives_zero_novelty():
    assert gate(diffs=(Diff("a.py"),)).scorecard.novelty == NoveltySummary(0.0, 0.0, ())
    assert gate(diffs=()).scorecard.novelty == NoveltySummary(0.0, 0.0, ())


def test_a_nan_novelty_counts_as_fully_novel():
    decision = gate(diffs=(Diff("a.py", novelty_score=math.nan),))

    assert decision.effect is Effect.DENY
    assert "not a number" in decision.reasons[0]
    assert decision.scorecard.novelty.max_novelty == 1.0


# ------------------------------------------------------------------------- high risk


@pytest.mark.parametrize(
    "path",
    [
        "db/migrations/0001_init.py", "migrations/0001.py", "schema.sql", "db/schema.sql",
        "infra/main.tf", ".github/workflows/ci.yml", "src/auth/login.py", "auth/token.py",
        "lib/security/keys.py", "./infra/x",
        # written another way (found by a hostile-input hunt: each was ALLOW)
        "././infra/x.tf", "/infra/x.tf", "src/../infra/x.tf", "src/Auth/login.py", "db/x.SQL",
        "INFRA/main.tf", "src\\auth\\login.py", "src//auth/login.py", "../infra/x.tf",
        # as Windows reads them, and a case only case-folding sees (found by review)
        "infra./x.tf", "db/x.sql.", "db/x.sql ", "C:\\infra\\x.tf", "db/x.\u017fql",
    ],
)  # fmt: skip
def test_high_risk_paths_match_the_default_patterns(path):
    decision = gate(diffs=(Diff(path, novelty_score=0.1),))

    assert decision.scorecard.novelty.high_risk_paths == (path,)
    assert decision.effect is Effect.FOLLOW_UP
    assert "path matches" in decision.reasons[0]


@pytest.mark.parametrize(
    "path",
    [
        "src/app/main.py",
        "docs/infra.md",
        "src/authz.py",
        "src/sql/readme.md",
        "infra/../src/app.py",
        "auth.py",
    ],  # fmt: skip
)
def test_ordinary_paths_are_not_high_risk(path):
    assert gate(diffs=(Diff(path),)).scorecard.novelty.high_risk_paths == ()


def test_high_risk_tags_match_case_insensitively():
    decision = gate(diffs=(Diff("src/pay.py", risk_tags=("UI", "Payments")),))

    assert decision.scorecard.novelty.high_risk_paths == ("src/pay.py",)
    assert decision.reasons == ("src/pay.py is high risk (tags Payments; policy: follow_up)",)
    assert decision.followups == (
        Followup("review-high-risk", "Have an owner review the high-risk paths: src/pay.py"),
    )


def test_many_high_risk_paths_are_counted_after_the_first_twenty():
    diffs = tuple(Diff(f"infra/f{i}.tf") for i in range(25))
    decision = gate(diffs=diffs)

    assert len(decision.scorecard.novelty.high_risk_paths) == 25
    assert len(decision.reasons) == HIGH_RISK_REASONS + 1 == 21
    assert decision.reasons[-1] == (
        "5 more paths are high risk (25 in all, listed in the scorecard; policy: follow_up)"
    )
    assert decision.followups == (
        Followup(
            "review-high-risk",
            "Have an owner review the high-risk paths: infra/f0.tf, infra/f1.tf, infra/f2.tf, "
            "infra/f3.tf, infra/f4.tf and 20 more",
        ),
    )


def test_the_high_risk_effect_and_patterns_are_configurable():
    policy = GatePolicy.from_mapping(
        {"high_risk": "deny", "high_risk_paths": ["vendor/*"], "high_risk_tags": ["legal"]}
    )

    assert gate(policy, diffs=(Diff("vendor/lib.c"),)).effect is Effect.DENY
    assert gate(policy, diffs=(Diff("x.py", risk_tags=("legal",)),)).effect is Effect.DENY
    assert gate(policy, diffs=(Diff("infra/main.tf", risk_tags=("auth",)),)).effect is (
        Effect.ALLOW
    )


def test_no_high_risk_patterns_at_all():
    policy = GatePolicy.from_mapping({"high_risk_paths": [], "high_risk_tags": []})

    assert gate(policy, diffs=(Diff("infra/x", risk_tags=("auth",)),)).effect is Effect.ALLOW


PATHS = [
    "auth/x", "src/auth/x", "src/authz/x", "xauth/y", "./auth/x", "a.sql", "a.sql/b",
    "x/.sql", "infra", "infra/", "./infra/x", "db/migrations/", "migrations", "src/m1.py",
    "a/b/c.py", "lib/vendor/x", "vendor/x", "aXbYc", "abc", "[x]/y", "",
]  # fmt: skip


@pytest.mark.parametrize(
    "patterns",
    [
        (),
        ("*",),  # no literal part: every path goes to the patterns
        ("vendor/*", "**/vendor/**"),
        ("a*b*c", "?nfra/*"),
        ("[ab]*.sql", "infra/**"),  # a [set]: no shortcut
        ("**/x", "*.sql"),
    ],
)
def test_the_literal_shortcut_matches_what_the_patterns_match(patterns):
    policy = GatePolicy(high_risk_paths=patterns)
    every = GatePolicy(high_risk_paths=patterns)
    object.__setattr__(every, "_path_hint", None)  # the patterns alone

    for path in PATHS:
        found, expected = policy.match_path(path), every.match_path(path)
        assert (found and found.lastgroup) == (expected and expected.lastgroup), path


def test_default_patterns_take_the_literal_shortcut():
    assert POLICY._path_hint is not None
    assert POLICY.match_path("src/app/main.py") is None
    assert POLICY.match_path("src/auth/main.py") is not None


def test_tags_given_as_a_list_are_checked_too():
    # a Diff built in process (a plugin, a test) may carry a list, which cannot be hashed
    diffs = (Diff("a.py", risk_tags=["ui", "AUTH"]), Diff("b.py", risk_tags=("ui",)))  # type: ignore[arg-type]

    assert gate(diffs=diffs).scorecard.novelty.high_risk_paths == ("a.py",)


def test_a_request_keeps_its_diffs_as_columns_and_gives_them_back_as_diffs():
    diffs = (
        Diff("a.py", 3, 1, 0.25, ["ui"], "web"),  # type: ignore[arg-type]
        Diff("b.py", novelty_score=None, risk_tags=("auth", "db")),
        Diff("c.py", 7),
    )
    request = GateRequest("chg", diffs=diffs)

    assert isinstance(request.diffs, Diffs)
    assert request.diffs.paths == ("a.py", "b.py", "c.py")
    assert request.diffs.novelty_scores == (0.25, None, None)
    assert request.diffs.risk_tags == (("ui",), ("auth", "db"), ())  # a list became a tuple
    assert list(request.diffs) == [Diff("a.py", 3, 1, 0.25, ("ui",), "web"), *diffs[1:]]
    assert request.diffs[1] == diffs[1]
    assert request.diffs[-1] == diffs[2]
    assert request.diffs[1:] == Diffs.of(diffs[1:])
    assert len(request.diffs) == 3
    assert len(GateRequest("chg").diffs) == 0
    # built from rows (as the edge does) or from Diff objects: the same request
    rows = [(d.path, d.lines_added, d.lines_deleted, d.novelty_score, tuple(d.risk_tags),
             d.component) for d in diffs]  # fmt: skip
    assert GateRequest("chg", diffs=Diffs.of_rows(rows)) == request
    with pytest.raises(IndexError):
        request.diffs[3]


def test_diffs_refuse_columns_of_different_lengths():
    with pytest.raises(ValueError, match="one value per diff"):
        Diffs(paths=("a.py", "b.py"), novelty_scores=(None,))


def test_a_nan_novelty_at_a_follow_up_threshold_of_one_passes_as_one():
    # NaN counts as 1.0, and exactly at the threshold passes
    policy = GatePolicy(max_novelty=1.0, novelty_follow_up=1.0)
    decision = gate(policy, diffs=(Diff("a.py", novelty_score=math.nan),))

    assert decision.effect is Effect.ALLOW
    assert decision.reasons == ()
    assert decision.scorecard.novelty == NoveltySummary(1.0, 1.0, ())


def test_novelty_summary_keeps_zero_for_negative_scores_and_adds_in_order():
    scores = (-0.5, 0.1, 0.2, 0.3)
    summary = gate(diffs=tuple(Diff(f"{i}.py", novelty_score=s) for i, s in enumerate(scores)))

    assert summary.scorecard.novelty.max_novelty == 0.3
    assert summary.scorecard.novelty.avg_novelty == (((-0.5 + 0.1) + 0.2) + 0.3) / 4


# ------------------------------------------------------------------------- coverage


@pytest.mark.parametrize(
    ("overall", "effect"),
    [(0.8, Effect.ALLOW), (0.8 - EPS, Effect.DENY), (1.0, Effect.ALLOW), (0.0, Effect.DENY)],
)
def test_coverage_at_the_minimum_passes(overall, effect):
    assert gate(coverage=Coverage(overall, 0.8)).effect is effect


def test_coverage_below_the_minimum_names_both_numbers():
    decision = gate(coverage=Coverage(0.71, 0.8))

    assert decision.reasons == ("coverage 0.71 is below the minimum 0.80",)
    assert decision.followups[0].slug == "raise-coverage"
    assert decision.scorecard.coverage == CoverageSummary(0.71, ())


def test_the_policy_minimum_applies_when_the_report_has_none():
    assert gate(coverage=Coverage(0.79, None)).effect is Effect.DENY
    assert gate(coverage=Coverage(0.8, None)).effect is Effect.ALLOW
    policy = GatePolicy.from_mapping({"min_coverage": 0.5})
    assert gate(policy, coverage=Coverage(0.6, None)).effect is Effect.ALLOW
    # the report's own minimum wins over the policy's
    assert gate(policy, coverage=Coverage(0.6, 0.7)).effect is Effect.DENY


@pytest.mark.parametrize(
    ("ratio", "below"), [(0.8, False), (0.8 - EPS, True), (0.55, True), (0.95, False)]
)
def test_component_coverage_at_its_requirement_passes(ratio, below):
    component = CoverageComponent("payments", ratio, 0.8)
    decision = gate(coverage=Coverage(0.9, 0.8, (component,)))

    assert decision.scorecard.coverage.components_below_threshold == (
        ("payments",) if below else ()
    )
    assert decision.effect is (Effect.DENY if below else Effect.ALLOW)


def test_component_followup_names_the_component():
    decision = gate(coverage=Coverage(0.9, 0.8, (CoverageComponent("payments", 0.55, 0.8),)))

    assert decision.reasons == ("coverage 0.55 of component payments is below its required 0.80",)
    assert decision.followups == (
        Followup("raise-coverage", "Add tests for payments (0.55 < 0.80)", True),
    )


def test_a_component_without_a_requirement_is_not_checked():
    decision = gate(coverage=Coverage(0.9, 0.8, (CoverageComponent("docs", 0.1, None),)))

    assert decision.effect is Effect.ALLOW
    assert decision.scorecard.coverage.components_below_threshold == ()


def test_a_component_missing_its_ratio_counts_as_below_under_the_missing_policy():
    component = CoverageComponent("payments", None, 0.8)
    decision = gate(coverage=Coverage(0.9, 0.8, (component,)))

    assert decision.scorecard.coverage.components_below_threshold == ("payments",)
    assert decision.effect is Effect.FOLLOW_UP
    assert (
        "payments has no coverage ratio (required 0.80), counted as below" in (decision.reasons[0])
    )
    assert decision.reasons[0].endswith("evidence missing (policy: follow_up)")
    policy = GatePolicy.from_mapping({"missing_coverage": "deny"})
    assert gate(policy, coverage=Coverage(0.9, 0.8, (component,))).effect is Effect.DENY


# ------------------------------------------------------------------------- missing evidence


def test_missing_coverage_defaults_to_follow_up():
    decision = gate(coverage=None)

    assert decision.effect is Effect.FOLLOW_UP
    assert decision.reasons == ("no coverage report: evidence missing (policy: follow_up)",)
    assert decision.followups == (
        Followup("provide-coverage", "Upload a coverage report for this change", True),
    )
    assert decision.scorecard.coverage == CoverageSummary(None, ())


def test_a_report_without_an_overall_ratio_is_missing_evidence():
    decision = gate(coverage=Coverage(None, 0.8))

    assert decision.effect is Effect.FOLLOW_UP
    assert decision.reasons == (
        "the coverage report has no overall ratio: evidence missing (policy: follow_up)",
    )


def test_missing_evals_defaults_to_follow_up():
    decision = gate(evals=())

    assert decision.effect is Effect.FOLLOW_UP
    assert decision.reasons == ("no eval metrics: evidence missing (policy: follow_up)",)
    assert decision.followups[0].slug == "provide-evals"
    assert decision.scorecard.evals == EvalSummary((), (), None)


@pytest.mark.parametrize(
    ("setting", "effect"),
    [("deny", Effect.DENY), ("follow_up", Effect.FOLLOW_UP), ("allow", Effect.ALLOW)],
)
def test_missing_evidence_policy_is_configurable(setting, effect):
    policy = GatePolicy.from_mapping({"missing_coverage": setting, "missing_evals": setting})

    assert gate(policy, coverage=None).effect is effect
    assert gate(policy, evals=()).effect is effect
    decision = gate(policy, coverage=None, evals=())
    assert decision.effect is effect
    assert decision.reasons == (
        f"no coverage report: evidence missing (policy: {setting})",
        f"no eval metrics: evidence missing (policy: {setting})",
    )
    assert all(f.recommended is (effect is not Effect.ALLOW) for f in decision.followups)


def test_an_empty_request_fails_closed():
    decision = decide(GateRequest(), POLICY)

    assert decision.effect is Effect.FOLLOW_UP
    assert decision.scorecard.budgets == BudgetSummary((), ())


# ------------------------------------------------------------------------- evals


@pytest.mark.parametrize(
    ("direction", "score", "fails"),
    [
        (Direction.HIGHER_IS_BETTER, 0.7, False),
        (Direction.HIGHER_IS_BETTER, 0.7 - EPS, True),
        (Direction.HIGHER_IS_BETTER, 0.9, False),
        (Direction.UNSPECIFIED, 0.7, False),
        (Direction.UNSPECIFIED, 0.7 - EPS, True),
        (Direction.LOWER_IS_BETTER, 0.7, False),
        (Direction.LOWER_IS_BETTER, 0.7 + EPS, True),
        (Direction.LOWER_IS_BETTER, 0.5, False),
        ("lower_is_better", 0.8, True),
        ("higher_is_better", 0.6, True),
    ],
)
def test_metric_thresholds_by_direction(direction, score, fails):
    metric = Metric("accuracy", "answers", score=score, threshold=0.7, direction=direction)
    decision = gate(evals=(metric,))

    assert decision.scorecard.evals.failing_metrics == (("accuracy (answers)",) if fails else ())
    assert decision.effect is (Effect.DENY if fails else Effect.ALLOW)


def test_failing_metric_reasons_state_score_threshold_and_direction():
    higher = gate(evals=(Metric("accuracy", "answers", 0.62, 0.7),))
    lower = gate(evals=(Metric("latency", "", 1.3, 1.0, Direction.LOWER_IS_BETTER),))

    assert higher.reasons == (
        "metric accuracy (answers) scored 0.62, below its threshold 0.70 (higher is better)",
    )
    assert higher.followups == (
        Followup("fix-eval", "Bring accuracy (answers) to at least 0.70 (now 0.62)", True),
    )
    assert lower.reasons == (
        "metric latency scored 1.30, above its threshold 1.00 (lower is better)",
    )
    assert lower.followups[0].description == "Bring latency to at most 1.00 (now 1.30)"


def test_a_metric_without_a_threshold_never_fails():
    decision = gate(evals=(Metric("style", score=-100.0, threshold=None),))

    assert decision.effect is Effect.ALLOW
    assert decision.scorecard.evals == EvalSummary((), (), None)


def test_a_nan_score_fails():
    decision = gate(evals=(Metric("accuracy", score=math.nan, threshold=0.5),))

    assert decision.effect is Effect.DENY
    assert "scored nan" in decision.reasons[0]


@pytest.mark.parametrize(
    ("direction", "score", "attention"),
    [
        (Direction.HIGHER_IS_BETTER, 0.72, True),
        (Direction.HIGHER_IS_BETTER, 0.7, True),  # at the threshold: passing, but close
        (Direction.HIGHER_IS_BETTER, 0.76, False),
        (Direction.HIGHER_IS_BETTER, 0.68, False),  # failing, not attention
        (Direction.LOWER_IS_BETTER, 0.68, True),
        (Direction.LOWER_IS_BETTER, 0.64, False),
        (Direction.LOWER_IS_BETTER, 0.72, False),
    ],
)
def test_attention_metrics_are_passing_and_within_the_margin(direction, score, attention):
    metric = Metric("accuracy", score=score, threshold=0.7, direction=direction)
    decision = gate(evals=(metric,))

    assert decision.scorecard.evals.attention_metrics == (("accuracy",) if attention else ())
    if attention:
        assert decision.effect is Effect.ALLOW
        assert decision.followups[0].slug == "watch-eval"
        assert not decision.followups[0].recommended
        assert "within 0.05 of its threshold 0.70" in decision.reasons[0]


def test_the_attention_margin_is_configurable():
    policy = GatePolicy.from_mapping({"attention_margin": 0.2})
    decision = gate(policy, evals=(Metric("accuracy", score=0.85, threshold=0.7),))

    assert decision.scorecard.evals.attention_metrics == ("accuracy",)


@pytest.mark.parametrize(
    ("telemetry", "tokens"),
    [
        ({"tokens": 200}, 200.0),
        ({"total_tokens": 400.0}, 400.0),
        ({"tokens_in": 100, "tokens_out": 300}, 400.0),
        ({"tokens_out": 50}, 50.0),
        ({"tokens": 200, "total_tokens": 999}, 200.0),
        ({}, None),
        ({"tokens": 0}, None),
        ({"tokens": True}, None),
        ({"tokens": "200"}, None),
        ({"tokens": math.inf}, None),
    ],
)
def test_tokens_come_from_telemetry(telemetry, tokens):
    assert tokens_of(telemetry) == tokens


def test_score_per_token_weights_every_metric():
    evals = (
        Metric("a", score=0.5, threshold=0.1, weight=2.0),
        Metric("b", score=1.0, threshold=None, weight=None),  # weight None counts as 1
    )
    summary = gate(evals=evals, telemetry={"tokens_in": 100, "tokens_out": 100}).scorecard.evals

    assert summary.score_per_token == pytest.approx((2.0 * 0.5 + 1.0) / 200)
    assert gate(evals=evals).scorecard.evals.score_per_token is None


@pytest.mark.parametrize(
    "odd", [Metric("b", score=math.inf), Metric("b", score=math.nan, threshold=0.5),
            Metric("b", score=10.0, weight=1e308)],
    ids=["infinite-score", "nan-score", "overflowing-product"],
)  # fmt: skip
def test_score_per_token_is_none_when_a_term_is_not_finite(odd):
    """The term was left out, and the rest reported as the whole: 2 / 10 tokens."""
    evals = (Metric("a", score=2.0), odd)
    summary = gate(evals=evals, telemetry={"tokens": 10}).scorecard.evals
    assert summary.score_per_token is None


# ------------------------------------------------------------------------- budgets


@pytest.mark.parametrize(
    ("actual", "breach", "near"),
    [
        (10.0, False, True),  # exactly at the limit is not a breach
        (10.0 + EPS, True, False),
        (9.0, False, True),  # exactly at near_limit × limit is near
        (9.0 - EPS * 10, False, False),
        (0.0, False, False),
    ],
)
def test_budget_boundaries(actual, breach, near):
    decision = gate(budgets=(Budget("cost", actual, 10.0),))

    assert decision.scorecard.budgets == BudgetSummary(
        ("cost",) if breach else (), ("cost",) if near else ()
    )
    assert decision.effect is (Effect.DENY if breach else Effect.ALLOW)


def test_budget_reasons():
    over = gate(budgets=(Budget("cost", 12.5, 10.0),))
    near = gate(budgets=(Budget("tokens", 9500, 10000),))

    assert over.reasons == ("budget cost 12.50 is over its limit 10.00",)
    assert over.followups == (
        Followup("reduce-spend", "Bring cost within its limit 10.00 (now 12.50)", True),
    )
    assert near.reasons == (
        "budget tokens 9500.00 is near its limit 10000.00 (95% of it; near from 90%)",
    )
    assert near.followups[0].slug == "watch-budget"
    assert not near.followups[0].recommended


def test_budgets_without_a_limit_are_ignored():
    decision = gate(budgets=(Budget("cost", 1e9, None),))

    assert decision.effect is Effect.ALLOW
    assert decision.scorecard.budgets == BudgetSummary((), ())


def test_an_infinite_limit_is_never_near_nor_breached():
    """inf ≥ 0.9 × inf: an infinite budget was "near its limit inf (nan% of it)"."""
    decision = gate(budgets=(Budget("cost", math.inf, math.inf), Budget("time", 1e300, math.inf)))

    assert decision.effect is Effect.ALLOW
    assert decision.scorecard.budgets == BudgetSummary((), ())
    assert not any("nan" in reason for reason in decision.reasons)


def test_near_limit_is_configurable():
    policy = GatePolicy.from_mapping({"near_limit": 0.5})

    assert gate(policy, budgets=(Budget("cost", 5, 10),)).scorecard.budgets.near_limits == ("cost",)


# ------------------------------------------------------------------------- precedence


def test_deny_beats_follow_up_beats_allow():
    follow_up = {"coverage": None}
    deny = {"budgets": (Budget("cost", 11, 10),)}

    assert gate(**follow_up).effect is Effect.FOLLOW_UP
    assert gate(**deny).effect is Effect.DENY
    both = gate(**follow_up, **deny)
    assert both.effect is Effect.DENY
    # every rule's reasons are reported, in rule order
    assert both.reasons == (
        "no coverage report: evidence missing (policy: follow_up)",
        "budget cost 11.00 is over its limit 10.00",
    )


class Fixed:
    def __init__(self, name, effect, reasons=("fixed",), part=None):
        self.name = name
        self.effect = effect
        self.reasons = reasons
        self.part = part

    def evaluate(self, request, policy):
        return RuleResult(self.effect, self.reasons, (Followup("do-it", "Do it"),), self.part)


@pytest.mark.parametrize(
    ("effects", "expected"),
    [
        ((), Effect.ALLOW),
        (("allow",), Effect.ALLOW),
        (("allow", "follow_up"), Effect.FOLLOW_UP),
        (("follow_up", "allow", "follow_up"), Effect.FOLLOW_UP),
        (("deny", "follow_up"), Effect.DENY),
        (("allow", "follow_up", "deny"), Effect.DENY),
    ],
)
def test_effect_precedence_over_any_rules(effects, expected):
    rules = [Fixed(f"r{i}", effect) for i, effect in enumerate(effects)]

    assert decide(GateRequest(), POLICY, rules).effect is expected


def test_plain_objects_are_rules():
    assert isinstance(Fixed("x", "allow"), Rule)
    assert all(isinstance(rule, Rule) for rule in BUILTIN_RULES)
    assert [rule.name for rule in BUILTIN_RULES] == ["novelty", "coverage", "evals", "budgets"]


# ------------------------------------------------------------------------- advisory


def test_an_advisory_rule_is_reported_but_never_blocks():
    policy = GatePolicy.from_mapping({"advisory": ["budgets"]})
    decision = gate(policy, budgets=(Budget("cost", 12.5, 10.0),))

    assert decision.effect is Effect.ALLOW
    assert decision.reasons == ("advisory: budget cost 12.50 is over its limit 10.00",)
    assert decision.followups[0].recommended is False
    assert decision.scorecard.budgets.breaches == ("cost",)
    outcome = next(o for o in decision.rules if o.name == "budgets")
    assert (outcome.effect, outcome.advisory) == (Effect.DENY, True)


def test_advisory_does_not_hide_a_blocking_denial():
    policy = GatePolicy.from_mapping({"advisory": ["budgets"]})
    decision = gate(policy, budgets=(Budget("cost", 12.5, 10.0),), coverage=Coverage(0.5, 0.8))

    assert decision.effect is Effect.DENY
    assert decision.reasons == (
        "coverage 0.50 is below the minimum 0.80",
        "advisory: budget cost 12.50 is over its limit 10.00",
    )


def test_advisory_missing_evidence():
    policy = GatePolicy.from_mapping({"advisory": ["coverage", "evals"]})
    decision = gate(policy, coverage=None, evals=())

    assert decision.effect is Effect.ALLOW
    assert decision.reasons == (
        "advisory: no coverage report: evidence missing (policy: follow_up)",
        "advisory: no eval metrics: evidence missing (policy: follow_up)",
    )


def test_an_effect_override_caps_a_rule():
    policy = GatePolicy.from_mapping({"effects": {"budgets": "follow_up", "evals": "allow"}})
    decision = gate(
        policy,
        budgets=(Budget("cost", 12.5, 10.0),),
        evals=(Metric("accuracy", score=0.1, threshold=0.5),),
    )

    assert decision.effect is Effect.FOLLOW_UP
    assert len(decision.reasons) == 2
    # a cap never raises an effect
    policy = GatePolicy.from_mapping({"effects": {"budgets": "deny"}})
    assert gate(policy, budgets=(Budget("cost", 9.5, 10.0),)).effect is Effect.ALLOW


# ------------------------------------------------------------------------- plugin rules


def test_a_rule_that_raises_denies():
    class Broken:
        name = "broken"

        def evaluate(self, request, policy):
            raise KeyError("boom")

    decision = decide(request(), POLICY, (*BUILTIN_RULES, Broken()))

    assert decision.effect is Effect.DENY
    assert decision.reasons == ("rule broken failed (KeyError: 'boom'), so the gate denies",)


@pytest.mark.parametrize(
    ("policy", "effect", "said"),
    [
        (dataclasses.replace(POLICY, effects={"broken": Effect.ALLOW}), Effect.ALLOW,
         "rule broken failed (KeyError: 'boom'): capped at allow by [gate.effects]"),
        (dataclasses.replace(POLICY, effects={"broken": Effect.FOLLOW_UP}), Effect.FOLLOW_UP,
         "rule broken failed (KeyError: 'boom'): capped at follow_up by [gate.effects]"),
        (dataclasses.replace(POLICY, effects={"broken": Effect.DENY}), Effect.DENY,
         "rule broken failed (KeyError: 'boom'), so the gate denies"),
    ],
    ids=["capped at allow", "capped at follow_up", "capped at deny"],
)  # fmt: skip
def test_a_failed_rule_says_what_its_cap_left_of_its_deny(policy, effect, said):
    """Its reason said "so the gate denies" while its cap made the decision ALLOW (found by a
    governance hunt): the cap stands, as for any effect of the rule, and the reason says it."""

    class Broken:
        name = "broken"

        def evaluate(self, request, policy):
            raise KeyError("boom")

    decision = decide(request(), policy, (*BUILTIN_RULES, Broken()))

    assert decision.effect is effect
    assert decision.reasons == (said,)


class _Abort(BaseException):
    """A plugin's own BaseException: it took the daemon down."""


class _BadText(Exception):
    def __str__(self) -> str:
        raise ValueError("no text")


@pytest.mark.parametrize(
    ("raised", "shown"),
    [
        (_Abort("stop"), "_Abort: stop"),
        (KeyboardInterrupt(), "KeyboardInterrupt: "),
        (SystemExit(3), "SystemExit: 3"),
        (_BadText(), "_BadText: <str() raised ValueError>"),
    ],
)
def test_whatever_a_rule_raises_denies(raised, shown):
    class Broken:
        name = "broken"

        def evaluate(self, request, policy):
            raise raised

    decision = decide(request(), POLICY, (*BUILTIN_RULES, Broken()))

    assert decision.effect is Effect.DENY
    assert decision.reasons == (f"rule broken failed ({shown}), so the gate denies",)


_LOOP: dict = {}
_LOOP["self"] = _LOOP


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (None, "not a RuleResult"),
        ("allow", "not a RuleResult"),
        (RuleResult(effect="maybe"), "maybe"),
        (RuleResult("allow", reasons="abc"), "reasons must be a tuple of str"),  # not a, b, c
        (RuleResult("allow", reasons=(1, None)), "reasons must be a tuple of str"),
        (RuleResult("allow", followups=("x",)), "followups must be a tuple of Followup"),
        (RuleResult("allow", followups=(Followup("s", 5),)), "followups must be a tuple"),
        (RuleResult("allow", scorecard=_LOOP), "scorecard nests deeper than 64 levels"),
    ],
)
def test_a_rule_answering_badly_denies_naming_what_is_wrong(answer, why):
    class Bad:
        name = "bad"

        def evaluate(self, request, policy):
            return answer

    decision = decide(request(), POLICY, (Bad(),))

    assert decision.effect is Effect.DENY
    assert decision.reasons[0].startswith("rule bad failed")
    assert why in decision.reasons[0]


def test_a_plugin_rules_answer_is_bounded_and_a_built_ins_is_not():
    class Verbose:
        name = "verbose"

        def evaluate(self, request, policy):
            return RuleResult(
                "follow_up",
                tuple(f"r{i}" + "x" * (2_000 if i == 0 else 0) for i in range(150)),
                tuple(Followup("s" * 300, "d" * 1_001) for _ in range(120)),
            )

    decision = decide(request(), POLICY, (Verbose(),))

    assert len(decision.reasons) == 101
    assert decision.reasons[0] == "r0" + "x" * 998 + "… (2,002 characters)"
    assert decision.reasons[1:3] == ("r1", "r2")
    assert decision.reasons[-1] == "rule verbose: 50 more reasons not shown"
    assert len(decision.followups) == 100
    assert decision.followups[0] == Followup(
        "s" * 200 + "… (300 characters)", "d" * 1_000 + "… (1,001 characters)"
    )

    class Novelty(Verbose):
        name = "novelty"  # a built-in's name: its own answers are not cut

    assert len(decide(request(), POLICY, (Novelty(),)).reasons) == 150


class _LongRepr:
    def __repr__(self) -> str:
        return "r" * 1_000_001


@pytest.mark.parametrize(
    ("part", "fails"),
    [
        ({"blob": "b" * 999_990}, False),
        ({"blob": "b" * 1_000_001}, True),
        ([["x" * 1_000] * 1_000, [1] * 10], True),  # counted across its nested values
        ({"k" * 1_000_001: 1}, True),  # keys too
        (BudgetSummary(breaches=("b" * 10_000,) * 101), True),  # one of the four summaries too
        ({"shown": _LongRepr()}, True),  # recorded as its text
        ({"n": 10**5_000}, True),  # its record could not be written
        ({"n": 10**4_000}, False),
    ],
)
def test_a_plugin_rules_scorecard_part_over_a_million_characters_fails_it(part, fails):
    class Big:
        name = "big"

        def evaluate(self, request, policy):
            return RuleResult("allow", scorecard=part)

    decision = decide(request(), POLICY, (Big(),))

    assert (decision.effect is Effect.DENY) is fails
    if fails:
        assert "scorecard holds" in decision.reasons[0]


@pytest.mark.parametrize("value", [0, -1, math.nan, math.inf, 3_601, "10", True])
def test_rule_timeout_is_seconds_above_zero_up_to_an_hour(value):
    with pytest.raises(ConfigError, match=r"\[gate\]\.rule_timeout"):
        GatePolicy.from_mapping({"rule_timeout": value})


def test_rule_timeout_defaults_to_thirty_seconds_and_is_configurable():
    assert GatePolicy().rule_timeout == 30.0
    assert GatePolicy.from_mapping({"rule_timeout": 2}).rule_timeout == 2


def test_a_rules_reasons_and_followups_given_as_lists_are_taken():
    class Listing:
        name = "listing"

        def evaluate(self, request, policy):
            return RuleResult("follow_up", ["look"], [Followup("look", "Look")])

    decision = decide(request(), POLICY, (Listing(),))

    assert decision.effect is Effect.FOLLOW_UP
    assert decision.reasons == ("look",)
    assert decision.followups == (Followup("look", "Look"),)


@pytest.mark.parametrize("answer", [None, "allow", RuleResult(effect="maybe")])
def test_a_rule_answering_badly_denies(answer):
    class Bad:
        name = "bad"

        def evaluate(self, request, policy):
            return answer

    decision = decide(request(), POLICY, (Bad(),))

    assert decision.effect is Effect.DENY
    assert decision.reasons[0].startswith("rule bad failed")


def test_a_broken_advisory_rule_does_not_block():
    class Broken:
        name = "broken"

        def evaluate(self, request, policy):
            raise RuntimeError("x")

    policy = GatePolicy.from_mapping({"advisory": ["broken"]})
    decision = decide(request(), policy, (*BUILTIN_RULES, Broken()))

    assert decision.effect is Effect.ALLOW
    assert decision.reasons[0].startswith("advisory: rule broken failed")
    assert decision.reasons[0].endswith(": advisory, so it does not block")  # (not "denies")


def test_plugin_scorecard_parts_go_to_extra():
    rules = (*BUILTIN_RULES, Fixed("licenses", "allow", (), part={"gpl": 0}))
    decision = decide(request(), POLICY, rules)

    assert decision.scorecard.extra == {"licenses": {"gpl": 0}}
    assert decision.scorecard.novelty is not None


def test_scorecard_parts_are_none_without_their_rule_and_telemetry_passes_through():
    decision = decide(request(telemetry={"tokens": 5}), POLICY, (Fixed("x", "allow"),))

    assert decision.scorecard.novelty is None
    assert decision.scorecard.coverage is None
    assert decision.scorecard.telemetry == {"tokens": 5}


def test_check_rules_names_an_unknown_rule():
    policy = GatePolicy.from_mapping({"advisory": ["budget"]})

    with pytest.raises(ConfigError, match=r"^\[gate\]\.advisory: unknown rule 'budget'"):
        policy.check_rules(BUILTIN_RULES)
    GatePolicy.from_mapping({"advisory": ["budgets"]}).check_rules(BUILTIN_RULES)
    with pytest.raises(ConfigError, match=r"^\[gate\]\.effects: unknown rule 'x'"):
        GatePolicy.from_mapping({"effects": {"x": "allow"}}).check_rules(BUILTIN_RULES)


# ------------------------------------------------------------------------- the [gate] table


def test_defaults():
    policy = GatePolicy.from_mapping(None)

    assert policy == GatePolicy.from_mapping({}) == GatePolicy()
    assert (policy.max_novelty, policy.novelty_follow_up, policy.min_coverage) == (0.9, 0.7, 0.8)
    assert (policy.attention_margin, policy.near_limit) == (0.05, 0.9)
    assert policy.missing_coverage is policy.missing_evals is Effect.FOLLOW_UP
    assert policy.high_risk is Effect.FOLLOW_UP
    assert policy.high_risk_tags == ("security", "auth", "payments", "migration", "infra")
    assert "**/migrations/**" in policy.high_risk_paths
    assert policy.advisory == frozenset()
    assert dict(policy.effects) == {}


def test_a_full_table_loads():
    policy = GatePolicy.from_mapping(
        {
            "max_novelty": 1,
            "novelty_follow_up": 0.5,
            "min_coverage": 0.6,
            "attention_margin": 0.1,
            "near_limit": 0.75,
            "missing_coverage": "deny",
            "missing_evals": "allow",
            "high_risk": "allow",
            "high_risk_tags": ["pii"],
            "high_risk_paths": ["secrets/**"],
            "advisory": ["novelty"],
            "effects": {"budgets": "follow_up"},
        }
    )

    assert policy.max_novelty == 1.0
    assert policy.missing_coverage is Effect.DENY
    assert policy.missing_evals is Effect.ALLOW
    assert policy.advisory == {"novelty"}
    assert policy.effects == {"budgets": Effect.FOLLOW_UP}


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"max_novelty": 1.5}, r"\[gate\]\.max_novelty: expected a number in \[0, 1\], got 1.5"),
        ({"max_novelty": "high"}, r"\[gate\]\.max_novelty: expected a number, got 'high'"),
        ({"max_novelty": True}, r"\[gate\]\.max_novelty: expected a number"),
        ({"max_novelty": math.nan}, r"\[gate\]\.max_novelty: expected a number in"),
        ({"min_coverage": -0.1}, r"\[gate\]\.min_coverage: expected a number in"),
        ({"attention_margin": 2}, r"\[gate\]\.attention_margin: expected a number in"),
        ({"near_limit": 0}, r"\[gate\]\.near_limit: expected a number in \(0, 1\]"),
        (
            {"novelty_follow_up": 0.95},
            r"\[gate\]\.novelty_follow_up: 0.95 is above max_novelty 0.9",
        ),
        ({"missing_coverage": "block"}, r"\[gate\]\.missing_coverage: expected one of deny"),
        ({"missing_evals": 1}, r"\[gate\]\.missing_evals: expected one of deny"),
        ({"high_risk": "maybe"}, r"\[gate\]\.high_risk: expected one of"),
        ({"high_risk_tags": "auth"}, r"\[gate\]\.high_risk_tags: expected a list"),
        ({"high_risk_paths": ["ok", ""]}, r"\[gate\]\.high_risk_paths: expected a list"),
        ({"advisory": [1]}, r"\[gate\]\.advisory: expected a list"),
        ({"effects": ["budgets"]}, r"\[gate\]\.effects: expected a table"),
        ({"effects": {"budgets": "never"}}, r"\[gate\]\.effects\.budgets: expected one of"),
        ({"max_novelity": 0.5}, r"\[gate\]\.max_novelity: unknown key \(expected one of: "),
    ],
)
def test_invalid_tables_name_the_key(table, message):
    with pytest.raises(ConfigError, match="^" + message):
        GatePolicy.from_mapping(table)


def test_direct_construction_is_validated_too():
    with pytest.raises(ConfigError, match=r"^\[gate\]\.near_limit"):
        GatePolicy(near_limit=1.5)
    with pytest.raises(ConfigError, match=r"^\[gate\]\.missing_evals"):
        GatePolicy(missing_evals="sometimes")  # type: ignore[arg-type]
    assert GatePolicy(missing_evals="deny").missing_evals is Effect.DENY  # type: ignore[arg-type]


# ------------------------------------------------------------------------- the edge's maps


def test_proto_enum_numbers():
    assert EFFECT_NUMBERS == {Effect.ALLOW: 1, Effect.FOLLOW_UP: 2, Effect.DENY: 3}
    assert DIRECTION_BY_NUMBER[0] is Direction.UNSPECIFIED
    assert DIRECTION_BY_NUMBER[1] is Direction.HIGHER_IS_BETTER
    assert DIRECTION_BY_NUMBER[2] is Direction.LOWER_IS_BETTER


def test_decisions_are_frozen_and_hashable():
    decision = gate(coverage=None, budgets=(Budget("cost", 12.5, 10.0),))

    with pytest.raises(AttributeError):
        decision.effect = Effect.ALLOW  # type: ignore[misc]
    assert hash(decision.followups)
    assert hash(decision.scorecard.novelty)


def test_a_large_request_is_decided_linearly():
    """Not a timing test (see bench/gate_check.py): 1,000 diffs and 100 metrics decide, and
    every violation is reported once."""
    diffs = tuple(Diff(f"src/m{i}.py", novelty_score=0.95 if i % 2 else 0.1) for i in range(1000))
    evals = tuple(Metric(f"m{i}", score=0.1, threshold=0.5) for i in range(100))
    decision = gate(diffs=diffs, evals=evals)

    assert decision.effect is Effect.DENY
    assert len(decision.reasons) == 500 + 100
    assert len(decision.scorecard.evals.failing_metrics) == 100


def _lazy(values, **known):
    """A LazyColumn of ``values`` that counts its loads."""
    loads = []

    def load():
        loads.append(1)
        return values

    return LazyColumn(len(values), load, **known), loads


def _columns(count, **columns):
    """Diffs of ``count`` diffs: ``columns``, the others of default values."""
    defaults = Diffs.of([Diff(f"f{i}") for i in range(count)])
    return Diffs(**{name: columns.get(name, getattr(defaults, name)) for name in (
        "paths", "lines_added", "lines_deleted", "novelty_scores", "risk_tags", "components"
    )})  # fmt: skip


def test_a_lazy_column_loads_once_and_behaves_as_its_tuple():
    column, loads = _lazy([("ui",), ()], tags=["ui"])
    assert len(column) == 2
    assert not loads
    diffs = _columns(2, risk_tags=column)
    assert distinct_tags(diffs) == {"ui"}
    assert len(diffs) == 2
    assert "risk_tags=(('x',),)" in repr(_columns(1, risk_tags=(("x",),)))
    assert not loads
    assert column == (("ui",), ())
    assert column[0] == ("ui",)
    assert column[1:] == ((),)
    assert hash(column) == hash((("ui",), ()))
    assert list(column) == [("ui",), ()]
    assert loads == [1]
    assert diffs.risk_tags == (("ui",), ())  # read as a tuple
    assert type(diffs.risk_tags) is tuple
    assert distinct_tags(_columns(2, risk_tags=(("a", "b"), ("b",)))) == {"a", "b"}
    scores, _ = _lazy([0.5, None, 0.25], scores=(0.5, 0.25))
    assert scores_given(_columns(3, novelty_scores=scores)) == (0.5, 0.25)
    assert scores_given(_columns(2, novelty_scores=(0.5, None))) == [0.5]
    with pytest.raises(AttributeError, match="immutable"):
        diffs.paths = ()  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(diffs)) == diffs
    short = LazyColumn(3, lambda: [1, 2])
    with pytest.raises(ValueError, match="one value per diff"):
        list(short)


@pytest.mark.parametrize("novelty", [0.5, 0.8, 0.95, math.nan])
@pytest.mark.parametrize("tag", ["ui", "AUTH"])
def test_lazy_columns_decide_as_tuples_and_load_only_when_needed(novelty, tag):
    diffs = [Diff(f"src/f{i}.py", 0, i, None if i % 2 else novelty * (i % 3 == 0 or 0.5),
                  (tag,) if i % 4 == 0 else (), "") for i in range(12)]  # fmt: skip
    eager = Diffs.of(diffs)
    tags, tag_loads = _lazy(eager.risk_tags, tags=[t for d in diffs for t in d.risk_tags])
    given = tuple(s for s in eager.novelty_scores if s is not None)
    scores, score_loads = _lazy(eager.novelty_scores, scores=given)
    lines, line_loads = _lazy(eager.lines_added)
    lazy = Diffs(eager.paths, lines, eager.lines_deleted, scores, tags, eager.components)
    policy = GatePolicy()
    assert decide(GateRequest("chg", diffs=lazy), policy) == decide(
        GateRequest("chg", diffs=eager), policy
    )
    assert not line_loads
    assert bool(tag_loads) == (tag == "AUTH")  # a high-risk tag: each diff's own tags
    assert bool(score_loads) == (not max(given) <= policy.novelty_follow_up)


@pytest.mark.parametrize(
    "paths",
    [
        [f"src/app/f{i}.py" for i in range(40)] + ["src/auth/x.py", "./infra/main.tf"],
        ["a/auth", "/x.py", "db/0001.sql", "\0/auth/\0", "lib/security/k.py", "q.sqx"]
        + [f"p{i}.py" for i in range(60)],
        [f"services/auth/migrations/{i}.sql" for i in range(40)],  # many: a search per path
        ["./.github/workflows/ci.yml", "x.sq", "l", "infra", "infra/"],
        [],
    ],
)
def test_paths_searched_joined_match_as_one_by_one(paths):
    from foundry.kernel.core.gate_policy import _path_matches

    def spans(found):
        return [None if m is None else (m.lastgroup, m.group()) for m in found]

    others = (("**/auth/**", "*.sq?"), ("**/auth/**", "x/[ab]/**"))
    for policy in (POLICY, *(GatePolicy(high_risk_paths=p) for p in others)):
        expected = [policy.match_path(p) for p in paths]
        assert spans(_path_matches(paths, policy)) == spans(expected)
