"""Analysts' SQL end to end: the Analytics RPC from grpcio (stubs generated from the .proto alone),
the time limit, Emit staying fast while a heavy query runs, and ``foundry sql`` online and
offline (the daemon stopped: the CLI opens the file read-only itself)."""

from __future__ import annotations

import csv
import importlib
import io
import json
import shutil
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import pytest

from tests.e2e.http_helpers import url
from tests.helpers import DEADLINE

PROTO = Path(__file__).resolve().parents[2] / "proto" / "foundry" / "analytics" / "v1"
QUERY = "/foundry.analytics.v1.Analytics/Query"
HEAVY = (
    "SELECT count(*) FROM range(100000) a, range(100000) b "
    "WHERE (a.range * 7 + b.range * 13) % 1000003 = 17"
)
CONFIG = """
[analytics]
query_timeout = 2.0
max_rows = 50
"""


@pytest.fixture(scope="module")
def stubs(tmp_path_factory):
    """grpcio's modules for analytics.proto, generated outside the ``foundry`` package name (the
    installed ``foundry.analytics`` would shadow ``foundry/analytics/v1/analytics_pb2``); the
    proto's package, hence the wire path, is unchanged."""
    out = tmp_path_factory.mktemp("grpcio-analytics")
    shutil.copy(PROTO / "analytics.proto", out / "analytics.proto")
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{out}", f"--python_out={out}",
         f"--grpc_python_out={out}", "analytics.proto"],
        check=True, capture_output=True, cwd=out, timeout=60,
    )  # fmt: skip
    sys.path.insert(0, str(out))
    try:
        return importlib.import_module("analytics_pb2"), importlib.import_module(
            "analytics_pb2_grpc"
        )
    finally:
        sys.path.remove(str(out))


@pytest.fixture(scope="module")
def analytics_daemon(shared_daemon):
    return shared_daemon(CONFIG, name="analytics")


def _stub(daemon, stubs):
    pb2, pb2_grpc = stubs
    channel = grpc.insecure_channel(daemon.address)
    grpc.channel_ready_future(channel).result(timeout=10)
    return channel, pb2, pb2_grpc.AnalyticsStub(channel)


def test_grpcio_calls_query_and_list_saved_questions(analytics_daemon, grpcio_client, stubs):
    with grpcio_client.connect(analytics_daemon.address) as (foundry, _):
        foundry.Emit(grpcio_client.foundry_pb2.EmitRequest(event_type="sql_probe", project="q"))
    channel, pb2, analytics = _stub(analytics_daemon, stubs)
    with channel:
        reply = analytics.Query(
            pb2.QueryRequest(
                sql="SELECT project, count(*) AS n, $tag AS tag FROM events "
                "WHERE event_type = 'sql_probe' GROUP BY project",
                params={"tag": "it's bound"},
            ),
            timeout=DEADLINE,
        )
        assert [(c.name, c.type) for c in reply.columns] == [
            ("project", "VARCHAR"), ("n", "BIGINT"), ("tag", "VARCHAR"),
        ]  # fmt: skip
        assert [json.loads(r) for r in reply.rows_json] == [["q", 1, "it's bound"]]
        assert not reply.truncated
        assert reply.elapsed_ms > 0

        capped = analytics.Query(pb2.QueryRequest(sql="FROM range(1000)", max_rows=5000))
        assert len(capped.rows_json) == 50
        assert capped.truncated

        saved = analytics.Query(pb2.QueryRequest(question="workflows_by_state"))
        assert [c.name for c in saved.columns] == ["project", "state", "workflows"]

        listed = analytics.ListSavedQuestions(pb2.ListSavedQuestionsRequest())
        names = {q.name for q in listed.questions}
        assert {"block_health", "spend", "eval_regressions"} <= names
        regressions = next(q for q in listed.questions if q.name == "eval_regressions")
        assert [p.name for p in regressions.params] == ["commit_a", "commit_b"]

        for request, code, text in [
            (pb2.QueryRequest(sql="COPY events TO '/tmp/x.csv'"), "INVALID_ARGUMENT", "COPY"),
            (pb2.QueryRequest(sql="SELECT * FROM read_csv('/etc/passwd')"), "INVALID_ARGUMENT",
             "read_csv"),
            (pb2.QueryRequest(sql="SELECT nope FROM events"), "INVALID_ARGUMENT", "nope"),
            (pb2.QueryRequest(sql=""), "INVALID_ARGUMENT", "sql"),
            (pb2.QueryRequest(question="nope"), "INVALID_ARGUMENT", "no saved question"),
            (pb2.QueryRequest(sql=HEAVY, timeout_ms=300), "DEADLINE_EXCEEDED", "0.3 s"),
        ]:  # fmt: skip
            with pytest.raises(grpc.RpcError) as failed:
                analytics.Query(request, timeout=DEADLINE)
            assert failed.value.code().name == code, failed.value.details()
            assert text in failed.value.details()


