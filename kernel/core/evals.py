"""Eval judging: a finished run's recorded facts against a scenario's ``expected``. Pure.

:func:`judge` checks a :class:`RunFacts` against the ``expected`` JSON object of an
``EvalScenarioDefinition`` and returns a :class:`Judgement` (outcome, score, every assertion, and
JSON-ready metrics for ``EvalResult.metrics``). :func:`summarize` folds repeated judgements of one
scenario into :class:`ScenarioStats`; :func:`regression` compares two of those. The vocabulary,
the outcome rules and the regression rule are documented in README.md, "Eval packs".
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from functools import cached_property
from types import MappingProxyType
from typing import Any, Protocol

from foundry.kernel.core.failures import described, text_of
from foundry.kernel.errors import InvalidArgument

MAX_PATTERN_LENGTH = 1000
CLIP = 500  # recorded texts longer than this are clipped in the record
RECORDED_ASSERTIONS = 50  # assertion records a result's metrics keep (the rest are counted)
RECORDED_ERRORS = 20  # error messages a result's metrics keep (the rest are counted)
NOT_RUN = frozenset({"pending", "skipped"})  # step statuses that do not count as steps taken
RUN, STEP = "run", "step"
BOTH = frozenset({RUN, STEP})


# --- facts in, results out ----------------------------------------------------------------------


@dataclass(frozen=True)
class StepFacts:
    step_id: str
    status: str  # succeeded | failed | reused | skipped | pending | ...
    output: Any = None  # a JSON value; None when the step recorded none
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0
    started_at: datetime | None = None  # the (last) lease
    completed_at: datetime | None = None


@dataclass(frozen=True)
class RunFacts:
    run_id: str
    status: str  # SUCCEEDED | FAILED | CANCELED | ...
    steps: tuple[StepFacts, ...] = ()
    created_at: datetime | None = None
    finished_at: datetime | None = None

    def step(self, step_id: str) -> StepFacts | None:
        return self._by_id.get(step_id)

    @cached_property
    def _by_id(self) -> Mapping[str, StepFacts]:
        """The steps by id, made once: a scan per step asked made judging a 12,000-step run
        take 3 s (quadratic), on the loop every client shares."""
        return MappingProxyType({s.step_id: s for s in reversed(self.steps)})  # the first wins


@dataclass(frozen=True)
class AssertionResult:
    name: str
    passed: bool
    recorded: Any
    expected: Any
    step_id: str | None = None
    message: str = ""
    error: bool = False  # could not be evaluated (bad argument, missing step, unknown key)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "step_id": self.step_id,
            "passed": self.passed,
            "error": self.error,
            "recorded": _json_ready(self.recorded),
            "expected": _json_ready(self.expected),
            "message": _clip(self.message),
        }


@dataclass(frozen=True)
class Judgement:
    outcome: str  # passed | failed | error
    score: float  # passed assertions / all assertions; 0.0 when there are none
    assertions: tuple[AssertionResult, ...]
    metrics: dict[str, Any] = field(default_factory=dict)
    errors: tuple[str, ...] = ()  # why the outcome is "error"


class AssertionType(Protocol):
    """An assertion an extension contributes (``register_eval_assertions``).

    ``check`` gets the value written under the type's key in ``expected``, the run's facts, and the
    step id (``None`` at the run level). At the step level the step is known to exist. Return
    ``error=True`` when the expected value is unusable. An optional ``scopes`` attribute
    (a subset of ``{"run", "step"}``) restricts where the key may appear; the default is both.
    """

    name: str

    def check(
        self, expected: Any, facts: RunFacts, step_id: str | None
    ) -> AssertionResult: ...  # pragma: no cover


# --- judging ------------------------------------------------------------------------------------


Search = Callable[[str, str], "str | None"]
"""``search(pattern, text)``: the text of the pattern's first match in ``text``, or None;
ValueError (its reason) for a pattern it cannot take. The ``regex`` assertion's engine, given by
the caller: one whose time is linear in the text (RE2), as a pattern is the caller's input."""


