"""The change-gate policy: may a change ship? Pure decisions over plain data, standard library only.

A :class:`GateRequest` mirrors ``CheckChangeGateRequest`` (fleetforge.runtime.v1) as frozen
dataclasses; the gRPC edge converts protobuf to these and the :class:`Decision` back to a
``ChangeGateDecision`` (wrapper fields that are absent arrive as ``None``). The policy is the
``[gate]`` table of foundry.toml (:meth:`GatePolicy.from_mapping`).

Rules are plain objects with a ``name`` and ``evaluate(request, policy) -> RuleResult``
(:class:`Rule`); :data:`BUILTIN_RULES` are novelty, coverage, evals and budgets. :func:`decide`
combines their results: DENY when any blocking rule denies, else FOLLOW_UP when any blocking
rule asks for a follow-up, else ALLOW. A rule named in ``[gate].advisory`` is reported (its
reasons prefixed ``"advisory: "``, its follow-ups not recommended) but never changes the effect.
A rule that raises, or answers with something that is not a :class:`RuleResult`, denies: the
gate fails closed.

Thresholds compare so that exactly at a threshold passes and anything beyond it (or a NaN) fails.
Every reason is a sentence that states the measured value and the threshold it was held to.
"""

from __future__ import annotations

import fnmatch
import math
import posixpath
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import reduce
from itertools import compress, repeat
from operator import add, contains
from types import MappingProxyType
from typing import Any, Protocol, TypeVar, cast, overload, runtime_checkable

from foundry.kernel.core.failures import described, text_of
from foundry.kernel.errors import ConfigError

# --------------------------------------------------------------------------------------------
# Enums (values are the spelling used in foundry.toml; the *_NUMBERS maps are the proto enums)


class Effect(StrEnum):
    """What the gate (or one rule) says about a change, weakest first."""

    ALLOW = "allow"
    FOLLOW_UP = "follow_up"
    DENY = "deny"

    @property
    def severity(self) -> int:
        return _SEVERITY[self]


_SEVERITY = {Effect.ALLOW: 0, Effect.FOLLOW_UP: 1, Effect.DENY: 2}

# ChangeDecisionEffect numbers (0 = UNSPECIFIED is never produced).
EFFECT_NUMBERS: Mapping[Effect, int] = MappingProxyType(
    {Effect.ALLOW: 1, Effect.FOLLOW_UP: 2, Effect.DENY: 3}
)


class Direction(StrEnum):
    """Which way a metric improves. UNSPECIFIED is treated as HIGHER_IS_BETTER."""

    UNSPECIFIED = "unspecified"
    HIGHER_IS_BETTER = "higher_is_better"
    LOWER_IS_BETTER = "lower_is_better"


# MetricDirection numbers → Direction (for the edge).
DIRECTION_BY_NUMBER: Mapping[int, Direction] = MappingProxyType(
    {0: Direction.UNSPECIFIED, 1: Direction.HIGHER_IS_BETTER, 2: Direction.LOWER_IS_BETTER}
)

_EMPTY: Mapping[str, Any] = MappingProxyType({})

# --------------------------------------------------------------------------------------------
# The request


@dataclass(frozen=True, slots=True)
class Diff:
    """One changed file (``ChangeDiff``)."""

    path: str
    lines_added: int = 0
    lines_deleted: int = 0
    novelty_score: float | None = None  # 0 (routine) … 1 (never seen); None: not scored
    risk_tags: tuple[str, ...] = ()
    component: str = ""


DiffRow = tuple[str, int, int, float | None, tuple[str, ...], str]


T = TypeVar("T")


class LazyColumn(Sequence[T]):
    """A column of the diffs read only when a rule looks at it: the edge reads some columns
    of a thousand diffs in one C call, others only a diff at a time, which the built-in rules
    mostly never need (line counts, components; a diff's own tags unless some tag is high risk,
    :func:`distinct_tags`; which diffs have a score unless one is above the follow-up
    threshold, :func:`scores_given`)."""

    __slots__ = ("_count", "_load", "_values", "scores", "tags")

    def __init__(
        self,
        count: int,
        load: Callable[[], Iterable[T]],
        *,
        tags: Iterable[str] | None = None,
        scores: tuple[float, ...] | None = None,
    ) -> None:
        """``load``: the values of the ``count`` diffs, in order (called once, when first
        needed). Known without it: ``tags`` (a risk-tags column), every tag of every diff, in
        any order; ``scores`` (a novelty column), the scores given, in order."""
        self._count = count
        self._load: Callable[[], Iterable[T]] | None = load
        self._values: tuple[T, ...] = ()
        self.tags = None if tags is None else frozenset(tags)
        self.scores = scores

    @property
    def values(self) -> tuple[T, ...]:
        if self._load is not None:
            values = tuple(self._load())
            if len(values) != self._count:
                raise ValueError("LazyColumn: not one value per diff")
            self._values, self._load = values, None
        return self._values

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> T: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[T, ...]: ...
    def __getitem__(self, index: int | slice) -> T | tuple[T, ...]:
        return self.values[index]

    def __iter__(self) -> Iterator[T]:
        return iter(self.values)

    def __eq__(self, other: object) -> bool:
        return self.values == (other.values if isinstance(other, LazyColumn) else other)

    def __hash__(self) -> int:
        return hash(self.values)

    def __repr__(self) -> str:
        return repr(self.values)


def scores_given(diffs: Diffs) -> Sequence[float]:
    """The diffs' novelty scores that are not None, in order, without reading a
    :class:`LazyColumn` per diff."""
    column = diffs._novelty_scores
    if isinstance(column, LazyColumn) and column.scores is not None:
        return column.scores
    return [s for s in column if s is not None]


def distinct_tags(diffs: Diffs) -> frozenset[str]:
    """Every risk tag of the diffs, without reading a :class:`LazyColumn` per diff."""
    column = diffs._risk_tags
    if isinstance(column, LazyColumn) and column.tags is not None:
        return column.tags
    return frozenset(tag for tags in set(column) for tag in tags)


_COLUMNS = ("paths", "lines_added", "lines_deleted", "novelty_scores", "risk_tags", "components")


