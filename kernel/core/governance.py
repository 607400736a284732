"""Eval packs and change gates as recorded facts, and the pure checks and conversions around them.

The gate actor (``actors/gate``) validates an eval pack with :func:`parse_pack`, turns a finished
run into :class:`~foundry.kernel.core.evals.RunFacts` for ``judge``, and turns a gate
:class:`~foundry.kernel.core.gate_policy.Decision` into a :class:`GateDecisionRecord` with
:func:`decision_record`. The records are frozen and map one to one onto the tables
``eval_scenarios``, ``eval_results``, ``gate_decisions`` and ``gate_followups``
(``analytics/schema.py``). Standard library only.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any

from foundry.kernel.core.dag import (
    EnvAllowance,
    ModelRefusal,
    check_dag_env,
    check_dag_models,
    no_model_refusal,
    parse_dag,
)
from foundry.kernel.core.evals import AssertionType, Search, expected_problems
from foundry.kernel.core.failures import text_of
from foundry.kernel.core.gate_policy import (
    BudgetSummary,
    Coverage,
    CoverageSummary,
    Decision,
    Diffs,
    EvalSummary,
    GateRequest,
    Metric,
    NoveltySummary,
    Scorecard,
    distinct_tags,
    scores_given,
)
from foundry.kernel.core.ids import rfc3339
from foundry.kernel.core.json_input import STRUCT_DEPTH, check_json_value, quoted
from foundry.kernel.core.run_control import check_labels
from foundry.kernel.errors import InvalidArgument

MAX_SCENARIOS = 1_000  # per SyncEvalPack
MAX_NAME = 200  # pack, slug, change id, revision, actor, commit
MAX_TEXT = 10_000  # title, description, note
MAX_PATH = 4_096  # a changed file's path
DEFAULT_GATE_LIMIT = 50  # ListChangeGates with limit 0
MAX_GATE_LIMIT = 1_000
GATES_REPLY_BYTES = 4 * 1024 * 1024  # ListChangeGates' decisions, about (a gRPC client's default)
ACKNOWLEDGEMENT_BYTES = 1024 * 1024  # a decision's follow-ups, together (their texts, about)
HISTORY_LIMIT = 100  # results per scenario in ListEvalScenarios, newest first
FOLLOWUP_OUTCOMES = ("approved", "needs_changes", "deferred")
TERMINAL_RUN_STATUSES = frozenset({"SUCCEEDED", "FAILED", "CANCELED"})

_EMPTY: Mapping[str, Any] = MappingProxyType({})


_SCALARS = frozenset({str, int, float, bool, type(None)})


def _frozen(value: Any) -> Any:
    """A JSON value that cannot be changed in place (objects read-only, arrays tuples)."""
    # Scalars, most values, skip the abstract-class checks (as in ``thawed``): a gate
    # decision's scorecard and follow-ups hold a few hundred.
    if type(value) in _SCALARS:
        return value
    if isinstance(value, Mapping):
        return MappingProxyType(
            {k: v if type(v) in _SCALARS else _frozen(v) for k, v in value.items()}
        )
    if isinstance(value, list | tuple):
        return tuple([v if type(v) in _SCALARS else _frozen(v) for v in value])
    return value


def record_claims(record: Any) -> dict[str, Any]:
    """The claims of a governance record's attestation (a gate decision, an eval result): each
    field as JSON — times in RFC 3339, frozen values thawed. The gate actor attests a new
    record with them, and the attestor, at start, one a stopped daemon left unattested."""
    return {field.name: _claim(getattr(record, field.name)) for field in dataclasses.fields(record)}


def _claim(value: Any) -> Any:
    return rfc3339(value) if isinstance(value, datetime) else thawed(value)


def thawed(value: Any) -> Any:
    """The plain JSON form of a (frozen) JSON value: dicts and lists."""
    # Scalars, most values, skip the abstract-class checks: every attestation row and gate
    # decision the store writes passes through here.
    if type(value) in _SCALARS:
        return value
    if isinstance(value, Mapping):
        return {k: v if type(v) in _SCALARS else thawed(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [v if type(v) in _SCALARS else thawed(v) for v in value]
    return value


# --- records ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EvalScenarioRecord:
    """One scenario of a pack (``eval_scenarios``: one row per (pack, slug), replaced on sync)."""

    scenario_id: str
    pack: str
    slug: str
    title: str
    description: str
    run_spec: Mapping[str, Any]  # the RunSpec as JSON: dag_json, inputs, seed, labels, ...
    expected: Mapping[str, Any]
    created_at: datetime
    updated_at: datetime

    def __post_init__(self) -> None:
        object.__setattr__(self, "run_spec", _frozen(self.run_spec))
        object.__setattr__(self, "expected", _frozen(self.expected))

    def same_definition(self, other: EvalScenarioRecord) -> bool:
        return (self.title, self.description, thawed(self.run_spec), thawed(self.expected)) == (
            other.title, other.description, thawed(other.run_spec), thawed(other.expected),
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class EvalResultRecord:
    """A judged run of a scenario (``eval_results``, append-only)."""

    result_id: str
    scenario_id: str
    run_id: str
    commit: str
    outcome: str  # passed | failed | error
    metrics: Mapping[str, Any]
    executed_at: datetime

    def __post_init__(self) -> None:
        object.__setattr__(self, "metrics", _frozen(self.metrics))


@dataclass(frozen=True, slots=True)
class GateDecisionRecord:
    """A change-gate decision (``gate_decisions``, append-only). ``followups`` are
    ``{slug, description, recommended}``; ``scorecard`` is :func:`scorecard_json`."""

    gate_id: str
    change_id: str
    revision: str
    effect: str  # allow | follow_up | deny
    reasons: tuple[str, ...]
    followups: tuple[Mapping[str, Any], ...]
    scorecard: Mapping[str, Any]
    metadata: Mapping[str, Any]
    telemetry: Mapping[str, Any]
    actor: str
    decided_at: datetime

    def __post_init__(self) -> None:
        for name in ("followups", "scorecard", "metadata", "telemetry"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))
        object.__setattr__(self, "reasons", tuple(self.reasons))


@dataclass(frozen=True, slots=True)
class GateFollowupRecord:
    """An acknowledgement of a gate decision (``gate_followups``, append-only)."""

    followup_id: str
    gate_id: str
    actor: str
    outcome: str  # one of FOLLOWUP_OUTCOMES
    note: str | None
    details: Mapping[str, Any]
    recorded_at: datetime

    def __post_init__(self) -> None:
        object.__setattr__(self, "details", _frozen(self.details))


@dataclass(frozen=True, slots=True)
class StoredScenario:
    scenario: EvalScenarioRecord
    history: tuple[EvalResultRecord, ...] = ()  # newest first


@dataclass(frozen=True, slots=True)
class StoredGate:
    decision: GateDecisionRecord
    acknowledgements: tuple[GateFollowupRecord, ...] = ()  # oldest first


# --- eval packs ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScenarioInput:
    """One ``EvalScenarioDefinition`` as plain data (Structs as dicts)."""

    slug: str
    title: str = ""
    description: str = ""
    run_spec: Mapping[str, Any] | None = None
    expected: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ParsedRunSpec:
    dag_json: str
    inputs: Mapping[str, Any]
    seed: int
    labels: Mapping[str, str]
    breakpoints: tuple[str, ...]


_SPEC_KEYS = {
    "dag_json": "dag_json", "dagJson": "dag_json", "inputs": "inputs", "seed": "seed",
    "labels": "labels", "breakpoints": "breakpoints",
}  # fmt: skip


def check_name(value: str, field: str, *, required: bool = True, limit: int = MAX_NAME) -> None:
    """A client-given name: a string, non-empty when ``required``, at most ``limit`` characters."""
    if not isinstance(value, str):
        raise InvalidArgument(f"{field}: expected a string")
    if required and not value.strip():
        raise InvalidArgument(f"{field}: must not be empty")
    if len(value) > limit:
        raise InvalidArgument(f"{field}: longer than {limit} characters ({quoted(value)})")


def parse_run_spec(
    spec: Mapping[str, Any] | None,
    known_types: Collection[str],
    env_allowance: EnvAllowance,
    where: str = "run_spec",
    model_refusal: ModelRefusal = no_model_refusal,
) -> ParsedRunSpec:
    """A RunSpec in its proto3 JSON form (``dag_json`` or ``dagJson``, ``inputs``, ``seed``,
    ``labels``, ``breakpoints``), validated as SubmitRun validates it: the DAG parses with the
    daemon's step types, each step's env and model are allowed, breakpoints name steps. Errors name
    ``where`` and the field."""
    if not isinstance(spec, Mapping) or not spec:
        raise InvalidArgument(f"{where}: a RunSpec object with dag_json is required")
    fields: dict[str, Any] = {}
    for key, value in spec.items():
        name = _SPEC_KEYS.get(key)
        if name is None:
            raise InvalidArgument(f"{where}.{str(key)[:100]}: unknown field")
        if name in fields:  # under both its JSON names: what is checked must be what is stored
            raise InvalidArgument(f"{where}.{name}: given twice (as dag_json and dagJson)")
        fields[name] = value
    dag_json = fields.get("dag_json")
    if not isinstance(dag_json, str) or not dag_json:
        raise InvalidArgument(f"{where}.dag_json: a DAG (a JSON string) is required")
    try:
        dag = parse_dag(dag_json, known_types)
        check_dag_env(dag, env_allowance)
        check_dag_models(dag, model_refusal)
    except InvalidArgument as exc:
        raise InvalidArgument(
            f"{where}.dag_json: {str(exc).removeprefix('spec.dag_json: ')}"
        ) from None
    inputs = fields.get("inputs", {})
    if not isinstance(inputs, Mapping):
        raise InvalidArgument(f"{where}.inputs: expected an object")
    seed = _seed(fields.get("seed", 0), f"{where}.seed")
    labels = fields.get("labels", {})
    if not isinstance(labels, Mapping):
        raise InvalidArgument(f"{where}.labels: expected an object of strings")
    check_labels(labels, f"{where}.labels")
    breakpoints = fields.get("breakpoints", [])
    if not isinstance(breakpoints, list | tuple) or not all(
        isinstance(b, str) for b in breakpoints
    ):
        raise InvalidArgument(f"{where}.breakpoints: expected a list of step ids")
    step_ids = {step.id for step in dag.steps}
    for step_id in breakpoints:
        if step_id not in step_ids:
            raise InvalidArgument(f"{where}.breakpoints: unknown step {quoted(step_id)}")
    return ParsedRunSpec(dag_json, dict(inputs), seed, dict(labels), tuple(breakpoints))


_WHOLE = re.compile(r"-?[0-9]{1,20}")  # ASCII digits: isdigit() takes "²", which int() refuses


def _seed(value: Any, field: str) -> int:
    """proto3 JSON int64: a whole number, or a string of one (a Struct carries floats)."""
    if isinstance(value, str) and _WHOLE.fullmatch(value.strip()):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(f"{field}: expected a whole number, got {quoted(value)}")
    if isinstance(value, float) and (not math.isfinite(value) or not value.is_integer()):
        raise InvalidArgument(f"{field}: expected a whole number, got {quoted(value)}")
    number = int(value)
    if not -(2**63) <= number < 2**63:
        raise InvalidArgument(f"{field}: out of the int64 range")
    return number


def parse_pack(
    pack: str,
    scenarios: Sequence[ScenarioInput],
    known_types: Collection[str],
    env_allowance: EnvAllowance,
    assertion_types: Mapping[str, AssertionType] | None = None,
    search: Search | None = None,
    model_refusal: ModelRefusal = no_model_refusal,
) -> None:
    """Validate a whole pack before anything is stored: the pack name, each slug (non-empty,
    unique), title and description lengths, each run_spec (:func:`parse_run_spec`) and each
    ``expected`` (an object of assertions judging can use: :func:`evals.expected_problems`,
    with the plugins' ``assertion_types``). Errors name the scenario and the field."""
    check_name(pack, "pack")
    if not scenarios:
        raise InvalidArgument("scenarios: a pack needs at least one scenario")
    if len(scenarios) > MAX_SCENARIOS:
        raise InvalidArgument(
            f"scenarios: more than {MAX_SCENARIOS} in one request (sync a larger pack in parts)"
        )
    seen: set[str] = set()
    for index, scenario in enumerate(scenarios):
        check_name(scenario.slug, f"scenarios[{index}].slug")
        where = f"scenario {quoted(scenario.slug)}"
        if scenario.slug in seen:
            raise InvalidArgument(f"{where}: slug: duplicate slug in the pack")
        seen.add(scenario.slug)
        check_name(scenario.title, f"{where}: title", required=False, limit=MAX_TEXT)
        check_name(scenario.description, f"{where}: description", required=False, limit=MAX_TEXT)
        parse_run_spec(scenario.run_spec, known_types, env_allowance, f"{where}: run_spec",
                       model_refusal)  # fmt: skip
        expected = scenario.expected
        if not isinstance(expected, Mapping) or not expected:
            raise InvalidArgument(f"{where}: expected: an object with at least one assertion")
        check_json_value(dict(expected), f"{where}: expected", depth=STRUCT_DEPTH)
        if problems := expected_problems(expected, assertion_types or {}, search):
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise InvalidArgument(f"{where}: expected: {problems[0]}{more}")
        check_json_value(  # its inputs one level down: as deep as SubmitRun takes them
            dict(scenario.run_spec or {}), f"{where}: run_spec", depth=STRUCT_DEPTH + 1
        )


def synced_records(
    pack: str,
    scenarios: Sequence[ScenarioInput],
    existing: Mapping[str, EvalScenarioRecord],
    now: datetime,
    new_id: Callable[[], str],
) -> tuple[list[str], list[EvalScenarioRecord]]:
    """The scenario ids in request order, and the rows to write: a new scenario gets a new id;
    an existing slug keeps its id and ``created_at`` and is rewritten only when its definition
    changed (so syncing the same pack twice writes nothing)."""
    ids: list[str] = []
    rows: list[EvalScenarioRecord] = []
    for scenario in scenarios:
        old = existing.get(scenario.slug)
        record = EvalScenarioRecord(
            scenario_id=old.scenario_id if old else new_id(),
            pack=pack,
            slug=scenario.slug,
            title=scenario.title,
            description=scenario.description,
            run_spec=dict(scenario.run_spec or {}),
            expected=dict(scenario.expected or {}),
            created_at=old.created_at if old else now,
            updated_at=now,
        )
        ids.append(record.scenario_id)
        if old is None or not old.same_definition(record):
            rows.append(record)
    return ids, rows


# --- run facts ----------------------------------------------------------------------------------


def fitting(sizes: Sequence[int], budget: int) -> int:
    """How many of ``sizes``, from the first, fit in ``budget`` together (one at least, when
    there is one: a reply always holds the newest)."""
    total = 0
    for count, size in enumerate(sizes):
        total += size
        if total > budget:
            return max(count, 1)
    return len(sizes)


def acknowledgement_size(note: str | None, details: Mapping[str, Any]) -> int:
    """A follow-up's size as :data:`ACKNOWLEDGEMENT_BYTES` counts it (and the store's reply
    budget: 100 for its ids, actor, outcome and time, then its note and its details' JSON; a
    stored one's details are frozen, and measured as the same JSON)."""
    text = json.dumps(thawed(details), separators=(",", ":"), ensure_ascii=False)
    return 100 + len((note or "").encode()) + len(text.encode())  # UTF-8 bytes, as stored


def gate_limit(limit: int) -> int:
    """ListChangeGates' limit: 0 means :data:`DEFAULT_GATE_LIMIT`; at most
    :data:`MAX_GATE_LIMIT` (more is refused, as Status's limit and ListRuns' page size are: a
    client asking for 5,000 was answered 1,000 and could not tell)."""
    if not 0 <= limit <= MAX_GATE_LIMIT:
        raise InvalidArgument(
            f"limit: must be from 0 (the default, {DEFAULT_GATE_LIMIT}) to {MAX_GATE_LIMIT}, "
            f"got {limit}"
        )
    return limit or DEFAULT_GATE_LIMIT


# --- change gates -------------------------------------------------------------------------------


def checked_request(request: GateRequest) -> GateRequest:
    """``request`` checked (:func:`check_gate_request`), its telemetry and metadata read-only:
    the rules it is handed to are plugins' (one changed what the decision recorded as sent)."""
    check_gate_request(request)
    return dataclasses.replace(
        request, telemetry=_frozen(request.telemetry), metadata=_frozen(request.metadata)
    )


def check_gate_request(request: GateRequest) -> None:
    """The request's names and JSON under the daemon's limits."""
    check_name(request.change_id, "change_id")
    check_name(request.revision, "revision", required=False)
    check_name(request.actor, "actor", required=False)
    _check_names(request.diffs.paths, "diffs[{}].path", MAX_PATH)
    _check_names([m.name for m in request.evals], "evals[{}].name", MAX_NAME)
    _check_names([b.name for b in request.budgets], "budgets[{}].name", MAX_NAME)
    _check_metrics(request.evals)
    _check_lengths(request.diffs.components, "diffs[{}].component")
    _check_tags(request.diffs)
    check_json_value(thawed(request.telemetry), "telemetry", depth=STRUCT_DEPTH)
    check_json_value(thawed(request.metadata), "metadata", depth=STRUCT_DEPTH)
    _check_novelty(request.diffs)
    if request.coverage is not None:
        _check_coverage(request.coverage)


def _check_metrics(metrics: Sequence[Metric]) -> None:
    """Each metric once (by name and slug: two of them were both failing and passing in one
    decision), and its weight finite: a weight multiplies its score in score_per_token, and a
    NaN or infinite one was left out of the sum without a word."""
    first: dict[tuple[str, str], int] = {}
    for index, metric in enumerate(metrics):
        if metric.weight is not None and not math.isfinite(metric.weight):
            raise InvalidArgument(f"evals[{index}].weight: {metric.weight!r} is not a finite "
                                  "number")  # fmt: skip
        earlier = first.setdefault((metric.name, metric.slug), index)
        if earlier != index:
            raise InvalidArgument(f"evals[{index}]: metric {quoted(metric.label)} is given "
                                  f"twice (also evals[{earlier}])")  # fmt: skip


def _check_novelty(diffs: Diffs) -> None:
    """Novelty scores are fractions, as ``[gate] max_novelty`` is: a score given on another
    scale (a percentage) would be compared with the policy's fractions and decide wrongly."""
    scores = scores_given(diffs)
    in_range = not scores or (min(scores) >= 0.0 and max(scores) <= 1.0)
    if in_range and not any(map(math.isnan, scores)):  # min and max skip some NaNs
        return
    for index, diff in enumerate(diffs):
        _check_fraction(diff.novelty_score, f"diffs[{index}].novelty_score")


def _check_coverage(coverage: Coverage) -> None:
    """Coverage ratios are fractions: a percentage (85 for 85%) would pass any required ratio."""
    _check_fraction(coverage.overall_ratio, "coverage.overall_ratio")
    _check_fraction(coverage.minimum_ratio, "coverage.minimum_ratio")
    _check_lengths([c.name for c in coverage.components], "coverage.components[{}].name")
    for index, component in enumerate(coverage.components):
        where = f"coverage.components[{index}]"
        _check_fraction(component.coverage_ratio, f"{where}.coverage_ratio")
        _check_fraction(component.required_ratio, f"{where}.required_ratio")


def _check_fraction(value: float | None, field: str) -> None:
    if value is not None and not 0.0 <= value <= 1.0:  # NaN fails too
        raise InvalidArgument(f"{field}: {value!r} is not a fraction between 0 and 1")


def _check_names(names: Sequence[Any], field: str, limit: int) -> None:
    """:func:`check_name` of each name (``field`` formatted with its index), with the common
    case — every name a non-blank string within ``limit`` — checked by builtins at C speed:
    a request carries a thousand paths."""
    try:
        fine = max(map(len, names), default=0) <= limit and all(map(str.strip, names))
    except TypeError:  # not a string: the loop below names it
        fine = False
    if not fine:
        for index, name in enumerate(names):
            check_name(name, field.format(index), limit=limit)


def _check_lengths(names: Sequence[str], field: str, limit: int = MAX_NAME) -> None:
    """Each of ``names`` (which may be empty) is at most ``limit`` characters: they are echoed
    in a decision's reasons, follow-ups and scorecard (a 3.5 MB component name made a 10.5 MB
    decision)."""
    if max(map(len, names), default=0) > limit:
        index = next(i for i, name in enumerate(names) if len(name) > limit)
        raise InvalidArgument(f"{field.format(index)}: longer than {limit} characters")


def _check_tags(diffs: Diffs) -> None:
    """Risk tags: at most ``MAX_NAME`` characters each (looked at once per distinct tag)."""
    if max(map(len, distinct_tags(diffs)), default=0) > MAX_NAME:
        for index, tags in enumerate(diffs.risk_tags):
            _check_lengths(tags, f"diffs[{index}].risk_tags[{{}}]")


def _json_ready(value: Any) -> Any:
    """A JSON-safe copy (NaN and infinities as None; anything else not JSON as its repr, and
    text UTF-8 cannot hold escaped): a plugin rule's scorecard part is the plugin's, and one
    whose repr raised answered CheckChangeGate INTERNAL."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return _utf8_text(value)
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, Mapping):
        return {_utf8_text(text_of(k, str)): _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple | frozenset | set):
        return [_json_ready(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return {name: _json_ready(getattr(value, name)) for name in value.__dataclass_fields__}
    return _utf8_text(text_of(value))


def _utf8_text(text: str) -> str:
    """``text``, a lone surrogate in it escaped (``\\udcff``): UTF-8 cannot hold one."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()
    return text


def scorecard_json(scorecard: Scorecard) -> dict[str, Any]:
    """``{novelty, coverage, evals, budgets, telemetry, extra}``: each summary's fields (None for
    a part no rule produced); ``extra`` holds plugin rules' parts by rule name."""
    parts: dict[str, Any] = {}
    for name in ("novelty", "coverage", "evals", "budgets"):
        parts[name] = _json_ready(getattr(scorecard, name))
    parts["telemetry"] = _json_ready(scorecard.telemetry)
    parts["extra"] = _json_ready(scorecard.extra)
    return parts


SUMMARIES: Mapping[str, type] = MappingProxyType(
    {
        "novelty": NoveltySummary,
        "coverage": CoverageSummary,
        "evals": EvalSummary,
        "budgets": BudgetSummary,
    }
)


def decision_record(
    gate_id: str, request: GateRequest, decision: Decision, decided_at: datetime
) -> GateDecisionRecord:
    return GateDecisionRecord(
        gate_id=gate_id,
        change_id=request.change_id,
        revision=request.revision,
        effect=decision.effect.value,
        reasons=decision.reasons,
        followups=tuple(
            {"slug": f.slug, "description": f.description, "recommended": f.recommended}
            for f in decision.followups
        ),
        scorecard=scorecard_json(decision.scorecard),
        metadata=_json_ready(request.metadata),
        telemetry=_json_ready(request.telemetry),
        actor=request.actor,
        decided_at=decided_at,
    )


def json_text(value: Any) -> str:
    """Compact JSON of a (frozen) JSON value, for a JSON column."""
    return json.dumps(thawed(value), separators=(",", ":"), ensure_ascii=False, allow_nan=False)