def judge(
    run: RunFacts,
    expected: Any,
    extra_types: Mapping[str, AssertionType] | None = None,
    *,
    search: Search,
) -> Judgement:
    """Check every assertion in ``expected`` against ``run``; see README.md for the vocabulary."""
    extras = dict(extra_types or {})
    builtins = {**_BUILTINS, "regex": (frozenset({STEP}), _regex_with(search))}
    errors = [f"assertion type {k!r} clashes with a built-in" for k in extras if k in _RESERVED]
    results: list[AssertionResult] = []
    if not isinstance(expected, Mapping):
        errors.append(f"expected must be a JSON object, got {_kind(expected)}")
    else:
        for key in sorted(k for k in expected if k != "steps"):  # run keys, then steps by id
            results.append(_check(key, expected[key], run, None, extras, builtins))
        if "steps" in expected:
            results.extend(_judge_steps(run, expected["steps"], extras, builtins))
        if not results:
            errors.append("expected has no assertions")
    errors.extend(r.message for r in results if r.error)
    passed = sum(r.passed and not r.error for r in results)
    score = passed / len(results) if results else 0.0
    if errors:
        outcome = "error"
    elif passed < len(results):
        outcome = "failed"
    else:
        outcome = "passed"
    return Judgement(
        outcome,
        score,
        tuple(results),
        _metrics(run, outcome, score, results, errors),
        tuple(errors),
    )


def unfinished(run: RunFacts, reason: str) -> Judgement:
    """The judgement of a run whose assertions did not all answer (one hung): an error, saying
    ``reason``."""
    return Judgement("error", 0.0, (), _metrics(run, "error", 0.0, [], [reason]), (reason,))


def names_any(expected: Any, keys: Collection[str]) -> bool:
    """Whether ``expected`` uses one of ``keys`` (plugin assertion types), at the run level or
    a step's."""
    if not keys or not isinstance(expected, Mapping):
        return False
    steps = expected.get("steps")
    step_checks = steps.values() if isinstance(steps, Mapping) else ()
    return any(
        isinstance(checks, Mapping) and any(key in checks for key in keys)
        for checks in (expected, *step_checks)
    )


def _judge_steps(
    run: RunFacts,
    steps: Any,
    extras: Mapping[str, AssertionType],
    builtins: Mapping[str, tuple[frozenset[str], Check]],
) -> list[AssertionResult]:
    if not isinstance(steps, Mapping):
        return [_error("steps", steps, None, f"steps must be an object, got {_kind(steps)}")]
    results = []
    for step_id in sorted(steps):
        checks = steps[step_id]
        if not isinstance(checks, Mapping):
            msg = f"steps.{step_id} must be an object, got {_kind(checks)}"
            results.append(_error("steps", checks, step_id, msg))
        elif run.step(step_id) is None:
            msg = f"steps.{step_id}: the run has no step {step_id!r}"
            results.extend(_error(key, checks[key], step_id, msg) for key in sorted(checks))
        else:
            results.extend(
                _check(k, checks[k], run, step_id, extras, builtins) for k in sorted(checks)
            )
    return results


def _check(
    key: str,
    value: Any,
    run: RunFacts,
    step_id: str | None,
    extras: Mapping[str, AssertionType],
    builtins: Mapping[str, tuple[frozenset[str], Check]],
) -> AssertionResult:
    where = "" if step_id is None else f"steps.{step_id}."
    problem = _placement_problem(key, value, step_id, extras)
    if problem:
        shown = _clip(value) if key == "regex" and isinstance(value, str) else value
        return _error(key, shown, step_id, problem)
    builtin = builtins.get(key)
    if builtin is not None:
        return builtin[1](value, run, step_id)
    extra = extras[key]
    try:
        result = extra.check(value, run, step_id)
    except BaseException as exc:  # noqa: BLE001 - an extension's bug (a BaseException of its
        # own too: it took the daemon down) makes this assertion an error, not the daemon's
        return _error(key, value, step_id, f"{where}{key}: {_clip(described(exc))}")
    if not isinstance(result, AssertionResult):
        return _error(key, value, step_id, f"{where}{key}: check returned {_kind(result)}")
    problem = _malformed(result)
    if problem:
        return _error(key, value, step_id, f"{where}{key}: check returned {problem}")
    return result