class Diffs(Sequence[Diff]):
    """A request's diffs, stored as one tuple per field: a request has a thousand, and the
    rules read a field of every diff at a time (paths, scores, tags), so columns spare the
    edge a :class:`Diff` object per diff and the rules an attribute lookup per diff. It is a
    sequence of :class:`Diff` (made on access) for plugin rules and tests. Immutable.

    The gRPC edge may hand over a column as a :class:`LazyColumn`: it reads as a tuple like
    every column, made when first read; the built-in rules read what they need of it without
    (:func:`scores_given`, :func:`distinct_tags`)."""

    __slots__ = tuple(f"_{name}" for name in _COLUMNS)
    _paths: Sequence[str]
    _lines_added: Sequence[int]
    _lines_deleted: Sequence[int]
    _novelty_scores: Sequence[float | None]
    _risk_tags: Sequence[tuple[str, ...]]
    _components: Sequence[str]

    def __init__(
        self,
        paths: Sequence[str] = (),
        lines_added: Sequence[int] = (),
        lines_deleted: Sequence[int] = (),
        novelty_scores: Sequence[float | None] = (),
        risk_tags: Sequence[tuple[str, ...]] = (),
        components: Sequence[str] = (),
    ) -> None:
        columns = (paths, lines_added, lines_deleted, novelty_scores, risk_tags, components)
        if len(set(map(len, columns))) > 1:
            raise ValueError("Diffs: every column must have one value per diff")
        for name, column in zip(_COLUMNS, columns, strict=True):
            object.__setattr__(self, f"_{name}", column)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"Diffs are immutable: cannot set {name}")

    @property
    def paths(self) -> tuple[str, ...]:
        return _read(self._paths)

    @property
    def lines_added(self) -> tuple[int, ...]:
        return _read(self._lines_added)

    @property
    def lines_deleted(self) -> tuple[int, ...]:
        return _read(self._lines_deleted)

    @property
    def novelty_scores(self) -> tuple[float | None, ...]:
        return _read(self._novelty_scores)

    @property
    def risk_tags(self) -> tuple[tuple[str, ...], ...]:
        return _read(self._risk_tags)

    @property
    def components(self) -> tuple[str, ...]:
        return _read(self._components)

    @classmethod
    def of(cls, diffs: Iterable[Diff]) -> Diffs:
        """The columns of ``diffs`` (risk tags as tuples, whatever sequence a Diff holds)."""
        return cls.of_rows(
            (d.path, d.lines_added, d.lines_deleted, d.novelty_score, tuple(d.risk_tags),
             d.component)
            for d in diffs
        )  # fmt: skip

    @classmethod
    def of_rows(cls, rows: Iterable[DiffRow]) -> Diffs:
        """The columns of rows in :class:`Diff`'s field order (one transposition, in C)."""
        columns = tuple(zip(*rows, strict=True))
        return cls(*columns) if columns else cls()

    def _columns(self) -> tuple[tuple[Any, ...], ...]:
        return (self.paths, self.lines_added, self.lines_deleted, self.novelty_scores,
                self.risk_tags, self.components)  # fmt: skip

    def __len__(self) -> int:
        return len(self._paths)

    @overload
    def __getitem__(self, index: int) -> Diff: ...
    @overload
    def __getitem__(self, index: slice) -> Diffs: ...
    def __getitem__(self, index: int | slice) -> Diff | Diffs:
        if isinstance(index, slice):
            return Diffs(*(column[index] for column in self._columns()))
        return Diff(*(column[index] for column in self._columns()))

    def __iter__(self) -> Iterator[Diff]:
        return map(Diff, *self._columns())

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, Diffs)
        return self._columns() == other._columns()

    def __hash__(self) -> int:
        return hash(self._columns())

    def __repr__(self) -> str:
        columns = ", ".join(f"{n}={c!r}" for n, c in zip(_COLUMNS, self._columns(), strict=True))
        return f"Diffs({columns})"

    def __reduce__(self) -> tuple[type[Diffs], tuple[tuple[Any, ...], ...]]:
        return Diffs, self._columns()


def _read(column: Sequence[T]) -> tuple[T, ...]:
    """A stored column as it reads: a LazyColumn's values (read now if not yet); any other
    column as given (a tuple, unless a caller built Diffs of another sequence)."""
    if isinstance(column, LazyColumn):
        return column.values
    return cast(tuple[T, ...], column)


@dataclass(frozen=True, slots=True)
class CoverageComponent:
    name: str
    coverage_ratio: float | None = None
    required_ratio: float | None = None


@dataclass(frozen=True, slots=True)
class Coverage:
    """A coverage report (``CoverageReport``)."""

    overall_ratio: float | None = None
    minimum_ratio: float | None = None  # None: the policy's ``min_coverage``
    components: tuple[CoverageComponent, ...] = ()


@dataclass(frozen=True, slots=True)
class Metric:
    """One eval metric (``EvalMetric``)."""

    name: str
    slug: str = ""
    score: float = 0.0
    threshold: float | None = None  # None: the metric never fails
    direction: Direction | str = Direction.UNSPECIFIED
    weight: float | None = None  # None counts as 1.0 in score_per_token

    @property
    def label(self) -> str:
        """How reasons and the scorecard name the metric: ``name (slug)``, or the name alone."""
        return f"{self.name} ({self.slug})" if self.slug else self.name


@dataclass(frozen=True, slots=True)
class Budget:
    """A budget signal (``BudgetSignal``); one without a limit is ignored."""

    name: str
    actual: float = 0.0
    limit: float | None = None


@dataclass(frozen=True, slots=True)
class GateRequest:
    """``CheckChangeGateRequest`` as plain data."""

    change_id: str = ""
    revision: str = ""
    diffs: Diffs = Diffs()  # any iterable of Diff is turned into Diffs
    coverage: Coverage | None = None
    evals: tuple[Metric, ...] = ()
    budgets: tuple[Budget, ...] = ()
    telemetry: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    metadata: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    actor: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.diffs, Diffs):
            object.__setattr__(self, "diffs", Diffs.of(self.diffs))


# --------------------------------------------------------------------------------------------
# The decision


@dataclass(frozen=True, slots=True)
class Followup:
    """What to do about a change (``FollowupAction``); ``recommended`` False means optional."""

    slug: str
    description: str
    recommended: bool = True


@dataclass(frozen=True, slots=True)
class NoveltySummary:
    max_novelty: float = 0.0
    avg_novelty: float = 0.0  # over the diffs that have a score; 0 when none has
    high_risk_paths: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CoverageSummary:
    overall_ratio: float | None = None
    components_below_threshold: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class EvalSummary:
    failing_metrics: tuple[str, ...] = ()  # Metric.label of each
    attention_metrics: tuple[str, ...] = ()
    score_per_token: float | None = None


@dataclass(frozen=True, slots=True)
class BudgetSummary:
    breaches: tuple[str, ...] = ()
    near_limits: tuple[str, ...] = ()


ScorecardPart = NoveltySummary | CoverageSummary | EvalSummary | BudgetSummary


