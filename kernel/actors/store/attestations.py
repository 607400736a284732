"""The store's attestation queries (``LoadAttestations``, ``LoadRunAttestations``,
``LoadUnattested``)."""

from __future__ import annotations

from typing import Any

import duckdb
from foundry.kernel.actors.store.tables import WRITERS
from foundry.kernel.core.attest_records import AttestationRows, stored_record


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


def load_unattested(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Runs with an announced attestation (``core.attest_records.announced``: an ``attested``
    event, a ``step_completed`` with an ``attestation_id``) that was never stored (a daemon
    stopped between the two commits), oldest first."""
    rows = con.execute(
        "SELECT e.run_id, min(e.occurred_at) AS first FROM run_events e "
        "ANTI JOIN attestation_statements a ON a.attestation_id = e.payload->>'attestation_id' "
        "WHERE (e.kind = 'attested' OR (e.kind = 'step_completed' "
        "AND e.payload->>'attestation_id' IS NOT NULL)) GROUP BY e.run_id ORDER BY first"
    ).fetchall()
    return [r[0] for r in rows]
