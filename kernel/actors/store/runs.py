"""Read queries for runs (the store runs them on a read cursor for its run query messages)."""

from __future__ import annotations

import json
from typing import Any

import duckdb
from foundry.kernel.core.runs import RunEventRecord, RunSubmission

_SUBMISSION = (
    "SELECT run_id, dag_json, inputs, seed, labels, breakpoints, idempotency_key, created_at, "
    "parent_run_id, branch_step, note FROM runs"
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
    row = con.execute(f"{_SUBMISSION} WHERE run_id = ?", [run_id]).fetchone()
    if row is None:
        return None
    return _submission(row), load_run_events(con, run_id)


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