@dataclass(frozen=True, slots=True)
class Scorecard:
    """``DecisionScorecard``. A part is None when no rule produced it; ``extra`` holds the parts
    of plugin rules that are none of the four summaries, by rule name (not in the proto)."""

    novelty: NoveltySummary | None = None
    coverage: CoverageSummary | None = None
    evals: EvalSummary | None = None
    budgets: BudgetSummary | None = None
    telemetry: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    extra: Mapping[str, object] = field(default_factory=lambda: _EMPTY)


@dataclass(frozen=True, slots=True)
class RuleResult:
    """One rule's answer. ``scorecard`` is the rule's part of the scorecard, or None."""

    effect: Effect | str = Effect.ALLOW
    reasons: tuple[str, ...] = ()
    followups: tuple[Followup, ...] = ()
    scorecard: object = None


@dataclass(frozen=True, slots=True)
class RuleOutcome:
    """How one rule counted in a decision (for audit logs; not in the proto)."""

    name: str
    effect: Effect  # after the policy's [gate.effects] cap
    advisory: bool


@dataclass(frozen=True, slots=True)
class Decision:
    effect: Effect
    reasons: tuple[str, ...]
    followups: tuple[Followup, ...]
    scorecard: Scorecard
    rules: tuple[RuleOutcome, ...] = ()


@runtime_checkable
class Rule(Protocol):
    """A gate rule: a plain object with a ``name`` and ``evaluate``. It must be pure and fast
    (linear in the request)."""

    @property
    def name(self) -> str: ...

    def evaluate(self, request: GateRequest, policy: GatePolicy) -> RuleResult: ...


# --------------------------------------------------------------------------------------------
# The policy

DEFAULT_HIGH_RISK_TAGS = ("security", "auth", "payments", "migration", "infra")
DEFAULT_HIGH_RISK_PATHS = (
    "**/migrations/**", "*.sql", "infra/**", ".github/workflows/**", "**/auth/**",
    "**/security/**",
)  # fmt: skip
_NEVER = re.compile(r"(?!)")


def _effect(key: str, value: object) -> Effect:
    try:
        return Effect(value)  # type: ignore[arg-type]
    except ValueError:
        raise ConfigError(
            f"[gate].{key}: expected one of deny, follow_up, allow, got {value!r}"
        ) from None


def _glob_regex(pattern: str) -> str:
    """``fnmatch`` semantics (``*`` also matches ``/``); a leading ``**/`` may also match
    nothing, so ``**/auth/**`` covers ``auth/x`` as well as ``src/auth/x``."""
    regex = fnmatch.translate(pattern)
    if pattern.startswith("**/"):
        regex = f"(?:{regex})|(?:{fnmatch.translate(pattern[3:])})"
    return regex


def _literals(patterns: Sequence[str]) -> tuple[str, ...] | None:
    """Each pattern's longest literal part (text between ``*`` and ``?``), which every path it
    matches contains; None when some pattern has none or has a ``[set]`` (no shortcut then). A
    leading ``**/`` may match nothing, so its literal is taken without it."""
    literals = []
    for pattern in patterns:
        if "[" in pattern:
            return None
        parts = re.split(r"[*?]+", pattern.removeprefix("**/"))
        longest = max(parts, key=len)
        if not longest:
            return None
        literals.append(longest)
    return tuple(sorted(set(literals))) if literals else None


def _literal_hint(literals: Sequence[str] | None) -> re.Pattern[str] | None:
    """A search for any of ``literals``."""
    return re.compile("|".join(map(re.escape, literals))) if literals else None


