"""Analysts' SQL in the store (``RunUserQuery``, ``foundry.analytics.sandbox``): both sandbox layers
(the statement check, and the locked DuckDB instance under it), the time and row limits, and every
saved question on known data committed through the store's own Append."""

import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import duckdb
import pytest
import trio
from foundry.analytics import saved_questions as questions
from foundry.analytics.sandbox import (
    DEFAULT_MAX_BYTES,
    READING_TABLE_MACROS,
    QueryRefused,
    _reads_files,
    check_sql,
    cut,
    struct_fields,
)
from foundry.analytics.schema import ddl
from foundry.kernel.actors.mailbox import ask
from foundry.kernel.actors.store.actor import Store
from foundry.kernel.actors.store.messages import Append, LoadRun, RunUserQuery
from foundry.kernel.core.attest_records import SPOOL
from foundry.kernel.core.governance import (
    EvalResultRecord,
    EvalScenarioRecord,
    GateDecisionRecord,
)
from foundry.kernel.core.records import Event, ExecutionRecord, FinishedChain
from foundry.kernel.core.runs import RunEventRecord, RunSubmission
from foundry.kernel.core.throttle import Throttle
from foundry.kernel.edge.grpc.analytics_service import encode_rows
from foundry.kernel.errors import DeadlineExceeded, InvalidArgument, Unavailable
from foundry.proto import analytics_api

from .harness import GUARD_SECONDS, run_sql

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
HEAVY = (
    "SELECT count(*) FROM range(100000) a, range(100000) b "
    "WHERE (a.range * 7 + b.range * 13) % 1000003 = 17"
)


@asynccontextmanager
async def running_store(home):
    store_send, store_receive = trio.open_memory_channel(1_000)
    tap_send, _tap_receive = trio.open_memory_channel(1_000)
    with trio.fail_after(GUARD_SECONDS):
        async with trio.open_nursery() as nursery:
            try:
                await nursery.start(Store(home, store_receive, tap_send).run)
                yield store_send
            finally:
                store_send.close()


async def query(store, sql, params=None, *, max_rows=10_000, limit=5.0):
    return await ask(store, lambda r: RunUserQuery(sql, params or {}, max_rows, limit, r))


async def rows(store, sql, params=None, **limits):
    return [json.loads(row) for row in (await query(store, sql, params, **limits)).rows]


async def question(store, name, **params):
    saved = questions.load(name)
    return await rows(store, saved.sql, saved.bind(params))


# --- layer 1: the statement check ---------------------------------------------------------------

REFUSED = {
    "COPY events TO '/tmp/out.csv'": "COPY statements are not allowed",
    "SELECT * FROM read_csv('/etc/passwd')": "function read_csv() is not allowed",
    "SELECT * FROM read_parquet('x.parquet')": "function read_parquet() is not allowed",
    "SELECT * FROM glob('/etc/*')": "function glob() is not allowed",
    "SELECT * FROM read_text('/etc/passwd')": "function read_text() is not allowed",
    "FROM read_json_auto('archive/x.json')": "function read_json_auto() is not allowed",
    "SELECT * FROM parquet_scan('x')": "function parquet_scan() is not allowed",
    "SELECT * FROM '/etc/passwd'": "looks like a file",
    "WITH x AS (SELECT * FROM read_blob('/etc/hostname')) SELECT 1 FROM x": "read_blob",
    "SELECT 1 WHERE 1 IN (SELECT 1 FROM glob('*'))": "function glob() is not allowed",
    "ATTACH '/tmp/other.duckdb'": "ATTACH statements are not allowed",
    "INSTALL httpfs": "LOAD statements are not allowed",
    "LOAD httpfs": "LOAD statements are not allowed",
    "CREATE TABLE t (a INT)": "CREATE statements are not allowed",
    "CREATE MACRO m() AS 1": "CREATE statements are not allowed",
    "DELETE FROM events": "DELETE statements are not allowed",
    "INSERT INTO runs SELECT * FROM runs": "INSERT statements are not allowed",
    "UPDATE workflows SET state = 'x'": "UPDATE statements are not allowed",
    "DROP TABLE events": "DROP statements are not allowed",
    "SET threads = 1": "SET statements are not allowed",
    "RESET enable_external_access": "SET statements are not allowed",
    "PRAGMA threads = 1": "SET statements are not allowed",  # DuckDB parses it as a SET
    "PRAGMA database_list": "PRAGMA statements are not allowed",
    "EXPORT DATABASE '/tmp/x'": "EXPORT statements are not allowed",
    "IMPORT DATABASE '/tmp/x'": "PRAGMA statements are not allowed",
    "CALL pragma_version()": "CALL statements are not allowed",
    "CHECKPOINT": "CALL statements are not allowed",
    "SELECT * FROM checkpoint()": "function checkpoint() is not allowed",
    "SELECT * FROM query('SELECT 1')": "function query() is not allowed",
    # a CHECKPOINT, and SQL given as text, run by another function's name
    "SELECT * FROM destroy_external_resource('checkpoint', 'x')": "destroy_external_resource()",
    "SELECT * FROM destroy_external_resource('query', 'SELECT 1')": "destroy_external_resource()",
    "SELECT truncate_duckdb_logs()": "function truncate_duckdb_logs() is not allowed",
    "SELECT json_execute_serialized_sql('{}')": "function json_execute_serialized_sql() is not",
    "BEGIN": "TRANSACTION statements are not allowed",
    "SELECT 1; SELECT 2": "expected exactly one SQL statement, got 2",
    "SELECT 1; DROP TABLE events": "expected exactly one SQL statement, got 2",
    "EXPLAIN ANALYZE COPY events TO '/tmp/x'": "EXPLAIN of COPY statement is not allowed",
    "-- nothing": "expected exactly one SQL statement, got 0",
    # a statement type DuckDB's Python enum does not know (ValueError: INTERNAL, a traceback)
    "UPDATE EXTENSIONS": "this kind of statements are not allowed",
    "EXPLAIN (ANALYZE) DELETE FROM events": "EXPLAIN of DELETE statement is not allowed",
    "EXPLAIN /**/ ANALYZE DELETE FROM events": "EXPLAIN of DELETE statement is not allowed",
    # DuckDB's table macros that scan what their argument names (histogram_values runs
    # query_table): the archive's files are readable by the instance itself
    "FROM histogram('archive/*.csv', a)": "table function histogram() is not allowed",
    "SELECT * FROM main.histogram_values('events', kind)": "table function histogram_values()",
    # deeper than Python's JSON parser reads DuckDB's tree (DuckDB itself allows it)
    "SELECT " + "-".join(["1"] * 600): "nested too deeply to check",
    # binding more columns than DuckDB binds in a few seconds (it cannot be interrupted then)
    "WITH w0 AS (SELECT "
    + ", ".join(f"1 AS c{i}" for i in range(100))
    + "), "
    + ", ".join(f"w{k} AS (SELECT * FROM w{k - 1} a, w{k - 1} b)" for k in range(1, 12))
    + " SELECT 1 FROM w11": "binds about 409,501 columns, more than 20,000",
    "SELECT " + ",".join(["1"] * 20_001): "binds about 20,001 columns",
    "SELECT list_value(" + ", ".join(["*"] * 400) + ") FROM range(3)": "binds about 25,600",
    "SELECT 1 FROM range(3) WHERE " + " AND ".join(["COLUMNS(*) > 0"] * 400): "about 25,601",
    "SELECT * FROM range(3) PIVOT (count(*) FOR range IN ("
    + ", ".join(map(str, range(200)))
    + ") range IN ("
    + ", ".join(map(str, range(200)))
    + "))": "more than 20,000",
    # a struct's fields (a review): 400 stars of a 100-field struct, UNION BY NAME doubling a
    # CTE's columns 15 times, a struct doubled 15 times then unnested recursively
    "WITH w AS (SELECT {"
    + ",".join(f"'f{i}': {i}" for i in range(100))
    + "} AS s) SELECT "
    + ", ".join(["s.*"] * 400)
    + " FROM w": "binds about 40,001 columns",
    "WITH w0 AS (SELECT 1 AS c), "
    + ", ".join(
        f"w{i} AS (SELECT COLUMNS('(.*)') AS 'a\\1' FROM w{i - 1} UNION ALL BY NAME "
        f"SELECT COLUMNS('(.*)') AS 'b\\1' FROM w{i - 1})"
        for i in range(1, 16)
    )
    + " SELECT * FROM w15": "more than 20,000",
    "SELECT unnest({'a': {'b': 1}}, recursive := true)": "recursive := true) is not allowed",
}


