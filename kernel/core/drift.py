"""Replay drift: recorded vs current output, token and cost deltas, within tolerance. Pure."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from foundry.kernel.core.ids import compact_json


@dataclass(frozen=True)
class Tolerance:
    """``[replay]`` in foundry.toml. Defaults demand an exact reproduction."""

    token_tolerance: float = 0.0  # |Δ(tokens in + out)| allowed
    cost_tolerance: float = 0.0  # |Δcost| allowed
    output_similarity: float = 1.0  # 1.0 = identical JSON; lower accepts near matches


@dataclass(frozen=True)
class Drift:
    recorded: Any
    current: Any
    token_delta: float
    cost_delta: float
    similarity: float
    within_tolerance: bool


def similarity(recorded: Any, current: Any) -> float:
    """1.0 for equal JSON values, else the difflib ratio of their compact JSON texts."""
    if recorded == current:
        return 1.0
    return difflib.SequenceMatcher(None, compact_json(recorded), compact_json(current)).ratio()


def drift(
    recorded: Any,
    current: Any,
    recorded_usage: Mapping[str, float],
    current_usage: Mapping[str, float],
    tolerance: Tolerance,
) -> Drift:
    tokens = _tokens(current_usage) - _tokens(recorded_usage)
    cost = float(current_usage.get("cost", 0.0)) - float(recorded_usage.get("cost", 0.0))
    alike = similarity(recorded, current)
    within = (
        alike >= tolerance.output_similarity
        and abs(tokens) <= tolerance.token_tolerance
        and abs(cost) <= tolerance.cost_tolerance + 1e-12
    )
    return Drift(recorded, current, tokens, cost, alike, within)


def _tokens(usage: Mapping[str, float]) -> float:
    return float(usage.get("tokens_in", 0)) + float(usage.get("tokens_out", 0))