@dataclass(frozen=True)
class GatePolicy:
    """The ``[gate]`` table of foundry.toml. Construct directly or with :meth:`from_mapping`;
    both validate, raising ``ConfigError("[gate].key: reason")``."""

    max_novelty: float = 0.9  # a diff whose novelty is above this denies
    novelty_follow_up: float = 0.7  # above this (up to max_novelty) asks for a follow-up
    high_risk_tags: tuple[str, ...] = DEFAULT_HIGH_RISK_TAGS  # case-insensitive
    high_risk_paths: tuple[str, ...] = DEFAULT_HIGH_RISK_PATHS  # fnmatch globs
    high_risk: Effect = Effect.FOLLOW_UP  # the effect of touching a high-risk path or tag
    min_coverage: float = 0.8  # when the report has no minimum_ratio
    attention_margin: float = 0.05  # passing metrics this close to their threshold
    near_limit: float = 0.9  # budgets at or above this fraction of their limit
    missing_coverage: Effect = Effect.FOLLOW_UP  # no report, or no overall ratio
    missing_evals: Effect = Effect.FOLLOW_UP  # no metrics at all
    advisory: frozenset[str] = frozenset()  # rules reported but never blocking
    # rule name → the strongest effect it may have
    effects: Mapping[str, Effect] = field(default_factory=lambda: _EMPTY)
    rule_timeout: float = 30.0  # seconds a decision's rules may take, together
    _path_regex: re.Pattern[str] = field(init=False, repr=False, compare=False)
    _path_hint: re.Pattern[str] | None = field(init=False, repr=False, compare=False)
    _path_literals: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _tags: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for key in ("max_novelty", "novelty_follow_up", "min_coverage", "attention_margin"):
            _ratio(key, getattr(self, key), low=0.0, high=1.0)
        _ratio("near_limit", self.near_limit, low=0.0, high=1.0, open_low=True)
        timeout = _number("rule_timeout", self.rule_timeout)
        if not math.isfinite(timeout) or timeout <= 0 or timeout > MAX_RULE_TIMEOUT:
            raise ConfigError(f"[gate].rule_timeout: expected seconds in (0, {MAX_RULE_TIMEOUT:g}]"
                              f", got {self.rule_timeout!r}")  # fmt: skip
        if self.novelty_follow_up > self.max_novelty:
            raise ConfigError(
                f"[gate].novelty_follow_up: {self.novelty_follow_up:g} is above "
                f"max_novelty {self.max_novelty:g}"
            )
        for key in ("high_risk", "missing_coverage", "missing_evals"):
            object.__setattr__(self, key, _effect(key, getattr(self, key)))
        effects = {name: _effect(f"effects.{name}", v) for name, v in self.effects.items()}
        object.__setattr__(self, "effects", MappingProxyType(effects))
        object.__setattr__(self, "advisory", frozenset(self.advisory))
        object.__setattr__(self, "high_risk_tags", tuple(self.high_risk_tags))
        object.__setattr__(self, "high_risk_paths", tuple(self.high_risk_paths))
        object.__setattr__(self, "_tags", frozenset(t.lower() for t in self.high_risk_tags))
        compiled = []
        for index, pattern in enumerate(self.high_risk_paths):
            regex = _glob_regex(pattern.lower())  # paths are matched lower-cased (_normalized)
            try:
                re.compile(regex)
            except re.error as exc:
                raise ConfigError(f"[gate].high_risk_paths: {pattern!r}: {exc}") from None
            compiled.append(f"(?P<p{index}>{regex})")
        # One alternation of named groups: a match's lastgroup says which pattern matched.
        path_regex = re.compile("|".join(compiled)) if compiled else _NEVER
        object.__setattr__(self, "_path_regex", path_regex)
        literals = _literals([pattern.lower() for pattern in self.high_risk_paths])
        object.__setattr__(self, "_path_hint", _literal_hint(literals))
        object.__setattr__(self, "_path_literals", literals or ())

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any] | None) -> GatePolicy:
        """The policy from the ``[gate]`` table (None or empty: every default)."""
        table = table or {}
        if not isinstance(table, Mapping):
            raise ConfigError("[gate]: expected a table")
        unknown = sorted(set(table) - _KEYS)
        if unknown:
            known = ", ".join(sorted(_KEYS))
            raise ConfigError(f"[gate].{unknown[0]}: unknown key (expected one of: {known})")
        values: dict[str, Any] = {}
        for key in ("max_novelty", "novelty_follow_up", "min_coverage", "attention_margin",
                    "near_limit", "rule_timeout"):  # fmt: skip
            if key in table:
                values[key] = _number(key, table[key])
        for key in ("high_risk_tags", "high_risk_paths"):
            if key in table:
                values[key] = tuple(_strings(key, table[key]))
        if "advisory" in table:
            values["advisory"] = frozenset(_strings("advisory", table["advisory"]))
        for key in ("high_risk", "missing_coverage", "missing_evals"):
            if key in table:
                values[key] = _effect(key, table[key])
        if "effects" in table:
            effects = table["effects"]
            if not isinstance(effects, Mapping):
                raise ConfigError(
                    f"[gate].effects: expected a table of rule = effect, got {effects!r}"
                )
            values["effects"] = {str(k): _effect(f"effects.{k}", v) for k, v in effects.items()}
        return cls(**values)

    def check_rules(self, rules: Iterable[Rule]) -> None:
        """Every rule ``advisory`` and ``effects`` name exists (call once the plugin rules are
        registered): a misspelt rule name would otherwise be silently ignored."""
        names = {rule.name for rule in rules}
        known = ", ".join(sorted(names)) or "none"
        for key, named in (("advisory", sorted(self.advisory)), ("effects", sorted(self.effects))):
            for name in named:
                if name not in names:
                    raise ConfigError(f"[gate].{key}: unknown rule {name!r} (rules: {known})")

    def high_risk_reason(self, diff: Diff) -> str:
        """Why ``diff`` is high risk — its matching tags and the path pattern it matches — or ""
        when it is not. One regex match (every pattern, precompiled as one alternation)."""
        return self._risk_text(tuple(diff.risk_tags), self.match_path(diff.path))

    def match_path(self, path: str) -> re.Match[str] | None:
        """The match of ``path`` (less a leading ``./``) against the high-risk patterns; its
        ``lastgroup`` is ``p<index>`` of the pattern. A path without any pattern's longest
        literal part cannot match, and is turned away by one scan for those (a third of the
        cost of the alternation, which tries every pattern at every ``*``)."""
        path = _normalized(path.lower())
        hint = self._path_hint
        if hint is not None and hint.search(path) is None:
            return None
        return self._path_regex.match(path)

    def _risk_text(self, risk_tags: tuple[str, ...], found: re.Match[str] | None) -> str:
        tags = self._tags
        matched = [tag for tag in risk_tags if tag.lower() in tags] if risk_tags else ()
        why = f"tags {', '.join(matched)}" if matched else ""
        if found is not None and found.lastgroup is not None:
            pattern = self.high_risk_paths[int(found.lastgroup[1:])]
            why = f"{why}; path matches {pattern}" if why else f"path matches {pattern}"
        return why


_KEYS = frozenset(
    {
        "max_novelty", "novelty_follow_up", "high_risk_tags", "high_risk_paths", "high_risk",
        "min_coverage", "attention_margin", "near_limit", "missing_coverage", "missing_evals",
        "advisory", "effects", "rule_timeout",
    }
)  # fmt: skip


def _number(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"[gate].{key}: expected a number, got {value!r}")
    return float(value)


def _ratio(key: str, value: object, *, low: float, high: float, open_low: bool = False) -> None:
    number = _number(key, value)
    if not math.isfinite(number) or number < low or number > high or (open_low and number == low):
        bracket = "(" if open_low else "["
        raise ConfigError(f"[gate].{key}: expected a number in {bracket}{low:g}, {high:g}], "
                          f"got {value!r}")  # fmt: skip


def _strings(key: str, value: object) -> list[str]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"[gate].{key}: expected a list of non-empty strings, got {value!r}")
    return list(value)


# --------------------------------------------------------------------------------------------
# Formatting


def _num(value: float) -> str:
    return f"{value:.2f}"


def _pair(value: float, threshold: float) -> tuple[str, str]:
    """Both numbers with 2 decimals, or 3 (then 6 significant digits, then in full) when fewer
    would print them equal although they differ: "0.80 is below 0.80" would explain nothing."""
    if value != threshold:
        for spec in (".2f", ".3f", ".6g"):
            shown, limit = format(value, spec), format(threshold, spec)
            if shown != limit:
                return shown, limit
        return repr(value), repr(threshold)
    return format(value, ".2f"), format(threshold, ".2f")


def _missing(what: str, effect: Effect) -> str:
    return f"{what}: evidence missing (policy: {effect.value})"


def _above(value: float, threshold: float) -> bool:
    """value > threshold, and True when either is NaN (fail closed)."""
    return not value <= threshold


def _below(value: float, threshold: float) -> bool:
    """value < threshold, and True when either is NaN (fail closed)."""
    return not value >= threshold


def _strongest(effects: Iterable[Effect]) -> Effect:
    best = Effect.ALLOW
    for effect in effects:
        if _SEVERITY[effect] > _SEVERITY[best]:
            best = effect
    return best


# --------------------------------------------------------------------------------------------
# Built-in rules


# High-risk paths named one reason each; the rest are counted in one more (all are in the
# scorecard's high_risk_paths).
HIGH_RISK_REASONS = 20