@pytest.mark.parametrize("sql", list(REFUSED))
def test_the_statement_check_refuses(sql):
    with duckdb.connect() as con, pytest.raises(QueryRefused) as refused:
        check_sql(con, sql)
    assert REFUSED[sql] in str(refused.value)


@pytest.mark.parametrize(
    "sql",
    ["SELECT 1", "WITH x AS (SELECT 1 AS a) SELECT a FROM x", "VALUES (1, 2)", "FROM range(3)",
     "SHOW TABLES", "DESCRIBE SELECT 1", "SUMMARIZE SELECT 1 AS a", "EXPLAIN SELECT 1",
     "EXPLAIN ANALYZE SELECT 1", "SELECT $a::INTEGER", "SELECT histogram(a) FROM range(3) t(a)",
     # options in parentheses, comments between the words (the statement was cut mid-way)
     "EXPLAIN (FORMAT JSON) SELECT 1", "EXPLAIN (ANALYZE, FORMAT JSON) SELECT 1",
     "EXPLAIN/**/ANALYZE SELECT 1", "EXPLAIN -- why\nANALYZE SELECT 1",
     "EXPLAIN (SELECT 1)", "EXPLAIN ((SELECT 1))", "EXPLAIN (WITH x AS (SELECT 1) FROM x)",
     # wide, but not past the bound: 18 self-joins of every table's columns; 19,000 constants
     "SELECT * FROM " + ", ".join(f"events e{i}" for i in range(18)),
     "SELECT " + ",".join(["1"] * 19_000),
     "WITH RECURSIVE r AS (SELECT 1 AS n UNION ALL SELECT n + 1 FROM r WHERE n < 3) FROM r",
     # a 24-step pipeline of CTEs, each joining a table (tables counted as their own columns)
     "WITH s0 AS (SELECT run_id, 0 AS n FROM runs), " + ", ".join(
         f"s{k} AS (SELECT s{k - 1}.*, {k} AS step{k} FROM s{k - 1} "
         f"LEFT JOIN runs r{k} ON r{k}.run_id = s{k - 1}.run_id)" for k in range(1, 25)
     ) + " SELECT * FROM s24",
     "SELECT unnest({'a': 1}, recursive := false)", "SELECT s.* FROM (SELECT {'a': 1} AS s)"],
)  # fmt: skip
def test_the_statement_check_allows_reads(sql):
    with duckdb.connect() as con:
        for statement in ddl():  # the tables' own columns count
            con.execute(statement)
        check_sql(con, sql)


def test_no_table_is_wider_than_the_bound_counts_a_table():
    from foundry.analytics.sandbox import TABLE_COLUMNS

    with duckdb.connect() as con:
        for statement in ddl():
            con.execute(statement)
        (widest,) = con.execute(
            "SELECT max(n) FROM (SELECT count(*) AS n FROM duckdb_columns() GROUP BY table_name)"
        ).fetchone()
    assert 10 < widest <= TABLE_COLUMNS


def test_no_other_builtin_macro_reaches_a_refused_function():
    """A canary for DuckDB upgrades: the macros whose body calls a refused function, or such a
    macro, are the ones the check refuses by name."""
    with duckdb.connect() as con:
        bodies = dict(con.execute(
            "SELECT function_name, macro_definition FROM duckdb_functions() "
            "WHERE function_type IN ('macro', 'table_macro')"
        ).fetchall())  # fmt: skip
    reaching: set[str] = set()
    while True:
        found = {
            name for name, body in bodies.items()
            if any(_reads_files(called) or called in reaching
                   for called in re.findall(r"([a-z_][a-z0-9_]*)\s*\(", (body or "").lower()))
        }  # fmt: skip
        if found <= reaching:
            break
        reaching |= found
    assert reaching == READING_TABLE_MACROS


