"""The built-in change-gate rules — novelty, coverage, evals, budgets — contributed the way any
plugin contributes rules (``register_gate_rules``). See README.md, "Change gates (policy)"."""

from __future__ import annotations

from typing import Any

from foundry.kernel import BUILTIN_GATE_RULES, hookimpl


@hookimpl
def register_gate_rules() -> list[Any]:
    return list(BUILTIN_GATE_RULES)
