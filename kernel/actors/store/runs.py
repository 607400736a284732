"""Read queries for runs (the store runs them on a read cursor for its run query messages)."""

from __future__ import annotations

import json
from operator import itemgetter
from typing import Any

import duckdb
from foundry.kernel.actors.store.looks import in_looks
from foundry.kernel.core.run_control import RunListQuery, RunSummary
from foundry.kernel.core.runs import RunEventRecord, RunSubmission

# A query that filters on a column reads, from DuckDB 2.0's scan, only the kept rows' other
# columns — unless it also returns that column: then it reads every row of a 2,048-row vector,
# and a neighbour's MB-sized payloads ran a small run's GetRun out of [store] memory_limit. So
# these queries return the value asked for, not the column (``? AS run_id``; ``SELECT *
# REPLACE``) — tests/kernel/test_store.py holds them to it under a small limit.
_SUBMISSION = (
    "SELECT CAST($run_id AS VARCHAR), dag_json, inputs, seed, labels, breakpoints, "
    "idempotency_key, created_at, parent_run_id, branch_step, note, trace_id, span_id "
    "FROM runs WHERE run_id = $run_id"
)


def _submission(row: tuple[Any, ...]) -> RunSubmission:
    return RunSubmission(
        run_id=row[0],
        dag_json=row[1],
        inputs=json.loads(row[2]),
        seed=row[3],
        labels=json.loads(row[4]),
        breakpoints=tuple(row[5]),
        idempotency_key=row[6],
        created_at=row[7],
        parent_run_id=row[8],
        branch_step=row[9],
        note=row[10],
        trace_id=row[11] or "",
        span_id=row[12] or "",
    )


def _event(row: tuple[Any, ...]) -> RunEventRecord:
    return RunEventRecord(row[0], row[1], row[2], row[3], json.loads(row[4]), row[5])


def load_run_events(
    con: duckdb.DuckDBPyConnection, run_id: str, rowids: list[int] | None = None
) -> list[RunEventRecord]:
    """A run's events in order, read in looks (``looks.py``): a run of 1,000 steps of 100 KB
    outputs, read at once, needed 200 MB of DuckDB's memory. ``rowids``: its events' rows,
    when they are known already (else found here)."""
    if rowids is None:
        rowids = [r for (r,) in con.execute(_RUN_ROWIDS, {"run_id": run_id}).fetchall()]
    rows = sorted(in_looks(con, _RUN_EVENTS, {"run_id": run_id}, rowids), key=itemgetter(1))
    return [_event(r) for r in rows]


_RUN_ROWIDS = "SELECT rowid FROM run_events WHERE run_id = $run_id ORDER BY rowid"
_RUN_EVENTS = (
    "SELECT CAST($run_id AS VARCHAR), seq, step_id, kind, payload, occurred_at, strlen(payload) "
    "FROM run_events WHERE rowid BETWEEN $lo AND $hi AND run_id = $run_id"
)


def load_run(
    con: duckdb.DuckDBPyConnection, run_id: str
) -> tuple[RunSubmission, list[RunEventRecord]] | None:
    submission = load_submission(con, run_id)
    if submission is None:
        return None
    return submission, load_run_events(con, run_id)


def load_submission(con: duckdb.DuckDBPyConnection, run_id: str) -> RunSubmission | None:
    row = con.execute(_SUBMISSION, {"run_id": run_id}).fetchone()
    return None if row is None else _submission(row)


def load_unfinished_runs(
    con: duckdb.DuckDBPyConnection,
) -> list[tuple[RunSubmission, list[RunEventRecord]]]:
    """Runs whose log has no terminal event, oldest first: a restarted daemon picks them up.
    Their events' rowids are found together (a query a run for them, one after another, was
    a third of the 17 s 3,000 runs paused at breakpoints took to start); each run's rows are
    then read by its id (a filter on several ids is no filter DuckDB's scan applies before it
    reads the payloads: a finished run's 2 MB outputs beside them ran out of memory)."""
    ids = con.execute(f"{_UNFINISHED} ORDER BY created_at").fetchall()
    rowids: dict[str, list[int]] = {run_id: [] for (run_id,) in ids}
    for rowid, run_id in con.execute(_UNFINISHED_EVENT_ROWIDS).fetchall():
        rowids[run_id].append(rowid)
    found = []
    for run_id, its_rowids in rowids.items():
        submission = load_submission(con, run_id)
        if submission is not None:
            found.append((submission, load_run_events(con, run_id, its_rowids)))
    return found


_UNFINISHED = (
    "SELECT run_id FROM runs WHERE run_id NOT IN (SELECT run_id FROM run_events "
    "WHERE kind IN ('run_succeeded', 'run_failed', 'run_canceled'))"
)
_UNFINISHED_EVENT_ROWIDS = (
    f"SELECT rowid, run_id FROM run_events WHERE run_id IN ({_UNFINISHED}) ORDER BY rowid"
)