async def test_the_store_refuses_with_invalid_argument_and_goes_on(tmp_path):
    async with running_store(tmp_path) as store:
        for sql, reason in REFUSED.items():
            with pytest.raises(InvalidArgument) as refused:
                await query(store, sql)
            assert reason in str(refused.value), sql
        assert await rows(store, "SELECT count(*) FROM events") == [[0]]
        assert await ask(store, lambda r: LoadRun("run_x", r)) is None


# --- layer 2: the instance itself -----------------------------------------------------------------


async def test_the_instance_refuses_file_access_even_past_the_check(tmp_path):
    """What the check would let through, DuckDB refuses: the instance has external access off
    and its configuration locked (a connection in this process shares the store's instance)."""
    outside = tmp_path.parent / f"{tmp_path.name}-outside.csv"
    async with running_store(tmp_path) as store:
        for sql in [
            "SELECT * FROM read_csv('/etc/passwd')",
            "SELECT * FROM read_parquet('/tmp/x.parquet')",
            "SELECT * FROM glob('/etc/*')",
            "SELECT * FROM read_text('/etc/passwd')",
            f"COPY events TO '{outside}'",
            "ATTACH '/tmp/other.duckdb'",
            "INSTALL httpfs",
            "LOAD httpfs",
        ]:
            with pytest.raises(duckdb.PermissionException):
                await run_sql(tmp_path, sql)
        for sql in ["SET enable_external_access = true", "SET lock_configuration = false",
                    "RESET enable_external_access", "SET allowed_directories = ['/']"]:  # fmt: skip
            with pytest.raises(duckdb.InvalidInputException, match="locked"):
                await run_sql(tmp_path, sql)
        assert not outside.exists()
        # The attestation spool is the one other folder it reads (the store's own statements:
        # an analyst's SQL reads no file at all, layer 1); not the folders beside it.
        spool = tmp_path / SPOOL
        spool.mkdir(parents=True)
        (spool / "1.csv").write_text("a\n1\n")
        (spool.parent / "2.csv").write_text("a\n2\n")
        assert await run_sql(tmp_path, f"SELECT a FROM read_csv('{spool}/1.csv')") == [(1,)]
        with pytest.raises(duckdb.PermissionException):
            await run_sql(tmp_path, f"SELECT a FROM read_csv('{spool.parent}/2.csv')")
        # The store's own writes still work under the lock: an append, then a checkpoint.
        await ask(store, lambda r: Append((_event("e_after_lock"),), ack=r))
        assert await rows(store, "SELECT event_id FROM events") == [["e_after_lock"]]
        assert await rows(store, "SELECT current_setting('TimeZone')") == [["UTC"]]
    # ... and the close (CHECKPOINT) did: the rows are in the file.
    with duckdb.connect(str(tmp_path / "foundry.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM events").fetchone() == (1,)


# --- limits and errors ----------------------------------------------------------------------------


async def test_a_query_past_its_time_limit_is_interrupted(tmp_path):
    async with running_store(tmp_path) as store:
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded, match=r"time limit \(0.3 s\)"):
            await query(store, HEAVY, limit=0.3)
        assert time.monotonic() - started < 3
        for _ in range(3):  # the cursor was replaced: every user cursor still works
            assert await rows(store, "SELECT 42") == [[42]]


def test_the_conversion_of_rows_stops_between_fetches_once_the_query_is_stopped():
    """DuckDB's interrupt does not reach the conversion of a result's rows to Python: a query
    with a limit of 10 s went on for 60 converting them (a hunt). The caller's ``stopped``
    (the store's interrupter, ``foundry sql``'s timer) is asked between fetches."""
    from foundry.analytics.sandbox import run_query

    asked: list[bool] = []

    def stopped() -> bool:
        asked.append(True)
        return len(asked) > 3

    sql = "SELECT range(300) AS l FROM range(100000)"  # 30 M values: seconds of conversion
    with pytest.raises(duckdb.InterruptException):
        run_query(duckdb.connect(), sql, {}, 100_000, 1 << 30, stopped=stopped)
    assert len(asked) == 4  # three fetches made, the fourth refused


async def test_a_limit_that_passes_between_the_sandboxs_statements_still_holds(tmp_path):
    # A 1-5 ms limit often passed while the sandbox was between its own statements (its
    # checks, DESCRIBE, then the query): that one interrupt was lost, and the query ran on with
    # no limit at all (18 s; two such held both analysts' cursors for 139 s)
    async with running_store(tmp_path) as store:
        for limit in (*(0.0002 * n for n in range(1, 21)), 0.008, 0.012, 0.02):
            started = time.monotonic()
            with pytest.raises(DeadlineExceeded, match="time limit"):
                await query(store, HEAVY, limit=limit)
            assert time.monotonic() - started < 3, limit
        assert await rows(store, "SELECT 42") == [[42]]


async def test_interrupts_after_a_query_ended_touch_no_cursor(tmp_path, monkeypatch):
    # the timer went on interrupting until the query's task stopped it: an interrupted query
    # had closed its cursor by then on its thread, and that interrupt raised in the store's
    # nursery (the store went down), or hit the cursor of the next query
    from foundry.kernel.actors.store import actor

    monkeypatch.setattr(actor, "INTERRUPT_AGAIN", 0.0001)
    async with running_store(tmp_path) as store:
        for limit in (0.01, 0.02, 0.03) * 10:
            with pytest.raises(DeadlineExceeded):
                await query(store, HEAVY, limit=limit)
            assert await rows(store, "SELECT 42") == [[42]]


async def test_a_query_whose_asker_is_gone_is_interrupted_and_frees_its_cursor(tmp_path, caplog):
    # two Ctrl-C'd `foundry sql` kept both analysts' cursors busy to their 30 s limits: every
    # query after them waited out its own. (And an asker gone is routine: no ERROR logged.)
    async with running_store(tmp_path) as store:
        for _ in range(2):
            with trio.move_on_after(0.3):
                await query(store, HEAVY, limit=30.0)
        started = time.monotonic()
        assert await rows(store, "SELECT 42") == [[42]]
        assert time.monotonic() - started < 3
    assert "an analytics query failed" not in caplog.text


