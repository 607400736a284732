"""Reading rows with large values in looks of bounded size.

DuckDB reads a query's values a vector (2,048 rows) at a time, and a scan whose pushed-down
filters keep only some rows reads only their values: a run of 1,000 steps of 100 KB outputs,
read whole, needed 200 MB at once and failed under ``[store] memory_limit`` (256 MB) — its
GetRun, its TapRun, ``foundry run get`` and ``attest export``, every time. So a query that
returns large values is asked in looks: the rowids it wants are found first (no values read),
then their rows a range of rowids at a time, each range sized from the last look's values to
read about ``LOOK_BYTES`` at once.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import duckdb

# A look covers from MIN_SPAN to MAX_SPAN rowids: few looks over many small values (one a
# rowid took seconds for 80,000 rows), little memory over large ones.
MIN_SPAN, MAX_SPAN = 8, 16_384
LOOK_BYTES = 8 << 20


def in_looks(
    con: duckdb.DuckDBPyConnection,
    sql: str,
    params: dict[str, Any],
    rowids: Sequence[int],
    *,
    newest_first: bool = False,
    enough: Callable[[], bool] = lambda: False,
) -> Iterator[tuple[Any, ...]]:
    """The rows of ``sql`` — which keeps rowids from ``$lo`` to ``$hi`` and returns the size of
    its large value last — over the sorted ``rowids``, look after look, from the lowest rowid
    (``newest_first``: from the highest; within a look, in the query's order), until
    ``enough()`` says so before a look. The store's query runs in one snapshot: the rowids stay
    valid."""
    unread, span = list(rowids), MIN_SPAN  # the values' sizes are not known yet
    while unread and not enough():
        # (a span never reaches past the rowids wanted: grown fourfold from a look of small
        # rows, it read 126 large rows of other runs after a run's last event)
        if newest_first:
            hi = unread[-1]
            lo = max(hi - span + 1, unread[0])
            unread = unread[: bisect.bisect_left(unread, lo)]
        else:
            lo = unread[0]
            hi = min(lo + span - 1, unread[-1])
            unread = unread[bisect.bisect_right(unread, hi) :]
        rows = con.execute(sql, {**params, "lo": lo, "hi": hi}).fetchall()
        yield from rows
        span = next_span(span, len(rows), sum(row[-1] or 0 for row in rows))


def next_span(span: int, rows: int, size: int) -> int:
    """The rowids the next look covers, after one of ``span`` rowids read ``rows`` values of
    ``size`` bytes: about ``LOOK_BYTES`` of them at their rows' average size, growing at most
    fourfold a look (the sizes ahead are a guess)."""
    if rows == 0:
        return min(span * 4, MAX_SPAN)
    wanted = LOOK_BYTES * span // max(size, 1)
    return max(MIN_SPAN, min(wanted, span * 4, MAX_SPAN))