def expected_problems(
    expected: Any, extras: Mapping[str, AssertionType], search: Search | None = None
) -> list[str]:
    """What is wrong with ``expected`` whatever run it judges, as :func:`judge` says it: an
    unknown assertion type, one at the wrong level, a built-in's value of the wrong shape, a
    ``steps`` (or a step) with no assertion, and (given ``search``, the engine judging will use)
    a pattern it refuses. (Checked when a pack is synced: a typo was found only after a whole
    run.) Step ids are not checked: the run judged need not come from the scenario's run_spec."""
    if not isinstance(expected, Mapping):
        return [f"expected must be a JSON object, got {_kind(expected)}"]
    problems = [
        _placement_problem(key, expected[key], None, extras)
        for key in sorted(k for k in expected if k != "steps")
    ]
    steps = expected.get("steps", {})
    if not isinstance(steps, Mapping):
        problems.append(f"steps must be an object, got {_kind(steps)}")
        steps = {}
    elif "steps" in expected and not steps:
        problems.append("steps: an object with at least one step's assertions, got {}")
    for step_id in sorted(steps):
        checks = steps[step_id]
        if not isinstance(checks, Mapping):
            problems.append(f"steps.{step_id} must be an object, got {_kind(checks)}")
            continue
        if not checks:
            problems.append(f"steps.{step_id}: an object with at least one assertion, got {{}}")
            continue
        problems.extend(_placement_problem(k, checks[k], step_id, extras) for k in sorted(checks))
        if search is not None and isinstance(checks.get("regex"), str):
            problems.append(_pattern_problem(checks["regex"], step_id, search))
    return [problem for problem in problems if problem]


def _pattern_problem(pattern: str, step_id: str, search: Search) -> str:
    if len(pattern) > MAX_PATTERN_LENGTH:
        return ""  # (said by its placement)
    try:
        search(pattern, "")
    except ValueError as exc:
        return f"steps.{step_id}.regex: {exc}"
    return ""


def _placement_problem(
    key: str, value: Any, step_id: str | None, extras: Mapping[str, AssertionType]
) -> str:
    """Why ``key: value`` cannot be judged at its level ("" when it can)."""
    scope = RUN if step_id is None else STEP
    where = "" if step_id is None else f"steps.{step_id}."
    shape = _SHAPES.get(key)
    if shape is not None:
        if scope not in _BUILTINS[key][0]:
            return f"{where}{key}: not a {scope}-level assertion"
        wanted, fits = shape
        if not fits(value):
            return _bad(key, step_id, wanted, value)
        if key == "regex" and len(value) > MAX_PATTERN_LENGTH:
            return f"steps.{step_id}.regex: pattern longer than {MAX_PATTERN_LENGTH} characters"
        return ""
    extra = extras.get(key)
    if extra is None or key in _RESERVED:
        return f"{where}{key}: unknown assertion type {key!r}"
    if scope not in getattr(extra, "scopes", BOTH):
        return f"{where}{key}: not a {scope}-level assertion"
    return ""


def _malformed(result: AssertionResult) -> str:
    """What is wrong with an extension's answer ("" for nothing): ``passed="no"`` counted as a
    pass; an int message, NaN recorded, failed the whole RecordEvalResult."""
    if type(result.passed) is not bool or type(result.error) is not bool:
        return "an AssertionResult whose passed and error are not true or false"
    if type(result.message) is not str or type(result.name) is not str:
        return "an AssertionResult whose name and message are not text"
    return ""


def merge_assertion_types(
    contributions: Iterable[Mapping[str, AssertionType] | None],
) -> dict[str, AssertionType]:
    """Merge ``register_eval_assertions`` hook results; a key given twice or clashing with a
    built-in raises :class:`InvalidArgument` naming it."""
    merged: dict[str, AssertionType] = {}
    for contribution in contributions:
        if contribution is not None and not isinstance(contribution, Mapping):
            # (its .items() failed: "a plugin's hook failed: AttributeError", naming neither)
            raise InvalidArgument("register_eval_assertions: a plugin answered "
                                  f"{type(contribution).__name__}, not a dict")  # fmt: skip
        for key, kind in (contribution or {}).items():
            # (a key that is no string, or a type without check(), failed only when a pack
            # used it)
            if not isinstance(key, str) or not key:
                raise InvalidArgument(f"an eval assertion type's key must be a non-empty "
                                      f"string, not {key!r:.100}")  # fmt: skip
            if key in _RESERVED or key in merged:
                raise InvalidArgument(f"eval assertion type {key!r} is already defined")
            if not callable(getattr(kind, "check", None)):
                raise InvalidArgument(f"eval assertion type {key!r} has no check() method")
            merged[key] = kind
    return merged


