"""Schema migrations, Parquet export and retention, on the store actor and a real DuckDB file."""

import json
import os
import sys
import time
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import duckdb
import pytest
import trio
from foundry.analytics import migrations
from foundry.analytics.parquet import DATED
from foundry.kernel.actors.mailbox import ask, reply_pair
from foundry.kernel.actors.store.actor import Store
from foundry.kernel.actors.store.messages import Append, ExportParquet, RunRetention
from foundry.kernel.core.governance import GateDecisionRecord
from foundry.kernel.core.ids import compact_json, event_id
from foundry.kernel.core.records import Event, ExecutionRecord, FinishedChain
from foundry.kernel.core.runs import RunEventRecord, RunSubmission
from foundry.kernel.core.throttle import Throttle
from foundry.kernel.errors import ConfigError, FailedPrecondition, InvalidArgument

from .harness import GUARD_SECONDS

NOW = datetime.now(UTC).replace(microsecond=0)
OLD = NOW - timedelta(days=60)


def chain(at, n, *, finished=True):
    """A workflow of a root event, one emitted event and one execution (and its workflow row)."""
    payload = {"n": n}
    rid = event_id("tick", "p", at, payload)
    root = Event(id=rid, event_type="tick", project="p", occurred_at=at, recorded_at=at,
                 throttle=Throttle.FULL, workflow_id=rid, payload=payload,
                 payload_json=compact_json(payload), depth=0)  # fmt: skip
    child_at = at + timedelta(milliseconds=5)
    cid = event_id("tock", "p", child_at, payload)
    child = Event(id=cid, event_type="tock", project="p", occurred_at=child_at,
                  recorded_at=child_at, throttle=Throttle.FULL, workflow_id=rid, payload=payload,
                  payload_json=compact_json(payload), depth=1, parent_id=rid,
                  emitted_by="B")  # fmt: skip
    execution = ExecutionRecord(
        workflow_id=rid, block_name="B", trigger=root, state="completed", success=True,
        summary="ok", emitted=(child,), started_at=at, completed_at=child_at, duration_ms=5,
        raw_output="", exit_code=0, audit_artifacts=(), attempts=1, throttled=False,
    )  # fmt: skip
    records = [root, child, execution]
    if finished:
        records.append(
            FinishedChain(
                workflow_id=rid,
                workflow_type="tick",
                project="p",
                throttle=Throttle.FULL,
                state="completed",
                error="",
                started_at=at,
                completed_at=child_at,
                event_count=2,
                block_count=1,
                trace=None,
            )  # fmt: skip
        )
    return rid, records


def run(at, n, *, kinds=("run_submitted", "run_started", "run_succeeded")):
    run_id = f"run_{n:04d}"
    submission = RunSubmission(run_id=run_id, idempotency_key="", dag_json="{}", inputs={},
                               seed=n, labels={"n": str(n)}, breakpoints=(), parent_run_id="",
                               branch_step="", note="", created_at=at)  # fmt: skip
    events = [
        RunEventRecord(
            run_id=run_id,
            seq=i + 1,
            step_id="",
            kind=kind,
            payload={"seq": i + 1},
            occurred_at=at + timedelta(seconds=i),
        )  # fmt: skip
        for i, kind in enumerate(kinds)
    ]
    return run_id, [submission, *events]


def gate(at, n):
    return GateDecisionRecord(gate_id=f"gate_{n}", change_id="c", revision="r", effect="allow",
                              reasons=("fine",), followups=(), scorecard={}, metadata={},
                              telemetry={}, actor="me", decided_at=at)  # fmt: skip


@asynccontextmanager
async def store(home, **options):
    tap_send, tap_receive = trio.open_memory_channel(1000)
    send, receive = trio.open_memory_channel(1000)
    with trio.fail_after(GUARD_SECONDS * 3):
        async with trio.open_nursery() as nursery:
            await nursery.start(Store(home, receive, tap_send, **options).run)
            nursery.start_soon(_drain, tap_receive)
            try:
                yield send
            finally:
                send.close()


async def _drain(channel):
    async for _ in channel:
        pass


async def append(send, records):
    reply, pending = reply_pair()
    await send.send(Append(tuple(records), (), reply))
    await pending.wait()


def rows(path, sql):
    with duckdb.connect(str(path), read_only=True) as con:
        con.execute("SET TimeZone = 'UTC'")
        return con.execute(sql).fetchall()


def live_rows(path, sql):
    """Rows from the instance the running store holds (its settings are locked: no SET)."""
    with duckdb.connect(str(path)) as con:
        return con.execute(sql).fetchall()


def columns(path):
    return sorted(
        rows(
            path,
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'main'",
        )
    )


# --- migrations ---------------------------------------------------------------------------------


