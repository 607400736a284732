"""Event ids and timestamps, byte-compatible with the public Foundry daemon."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any


def compact_json(value: Any) -> str:
    """Compact JSON with sorted keys: the form ids are computed over and payloads are stored in.

    NaN and infinities are refused (ValueError): they are not JSON, and the store would reject them.
    """
    return _compact(value)


# One encoder for every call: json.dumps with options builds a new one each time (~2 µs).
_compact = json.JSONEncoder(separators=(",", ":"), sort_keys=True, allow_nan=False).encode


def rfc3339(instant: datetime) -> str:
    """``2026-11-22T07:03:52.123456+00:00`` — RFC 3339 in UTC with an explicit ``+00:00``."""
    if instant.tzinfo is not UTC:
        instant = instant.astimezone(UTC)
    return instant.isoformat()


def event_id(event_type: str, project: str, occurred_at: datetime, payload: Any) -> str:
    """``evt_`` + hex of the first 12 bytes of SHA-256(type + project + occurred_at + payload)."""
    return event_id_of_json(event_type, project, occurred_at, compact_json(payload))


def event_id_of_json(
    event_type: str, project: str, occurred_at: datetime | str, payload_json: str
) -> str:
    """:func:`event_id` for a payload already in compact sorted JSON (and, optionally, an instant
    already in RFC 3339)."""
    stamp = occurred_at if isinstance(occurred_at, str) else rfc3339(occurred_at)
    material = event_type + project + stamp + payload_json
    return "evt_" + hashlib.sha256(material.encode()).digest()[:12].hex()


def is_event_id(text: str) -> bool:
    return len(text) == 28 and text.startswith("evt_") and all(c in _HEX for c in text[4:])


_HEX = frozenset("0123456789abcdef")


class Clock:
    """UTC wall clock whose readings strictly increase.

    Two identical emits in the same microsecond would otherwise get the same event id.
    """

    def __init__(self) -> None:
        self._last = datetime.min.replace(tzinfo=UTC)

    def now(self) -> datetime:
        instant = datetime.now(UTC)
        if instant <= self._last:
            instant = self._last + timedelta(microseconds=1)
        self._last = instant
        return instant