# --- the built-in assertions --------------------------------------------------------------------

Check = Callable[[Any, RunFacts, str | None], AssertionResult]


def _status(value: Any, run: RunFacts, step_id: str | None) -> AssertionResult:
    recorded = run.status if step_id is None else _step(run, step_id).status
    ok = _norm_status(recorded) == _norm_status(value)
    return _result("status", ok, recorded, value, step_id, f"status is {recorded!r}")


def _equals(value: Any, run: RunFacts, step_id: str | None) -> AssertionResult:
    output = _step(run, step_id).output
    diff = _json_diff(value, output, "$", subset=False)
    return _result("equals", diff is None, output, value, step_id, diff or "output equals")


def _subset(value: Any, run: RunFacts, step_id: str | None) -> AssertionResult:
    output = _step(run, step_id).output
    diff = _json_diff(value, output, "$", subset=True)
    return _result("subset", diff is None, output, value, step_id, diff or "output contains it")


def _contains(value: Any, run: RunFacts, step_id: str | None) -> AssertionResult:
    text = output_text(_step(run, step_id).output)
    found = value in text
    msg = "text contains it" if found else f"text does not contain {value!r}"
    return _result("contains", found, _clip(text), value, step_id, msg)


def _no_search(pattern: str, text: str) -> str | None:
    raise ValueError("no pattern engine was given")


def _regex_with(search: Search) -> Check:
    def regex(value: Any, run: RunFacts, step_id: str | None) -> AssertionResult:
        text = output_text(_step(run, step_id).output)
        try:
            match = search(value, text)
        except ValueError as exc:
            msg = f"steps.{step_id}.regex: invalid {value!r}: {exc}"
            return _error("regex", value, step_id, msg)
        msg = f"matched {_clip(match)!r}" if match is not None else f"no match for {value!r}"
        return _result("regex", match is not None, _clip(text), value, step_id, msg)

    return regex


def _is_json(value: Any, run: RunFacts, step_id: str | None) -> AssertionResult:
    text = output_text(_step(run, step_id).output)
    try:
        json.loads(text, parse_constant=_refuse_constant)
        parses, why = True, "text is JSON"
    except ValueError as exc:
        parses, why = False, f"text is not JSON: {exc}"
    return _result("is_json", parses == value, _clip(text), value, step_id, why)


def _bound(
    name: str, measure: Callable[[RunFacts, str | None], float | None], *, rounding: bool = False
) -> Check:
    """``name``: what ``measure`` records ≤ the limit; ``rounding``: up to float rounding (a
    cost is a sum of floats, a latency milliseconds of a float: 100.094 ms is
    100.09400000000001), else exactly (7 tokens passed a limit of 6.9999999999)."""

    def check(value: Any, run: RunFacts, step_id: str | None) -> AssertionResult:
        recorded = measure(run, step_id)
        if recorded is None:
            where = "the run" if step_id is None else f"step {step_id!r}"
            msg = f"{name}: {where} has no timestamps to measure latency from"
            return _error(name, value, step_id, msg)
        ok = recorded <= value + (1e-9 * max(1.0, abs(value)) if rounding else 0)
        return _result(name, ok, recorded, value, step_id, f"recorded {recorded} (limit {value})")

    return check


def _count(name: str, holds: Callable[[int, int], bool], relation: str) -> Check:
    def check(value: Any, run: RunFacts, step_id: str | None) -> AssertionResult:
        recorded = steps_taken(run)
        ok = holds(recorded, int(value))
        return _result(name, ok, recorded, value, None, f"{recorded} steps ({relation} {value})")

    return check


def _tokens(run: RunFacts, step_id: str | None) -> float:
    steps = run.steps if step_id is None else (_step(run, step_id),)
    return sum(s.tokens_in + s.tokens_out for s in steps)


def _cost(run: RunFacts, step_id: str | None) -> float:
    steps = run.steps if step_id is None else (_step(run, step_id),)
    return math.fsum(s.cost for s in steps)


def _latency(run: RunFacts, step_id: str | None) -> float | None:
    if step_id is None:
        return run_latency_ms(run)
    step = _step(run, step_id)
    return _ms(step.started_at, step.completed_at)


