"""``foundry sql`` with the daemon stopped: its time limit holds however short (the same lost
interrupt the daemon's store had: one that came between the sandbox's statements let the query
run unbounded)."""

from __future__ import annotations

import time

import duckdb
import pytest
from foundry.kernel.cli.sql import run_file

HEAVY = (
    "SELECT count(*) FROM range(100000) a, range(100000) b "
    "WHERE (a.range * 7 + b.range * 13) % 1000003 = 17"
)


def test_a_time_limit_that_passes_between_the_sandboxs_statements_still_holds(tmp_path):
    path = tmp_path / "foundry.duckdb"
    duckdb.connect(str(path)).close()
    # (0.8 ms ran the query 69 s here: the window is a few hundred microseconds wide)
    for limit in (*(0.0002 * n for n in range(1, 21)), 0.01, 0.3):
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="time limit"):
            run_file(path, HEAVY, {}, 10, limit, 1 << 20)
        assert time.monotonic() - started < 3, limit
    assert run_file(path, "SELECT 42 AS n", {}, 10, 5.0, 1 << 20).rows


def test_a_query_of_the_file_is_held_to_the_stores_memory_limit(tmp_path):
    """Offline, DuckDB's own default held: 80% of the machine's memory for one query (a hunt)."""
    path = tmp_path / "foundry.duckdb"
    duckdb.connect(str(path)).close()
    sql = "SELECT current_setting('memory_limit') AS m"
    assert run_file(path, sql, {}, 10, 5.0, 1 << 20, "64MB").rows == ('["61.0 MiB"]',)


@pytest.mark.parametrize("rows", ["4294967297", "0", "-1", "x"])
def test_max_rows_past_what_a_query_request_holds_is_refused(rows, capsys):
    """QueryRequest.max_rows is a uint32: 4294967297 went to the daemon as 1, silently."""
    from foundry.kernel.cli.main import main

    with pytest.raises(SystemExit) as caught:
        main(["sql", "SELECT 1", "--max-rows", rows, "--addr", "127.0.0.1:1"])
    assert caught.value.code == 2
    assert "--max-rows" in capsys.readouterr().err
