"""How each record type becomes rows: table, columns, and a row function.

Rows go in through DuckDB's appender: it converts a batch of Python rows in C++ and applies them
with one statement per table and commit. Measured against the alternatives (2 tables x 50 rows
per commit, another thread busy): it holds the interpreter lock ~1.7 ms per commit, an Arrow table
scanned by ``INSERT ... SELECT`` ~9.4 ms (with its register/unregister), ``unnest(?)`` of lists
~3.3 ms — and the trio thread needs that lock for everything else.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import duckdb
from foundry.analytics.schema import TABLES
from foundry.kernel.core.attest_records import (
    AttestationRecord,
    AttestationRows,
    DerivedAttestationRows,
    SpooledAttestationRows,
)
from foundry.kernel.core.governance import (
    EvalResultRecord,
    EvalScenarioRecord,
    GateDecisionRecord,
    GateFollowupRecord,
    json_text,
)
from foundry.kernel.core.ids import compact_json
from foundry.kernel.core.json_input import json_values_past, unpaired_surrogate_escape
from foundry.kernel.core.records import Event, ExecutionRecord, FinishedChain
from foundry.kernel.core.runs import RunEventRecord, RunSubmission

log = logging.getLogger("foundry.store")


@dataclass(frozen=True)
class TableWriter:
    table: str
    columns: tuple[str, ...]
    row: Callable[[Any], tuple[Any, ...]]
    # A column whose rows are replaced: before a commit appends, rows with the same values in it
    # are deleted, in the same transaction (DuckDB's appender cannot upsert).
    replaces: str = ""
    # A record of many rows (``rows`` of it, made already): one record, not one per row, on the
    # way from the attestor through the store's mailbox, its group and the journal.
    rows: Callable[[Any], Sequence[tuple[Any, ...]]] | None = None
    # False: rows re-made from journaled facts if a daemon stops before DuckDB has them (a run's
    # attestations): kept out of the journal, written to DuckDB after their facts.
    journaled: bool = True
    # A table's rows in files (``table`` is then a name of the writer's own; ``rows`` of a record
    # is one row, its file's path): DuckDB reads each file into this table (``insert_spooled``).
    spooled_into: str = ""

    def appender(self, con: duckdb.DuckDBPyConnection) -> Any:
        """An appender for this table on ``con`` (keep it: it is reused for every commit)."""
        return con.appender(self.table, columns=list(self.columns))

    def delete_replaced(self, con: duckdb.DuckDBPyConnection, rows: Sequence[Any]) -> None:
        """Inside the caller's transaction: delete the rows ``rows`` replace (if any)."""
        if self.replaces:
            column = self.columns.index(self.replaces)
            keys = [row[column] for row in rows]
            con.execute(
                f"DELETE FROM {self.table} WHERE {self.replaces} IN (SELECT unnest(?))", [keys]
            )

    def latest(self, rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        """The rows to append: for a replaced table, only the last row of each key."""
        if not self.replaces:
            return rows
        column = self.columns.index(self.replaces)
        return list({row[column]: row for row in rows}.values())


def _event_row(e: Event) -> tuple[Any, ...]:
    return (
        e.id, e.workflow_id, e.event_type, e.project, e.occurred_at, e.recorded_at,
        e.throttle.value, e.depth, e.parent_id or None, e.emitted_by or None, e.throttled,
        e.payload_json, e.trace_id or None, e.span_id or None, e.parent_span_id or None,
    )  # fmt: skip


def _execution_row(x: ExecutionRecord) -> tuple[Any, ...]:
    return (
        x.workflow_id, x.block_name, x.trigger.id, x.state, x.success, x.summary,
        [e.id for e in x.emitted], x.duration_ms, *_command_result(x),
        list(x.audit_artifacts), x.attempts, x.throttled, x.started_at, x.completed_at,
        x.trigger.trace_id or None, x.span_id or None, x.trigger.span_id or None,
    )  # fmt: skip


def _command_result(x: ExecutionRecord) -> tuple[str | None, int | None]:
    """NULLs when the block ran no command, as in its trace file."""
    return (x.raw_output, x.exit_code) if x.ran_command else (None, None)


def _finished_row(f: FinishedChain) -> tuple[Any, ...]:
    return (
        f.workflow_id, f.workflow_type, f.project, f.throttle.value, f.state, f.error,
        f.started_at, f.completed_at, f.event_count, f.block_count, f.trace_id or None,
    )  # fmt: skip


def _submission_row(r: RunSubmission) -> tuple[Any, ...]:
    return (
        r.run_id, r.idempotency_key, r.dag_json, compact_json(r.inputs), r.seed,
        compact_json(r.labels), list(r.breakpoints), r.parent_run_id, r.branch_step, r.note,
        r.created_at, r.trace_id or None, r.span_id or None,
    )  # fmt: skip


def _run_event_row(e: RunEventRecord) -> tuple[Any, ...]:
    return (e.run_id, e.seq, e.step_id, e.kind, compact_json(e.payload), e.occurred_at)


def _scenario_row(s: EvalScenarioRecord) -> tuple[Any, ...]:
    return (
        s.scenario_id, s.pack, s.slug, s.title, s.description, json_text(s.run_spec),
        json_text(s.expected), s.created_at, s.updated_at,
    )  # fmt: skip


def _result_row(r: EvalResultRecord) -> tuple[Any, ...]:
    return (
        r.result_id, r.scenario_id, r.run_id, r.commit, r.outcome, json_text(r.metrics),
        r.executed_at,
    )  # fmt: skip


def _decision_row(d: GateDecisionRecord) -> tuple[Any, ...]:
    return (
        d.gate_id, d.change_id, d.revision, d.effect, list(d.reasons), json_text(d.followups),
        json_text(d.scorecard), json_text(d.metadata), json_text(d.telemetry), d.actor,
        d.decided_at,
    )  # fmt: skip


def _followup_row(f: GateFollowupRecord) -> tuple[Any, ...]:
    return (
        f.followup_id, f.gate_id, f.actor, f.outcome, f.note, json_text(f.details), f.recorded_at,
    )  # fmt: skip


def _attestation_row(a: AttestationRecord) -> tuple[Any, ...]:
    statement, keyid, signature = _signed(a.envelope)
    return (
        a.attestation_id, a.run_id, a.step_id, a.kind, statement, keyid, signature,
        a.artifact_hash, a.previous, a.created_at, a.seq,
    )  # fmt: skip


def _signed(envelope: str) -> tuple[str, str, str]:
    """(statement, key id, signature) of a DSSE envelope (JSON) of ours: one signature."""
    parsed = json.loads(envelope)
    signature = parsed["signatures"][0]
    payload = base64.b64decode(parsed["payload"], validate=True).decode()
    return payload, signature["keyid"], signature["sig"]


def _made_rows(a: AttestationRows | DerivedAttestationRows) -> Sequence[tuple[Any, ...]]:
    return a.rows  # the attestor's, made in the table's column order


def _spooled_file(a: SpooledAttestationRows) -> Sequence[tuple[Any, ...]]:
    return ((a.path,),)


def _one_row(record: Any) -> tuple[Any, ...]:
    raise TypeError(f"{type(record).__name__} holds many rows: see TableWriter.rows")


def _legacy_attestations(rows: list[tuple[Any, ...]]) -> TableRows:
    """Rows journaled for the ``attestations`` table of schema version 5 (a daemon of before
    stopped before DuckDB had them), as ``attestation_statements`` rows."""
    return "attestation_statements", [
        (*row[:4], *_signed(row[8]), row[7], *row[9:]) for row in rows
    ]


# drafting.spool writes a spooled file's fields in this order too
_ATTESTATION_COLUMNS = (
    "attestation_id",
    "run_id",
    "step_id",
    "kind",
    "statement",
    "keyid",
    "signature",
    "artifact_hash",
    "previous",
    "created_at",
    "seq",
)

WRITERS: dict[type, TableWriter] = {
    Event: TableWriter(
        "events",
        (
            "event_id",
            "workflow_id",
            "event_type",
            "project",
            "occurred_at",
            "recorded_at",
            "throttle",
            "depth",
            "parent_id",
            "emitted_by",
            "throttled",
            "payload",
            "trace_id",
            "span_id",
            "parent_span_id",
        ),
        _event_row,
    ),  # fmt: skip
    ExecutionRecord: TableWriter(
        "block_executions",
        (
            "workflow_id",
            "block_name",
            "trigger_event_id",
            "state",
            "success",
            "summary",
            "emitted_event_ids",
            "duration_ms",
            "raw_output",
            "exit_code",
            "audit_artifacts",
            "attempts",
            "throttled",
            "started_at",
            "completed_at",
            "trace_id",
            "span_id",
            "parent_span_id",
        ),
        _execution_row,
    ),  # fmt: skip
    FinishedChain: TableWriter(
        "workflows",
        (
            "workflow_id",
            "workflow_type",
            "project",
            "throttle",
            "state",
            "error",
            "started_at",
            "completed_at",
            "event_count",
            "block_count",
            "trace_id",
        ),
        _finished_row,
    ),  # fmt: skip
    RunSubmission: TableWriter(
        "runs",
        (
            "run_id",
            "idempotency_key",
            "dag_json",
            "inputs",
            "seed",
            "labels",
            "breakpoints",
            "parent_run_id",
            "branch_step",
            "note",
            "created_at",
            "trace_id",
            "span_id",
        ),
        _submission_row,
    ),  # fmt: skip
    RunEventRecord: TableWriter(
        "run_events",
        ("run_id", "seq", "step_id", "kind", "payload", "occurred_at"),
        _run_event_row,
    ),
    EvalScenarioRecord: TableWriter(
        "eval_scenarios",
        (
            "scenario_id",
            "pack",
            "slug",
            "title",
            "description",
            "run_spec",
            "expected",
            "created_at",
            "updated_at",
        ),
        _scenario_row,
        replaces="scenario_id",
    ),  # fmt: skip
    EvalResultRecord: TableWriter(
        "eval_results",
        ("result_id", "scenario_id", "run_id", "commit", "outcome", "metrics", "executed_at"),
        _result_row,
    ),
    GateDecisionRecord: TableWriter(
        "gate_decisions",
        (
            "gate_id",
            "change_id",
            "revision",
            "effect",
            "reasons",
            "followups",
            "scorecard",
            "metadata",
            "telemetry",
            "actor",
            "decided_at",
        ),
        _decision_row,
    ),  # fmt: skip
    GateFollowupRecord: TableWriter(
        "gate_followups",
        ("followup_id", "gate_id", "actor", "outcome", "note", "details", "recorded_at"),
        _followup_row,
    ),
    AttestationRecord: TableWriter(
        "attestation_statements", _ATTESTATION_COLUMNS, _attestation_row
    ),
    AttestationRows: TableWriter(
        "attestation_statements", _ATTESTATION_COLUMNS, _one_row, rows=_made_rows
    ),
    DerivedAttestationRows: TableWriter(
        "attestation_statements", _ATTESTATION_COLUMNS, _one_row, rows=_made_rows, journaled=False
    ),
    SpooledAttestationRows: TableWriter(
        "attestation_statements (spooled)",
        _ATTESTATION_COLUMNS,
        _one_row,
        rows=_spooled_file,
        journaled=False,
        spooled_into="attestation_statements",
    ),  # fmt: skip
}


APPEND_CHUNK = 500  # rows per append_rows call (~1 ms of conversion)

WRITERS_BY_TABLE: dict[str, TableWriter] = {w.table: w for w in WRITERS.values()}

TableRows = tuple[str, list[tuple[Any, ...]]]

# Tables of an older schema a journal may still hold rows for: their rows, converted.
_LEGACY: dict[str, Callable[[list[tuple[Any, ...]]], TableRows]] = {
    "attestations": _legacy_attestations,
}


class Unstorable(ValueError):
    """A record holds a value DuckDB would refuse: refused before the write is journaled."""


def table_rows(records: Iterable[Any], *, check: bool = True) -> list[TableRows]:
    """The rows of ``records``, grouped by table in order of first appearance. Raises KeyError
    for a record type no table holds, and :class:`Unstorable` for text DuckDB refuses — checked
    here because a journaled write is acknowledged before DuckDB sees it. ``check=False``: the
    caller checks the rows' encoded form instead (:func:`check_encoded`), before telling anyone."""
    by_kind = _rows_by_kind(records)
    if check:
        for kind, rows in by_kind.items():
            _check_text(WRITERS[kind], rows)
    return [(WRITERS[kind].table, rows) for kind, rows in by_kind.items()]


def journal_rows(records: Iterable[Any]) -> tuple[list[TableRows], list[TableRows]]:
    """:func:`table_rows` (unchecked), as (the rows to journal, the rows only DuckDB gets:
    re-made from journaled facts after a stop, see ``TableWriter.journaled``)."""
    journaled: list[TableRows] = []
    derived: list[TableRows] = []
    for kind, rows in _rows_by_kind(records).items():
        writer = WRITERS[kind]
        (journaled if writer.journaled else derived).append((writer.table, rows))
    return journaled, derived


def _rows_by_kind(records: Iterable[Any]) -> dict[type, list[tuple[Any, ...]]]:
    by_kind: dict[type, list[tuple[Any, ...]]] = {}
    for record in records:
        kind = type(record)
        rows = by_kind.get(kind)
        if rows is None:
            rows = by_kind[kind] = []
        writer = WRITERS[kind]
        if writer.rows is None:
            rows.append(writer.row(record))
        else:
            rows.extend(writer.rows(record))
    return by_kind


def record_is_large(record: Any) -> bool:
    """Whether a record holds more than ``json_input.JSON_VALUES_ON_LOOP`` JSON values, long
    strings counted by their characters (a run's inputs, labels and DAG, an event's payload: a
    step's inputs or output; a gate decision's scorecard, metadata and telemetry; an eval
    scenario's run spec and expectations); a bounded look. Such
    a record is encoded on the journal thread (``Store._hand_off``): a submission of 300,000
    keys encoded on the trio thread held the loop 0.5 s; a gate decision of 130,000 evals,
    0.7 s)."""
    if isinstance(record, RunEventRecord):
        values: tuple[Any, ...] = (record.payload,)
    elif isinstance(record, RunSubmission):
        values = (record.inputs, record.labels, record.dag_json)
    elif isinstance(record, EvalScenarioRecord):
        values = (record.run_spec, record.expected)
    elif isinstance(record, GateDecisionRecord):
        values = (record.followups, record.scorecard, record.metadata, record.telemetry)
    elif isinstance(record, GateFollowupRecord):
        values = (record.details,)
    elif isinstance(record, EvalResultRecord):
        values = (record.metrics,)
    else:
        return False
    return json_values_past(values)


def rows_in(record: Any) -> int:
    """How many rows ``record`` makes (one, unless its writer makes many)."""
    writer = WRITERS.get(type(record))
    return 1 if writer is None or writer.rows is None else len(writer.rows(record))


def check_encoded(tables: Sequence[TableRows], encoded: bytes) -> None:
    """:func:`table_rows`' check, given the rows pickled (``journal.encode``): pickle writes text
    as UTF-8 with lone surrogates passed through, so text holding none, and JSON holding no
    surrogate escape, leaves no trace of one in the bytes. A scan of the bytes (~0.5 µs a
    chain) instead of a look at every value (~2.5 µs); rows whose bytes might hold one (a
    surrogate's UTF-8 form, any ``\\u`` escape in JSON, or binary data that looks alike) get
    the exact check too. (A timestamp's microseconds look alike once in ~2,000: in the engine
    benchmark about half the groups of ~100 chains are checked both ways.)"""
    if _suspect(encoded):
        for table, rows in tables:
            _check_text(WRITERS_BY_TABLE[table], rows)


def _suspect(encoded: bytes) -> bool:
    """Might ``encoded`` hold a surrogate: a ``\\u`` (any JSON escape), or a surrogate's UTF-8
    form (ED, A0-BF, 80-BF)? ``find`` is ~10x faster here than a regular expression."""
    if b"\\u" in encoded:
        return True
    at = encoded.find(b"\xed")
    while at != -1:
        if encoded[at + 1 : at + 2] in _SURROGATE_SECOND and encoded[at + 2 : at + 3] in _TRAILING:
            return True
        at = encoded.find(b"\xed", at + 1)
    return False


def merge(groups: Iterable[Sequence[TableRows]]) -> list[TableRows]:
    """Rows of many writes as one batch, per table, in order (a replaced table keeps the last
    row of each key)."""
    merged: dict[str, list[tuple[Any, ...]]] = {}
    for tables in groups:
        for table, rows in tables:
            if table in _LEGACY:
                table, rows = _LEGACY[table](rows)
            merged.setdefault(table, []).extend(rows)
    return [(table, WRITERS_BY_TABLE[table].latest(rows)) for table, rows in merged.items()]


def apply(
    con: duckdb.DuckDBPyConnection,
    appender: Callable[[TableWriter], Any],
    tables: Sequence[TableRows],
) -> None:
    """Write ``tables`` inside the caller's transaction, one appender flush per table."""
    for table, rows in tables:
        writer = WRITERS_BY_TABLE[table]
        if writer.spooled_into:
            insert_spooled(con, writer, [path for (path,) in rows])
            continue
        writer.delete_replaced(con, rows)
        table_appender = appender(writer)
        for start in range(0, len(rows), APPEND_CHUNK):
            # Converting rows holds the interpreter lock: in chunks, the trio thread gets it
            # back between them instead of waiting out a whole batch.
            table_appender.append_rows(rows[start : start + APPEND_CHUNK])
        table_appender.flush()


def insert_spooled(con: duckdb.DuckDBPyConnection, writer: TableWriter, paths: list[str]) -> None:
    """Inside the caller's transaction: DuckDB reads the spooled files (CSV) into
    ``writer.spooled_into`` — in C++, off the interpreter lock: the rows never become Python
    objects in the daemon. All in one statement: a statement cost ~2 ms of CPU however few
    its rows (~8 µs a row), and a materialization takes many batches' files. A file gone
    (never expected: the store deletes them only after their commit) is skipped and logged;
    its rows are made again at the next start."""
    present = []
    for path in paths:
        if os.path.exists(path):
            present.append(path)
        else:
            log.error("the spooled attestation rows %s are gone: the next start makes them again",
                      path)  # fmt: skip
    if present:
        con.execute(_SPOOL_INSERTS[writer.table], [present])


def spooled_paths(tables: Sequence[TableRows]) -> list[str]:
    """The files of ``tables``' spooled rows (to delete once their rows are committed)."""
    return [
        path for table, rows in tables if WRITERS_BY_TABLE[table].spooled_into for (path,) in rows
    ]


def _spool_insert(writer: TableWriter) -> str:
    types = dict(re.findall(r"^\s*(\w+)\s+(\w+)", TABLES[writer.spooled_into], re.MULTILINE))
    columns = ", ".join(writer.columns)
    typed = ", ".join(f"'{c}': '{types[c]}'" for c in writer.columns)
    # drafting.spool's CSV: every text quoted (an empty one is ''), NULL unquoted and empty
    return (
        f"INSERT INTO {writer.spooled_into} ({columns}) SELECT {columns} FROM read_csv(?, "
        "header = false, delim = ',', quote = '\"', escape = '\"', new_line = '\\n', "
        f"allow_quoted_nulls = false, auto_detect = false, columns = {{{typed}}})"
    )


_SPOOL_INSERTS = {w.table: _spool_insert(w) for w in WRITERS.values() if w.spooled_into}


# A surrogate's UTF-8 form (as pickle's "surrogatepass" writes it): ED, then these two.
_SURROGATE_SECOND = frozenset(bytes([b]) for b in range(0xA0, 0xC0))
_TRAILING = frozenset(bytes([b]) for b in range(0x80, 0xC0))


def _json_columns(table: str) -> frozenset[str]:
    return frozenset(re.findall(r"^\s*(\w+)\s+JSON\b", TABLES[table], re.MULTILINE))


_JSON_COLUMNS = {
    w.table: tuple(i for i, c in enumerate(w.columns) if c in _json_columns(w.table))
    for w in WRITERS.values()
    if not w.spooled_into
}


def _check_text(writer: TableWriter, rows: list[tuple[Any, ...]]) -> None:
    json_columns = _JSON_COLUMNS[writer.table]
    for row in rows:
        for value in row:
            if type(value) is str and not value.isascii() and not _encodable(value):
                raise Unstorable(f"{writer.table}: text with a lone surrogate: {value[:80]!r}")
        for column in json_columns:
            text = row[column]
            if unpaired_surrogate_escape(text):
                raise Unstorable(
                    f"{writer.table}.{writer.columns[column]}: JSON with an unpaired surrogate "
                    f"escape: {text[:80]!r}"
                )


def _encodable(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate character
        return False
    return True
