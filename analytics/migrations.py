"""Schema migrations: the database upgrades itself in place when the daemon starts.

``schema_version`` has one row per migration applied (``version``, ``applied_at``,
``description``); the database's version is the highest. The store calls :func:`migrate` on
start: inside one transaction it applies every migration above the database's version in order
(version N → N+1), so a daemon started on an older database upgrades it without losing rows — or,
if a step fails, leaves it as it was. A database newer than this code knows is refused
(:class:`SchemaTooNew`).

A database of the first release has no ``schema_version`` table: with an ``events`` table it is
version 1, empty it is version 0.

Migrations are frozen: once released a step never changes (a fresh database replays them all).
A change to ``schema.py`` comes with a new step here (``ALTER TABLE … ADD COLUMN …`` and the
like) and a line in ``analytics/README.md``. (The store also runs ``schema.ddl()`` after
migrating — ``CREATE … IF NOT EXISTS`` and ``CREATE OR REPLACE VIEW`` — which creates a table new
to ``schema.py`` but never changes an existing one.)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import duckdb
from foundry.analytics.parquet import archive_dir, refresh_archive_views

VERSION_TABLE = """
    CREATE TABLE IF NOT EXISTS schema_version (
        version      INTEGER NOT NULL,     -- the migration applied (N: the step N-1 -> N)
        applied_at   TIMESTAMPTZ NOT NULL,
        description  VARCHAR NOT NULL
    )"""


class SchemaTooNew(Exception):
    """The database was written by a newer Foundry than this one."""


Step = Callable[[duckdb.DuckDBPyConnection, Path], None]


@dataclass(frozen=True)
class Migration:
    version: int  # the version the database has after this step
    description: str
    step: Step


def _statements(*sql: str) -> Step:
    def run(con: duckdb.DuckDBPyConnection, home: Path) -> None:
        for statement in sql:
            con.execute(statement)

    return run


# Version 1: the schema of the first release (efcd58b) — trace and run tables and their views.
V1 = (
    """
    CREATE TABLE IF NOT EXISTS events (
        event_id     VARCHAR NOT NULL,  -- evt_ + 24 hex, the public daemon's recipe
        trace_id     VARCHAR NOT NULL,  -- root event id of the chain (= workflow id)
        event_type   VARCHAR NOT NULL,
        project      VARCHAR NOT NULL,
        occurred_at  TIMESTAMPTZ NOT NULL,
        recorded_at  TIMESTAMPTZ NOT NULL,
        throttle     VARCHAR NOT NULL,  -- full | audit_only | dry_run
        depth        INTEGER NOT NULL,  -- 0 for the root
        parent_id    VARCHAR,           -- the event whose block emitted this one
        emitted_by   VARCHAR,           -- that block's name
        throttled    BOOLEAN NOT NULL,  -- recorded but not delivered (AUDIT_ONLY mutator)
        payload      JSON NOT NULL
    )""",
    """
    CREATE TABLE IF NOT EXISTS block_executions (
        trace_id           VARCHAR NOT NULL,
        block_name         VARCHAR NOT NULL,
        trigger_event_id   VARCHAR NOT NULL,
        state              VARCHAR NOT NULL,  -- completed | skipped | failed
        success            BOOLEAN NOT NULL,
        summary            VARCHAR NOT NULL,
        emitted_event_ids  VARCHAR[] NOT NULL,
        duration_ms        BIGINT NOT NULL,   -- wall clock, retries included
        raw_output         VARCHAR NOT NULL,
        exit_code          INTEGER NOT NULL,
        audit_artifacts    VARCHAR[] NOT NULL,
        attempts           INTEGER NOT NULL,
        throttled          BOOLEAN NOT NULL,
        started_at         TIMESTAMPTZ NOT NULL,
        completed_at       TIMESTAMPTZ NOT NULL
    )""",
    """
    CREATE TABLE IF NOT EXISTS workflows (
        workflow_id    VARCHAR NOT NULL,  -- the root event id
        workflow_type  VARCHAR NOT NULL,  -- the root event type
        project        VARCHAR NOT NULL,
        throttle       VARCHAR NOT NULL,
        state          VARCHAR NOT NULL,  -- completed | failed
        error          VARCHAR NOT NULL,  -- why it failed ('' when completed)
        started_at     TIMESTAMPTZ NOT NULL,
        completed_at   TIMESTAMPTZ NOT NULL,
        event_count    INTEGER NOT NULL,
        block_count    INTEGER NOT NULL   -- 0: an emit no block sinks (not a workflow)
    )""",
    """
    CREATE TABLE IF NOT EXISTS runs (
        run_id           VARCHAR NOT NULL,
        idempotency_key  VARCHAR NOT NULL,  -- '' when none was given
        dag_json         VARCHAR NOT NULL,
        inputs           JSON NOT NULL,
        seed             BIGINT NOT NULL,
        labels           JSON NOT NULL,
        breakpoints      VARCHAR[] NOT NULL,  -- as submitted (changes are run events)
        parent_run_id    VARCHAR NOT NULL,    -- a branch's source run ('' otherwise)
        branch_step      VARCHAR NOT NULL,
        note             VARCHAR NOT NULL,
        created_at       TIMESTAMPTZ NOT NULL
    )""",
    """
    CREATE TABLE IF NOT EXISTS run_events (
        run_id       VARCHAR NOT NULL,
        seq          INTEGER NOT NULL,   -- 1, 2, 3 ... per run
        step_id      VARCHAR NOT NULL,   -- '' for run-level events
        kind         VARCHAR NOT NULL,   -- run_submitted, step_leased, step_completed, ...
        payload      JSON NOT NULL,
        occurred_at  TIMESTAMPTZ NOT NULL
    )""",
    """
    CREATE OR REPLACE VIEW in_flight_workflows AS
    SELECT e.event_id AS workflow_id, e.event_type AS workflow_type, e.project,
           e.throttle, e.occurred_at AS started_at
    FROM events e ANTI JOIN workflows w ON w.workflow_id = e.event_id
    WHERE e.depth = 0""",
    """
    CREATE OR REPLACE VIEW run_status AS
    SELECT r.run_id, r.created_at, r.labels, r.parent_run_id,
           coalesce(arg_max(CASE e.kind
               WHEN 'run_submitted' THEN 'PENDING' WHEN 'run_started' THEN 'RUNNING'
               WHEN 'run_resumed' THEN 'RUNNING' WHEN 'run_paused' THEN 'PAUSED_AT_STEP'
               WHEN 'run_succeeded' THEN 'SUCCEEDED' WHEN 'run_failed' THEN 'FAILED'
               WHEN 'run_canceled' THEN 'CANCELED' END, e.seq)
               FILTER (WHERE e.kind LIKE 'run_%'), 'PENDING') AS status,
           max(e.occurred_at) AS updated_at
    FROM runs r LEFT JOIN run_events e USING (run_id)
    GROUP BY ALL""",
    """
    CREATE OR REPLACE VIEW steps AS
    SELECT run_id, step_id,
           max(CAST(payload->>'attempt' AS INTEGER)) AS attempt,
           arg_max(kind, seq) AS last_event,
           max(occurred_at) FILTER (WHERE kind = 'step_leased') AS leased_at,
           max(occurred_at) FILTER (WHERE kind IN ('step_completed', 'step_failed'))
               AS completed_at,
           arg_max(payload->'output', seq) FILTER (WHERE kind = 'step_completed') AS output,
           arg_max(payload->'error', seq) FILTER (WHERE kind = 'step_failed') AS error,
           arg_max(CAST(payload->'usage'->>'tokens_in' AS DOUBLE), seq)
               FILTER (WHERE kind = 'step_completed') AS tokens_in,
           arg_max(CAST(payload->'usage'->>'tokens_out' AS DOUBLE), seq)
               FILTER (WHERE kind = 'step_completed') AS tokens_out,
           arg_max(CAST(payload->'usage'->>'cost' AS DOUBLE), seq)
               FILTER (WHERE kind = 'step_completed') AS cost
    FROM run_events WHERE step_id <> ''
    GROUP BY run_id, step_id""",
)

# Version 2: governance — eval packs and change gates.
V2 = (
    """
    CREATE TABLE IF NOT EXISTS eval_scenarios (
        scenario_id  VARCHAR NOT NULL,
        pack         VARCHAR NOT NULL,
        slug         VARCHAR NOT NULL,
        title        VARCHAR NOT NULL,
        description  VARCHAR NOT NULL,
        run_spec     JSON NOT NULL,       -- the RunSpec as proto3 JSON (dag_json, inputs, ...)
        expected     JSON NOT NULL,       -- the assertions (README.md, "Eval packs")
        created_at   TIMESTAMPTZ NOT NULL,
        updated_at   TIMESTAMPTZ NOT NULL,
        UNIQUE (pack, slug)
    )""",
    """
    CREATE TABLE IF NOT EXISTS eval_results (
        result_id    VARCHAR NOT NULL,
        scenario_id  VARCHAR NOT NULL,
        run_id       VARCHAR NOT NULL,
        commit       VARCHAR NOT NULL,    -- '' when none was given
        outcome      VARCHAR NOT NULL,    -- passed | failed | error
        metrics      JSON NOT NULL,       -- score, latency_ms, tokens, cost, assertions, ...
        executed_at  TIMESTAMPTZ NOT NULL  -- when the result was recorded (judged)
    )""",
    """
    CREATE TABLE IF NOT EXISTS gate_decisions (
        gate_id     VARCHAR NOT NULL,
        change_id   VARCHAR NOT NULL,
        revision    VARCHAR NOT NULL,
        effect      VARCHAR NOT NULL,     -- allow | follow_up | deny
        reasons     VARCHAR[] NOT NULL,
        followups   JSON NOT NULL,        -- [{slug, description, recommended}]
        scorecard   JSON NOT NULL,        -- novelty, coverage, evals, budgets, telemetry, extra
        metadata    JSON NOT NULL,
        telemetry   JSON NOT NULL,
        actor       VARCHAR NOT NULL,
        decided_at  TIMESTAMPTZ NOT NULL
    )""",
    """
    CREATE TABLE IF NOT EXISTS gate_followups (
        followup_id  VARCHAR NOT NULL,
        gate_id      VARCHAR NOT NULL,
        actor        VARCHAR NOT NULL,
        outcome      VARCHAR NOT NULL,    -- approved | needs_changes | deferred
        note         VARCHAR,             -- NULL when none was given
        details      JSON NOT NULL,
        recorded_at  TIMESTAMPTZ NOT NULL
    )""",
)


# Version 3: bounded history — the retention passes and the archived_* views over the archive.
V3 = (
    """
    CREATE TABLE IF NOT EXISTS retention_passes (
        pass_id      VARCHAR NOT NULL,
        cutoff       TIMESTAMPTZ NOT NULL,
        archived_at  TIMESTAMPTZ NOT NULL,
        archived     JSON NOT NULL
    )""",
)


def _v3(con: duckdb.DuckDBPyConnection, home: Path) -> None:
    _statements(*V3)(con, home)
    refresh_archive_views(con, home)


# Version 4: W3C trace context. An events/block_executions ``trace_id`` was the chain's root
# event id; it is ``workflow_id`` now, and ``trace_id`` is the W3C trace id (32 hex), as in the
# public daemon's trace files and OpenTelemetry. Rows recorded before have NULL trace context.
V4 = (
    "ALTER TABLE events RENAME COLUMN trace_id TO workflow_id",
    "ALTER TABLE events ADD COLUMN trace_id VARCHAR",
    "ALTER TABLE events ADD COLUMN span_id VARCHAR",
    "ALTER TABLE events ADD COLUMN parent_span_id VARCHAR",
    "ALTER TABLE block_executions RENAME COLUMN trace_id TO workflow_id",
    "ALTER TABLE block_executions ADD COLUMN trace_id VARCHAR",
    "ALTER TABLE block_executions ADD COLUMN span_id VARCHAR",
    "ALTER TABLE block_executions ADD COLUMN parent_span_id VARCHAR",
    "ALTER TABLE workflows ADD COLUMN trace_id VARCHAR",
    "ALTER TABLE runs ADD COLUMN trace_id VARCHAR",
    "ALTER TABLE runs ADD COLUMN span_id VARCHAR",
    # NULL when the block ran no command, as upstream's trace files say it
    "ALTER TABLE block_executions ALTER COLUMN raw_output DROP NOT NULL",
    "ALTER TABLE block_executions ALTER COLUMN exit_code DROP NOT NULL",
)

# Version 5: the store's journal ($FOUNDRY_HOME/journal) and the high-water mark of what this
# database holds of it. A database of before had no journal: it holds everything (0).
V5 = (
    "CREATE TABLE journal_applied (seq BIGINT NOT NULL)",
    "INSERT INTO journal_applied VALUES (0)",
)

# Version 6: an attestation is stored as signed — its statement (the DSSE payload), key id and
# signature — in attestation_statements, not as the envelope plus its statement's parts decoded
# (a row a third of the size); the view `attestations` (schema.py) gives the old columns back.
# The old table's rows move over: their payload decoded, their signature out of the envelope.
V6 = (
    """
    CREATE TABLE attestation_statements (
        attestation_id  VARCHAR NOT NULL,
        run_id          VARCHAR NOT NULL,
        step_id         VARCHAR NOT NULL,
        kind            VARCHAR NOT NULL,
        statement       VARCHAR NOT NULL,
        keyid           VARCHAR NOT NULL,
        signature       VARCHAR NOT NULL,
        artifact_hash   VARCHAR,
        previous        VARCHAR,
        created_at      TIMESTAMPTZ NOT NULL,
        seq             INTEGER NOT NULL
    )""",
)
V6_MOVE = (
    """
    INSERT INTO attestation_statements
    SELECT attestation_id, run_id, step_id, kind,
           decode(from_base64(CAST(envelope AS JSON)->>'payload')),
           CAST(envelope AS JSON)->'signatures'->0->>'keyid',
           CAST(envelope AS JSON)->'signatures'->0->>'sig',
           artifact_hash, previous, created_at, seq
    FROM attestations""",
    "DROP TABLE attestations",
)


def _v6(con: duckdb.DuckDBPyConnection, home: Path) -> None:
    _statements(*V6)(con, home)
    row = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'attestations'"
    ).fetchone()
    if row and row[0]:  # made by schema.ddl() before this version
        _statements(*V6_MOVE)(con, home)


# Version 7: the archive's Parquet files a version-3 retention pass wrote have the columns of
# then: an events/block_executions ``trace_id`` that is the workflow id, no W3C trace context.
# Version 4 renamed the live tables' columns only, so ``archived_events`` mixed the two meanings
# in one column (and ``SELECT * FROM events UNION ALL SELECT * FROM archived_events`` failed).
# Each such file is rewritten with the live columns (a file at a time, replaced atomically: a
# step that fails leaves each file old or new, and runs again at the next start).
V7_TABLES = ("events", "block_executions")


def _v7(con: duckdb.DuckDBPyConnection, home: Path) -> None:
    for table in V7_TABLES:
        folder = archive_dir(home) / table
        for path in sorted(folder.glob("*/*.parquet")) if folder.is_dir() else ():
            quoted = str(path).replace("'", "''")
            columns = {
                name for (name, *_) in con.execute(
                    f"DESCRIBE SELECT * FROM read_parquet('{quoted}', hive_partitioning = false)"
                ).fetchall()
            }  # fmt: skip
            if "workflow_id" in columns or "trace_id" not in columns:
                continue  # written by version 4 or later
            staged = path.with_name(path.name + ".v7")
            con.execute(
                f"COPY (SELECT * EXCLUDE (trace_id), trace_id AS workflow_id, "
                f"NULL::VARCHAR AS trace_id, NULL::VARCHAR AS span_id, "
                f"NULL::VARCHAR AS parent_span_id FROM read_parquet('{quoted}', "
                f"hive_partitioning = false)) TO '{str(staged).replace(chr(39), chr(39) * 2)}' "
                "(FORMAT parquet)"
            )
            os.replace(staged, path)
    refresh_archive_views(con, home)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "trace and run tables (the first release)", _statements(*V1)),
    Migration(
        2,
        "governance: eval_scenarios, eval_results, gate_decisions, gate_followups",
        _statements(*V2),
    ),
    Migration(3, "retention: retention_passes, archived_* views ($FOUNDRY_HOME/archive)", _v3),
    Migration(
        4,
        "trace context: events/block_executions trace_id -> workflow_id; W3C trace_id, span_id,"
        " parent_span_id on events, block_executions; trace_id on workflows; trace_id, span_id"
        " on runs; raw_output, exit_code NULL when no command ran",
        _statements(*V4),
    ),
    Migration(5, "journal: journal_applied, the store journal's high-water mark", _statements(*V5)),
    Migration(
        6,
        "attestations: stored as signed (statement, keyid, signature) in attestation_statements;"
        " attestations is a view with the old columns",
        _v6,
    ),
    Migration(
        7,
        "archive: events/block_executions Parquet files of version 3 rewritten with the live"
        " columns (trace_id -> workflow_id; W3C trace_id, span_id, parent_span_id)",
        _v7,
    ),
)
LATEST = MIGRATIONS[-1].version


def current_version(con: duckdb.DuckDBPyConnection) -> int:
    """The database's schema version (0: empty)."""
    tables = {
        name
        for (name,) in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'"
        ).fetchall()
    }
    if "schema_version" in tables:
        row = con.execute("SELECT max(version) FROM schema_version").fetchone()
        if row and row[0] is not None:
            return int(row[0])
    return 1 if "events" in tables else 0


def migrate(con: duckdb.DuckDBPyConnection, home: Path, *, source: str = "") -> tuple[int, int]:
    """Bring the database to ``LATEST`` in one transaction; returns (version before, after).
    Raises :class:`SchemaTooNew` (one line naming ``source``) for a newer database."""
    con.execute("BEGIN TRANSACTION")
    try:
        before = current_version(con)
        if before > LATEST:
            raise SchemaTooNew(
                f"{source or 'the database'}: schema version {before} is newer than this "
                f"Foundry knows ({LATEST}); run a newer Foundry"
            )
        con.execute(VERSION_TABLE)
        if before == 1 and not _recorded(con):
            con.execute(
                "INSERT INTO schema_version VALUES (1, now(), ?)", [MIGRATIONS[0].description]
            )
        for migration in MIGRATIONS[before:]:
            migration.step(con, home)
            con.execute(
                "INSERT INTO schema_version VALUES (?, now(), ?)",
                [migration.version, migration.description],
            )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return before, LATEST


def _recorded(con: duckdb.DuckDBPyConnection) -> bool:
    row = con.execute("SELECT count(*) FROM schema_version").fetchone()
    return bool(row and row[0])