async def test_a_stop_cuts_a_running_query_short(tmp_path):
    # a stop waited for an analyst's query to its limit (40 s past the shutdown grace)
    answers: list[BaseException] = []

    async def heavy(store) -> None:
        try:
            await query(store, HEAVY, limit=60.0)
        except Exception as exc:
            answers.append(exc)

    started = time.monotonic()
    async with trio.open_nursery() as nursery, running_store(tmp_path) as store:
        nursery.start_soon(heavy, store)
        await trio.sleep(0.5)  # it runs
    assert time.monotonic() - started < 10
    [answer] = answers
    assert isinstance(answer, Unavailable)
    assert "the daemon is stopping" in str(answer)


async def test_a_querys_limit_counts_its_wait_for_a_turn(tmp_path):
    # a query queued behind the two analysts' cursors had its limit start only once it ran
    async with running_store(tmp_path) as store, trio.open_nursery() as nursery:
        for _ in range(2):  # both cursors busy for 2 s
            nursery.start_soon(_ignore_deadline, store, 2.0)
        await trio.sleep(0.2)
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded, match=r"waited out its time limit \(0.5 s\)"):
            await query(store, "SELECT 42", limit=0.5)
        assert time.monotonic() - started < 1.5


async def _ignore_deadline(store, limit):
    with contextlib.suppress(DeadlineExceeded):
        await query(store, HEAVY, limit=limit)


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux scheduling policies")
async def test_analysts_queries_run_on_threads_at_the_lowest_cpu_priority(tmp_path):
    async with running_store(tmp_path) as store:
        assert await rows(store, "SELECT 42") == [[42]]
        threads = [t for t in threading.enumerate() if t.name.startswith("foundry-query-")]
        assert len(threads) == 2
        for thread in threads:
            assert os.sched_getscheduler(thread.native_id) == os.SCHED_IDLE
        assert os.sched_getscheduler(0) != os.SCHED_IDLE  # the rest of the process is not
    assert not any(t.name.startswith("foundry-query-") for t in threading.enumerate())


async def test_the_row_limit_truncates(tmp_path):
    async with running_store(tmp_path) as store:
        limited = await query(store, "SELECT range AS n FROM range(100)", max_rows=10)
        assert [json.loads(r) for r in limited.rows] == [[n] for n in range(10)]
        assert limited.truncated
        assert limited.columns == (("n", "BIGINT"),)
        whole = await query(store, "SELECT range AS n FROM range(100)", max_rows=100)
        assert len(whole.rows) == 100
        assert not whole.truncated


@pytest.mark.parametrize(
    "rendered_by",
    [
        pytest.param("SELECT repeat('x', 300) AS s FROM range(100)", id="duckdb"),
        # a LIST column is converted by Python (the query as written), fetched in batches
        pytest.param("SELECT [repeat('x', 300)] AS s FROM range(100)", id="python"),
    ],
)
async def test_the_reply_byte_limit_truncates(tmp_path, rendered_by):
    async with running_store(tmp_path) as store:
        limited = await ask(
            store, lambda r: RunUserQuery(rendered_by, {}, 1_000, 5.0, r, None, 1_000)
        )
        # each row is ~305 bytes of JSON and a separator: three fit in 1,000 bytes, not four
        assert len(limited.rows) == 3
        assert limited.truncated
        assert sum(len(row.encode()) + 1 for row in limited.rows) <= 1_000
        whole = await ask(
            store, lambda r: RunUserQuery(rendered_by, {}, 1_000, 5.0, r, None, 10**6)
        )
        assert len(whole.rows) == 100
        assert not whole.truncated


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT repeat('x', 200000000) AS s",  # 200 MB of JSON: refused, never sent
        "SELECT [repeat('x', 5000)] AS s FROM range(3)",
    ],
)
async def test_a_first_row_larger_than_the_reply_limit_is_refused_by_name(tmp_path, sql):
    async with running_store(tmp_path) as store:
        with pytest.raises(InvalidArgument, match=r"max_reply_bytes") as refused:
            await ask(store, lambda r: RunUserQuery(sql, {}, 10, 30.0, r, None, 4_096))
        assert "4096-byte limit" in str(refused.value)
        assert await rows(store, "SELECT 42") == [[42]]


MEMORY_PROBE = """
import sys, duckdb
from foundry.analytics import sandbox
con = duckdb.connect(config={"memory_limit": "256MB"})
result = sandbox.run_query(con.cursor(), sys.argv[1], {}, 10_000)
# VmHWM is this program's own peak (ru_maxrss starts at the forking pytest worker's)
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(len(result.rows), result.truncated, peak // 1024)
"""


@pytest.mark.parametrize(
    "sql",
    [
        pytest.param("SELECT repeat('x', 1000000) AS s FROM range(3000)", id="strings"),
        pytest.param("SELECT [repeat('x', 1000000)] AS s FROM range(3000)", id="lists"),
        pytest.param("SELECT {'a': repeat('x', 1000000)} AS s FROM range(3000)", id="structs"),
        # strftime refused the TIMESTAMP renderer's format: every such query ran as written
        pytest.param(
            "SELECT TIMESTAMP '2024-01-01' AS t, repeat('x', 1000000) AS s FROM range(3000)",
            id="timestamps",
        ),
        # DuckDB keeps what follows a statement's ";" in its text: it could not be wrapped,
        # and ran as written (3.9 GB)
        pytest.param("SELECT repeat('x', 1000000) AS s FROM range(3000); ;", id="empty statement"),
        pytest.param("SELECT repeat('x', 1000000) AS s FROM range(3000); /* */", id="comment"),
        pytest.param(
            "SELECT repeat('x', 1000000) AS s FROM range(3000) -- c\n;", id="line comment"
        ),
    ],
)
def test_rows_past_the_reply_limit_are_never_made(sql):
    """3,000 rows of 1 MB: four fit in 4 MiB. DuckDB renders (or Python converts) a vector of
    2,048 rows at a time: unbounded, a process peaked at 2.2 GB (strings) to 3.9 GB (structs).
    A process of its own, so its peak memory is this query's."""
    done = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, sql], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    rows, truncated, peak_mb = done.stdout.split()
    assert (rows, truncated) == ("4", "True")
    assert int(peak_mb) < 600, peak_mb


