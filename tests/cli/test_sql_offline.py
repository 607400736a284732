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


def test_an_older_home_whose_archive_is_in_its_own_columns_is_still_read_offline(tmp_path):
    """A home the first release (schema 3) left, never upgraded, with an archive file in that
    release's columns: the views made for the home it is now in (a moved home's archive) are
    today's, which that file cannot bind — every offline query and export failed at connect
    (a review). Its own stored view serves."""
    from foundry.analytics import migrations
    from foundry.analytics.parquet import archive_dir, parquet_glob
    from foundry.kernel.cli.export import export_offline

    home = tmp_path / "home"
    home.mkdir()
    con = duckdb.connect(str(home / "foundry.duckdb"))
    con.execute(migrations.VERSION_TABLE)
    for step in migrations.MIGRATIONS[:3]:
        step.step(con, home)
        con.execute("INSERT INTO schema_version VALUES (?, now(), ?)",
                    [step.version, step.description])  # fmt: skip
    day = archive_dir(home) / "events" / "date=2026-10-01"
    day.mkdir(parents=True)
    # one archived event in that release's columns (no workflow_id, as its files had)
    columns = con.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_name = 'events' ORDER BY ordinal_position"
    ).fetchall()
    values = {"TIMESTAMP WITH TIME ZONE": "TIMESTAMPTZ '2026-10-01 00:00:00+00'",
              "INTEGER": "0", "BIGINT": "0", "BOOLEAN": "false", "JSON": "'{}'"}  # fmt: skip
    row = ", ".join(f"CAST({values.get(kind, repr('x_' + name))} AS {kind}) AS \"{name}\""
                    for name, kind in columns)  # fmt: skip
    assert "workflow_id" not in {name for name, _ in columns}
    con.execute(f"COPY (SELECT {row}) TO '{day}/p1.parquet' (FORMAT parquet)")
    glob = parquet_glob(archive_dir(home) / "events")
    con.execute(
        f"CREATE OR REPLACE VIEW archived_events AS SELECT * EXCLUDE (date) FROM "
        f"read_parquet('{glob}', hive_partitioning = true, union_by_name = true)"
    )
    con.close()
    path = home / "foundry.duckdb"
    assert run_file(path, "SELECT count(*) AS n FROM archived_events", {}, 10, 5.0,
                    1 << 20).rows == ("[1]",)  # fmt: skip
    assert export_offline(home, tmp_path / "out", None)["events"] == 1