def _novel(
    candidates: Iterable[tuple[str, float]],
    policy: GatePolicy,
    effects: list[Effect],
    reasons: list[str],
    followups: list[Followup],
) -> None:
    """The reasons and follow-ups of the diffs (path, score) scored above ``novelty_follow_up``
    (or NaN), and at most one effect of each kind. One loop with its lookups hoisted: the
    hostile benchmark request has ~700 such diffs. Many diffs share a score, so each (score,
    threshold) pair is formatted once (:func:`_pair`; a score here is above a threshold >= 0,
    so never -0.0)."""
    maximum, follow_up = policy.max_novelty, policy.novelty_follow_up
    shown: dict[tuple[float, float], tuple[str, str]] = {}
    add_reason, add_followup, followup = reasons.append, followups.append, Followup
    denied = followed = False
    for path, given in candidates:
        score, note = given, ""
        if score != score:  # NaN: unknown, so as novel as can be
            score, note = 1.0, " (not a number, counted as 1.00)"
        if not score > follow_up:  # a NaN counted as 1.0 is not above a follow-up of 1.0
            continue
        denies = score > maximum
        key = (score, maximum if denies else follow_up)
        pair = shown.get(key)
        if pair is None:
            pair = shown[key] = _pair(*key)
        text, limit = pair
        if denies:
            denied = True
            add_reason(f"novelty {text} of {path} is above the maximum {limit}{note}")
            add_followup(followup(
                "reduce-novelty", f"Split or justify the change to {path} ({text} > {limit})",
            ))  # fmt: skip
        else:
            followed = True
            add_reason(f"novelty {text} of {path} is above the follow-up threshold {limit}")
            add_followup(followup(
                "review-novelty",
                f"Have an owner review the novel change to {path} ({text} > {limit})",
            ))  # fmt: skip
    effects.extend([Effect.DENY] * denied + [Effect.FOLLOW_UP] * followed)


def _path_matches(paths: Sequence[str], policy: GatePolicy) -> list[re.Match[str] | None]:
    """:meth:`GatePolicy.match_path` of each path, inlined: it runs once per diff. Only the
    paths holding a literal of the hint can match; when most do, matching every path costs
    less than picking them out."""
    match = policy._path_regex.match
    paths = normalized_paths(paths)
    if policy._path_hint is None:
        return list(map(match, paths))
    hinted = _hinted(paths, policy._path_literals)
    if len(hinted) * 4 >= len(paths) * 3:
        return list(map(match, paths))
    found: list[re.Match[str] | None] = [None] * len(paths)
    for i in hinted:
        found[i] = match(paths[i])
    return found


# What may make a path one a high-risk pattern could miss as written: a ``.`` or ``..`` segment,
# an empty one, a backslash, a leading ``/``. Looked for over the paths joined by NUL (as
# :func:`normalized_paths` reads them) by five substring searches in C — a regex took 0.64 ms
# over 1,000 paths, twice ``decide()``'s whole time — then path by path where one hit (a
# dotfile hits too: ``normpath`` leaves it as it is).
_SUSPECT = ("/.", "\0.", "//", "\\", "\0/", "./", " /", ".\0", " \0", ":")


def _suspect(text: str) -> bool:
    return (
        not text.isascii()  # case-folding goes past lower-casing
        or text.startswith((".", "/"))
        or text.endswith((".", " "))
        or any(part in text for part in _SUSPECT)
    )


def normalized_paths(paths: Sequence[str]) -> list[str]:
    """Changed paths as the high-risk patterns see them: lower-cased (``src/Auth/x`` is
    ``src/auth/x``, ``x.SQL`` is ``x.sql``), relative, with their ``.`` and ``..`` segments
    resolved and backslashes as slashes — ``././infra/x.tf``, ``/infra/x.tf`` and
    ``src/../infra/x.tf`` were not ``infra/**``. One pass in C over them all when none needs
    more than lower-casing (most diffs)."""
    joined = "\0".join(paths).lower()
    if joined.count("\0") != len(paths) - 1:  # a path holding a NUL: one by one
        return [_normalized(path.lower()) for path in paths]
    if not _suspect(joined):
        return joined.split("\0") if paths else []
    return [_normalized(path) for path in joined.split("\0")]


def _normalized(path: str) -> str:
    """One path as the patterns see it (lower-cased already): case-folded, backslashes as
    slashes, a drive letter (``c:``) dropped, ``.``/``..`` resolved, and each segment's
    trailing dots and spaces dropped as Windows drops them (``infra./x.tf``, ``x.sql.``)."""
    if not _suspect(path):
        return path
    slashed = path.casefold().replace("\\", "/")
    if len(slashed) > 1 and slashed[1] == ":" and slashed[0].isalpha():
        slashed = slashed[2:]
    resolved = posixpath.normpath(slashed).lstrip("/")
    while resolved.startswith("../"):
        resolved = resolved[3:]
    if resolved in (".", ".."):
        return ""
    segments = [s.rstrip(". ") if s not in (".", "..") else s for s in resolved.split("/")]
    resolved = "/".join(s for s in segments if s)
    return resolved + "/" if path.endswith(("/", "\\")) else resolved


def _hinted(paths: Sequence[str], literals: Sequence[str]) -> set[int]:
    """The indexes of the paths holding one of the hint's ``literals``. Each literal is first
    counted over the joined paths in one C pass; most are in no path, and only the others are
    looked for path by path (``contains`` mapped in C, not a regex search per path)."""
    joined = "\0".join(paths)
    hinted: set[int] = set()
    for literal in literals:
        if len(hinted) == len(paths):
            break
        if joined.count(literal):  # a literal holding the separator may count where none is
            hinted.update(compress(range(len(paths)), map(contains, paths, repeat(literal))))
    return hinted


def _any_risky_tag(diffs: Diffs, policy: GatePolicy) -> bool:
    """Some diff carries a high-risk tag (from the distinct tags: no per-diff read)."""
    return not policy._tags.isdisjoint(map(str.lower, distinct_tags(diffs)))


def _risky(diffs: Diffs, policy: GatePolicy) -> list[tuple[int, re.Match[str] | None]]:
    """The high-risk diffs, in order, each as its index and its path match (None: only a tag is
    risky). Diffs mostly repeat a few tag lists: each distinct one is lowercased and checked
    once."""
    found = _path_matches(diffs.paths, policy)
    tags = policy._tags
    risky_tags = (
        {t for t in set(diffs.risk_tags) if t and not tags.isdisjoint(map(str.lower, t))}
        if _any_risky_tag(diffs, policy)
        else set()
    )
    if not risky_tags:
        return [(i, f) for i, f in enumerate(found) if f is not None]
    return [
        (i, f)
        for i, (f, t) in enumerate(zip(found, diffs.risk_tags, strict=True))
        if f is not None or t in risky_tags
    ]


