"""Event ids and timestamps, byte-compatible with the public Foundry daemon."""

from __future__ import annotations

import functools
import hashlib
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from foundry.kernel.core import upstream_json


def compact_json(value: Any) -> str:
    """Compact JSON with sorted keys and ASCII escapes (``\\u00e9``): a stable text of a value,
    for cache keys, diffs and stored run records. Event ids use :func:`payload_json_of` instead.

    NaN and infinities are refused (ValueError): they are not JSON, and the store would reject them.
    """
    return _compact(value)


# One encoder for every call: json.dumps with options builds a new one each time (~2 µs).
_compact = json.JSONEncoder(separators=(",", ":"), sort_keys=True, allow_nan=False).encode


def payload_json_of(payload: Any) -> str:
    """An event payload as the public Foundry daemon hashes (and we store) it: serde_json's compact
    output — sorted keys, raw UTF-8, its number forms (see ``core/upstream_json.py``)."""
    return upstream_json.dumps(payload)


def occurred_stamp(instant: datetime) -> str:
    """An event's ``occurred_at`` as the public daemon hashes it: chrono's RFC 3339 "AutoSi" form
    in UTC with ``+00:00`` — no fraction on a whole second, 3 digits when the microseconds are a
    multiple of 1000, else 6 (``…:52+00:00``, ``…:52.123+00:00``, ``…:52.123456+00:00``)."""
    if instant.tzinfo is not UTC:
        instant = instant.astimezone(UTC)
    micros = instant.microsecond
    if not micros:
        return instant.isoformat()
    if micros % 1000:
        return f"{_second(instant)}.{micros:06d}+00:00"
    return f"{_second(instant)}.{micros // 1000:03d}+00:00"


def rfc3339(instant: datetime) -> str:
    """``2026-11-22T07:03:52.123456+00:00`` — RFC 3339 in UTC with an explicit ``+00:00``, always
    6 fraction digits, none on a whole second (Status and stored records; ids use
    :func:`occurred_stamp`)."""
    if instant.tzinfo is not UTC:
        instant = instant.astimezone(UTC)
    micros = instant.microsecond
    if not micros:
        return instant.isoformat()
    return f"{_second(instant)}.{micros:06d}+00:00"


# The text of the last few seconds stamped (``2026-11-22T07:03:52``): the engine stamps each event
# and execution, mostly within one second, and isoformat of an aware instant costs ~2x this.
_SECONDS: dict[tuple[int, int, int, int, int, int], str] = {}


def _second(instant: datetime) -> str:
    """``instant`` (UTC) to the second, as isoformat writes it."""
    key = (instant.second, instant.minute, instant.hour, instant.day, instant.month, instant.year)
    text = _SECONDS.get(key)
    if text is None:
        if len(_SECONDS) >= 16:
            _SECONDS.clear()
        text = _SECONDS[key] = instant.replace(microsecond=0, tzinfo=None).isoformat()
    return text


def event_id(event_type: str, project: str, occurred_at: datetime, payload: Any) -> str:
    """``evt_`` + hex of the first 12 bytes of SHA-256(type + project + occurred_at + payload),
    over UTF-8 and joined with nothing, with ``occurred_at`` as :func:`occurred_stamp` and the
    payload as :func:`payload_json_of` — the public Foundry daemon's recipe, byte for byte."""
    return event_id_of_json(event_type, project, occurred_at, payload_json_of(payload))


def event_id_of_json(
    event_type: str, project: str, occurred_at: datetime | str, payload_json: str
) -> str:
    """:func:`event_id` for a payload already in :func:`payload_json_of` form (and, optionally, an
    instant already in :func:`occurred_stamp` form)."""
    stamp = occurred_at if isinstance(occurred_at, str) else occurred_stamp(occurred_at)
    material = event_type + project + stamp + payload_json
    return "evt_" + hashlib.sha256(material.encode()).hexdigest()[:24]  # its first 12 bytes


def is_event_id(text: str) -> bool:
    return len(text) == 28 and text.startswith("evt_") and all(c in _HEX for c in text[4:])


# Ids, event types and projects: at most this many characters, from a client (``edge/grpc/
# message_check.py``) or a block's emission (a 20 MB type cut every default-client watcher off).
MAX_ID_LENGTH = 256

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


@functools.lru_cache(maxsize=1024)
def block_slug(name: str) -> str:
    """A block's name as its artifact folder names it: lower case, each run of characters that
    are not letters or digits a dash ("block" when nothing is left). Letters of any script stay
    (a name of only non-Latin letters was "block", and two such blocks shared a folder)."""
    slug = _NOT_SLUG.sub("-", name.lower()).strip("-") or "block"
    if len(slug.encode()) <= MAX_SLUG_BYTES:
        return slug
    # a file name is at most 255 bytes, the event id and its dot included: a long name (or 80
    # letters of three bytes each) keeps its start and a digest of the whole
    kept = slug.encode()[: MAX_SLUG_BYTES - 17].decode(errors="ignore").rstrip("-")
    return f"{kept}-{hashlib.sha256(name.encode(errors='surrogatepass')).hexdigest()[:16]}"


_NOT_SLUG = re.compile(r"(?:[^\w]|_)+")
MAX_SLUG_BYTES = 200
