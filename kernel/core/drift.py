"""Replay drift: recorded vs current output, token and cost deltas, within tolerance. Pure."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from foundry.kernel.core.ids import compact_json
from foundry.kernel.core.json_input import same_json


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


# Characters of each text difflib compares: its time grows with the product of their lengths
# (a replayed output of megabytes held the daemon's loop for seconds).
COMPARED = 20_000


def similarity(recorded: Any, current: Any) -> float:
    """1.0 for equal JSON values, else the difflib ratio of their compact JSON texts — of a
    text longer than ``COMPARED``, its first and last ``COMPARED // 2`` characters, the ratio
    then held under what the texts' lengths allow (``2·shorter / both``) and under 1."""
    if same_json(recorded, current):
        return 1.0
    a, b = compact_json(recorded), compact_json(current)
    if len(a) <= COMPARED and len(b) <= COMPARED:
        return difflib.SequenceMatcher(None, a, b).ratio()
    ratio = difflib.SequenceMatcher(None, _ends(a), _ends(b)).ratio()
    return min(ratio, 2 * min(len(a), len(b)) / (len(a) + len(b)), 1 - 1 / (len(a) + len(b)))


def _ends(text: str) -> str:
    half = COMPARED // 2
    return text if len(text) <= COMPARED else text[:half] + text[-half:]


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