def make_v1_database(path):
    """A database of the first release (efcd58b: no governance tables, no schema_version) with a
    few rows."""
    con = duckdb.connect(str(path))
    con.execute("SET TimeZone = 'UTC'")
    for statement in migrations.V1:
        con.execute(statement)
    con.execute(
        "INSERT INTO events VALUES ('evt_1', 'evt_1', 'tick', 'p', "
        "TIMESTAMPTZ '2025-01-02 03:04:05+00', "
        "TIMESTAMPTZ '2025-01-02 03:04:05+00', 'full', 0, NULL, NULL, false, '{\"a\": 1}')"
    )
    con.execute(
        "INSERT INTO workflows VALUES ('evt_1', 'tick', 'p', 'full', 'completed', '', "
        "TIMESTAMPTZ '2025-01-02 03:04:05+00', TIMESTAMPTZ '2025-01-02 03:04:06+00', 1, 1)"
    )
    con.execute(
        "INSERT INTO runs VALUES ('run_1', 'k', '{}', '{}', 7, '{}', [], '', '', '', "
        "TIMESTAMPTZ '2025-01-02 03:04:05+00')"
    )
    con.execute(
        "INSERT INTO run_events VALUES ('run_1', 1, '', 'run_submitted', '{}', "
        "TIMESTAMPTZ '2025-01-02 03:04:05+00')"
    )
    con.close()


async def test_a_first_release_database_is_upgraded_in_place_and_keeps_its_rows(tmp_path):
    old, fresh = tmp_path / "old", tmp_path / "fresh"
    old.mkdir()
    make_v1_database(old / "foundry.duckdb")

    async with store(old):
        pass
    async with store(fresh):
        pass

    db = old / "foundry.duckdb"
    assert rows(db, "SELECT event_id, payload FROM events") == [("evt_1", '{"a": 1}')]
    assert rows(db, "SELECT workflow_id FROM workflows") == [("evt_1",)]
    assert rows(db, "SELECT run_id, status FROM run_status") == [("run_1", "PENDING")]
    assert rows(db, "SELECT version FROM schema_version ORDER BY version") == [
        (1,), (2,), (3,), (4,), (5,), (6,), (7,)
    ]  # fmt: skip
    assert rows(db, "SELECT count(*) FROM in_flight_workflows") == [(0,)]
    # version 4: the chain column is workflow_id; rows from before have no W3C trace context
    assert rows(db, "SELECT workflow_id, trace_id, span_id FROM events") == [("evt_1", None, None)]
    # the upgraded database has exactly the tables, views and columns of a fresh one
    assert columns(db) == columns(fresh / "foundry.duckdb")
    names = {t for t, _, _ in columns(db)}
    assert {"eval_scenarios", "gate_decisions", "retention_passes", "archived_events"} <= names


async def test_migrations_are_applied_once(tmp_path):
    for _ in range(2):
        async with store(tmp_path):
            pass
    db = tmp_path / "foundry.duckdb"
    assert rows(db, "SELECT version FROM schema_version ORDER BY version") == [
        (1,), (2,), (3,), (4,), (5,), (6,), (7,)
    ]  # fmt: skip
    assert migrations.LATEST == 7


async def test_an_archive_a_version_3_retention_wrote_reads_with_the_live_columns(tmp_path):
    """Version 4 renamed events.trace_id (the workflow id) to workflow_id in the live tables
    only: archived_events kept the old columns, the README's UNION ALL failed, and a newer
    pass's files would have mixed workflow ids and W3C trace ids in one column."""
    con = duckdb.connect(str(tmp_path / "foundry.duckdb"))
    con.execute(migrations.VERSION_TABLE)
    for migration in migrations.MIGRATIONS[:3]:
        migration.step(con, tmp_path)
        con.execute("INSERT INTO schema_version VALUES (?, now(), ?)",
                    [migration.version, migration.description])  # fmt: skip
    old = "evt_aaaaaaaaaaaaaaaaaaaaaaaa"
    con.execute(
        f"INSERT INTO events VALUES ('{old}', '{old}', 'greet_requested', 'demo', "
        "TIMESTAMPTZ '2025-01-01 00:00:00+00', TIMESTAMPTZ '2025-01-01 00:00:00+00', 'full', 0, "
        """NULL, NULL, false, '{"name": "old"}')"""
    )
    (tmp_path / "archive").mkdir()
    con.execute(  # as a version-3 retention pass wrote it
        "COPY (SELECT *, strftime(occurred_at, '%Y-%m-%d') AS date FROM events) TO "
        f"'{tmp_path}/archive/events' (FORMAT parquet, PARTITION_BY (date), "
        "FILENAME_PATTERN 'r3_{uuid}')"
    )
    con.execute("DELETE FROM events")
    con.close()
    async with store(tmp_path):
        pass
    db = tmp_path / "foundry.duckdb"
    assert rows(db, "SELECT event_id, workflow_id, trace_id FROM archived_events") == [
        (old, old, None)
    ]
    live = rows(db, "SELECT column_name FROM (DESCRIBE events)")
    assert rows(db, "SELECT column_name FROM (DESCRIBE archived_events)") == live
    assert rows(db, "SELECT count(*) FROM (SELECT * FROM events UNION ALL "
                    "SELECT * FROM archived_events)") == [(1,)]  # fmt: skip