@pytest.mark.parametrize(
    ("sql", "rows"),
    [
        # stored with \\u escapes (6 bytes a character), written as 2 bytes: it fits
        pytest.param(
            """SELECT CAST('"' || repeat('\\u00e9', 1000) || '"' AS JSON) AS j""", 1, id="json"
        ),  # fmt: skip
        pytest.param(
            "SELECT CASE WHEN range < 0 THEN {'a': 'x'} END AS s FROM range(150)",
            150,
            id="null structs",
        ),  # fmt: skip
        pytest.param("SELECT []::INTEGER[] AS l FROM range(220)", 220, id="empty lists"),
        # as many rows as fit exactly: ``{"1":"a"}`` counts 4 bytes an entry, its value's, 1
        pytest.param("SELECT map([1], ['a']) AS m FROM range(143)", 143, id="maps"),
        pytest.param("SELECT map() AS m FROM range(243)", 243, id="empty maps"),
        # deeper than the bound looks: its text's ", " separators, one in the string too
        pytest.param("SELECT [[[[['a, b', 'c']]]]] AS l FROM range(87)", 87, id="deep lists"),
        pytest.param("SELECT union_value(k := 'x, y') AS u FROM range(174)", 174, id="unions"),
        pytest.param("SELECT to_json([1, 2]) AS j FROM range(188)", 188, id="json"),
        # written as parsed: a key given 3,000 times is written once (a review)
        pytest.param(
            """SELECT ('{' || repeat('"a":1,', 2999) || '"a":1}')::JSON AS j FROM range(163)""",
            163,
            id="json keys given twice",
        ),  # fmt: skip
        # a TIMESTAMP_NS key loses its nanoseconds, a union's its tag: keys become one (reviews)
        pytest.param(
            "SELECT map_from_entries(list_transform(range(1000), lambda i: struct_pack("
            "k := make_timestamp_ns(1700000000000000000 + i), v := 1))) AS m FROM range(73)",
            73,
            id="map keys equal once converted",
        ),  # fmt: skip
        pytest.param(
            "SELECT map([union_value(a := 1)::UNION(a INTEGER, b VARCHAR), "
            "union_value(b := '1')::UNION(a INTEGER, b VARCHAR)], [1, 2]) AS m FROM range(160)",
            160,
            id="union map keys equal once converted",
        ),  # fmt: skip
    ],
)
async def test_the_size_bound_never_drops_a_row_that_fits(tmp_path, sql, rows):
    """The lower bound that keeps DuckDB from making rows past the limit is never above the
    JSON written: a JSON text counted as stored was refused; a NULL struct counted ~60 bytes,
    an empty list 4 (``[]`` and ``null`` are 2 and 4)."""
    async with running_store(tmp_path) as store:
        reply = await ask(store, lambda r: RunUserQuery(sql, {}, 1_000, 5.0, r, None, 2_500))
        assert len(reply.rows) == rows
        assert not reply.truncated


@pytest.mark.parametrize(
    "sql",
    [
        pytest.param("SELECT [[[[[range(1000000)]]]]] AS l", id="nested five deep"),
        pytest.param("SELECT map(range(300000), range(300000)) AS m", id="map"),
        pytest.param("SELECT union_value(k := range(1000000)) AS u", id="union"),
        # a field's name that reads as a type turned the bound off (a review)
        pytest.param("SELECT {'MAP(x': range(1000000)} AS s", id="a struct field named MAP("),
    ],
)
def test_a_row_past_the_limit_by_its_bound_is_never_converted(sql):
    """A map, a union and a value nested more than four deep counted one byte in
    the bound that keeps rows past the reply limit from Python's conversion, which holds the
    interpreter lock: a 2,048-row vector of 5,000-entry maps held every other client of the
    daemon 25 s (a hunt). Refused by its bound ("at least"), it was never converted."""
    from foundry.analytics.sandbox import QueryFailed, run_query

    with pytest.raises(QueryFailed, match=r"first row is at least \d+ bytes of JSON"):
        run_query(duckdb.connect(), sql, {}, 10, 1 << 19)  # 512 KiB: each ~7 bytes, counted 1-4


def test_rows_are_converted_a_few_at_a_time_letting_other_threads_run():
    """A fetch converts its rows in one call that holds the interpreter lock: 1,000 rows of
    1,000-entry maps held it ~2.5 s (every other client of the daemon waited)."""
    from foundry.analytics.sandbox import run_query

    worst, done = [0.0], threading.Event()

    def tick() -> None:
        last = time.perf_counter()
        while not done.is_set():
            time.sleep(0.001)
            now = time.perf_counter()
            worst[0], last = max(worst[0], now - last), now

    ticker = threading.Thread(target=tick)
    ticker.start()
    try:
        sql = "SELECT map(range(1000), range(1000)) AS m FROM range(2048)"
        result = run_query(duckdb.connect(), sql, {}, 10_000)
    finally:
        done.set()
        ticker.join()
    assert result.truncated
    assert len(result.rows) > 100
    assert worst[0] < 0.5, f"the interpreter lock was held {worst[0]:.2f} s at once"


def test_struct_fields_are_read_from_duckdbs_type_names():
    con = duckdb.connect()
    kind = con.execute(
        """SELECT {'a b': 1, 'c"d': [1], 'x,y(': {'f': 'g'}, e: NULL} AS s"""
    ).description[0][1]
    assert struct_fields(str(kind)) == [
        ("a b", "INTEGER"), ('c"d', "INTEGER[]"), ("x,y(", "STRUCT(f VARCHAR)"), ("e", '"NULL"'),
    ]  # fmt: skip
    assert struct_fields("VARCHAR[]") == []


async def test_a_reply_fits_a_grpc_clients_limit_with_its_framing_and_columns(tmp_path):
    """Each row counts its protobuf framing, and the columns their names: 10,000 rows of 418
    bytes (4,180,000 of JSON) made a reply over 4 MiB."""
    async with running_store(tmp_path) as store:
        sql = "SELECT repeat('x', 414) AS s FROM range(10000)"
        reply = await ask(store, lambda r: RunUserQuery(sql, {}, 10_000, 5.0, r, encode_rows))
        assert reply.truncated
        head = bytes(analytics_api.QueryResponse(columns=[analytics_api.Column("s", "VARCHAR")],
                     truncated=True, elapsed_ms=reply.elapsed_ms))  # fmt: skip
        assert len(head + reply.rows_wire) <= DEFAULT_MAX_BYTES
        wide = '"' + "n" * 5_000 + '"'
        columns = ", ".join(f'1 AS {wide[:-1]}{i}"' for i in range(1_000))
        with pytest.raises(InvalidArgument, match=r"columns alone are \d+ bytes"):
            await query(store, f"SELECT {columns} WHERE false")


