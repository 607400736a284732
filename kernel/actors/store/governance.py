"""The store's governance queries: eval scenarios with their result history, gate decisions with
their acknowledgements (``LoadEvalScenarios``, ``LoadGateDecisions``)."""

from __future__ import annotations

import json
from typing import Any

import duckdb
from foundry.kernel.core.governance import (
    GATES_REPLY_BYTES,
    EvalResultRecord,
    EvalScenarioRecord,
    GateDecisionRecord,
    GateFollowupRecord,
    StoredGate,
    StoredScenario,
    fitting,
)


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any]) -> list[dict[str, Any]]:
    cursor = con.execute(sql, params)
    names = [d[0] for d in cursor.description or ()]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _json(text: Any) -> Any:
    return json.loads(text) if isinstance(text, str) else text


def load_scenarios(
    con: duckdb.DuckDBPyConnection, pack: str, slug: str, history: int
) -> list[StoredScenario]:
    where, params = [], []
    if pack:
        where.append("pack = ?")
        params.append(pack)
    if slug:
        where.append("slug = ?")
        params.append(slug)
    sql = "SELECT * FROM eval_scenarios"
    if where:
        sql += " WHERE " + " AND ".join(where)
    scenarios = [
        EvalScenarioRecord(
            scenario_id=r["scenario_id"],
            pack=r["pack"],
            slug=r["slug"],
            title=r["title"],
            description=r["description"],
            run_spec=_json(r["run_spec"]),
            expected=_json(r["expected"]),
            created_at=r["created_at"],
            updated_at=r["updated_at"],
        )  # fmt: skip
        for r in _rows(con, sql + " ORDER BY pack, slug", params)
    ]
    results: dict[str, list[EvalResultRecord]] = {}
    if history > 0 and scenarios:
        ids = [s.scenario_id for s in scenarios]
        rows = _rows(
            con,
            "SELECT * FROM eval_results WHERE scenario_id IN (SELECT unnest(?)) "
            "QUALIFY row_number() OVER (PARTITION BY scenario_id "
            "ORDER BY executed_at DESC, result_id DESC) <= ? "
            "ORDER BY executed_at DESC, result_id DESC",
            [ids, history],
        )
        for r in rows:
            results.setdefault(r["scenario_id"], []).append(_eval_result(r))
    return [StoredScenario(s, tuple(results.get(s.scenario_id, ()))) for s in scenarios]


def load_eval_result(con: duckdb.DuckDBPyConnection, result_id: str) -> EvalResultRecord | None:
    rows = _rows(con, "SELECT * FROM eval_results WHERE result_id = ?", [result_id])
    return _eval_result(rows[0]) if rows else None


def _eval_result(r: dict[str, Any]) -> EvalResultRecord:
    return EvalResultRecord(
        result_id=r["result_id"],
        scenario_id=r["scenario_id"],
        run_id=r["run_id"],
        commit=r["commit"],
        outcome=r["outcome"],
        metrics=_json(r["metrics"]),
        executed_at=r["executed_at"],
    )


# Sizes (UTF-8 bytes, about) of decisions and of their acknowledgements' texts. Each query is
# bounded below by the oldest decision's time: DuckDB then skips the row groups before it.
_DECISION_SIZES = """
    SELECT gate_id, strlen(array_to_string(reasons, ' ')) + strlen(followups::VARCHAR)
        + strlen(scorecard::VARCHAR) + strlen(metadata::VARCHAR) + strlen(telemetry::VARCHAR)
    FROM gate_decisions WHERE decided_at >= ? AND gate_id IN (SELECT unnest(?))"""
_ACKNOWLEDGEMENT_SIZES = """
    SELECT gate_id, sum(strlen(coalesce(note, '')) + strlen(details::VARCHAR) + 100)
    FROM gate_followups WHERE recorded_at >= ? AND gate_id IN (SELECT unnest(?))
    GROUP BY gate_id"""


def load_gates(
    con: duckdb.DuckDBPyConnection, gate_id: str, change_id: str, limit: int
) -> list[StoredGate]:
    """At most ``limit`` decisions, newest first, and of those as many as fit in
    :data:`GATES_REPLY_BYTES` (one at least): 1,000 decisions of 2.5 MB each made one reply
    of 2.5 GB, built whole in the daemon's memory. Their sizes are measured for that page
    alone (measured in the ordering query, every decision of the table was)."""
    if gate_id:
        where, params = "gate_id = ?", [gate_id]
    elif change_id:
        where, params = "change_id = ?", [change_id]
    else:
        where, params = "TRUE", []
    order = "ORDER BY decided_at DESC, gate_id DESC LIMIT ?"
    page = con.execute(
        f"SELECT gate_id, decided_at FROM gate_decisions WHERE {where} {order}",
        [*params, max(limit, 1)],
    ).fetchall()
    if not page:
        return []
    if len(page) > 1:  # (one is always listed: no sizes to measure)
        page = page[: fitting(_page_sizes(con, page), GATES_REPLY_BYTES)]
    rows = _rows(
        con,
        "SELECT * FROM gate_decisions WHERE decided_at >= ? AND gate_id IN (SELECT unnest(?)) "
        "ORDER BY decided_at DESC, gate_id DESC",  # the page's (a commit since cannot move it)
        [page[-1][1], [gate for gate, _ in page]],
    )
    decisions = [
        GateDecisionRecord(
            gate_id=r["gate_id"],
            change_id=r["change_id"],
            revision=r["revision"],
            effect=r["effect"],
            reasons=tuple(r["reasons"]),
            followups=tuple(_json(r["followups"])),
            scorecard=_json(r["scorecard"]),
            metadata=_json(r["metadata"]),
            telemetry=_json(r["telemetry"]),
            actor=r["actor"],
            decided_at=r["decided_at"],
        )  # fmt: skip
        for r in rows
    ]
    acks: dict[str, list[GateFollowupRecord]] = {}
    if decisions:
        for r in _rows(
            con,
            "SELECT * FROM gate_followups WHERE gate_id IN (SELECT unnest(?)) "
            "ORDER BY recorded_at, followup_id",
            [[d.gate_id for d in decisions]],
        ):
            acks.setdefault(r["gate_id"], []).append(
                GateFollowupRecord(
                    followup_id=r["followup_id"],
                    gate_id=r["gate_id"],
                    actor=r["actor"],
                    outcome=r["outcome"],
                    note=r["note"],
                    details=_json(r["details"]),
                    recorded_at=r["recorded_at"],
                )  # fmt: skip
            )
    return [StoredGate(d, tuple(acks.get(d.gate_id, ()))) for d in decisions]


def _page_sizes(con: duckdb.DuckDBPyConnection, page: list[tuple[str, Any]]) -> list[int]:
    """The sizes of a page's decisions (``(gate_id, decided_at)``, newest first), each with
    its acknowledgements."""
    ids, oldest = [gate for gate, _ in page], page[-1][1]
    sizes = dict(con.execute(_DECISION_SIZES, [oldest, ids]).fetchall())
    for gate, size in con.execute(_ACKNOWLEDGEMENT_SIZES, [oldest, ids]).fetchall():
        sizes[gate] += size
    return [sizes.get(gate, 0) for gate in ids]
