"""Conversions of the governance RPCs (eval packs, change gates): protobuf ↔ the gate actor's
plain data. Wrapper fields (DoubleValue, StringValue) are ``float | None`` / ``str | None`` on
betterproto2 messages; Structs arrive here already checked as dicts (``runtime_service``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from foundry.kernel.core.gate_policy import (
    DIRECTION_BY_NUMBER,
    EFFECT_NUMBERS,
    Budget,
    Coverage,
    CoverageComponent,
    Diffs,
    Effect,
    GateRequest,
    Metric,
)
from foundry.kernel.core.governance import (
    EvalResultRecord,
    GateDecisionRecord,
    GateFollowupRecord,
    StoredGate,
    StoredScenario,
    thawed,
)
from foundry.kernel.errors import InvalidArgument
from foundry.proto import runtime_api as api
from foundry.proto.generated.google.protobuf import Struct

OUTCOME_NAMES: Mapping[int, str] = {
    api.FollowupOutcome.APPROVED: "approved",
    api.FollowupOutcome.NEEDS_CHANGES: "needs_changes",
    api.FollowupOutcome.DEFERRED: "deferred",
}
OUTCOME_NUMBERS: Mapping[str, api.FollowupOutcome] = {
    name: api.FollowupOutcome(number) for number, name in OUTCOME_NAMES.items()
}


def struct(value: Any) -> Struct:
    return Struct.from_dict(thawed(value) if value is not None else {})


def followup_outcome(number: Any) -> str:
    """FollowupOutcome → its name; UNSPECIFIED (or an unknown number) is INVALID_ARGUMENT."""
    name = OUTCOME_NAMES.get(int(number))
    if name is None:
        raise InvalidArgument(
            "outcome: FOLLOWUP_OUTCOME_APPROVED, _NEEDS_CHANGES or _DEFERRED is required"
        )
    return name


def direction(number: Any, field: str) -> Any:
    """MetricDirection → the policy's direction; an unknown number is INVALID_ARGUMENT."""
    found = DIRECTION_BY_NUMBER.get(int(number))
    if found is None:
        raise InvalidArgument(f"{field}: unknown MetricDirection {int(number)}")
    return found


def effect_number(effect: str) -> int:
    """A stored decision's effect (``allow``…) → its ChangeDecisionEffect number."""
    return int(EFFECT_NUMBERS[Effect(effect)])


def gate_request(
    message: api.CheckChangeGateRequest, telemetry: Mapping[str, Any], metadata: Mapping[str, Any]
) -> GateRequest:
    coverage = None
    if message.coverage is not None:
        c = message.coverage
        coverage = Coverage(
            overall_ratio=c.overall_ratio,
            minimum_ratio=c.minimum_ratio,
            components=tuple(
                CoverageComponent(x.name, x.coverage_ratio, x.required_ratio) for x in c.components
            ),
        )
    return GateRequest(
        change_id=message.change_id,
        revision=message.revision,
        diffs=Diffs.of_rows(
            (
                d.path,
                d.lines_added,
                d.lines_deleted,
                d.novelty_score,
                tuple(d.risk_tags),
                d.component,
            )
            for d in message.diffs
        ),  # fmt: skip
        coverage=coverage,
        evals=tuple(
            Metric(
                m.name,
                m.slug,
                m.score,
                m.threshold,
                direction(m.direction, f"evals[{i}].direction"),
                m.weight,
            )  # fmt: skip
            for i, m in enumerate(message.evals)
        ),
        budgets=tuple(Budget(b.name, b.actual, b.limit) for b in message.budgets),
        telemetry=telemetry,
        metadata=metadata,
        actor=message.actor,
    )


def eval_result(result: EvalResultRecord) -> api.EvalResult:
    return api.EvalResult(
        result_id=result.result_id,
        run_id=result.run_id,
        scenario_id=result.scenario_id,
        outcome=result.outcome,
        commit=result.commit,
        executed_at=result.executed_at,
        metrics=struct(result.metrics),
    )


def eval_scenario(stored: StoredScenario) -> api.EvalScenario:
    s = stored.scenario
    return api.EvalScenario(
        scenario_id=s.scenario_id,
        pack=s.pack,
        slug=s.slug,
        title=s.title,
        description=s.description,
        created_at=s.created_at,
        history=[eval_result(r) for r in stored.history],
    )


def gate_followup(record: GateFollowupRecord) -> api.ChangeGateFollowup:
    return api.ChangeGateFollowup(
        followup_id=record.followup_id,
        gate_id=record.gate_id,
        actor=record.actor,
        outcome=OUTCOME_NUMBERS[record.outcome],
        note=record.note,
        details=struct(record.details),
        recorded_at=record.recorded_at,
    )


def _scorecard(card: Mapping[str, Any]) -> api.DecisionScorecard:
    novelty, coverage = card.get("novelty"), card.get("coverage")
    evals, budgets = card.get("evals"), card.get("budgets")
    return api.DecisionScorecard(
        novelty=None
        if novelty is None
        else api.NoveltySummary(
            max_novelty=novelty["max_novelty"] or 0.0,
            avg_novelty=novelty["avg_novelty"] or 0.0,
            high_risk_paths=list(novelty["high_risk_paths"]),
        ),
        coverage=None
        if coverage is None
        else api.CoverageSummary(
            overall_ratio=coverage["overall_ratio"],
            components_below_threshold=list(coverage["components_below_threshold"]),
        ),
        evals=None
        if evals is None
        else api.EvalSummary(
            failing_metrics=list(evals["failing_metrics"]),
            attention_metrics=list(evals["attention_metrics"]),
            score_per_token=evals["score_per_token"],
        ),
        budgets=None
        if budgets is None
        else api.BudgetSummary(
            breaches=list(budgets["breaches"]), near_limits=list(budgets["near_limits"])
        ),
        telemetry=struct(card.get("telemetry") or {}),
    )


def gate_decision(stored: StoredGate) -> api.ChangeGateDecision:
    d: GateDecisionRecord = stored.decision
    return api.ChangeGateDecision(
        gate_id=d.gate_id,
        change_id=d.change_id,
        revision=d.revision,
        effect=api.ChangeDecisionEffect(effect_number(d.effect)),
        reasons=list(d.reasons),
        followups=[
            api.FollowupAction(
                slug=f["slug"], description=f["description"], recommended=f["recommended"]
            )
            for f in d.followups
        ],
        scorecard=_scorecard(d.scorecard),
        decided_at=d.decided_at,
        metadata=struct(d.metadata),
        telemetry=struct(d.telemetry),
        acknowledgements=[gate_followup(f) for f in stored.acknowledgements],
    )