async def test_duckdb_errors_are_invalid_argument_cut_short(tmp_path):
    async with running_store(tmp_path) as store:
        with pytest.raises(InvalidArgument, match="nope") as bad:
            await query(store, "SELECT nope FROM events")
        assert len(str(bad.value)) <= 300
        with pytest.raises(InvalidArgument, match="missing parameter"):
            await query(store, "SELECT $x")
        with pytest.raises(InvalidArgument, match="unknown parameter"):
            await query(store, "SELECT 1", {"x": "1"})
        # Parameters are bound, never formatted into the SQL.
        hostile = "'; DROP TABLE events; --"
        assert await rows(store, "SELECT $x AS v, $n::INTEGER + 1", {"x": hostile, "n": "41"}) == [
            [hostile, 42]
        ]
        assert await rows(store, "SELECT count(*) FROM events") == [[0]]


async def test_an_error_while_rows_are_rendered_is_the_querys_own(tmp_path):
    # The columns' types allow DuckDB to render the rows' JSON, and the rendering run fails: the
    # query is then run as written and reports its own error (not an aborted transaction).
    async with running_store(tmp_path) as store:
        with pytest.raises(InvalidArgument, match="Could not convert string 'x'"):
            await query(store, "SELECT CAST(s AS INTEGER) FROM (VALUES ('1'), ('x')) t(s)")
        assert await rows(store, "SELECT 42") == [[42]]


async def test_a_write_the_check_lets_through_reports_duckdbs_own_error(tmp_path):
    # A DELETE inside a WITH parses as a SELECT; DESCRIBE of it fails and aborts the transaction,
    # which must not become the answer ("Current transaction is aborted").
    async with running_store(tmp_path) as store:
        await ask(store, lambda r: Append((_event("e_kept"),), ack=r))
        with pytest.raises(InvalidArgument) as refused:
            await query(store, "WITH x AS (DELETE FROM events RETURNING *) SELECT * FROM x")
        assert "aborted" not in str(refused.value)
        assert "data-modifying" in str(refused.value) or "read-only" in str(refused.value)
        assert await rows(store, "SELECT event_id FROM events") == [["e_kept"]]


async def test_values_come_back_as_json(tmp_path):
    async with running_store(tmp_path) as store:
        got = await rows(
            store,
            "SELECT TIMESTAMPTZ '2025-03-01 12:00:00+00' AS t, DATE '2025-03-01' AS d, "
            "'{\"a\": [1]}'::JSON AS j, [1, 2] AS l, {'k': 'v'} AS s, NULL AS z, "
            "1.5::DECIMAL(4,2) AS dec, 9007199254740993 AS big, 'nan'::DOUBLE AS nan, true AS b",
        )
    assert got == [
        ["2025-03-01T12:00:00+00:00", "2025-03-01", {"a": [1]}, [1, 2], {"k": "v"}, None, 1.5,
         "9007199254740993", "nan", True]
    ]  # fmt: skip


@pytest.mark.parametrize("listed", [False, True], ids=["rendered by duckdb", "by python"])
async def test_a_decimal_a_double_cannot_hold_is_its_exact_text(tmp_path, listed):
    """They were rounded to a double: 9007199254740993 answered 9007199254740992.0, with no
    sign (a hunt). A list column has its rows made in Python, the others by DuckDB."""
    extra = ", [1] AS l" if listed else ""
    async with running_store(tmp_path) as store:
        got = await rows(
            store,
            "SELECT 9007199254740993::DECIMAL(18,0) AS a, 0.1::DECIMAL(18,1) AS b, "
            "1234567890123456789012345678.1234567890::DECIMAL(38,10) AS c, "
            f"-2.50::DECIMAL(5,2) AS d, 12345678901234567890::DECIMAL(38,0) AS e{extra}",
        )
    assert got[0][:5] == ["9007199254740993", 0.1, "1234567890123456789012345678.1234567890",
                          -2.5, "12345678901234567890"]  # fmt: skip
    async with running_store(tmp_path) as store:  # (a review: lossy in DuckDB's rendering)
        got = await rows(
            store,
            "SELECT -3679134.6305200256::DECIMAL(18,10) AS a, "
            "603652.7340000001024::DECIMAL(25,13) AS b, 0.3::DECIMAL(38,30) AS c, "
            "0.000000123456789012345678900000::DECIMAL(38,30) AS d, "
            f"0.123456789012345678::DECIMAL(18,18) AS e{extra}",
        )
    assert got[0][:5] == ["-3679134.6305200256", "603652.7340000001024", 0.3,
                          "0.000000123456789012345678900000", "0.123456789012345678"]  # fmt: skip
    async with running_store(tmp_path) as store:  # (a review: exact, but written with exponents)
        got = await rows(
            store,
            "SELECT 0.00001::DECIMAL(5,5) AS a, 0.000010::DECIMAL(20,6) AS b, "
            "10000000000000000::DECIMAL(20,0) AS c, 150000000000000000::DECIMAL(38,2) AS d, "
            f"0.00000000095::DECIMAL(38,38) AS e, 0.0000000095::DECIMAL(30,30) AS f{extra}",
        )
    assert got[0][:6] == [1e-05, 1e-05, 1e16, 1.5e17, 9.5e-10, 9.5e-09]


async def test_non_finite_and_large_numbers_in_json_values_are_json(tmp_path):
    """JSON a query makes may hold NaN, Infinity and integers past 2^53: they were written as
    they were (no JSON parser reads ``NaN``). (A JSON column: the rows are made in Python, where
    a real first or last timestamp is itself, not an infinite one.)"""
    async with running_store(tmp_path) as store:
        got = await rows(
            store,
            "SELECT json_object('a', 'nan'::DOUBLE, 'b', '-inf'::DOUBLE, 'c', 9007199254740993)"
            " AS j, TIMESTAMP '0001-01-01 00:00:00' AS t, TIMESTAMP '2024-01-01 01:02:03.5' AS f",
        )
    assert got == [
        [{"a": "nan", "b": "-inf", "c": "9007199254740993"}, "0001-01-01T00:00:00",
         "2024-01-01T01:02:03.500000"]
    ]  # fmt: skip


