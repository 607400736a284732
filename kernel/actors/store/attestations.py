"""The store's attestation queries (``LoadAttestations``, ``LoadRunAttestations``,
``LoadUnattested``)."""

from __future__ import annotations

import json
from typing import Any

import duckdb
from foundry.kernel.core.attest_records import AttestationRecord


def _records(con: duckdb.DuckDBPyConnection, where: str, params: list[Any]) -> list[Any]:
    cursor = con.execute(f"SELECT * FROM attestations {where}", params)
    names = [d[0] for d in cursor.description or ()]
    out = []
    for row in cursor.fetchall():
        r = dict(zip(names, row, strict=True))
        out.append(
            AttestationRecord(
                attestation_id=r["attestation_id"],
                run_id=r["run_id"],
                step_id=r["step_id"],
                kind=r["kind"],
                subject=json.loads(r["subject"]),
                predicate_type=r["predicate_type"],
                claims=json.loads(r["claims"]),
                artifact_hash=r["artifact_hash"],
                envelope=r["envelope"],
                previous=r["previous"],
                created_at=r["created_at"],
                seq=r["seq"],
            )  # fmt: skip
        )
    return out


def load_attestations(con: duckdb.DuckDBPyConnection, ids: tuple[str, ...]) -> list[Any]:
    """The attestations with these ids, in the order asked (unknown ids are left out; an id
    stored twice — re-attested after a crash — once)."""
    if not ids:
        return []
    found = {a.attestation_id: a for a in _records(
        con, "WHERE attestation_id IN (SELECT unnest(?))", [list(ids)])}  # fmt: skip
    return [found[i] for i in dict.fromkeys(ids) if i in found]


def load_run_attestations(con: duckdb.DuckDBPyConnection, run_id: str) -> list[Any]:
    """A run's attestations in the order of its ``attested`` events (its hash chain's order)."""
    seen: dict[str, Any] = {}
    for a in _records(con, "WHERE run_id = ? ORDER BY seq, created_at", [run_id]):
        seen.setdefault(a.attestation_id, a)
    return list(seen.values())


def load_unattested(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Runs with an ``attested`` event whose attestation was never stored (a daemon stopped
    between the two commits), oldest first."""
    rows = con.execute(
        "SELECT e.run_id, min(e.occurred_at) AS first FROM run_events e "
        "ANTI JOIN attestations a ON a.attestation_id = e.payload->>'attestation_id' "
        "WHERE e.kind = 'attested' GROUP BY e.run_id ORDER BY first"
    ).fetchall()
    return [r[0] for r in rows]
