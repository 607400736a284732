"""Reading a ``[[blocks]]`` table of foundry.toml into Block options; shared by block types."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from foundry.kernel.blocks.api import BlockKind
from foundry.kernel.core.json_input import same_json, toml_not_json

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
    # (a list is unhashable: the set's own error named no key)
    if not isinstance(kind, str) or kind not in {k.value for k in BlockKind}:
        raise ValueError(f"kind: expected 'observer' or 'mutator', got {kind!r}")
    return {
        "name": table["name"],
        "kind": kind,
        "sinks": sinks,
        "timeout": _number(table, "timeout", 60.0),
        "retries": _retries(table),
        "backoff": _number(table, "backoff", 0.2, allow_zero=True),
        "description": str(table.get("description", "")),
    }


def payload_filter(table: Mapping[str, Any]) -> dict[str, Any]:
    """``when = { key = value }``: the block sees only payloads whose keys equal these values."""
    when = table.get("when", {})
    if not isinstance(when, Mapping):
        raise ValueError("when: expected a table of payload key = value")
    return json_table(when, "when")


def json_table(table: Mapping[str, Any], key: str) -> dict[str, Any]:
    """``table`` when all of it is JSON a payload can hold, else ValueError naming the key: TOML
    also has dates and times, ``nan`` and ``inf`` — a relay setting one failed every run it
    reached ("not JSON serializable"), and a filter on ``nan`` never matched."""
    problem = toml_not_json(dict(table), key)
    if problem is not None:
        raise ValueError(problem)
    return dict(table)


def matches(when: Mapping[str, Any], payload: Mapping[str, Any]) -> bool:
    """Every key of ``when`` is in ``payload`` with an equal JSON value (``true`` is not ``1``,
    nor ``0`` ``false``: Python's ``==`` said they were)."""
    return all(key in payload and same_json(payload[key], value) for key, value in when.items())


MAX_SECONDS = 7 * 24 * 3600  # a timeout or backoff: a week at most, as a DAG step's
MAX_RETRIES = 99  # as a DAG step's retry.max_attempts (100 attempts)


def _number(
    table: Mapping[str, Any], key: str, default: float, *, allow_zero: bool = False
) -> float:
    """Seconds: a finite number up to ``MAX_SECONDS`` (``nan`` passed every comparison, and
    ``1e30`` left a chain waiting silently)."""
    value = table.get(key, default)
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not 0 <= value <= MAX_SECONDS or (value == 0 and not allow_zero):
        low = "0" if allow_zero else "more than 0"
        raise ValueError(f"{key}: expected seconds, from {low} to {MAX_SECONDS}, got {value!r}")
    return float(value)


def _retries(table: Mapping[str, Any]) -> int:
    value = table.get("retries", 0)
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or not 0 <= value <= MAX_RETRIES or value != int(value):
        raise ValueError(f"retries: expected a whole number from 0 to {MAX_RETRIES}, got {value!r}")
    return int(value)  # (3.0 was read as 3 before this check: it still is)
