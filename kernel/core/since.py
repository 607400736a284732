"""``since``: where a backlog of stored events begins (``Admin.ListEvents``, ``foundry watch
--since``): empty (any time), a duration back from now (``90s``, ``15m``, ``1h30m``, ``2d``) or an
RFC 3339 instant (``2026-01-02T03:04:05Z``; no offset means UTC). Pure, so the CLI refuses a bad
one before it says it is watching, with the daemon's own words."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_since(text: str, now: datetime) -> datetime:
    """The instant ``text`` names, in UTC; ValueError (its message starting ``since: ``) when it
    names none."""
    text = text.strip()
    if not text:
        return EPOCH
    if _is_durations(text):
        seconds = sum(float(n) * UNIT_SECONDS[u] for n, u in DURATION.findall(text))
        try:
            return now - timedelta(seconds=seconds)
        except OverflowError:  # further back than datetime goes: everything stored
            return EPOCH
    try:
        instant = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"since: {text[:100]!r} is neither a duration (90s, 15m, 2h, 1d) nor an RFC 3339 "
            "time (2026-01-02T03:04:05Z)"
        ) from None
    if instant.tzinfo is None:
        return instant.replace(tzinfo=UTC)
    try:
        return instant.astimezone(UTC)
    except OverflowError:  # past the year 9999 or before the year 1 once in UTC
        raise ValueError(f"since: {text[:100]!r} is out of the range of times") from None


def _is_durations(text: str) -> bool:
    """``90s``, ``1h30m``: one or more number-unit pairs and nothing else."""
    return len(text) <= 40 and DURATION.sub("", text) == ""
