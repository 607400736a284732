"""The SQL schema of ``$FOUNDRY_HOME/foundry.duckdb``: documented tables analysts query.

Times are TIMESTAMPTZ in UTC; payloads and outputs are JSON.
"""

from __future__ import annotations

SCHEMA_VERSION = 1

TABLES: dict[str, str] = {
    "events": """
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
    "block_executions": """
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
    "workflows": """
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
}

VIEWS: dict[str, str] = {
    "in_flight_workflows": """
        CREATE OR REPLACE VIEW in_flight_workflows AS
        SELECT e.event_id AS workflow_id, e.event_type AS workflow_type, e.project,
               e.throttle, e.occurred_at AS started_at
        FROM events e ANTI JOIN workflows w ON w.workflow_id = e.event_id
        WHERE e.depth = 0""",
}


def ddl() -> list[str]:
    return [*TABLES.values(), *VIEWS.values()]
