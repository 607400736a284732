"""Stored histories of ended runs, one copy however many taps read it at once.

A TapRun of a run the scheduler does not hold (ended before the daemon's start, or let go by
``[scheduler] recent_runs`` / ``recent_run_bytes`` — a run of large outputs at once) reads its
events from the store. Each tap read its own copy and kept it for the stream's life: 40 taps of a
run of 20 steps of 0.5 MB that never read took 800 MB, 200 taps of 30 steps of 2 MB 16 GB and
stalled the loop 30 s (a hunt). Here concurrent taps of one run share one read, and later taps
the copy an earlier one still holds (a weak reference: it goes with its last tapper).

Only an ended run's history is shared: a live run's tapper must read the store after it
subscribed, or an event committed in between would be in neither.
"""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import overload

import trio
from foundry.kernel.core.runs import TERMINAL_KINDS, RunEventRecord


class SharedHistory(Sequence[RunEventRecord]):
    """An ended run's events, read once: a tuple that can be weakly referenced (a tuple
    cannot). Its tappers hold it (``TapOpened.history``) as long as they send it."""

    __slots__ = ("__weakref__", "_events")

    def __init__(self, events: Iterable[RunEventRecord]) -> None:
        self._events = tuple(events)

    @overload
    def __getitem__(self, index: int) -> RunEventRecord: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[RunEventRecord, ...]: ...
    def __getitem__(self, index: int | slice) -> RunEventRecord | tuple[RunEventRecord, ...]:
        return self._events[index]

    def __len__(self) -> int:
        return len(self._events)


class _Reading:
    __slots__ = ("done", "found")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.found: SharedHistory | None = None


class StoredHistories:
    def __init__(self) -> None:
        self._kept: weakref.WeakValueDictionary[str, SharedHistory] = weakref.WeakValueDictionary()
        self._reading: dict[str, _Reading] = {}

    async def history(
        self, run_id: str, read: Callable[[], Awaitable[list[RunEventRecord]]]
    ) -> Sequence[RunEventRecord]:
        """The events of ``run_id``, a run not held in memory: the copy a tapper holds, the
        read under way, else ``read()`` — shared once it shows the run ended."""
        kept = self._kept.get(run_id)
        if kept is not None:
            return kept
        reading = self._reading.get(run_id)
        if reading is not None:
            await reading.done.wait()
            if reading.found is not None:
                return reading.found
            return await read()  # it failed, or the run had not ended: a read of its own
        reading = self._reading[run_id] = _Reading()
        try:
            found = await read()
            if _ended(found):
                reading.found = SharedHistory(found)
                self._kept[run_id] = reading.found
                return reading.found
            return found
        finally:
            del self._reading[run_id]
            reading.done.set()


def _ended(events: Sequence[RunEventRecord]) -> bool:
    """Whether the history holds its run's end (near its close: only attestations follow)."""
    return any(e.kind in TERMINAL_KINDS for e in reversed(events))