def test_a_query_binding_too_many_columns_is_refused_at_once_and_queries_go_on(analytics_daemon):
    """1.3 KB of self-joined CTEs (204,800 columns) held the analyst threads ~4 minutes past a
    5 s limit: DuckDB's binding cannot be interrupted (a hunt). Refused before it binds."""
    ctes = ["w0 AS (SELECT " + ", ".join(f"1 AS c{i}" for i in range(100)) + ")"]
    ctes += [f"w{k} AS (SELECT * FROM w{k - 1} a, w{k - 1} b)" for k in range(1, 12)]
    sql = "WITH " + ", ".join(ctes) + " SELECT * FROM w11"
    calls = [{"sql": sql}] * 2 + [{"sql": "SELECT 42 AS answer"}]
    with ThreadPoolExecutor(3) as pool:
        started = time.monotonic()
        answers = list(pool.map(
            lambda body: httpx.post(url(analytics_daemon, QUERY), json=body, timeout=DEADLINE),
            calls,
        ))  # fmt: skip
        took = time.monotonic() - started
    for refused in answers[:2]:
        assert refused.status_code == 400, refused.text
        assert "binds about 614,300 columns, more than 20,000" in refused.json()["message"]
    assert answers[2].json()["rowsJson"] == ["[42]"]
    assert took < 2.0  # (the time limit is 2 s: refused before anything binds)


def test_a_reply_stops_at_the_byte_limit_over_grpc_and_connect_json(analytics_daemon, stubs):
    """The default 4 MiB of rows' JSON (a gRPC client's default receive limit): four rows of
    1 MB fit, the fifth does not; a first row larger than that is refused by name."""
    sql = "SELECT repeat('x', 1000000) AS s FROM range(10)"
    channel, pb2, analytics = _stub(analytics_daemon, stubs)
    with channel:
        reply = analytics.Query(pb2.QueryRequest(sql=sql), timeout=DEADLINE)
        assert len(reply.rows_json) == 4
        assert reply.truncated
        with pytest.raises(grpc.RpcError) as refused:
            analytics.Query(pb2.QueryRequest(sql="SELECT repeat('x', 20000000)"), timeout=60)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "[analytics] max_reply_bytes" in refused.value.details()
    # Connect JSON: the reply is written as JSON on a worker thread, the same rows
    answer = httpx.post(url(analytics_daemon, QUERY), json={"sql": sql}, timeout=DEADLINE)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert [json.loads(row) for row in body["rowsJson"]] == [["x" * 1_000_000]] * 4
    assert body["truncated"] is True


