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


def same_json(a: Any, b: Any) -> bool:
    """Equal as JSON values: Python's ``==`` has ``True == 1`` and ``False == 0.0``, which JSON
    tells apart (a replay read ``{"v": true}`` against ``{"v": 1}`` as the same output). Numbers
    compare as numbers (``1 == 1.0``: a protobuf Value carries every number as a double)."""
    if type(a) is bool or type(b) is bool:
        return type(a) is type(b) and a == b
    if isinstance(a, dict):
        return (
            isinstance(b, dict)
            and a.keys() == b.keys()
            and all(same_json(value, b[key]) for key, value in a.items())
        )
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(same_json, a, b))
    return not isinstance(b, dict | list) and bool(a == b)


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