V5_ATTESTATIONS = """
    CREATE TABLE attestations (
        attestation_id VARCHAR NOT NULL, run_id VARCHAR NOT NULL, step_id VARCHAR NOT NULL,
        kind VARCHAR NOT NULL, subject JSON NOT NULL, predicate_type VARCHAR NOT NULL,
        claims JSON NOT NULL, artifact_hash VARCHAR, envelope VARCHAR NOT NULL,
        previous VARCHAR, created_at TIMESTAMPTZ NOT NULL, seq INTEGER NOT NULL
    )"""


def _old_attestation_rows(home):
    """Records signed as the attestor signs them, and their rows as schema version 5 held them
    (the envelope, and the statement's subject and claims as canonical JSON)."""
    from foundry.kernel.actors.attestor import keys
    from foundry.kernel.actors.attestor.messages import AttestCustom
    from foundry.kernel.actors.attestor.statements import Chain, Signer
    from foundry.kernel.core.attest import key_id

    from tests.kernel.test_attestor import _notices

    pair = keys.load_or_create(home)
    signer = Signer(pair.private.sign, key_id(pair.public_raw), "1.0")
    chain = Chain()
    records = [signer.record(n, chain) for n in _notices()]
    nested = {"reasons": ["ü", {"b": [1]}], "x": {"y": 1.5}}
    at = datetime(2025, 1, 2, tzinfo=UTC)
    records.append(signer.record(AttestCustom("gate_decision", "g1", "", nested, at), None))
    old = [
        (r.attestation_id, r.run_id, r.step_id, r.kind, r.subject_json, r.predicate_type,
         r.claims_json, r.artifact_hash, r.envelope, r.previous, r.created_at, r.seq)
        for r in records
    ]  # fmt: skip
    return records, old


async def test_version_5_attestations_move_to_their_statements_and_read_back_the_same(tmp_path):
    from foundry.kernel.actors.store.messages import LoadAttestations

    records, old = _old_attestation_rows(tmp_path)
    with duckdb.connect(str(tmp_path / "foundry.duckdb")) as con:
        con.execute(migrations.VERSION_TABLE)
        for migration in migrations.MIGRATIONS[:5]:
            migration.step(con, tmp_path)
            con.execute("INSERT INTO schema_version VALUES (?, now(), '')", [migration.version])
        con.execute(V5_ATTESTATIONS)
        con.executemany(f"INSERT INTO attestations VALUES ({', '.join('?' * 12)})", old)

    async with store(tmp_path) as send:
        ids = tuple(r.attestation_id for r in records)
        found = await ask(send, lambda r: LoadAttestations(ids, r))
    assert found == records
    assert [f.envelope for f in found] == [r.envelope for r in records]
    db = tmp_path / "foundry.duckdb"
    # The view gives the old columns back: the envelope byte for byte, the JSON as JSON.
    viewed = rows(db, "SELECT attestation_id, envelope, claims, subject, predicate_type "
                      "FROM attestations")  # fmt: skip
    assert sorted(v[:2] for v in viewed) == sorted((o[0], o[8]) for o in old)
    by_id = {o[0]: o for o in old}
    for attestation_id, _, claims, subject, predicate_type in viewed:
        o = by_id[attestation_id]
        assert (json.loads(claims), json.loads(subject)) == (json.loads(o[6]), json.loads(o[4]))
        assert predicate_type == o[5]
    assert rows(db, "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'attestations'") == [
        (0,)
    ]  # fmt: skip


async def test_attestation_rows_a_version_5_journal_holds_are_moved_over_on_replay(tmp_path):
    from foundry.kernel.actors.store.journal import Journal, encode
    from foundry.kernel.actors.store.messages import LoadAttestations

    records, old = _old_attestation_rows(tmp_path)
    async with store(tmp_path):
        pass  # a database with its journal high-water mark
    journal = Journal(tmp_path / "journal")
    journal.recover(0)
    journal.append(encode([("attestations", old)]))  # a daemon of before, killed
    journal.close()
    async with store(tmp_path) as send:
        ids = tuple(r.attestation_id for r in records)
        assert await ask(send, lambda r: LoadAttestations(ids, r)) == records
    viewed = rows(tmp_path / "foundry.duckdb", "SELECT attestation_id, envelope FROM attestations")
    assert sorted(viewed) == sorted((r.attestation_id, r.envelope) for r in records)