class NoveltyRule:
    """Novelty above ``max_novelty`` denies; above ``novelty_follow_up`` asks for a follow-up
    (exactly at either passes; a NaN score counts as 1.0). Touching a high-risk path or tag has
    the ``high_risk`` effect (default follow_up); the first :data:`HIGH_RISK_REASONS` such paths
    get a reason each, the rest one reason that counts them."""

    name = "novelty"

    def evaluate(self, request: GateRequest, policy: GatePolicy) -> RuleResult:
        # Whole-column passes with comprehensions and builtins: a request has a thousand diffs.
        diffs = request.diffs
        given = scores_given(diffs)
        scores = [s if s == s else 1.0 for s in given]
        top = max([0.0, *scores])  # NaN counted as 1.0; max keeps the first of equals
        total = reduce(add, scores, 0.0)  # in order (Python 3.12's sum() compensates)
        scored = len(scores)
        effects: list[Effect] = []
        reasons: list[str] = []
        followups: list[Followup] = []
        follow_up = policy.novelty_follow_up
        paths = diffs.paths
        above = [s for s in given if not s <= follow_up]  # which diffs, only if any
        novelty = diffs.novelty_scores if above else ()
        candidates = [
            (paths[i], s) for i, s in enumerate(novelty) if s is not None and not s <= follow_up
        ]
        _novel(candidates, policy, effects, reasons, followups)
        risky = _risky(diffs, policy)
        high_risk = [paths[i] for i, _ in risky]
        if risky:
            effects.append(policy.high_risk)
            shown_policy = policy.high_risk.value
            risk_text = policy._risk_text
            # No high-risk tag anywhere: a diff's own tags add nothing to its reason.
            tags = diffs.risk_tags if _any_risky_tag(diffs, policy) else ((),) * len(paths)
            reasons.extend(
                f"{paths[i]} is high risk ({risk_text(tags[i], found)}; policy: {shown_policy})"
                for i, found in risky[:HIGH_RISK_REASONS]
            )
            if len(risky) > HIGH_RISK_REASONS:
                reasons.append(
                    f"{len(risky) - HIGH_RISK_REASONS} more paths are high risk "
                    f"({len(risky)} in all, listed in the scorecard; policy: {shown_policy})"
                )
            followups.append(Followup(
                "review-high-risk",
                f"Have an owner review the high-risk paths: {_some(high_risk)}",
                policy.high_risk is not Effect.ALLOW,
            ))  # fmt: skip
        summary = NoveltySummary(top, total / scored if scored else 0.0, tuple(high_risk))
        return RuleResult(_strongest(effects), tuple(reasons), tuple(followups), summary)


class CoverageRule:
    """Overall coverage below the report's ``minimum_ratio`` (else ``min_coverage``) denies, as
    does a component below its ``required_ratio`` (a component without one is not checked). No
    report, no overall ratio, or a required component without a ratio (listed as below) is
    missing evidence: the ``missing_coverage`` effect."""

    name = "coverage"

    def evaluate(self, request: GateRequest, policy: GatePolicy) -> RuleResult:
        coverage = request.coverage
        missing = policy.missing_coverage
        recommended = missing is not Effect.ALLOW
        if coverage is None:
            return RuleResult(
                missing,
                (_missing("no coverage report", missing),),
                (
                    Followup(
                        "provide-coverage", "Upload a coverage report for this change", recommended
                    ),
                ),  # fmt: skip
                CoverageSummary(None, ()),
            )
        effects: list[Effect] = []
        reasons: list[str] = []
        followups: list[Followup] = []
        minimum = policy.min_coverage if coverage.minimum_ratio is None else coverage.minimum_ratio
        overall = coverage.overall_ratio
        if overall is None:
            effects.append(missing)
            reasons.append(_missing("the coverage report has no overall ratio", missing))
            followups.append(Followup(
                "provide-coverage", "Report the overall coverage ratio", recommended
            ))  # fmt: skip
        elif _below(overall, minimum):
            shown, limit = _pair(overall, minimum)
            effects.append(Effect.DENY)
            reasons.append(f"coverage {shown} is below the minimum {limit}")
            followups.append(Followup("raise-coverage", f"Add tests ({shown} < {limit})"))
        below: list[str] = []
        for component in coverage.components:
            required = component.required_ratio
            if required is None:
                continue
            ratio = component.coverage_ratio
            if ratio is None:
                below.append(component.name)
                effects.append(missing)
                reasons.append(_missing(
                    f"component {component.name} has no coverage ratio "
                    f"(required {_num(required)}), counted as below", missing,
                ))  # fmt: skip
                followups.append(Followup(
                    "provide-coverage",
                    f"Report coverage for {component.name} (required {_num(required)})",
                    recommended,
                ))  # fmt: skip
            elif _below(ratio, required):
                below.append(component.name)
                shown, limit = _pair(ratio, required)
                effects.append(Effect.DENY)
                reasons.append(
                    f"coverage {shown} of component {component.name} is below its required {limit}"
                )
                followups.append(
                    Followup(
                        "raise-coverage", f"Add tests for {component.name} ({shown} < {limit})"
                    )  # fmt: skip
                )
        summary = CoverageSummary(overall, tuple(below))
        return RuleResult(_strongest(effects), tuple(reasons), tuple(followups), summary)


def tokens_of(telemetry: Mapping[str, Any]) -> float | None:
    """Tokens spent on the change, from telemetry ``tokens``, else ``total_tokens``, else
    ``tokens_in`` + ``tokens_out``; None when absent or not positive."""
    for key in ("tokens", "total_tokens"):
        value = _finite(telemetry.get(key))
        if value is not None:
            return value if value > 0 else None
    parts = [_finite(telemetry.get(key)) for key in ("tokens_in", "tokens_out")]
    if parts[0] is None and parts[1] is None:
        return None
    total = (parts[0] or 0.0) + (parts[1] or 0.0)
    return total if total > 0 else None


