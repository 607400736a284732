"""What a block emitted, checked as the kernel stores it — one rule for the engine and for
``foundry.kernel.testing.run_block``, so a plugin's test refuses what the daemon would.

A block's emissions are stored all together or not at all: past the chain's event budget, an
event type that is not UTF-8, a payload that is not JSON (NaN, a lone surrogate, a value JSON has
no form for, an int too large for a JSON number), one past ``max_event_bytes`` of JSON, or one
nested deeper than Emit accepts — none is stored and the execution fails, naming why.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, NamedTuple

from foundry.kernel.core.failures import described
from foundry.kernel.core.ids import payload_json_of
from foundry.kernel.core.json_input import MAX_DEPTH, check_depth
from foundry.kernel.core.records import decoded, storable
from foundry.kernel.errors import InvalidArgument


class RawEmission(NamedTuple):
    """One emission as a block made it: its JSON when ``emit`` took it (else None)."""

    event_type: str
    payload: Any
    taken_json: str | None


class StoredEmission(NamedTuple):
    """One emission as the kernel stores it: a payload of its own, and that payload's JSON."""

    event_type: str
    payload: dict[str, Any]
    payload_json: str


class _Refused(Exception):
    pass


def stored_emissions(
    emissions: Sequence[RawEmission], *, room: int, chain_limit: int, max_event_bytes: int
) -> tuple[tuple[StoredEmission, ...], str]:
    """The emissions as stored, or none and why (``room``: what is left of the chain's event
    budget of ``chain_limit``)."""
    if len(emissions) > room:  # none of them is stored: a runaway block filled disks
        return (), (
            f"emitted {len(emissions)} events, past the chain event limit {chain_limit}: the "
            f"chain holds {chain_limit - room} already, its root included, room for {room}"
        )
    try:
        return tuple(_stored(emitted, max_event_bytes) for emitted in emissions), ""
    except _Refused as exc:
        return (), str(exc)
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        # a non-JSON value, an int too large for a JSON number, NaN, a lone surrogate
        return (), f"emitted a payload that is not JSON: {described(exc)}"
    except Exception:
        raise  # a bug of ours: its chain fails
    except BaseException as exc:  # noqa: BLE001 - a plugin's value raised SystemExit or
        # KeyboardInterrupt while read (a dict subclass's items()): it ended the daemon
        return (), f"emitted a payload that could not be read: {described(exc)}"


def _stored(emitted: RawEmission, max_event_bytes: int) -> StoredEmission:
    event_type, payload, taken = emitted
    if storable(event_type) != event_type:
        raise _Refused(f"emitted an event type that is not UTF-8: {event_type!r}")
    try:
        payload_json = taken if taken is not None else payload_json_of(payload)
    except RecursionError:  # ~1,000 levels: past the depth limit checked below, by far
        raise _Refused(_too_deep(event_type)) from None
    if (size := oversized(payload_json, max_event_bytes)) is not None:
        raise _Refused(
            f"emitted a {event_type[:100]!r} payload of {size:,} bytes of JSON, "
            f"past [engine] max_event_bytes ({max_event_bytes:,})"
        )
    # the block can no longer change it; what emit() took is read back from its JSON
    if taken is None:
        own = decoded(payload, payload_json)
    else:
        own = json.loads(taken)  # NaN read back fails as not JSON below
        # An Emission a plugin built with JSON of its own (NaN, keys unsorted, a key twice)
        # was stored as given: a Trace that failed ever after, an id no one could recompute.
        if type(own) is not dict or payload_json_of(own) != taken:
            raise _Refused(f"emitted a {event_type[:100]!r} payload whose JSON emit() did not "
                           "make (build emissions with ctx.emit)")  # fmt: skip
    # Emit's limit too (an event nested deeper than this, no client could send or read)
    if payload_json.count("[") + payload_json.count("{") > MAX_DEPTH:
        try:
            check_depth(own, "payload", MAX_DEPTH)
        except InvalidArgument:
            raise _Refused(_too_deep(event_type)) from None
    return StoredEmission(event_type, own, payload_json)


def oversized(payload_json: str, limit: int) -> int | None:
    """The UTF-8 size of a payload's stored JSON past ``limit``, else None: a root's as well as
    an emission's (serde_json's numbers made a 1.25 MB Emit a 4.75 MB event, which cut off every
    default-client watcher)."""
    if len(payload_json) * 4 <= limit:  # 4 bytes a character at most: it fits
        return None
    size = len(payload_json.encode("utf-8", "surrogatepass"))
    return size if size > limit else None


def _too_deep(event_type: str) -> str:
    return f"emitted a {event_type[:100]!r} payload nested deeper than {MAX_DEPTH} levels"