def load_idempotency_keys(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    rows = con.execute("SELECT idempotency_key, run_id FROM runs WHERE idempotency_key <> ''")
    return dict(rows.fetchall())


# A run's status is its last run-level event's; a cancel_requested leaves it as it was until the
# run_canceled, but a paused run is RUNNING again (it stops waiting for ResumeRun: core/runs.py).
_STATUS_KINDS = {
    "run_submitted": "PENDING", "run_started": "RUNNING", "run_resumed": "RUNNING",
    "run_paused": "PAUSED_AT_STEP", "run_succeeded": "SUCCEEDED", "run_failed": "FAILED",
    "run_canceled": "CANCELED",
}  # fmt: skip
_STATUS_CASE = " ".join(f"WHEN '{k}' THEN '{v}'" for k, v in _STATUS_KINDS.items())

# Filters on the runs table narrow first; only the candidates' events are aggregated, and only
# run-level events' payloads are read (small: a step's payload holds its output — a run's 19 MB
# of outputs made every ListRuns run out of memory). DuckDB's scan reads the payloads of only the
# rows its pushed-down filters keep, and only while it does not also return the filtered column:
# a scan that returned kind, or filtered it with an IN list, read every payload of a vector (135
# MB for 76 MB of step payloads, against 1 MB). So each run-level kind whose payload counts is a
# scan of its own, by equality, and the scan returning kind reads no payload.
_READ_KINDS = ("run_submitted", "run_failed")  # the run-level kinds whose payloads count
_OTHER_KINDS = ", ".join(
    [f"'{k}'" for k in _STATUS_KINDS if k not in _READ_KINDS] + ["'cancel_requested'"]
)
_LIST_RUNS = f"""
WITH candidates AS (
    SELECT run_id, created_at, labels, parent_run_id, branch_step FROM runs WHERE {{where}}
), run_level AS (
    SELECT run_id, seq, step_id, 'run_submitted' AS kind, NULL AS error,
           CAST(payload->>'steps' AS INTEGER) AS steps
    FROM run_events WHERE kind = 'run_submitted'
    UNION ALL
    SELECT run_id, seq, step_id, 'run_failed', payload->>'error', NULL
    FROM run_events WHERE kind = 'run_failed'
    UNION ALL
    SELECT run_id, seq, step_id, kind, NULL, NULL FROM run_events WHERE kind IN ({_OTHER_KINDS})
), marks AS (
    SELECT run_id,
           arg_max(kind, seq) AS last_kind,
           arg_max(kind, seq) FILTER (WHERE kind <> 'cancel_requested') AS status_kind,
           arg_max(step_id, seq) AS last_step,
           arg_max(error, seq) FILTER (WHERE kind = 'run_failed') AS error,
           max(steps) AS step_count
    FROM run_level WHERE run_id IN (SELECT run_id FROM candidates)
    GROUP BY run_id
), updates AS (
    SELECT run_id, max(occurred_at) AS updated_at
    FROM run_events WHERE run_id IN (SELECT run_id FROM candidates) GROUP BY run_id
), listed AS (
    SELECT c.*, CASE WHEN m.last_kind = 'cancel_requested' AND m.status_kind = 'run_paused'
                     THEN 'RUNNING'
                     ELSE coalesce(CASE m.status_kind {_STATUS_CASE} END, 'PENDING') END AS status,
           m.last_kind, m.last_step, m.error, m.step_count, u.updated_at
    FROM candidates c LEFT JOIN marks m USING (run_id) LEFT JOIN updates u USING (run_id)
)
SELECT run_id, status, created_at, coalesce(updated_at, created_at), labels, parent_run_id,
       branch_step, coalesce(step_count, 0),
       CASE WHEN last_kind = 'run_paused' THEN last_step ELSE '' END, coalesce(error, '')
FROM listed {{having}}
ORDER BY created_at DESC, run_id DESC LIMIT ?
"""


def list_runs(con: duckdb.DuckDBPyConnection, query: RunListQuery) -> list[RunSummary]:
    """Runs matching ``query``, newest first: up to ``page_size + 1`` of them."""
    where: list[str] = ["TRUE"]
    params: list[Any] = []
    if query.labels:  # every label filter from one parse of a run's labels: a parse per filter
        # ran out of memory_limit over two runs of 50,000 labels, for every later ListRuns
        where.append("json_extract_string(labels, ?::VARCHAR[]) = ?::VARCHAR[]")
        params += [[_json_pointer(key) for key, _ in query.labels],
                   [value for _, value in query.labels]]  # fmt: skip
    if query.parent_run_id:
        where.append("parent_run_id = ?")
        params.append(query.parent_run_id)
    if query.created_after is not None:
        where.append("created_at >= ?")
        params.append(query.created_after)
    if query.created_before is not None:
        where.append("created_at < ?")
        params.append(query.created_before)
    if query.after is not None:
        where.append("(created_at < ? OR (created_at = ? AND run_id < ?))")
        params += [query.after[0], query.after[0], query.after[1]]
    having = ""
    if query.statuses:
        having = f"WHERE status IN ({', '.join('?' for _ in query.statuses)})"
        params += list(query.statuses)
    sql = _LIST_RUNS.format(where=" AND ".join(where), having=having)
    rows = con.execute(sql, [*params, query.page_size + 1]).fetchall()
    return [_summary(row) for row in rows]


def _json_pointer(key: str) -> str:
    """RFC 6901: the label key as a path DuckDB's JSON functions take, whatever it contains."""
    return "/" + key.replace("~", "~0").replace("/", "~1")


def _summary(row: tuple[Any, ...]) -> RunSummary:
    return RunSummary(
        run_id=row[0], status=row[1], created_at=row[2], updated_at=row[3],
        labels=json.loads(row[4]), parent_run_id=row[5], branch_step=row[6],
        step_count=int(row[7]), paused_step=row[8] or "", error=row[9],
    )  # fmt: skip