_BUILTINS: dict[str, tuple[frozenset[str], Check]] = {
    "status": (BOTH, _status),
    "equals": (frozenset({STEP}), _equals),
    "subset": (frozenset({STEP}), _subset),
    "contains": (frozenset({STEP}), _contains),
    "regex": (frozenset({STEP}), _regex_with(_no_search)),  # judge() gives its caller's engine
    "is_json": (frozenset({STEP}), _is_json),
    "max_tokens": (BOTH, _bound("max_tokens", _tokens)),
    "max_cost": (BOTH, _bound("max_cost", _cost, rounding=True)),
    "max_latency_ms": (BOTH, _bound("max_latency_ms", _latency, rounding=True)),
    "steps_count": (frozenset({RUN}), _count("steps_count", lambda r, n: r == n, "expected")),
    "min_steps": (frozenset({RUN}), _count("min_steps", lambda r, n: r >= n, "at least")),
    "max_steps": (frozenset({RUN}), _count("max_steps", lambda r, n: r <= n, "at most")),
}
_RESERVED = frozenset({*_BUILTINS, "steps"})


def _string(value: Any) -> bool:
    return isinstance(value, str)


def _at_least_0(value: Any) -> bool:
    return _is_number(value) and value >= 0


def _whole_at_least_0(value: Any) -> bool:
    return _at_least_0(value) and float(value).is_integer()


# What each built-in's value must be, checked before it judges (and when a pack is synced).
_SHAPES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "status": ("a string", _string),
    "equals": ("any JSON value", lambda _: True),
    "subset": ("an object", lambda value: isinstance(value, Mapping)),
    "contains": ("a string", _string),
    "regex": ("a string", _string),
    "is_json": ("true or false", lambda value: isinstance(value, bool)),
    "max_tokens": ("a number >= 0", _at_least_0),
    "max_cost": ("a number >= 0", _at_least_0),
    "max_latency_ms": ("a number >= 0", _at_least_0),
    "steps_count": ("a whole number >= 0", _whole_at_least_0),
    "min_steps": ("a whole number >= 0", _whole_at_least_0),
    "max_steps": ("a whole number >= 0", _whole_at_least_0),
}
BUILTIN_ASSERTIONS = frozenset(_BUILTINS)


# --- measuring ----------------------------------------------------------------------------------


def output_text(output: Any) -> str:
    """The text ``contains``/``regex``/``is_json`` look at: a string output itself, the ``text``
    string of an object output, else the output's compact JSON (sorted keys); ``""`` for none."""
    if output is None:
        return ""
    if isinstance(output, str):
        return output
    if isinstance(output, Mapping) and isinstance(output.get("text"), str):
        return str(output["text"])
    return _text_json(output)


def run_latency_ms(run: RunFacts) -> float | None:
    """First lease to last completion, else ``created_at`` → ``finished_at``, else ``None``."""
    leased = [s.started_at for s in run.steps if s.started_at is not None]
    completed = [s.completed_at for s in run.steps if s.completed_at is not None]
    if leased and completed:
        return _ms(min(leased), max(completed))
    return _ms(run.created_at, run.finished_at)


def steps_taken(run: RunFacts) -> int:
    """Steps that ran or were reused: every step whose status is not pending or skipped."""
    return sum(s.status.lower() not in NOT_RUN for s in run.steps)


def _metrics(
    run: RunFacts, outcome: str, score: float, results: list[AssertionResult], errors: list[str]
) -> dict[str, Any]:
    tokens_in = sum(s.tokens_in for s in run.steps)
    tokens_out = sum(s.tokens_out for s in run.steps)
    return {
        "outcome": outcome,
        "score": score,
        "latency_ms": run_latency_ms(run),
        "tokens_in": tokens_in,
        "tokens_out": tokens_out,
        "tokens": tokens_in + tokens_out,
        "cost": _cost(run, None),
        "steps": steps_taken(run),
        "assertions": [r.as_dict() for r in _recorded(results)],
        "assertions_total": len(results),
        "errors": [_clip(e) for e in errors[:RECORDED_ERRORS]],
        "errors_total": len(errors),
    }