def test_emit_stays_fast_while_a_heavy_query_runs(analytics_daemon, grpcio_client, stubs):
    """A cross join that would take minutes is interrupted at the 2 s limit; meanwhile Emit
    replies stay fast (the query runs on DuckDB's threads, off the daemon's loop)."""
    channel, pb2, analytics = _stub(analytics_daemon, stubs)
    outcome: dict[str, object] = {}

    def heavy() -> None:
        started = time.monotonic()
        try:
            analytics.Query(pb2.QueryRequest(sql=HEAVY), timeout=DEADLINE)
        except grpc.RpcError as exc:
            outcome["code"] = exc.code().name
        outcome["seconds"] = time.monotonic() - started

    with channel, grpcio_client.connect(analytics_daemon.address) as (foundry, _):
        request = grpcio_client.foundry_pb2.EmitRequest(event_type="e", project="fast")
        foundry.Emit(request)
        worker = threading.Thread(target=heavy)
        worker.start()
        time.sleep(0.3)  # the query is running
        latencies = []
        while worker.is_alive() and len(latencies) < 40:
            started = time.perf_counter()
            foundry.Emit(request, timeout=DEADLINE)
            latencies.append(time.perf_counter() - started)
            time.sleep(0.02)
        worker.join(DEADLINE)
    assert outcome["code"] == "DEADLINE_EXCEEDED"
    assert 1.8 < outcome["seconds"] < 6
    assert len(latencies) >= 10
    # Loosely, as a loaded 2-core machine runs DuckDB's threads, the loop and the client side by
    # side (two replies of 112 and 349 ms once in 57 runs under load): a loop the query blocked
    # would answer nothing for its 2 s.
    assert statistics.median(latencies) < 0.1, latencies
    assert sorted(latencies)[-3] < 0.1, latencies
    assert max(latencies) < 1.0, latencies