async def test_a_database_newer_than_this_code_refuses_the_start_in_one_line(tmp_path):
    async with store(tmp_path):
        pass
    with duckdb.connect(str(tmp_path / "foundry.duckdb")) as con:
        con.execute("INSERT INTO schema_version VALUES (99, now(), 'from the future')")

    with pytest.raises(BaseException) as caught:  # noqa: B017, PT011 (a group or the error)
        async with store(tmp_path):
            pass
    error = caught.value
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    assert isinstance(error, ConfigError)
    message = str(error)
    assert "\n" not in message
    assert f"schema version 99 is newer than this Foundry knows ({migrations.LATEST})" in message
    # nothing was changed
    db = tmp_path / "foundry.duckdb"
    assert max(rows(db, "SELECT version FROM schema_version")) == (99,)


# --- export -------------------------------------------------------------------------------------


def parquet(folder, table):
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        return con.execute(
            f"SELECT * EXCLUDE (date), CAST(date AS VARCHAR) FROM read_parquet("
            f"'{folder}/{table}/*/*.parquet', hive_partitioning = true)"
        ).fetchall()


async def test_export_parquet_writes_every_table_date_partitioned(tmp_path):
    home, out = tmp_path / "home", tmp_path / "out"
    day1, day2 = datetime(2026, 1, 5, 23, 59, tzinfo=UTC), datetime(2026, 1, 6, 0, 1, tzinfo=UTC)
    async with store(home) as send:
        for n, at in enumerate((day1, day2)):
            await append(send, chain(at, n)[1] + run(at, n)[1] + [gate(at, n)])
        counts = await ask(send, lambda r: ExportParquet(str(out), None, r))
        since = await ask(send, lambda r: ExportParquet(str(tmp_path / "since"), "2026-01-06", r))
        with pytest.raises(FailedPrecondition, match="already exists and is not empty"):
            await ask(send, lambda r: ExportParquet(str(out), None, r))
        with pytest.raises(InvalidArgument, match="absolute"):
            await ask(send, lambda r: ExportParquet("relative/dir", None, r))

    assert counts == {
        "events": 4, "block_executions": 2, "workflows": 2, "runs": 2, "run_events": 6,
        "eval_scenarios": 0, "eval_results": 0, "gate_decisions": 2, "gate_followups": 0,
    }  # fmt: skip
    assert since["events"] == 2
    assert since["runs"] == 1
    assert since["run_events"] == 3
    assert sorted(p.name for p in (out / "events").iterdir()) == [
        "date=2026-01-05", "date=2026-01-06",
    ]  # fmt: skip
    db = home / "foundry.duckdb"
    for table, dated in DATED.items():
        if not counts[table]:
            continue
        source = rows(db, f"SELECT *, strftime({dated}, '%Y-%m-%d') FROM {table}")
        assert sorted(parquet(out, table), key=repr) == sorted(source, key=repr), table


def test_export_offline_reads_the_file_read_only(tmp_path):
    from foundry.kernel.cli.export import export_offline

    home = tmp_path / "home"
    home.mkdir()
    make_v1_database(home / "foundry.duckdb")  # even an old database: read-only, not upgraded
    counts = export_offline(home, tmp_path / "out", None)
    assert counts["events"] == 1
    assert counts["run_events"] == 1
    assert "gate_decisions" not in counts  # tables that old database does not have
    assert [r[0] for r in parquet(tmp_path / "out", "events")] == ["evt_1"]


# --- retention ----------------------------------------------------------------------------------


def archived(home, table):
    return rows(home / "foundry.duckdb", f"SELECT * FROM archived_{table}")


