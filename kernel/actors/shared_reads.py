"""Reads of one stored thing, shared: by whoever asks for it at once (the first asker reads, the
others wait for its answer), and by whoever asks while an earlier asker still holds what was
read (a weak reference finds it; it goes with its last holder). Nothing is kept past its use.

What the store reads back whole — an ended run's log, the run rebuilt from it — is large:
each caller read its own copy, and concurrent callers of one run held one each (30 GetRuns of
a run of 60 MB of outputs, 3.5 GB; 30 ReplayRuns, 5.8 GB and the loop stalled 1.6 s; 200
TapRuns, 16 GB: hunts). Only what cannot change may be shared (``share``): an ended run.
"""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

import trio

V = TypeVar("V")


class _Reading(Generic[V]):
    __slots__ = ("done", "found")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.found: V | None = None  # set when it is shared


class SharedReads(Generic[V]):
    """``read(key, ...)``: the value an earlier read of ``key`` gave that someone still holds,
    the read under way, else a read of its own. Values must take weak references."""

    def __init__(self) -> None:
        self._held: weakref.WeakValueDictionary[Hashable, V] = weakref.WeakValueDictionary()
        self._reading: dict[Hashable, _Reading[V]] = {}

    async def read(
        self,
        key: Hashable,
        read: Callable[[], Awaitable[V]],
        share: Callable[[V], bool] = lambda _: True,
    ) -> V:
        """``read()``'s value for ``key``, shared if ``share`` says it may be."""
        held = self._held.get(key)
        if held is not None:
            return held
        reading = self._reading.get(key)
        if reading is not None:
            await reading.done.wait()
            if reading.found is not None:
                return reading.found
            return await read()  # it failed, was cancelled or may not be shared: its own
        reading = self._reading[key] = _Reading()
        try:
            found = await read()
            if share(found):
                reading.found = found
                self._held[key] = found
            return found
        finally:
            del self._reading[key]
            reading.done.set()
