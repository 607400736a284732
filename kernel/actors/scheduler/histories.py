"""Stored histories of ended runs, one copy however many taps read it at once.

A TapRun of a run the scheduler does not hold (ended before the daemon's start, or let go by
``[scheduler] recent_runs`` / ``recent_run_bytes`` — a run of large outputs at once) reads its
events from the store. Each tap read its own copy and kept it for the stream's life: 40 taps of a
run of 20 steps of 0.5 MB that never read took 800 MB, 200 taps of 30 steps of 2 MB 16 GB and
stalled the loop 30 s (a hunt). Concurrent taps of one run now share one read, and later taps
the copy an earlier one still holds (``shared_reads``).

Only an ended run's history is shared: a live run's tapper must read the store after it
subscribed, or an event committed in between would be in neither.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import overload

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


def ended(history: SharedHistory) -> bool:
    """Whether the history holds its run's end (near its close: only attestations follow)."""
    return any(e.kind in TERMINAL_KINDS for e in reversed(history))