async def test_retention_archives_old_finished_work_and_prunes_it(tmp_path):
    home = tmp_path
    old_done, old_records = chain(OLD, 1)
    old_inflight, inflight_records = chain(OLD, 2, finished=False)
    new_done, new_records = chain(NOW, 3)
    old_run, old_run_records = run(OLD, 1)
    old_paused, paused_records = run(OLD, 2, kinds=("run_submitted", "run_started", "run_paused"))
    new_run, new_run_records = run(NOW, 3)
    trace = home / "traces" / OLD.date().isoformat() / f"{old_done}.json"
    trace.parent.mkdir(parents=True)
    trace.write_text("{}")
    # artifact folders: the pruned ones' move to the archive (artifacts/ grew without bound)
    folders = {name: home / "artifacts" / name for name in (old_done, new_done)}
    folders |= {name: home / "artifacts" / "runs" / name for name in (old_run, new_run)}
    for name, folder in folders.items():
        (folder / "a.b").mkdir(parents=True)
        (folder / "a.b" / "out.txt").write_text(name)

    async with store(home) as send:  # retention off
        await append(send, old_records + inflight_records + new_records + old_run_records
                     + paused_records + new_run_records + [gate(OLD, 1)])  # fmt: skip
    # (a chain in flight at a restart is marked failed then, and is recent: kept)
    live_inflight, live_records = chain(OLD, 5, finished=False)
    async with store(home, retain_days=30) as send:
        await append(send, live_records)  # in flight while retention runs
        await ask(send, RunRetention)  # (the pass at start may be the one that does the work)
        again = await ask(send, RunRetention)
        in_flight = await trio.to_thread.run_sync(
            live_rows, home / "foundry.duckdb", "SELECT workflow_id FROM in_flight_workflows"
        )
        assert in_flight == [(live_inflight,)]

    expected = {"workflows": 1, "events": 2, "block_executions": 1, "runs": 1, "run_events": 3}
    assert again.archived == {}
    db = home / "foundry.duckdb"
    passes = rows(db, "SELECT archived FROM retention_passes")
    assert [json.loads(p[0]) for p in passes] == [expected]
    assert sorted(rows(db, "SELECT workflow_id, state FROM workflows")) == sorted(
        [(new_done, "completed"), (old_inflight, "failed")]
    )
    assert sorted(rows(db, "SELECT DISTINCT workflow_id FROM events")) == sorted(
        [(old_inflight,), (new_done,), (live_inflight,)]
    )
    assert sorted(rows(db, "SELECT run_id FROM runs")) == [(old_paused,), (new_run,)]
    assert rows(db, f"SELECT count(*) FROM run_events WHERE run_id = '{old_run}'") == [(0,)]
    assert rows(db, "SELECT count(*) FROM gate_decisions") == [(1,)]  # governance is kept
    # the archive, through the documented views, has exactly the pruned rows
    assert [r[0] for r in archived(home, "workflows")] == [old_done]
    assert {r[1] for r in archived(home, "events")} == {old_done}
    assert [r[0] for r in archived(home, "runs")] == [old_run]
    assert sorted(r[1] for r in archived(home, "run_events")) == [1, 2, 3]
    assert len(archived(home, "block_executions")) == 1
    assert not trace.exists()
    for name in (old_done, old_run):
        assert not folders[name].exists()
        moved = home / "archive" / folders[name].relative_to(home) / "a.b" / "out.txt"
        assert moved.read_text() == name
    assert all(folders[name].is_dir() for name in (new_done, new_run))
    assert not (home / "archive" / ".staging").exists() or not any(
        (home / "archive" / ".staging").iterdir()
    )
    # the archive survives a restart (views rebuilt over the files) and more passes add to it
    async with store(home, retain_days=30) as send:
        await append(send, chain(OLD - timedelta(days=1), 4)[1])
        await ask(send, RunRetention)
        # an export is the whole history: the archived rows too (it left every one out)
        out = tmp_path.parent / f"{tmp_path.name}-export"
        counts = await ask(send, lambda r: ExportParquet(str(out), None, r))
    for table in ("workflows", "events", "runs", "run_events", "block_executions"):
        whole = rows(db, f"SELECT count(*) FROM (SELECT * FROM {table} UNION ALL "
                         f"SELECT * FROM archived_{table})")[0][0]  # fmt: skip
        assert counts[table] == whole, table
    exported = (
        duckdb.connect()
        .execute(f"SELECT DISTINCT workflow_id FROM read_parquet('{out}/workflows/*/*.parquet')")
        .fetchall()
    )
    assert {old_done, new_done} <= {w for (w,) in exported}
    assert len(exported) == counts["workflows"]  # none twice
    assert len(archived(home, "workflows")) == 2
    assert len(rows(db, "SELECT * FROM retention_passes")) == 2
    # A reader whose snapshot still has a pass's rows live, once its files are in the archive
    # (a query begun before the delete committed), counted them twice: they are live only.
    with duckdb.connect(str(db)) as con:
        con.execute(
            "INSERT INTO events SELECT * FROM archived_events WHERE workflow_id = ?", [old_done]
        )  # fmt: skip (first: with its workflow live, none are archived)
        con.execute("INSERT INTO workflows SELECT * FROM archived_workflows WHERE workflow_id = ?",
                    [old_done])  # fmt: skip
        con.execute("INSERT INTO runs SELECT * FROM archived_runs WHERE run_id = ?", [old_run])
    whole = "SELECT {key} FROM {table} UNION ALL SELECT {key} FROM archived_{table}"
    for table, key, item in (("workflows", "workflow_id", old_done), ("events", "workflow_id",
                             old_done), ("runs", "run_id", old_run)):  # fmt: skip
        history = rows(db, whole.format(key=key, table=table))
        assert [k for (k,) in history].count(item) == (2 if table == "events" else 1), table
        assert item not in {k for (k,) in rows(db, f"SELECT {key} FROM archived_{table}")}


