"""The store's read queries — one handler per query message, in ``QUERIES`` — and crash recovery.

A handler gets a read cursor of the store's DuckDB instance (inside a transaction: one snapshot
of committed data) and the message; the store runs it on a worker thread, beside commits.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import duckdb
from foundry.kernel.actors.store import attestations, governance, retention, runs
from foundry.kernel.actors.store.looks import in_looks
from foundry.kernel.actors.store.messages import (
    CountRows,
    ExportParquet,
    LoadAttestations,
    LoadEvalScenarios,
    LoadGateDecisions,
    LoadIdempotencyKeys,
    LoadNewestWorkflowStart,
    LoadRecentEvents,
    LoadRecentWorkflows,
    LoadRun,
    LoadRunAttestations,
    LoadRunEvents,
    LoadRunSummaries,
    LoadSubmission,
    LoadTrace,
    LoadUnattested,
    LoadUnattestedGovernance,
    LoadUnfinishedRuns,
    LoadWorkflow,
    RowCounts,
)
from foundry.kernel.core.ids import occurred_stamp
from foundry.kernel.core.records import FinishedChain
from foundry.kernel.core.throttle import Throttle
from foundry.kernel.core.trace_format import check_trace_size, zulu

RESTARTED = "daemon restarted before the workflow finished"
# A chain's rows with the workflow id asked for, not the column: a scan that returns the column
# it filters on reads every row of its vector (``runs._SUBMISSION`` says why that matters).
_ASKED = "* REPLACE (CAST($id AS VARCHAR) AS workflow_id)"


def _dicts(
    con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] | Mapping[str, Any]
) -> list[dict[str, Any]]:
    cursor = con.execute(sql, params if isinstance(params, Mapping) else list(params))
    names = [d[0] for d in cursor.description or ()]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _event_trace(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["event_id"],
        "event_type": row["event_type"],
        "project": row["project"],
        # as hashed into its id, written as the trace file writes it (``zulu``)
        "occurred_at": zulu(occurred_stamp(row["occurred_at"])),
        "recorded_at": zulu(occurred_stamp(row["recorded_at"])),
        "throttle": row["throttle"],
        "trace_id": row["trace_id"] or "",
        "span_id": row["span_id"] or "",  # (where ``trace_format`` writes it: the file's order)
        "payload": json.loads(row["payload"]),
        "parent_id": row["parent_id"],
        "emitted_by": row["emitted_by"],
        "depth": row["depth"],
        "throttled": row["throttled"],
        "parent_span_id": row["parent_span_id"] or None,
    }


def _execution_trace(row: dict[str, Any], payloads: dict[str, Any]) -> dict[str, Any]:
    return {
        "block_name": row["block_name"],
        "trigger_event_id": row["trigger_event_id"],
        "success": row["success"],
        "summary": row["summary"],
        "emitted_event_ids": row["emitted_event_ids"],
        "duration_ms": row["duration_ms"],
        "raw_output": row["raw_output"],
        "exit_code": row["exit_code"],
        "trigger_payload": payloads.get(row["trigger_event_id"]),
        "emitted_payloads": [payloads.get(i) for i in row["emitted_event_ids"]],
        "audit_artifacts": row["audit_artifacts"],
        "state": row["state"],
        "throttled": row["throttled"],
        "attempts": row["attempts"],
        "started_at": zulu(occurred_stamp(row["started_at"])),
        "completed_at": zulu(occurred_stamp(row["completed_at"])),
        "span_id": row["span_id"] or "",
        "parent_span_id": row["parent_span_id"] or "",
    }


def load_chain(con: duckdb.DuckDBPyConnection, workflow_id: str) -> tuple[list[Any], list[Any]]:
    """The trace form of a chain's stored events and block executions."""
    events = [
        _event_trace(r)
        for r in _dicts(
            con,
            f"SELECT {_ASKED} FROM events WHERE workflow_id = $id ORDER BY recorded_at",
            {"id": workflow_id},
        )
    ]
    payloads = {e["id"]: e["payload"] for e in events}
    executions = [
        _execution_trace(r, payloads)
        for r in _dicts(
            con,
            f"SELECT {_ASKED} FROM block_executions WHERE workflow_id = $id ORDER BY completed_at",
            {"id": workflow_id},
        )
    ]
    return events, executions


