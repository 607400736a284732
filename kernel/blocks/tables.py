"""Reading a ``[[blocks]]`` table of foundry.toml into Block options; shared by block types."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from foundry.kernel.blocks.api import BlockKind

COMMON_KEYS = frozenset(
    {"name", "type", "kind", "sinks", "timeout", "retries", "backoff", "when", "description"}
)


def common_options(
    table: Mapping[str, Any], extra_keys: set[str], *, default_kind: BlockKind
) -> dict[str, Any]:
    """The options every declared block has; raises ValueError naming a bad or unknown key."""
    unknown = set(table) - COMMON_KEYS - extra_keys
    if unknown:
        allowed = ", ".join(sorted(COMMON_KEYS | extra_keys))
        raise ValueError(f"unknown key {sorted(unknown)[0]!r} (allowed: {allowed})")
    sinks = table.get("sinks", [])
    if not isinstance(sinks, list) or not all(isinstance(s, str) and s for s in sinks):
        raise ValueError("sinks: expected a list of event types")
    kind = table.get("kind", default_kind)
    if kind not in {k.value for k in BlockKind}:
        raise ValueError(f"kind: expected 'observer' or 'mutator', got {kind!r}")
    return {
        "name": table["name"],
        "kind": kind,
        "sinks": sinks,
        "timeout": _number(table, "timeout", 60.0),
        "retries": int(_number(table, "retries", 0, allow_zero=True)),
        "backoff": _number(table, "backoff", 0.2, allow_zero=True),
        "description": str(table.get("description", "")),
    }


def payload_filter(table: Mapping[str, Any]) -> dict[str, Any]:
    """``when = { key = value }``: the block sees only payloads whose keys equal these values."""
    when = table.get("when", {})
    if not isinstance(when, Mapping):
        raise ValueError("when: expected a table of payload key = value")
    return dict(when)


def matches(when: Mapping[str, Any], payload: Mapping[str, Any]) -> bool:
    return all(payload.get(key) == value for key, value in when.items())


def _number(
    table: Mapping[str, Any], key: str, default: float, *, allow_zero: bool = False
) -> float:
    value = table.get(key, default)
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{key}: expected a {'non-negative' if allow_zero else 'positive'} number")
    return float(value)