async def test_a_moved_home_is_exported_and_queried_offline_with_its_own_archive(tmp_path):
    """The stored archived_* views name the archive where the daemon made them: a home moved or
    restored elsewhere failed its offline export ("No files found"), or read another home's."""
    from foundry.kernel.cli.export import export_offline
    from foundry.kernel.cli.sql import run_file

    home = tmp_path / "home"
    old_done, old_records = chain(OLD, 1)
    new_done, new_records = chain(NOW, 2)
    async with store(home, retain_days=30) as send:
        await append(send, old_records + new_records)
        await ask(send, RunRetention)
    assert [r[0] for r in archived(home, "workflows")] == [old_done]
    moved = tmp_path / "restored"
    home.rename(moved)
    counts = export_offline(moved, tmp_path / "out", None)
    assert counts["workflows"] == 2  # the live one and the archived one
    result = run_file(moved / "foundry.duckdb", "SELECT workflow_id FROM archived_workflows",
                      {}, 100, 10.0, 1 << 20)  # fmt: skip
    assert [json.loads(row) for row in result.rows] == [[old_done]]


async def test_an_unreadable_archive_file_fails_its_view_not_the_start(tmp_path, caplog):
    """An empty .parquet in the archive (a torn copy, a stray file) stopped the daemon from
    starting, with a 111-line traceback."""
    home = tmp_path
    old_run, old_run_records = run(OLD, 1)
    old_done, old_records = chain(OLD, 1)
    async with store(home, retain_days=30) as send:
        await append(send, old_run_records + old_records)
        await ask(send, RunRetention)
    [day] = (home / "archive" / "runs").iterdir()
    torn = day / "torn.parquet"
    torn.write_bytes(b"")
    async with store(home, retain_days=30) as send:
        await append(send, run(NOW, 2)[1])  # it started, and takes writes
    assert "cannot be read" in caplog.text
    with pytest.raises(duckdb.Error, match=r"archive.*runs cannot be read .*move the damaged"):
        archived(home, "runs")
    assert [r[0] for r in archived(home, "workflows")] == [old_done]  # the others read
    torn.unlink()
    async with store(home, retain_days=30):
        pass
    assert [r[0] for r in archived(home, "runs")] == [old_run]


async def test_a_pass_that_fails_while_staging_leaves_no_staged_file(tmp_path):
    """A full disk failed passes midway (events after workflows): every failed pass left its
    staged files behind until a restart."""
    from foundry.kernel.actors.store import retention

    async with store(tmp_path) as send:  # retention off
        await append(send, chain(OLD, 1)[1])
    with duckdb.connect(str(tmp_path / "foundry.duckdb")) as con:
        retention.staging_dir(tmp_path, "p1").mkdir(parents=True)
        (retention.staging_dir(tmp_path, "p1") / "events").write_text("in the way")
        with pytest.raises(OSError, match="events"):
            retention.stage(con.cursor(), tmp_path, NOW, "p1")
    assert not retention.staging_dir(tmp_path, "p1").exists()


async def test_files_a_pass_could_not_deal_with_are_dealt_with_by_a_later_one(tmp_path):
    """A daemon killed between a pass's commit and its files' move, or a folder that could
    not move, left pruned workflows' trace files (Trace answered for them) and artifact
    folders in place for good (a retention hunt)."""
    home = tmp_path
    old_done, old_records = chain(OLD, 1)
    folder = home / "artifacts" / old_done
    folder.mkdir(parents=True)
    (folder / "out.txt").write_text("kept")
    blocker = home / "archive" / "artifacts"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("in the way")  # the archive's folder cannot be made: the move fails
    async with store(home) as send:  # retention off
        await append(send, old_records)
    async with store(home, retain_days=30) as send:
        await ask(send, RunRetention)
        assert folder.is_dir()
        [note] = (home / "archive" / ".cleanup").glob("*.json")
    blocker.unlink()
    async with store(home, retain_days=30) as send:  # (its pass at start)
        await ask(send, RunRetention)
    assert not folder.exists()
    assert (home / "archive" / "artifacts" / old_done / "out.txt").read_text() == "kept"
    assert not note.exists()


def test_a_note_that_is_no_passs_is_set_aside_not_read_at_every_pass(tmp_path, caplog):
    from foundry.kernel.actors.store import retention

    folder = retention.cleanup_dir(tmp_path)
    folder.mkdir(parents=True)
    (folder / "p1.json").write_text('{"workflows": [["evt_1", "2026-')  # cut short
    retention.clean_up_left(tmp_path)
    retention.clean_up_left(tmp_path)
    assert [p.name for p in folder.iterdir()] == ["p1.unreadable"]
    assert caplog.text.count("is no note of a pass") == 1


