"""Plugin gate rules and eval assertion types wrapped so the gate actor knows which one a
worker thread is in: a rule or assertion that has not answered in time is named in the denial
or error that replaces its answer, and in the log."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from foundry.kernel.core.evals import AssertionResult, AssertionType, RunFacts
from foundry.kernel.core.gate_policy import GatePolicy, GateRequest, Rule, RuleResult


class Watch:
    """What one decision's or judgement's worker thread is doing: whether it started and has
    finished (one past its time limit runs on, left to it), and the rule or assertion it is
    in, if any."""

    def __init__(self) -> None:
        self.started = False
        self.running = ""
        self.finished = False
        self._abandoned = False

    def begin(self) -> None:
        """On the worker thread, first: Abandoned if the loop left the job before it began
        (its thread then runs no plugin code; one that began just after its time limit ran
        on, counted nowhere)."""
        self.started = True
        if self._abandoned:
            raise Abandoned

    def left_running(self) -> bool:
        """On the loop, once past the time limit: whether the thread runs on (it began and has
        not finished). One that has not begun never will run plugin code (:meth:`begin`)."""
        self._abandoned = True
        return self.started and not self.finished


class Abandoned(Exception):
    """A worker thread's job the loop left before it began."""


class _WatchedRule:
    def __init__(self, rule: Rule, watch: Watch) -> None:
        self._rule, self._watch = rule, watch
        self.name: str = getattr(rule, "name", type(rule).__name__)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._rule, attr)

    def evaluate(self, request: GateRequest, policy: GatePolicy) -> RuleResult:
        self._watch.running = self.name
        try:
            return self._rule.evaluate(request, policy)
        finally:
            self._watch.running = ""


class _WatchedAssertion:
    def __init__(self, key: str, kind: AssertionType, watch: Watch, facts: RunFacts | None) -> None:
        self._kind, self._watch, self._key, self._facts = kind, watch, key, facts

    def __getattr__(self, attr: str) -> Any:  # ``name``, ``scopes``
        return getattr(self._kind, attr)

    def check(self, expected: Any, facts: RunFacts, step_id: str | None) -> AssertionResult:
        self._watch.running = self._key
        try:
            return self._kind.check(expected, self._facts or facts, step_id)
        finally:
            self._watch.running = ""


def watched_rules(rules: Iterable[Rule], watch: Watch) -> list[Rule]:
    return [_WatchedRule(rule, watch) for rule in rules]


def watched_assertions(
    kinds: Mapping[str, AssertionType], watch: Watch, facts: RunFacts | None = None
) -> dict[str, AssertionType]:
    """``kinds`` watched; ``facts``: what each is handed instead of the facts judged (the
    plugins' own copy)."""
    return {key: _WatchedAssertion(key, kind, watch, facts) for key, kind in kinds.items()}