def test_foundry_sql_online_then_offline(make_daemon):
    daemon = make_daemon(CONFIG, name="sqlcli")
    daemon.cli("emit", "sql_cli", "--project", "p1", check=True)
    daemon.cli("emit", "sql_cli", "--project", "p2", check=True)
    sql = "SELECT project, count(*) AS n FROM events WHERE event_type = 'sql_cli' GROUP BY ALL "
    sql += "ORDER BY project"

    online = daemon.cli("sql", sql, check=True)
    assert online.stdout.splitlines() == ["project  n", "-------  -", "p1       1", "p2       1"]
    assert "directly" not in online.stderr

    as_json = json.loads(daemon.cli("sql", sql, "--json", check=True).stdout)
    assert as_json["columns"] == [{"name": "project", "type": "VARCHAR"},
                                  {"name": "n", "type": "BIGINT"}]  # fmt: skip
    assert as_json["rows"] == [["p1", 1], ["p2", 1]]
    assert as_json["truncated"] is False

    as_csv = daemon.cli("sql", sql, "--csv", check=True).stdout
    assert list(csv.reader(io.StringIO(as_csv))) == [["project", "n"], ["p1", "1"], ["p2", "1"]]
    assert as_csv.endswith("p2,1\n")  # one "\n" a row
    # a carriage return in a value is quoted: unquoted, a reader split its row in two
    crlf = daemon.cli("sql", "SELECT 'a' || chr(13) || 'b' AS v, 2 AS n", "--csv", check=True)
    # (read as text, the capture makes the "\r" a "\n": the value is still one, quoted)
    assert list(csv.reader(io.StringIO(crlf.stdout, newline=""))) == [["v", "n"], ["a\nb", "2"]]

    # flags that cannot both hold are said, not one of them dropped (found by a CLI hunt)
    for flags, said in ((("--csv", "--json"), "--csv or --json, not both"),
                        (("--list",), "--list takes no statement")):  # fmt: skip
        both = daemon.cli("sql", sql, *flags)
        assert both.returncode == 2, both.stderr
        assert said in both.stderr

    limited = daemon.cli("sql", "FROM range(10)", "--max-rows", "3", "--json", check=True)
    assert json.loads(limited.stdout)["truncated"] is True

    param = daemon.cli("sql", "SELECT $who AS who", "--param", "who=ana", "--json", check=True)
    assert json.loads(param.stdout)["rows"] == [["ana"]]

    refused = daemon.cli("sql", "DELETE FROM events")
    assert refused.returncode == 1
    assert "INVALID_ARGUMENT: DELETE statements are not allowed" in refused.stderr

    listed = daemon.cli("sql", "--list", check=True).stdout
    assert "eval_regressions" in listed
    assert "--param commit_a=" in listed

    by_state = daemon.cli("sql", "--run", "workflows_by_state", "--json", check=True)
    assert json.loads(by_state.stdout)["columns"][0]["name"] == "project"

    timed_out = daemon.cli("sql", HEAVY)
    assert timed_out.returncode == 1
    assert "DEADLINE_EXCEEDED" in timed_out.stderr

    # asked at another address, its home in use by this daemon: said so (found by a CLI hunt:
    # "the journal holds writes… (the daemon was killed?)", then DuckDB's lock error)
    elsewhere = daemon.cli("sql", sql, "--addr", "127.0.0.1:9", "--home", str(daemon.home))
    assert elsewhere.returncode == 1
    assert f"{daemon.home} is in use by pid {daemon.process.pid}" in elsewhere.stderr
    assert "killed" not in elsewhere.stderr
    target = daemon.home.parent / "export-elsewhere"
    elsewhere = daemon.cli("export", "parquet", str(target), "--addr", "127.0.0.1:9",
                           "--home", str(daemon.home))  # fmt: skip
    assert elsewhere.returncode == 1
    assert f"{daemon.home} is in use by pid {daemon.process.pid}" in elsewhere.stderr
    assert "killed" not in elsewhere.stderr
    assert "IO Error" not in elsewhere.stderr

    assert daemon.stop() == 0
    assert list((daemon.home / "journal").glob("*.journal")) == []  # a clean stop applied all
    before = (daemon.home / "foundry.duckdb").stat().st_mtime_ns

    offline = daemon.cli("sql", sql, "--json", check=True)
    assert json.loads(offline.stdout)["rows"] == [["p1", 1], ["p2", 1]]
    assert "querying" in offline.stderr
    assert "directly (read-only)" in offline.stderr

    off_csv = daemon.cli("sql", sql, "--csv", check=True)
    assert off_csv.stdout.splitlines() == ["project,n", "p1,1", "p2,1"]

    for statement, reason in [
        ("COPY events TO '/tmp/foundry-offline.csv'", "COPY statements are not allowed"),
        ("SELECT * FROM read_csv('/etc/passwd')", "read_csv() is not allowed"),
        ("ATTACH '/tmp/x.duckdb'", "ATTACH statements are not allowed"),
    ]:
        done = daemon.cli("sql", statement)
        assert done.returncode == 1
        assert reason in done.stderr, done.stderr

    off_run = daemon.cli("sql", "--run", "workflows_by_state", "--json", check=True)
    assert json.loads(off_run.stdout)["columns"][0]["name"] == "project"

    off_limited = daemon.cli("sql", "FROM range(100)", "--config", str(daemon.config), "--json",
                             "--home", str(daemon.home), check=True)  # fmt: skip
    assert len(json.loads(off_limited.stdout)["rows"]) == 50  # [analytics] max_rows
    off_memory = daemon.cli("sql", "SELECT current_setting('memory_limit') AS m", "--json",
                            "--config", str(daemon.config), "--home", str(daemon.home),
                            check=True)  # fmt: skip
    assert json.loads(off_memory.stdout)["rows"] == [["244.1 MiB"]]  # [store]'s default 256MB

    off_slow = daemon.cli("sql", HEAVY, "--config", str(daemon.config),
                          "--home", str(daemon.home))  # fmt: skip
    assert off_slow.returncode == 1
    assert "DEADLINE_EXCEEDED" in off_slow.stderr

    assert (daemon.home / "foundry.duckdb").stat().st_mtime_ns == before  # read-only
    assert not Path("/tmp/foundry-offline.csv").exists()


def test_foundry_sql_offline_warns_when_the_journal_holds_unapplied_writes(make_daemon):
    daemon = make_daemon(CONFIG + "[store]\nmaterialize_delay = 60\n", name="sqljournal")
    daemon.cli("emit", "sql_cli", "--project", "p1", check=True)  # durable: in the journal
    daemon.kill()  # before DuckDB got it

    offline = daemon.cli("sql", "SELECT count(*) AS n FROM events", "--json", check=True)
    assert "has not applied yet" in offline.stderr
    assert json.loads(offline.stdout)["rows"] == [[0]]  # as the warning says

    daemon.restart()  # replays the journal
    assert daemon.stop() == 0
    offline = daemon.cli("sql", "SELECT count(*) AS n FROM events", "--json", check=True)
    assert "has not applied yet" not in offline.stderr
    assert json.loads(offline.stdout)["rows"] == [[1]]
