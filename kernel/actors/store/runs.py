"""Read queries for runs (the store runs them on a read cursor for its run query messages)."""

from __future__ import annotations

import json
from typing import Any

import duckdb
from foundry.kernel.core.run_control import RunListQuery, RunSummary
from foundry.kernel.core.runs import RunEventRecord, RunSubmission

_SUBMISSION = (
    "SELECT run_id, dag_json, inputs, seed, labels, breakpoints, idempotency_key, created_at, "
    "parent_run_id, branch_step, note, trace_id, span_id FROM runs"
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


def load_run_events(con: duckdb.DuckDBPyConnection, run_id: str) -> list[RunEventRecord]:
    rows = con.execute(
        "SELECT run_id, seq, step_id, kind, payload, occurred_at FROM run_events "
        "WHERE run_id = ? ORDER BY seq",
        [run_id],
    ).fetchall()
    return [_event(r) for r in rows]


def load_run(
    con: duckdb.DuckDBPyConnection, run_id: str
) -> tuple[RunSubmission, list[RunEventRecord]] | None:
    submission = load_submission(con, run_id)
    if submission is None:
        return None
    return submission, load_run_events(con, run_id)


def load_submission(con: duckdb.DuckDBPyConnection, run_id: str) -> RunSubmission | None:
    row = con.execute(f"{_SUBMISSION} WHERE run_id = ?", [run_id]).fetchone()
    return None if row is None else _submission(row)


def load_unfinished_runs(
    con: duckdb.DuckDBPyConnection,
) -> list[tuple[RunSubmission, list[RunEventRecord]]]:
    """Runs whose log has no terminal event: a restarted daemon picks them up."""
    ids = con.execute(
        "SELECT run_id FROM runs WHERE run_id NOT IN (SELECT run_id FROM run_events "
        "WHERE kind IN ('run_succeeded', 'run_failed', 'run_canceled')) ORDER BY created_at"
    ).fetchall()
    found = [load_run(con, run_id) for (run_id,) in ids]
    return [f for f in found if f is not None]


def load_idempotency_keys(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    rows = con.execute("SELECT idempotency_key, run_id FROM runs WHERE idempotency_key <> ''")
    return dict(rows.fetchall())


# A run's status is its last run-level event's (cancel_requested leaves it RUNNING until the end).
_STATUS_KINDS = {
    "run_submitted": "PENDING", "run_started": "RUNNING", "run_resumed": "RUNNING",
    "run_paused": "PAUSED_AT_STEP", "run_succeeded": "SUCCEEDED", "run_failed": "FAILED",
    "run_canceled": "CANCELED",
}  # fmt: skip
_STATUS_CASE = " ".join(f"WHEN '{k}' THEN '{v}'" for k, v in _STATUS_KINDS.items())
_KINDS = ", ".join(f"'{k}'" for k in _STATUS_KINDS)

# Filters on the runs table narrow first; only the candidates' events are aggregated, and only
# run-level events' payloads are read (small: a step's payload holds its output, and an
# aggregate's FILTER does not keep DuckDB from reading the payloads it skips — a run's 19 MB of
# outputs made every ListRuns run out of memory).
_LIST_RUNS = f"""
WITH candidates AS (
    SELECT run_id, created_at, labels, parent_run_id, branch_step FROM runs WHERE {{where}}
), marks AS (
    SELECT run_id,
           arg_max(kind, seq) AS last_kind,
           arg_max(step_id, seq) AS last_step,
           arg_max(payload->>'error', seq) FILTER (WHERE kind = 'run_failed') AS error,
           max(CAST(payload->>'steps' AS INTEGER)) FILTER (WHERE kind = 'run_submitted')
               AS step_count
    FROM run_events
    WHERE run_id IN (SELECT run_id FROM candidates) AND kind IN ({_KINDS})
    GROUP BY run_id
), updates AS (
    SELECT run_id, max(occurred_at) AS updated_at
    FROM run_events WHERE run_id IN (SELECT run_id FROM candidates) GROUP BY run_id
), listed AS (
    SELECT c.*, coalesce(CASE m.last_kind {_STATUS_CASE} END, 'PENDING') AS status,
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
    for key, value in query.labels:
        where.append("json_extract_string(labels, ?) = ?")
        params += [_json_pointer(key), value]
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
