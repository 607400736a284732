"""The store's attestation queries (``LoadAttestations``, ``LoadRunAttestations``,
``LoadUnattested``, ``LoadUnattestedGovernance``)."""

from __future__ import annotations

from typing import Any

import duckdb
from foundry.kernel.actors.store import governance
from foundry.kernel.actors.store.looks import in_looks
from foundry.kernel.actors.store.tables import WRITERS
from foundry.kernel.core.attest_records import (
    EVAL_RESULT,
    GATE_DECISION,
    AttestationRows,
    custom_attestation_id,
    stored_record,
)


def _records(con: duckdb.DuckDBPyConnection, where: str, params: list[Any]) -> list[Any]:
    columns = ", ".join(WRITERS[AttestationRows].columns)
    rows = con.execute(f"SELECT {columns} FROM attestation_statements {where}", params)
    return [stored_record(row) for row in rows.fetchall()]


def load_attestations(con: duckdb.DuckDBPyConnection, ids: tuple[str, ...]) -> list[Any]:
    """The attestations with these ids, in the order asked (unknown ids are left out; an id
    stored twice — re-attested after a crash — once)."""
    if not ids:
        return []
    found = {a.attestation_id: a for a in _records(
        con, "WHERE attestation_id IN (SELECT unnest(?))", [list(ids)])}  # fmt: skip
    return [found[i] for i in dict.fromkeys(ids) if i in found]


def load_run_attestations(con: duckdb.DuckDBPyConnection, run_id: str) -> list[Any]:
    """A run's attestations in the order of the run events that announced them (its hash
    chain's order)."""
    seen: dict[str, Any] = {}
    for a in _records(con, "WHERE run_id = ? ORDER BY seq, created_at", [run_id]):
        seen.setdefault(a.attestation_id, a)
    return list(seen.values())


# A stored attestation names the run event announcing it (its seq): the announcements none names.
_UNNAMED = (
    "SELECT e.rowid, e.run_id, e.occurred_at, e.kind = 'attested' FROM run_events e "
    "ANTI JOIN attestation_statements a ON a.run_id = e.run_id AND a.seq = e.seq "
    "WHERE e.kind IN ('attested', 'step_completed')"
)
# Which completions announce their attestation (without the attestor, none does), and their
# payloads' sizes, in looks (``looks.py``; not a parse of the JSON, which held a vector's payloads
# at once: a few runs of MB-sized step outputs made this start-up query run out of
# [store] memory_limit). The text looked for is the announcement itself (the id its run and seq
# name, as the store writes JSON: compact): an output holding it as text is escaped.
_ANNOUNCING = (
    "SELECT rowid, contains(payload, '\"attestation_id\":\"att_' || run_id || '_' || seq || "
    "'\"'), strlen(payload) FROM run_events "
    "WHERE rowid BETWEEN $lo AND $hi AND kind = 'step_completed'"
)


def load_unattested(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Runs with an announced attestation (``core.attest_records.announced``: an ``attested``
    event, a ``step_completed`` with an ``attestation_id``) that was never stored (a daemon
    stopped between the two commits), oldest first."""
    first: dict[str, Any] = {}
    completions: dict[int, tuple[str, Any]] = {}
    for rowid, run_id, occurred_at, attested in con.execute(_UNNAMED).fetchall():
        if attested:
            first[run_id] = min(first.get(run_id, occurred_at), occurred_at)
        else:
            completions[rowid] = (run_id, occurred_at)
    for rowid, announcing, _ in in_looks(con, _ANNOUNCING, {}, sorted(completions)):
        if announcing and rowid in completions:
            run_id, occurred_at = completions[rowid]
            first[run_id] = min(first.get(run_id, occurred_at), occurred_at)
    return sorted(first, key=lambda run_id: first[run_id])


# A governance record's table, id column and time column, by its attestation's label.
_GOVERNANCE = {
    GATE_DECISION: ("gate_decisions", "gate_id", "decided_at"),
    EVAL_RESULT: ("eval_results", "result_id", "executed_at"),
}


def load_unattested_governance(con: duckdb.DuckDBPyConnection) -> list[tuple[str, Any]]:
    """(label, record) of each gate decision and eval result whose attestation (its id derived
    from the record's: ``custom_attestation_id``) is not stored — a daemon stopped between the
    record's commit and its attestation's: nothing announces one, so nothing else would make it
    again — oldest first."""
    customs = "SELECT attestation_id FROM attestation_statements WHERE kind = 'custom'"
    have = {row[0] for row in con.execute(customs).fetchall()}
    missing: list[tuple[Any, str, str]] = []
    for label, (table, key, at) in _GOVERNANCE.items():
        for record_id, when in con.execute(f"SELECT {key}, {at} FROM {table}").fetchall():
            if custom_attestation_id(label, record_id) not in have:
                missing.append((when, label, record_id))
    found: list[tuple[str, Any]] = []
    for _, label, record_id in sorted(missing):
        if label == GATE_DECISION:
            gates = governance.load_gates(con, record_id, "", 1)
            record: Any = gates[0].decision if gates else None
        else:
            record = governance.load_eval_result(con, record_id)
        if record is not None:
            found.append((label, record))
    return found