def _recorded(results: list[AssertionResult]) -> list[AssertionResult]:
    """The assertions a result records: those that did not pass first, then those that did, in
    order, ``RECORDED_ASSERTIONS`` at most — an ``expected`` naming 5,000 missing steps made
    1 MB of metrics a result, and ListEvalScenarios (100 results a scenario) 52 MB."""
    failing = [r for r in results if r.error or not r.passed]
    passing = [r for r in results if not (r.error or not r.passed)]
    return (failing + passing)[:RECORDED_ASSERTIONS]


# --- repeats and baselines ----------------------------------------------------------------------


@dataclass(frozen=True)
class ScenarioStats:
    runs: int
    passed: int
    pass_rate: float
    score_mean: float
    score_stddev: float  # sample standard deviation (n - 1); 0.0 for one run
    latency_ms_mean: float | None  # over the runs whose latency is known
    tokens_mean: float
    cost_mean: float

    @property
    def score_stderr(self) -> float:
        """The standard error of ``score_mean``: stddev / sqrt(runs)."""
        return self.score_stddev / math.sqrt(self.runs) if self.runs > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Regression:
    is_regression: bool
    reasons: tuple[str, ...]
    deltas: dict[str, Any]  # current - baseline, plus the score threshold that applied

    def as_dict(self) -> dict[str, Any]:
        return {
            "is_regression": self.is_regression,
            "reasons": list(self.reasons),
            "deltas": dict(self.deltas),
        }


def summarize(results: Sequence[Judgement | Mapping[str, Any]]) -> ScenarioStats:
    """Statistics over repeated judgements of one scenario (Judgements or their ``metrics``)."""
    rows = [r.metrics if isinstance(r, Judgement) else r for r in results]
    if not rows:
        raise InvalidArgument("summarize needs at least one result")
    scores = [float(m["score"]) for m in rows]
    passed = sum(m.get("outcome") == "passed" for m in rows)
    latencies = [float(m["latency_ms"]) for m in rows if m.get("latency_ms") is not None]
    return ScenarioStats(
        runs=len(rows),
        passed=passed,
        pass_rate=passed / len(rows),
        score_mean=statistics.fmean(scores),
        score_stddev=statistics.stdev(scores) if len(scores) > 1 else 0.0,
        latency_ms_mean=statistics.fmean(latencies) if latencies else None,
        tokens_mean=statistics.fmean(float(m.get("tokens", 0)) for m in rows),
        cost_mean=statistics.fmean(float(m.get("cost", 0.0)) for m in rows),
    )


def regression(
    current: ScenarioStats,
    baseline: ScenarioStats,
    *,
    pass_rate_drop: float = 0.0,
    score_drop: float = 0.05,
) -> Regression:
    """A regression when the pass rate falls by more than ``pass_rate_drop``, or the mean score
    falls by more than ``max(score_drop, 2 × the standard error of the difference of the means)``
    (``sqrt(s_b²/n_b + s_c²/n_c)``). "More than" allows 1e-9 of float rounding."""
    noise = 2 * math.sqrt(baseline.score_stderr**2 + current.score_stderr**2)
    threshold = max(score_drop, noise)
    rate_fall = baseline.pass_rate - current.pass_rate
    score_fall = baseline.score_mean - current.score_mean
    reasons = []
    if rate_fall > pass_rate_drop + 1e-9:
        reasons.append(
            f"pass rate fell from {baseline.pass_rate:.3f} to {current.pass_rate:.3f} "
            f"(allowed drop {pass_rate_drop:.3f})"
        )
    if score_fall > threshold + 1e-9:
        reasons.append(
            f"mean score fell from {baseline.score_mean:.3f} to "
            f"{current.score_mean:.3f} (allowed drop {threshold:.3f})"
        )
    deltas = {
        "pass_rate": current.pass_rate - baseline.pass_rate,
        "score_mean": current.score_mean - baseline.score_mean,
        "score_threshold": threshold,
        "latency_ms_mean": _delta(current.latency_ms_mean, baseline.latency_ms_mean),
        "tokens_mean": current.tokens_mean - baseline.tokens_mean,
        "cost_mean": current.cost_mean - baseline.cost_mean,
    }
    return Regression(bool(reasons), tuple(reasons), deltas)


# --- helpers ------------------------------------------------------------------------------------