async def test_a_timestamp_column_is_rendered_by_duckdb_as_the_others(tmp_path):
    async with running_store(tmp_path) as store:
        got = await rows(
            store,
            "SELECT 'infinity'::TIMESTAMP AS t, TIMESTAMP '2024-01-01' AS u, "
            "'-infinity'::TIMESTAMPTZ AS z",
        )
    assert got == [["infinity", "2024-01-01T00:00:00", "-infinity"]]


async def test_nanosecond_timestamps_and_intervals_keep_what_duckdb_holds(tmp_path):
    """A TIMESTAMP_NS lost its last three digits (Python's datetime), and an INTERVAL became a
    number of seconds, its month 30 days: both are DuckDB's own text now — an interval inside
    a list (rows Python makes) as DuckDB would write its days and time."""
    async with running_store(tmp_path) as store:
        got = await rows(
            store,
            "SELECT TIMESTAMP_NS '2026-01-01 00:00:00.123456789' AS n, "
            "TIMESTAMP_NS '2026-01-01 00:00:01' AS w, INTERVAL '1 year 2 months 3 days' AS i, "
            "INTERVAL 90 MINUTE AS m, -INTERVAL 1500 MILLISECOND AS s",
        )
        nested = await rows(
            store, "SELECT [INTERVAL 3 DAY, INTERVAL 90 MINUTE, -INTERVAL 1500 MILLISECOND] AS l"
        )
    assert got == [["2026-01-01T00:00:00.123456789", "2026-01-01T00:00:01",
                     "1 year 2 months 3 days", "01:30:00", "-00:00:01.5"]]  # fmt: skip
    assert nested == [[["3 days", "01:30:00", "-00:00:01.5"]]]


async def test_an_explain_with_options_runs(tmp_path):
    async with running_store(tmp_path) as store:
        [[plan_type, plan]] = await rows(store, "EXPLAIN (FORMAT JSON) SELECT 1")
    assert plan_type == "physical_plan"
    assert "PROJECTION" in json.dumps(plan)


# --- saved questions on known data ----------------------------------------------------------------


def _event(event_id, *, project="p1", depth=0, trace_id=None, at=T0):
    return Event(
        id=event_id, event_type="t", project=project, occurred_at=at, recorded_at=at,
        throttle=Throttle.FULL, workflow_id=trace_id or event_id, payload={}, payload_json="{}",
        depth=depth,
    )  # fmt: skip


def _execution(block, duration, state="completed", n=0):
    trigger = _event(f"e_{block}_{n}")
    at = T0 + timedelta(seconds=n)
    return ExecutionRecord(
        workflow_id=trigger.id, block_name=block, trigger=trigger, state=state,
        success=state == "completed", summary="", emitted=(), started_at=at,
        completed_at=at + timedelta(milliseconds=duration), duration_ms=duration, raw_output="",
        exit_code=0, audit_artifacts=(), attempts=1, throttled=False,
    )  # fmt: skip


def _chain(workflow_id, project, state, blocks=1):
    return FinishedChain(
        workflow_id=workflow_id, workflow_type="t", project=project, throttle=Throttle.FULL,
        state=state, error="" if state == "completed" else "boom", started_at=T0,
        completed_at=T0 + timedelta(seconds=1), event_count=1, block_count=blocks, trace=None,
    )  # fmt: skip


def _run(run_id, team, at):
    return RunSubmission(
        run_id=run_id, dag_json="{}", inputs={}, seed=0, labels={"team": team}, breakpoints=(),
        idempotency_key="", created_at=at,
    )  # fmt: skip


def _step(run_id, seq, step, kind, at, **payload):
    return RunEventRecord(run_id, seq, step, kind, {"attempt": 1, **payload}, at)


def _known_data():
    day2 = T0 + timedelta(days=1)
    ms = timedelta(milliseconds=1)
    records = [
        # block_health: a = 10, 20, 30 (failed), 40 ms; b = 100, 200 ms and a skipped one.
        *(_execution("a", d, "failed" if d == 30 else "completed", n) for n, d in
          enumerate([10, 20, 30, 40])),
        _execution("b", 100, n=10), _execution("b", 200, n=11),
        _execution("b", 9999, "skipped", n=12),
        # workflows_by_state
        _chain("w1", "p1", "completed"), _chain("w2", "p1", "completed"),
        _chain("w3", "p1", "failed"), _chain("w4", "p2", "completed"),
        _chain("w5", "p2", "completed", blocks=0),  # an emit no block sinks: not a workflow
        _event("w6", project="p2"),  # in flight
        # spend and slowest steps
        _run("run_1", "x", T0), _run("run_2", "y", day2),
        _step("run_1", 1, "s1", "step_leased", T0, model="m1"),
        _step("run_1", 2, "s2", "step_leased", T0, model="m2"),
        _step("run_1", 3, "s2", "step_completed", T0 + 500 * ms, output={"text": "hi"},
              usage={"tokens_in": 1, "tokens_out": 2, "cost": 0.002}),
        _step("run_1", 4, "s1", "step_completed", T0 + 2000 * ms,
              output={"model": "gpt-a"}, usage={"tokens_in": 10, "tokens_out": 5, "cost": 0.01}),
        _step("run_2", 1, "s1", "step_leased", day2, model=""),
        _step("run_2", 2, "s2", "step_leased", day2 + 1000 * ms, model="m2"),
        _step("run_2", 3, "s2", "step_failed", day2 + 5000 * ms, error="boom"),
        _step("run_2", 4, "s1", "step_completed", day2 + 10_000 * ms,
              output={"model": "gpt-a"}, usage={"tokens_in": 100, "tokens_out": 50, "cost": 0.1}),
        # eval regressions: a's pass rate drops, b's score drops, c holds
        *(EvalScenarioRecord(f"sc_{slug}", "pack", slug, slug, "", {}, {}, T0, T0)
          for slug in "abc"),
        *(EvalResultRecord(f"r{i}", f"sc_{slug}", "run_1", commit, outcome, {"score": score}, T0)
          for i, (slug, commit, outcome, score) in enumerate([
              ("a", "A", "passed", 1.0), ("a", "A", "passed", 1.0), ("b", "A", "passed", 0.9),
              ("c", "A", "passed", 1.0), ("a", "B", "passed", 1.0), ("a", "B", "failed", 0.0),
              ("b", "B", "passed", 0.8), ("c", "B", "passed", 1.0), ("c", "C", "failed", 0.0),
          ])),
        # gate effects
        *(GateDecisionRecord(f"g{i}", "ch", "rev", effect, (), (), {}, {}, {}, "me", at)
          for i, (effect, at) in enumerate([("allow", T0), ("allow", T0), ("deny", T0),
                                            ("follow_up", day2)])),
    ]  # fmt: skip
    return tuple(records)