def load_trace(con: duckdb.DuckDBPyConnection, workflow_id: str) -> dict[str, Any] | None:
    """A finished chain's trace document rebuilt from the database (when its file is missing)."""
    rows = _dicts(con, "SELECT * FROM workflows WHERE workflow_id = ?", [workflow_id])
    if not rows:
        return None
    row = rows[0]
    check_trace_size(_trace_size(con, workflow_id), workflow_id)
    events, executions = load_chain(con, workflow_id)
    total = row["completed_at"] - row["started_at"]
    return {
        "events": events,
        "block_executions": executions,
        "total_duration_ms": round(total.total_seconds() * 1000),
        "workflow_id": workflow_id,
        "state": row["state"],
        "error": row["error"],
    }


# JSON bytes a trace spends on each event and each block execution besides their texts (ids,
# types, times, trace context: ~400 and more each), and on each emitted event's id in its
# emitter's list, at the least. Payloads alone made 85,000 small events read as 1.7 MB: their
# 38 MB trace was answered whole from the database, where its file answered RESOURCE_EXHAUSTED.
TRACE_EVENT_BYTES, TRACE_EXECUTION_BYTES, TRACE_ID_BYTES = 300, 300, 30


def _trace_size(con: duckdb.DuckDBPyConnection, workflow_id: str) -> int:
    """At least the JSON bytes of a chain's trace (UTF-8: ``strlen``; ``length`` counts
    characters): its events' payloads, each again as its emitter's emitted payload and as the
    trigger of each block it ran, the blocks' texts, and each event's and execution's fields."""
    found = con.execute(
        "SELECT (SELECT coalesce(sum(strlen(payload)), 0) * 2"
        f"          + count(*) * {TRACE_EVENT_BYTES + TRACE_ID_BYTES}"
        "        FROM events WHERE workflow_id = ?)"
        " + (SELECT coalesce(sum(strlen(e.payload)), 0) FROM block_executions x"
        "    JOIN (SELECT event_id, payload FROM events WHERE workflow_id = ?) e"
        "    ON e.event_id = x.trigger_event_id WHERE x.workflow_id = ?)"
        " + (SELECT coalesce(sum(strlen(coalesce(raw_output, '')) + strlen(summary)), 0)"
        f"          + count(*) * {TRACE_EXECUTION_BYTES}"
        "    FROM block_executions WHERE workflow_id = ?)",
        [workflow_id] * 4,  # (a trigger is its chain's: every event's payload was scanned,
    ).fetchone()  # and two Traces at once ran out of memory_limit beside 100 MB of others)
    return int(found[0]) if found else 0


def load_workflow(
    con: duckdb.DuckDBPyConnection, workflow_id: str
) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """A finished workflow's row and its block executions, or None."""
    rows = _dicts(
        con,
        "SELECT * FROM workflows WHERE workflow_id = ? AND block_count > 0",
        [workflow_id],
    )
    if not rows:
        return None
    blocks = _dicts(
        con,
        "SELECT block_name, state, started_at, completed_at, throttled FROM block_executions "
        "WHERE workflow_id = ? ORDER BY started_at",
        [workflow_id],
    )
    return rows[0], blocks


def load_recent_events(
    con: duckdb.DuckDBPyConnection, asked: LoadRecentEvents
) -> tuple[list[tuple[Any, ...]], bool]:
    """:class:`LoadRecentEvents`: which events, newest first, without their payloads; then
    their rows in looks (``looks.py``), newest first, until the payloads read pass what the
    reply holds. In one query, the payloads of all the events considered were held at once:
    six 3 MB events ran out of ``[store] memory_limit``, and ``foundry watch --since`` failed
    there for good."""
    params = {"since": asked.since, "project": asked.project, "workflow_id": asked.workflow_id}
    found = con.execute(_RECENT_EVENTS, {**params, "limit": asked.limit + 1}).fetchall()
    order = [event_id for _, event_id in found[: asked.limit]]  # newest first, by time
    rowid_of = {event_id: rowid for rowid, event_id in found}
    sql = _recent_look(bool(asked.project), bool(asked.workflow_id))
    looked = {k: v for k, v in params.items() if k != "since" and v}
    fetched: dict[str, tuple[tuple[Any, ...], int]] = {}  # event id: (row, payload bytes)

    def reply() -> tuple[list[tuple[Any, ...]], bool]:
        """The newest events, by time, that the reply holds, and whether it holds all of them
        fetched so far and no more is needed (the newest always)."""
        rows: list[tuple[Any, ...]] = []
        size = 0
        for event_id in order:
            if event_id not in fetched:
                return rows, False
            row, payload_bytes = fetched[event_id]
            size += payload_bytes + EVENT_OVERHEAD
            if rows and size > asked.max_bytes:
                return rows, True
            rows.append(row)
        return rows, True

    # Looks from the highest rowid: storage order is time order but for a clock stepped back.
    rowids = sorted(rowid_of[event_id] for event_id in order)
    for row in in_looks(con, sql, looked, rowids, newest_first=True, enough=lambda: reply()[1]):
        if row[0] in rowid_of:
            fetched[row[0]] = (row[:-1], row[-1] or 0)
    rows, _ = reply()
    for event_id in order[len(rows) :]:  # stored out of time order: each read by its rowid
        if event_id not in fetched:
            rowid = rowid_of[event_id]
            one = con.execute(sql, {**looked, "lo": rowid, "hi": rowid}).fetchone()
            if one is None:
                break
            fetched[event_id] = (one[:-1], one[-1] or 0)
        rows, full = reply()
        if full:
            break
    rows, _ = reply()
    return _workflows_as_watched(con, rows), len(rows) < len(found)