async def test_retention_runs_at_start(tmp_path):
    async with store(tmp_path) as send:
        await append(send, chain(OLD, 1)[1])
    async with store(tmp_path, retain_days=30) as send:
        with trio.fail_after(5):
            while not list((tmp_path / "archive" / "events").rglob("*.parquet")):  # noqa: ASYNC110
                await trio.sleep(0.05)  # the pass at start: staged, pruned, published
    db = tmp_path / "foundry.duckdb"
    assert rows(db, "SELECT count(*) FROM workflows") == [(0,)]
    assert len(archived(tmp_path, "events")) == 2


async def test_retention_off_keeps_everything(tmp_path):
    async with store(tmp_path) as send:
        await append(send, chain(OLD, 1)[1])
        report = await ask(send, RunRetention)
    assert report.cutoff is None
    assert report.archived == {}
    assert rows(tmp_path / "foundry.duckdb", "SELECT count(*) FROM workflows") == [(1,)]
    assert archived(tmp_path, "workflows") == []


async def test_a_staged_pass_is_published_or_dropped_at_start(tmp_path):
    from foundry.kernel.actors.store import retention

    async with store(tmp_path) as send:
        await append(send, chain(OLD, 1)[1])
    db = tmp_path / "foundry.duckdb"
    # a pass staged but never pruned (the daemon died in between): thrown away at start
    with duckdb.connect(str(db)) as con:
        con.execute("SET TimeZone = 'UTC'")
        con.execute("BEGIN TRANSACTION")
        retention.stage(con, tmp_path, NOW - timedelta(days=30), "p1")
        con.execute("ROLLBACK")
    assert (tmp_path / "archive" / ".staging" / "p1").is_dir()
    async with store(tmp_path):
        pass
    assert not (tmp_path / "archive" / ".staging" / "p1").exists()
    assert archived(tmp_path, "workflows") == []
    assert rows(db, "SELECT count(*) FROM workflows") == [(1,)]


async def test_archive_files_that_cannot_be_moved_stay_staged_until_they_can(tmp_path):
    """The delete committed, the files could not be moved into the archive (a full disk, a
    file in the way): the staging, then the rows' only copy, was thrown away with them."""
    old_run, old_run_records = run(OLD, 1)
    async with store(tmp_path) as send:  # retention off
        await append(send, old_run_records)
    (tmp_path / "archive").mkdir()
    (tmp_path / "archive" / "run_events").write_text("in the way")
    async with store(tmp_path, retain_days=30) as send:
        await ask(send, RunRetention)
    db = tmp_path / "foundry.duckdb"
    assert rows(db, "SELECT count(*) FROM runs") == [(0,)]  # pruned: the pass is recorded
    staged = list((tmp_path / "archive" / ".staging").rglob("*.parquet"))
    assert {p.parent.parent.name for p in staged} >= {"run_events"}  # kept, not discarded

    newer_run, newer_records = run(OLD, 2)
    async with store(tmp_path, retain_days=30) as send:  # still in the way: passes go on
        await append(send, newer_records)
        report = await ask(send, RunRetention)
    assert report.archived == {"workflows": 0, "events": 0, "block_executions": 0, "runs": 1,
                               "run_events": 3}  # fmt: skip

    (tmp_path / "archive" / "run_events").unlink()
    async with store(tmp_path, retain_days=30) as send:  # the next pass (or start) moves them
        await ask(send, RunRetention)
    assert sorted(r[0] for r in archived(tmp_path, "runs")) == sorted([old_run, newer_run])
    assert sorted(r[1] for r in archived(tmp_path, "run_events")) == [1, 1, 2, 2, 3, 3]
    assert not list((tmp_path / "archive" / ".staging").rglob("*.parquet"))


async def test_a_pass_a_killed_daemon_recorded_is_readable_through_the_views_at_start(tmp_path):
    """Killed between the delete's commit and the files' move: the start moves them, and the
    archive's views (made before the move, over no file) showed none of them."""
    from foundry.kernel.actors.store import retention

    old_run, old_run_records = run(OLD, 1)
    async with store(tmp_path) as send:
        await append(send, old_run_records)
    db = tmp_path / "foundry.duckdb"
    with duckdb.connect(str(db)) as con:
        con.execute("SET TimeZone = 'UTC'")
        cutoff = NOW - timedelta(days=30)
        con.execute("BEGIN TRANSACTION")
        staged = retention.stage(con, tmp_path, cutoff, "p1")
        con.execute("COMMIT")
        real_publish = retention.publish
        retention.publish = lambda home, pass_id: None  # the kill: nothing moved
        try:
            retention.prune(con, tmp_path, cutoff, "p1", staged)
        finally:
            retention.publish = real_publish
    assert (tmp_path / "archive" / ".staging" / "p1").is_dir()
    async with store(tmp_path):
        pass
    assert [r[0] for r in archived(tmp_path, "runs")] == [old_run]
    assert len(archived(tmp_path, "run_events")) == 3