async def test_every_saved_question_on_known_data(tmp_path):
    assert {q.name for q in questions.list_questions()} == {
        "block_health", "spend", "slowest_steps", "eval_regressions", "gate_effects",
        "workflows_by_state",
    }  # fmt: skip
    async with running_store(tmp_path) as store:
        await ask(store, lambda r: Append(_known_data(), ack=r))

        assert await question(store, "block_health") == [
            ["a", 4, 1, 0.25, 25.0, 38.5],
            ["b", 2, 0, 0.0, 150.0, 195.0],
        ]
        assert await question(store, "block_health", since="2025-03-01T12:00:05Z") == [
            ["b", 2, 0, 0.0, 150.0, 195.0],
        ]
        assert await question(store, "spend", label="team") == [
            ["2025-03-01", "gpt-a", "x", 1, 10, 5, 0.01],
            ["2025-03-01", "m2", "x", 1, 1, 2, 0.002],
            ["2025-03-02", "gpt-a", "y", 1, 100, 50, 0.1],
        ]
        assert await question(store, "spend") == [  # no label: one group per day and model
            ["2025-03-01", "gpt-a", "", 1, 10, 5, 0.01],
            ["2025-03-01", "m2", "", 1, 1, 2, 0.002],
            ["2025-03-02", "gpt-a", "", 1, 100, 50, 0.1],
        ]
        slowest = await question(store, "slowest_steps", limit="3")
        assert [row[:5] for row in slowest] == [
            ["run_2", "s1", 1, "step_completed", 10_000],
            ["run_2", "s2", 1, "step_failed", 4_000],
            ["run_1", "s1", 1, "step_completed", 2_000],
        ]
        assert await question(store, "eval_regressions", commit_a="A", commit_b="B") == [
            ["pack", "a", 2, 2, 1.0, 0.5, 1.0, 0.5, -0.5, -0.5],
            ["pack", "b", 1, 1, 1.0, 1.0, 0.9, 0.8, 0.0, -0.1],
        ]
        assert await question(store, "eval_regressions", commit_a="B", commit_b="A") == []
        assert await question(store, "gate_effects") == [
            ["2025-03-01", "allow", 2], ["2025-03-01", "deny", 1],
            ["2025-03-02", "follow_up", 1],
        ]  # fmt: skip
        assert await question(store, "gate_effects", bucket="month") == [
            ["2025-03-01", "allow", 2], ["2025-03-01", "deny", 1],
            ["2025-03-01", "follow_up", 1],
        ]  # fmt: skip
        assert await question(store, "workflows_by_state") == [
            ["p1", "completed", 2], ["p1", "failed", 1],
            ["p2", "completed", 1], ["p2", "in_flight", 1],
        ]  # fmt: skip


def test_a_saved_question_refuses_an_unknown_parameter():
    with pytest.raises(QueryRefused, match="has no parameter nope"):
        questions.load("spend").bind({"nope": "1"})
    with pytest.raises(KeyError, match="no saved question"):
        questions.load("nope")


@pytest.mark.parametrize(
    "sql", ["SELECT " + "K" * 3000 + " FROM t", "SELECT '" + "K" * 3000 + "'::INT"]
)
def test_duckdbs_message_quotes_at_most_60_characters_of_the_query_at_a_time(sql):
    con = duckdb.connect()
    con.execute("CREATE TABLE t (a INT)")
    with pytest.raises(duckdb.Error) as caught:
        con.execute(sql)
    message = cut(str(caught.value))
    assert "K" * 61 not in message
    assert "K" * 40 in message  # what it names, still recognisable
    assert message.startswith(("Binder Error", "Conversion Error")), message


async def test_parameters_whose_names_differ_in_case_alone_are_one_and_so_refused(tmp_path):
    # DuckDB's names ignore case: $a and $A took one value, whichever came last
    async with running_store(tmp_path) as store:
        with pytest.raises(InvalidArgument, match="parameters a and A name one parameter"):
            await query(store, "SELECT $a AS x, $A AS y", {"a": "1", "A": "2"})
        assert await rows(store, "SELECT $a AS x, $A AS y", {"A": "2"}) == [["2", "2"]]


async def test_a_json_value_too_deep_to_answer_is_said_so(tmp_path):
    # json.loads raised RecursionError: INTERNAL
    async with running_store(tmp_path) as store:
        deep = "SELECT (repeat('[', 1000) || repeat(']', 1000))::JSON AS j"
        with pytest.raises(InvalidArgument, match="nested too deeply to answer"):
            await query(store, deep)
        assert await rows(store, "SELECT 1 AS one") == [[1]]


def test_a_querys_snapshot_is_taken_under_the_gate_retention_holds(tmp_path):
    """Retention holds the gate from a pass's delete until its files are in the archive: a
    query whose snapshot fell in between found the pass's rows in neither place."""
    from foundry.analytics.sandbox import run_query

    path = str(tmp_path / "db.duckdb")
    with duckdb.connect(path) as setup:
        setup.execute("CREATE TABLE retention_passes (pass_id VARCHAR)")
        setup.execute("CREATE TABLE t (n INTEGER)")
    con = duckdb.connect(path)
    gate = threading.Lock()
    answers: list[object] = []
    with gate:  # a pass between its commit and its files' move
        reader = threading.Thread(
            target=lambda: answers.append(
                run_query(con.cursor(), "SELECT count(*) FROM t", {}, 10, snapshot_gate=gate)
            )
        )
        reader.start()
        reader.join(0.3)
        assert reader.is_alive()  # waiting for the gate, no snapshot taken yet
        con.cursor().execute("INSERT INTO t VALUES (1)")  # what the pass commits meanwhile
    reader.join(10)
    [result] = answers
    assert [json.loads(row) for row in result.rows] == [[1]]  # its snapshot: after the pass
    con.close()