def _workflows_as_watched(
    con: duckdb.DuckDBPyConnection, rows: list[tuple[Any, ...]]
) -> list[tuple[Any, ...]]:
    """The rows, each root no block sinks with no workflow id (its workflow row's block count
    is 0), as Emit and Watch answer it: ``foundry watch --since`` printed the two differently."""
    roots = [row[0] for row in rows if row[4] == row[0]]
    if not roots:
        return rows
    unsunk = {
        workflow_id
        for (workflow_id,) in con.execute(
            "SELECT workflow_id FROM workflows WHERE block_count = 0 "
            "AND workflow_id IN (SELECT unnest($roots))",
            {"roots": roots},
        ).fetchall()
    }
    return [(*row[:4], "", *row[5:]) if row[0] in unsunk else row for row in rows]


# The newest events of a Recent-events question, found without reading a payload (a scan that
# returned a column it filters on would read every payload of its vectors).
_RECENT_EVENTS = """
SELECT rowid, event_id FROM events
WHERE occurred_at >= $since
  AND ($project = '' OR project = $project)
  AND ($workflow_id = '' OR workflow_id = $workflow_id)
ORDER BY occurred_at DESC, depth DESC, event_id DESC
LIMIT $limit
"""
EVENT_OVERHEAD = 256  # bytes a listed event takes beside its payload (ids, type, project, times)


def _recent_look(by_project: bool, by_workflow: bool) -> str:
    """A look's rows (``in_looks``): a filtered column is given back as its parameter, not read
    (returning a column it filters on makes a scan read every payload of its vectors)."""
    project = "CAST($project AS VARCHAR)" if by_project else "project"
    workflow = "CAST($workflow_id AS VARCHAR)" if by_workflow else "workflow_id"
    where = ["rowid BETWEEN $lo AND $hi"]
    where += ["project = $project"] if by_project else []
    where += ["workflow_id = $workflow_id"] if by_workflow else []
    return (
        f"SELECT event_id, event_type, {project}, epoch_us(occurred_at), {workflow}, throttle, "
        f"throttled, CAST(payload AS VARCHAR), coalesce(emitted_by, ''), "
        f"coalesce(trace_id, ''), coalesce(span_id, ''), coalesce(parent_span_id, ''), "
        f"strlen(payload) FROM events WHERE {' AND '.join(where)}"
    )


