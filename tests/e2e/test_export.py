"""``foundry export parquet`` end to end: through a running daemon (the Analytics ExportParquet
RPC), and offline (the daemon stopped: the CLI reads the file read-only); a database newer than
the daemon refuses the start in one line."""

from __future__ import annotations

import json
import subprocess
import sys

import duckdb
from foundry.analytics.schema import SCHEMA_VERSION
from foundry.proto import foundry_api as api


def read_back(folder, table):
    with duckdb.connect() as con:
        return con.execute(
            f"SELECT count(*), count(DISTINCT date) FROM read_parquet("
            f"'{folder}/{table}/*/*.parquet', hive_partitioning = true)"
        ).fetchone()


def test_export_through_the_daemon_then_offline(make_daemon, tmp_path):
    daemon = make_daemon()
    for n in range(3):
        daemon.call(lambda f, _r, n=n: f.emit(api.EmitRequest(
            event_type="nobody_sinks", project="p",
            payload_json=json.dumps({"n": n}))))  # fmt: skip
    online = daemon.cli("export", "parquet", str(tmp_path / "online"), "--json", check=True)
    counts = json.loads(online.stdout)["rows"]
    assert counts["events"] == 3
    assert counts["workflows"] == 3
    assert read_back(tmp_path / "online", "events") == (3, 1)
    again = daemon.cli("export", "parquet", str(tmp_path / "online"))
    assert again.returncode == 1
    assert "FAILED_PRECONDITION" in again.stderr
    assert "already exists and is not empty" in again.stderr

    daemon.stop()
    offline = daemon.cli("export", "parquet", str(tmp_path / "offline"), "--home",
                         str(daemon.home), check=True)  # fmt: skip
    assert "directly (read-only)" in offline.stderr
    assert "wrote" in offline.stdout
    assert read_back(tmp_path / "offline", "events") == (3, 1)
    into_home = daemon.cli("export", "parquet", str(daemon.home / "archive" / "x"), "--home",
                           str(daemon.home))  # fmt: skip
    assert into_home.returncode == 1
    assert "is inside the daemon's home" in into_home.stderr
    assert not (daemon.home / "archive" / "x").exists()


def test_a_table_folder_linked_into_the_home_is_refused_online_and_offline(make_daemon, tmp_path):
    """Only DIR was checked against the daemon's home: ``DIR/events -> HOME/spool/attestations``
    (empty at rest) put the export's Parquet files in the attestation spool, which the next
    start could not clear (a hunt)."""
    daemon = make_daemon()
    daemon.call(lambda f, _r: f.emit(api.EmitRequest(event_type="e", project="p")))
    spool = daemon.home / "spool" / "attestations"
    spool.mkdir(parents=True, exist_ok=True)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "events").symlink_to(spool)

    online = daemon.cli("export", "parquet", str(tmp_path / "out"))
    assert online.returncode == 1
    assert "INVALID_ARGUMENT" in online.stderr
    assert "inside the daemon's home" in online.stderr
    daemon.stop()
    offline = daemon.cli("export", "parquet", str(tmp_path / "out"), "--home", str(daemon.home))
    assert offline.returncode == 1
    assert "inside the daemon's home" in offline.stderr
    assert list(spool.iterdir()) == []


def test_a_folder_with_a_backslash_is_refused_online_and_offline(make_daemon, tmp_path):
    """DuckDB's COPY reads a backslash as a separator, Python does not: ``x\\..\\HOME\\archive``
    passed the check against the daemon's home and wrote into its archive, where the next start
    counted the rows twice (a hunt)."""
    daemon = make_daemon()
    daemon.call(lambda f, _r: f.emit(api.EmitRequest(event_type="e", project="p")))
    (tmp_path / "x").mkdir()
    sneaky = f"{tmp_path / 'x'}\\..\\{daemon.home.name}\\archive"
    before = sorted(p.name for p in (daemon.home / "archive").rglob("*"))
    online = daemon.cli("export", "parquet", sneaky)
    assert online.returncode == 1
    assert "FAILED_PRECONDITION" in online.stderr
    assert "a path with a backslash is refused" in online.stderr
    daemon.stop()
    offline = daemon.cli("export", "parquet", sneaky, "--home", str(daemon.home))
    assert offline.returncode == 1
    assert "a path with a backslash is refused" in offline.stderr
    assert sorted(p.name for p in (daemon.home / "archive").rglob("*")) == before


def test_a_newer_database_refuses_the_start_in_one_line(make_daemon, tmp_path):
    daemon = make_daemon()
    daemon.stop()
    with duckdb.connect(str(daemon.home / "foundry.duckdb")) as con:
        con.execute("INSERT INTO schema_version VALUES (42, now(), 'the future')")
    done = subprocess.run(
        [sys.executable, "-m", "foundry.kernel.cli", "serve", "--config", str(daemon.config),
         "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=60,
        env={**__import__("os").environ, "FOUNDRY_HOME": str(daemon.home)},
    )  # fmt: skip
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.startswith("foundry:")]
    assert len(lines) == 1, done.stderr
    assert f"schema version 42 is newer than this Foundry knows ({SCHEMA_VERSION})" in lines[0]


def test_exports_into_one_new_folder_at_once_write_its_rows_once(make_daemon, tmp_path):
    """Each export found the new folder empty and wrote: every row two or three times (a hunt).
    The folder is held by one export until it ends (an flock, which a killed process drops):
    another, at once or after, is refused."""
    from concurrent.futures import ThreadPoolExecutor

    daemon = make_daemon()
    for n in range(40):
        daemon.call(lambda f, _r, n=n: f.emit(api.EmitRequest(
            event_type="nobody_sinks", project="p",
            payload_json=json.dumps({"n": n, "pad": "x" * 200_000}))))  # fmt: skip
    target = tmp_path / "together"
    with ThreadPoolExecutor(3) as pool:
        done = list(pool.map(lambda _: daemon.cli("export", "parquet", str(target)), range(3)))
    assert sorted(d.returncode for d in done) == [0, 1, 1], [d.stderr for d in done]
    for refused in (d for d in done if d.returncode):
        assert "FAILED_PRECONDITION" in refused.stderr
        assert ("another export is writing there" in refused.stderr
                or "already exists and is not empty" in refused.stderr)  # fmt: skip
    assert read_back(target, "events") == (40, 1)
    assert not (target / ".foundry-export.lock").exists()