def _mapping_as_dict(value: Any) -> Any:
    """A frozen mapping (a pack's ``expected`` is one) as the object it is: the encoder took
    only dicts, and an ``expected`` object was stored as ``mappingproxy({...})``."""
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


_text_json = json.JSONEncoder(
    separators=(",", ":"), sort_keys=True, ensure_ascii=False, default=_mapping_as_dict
).encode
# NaN and the infinities are no JSON a record holds: their repr, as any other value that is not
# (an extension's NaN recorded failed the whole RecordEvalResult)
_strict_json = json.JSONEncoder(
    separators=(",", ":"), sort_keys=True, ensure_ascii=False, allow_nan=False,
    default=_mapping_as_dict,
).encode  # fmt: skip


def _step(run: RunFacts, step_id: str | None) -> StepFacts:
    step = run.step(step_id) if step_id is not None else None
    assert step is not None, step_id  # _judge_steps checked it
    return step


def _result(
    name: str, ok: bool, recorded: Any, expected: Any, step_id: str | None, message: str
) -> AssertionResult:
    return AssertionResult(name, ok, recorded, expected, step_id, message)


def _error(name: str, expected: Any, step_id: str | None, message: str) -> AssertionResult:
    return AssertionResult(name, False, None, expected, step_id, message, error=True)


def _bad(name: str, step_id: str | None, wanted: str, value: Any) -> str:
    where = "" if step_id is None else f"steps.{step_id}."
    return f"{where}{name} must be {wanted}, got {_clip(repr(value))}"


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _norm_status(status: str) -> str:
    status = status.strip().lower()
    return status.removeprefix("run_status_")


def _json_diff(expected: Any, actual: Any, path: str, *, subset: bool) -> str | None:
    """``None`` when ``actual`` matches ``expected`` (numbers by value, booleans apart from
    numbers); else where and how they differ. ``subset``: objects may have more keys."""
    if isinstance(expected, Mapping):
        if not isinstance(actual, Mapping):
            return f"at {path}: expected an object, got {_show(actual)}"
        for key in expected:
            if key not in actual:
                return f"at {path}: missing key {key!r}"
            diff = _json_diff(expected[key], actual[key], f"{path}.{key}", subset=subset)
            if diff:
                return diff
        extra = sorted(set(actual) - set(expected))
        return f"at {path}: unexpected key {extra[0]!r}" if extra and not subset else None
    if isinstance(expected, list | tuple):  # (a stored scenario's lists are frozen: tuples)
        if not isinstance(actual, list | tuple) or len(actual) != len(expected):
            return f"at {path}: expected a list of {len(expected)}, got {_show(actual)}"
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            diff = _json_diff(e, a, f"{path}[{i}]", subset=subset)
            if diff:
                return diff
        return None
    if _is_num(expected) and _is_num(actual):
        equal = expected == actual or _same_double(expected, actual)
    else:  # booleans, strings, null: same type and value (True is not 1)
        equal = type(expected) is type(actual) and expected == actual
    return None if equal else f"at {path}: expected {_show(expected)}, got {_show(actual)}"


def _is_num(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _same_double(expected: int | float, actual: int | float) -> bool:
    """An integer and a double that are one double: a scenario's ``expected`` came through a
    protobuf Struct (doubles), so an output's 19-digit integer never equalled it."""
    if isinstance(expected, float) == isinstance(actual, float):
        return False
    try:
        return float(expected) == float(actual)
    except OverflowError:  # an integer past any double
        return False


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _show(value: Any) -> str:
    try:
        return _clip(_text_json(value))
    except (TypeError, ValueError):
        return _clip(repr(value))


def _clip(text: str) -> str:
    return text if len(text) <= CLIP else text[:CLIP] + "…"


def _ms(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    try:
        return (end - start).total_seconds() * 1000.0
    except TypeError:  # naive and aware instants: not comparable, so not measurable
        return None


def _delta(current: float | None, baseline: float | None) -> float | None:
    return None if current is None or baseline is None else current - baseline


def _json_ready(value: Any) -> Any:
    """``value`` as JSON; as its JSON text, clipped, when that is longer than ``CLIP``: an
    ``expected`` is the pack's, and a record keeps it for every result."""
    try:
        text = _strict_json(value)
    except (TypeError, ValueError, RecursionError):
        return _clip(text_of(value))
    return json.loads(text) if len(text) <= CLIP else _clip(text)