def load_recent_workflows(
    con: duckdb.DuckDBPyConnection, project: str, state: str, limit: int
) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Finished workflows newest first, each with its block executions (as ``load_workflow``)."""
    where, params = ["block_count > 0"], []
    for column, value in (("project", project), ("state", state)):
        if value:
            where.append(f"{column} = ?")
            params.append(value)
    rows = _dicts(
        con,
        f"SELECT * FROM workflows WHERE {' AND '.join(where)} "
        "ORDER BY started_at DESC, workflow_id DESC LIMIT ?",
        [*params, limit],
    )
    if not rows:
        return []
    ids = [row["workflow_id"] for row in rows]
    blocks: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
    for block in _dicts(
        con,
        "SELECT workflow_id, block_name, state, started_at, completed_at, throttled "
        "FROM block_executions WHERE list_contains(?, workflow_id) ORDER BY started_at",
        [ids],
    ):
        blocks[block.pop("workflow_id")].append(block)
    return [(row, blocks[row["workflow_id"]]) for row in rows]


def newest_workflow_start(con: duckdb.DuckDBPyConnection) -> datetime | None:
    """The latest ``started_at`` of the workflows :func:`load_recent_workflows` can list."""
    row = con.execute("SELECT max(started_at) FROM workflows WHERE block_count > 0").fetchone()
    found = row[0] if row else None
    if not isinstance(found, datetime):
        return None
    return found.astimezone(UTC) if found.tzinfo else found.replace(tzinfo=UTC)


def recover_unfinished(
    con: duckdb.DuckDBPyConnection, write: Callable[[Sequence[Any]], None]
) -> list[str]:
    """Mark every chain a killed daemon left unfinished as failed, with its trace written."""
    roots = _dicts(
        con,
        "SELECT e.* REPLACE (0 AS depth) FROM events e "
        "ANTI JOIN workflows w ON w.workflow_id = e.event_id WHERE e.depth = 0",
        [],
    )
    now = datetime.now(UTC)
    finished = []
    for root in roots:
        events, executions = load_chain(con, root["event_id"])
        started = root["occurred_at"]
        total_ms = round((now - started).total_seconds() * 1000)
        trace = {
            "events": events,
            "block_executions": executions,
            "total_duration_ms": total_ms,
            "workflow_id": root["event_id"],
            "state": "failed",
            "error": RESTARTED,
        }
        finished.append(
            FinishedChain(
                workflow_id=root["event_id"],
                workflow_type=root["event_type"],
                project=root["project"],
                throttle=Throttle(root["throttle"]),
                state="failed",
                error=RESTARTED,
                started_at=started,
                completed_at=now,
                event_count=len(events),
                block_count=max(len(executions), 1),
                # compact, as every other trace file
                trace=json.dumps(trace, default=str, ensure_ascii=False, separators=(",", ":")),
                trace_id=root["trace_id"] or "",
            )
        )
    if finished:
        write(finished)
    return [f.workflow_id for f in finished]


def count_rows(con: duckdb.DuckDBPyConnection) -> RowCounts:
    def count(table: str) -> int:
        row = con.execute(f"SELECT count(*) FROM {table}").fetchone()
        return int(row[0]) if row else 0

    by_state = con.execute("SELECT state, count(*) FROM workflows GROUP BY state").fetchall()
    return RowCounts(
        workflows={state: int(n) for state, n in by_state},
        events=count("events"),
        block_executions=count("block_executions"),
        runs=count("runs"),
        run_events=count("run_events"),
    )


Handler = Callable[[duckdb.DuckDBPyConnection, Any], Any]

QUERIES: dict[type, Handler] = {
    LoadWorkflow: lambda con, m: load_workflow(con, m.workflow_id),
    LoadTrace: lambda con, m: load_trace(con, m.workflow_id),
    LoadRun: lambda con, m: runs.load_run(con, m.run_id),
    LoadRunEvents: lambda con, m: runs.load_run_events(con, m.run_id),
    LoadSubmission: lambda con, m: runs.load_submission(con, m.run_id),
    LoadUnfinishedRuns: lambda con, m: runs.load_unfinished_runs(con),
    LoadRunSummaries: lambda con, m: runs.list_runs(con, m.query),
    LoadRecentWorkflows: lambda con, m: load_recent_workflows(con, m.project, m.state, m.limit),
    LoadRecentEvents: lambda con, m: load_recent_events(con, m),
    LoadNewestWorkflowStart: lambda con, m: newest_workflow_start(con),
    LoadIdempotencyKeys: lambda con, m: runs.load_idempotency_keys(con),
    CountRows: lambda con, m: count_rows(con),
    ExportParquet: lambda con, m: retention.export_parquet(con, m.directory, m.since),
    LoadEvalScenarios: lambda con, m: governance.load_scenarios(con, m.pack, m.slug, m.history),
    LoadGateDecisions: lambda con, m: governance.load_gates(con, m.gate_id, m.change_id, m.limit),
    LoadAttestations: lambda con, m: attestations.load_attestations(con, m.attestation_ids),
    LoadRunAttestations: lambda con, m: attestations.load_run_attestations(con, m.run_id),
    LoadUnattested: lambda con, m: attestations.load_unattested(con),
    LoadUnattestedGovernance: lambda con, m: attestations.load_unattested_governance(con),
}
"""Each query message's handler: ``handler(cursor, message)`` is the reply's value."""
