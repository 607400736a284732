"""An eval assertion: ``"steps": {"tally": {"min_words": 5}}`` in a scenario's ``expected``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from foundry.kernel import AssertionResult


@dataclass(frozen=True)
class MinWords:
    """Passes when the step's output ``words`` is at least the expected number."""

    name: str = "min_words"
    scopes: frozenset[str] = frozenset({"step"})

    def check(self, expected: Any, facts: Any, step_id: str | None) -> AssertionResult:
        if isinstance(expected, bool) or not isinstance(expected, int | float) or expected < 0:
            return AssertionResult(self.name, False, None, expected, step_id,
                                   "min_words: expected a number >= 0", error=True)  # fmt: skip
        output = facts.step(step_id).output
        words = output.get("words") if isinstance(output, dict) else None
        if not isinstance(words, int | float):
            return AssertionResult(self.name, False, words, expected, step_id,
                                   "the step's output has no number `words`")  # fmt: skip
        return AssertionResult(self.name, words >= expected, words, expected, step_id,
                               f"{words} words (at least {expected})")  # fmt: skip