def _finite(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


class EvalsRule:
    """A metric failing its threshold denies: higher_is_better (and unspecified) fails when the
    score is below it, lower_is_better when above; exactly at it passes; a metric without a
    threshold never fails. A passing metric within ``attention_margin`` of its threshold is an
    attention metric (reported, a follow-up that is not recommended, no effect). No metrics at
    all is missing evidence: the ``missing_evals`` effect."""

    name = "evals"

    def evaluate(self, request: GateRequest, policy: GatePolicy) -> RuleResult:
        metrics = request.evals
        if not metrics:
            missing = policy.missing_evals
            return RuleResult(
                missing,
                (_missing("no eval metrics", missing),),
                (
                    Followup(
                        "provide-evals",
                        "Run the eval pack for this change and record its metrics",
                        missing is not Effect.ALLOW,
                    ),
                ),  # fmt: skip
                EvalSummary(),
            )
        margin = policy.attention_margin
        reasons: list[str] = []
        followups: list[Followup] = []
        failing: list[str] = []
        attention: list[str] = []
        weighted = 0.0
        for metric in metrics:
            score = metric.score
            weight = metric.weight
            weighted += (1.0 if weight is None else weight) * score
            threshold = metric.threshold
            if threshold is None:
                continue
            lower = metric.direction == Direction.LOWER_IS_BETTER
            if lower:
                fails = _above(score, threshold)
                close = not fails and score >= threshold - margin
            else:
                fails = _below(score, threshold)
                close = not fails and score <= threshold + margin
            if not (fails or close):
                continue
            label = metric.label
            shown, limit = _pair(score, threshold)
            how = "lower is better" if lower else "higher is better"
            if fails:
                failing.append(label)
                side = "above" if lower else "below"
                reasons.append(
                    f"metric {label} scored {shown}, {side} its threshold {limit} ({how})"
                )
                goal = "at most" if lower else "at least"
                followups.append(
                    Followup("fix-eval", f"Bring {label} to {goal} {limit} (now {shown})")
                )
            else:
                attention.append(label)
                reasons.append(
                    f"metric {label} scored {shown}, within {_num(margin)} of its threshold "
                    f"{limit} ({how})"
                )
                followups.append(Followup(
                    "watch-eval", f"Watch {label}: {shown} is close to its threshold {limit}",
                    recommended=False,
                ))  # fmt: skip
        tokens = tokens_of(request.telemetry)
        # None when it cannot be computed: no tokens, or a term not finite (a NaN or infinite
        # score, a product past a double: leaving one out made the rest read as the whole)
        per_token = weighted / tokens if tokens and math.isfinite(weighted) else None
        summary = EvalSummary(tuple(failing), tuple(attention), per_token)
        effect = Effect.DENY if failing else Effect.ALLOW
        return RuleResult(effect, tuple(reasons), tuple(followups), summary)


class BudgetsRule:
    """A budget over its limit denies (exactly at the limit is not a breach); one at or above
    ``near_limit`` × limit is near (reported, a follow-up that is not recommended, no effect).
    Budgets without a limit are ignored, and so are budgets near a limit of 0 or less."""

    name = "budgets"

    def evaluate(self, request: GateRequest, policy: GatePolicy) -> RuleResult:
        reasons: list[str] = []
        followups: list[Followup] = []
        breaches: list[str] = []
        near: list[str] = []
        fraction = policy.near_limit
        for budget in request.budgets:
            limit = budget.limit
            if limit is None:
                continue
            actual = budget.actual
            if _above(actual, limit):
                breaches.append(budget.name)
                shown, bound = _pair(actual, limit)
                reasons.append(f"budget {budget.name} {shown} is over its limit {bound}")
                followups.append(Followup(
                    "reduce-spend", f"Bring {budget.name} within its limit {bound} (now {shown})"
                ))  # fmt: skip
            elif 0 < limit < math.inf and actual >= fraction * limit:  # inf: never near
                near.append(budget.name)
                shown, bound = _pair(actual, limit)
                used = f"{actual / limit:.0%}"
                reasons.append(
                    f"budget {budget.name} {shown} is near its limit {bound} ({used} of it; "
                    f"near from {fraction:.0%})"
                )
                followups.append(Followup(
                    "watch-budget", f"Watch {budget.name}: {used} of its limit {bound}",
                    recommended=False,
                ))  # fmt: skip
        effect = Effect.DENY if breaches else Effect.ALLOW
        summary = BudgetSummary(tuple(breaches), tuple(near))
        return RuleResult(effect, tuple(reasons), tuple(followups), summary)


def _some(items: Sequence[str], shown: int = 5) -> str:
    head = ", ".join(items[:shown])
    return f"{head} and {len(items) - shown} more" if len(items) > shown else head


BUILTIN_RULES: tuple[Rule, ...] = (NoveltyRule(), CoverageRule(), EvalsRule(), BudgetsRule())
BUILTIN_NAMES = frozenset(rule.name for rule in BUILTIN_RULES)


# --------------------------------------------------------------------------------------------
# Deciding


def decide(
    request: GateRequest, policy: GatePolicy, rules: Iterable[Rule] = BUILTIN_RULES
) -> Decision:
    """Run every rule and combine: DENY if a blocking rule denies, else FOLLOW_UP if a blocking
    rule asks for one, else ALLOW. ``[gate.effects]`` caps a rule's effect; a rule in
    ``[gate].advisory`` is reported ("advisory: " reasons, follow-ups not recommended) but its
    effect is ignored. A rule that raises or answers badly denies (fail closed) — as far as its
    cap lets it, and not at all if advisory: its reason then says so, not that the gate denies."""
    effect = Effect.ALLOW
    reasons: list[str] = []
    followups: list[Followup] = []
    outcomes: list[RuleOutcome] = []
    parts: dict[str, object] = {}
    extra: dict[str, object] = {}
    for rule in rules:
        name = getattr(rule, "name", type(rule).__name__)
        result, failure = _evaluate(rule, name, request, policy)
        advisory = name in policy.advisory
        rule_effect = Effect(result.effect)
        cap = policy.effects.get(name)
        if cap is not None and _SEVERITY[rule_effect] > _SEVERITY[cap]:
            rule_effect = cap
        if failure and (advisory or rule_effect is not Effect.DENY):
            # (not "so the gate denies" over an ALLOW: found by a governance hunt)
            result = _failed(
                name,
                f"{failure}: advisory, so it does not block"
                if advisory
                else f"{failure}: capped at {rule_effect.value} by [gate.effects]",
            )
        outcomes.append(RuleOutcome(name, rule_effect, advisory))
        if advisory:
            reasons.extend(f"advisory: {reason}" for reason in result.reasons)
            followups.extend(
                f if not f.recommended else Followup(f.slug, f.description, False)
                for f in result.followups
            )
        else:
            reasons.extend(result.reasons)
            followups.extend(result.followups)
            if _SEVERITY[rule_effect] > _SEVERITY[effect]:
                effect = rule_effect
        part = result.scorecard
        slot = _SLOTS.get(type(part))
        if slot is not None and slot not in parts:
            parts[slot] = part
        elif part is not None:
            extra[name] = part
    scorecard = Scorecard(
        novelty=_part(parts, "novelty", NoveltySummary),
        coverage=_part(parts, "coverage", CoverageSummary),
        evals=_part(parts, "evals", EvalSummary),
        budgets=_part(parts, "budgets", BudgetSummary),
        telemetry=request.telemetry,
        extra=MappingProxyType(extra) if extra else _EMPTY,
    )
    return Decision(effect, tuple(reasons), tuple(followups), scorecard, tuple(outcomes))


def unanswered(request: GateRequest, rule: str, reason: str) -> Decision:
    """The decision when a rule did not answer in time (``[gate].rule_timeout``): DENY, whatever
    the rule's cap or advisory — the answers of the rules after it are not known either."""
    fix = f"Fix the gate rule {rule}" if rule else "Fix the gate rules"
    followup = Followup("fix-gate-rule", fix)
    scorecard = Scorecard(telemetry=request.telemetry)
    return Decision(Effect.DENY, (reason,), (followup,), scorecard)


_P = TypeVar("_P")

_SLOTS: Mapping[type, str] = MappingProxyType(
    {
        NoveltySummary: "novelty",
        CoverageSummary: "coverage",
        EvalSummary: "evals",
        BudgetSummary: "budgets",
    }
)


def _part(parts: Mapping[str, object], slot: str, kind: type[_P]) -> _P | None:
    part = parts.get(slot)
    return part if isinstance(part, kind) else None


def _evaluate(
    rule: Rule, name: str, request: GateRequest, policy: GatePolicy
) -> tuple[RuleResult, str]:
    """The rule's result, and, if it failed (raised, or answered what is no result), how."""
    try:
        result = _well_formed(rule.evaluate(request, policy))
        return (result if name in BUILTIN_NAMES else _bounded(name, result)), ""
    except BaseException as exc:  # noqa: BLE001 - whatever a plugin rule raises (a BaseException
        # of its own too: it took the daemon down) must not let a change through
        failure = f"rule {name} failed ({described(exc)[:MAX_FAILURE]})"
        return _failed(name, f"{failure}, so the gate denies"), failure


def _failed(name: str, reason: str) -> RuleResult:
    return RuleResult(
        Effect.DENY, (reason,), (Followup("fix-gate-rule", f"Fix the gate rule {name}"),)
    )


MAX_FAILURE = 300  # characters of a failed rule's exception in its reason
MAX_PART_DEPTH = 64  # levels of a plugin rule's scorecard part
# A plugin rule's answer as recorded, at most: its reasons and follow-ups (then one reason
# counting the rest), each text cut; its scorecard part's characters (strings, a value each
# else), past which the rule failed. One 30 MB reason was stored and answered; 2,000,000 of them
# took 11 s and held every other client ~2 s.
MAX_RULE_REASONS = 100
MAX_RULE_FOLLOWUPS = 100
MAX_REASON_CHARS = 1_000
MAX_SLUG_CHARS = 200
MAX_PART_CHARS = 1_000_000
MAX_RULE_TIMEOUT = 3_600.0
MAX_PART_INT_BITS = 13_950  # ~4,200 digits: Python's int-to-text conversion stops at 4,300


def _well_formed(result: object) -> RuleResult:
    """A plugin rule's answer as the decision takes it, else TypeError: ``reasons`` text
    (a str alone read as its characters), ``followups`` :class:`Followup` s, its scorecard
    part plain data (one that held itself failed the decision's record after it was stored)."""
    if not isinstance(result, RuleResult):
        raise TypeError(f"evaluate returned {type(result).__name__}, not a RuleResult")
    effect = Effect(result.effect)
    reasons, followups = result.reasons, result.followups
    if not isinstance(reasons, tuple | list) or not all(type(r) is str for r in reasons):
        raise TypeError("RuleResult.reasons must be a tuple of str")
    if not isinstance(followups, tuple | list) or not all(map(_is_followup, followups)):
        raise TypeError("RuleResult.followups must be a tuple of Followup")
    if type(result.scorecard) not in _SLOTS:
        _part_size(result.scorecard, MAX_PART_DEPTH, MAX_PART_CHARS)
    return RuleResult(effect, tuple(reasons), tuple(followups), result.scorecard)


def _bounded(name: str, result: RuleResult) -> RuleResult:
    """A plugin rule's reasons and follow-ups as a decision records them (``MAX_RULE_*``);
    TypeError for a scorecard part — one of the four summaries too — past ``MAX_PART_CHARS``."""
    if _part_size(result.scorecard, MAX_PART_DEPTH, MAX_PART_CHARS) > MAX_PART_CHARS:
        raise TypeError(f"RuleResult.scorecard holds over {MAX_PART_CHARS:,} characters")
    reasons = [_cut(r, MAX_REASON_CHARS) for r in result.reasons[:MAX_RULE_REASONS]]
    if len(result.reasons) > MAX_RULE_REASONS:
        left = len(result.reasons) - MAX_RULE_REASONS
        reasons.append(f"rule {name}: {left:,} more reasons not shown")
    followups = tuple(
        Followup(
            _cut(f.slug, MAX_SLUG_CHARS), _cut(f.description, MAX_REASON_CHARS), f.recommended
        )  # fmt: skip
        for f in result.followups[:MAX_RULE_FOLLOWUPS]
    )
    return RuleResult(result.effect, tuple(reasons), followups, result.scorecard)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters)"


