"""``foundry gate …``: ask the change gate, acknowledge its follow-ups, list its decisions.

``gate check REQUEST_FILE`` sends a ``CheckChangeGateRequest`` read from a JSON or TOML file of
the same shape (``direction`` is ``"higher_is_better"`` / ``"lower_is_better"``; wrapper fields
such as ``threshold`` are plain numbers or absent) and exits 0 ALLOW, 1 DENY, 2 FOLLOW_UP.

``--from-evals PACK --commit SHA`` adds one metric per scenario of the pack, from the results
recorded at that commit (one per run, the latest): ``name = "pass_rate"``, ``slug`` = the
scenario's slug, ``score`` = the fraction of its runs that passed, ``threshold = 1.0``,
``higher_is_better``, weight 1 — every recorded run must pass, as ``eval run`` demands (a
metric the file gives with the same name and slug wins). The
telemetry gets ``eval_pack``, ``eval_commit``, ``eval_runs`` and ``eval_cost`` (Σ of the mean
cost per scenario), and ``tokens`` (Σ of the mean tokens per scenario: one pass over the pack)
unless the file already gives tokens. An empty ``revision`` becomes the commit. A scenario
without results at that commit is an error (run ``foundry eval run`` first): missing evidence is
not turned into a score.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import betterproto2
from foundry.kernel.cli.common import prepared_client, whole_number
from foundry.kernel.cli.evals import list_scenarios, load_document, results_at, stats_of
from foundry.kernel.cli.output import message_dict, reported, stamp
from foundry.kernel.core.json_input import STRUCT_DEPTH, check_depth, each_key_once, toml_not_json
from foundry.kernel.errors import ConfigError, FoundryError, InvalidArgument
from foundry.proto import analytics_api
from foundry.proto import runtime_api as api
from foundry.proto.generated.google.protobuf import Struct
from grpclib import GRPCError
from grpclib.const import Status

EFFECT_EXIT = {
    api.ChangeDecisionEffect.ALLOW: 0,
    api.ChangeDecisionEffect.DENY: 1,
    api.ChangeDecisionEffect.FOLLOW_UP: 2,
}
DIRECTIONS = {
    "unspecified": api.MetricDirection.UNSPECIFIED,
    "higher_is_better": api.MetricDirection.HIGHER_IS_BETTER,
    "lower_is_better": api.MetricDirection.LOWER_IS_BETTER,
}
OUTCOMES = {
    "approved": api.FollowupOutcome.APPROVED,
    "needs_changes": api.FollowupOutcome.NEEDS_CHANGES,
    "deferred": api.FollowupOutcome.DEFERRED,
}
TOKEN_KEYS = ("tokens", "total_tokens", "tokens_in", "tokens_out")


def add_gate_commands(commands: Any) -> None:
    from foundry.kernel.cli.main import _client_options

    gate = commands.add_parser("gate", help="change gates: check, follow up, list")
    verbs = gate.add_subparsers(dest="verb", required=True, metavar="VERB")

    check = verbs.add_parser("check", help="decide a change; exits 0 allow, 1 deny, 2 follow-up")
    check.add_argument("request_file", help="JSON or TOML CheckChangeGateRequest (- for stdin)")
    check.add_argument("--from-evals", metavar="PACK", help="add metrics from a pack's results")
    check.add_argument("--commit", metavar="SHA", help="the commit of --from-evals results")
    _client_options(check)
    check.set_defaults(handler=prepared_client(cmd_check, _prepare_check))

    followup = verbs.add_parser("followup", help="acknowledge a gate decision's follow-ups")
    followup.add_argument("gate_id")
    followup.add_argument("--outcome", required=True, choices=sorted(OUTCOMES))
    followup.add_argument("--note")
    followup.add_argument("--actor", default=os.environ.get("USER", ""),
                          help="who acknowledges (default: $USER)")  # fmt: skip
    followup.add_argument("--details", help="a JSON object")
    _client_options(followup)
    followup.set_defaults(handler=prepared_client(cmd_followup, _prepare_followup))

    listing = verbs.add_parser("list", help="recent gate decisions, newest first")
    listing.add_argument("change_id", nargs="?", default="")
    listing.add_argument("--limit", type=whole_number, default=20, metavar="N")
    _client_options(listing)
    listing.set_defaults(handler=prepared_client(cmd_list))


# --- the request file ---------------------------------------------------------------------------


def load_request(path: str | Path) -> api.CheckChangeGateRequest:
    """Read and check a request file; errors are one-line ConfigErrors naming the key."""
    name = str(path)
    doc = load_document(path)
    r = _Reader(name)
    r.known(doc, ("change_id", "revision", "diffs", "coverage", "evals", "budgets", "telemetry",
                  "metadata", "actor"), "")  # fmt: skip
    request = api.CheckChangeGateRequest(
        change_id=r.string(doc, "change_id", ""),
        revision=r.string(doc, "revision", ""),
        actor=r.string(doc, "actor", ""),
        diffs=[r.diff(d, f"diffs[{i}]") for i, d in enumerate(r.items(doc, "diffs", ""))],
        evals=[r.metric(m, f"evals[{i}]") for i, m in enumerate(r.items(doc, "evals", ""))],
        budgets=[r.budget(b, f"budgets[{i}]") for i, b in enumerate(r.items(doc, "budgets", ""))],
    )
    if doc.get("coverage") is not None:
        request.coverage = r.coverage(doc["coverage"], "coverage")
    for key in ("telemetry", "metadata"):
        if doc.get(key) is not None:
            setattr(request, key, Struct.from_dict(r.object(doc, key, "")))
    return request


class _Reader:
    """Typed field access with ``FILE: path.key: what was expected`` errors."""

    def __init__(self, name: str) -> None:
        self.name = name

    def fail(self, where: str, message: str) -> ConfigError:
        return ConfigError(f"{self.name}: {where}: {message}")

    def table(self, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(where, "expected an object")
        return value

    def known(self, table: Mapping[str, Any], keys: tuple[str, ...], at: str) -> None:
        unknown = sorted(set(table) - set(keys))
        if unknown:
            raise self.fail(f"{at}{unknown[0]}", f"unknown key (known: {', '.join(keys)})")

    def string(self, table: Mapping[str, Any], key: str, at: str) -> str:
        value = table.get(key, "")
        if not isinstance(value, str):
            raise self.fail(f"{at}{key}", "expected a string")
        return value

    def number(self, table: Mapping[str, Any], key: str, at: str) -> float | None:
        value = table.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(f"{at}{key}", "expected a number")
        try:  # (an int past a double's range: OverflowError, a traceback)
            number = float(value)
        except OverflowError:
            raise self.fail(f"{at}{key}", "expected a finite number") from None
        if not math.isfinite(number):
            raise self.fail(f"{at}{key}", "expected a finite number")
        return number

    def count(self, table: Mapping[str, Any], key: str, at: str) -> int:
        value = table.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
            raise self.fail(f"{at}{key}", "expected a whole number >= 0")
        return value

    def items(self, table: Mapping[str, Any], key: str, at: str) -> list[Any]:
        value = table.get(key, [])
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(f"{at}{key}", "expected a list")
        return value

    def strings(self, table: Mapping[str, Any], key: str, at: str) -> list[str]:
        value = self.items(table, key, at)
        if not all(isinstance(v, str) for v in value):
            raise self.fail(f"{at}{key}", "expected a list of strings")
        return value

    def object(self, table: Mapping[str, Any], key: str, at: str) -> dict[str, Any]:
        value = table.get(key)
        if not isinstance(value, dict):
            raise self.fail(f"{at}{key}", "expected an object")
        try:  # (200 levels: "JSON nested too deeply to read", naming neither file nor key)
            check_depth(value, f"{self.name}: {at}{key}", STRUCT_DEPTH)
        except InvalidArgument as exc:
            raise ConfigError(str(exc)) from None
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise self.fail(f"{at}{key}", f"not JSON: {exc}") from None
        problem = toml_not_json(value, f"{at}{key}")  # (a 401-digit int: a traceback)
        if problem is not None:
            raise ConfigError(f"{self.name}: {problem}")
        return value

    def diff(self, raw: Any, where: str) -> api.ChangeDiff:
        t, at = self.table(raw, where), f"{where}."
        self.known(t, ("path", "lines_added", "lines_deleted", "novelty_score", "risk_tags",
                       "component"), at)  # fmt: skip
        return api.ChangeDiff(
            path=self.string(t, "path", at),
            lines_added=self.count(t, "lines_added", at),
            lines_deleted=self.count(t, "lines_deleted", at),
            novelty_score=self.number(t, "novelty_score", at),
            risk_tags=self.strings(t, "risk_tags", at),
            component=self.string(t, "component", at),
        )

    def coverage(self, raw: Any, where: str) -> api.CoverageReport:
        t, at = self.table(raw, where), f"{where}."
        self.known(t, ("overall_ratio", "minimum_ratio", "components"), at)
        components = []
        for i, c in enumerate(self.items(t, "components", at)):
            ct, cat = self.table(c, f"{at}components[{i}]"), f"{at}components[{i}]."
            self.known(ct, ("name", "coverage_ratio", "required_ratio"), cat)
            components.append(
                api.CoverageComponent(
                    name=self.string(ct, "name", cat),
                    coverage_ratio=self.number(ct, "coverage_ratio", cat),
                    required_ratio=self.number(ct, "required_ratio", cat),
                )
            )
        return api.CoverageReport(
            overall_ratio=self.number(t, "overall_ratio", at),
            minimum_ratio=self.number(t, "minimum_ratio", at),
            components=components,
        )

    def metric(self, raw: Any, where: str) -> api.EvalMetric:
        t, at = self.table(raw, where), f"{where}."
        self.known(t, ("name", "slug", "score", "threshold", "direction", "weight"), at)
        score = self.number(t, "score", at)
        if score is None:
            raise self.fail(f"{at}score", "required: a number")
        direction = t.get("direction", "unspecified")
        key = direction.lower().removeprefix("metric_direction_") if isinstance(
            direction, str) else ""  # fmt: skip
        if key not in DIRECTIONS:
            raise self.fail(f"{at}direction", "expected higher_is_better or lower_is_better")
        return api.EvalMetric(
            name=self.string(t, "name", at),
            slug=self.string(t, "slug", at),
            score=score,
            threshold=self.number(t, "threshold", at),
            direction=DIRECTIONS[key],
            weight=self.number(t, "weight", at),
        )

    def budget(self, raw: Any, where: str) -> api.BudgetSignal:
        t, at = self.table(raw, where), f"{where}."
        self.known(t, ("name", "actual", "limit"), at)
        actual = self.number(t, "actual", at)
        if actual is None:
            raise self.fail(f"{at}actual", "required: a number")
        return api.BudgetSignal(
            name=self.string(t, "name", at), actual=actual, limit=self.number(t, "limit", at)
        )


# --- metrics from recorded eval results ---------------------------------------------------------

# Every result of the pack at the commit: ListEvalScenarios' history holds each scenario's
# newest 100 at any commit, and a commit's older results fell out of it (a failed run among
# them: the gate allowed). Only the metrics a pass rate and the telemetry use: a result's
# assertions and errors (up to ~75 KB) held a reply to a few dozen results.
RESULTS_AT_SQL = """
SELECT r.result_id, r.scenario_id, r.run_id, r.outcome,
       json_object('score', r.metrics->'score', 'latency_ms', r.metrics->'latency_ms',
                   'tokens', r.metrics->'tokens', 'cost', r.metrics->'cost') AS metrics,
       epoch_us(r.executed_at) AS executed_us
