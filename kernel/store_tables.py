"""How each record type becomes rows: table, typed columns, and a row function.

Rows go in as one Arrow table per table and commit: DuckDB scans Arrow in C++, where a row at a
time costs ~1 ms per row and binding Python lists to ``unnest(?)`` tens of microseconds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa

from .ids import compact_json
from .records import Event, ExecutionRecord, FinishedChain
from .runs import RunEventRecord, RunSubmission

TEXT, JSON, STAMP = pa.string(), pa.string(), pa.timestamp("us", tz="UTC")
TEXTS, INT, BIG, FLAG = pa.list_(pa.string()), pa.int32(), pa.int64(), pa.bool_()


@dataclass(frozen=True)
class TableWriter:
    table: str
    columns: tuple[tuple[str, pa.DataType], ...]
    row: Callable[[Any], tuple[Any, ...]]

    def insert(self, con: duckdb.DuckDBPyConnection, records: Sequence[Any]) -> None:
        values = zip(*(self.row(r) for r in records), strict=True)
        batch = pa.table(
            [pa.array(v, type=t) for v, (_, t) in zip(values, self.columns, strict=True)],
            names=[name for name, _ in self.columns],
        )
        names = ", ".join(name for name, _ in self.columns)
        con.register("_batch", batch)
        try:
            con.execute(f"INSERT INTO {self.table} ({names}) SELECT {names} FROM _batch")
        finally:
            con.unregister("_batch")


def _event_row(e: Event) -> tuple[Any, ...]:
    return (
        e.id, e.trace_id, e.event_type, e.project, e.occurred_at, e.recorded_at, e.throttle.value,
        e.depth, e.parent_id or None, e.emitted_by or None, e.throttled, e.payload_json,
    )  # fmt: skip


def _execution_row(x: ExecutionRecord) -> tuple[Any, ...]:
    return (
        x.trace_id, x.block_name, x.trigger.id, x.state, x.success, x.summary,
        [e.id for e in x.emitted], x.duration_ms, x.raw_output, x.exit_code,
        list(x.audit_artifacts), x.attempts, x.throttled, x.started_at, x.completed_at,
    )  # fmt: skip


def _finished_row(f: FinishedChain) -> tuple[Any, ...]:
    return (
        f.workflow_id, f.workflow_type, f.project, f.throttle.value, f.state, f.error,
        f.started_at, f.completed_at, f.event_count, f.block_count,
    )  # fmt: skip


def _submission_row(r: RunSubmission) -> tuple[Any, ...]:
    return (
        r.run_id, r.idempotency_key, r.dag_json, compact_json(r.inputs), r.seed,
        compact_json(r.labels), list(r.breakpoints), r.parent_run_id, r.branch_step, r.note,
        r.created_at,
    )  # fmt: skip


def _run_event_row(e: RunEventRecord) -> tuple[Any, ...]:
    return (e.run_id, e.seq, e.step_id, e.kind, compact_json(e.payload), e.occurred_at)


WRITERS: dict[type, TableWriter] = {
    Event: TableWriter(
        "events",
        (
            ("event_id", TEXT),
            ("trace_id", TEXT),
            ("event_type", TEXT),
            ("project", TEXT),
            ("occurred_at", STAMP),
            ("recorded_at", STAMP),
            ("throttle", TEXT),
            ("depth", INT),
            ("parent_id", TEXT),
            ("emitted_by", TEXT),
            ("throttled", FLAG),
            ("payload", JSON),
        ),
        _event_row,
    ),  # fmt: skip
    ExecutionRecord: TableWriter(
        "block_executions",
        (
            ("trace_id", TEXT),
            ("block_name", TEXT),
            ("trigger_event_id", TEXT),
            ("state", TEXT),
            ("success", FLAG),
            ("summary", TEXT),
            ("emitted_event_ids", TEXTS),
            ("duration_ms", BIG),
            ("raw_output", TEXT),
            ("exit_code", INT),
            ("audit_artifacts", TEXTS),
            ("attempts", INT),
            ("throttled", FLAG),
            ("started_at", STAMP),
            ("completed_at", STAMP),
        ),
        _execution_row,
    ),  # fmt: skip
    FinishedChain: TableWriter(
        "workflows",
        (
            ("workflow_id", TEXT),
            ("workflow_type", TEXT),
            ("project", TEXT),
            ("throttle", TEXT),
            ("state", TEXT),
            ("error", TEXT),
            ("started_at", STAMP),
            ("completed_at", STAMP),
            ("event_count", INT),
            ("block_count", INT),
        ),
        _finished_row,
    ),  # fmt: skip
    RunSubmission: TableWriter(
        "runs",
        (
            ("run_id", TEXT),
            ("idempotency_key", TEXT),
            ("dag_json", TEXT),
            ("inputs", JSON),
            ("seed", BIG),
            ("labels", JSON),
            ("breakpoints", TEXTS),
            ("parent_run_id", TEXT),
            ("branch_step", TEXT),
            ("note", TEXT),
            ("created_at", STAMP),
        ),
        _submission_row,
    ),  # fmt: skip
    RunEventRecord: TableWriter(
        "run_events",
        (
            ("run_id", TEXT),
            ("seq", INT),
            ("step_id", TEXT),
            ("kind", TEXT),
            ("payload", JSON),
            ("occurred_at", STAMP),
        ),
        _run_event_row,
    ),
}
