"""GetRun's reply for an ended run, encoded once for every caller that asks for it.

An ended run no longer changes, so each caller of GetRun got the same bytes, encoded again: 50
callers of a run of 40 MB of outputs, reading nothing, held 50 replies (2 GB) until their
connections gave up, and encoding each cost the loop ~25 µs a step. Now one encoding is shared:
while any caller's send still holds it (a weak reference finds it), and the recent ones for
later polls (an LRU bounded by bytes). Callers that ask while it is being made wait for it
instead of making their own. A run not ended yet is encoded for each caller, as before.

Everything here runs on the daemon's one event-loop thread, in grpclib's (asyncio) handlers.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable

from foundry.kernel.actors.scheduler.messages import RunView
from foundry.kernel.edge.worker_threads import made_once

ENDED = frozenset(("SUCCEEDED", "FAILED", "CANCELED"))
KEPT_BYTES = 64 << 20  # recent replies held for later callers (one larger one is never kept)
KEPT_ENTRIES = 64


class Reply:
    """An encoded reply (a weak reference needs an object; ``bytes`` takes none)."""

    __slots__ = ("data", "__weakref__")

    def __init__(self, data: bytes) -> None:
        self.data = data


def ended_key(view: RunView) -> Hashable | None:
    """What names an ended run's reply (anything appended to a run changes ``updated_at`` and
    the counts), or None for a run that can still change."""
    if view.status not in ENDED:
        return None
    return (view.run_id, view.status, view.updated_at, len(view.steps), len(view.attestation_ids))


class SharedRunReplies:
    def __init__(self, kept_bytes: int = KEPT_BYTES, kept_entries: int = KEPT_ENTRIES) -> None:
        self._kept_bytes, self._kept_entries = kept_bytes, kept_entries
        self._kept: OrderedDict[Hashable, Reply] = OrderedDict()
        self._held = 0
        self._in_use: weakref.WeakValueDictionary[Hashable, Reply] = weakref.WeakValueDictionary()
        self._making: dict[Hashable, asyncio.Event] = {}

    async def reply(self, view: RunView, encode: Callable[[RunView], Awaitable[bytes]]) -> Reply:
        """``encode(view)``, made once for an ended run while it is in use or kept."""
        key = ended_key(view)
        if key is None:
            return Reply(await encode(view))
        made: list[Reply] = []

        async def make() -> None:
            reply = Reply(await encode(view))
            self._in_use[key] = reply
            self._keep(key, reply)
            made.append(reply)

        await made_once(self._making, key, lambda: self._found(key) is not None, make,
                        asyncio.Event)  # fmt: skip
        found = made[0] if made else self._found(key)
        assert found is not None  # (made_once returned: found it, with no await since)
        return found

    def _found(self, key: Hashable) -> Reply | None:
        found = self._kept.get(key)
        if found is not None:
            self._kept.move_to_end(key)
            return found
        return self._in_use.get(key)

    def _keep(self, key: Hashable, reply: Reply) -> None:
        size = len(reply.data)
        if size > self._kept_bytes:
            return  # shared while in use only
        self._kept[key] = reply
        self._held += size
        while len(self._kept) > self._kept_entries or self._held > self._kept_bytes:
            self._held -= len(self._kept.popitem(last=False)[1].data)

    @property
    def kept_bytes(self) -> int:
        return self._held