FROM eval_results r JOIN eval_scenarios s USING (scenario_id)
WHERE s.pack = $pack AND r.commit = $commit
ORDER BY r.executed_at, r.result_id
"""


async def results_recorded_at(
    channel: Any, pack: str, commit: str
) -> dict[str, list[api.EvalResult]]:
    """Each scenario's results at ``commit`` (by scenario id), through the Analytics service
    (which answers once its database holds every acknowledged record)."""
    analytics = analytics_api.AnalyticsStub(channel)
    reply = await analytics.query(
        analytics_api.QueryRequest(sql=RESULTS_AT_SQL, params={"pack": pack, "commit": commit})
    )
    if reply.truncated:
        raise FoundryError(f"--from-evals: more results at commit {commit!r} in pack {pack!r} "
                           "than one query returns ([analytics] max_rows, "
                           "max_reply_bytes)")  # fmt: skip
    found: dict[str, list[api.EvalResult]] = {}
    for line in reply.rows_json:
        result_id, scenario_id, run_id, outcome, metrics, executed_us = json.loads(line)
        found.setdefault(scenario_id, []).append(api.EvalResult(
            result_id=result_id, run_id=run_id, scenario_id=scenario_id, outcome=outcome,
            commit=commit, metrics=Struct.from_dict(_present(metrics)),
            executed_at=datetime.fromtimestamp(executed_us / 1e6, UTC),
        ))  # fmt: skip
    return found


def _present(metrics: dict[str, Any]) -> dict[str, Any]:
    """The metrics a result has (the query names each: those it lacks come back null)."""
    return {name: value for name, value in metrics.items() if value is not None}


def with_history(scenario: api.EvalScenario, history: list[api.EvalResult]) -> api.EvalScenario:
    """``scenario`` with ``history`` for its own."""
    return dataclasses.replace(scenario, history=history)


def eval_evidence(
    scenarios: list[api.EvalScenario], pack: str, commit: str
) -> tuple[list[api.EvalMetric], dict[str, Any]]:
    """One ``pass_rate`` metric per scenario of ``pack`` and the telemetry they add (see the
    module docstring); FoundryError when the pack is unknown or a scenario has no results."""
    if not scenarios:
        raise FoundryError(f"--from-evals: no scenarios in pack {pack!r} (run foundry eval sync)")
    metrics, missing, runs = [], [], 0
    tokens = cost = 0.0
    for scenario in sorted(scenarios, key=lambda s: s.slug):
        recorded = results_at(scenario.history, commit)
        stats = stats_of(recorded)
        if stats is None:
            missing.append(scenario.slug)
            continue
        runs += stats.runs
        tokens += stats.tokens_mean
        cost += stats.cost_mean
        metrics.append(
            api.EvalMetric(
                name="pass_rate",
                slug=scenario.slug,
                score=stats.pass_rate,
                threshold=1.0,
                direction=api.MetricDirection.HIGHER_IS_BETTER,
                weight=1.0,
            )
        )
    if missing:
        raise FoundryError(
            f"--from-evals: no results recorded at commit {commit} for "
            f"{', '.join(missing)} in pack {pack} (run foundry eval run first)"
        )
    telemetry = {"eval_pack": pack, "eval_commit": commit, "eval_runs": runs,
                 "eval_cost": cost, "tokens": tokens}  # fmt: skip
    return metrics, telemetry


def merge_evidence(
    request: api.CheckChangeGateRequest,
    metrics: list[api.EvalMetric],
    telemetry: Mapping[str, Any],
    commit: str,
) -> None:
    """Add the eval metrics to the request's; metrics (by name and slug) and telemetry keys
    the file sets win."""
    given = {(metric.name, metric.slug) for metric in request.evals}
    request.evals = [*request.evals, *(m for m in metrics if (m.name, m.slug) not in given)]
    current = request.telemetry.to_dict() if request.telemetry is not None else {}
    added = dict(telemetry)
    if any(key in current for key in TOKEN_KEYS):
        added.pop("tokens", None)
    request.telemetry = Struct.from_dict({**added, **current})
    if not request.revision:
        request.revision = commit


# --- output -------------------------------------------------------------------------------------


def effect_name(effect: api.ChangeDecisionEffect) -> str:
    return {api.ChangeDecisionEffect.ALLOW: "ALLOW", api.ChangeDecisionEffect.DENY: "DENY",
            api.ChangeDecisionEffect.FOLLOW_UP: "FOLLOW_UP"}.get(effect, "UNSPECIFIED")  # fmt: skip


def _outcome_name(outcome: api.FollowupOutcome) -> str:
    names = {v: k for k, v in OUTCOMES.items()}
    return names.get(outcome, "unspecified")


def format_decision(d: api.ChangeGateDecision) -> list[str]:
    """A decision as text: the effect, the reasons, the follow-ups, the scorecard."""
    revision = f" @ {d.revision}" if d.revision else ""
    lines = [f"{effect_name(d.effect)}  change {d.change_id}{revision}  gate {d.gate_id}"]
    if d.reasons:
        lines.append("reasons:")
        lines.extend(f"  - {reason}" for reason in d.reasons)
    if d.followups:
        lines.append("follow-ups:")
        for f in d.followups:
            mark = "" if f.recommended else " (not required)"
            lines.append(f"  - {f.slug}: {f.description}{mark}")
    card = d.scorecard
    if card is not None:
        lines.append("scorecard:")
        if card.novelty is not None:
            n = card.novelty
            risky = f"  high risk: {', '.join(n.high_risk_paths)}" if n.high_risk_paths else ""
            lines.append(f"  novelty   max {n.max_novelty:.2f}  mean {n.avg_novelty:.2f}{risky}")
        if card.coverage is not None:
            c = card.coverage
            overall = "missing" if c.overall_ratio is None else f"{c.overall_ratio:.2f}"
            below = c.components_below_threshold
            lines.append(f"  coverage  overall {overall}"
                         + (f"  below threshold: {', '.join(below)}" if below else ""))  # fmt: skip
        if card.evals is not None:
            e = card.evals
            parts = [f"failing: {', '.join(e.failing_metrics) or 'none'}"]
            if e.attention_metrics:
                parts.append(f"attention: {', '.join(e.attention_metrics)}")
            if e.score_per_token is not None:
                parts.append(f"score/token {e.score_per_token:.6g}")
            lines.append("  evals     " + "  ".join(parts))
        if card.budgets is not None:
            b = card.budgets
            parts = [f"breaches: {', '.join(b.breaches) or 'none'}"]
            if b.near_limits:
                parts.append(f"near limit: {', '.join(b.near_limits)}")
            lines.append("  budgets   " + "  ".join(parts))
    for ack in d.acknowledgements:
        lines.append(_ack_line(ack))
    return lines


def _ack_line(ack: api.ChangeGateFollowup) -> str:
    when = stamp(ack.recorded_at)
    who = f" by {ack.actor}" if ack.actor else ""
    parts = [f"  ack {_outcome_name(ack.outcome)}{who}", when, ack.note or ""]
    return "  ".join(p for p in parts if p)


def _dump(message: betterproto2.Message) -> Any:
    return message_dict(message)  # 64-bit integers as JSON numbers


# --- commands -----------------------------------------------------------------------------------


def _prepare_check(args: argparse.Namespace) -> None:
    if bool(args.from_evals) != bool(args.commit):
        raise ConfigError("--from-evals and --commit go together")
    args.request = load_request(args.request_file)


async def cmd_check(args: argparse.Namespace, stubs: Any) -> int:
    _, runtime = stubs
    request: api.CheckChangeGateRequest = args.request
    if args.from_evals:
        scenarios = await list_scenarios(runtime, args.from_evals)
        recorded = await results_recorded_at(runtime.channel, args.from_evals, args.commit)
        scenarios = [with_history(s, recorded.get(s.scenario_id, [])) for s in scenarios]
        metrics, telemetry = eval_evidence(scenarios, args.from_evals, args.commit)
        merge_evidence(request, metrics, telemetry, args.commit)
    try:
        reply = await runtime.check_change_gate(request)
    except GRPCError as exc:
        if exc.status is not Status.INVALID_ARGUMENT:
            raise
        # what the daemon finds wrong in the request (an empty change_id) is a bad file: exit 2
        raise ConfigError(f"{args.request_file}: {exc.message}") from None
    decision = reply.decision
    if decision is None:
        raise FoundryError("the daemon answered without a decision")
    code = reported(EFFECT_EXIT.get(decision.effect, 1))
    if args.json:
        print(json.dumps(_dump(decision), indent=2))
    else:
        print("\n".join(format_decision(decision)))
    return code


def _prepare_followup(args: argparse.Namespace) -> None:
    args.details_value = None
    if args.details is not None:
        try:
            value = json.loads(args.details, object_pairs_hook=each_key_once)
        except ValueError as exc:
            raise ConfigError(f"--details: not valid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise ConfigError("--details: expected a JSON object")
        args.details_value = value


async def cmd_followup(args: argparse.Namespace, stubs: Any) -> int:
    _, runtime = stubs
    request = api.RecordGateFollowupRequest(
        gate_id=args.gate_id, actor=args.actor, outcome=OUTCOMES[args.outcome], note=args.note
    )
    if args.details_value is not None:
        request.details = Struct.from_dict(args.details_value)
    reply = await runtime.record_gate_followup(request)
    ack = reply.followup
    if ack is None:
        raise FoundryError("the daemon answered without the follow-up")
    if args.json:
        print(json.dumps(_dump(ack), indent=2))
    else:
        who = f" by {ack.actor}" if ack.actor else ""
        print(f"{ack.followup_id}  {_outcome_name(ack.outcome)}{who}  gate {ack.gate_id}")
    return 0


async def cmd_list(args: argparse.Namespace, stubs: Any) -> int:
    _, runtime = stubs
    reply = await runtime.list_change_gates(
        api.ListChangeGatesRequest(change_id=args.change_id, limit=args.limit)
    )
    if args.json:
        print(json.dumps([_dump(d) for d in reply.decisions], indent=2))
        return 0
    if not reply.decisions:
        print(f"no gate decisions for {args.change_id}" if args.change_id else "no gate decisions")
    for d in reply.decisions:
        print(list_line(d))
        for ack in d.acknowledgements:
            print(_ack_line(ack))
    return 0


def list_line(d: api.ChangeGateDecision) -> str:
    when = stamp(d.decided_at)
    revision = f" @ {d.revision}" if d.revision else ""
    counts = f"{len(d.reasons)} reasons, {len(d.followups)} follow-ups"
    return f"{d.gate_id}  {effect_name(d.effect):<9}  {d.change_id}{revision}  {when}  {counts}"