async def test_the_archive_of_a_home_named_with_glob_characters_reads_online_and_offline(tmp_path):
    # the views' glob matched no file under "h[1]": a retention pass pruned rows its views then
    # could not show, and every start failed; `foundry sql` offline refused every archived_*
    # view (its instance could read no file at all)
    home = tmp_path / "h[1]"
    old_done, old_records = chain(OLD, 1)
    async with store(home) as send:
        await append(send, old_records)
    async with store(home, retain_days=30) as send:
        await ask(send, RunRetention)
    assert [r[0] for r in archived(home, "workflows")] == [old_done]
    async with store(home) as send:  # a start rebuilds the views over the files
        await ask(send, RunRetention)
    done = await trio.run_process(
        [sys.executable, "-m", "foundry.kernel.cli", "sql", "--json",
         "SELECT workflow_id FROM archived_workflows"],
        capture_stdout=True, capture_stderr=True, check=False, cwd=tmp_path,
        env={**os.environ, "FOUNDRY_HOME": str(home), "FOUNDRY_ADDR": "127.0.0.1:1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert old_done in done.stdout.decode()


async def test_the_steps_view_holds_a_steps_own_events_only(tmp_path):
    """run_failed, run_paused and run_resumed name a step too: a step that failed its run read
    last_event run_failed (a filter on step_failed found none), and a step a paused run held,
    never leased, got a row."""
    at = datetime(2026, 1, 2, tzinfo=UTC)
    run_id, records = run(at, 1, kinds=("run_submitted", "run_started"))
    step_events = [
        ("a", "step_leased", {"attempt": 1}),
        ("a", "step_failed", {"attempt": 1}),
        ("a", "run_failed", {}),
        ("b", "run_paused", {}),
        ("b", "run_resumed", {}),
    ]
    for seq, (step, kind, payload) in enumerate(step_events, start=3):
        records.append(RunEventRecord(run_id, seq, step, kind, payload, at))
    async with store(tmp_path) as send:
        await append(send, records)
    found = rows(
        tmp_path / "foundry.duckdb",
        "SELECT step_id, last_event, attempt FROM steps ORDER BY step_id",
    )
    assert found == [("a", "step_failed", 1)]


def test_an_export_folder_is_claimed_by_one_export_at_a_time(tmp_path):
    from foundry.analytics.parquet import EXPORT_LOCK, ExportError, claimed

    target = tmp_path / "new" / "out"
    refused = pytest.raises(ExportError, match="another export is writing there")
    with claimed(target), refused, claimed(target):
        pass
    assert not (target / EXPORT_LOCK).exists()
    with claimed(target):  # free again once the first has ended
        assert (target / EXPORT_LOCK).exists()
    (tmp_path / "elsewhere").write_text("keep")
    (target / EXPORT_LOCK).symlink_to(tmp_path / "elsewhere")  # not followed
    with pytest.raises(OSError, match="Too many levels of symbolic links"), claimed(target):
        pass
    assert (tmp_path / "elsewhere").read_text() == "keep"


def test_an_export_that_opened_the_lock_file_its_first_export_removed_is_refused(
    tmp_path, monkeypatch
):
    """(A review: B opened the lock file, A removed it as it ended, B took the flock of a file
    gone from the folder while C made a new one: both wrote at once.) B's flock waits, as the
    window does, until A has ended."""
    import fcntl
    import threading

    from foundry.analytics import parquet

    target, a_ended, said = tmp_path / "out", threading.Event(), []
    real = fcntl.flock

    def late_flock(fd: int, operation: int) -> None:
        if threading.current_thread().name == "B":
            a_ended.wait(10)
        real(fd, operation)

    def export_b() -> None:
        try:
            with parquet.claimed(target):
                said.append("inside")
        except parquet.ExportError as exc:
            said.append(str(exc))

    monkeypatch.setattr(parquet.fcntl, "flock", late_flock)
    b = threading.Thread(target=export_b, name="B")
    with parquet.claimed(target):  # A
        b.start()
        time.sleep(0.2)  # B has opened the file, and waits to lock it
    a_ended.set()
    b.join(10)
    assert len(said) == 1
    assert "another export is writing there" in said[0]


async def test_a_refused_export_makes_no_folder(tmp_path):
    target = tmp_path / "new" / "deeper" / "x\\..\\y"
    async with store(tmp_path / "home") as send:
        with pytest.raises(FailedPrecondition, match="backslash"):
            await ask(send, lambda r: ExportParquet(str(target), None, r))
    assert not (tmp_path / "new").exists()