def _is_followup(item: object) -> bool:
    return (
        isinstance(item, Followup)
        and type(item.slug) is str
        and type(item.description) is str
        and type(item.recommended) is bool
    )


def _part_size(value: object, depth: int, room: int) -> int:
    """A scorecard part's size as its record holds it: its strings' characters (keys too), a
    value that is not JSON by the text it is recorded as, 1 for any other; a bounded look, it
    stops counting past ``room``. TypeError past ``MAX_PART_DEPTH`` levels, or for an integer
    JSON's text cannot hold (over ~4,200 digits: its record failed to be written)."""
    if depth == 0:
        raise TypeError(f"RuleResult.scorecard nests deeper than {MAX_PART_DEPTH} levels")
    if isinstance(value, str):
        return len(value)
    if isinstance(value, bool | float) or value is None:
        return 1
    if isinstance(value, int):
        if value.bit_length() > MAX_PART_INT_BITS:
            raise TypeError("RuleResult.scorecard holds an integer of over 4,200 digits")
        return 1
    items: Iterable[object]
    if isinstance(value, Mapping):
        items = (x for k, v in value.items() for x in (_key_text(k), v))
    elif isinstance(value, list | tuple | set | frozenset):
        items = value
    elif hasattr(value, "__dataclass_fields__"):
        items = (getattr(value, name) for name in value.__dataclass_fields__)
    else:
        return len(text_of(value))
    size = 1
    for item in items:
        size += _part_size(item, depth - 1, room - size)
        if size > room:
            break
    return size


def _key_text(key: object) -> str:
    return key if isinstance(key, str) else text_of(key, str)
