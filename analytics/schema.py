"""The SQL schema of ``$FOUNDRY_HOME/foundry.duckdb``: documented tables analysts query.

Times are TIMESTAMPTZ in UTC; payloads and outputs are JSON.
"""

from __future__ import annotations

SCHEMA_VERSION = 7  # = migrations.LATEST; analytics/migrations.py upgrades older databases

TABLES: dict[str, str] = {
    "events": """
        CREATE TABLE IF NOT EXISTS events (
            event_id     VARCHAR NOT NULL,  -- evt_ + 24 hex, the public daemon's recipe
            workflow_id  VARCHAR NOT NULL,  -- root event id of the chain
            event_type   VARCHAR NOT NULL,
            project      VARCHAR NOT NULL,
            occurred_at  TIMESTAMPTZ NOT NULL,
            recorded_at  TIMESTAMPTZ NOT NULL,
            throttle     VARCHAR NOT NULL,  -- full | audit_only | dry_run
            depth        INTEGER NOT NULL,  -- 0 for the root
            parent_id    VARCHAR,           -- the event whose block emitted this one
            emitted_by   VARCHAR,           -- that block's name
            throttled    BOOLEAN NOT NULL,  -- recorded but not delivered (AUDIT_ONLY mutator)
            payload      JSON NOT NULL,
            -- W3C trace context (NULL on rows recorded before schema version 4)
            trace_id        VARCHAR,  -- 32 hex
            span_id         VARCHAR,  -- 16 hex: this event's span
            parent_span_id  VARCHAR   -- the emitting block execution's span (root: the caller's)
        )""",
    "block_executions": """
        CREATE TABLE IF NOT EXISTS block_executions (
            workflow_id        VARCHAR NOT NULL,  -- root event id of the chain
            block_name         VARCHAR NOT NULL,
            trigger_event_id   VARCHAR NOT NULL,
            state              VARCHAR NOT NULL,  -- completed | skipped | failed
            success            BOOLEAN NOT NULL,
            summary            VARCHAR NOT NULL,
            emitted_event_ids  VARCHAR[] NOT NULL,
            duration_ms        BIGINT NOT NULL,   -- wall clock, retries included
            raw_output         VARCHAR,           -- NULL: the block ran no command
            exit_code          INTEGER,           -- NULL: the block ran no command
            audit_artifacts    VARCHAR[] NOT NULL,
            attempts           INTEGER NOT NULL,
            throttled          BOOLEAN NOT NULL,
            started_at         TIMESTAMPTZ NOT NULL,
            completed_at       TIMESTAMPTZ NOT NULL,
            trace_id           VARCHAR,  -- W3C: the trigger event's trace
            span_id            VARCHAR,  -- this execution's span
            parent_span_id     VARCHAR   -- the trigger event's span
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
            block_count    INTEGER NOT NULL,  -- 0: an emit no block sinks (not a workflow)
            trace_id       VARCHAR            -- W3C: the root event's trace
        )""",
    "runs": """
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
            created_at       TIMESTAMPTZ NOT NULL,
            trace_id         VARCHAR,            -- W3C: the run's trace
            span_id          VARCHAR             -- the run's span: its step attempts' parent
        )""",
    "run_events": """
        CREATE TABLE IF NOT EXISTS run_events (
            run_id       VARCHAR NOT NULL,
            seq          INTEGER NOT NULL,   -- 1, 2, 3 ... per run
            step_id      VARCHAR NOT NULL,   -- '' for run-level events
            kind         VARCHAR NOT NULL,   -- run_submitted, step_leased, step_completed, ...
            payload      JSON NOT NULL,
            occurred_at  TIMESTAMPTZ NOT NULL
        )""",
    # Retention (README.md, "Retention"): one row per pass that moved rows to the archive.
    "retention_passes": """
        CREATE TABLE IF NOT EXISTS retention_passes (
            pass_id      VARCHAR NOT NULL,
            cutoff       TIMESTAMPTZ NOT NULL,   -- rows finished before it were archived
            archived_at  TIMESTAMPTZ NOT NULL,
            archived     JSON NOT NULL           -- rows moved, per table
        )""",
    # Governance (README.md, "Governance"). eval_scenarios has one row per (pack, slug): a sync
    # that changes a scenario deletes its row and inserts the new one in the same commit, keeping
    # its scenario_id and created_at. The other three are append-only.
    "eval_scenarios": """
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
    "eval_results": """
        CREATE TABLE IF NOT EXISTS eval_results (
            result_id    VARCHAR NOT NULL,
            scenario_id  VARCHAR NOT NULL,
            run_id       VARCHAR NOT NULL,
            commit       VARCHAR NOT NULL,    -- '' when none was given
            outcome      VARCHAR NOT NULL,    -- passed | failed | error
            metrics      JSON NOT NULL,       -- score, latency_ms, tokens, cost, assertions, ...
            executed_at  TIMESTAMPTZ NOT NULL  -- when the result was recorded (judged)
        )""",
    "gate_decisions": """
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
    "gate_followups": """
        CREATE TABLE IF NOT EXISTS gate_followups (
            followup_id  VARCHAR NOT NULL,
            gate_id      VARCHAR NOT NULL,
            actor        VARCHAR NOT NULL,
            outcome      VARCHAR NOT NULL,    -- approved | needs_changes | deferred
            note         VARCHAR,             -- NULL when none was given
            details      JSON NOT NULL,
            recorded_at  TIMESTAMPTZ NOT NULL
        )""",
    # Signed attestations (README.md, "Attestations"): append-only, one row per attestation, as
    # signed — the statement and its signature; the `attestations` view below decodes them.
    # Run-linked ones are announced by a run event (seq: a step's `step_completed`, else an
    # `attested` event) and chained per run (previous = the prior one's digest).
    "attestation_statements": """
        CREATE TABLE IF NOT EXISTS attestation_statements (
            attestation_id  VARCHAR NOT NULL,
            run_id          VARCHAR NOT NULL,   -- '' for a gate decision
            step_id         VARCHAR NOT NULL,   -- '' for run-level subjects
            kind            VARCHAR NOT NULL,   -- run, step, tool, artifact, capability_token…
            statement       VARCHAR NOT NULL,   -- the in-toto Statement, canonical JSON (signed)
            keyid           VARCHAR NOT NULL,   -- the signing key's id
            signature       VARCHAR NOT NULL,   -- base64 Ed25519 over the statement's DSSE PAE
            artifact_hash   VARCHAR,            -- sha256 hex of what is attested
            previous        VARCHAR,            -- the run's previous step attestation (chain)
            created_at      TIMESTAMPTZ NOT NULL,
            seq             INTEGER NOT NULL    -- the run event announcing it (0: custom)
        )""",
    # The store's journal (README.md, "Architecture"): the last journal record whose rows are in
    # this database, committed with them. One row.
    "journal_applied": """
        CREATE TABLE IF NOT EXISTS journal_applied (
            seq  BIGINT NOT NULL
        )""",
}

VIEWS: dict[str, str] = {
    "in_flight_workflows": """
        CREATE OR REPLACE VIEW in_flight_workflows AS
        SELECT e.event_id AS workflow_id, e.event_type AS workflow_type, e.project,
               e.throttle, e.occurred_at AS started_at
        FROM events e ANTI JOIN workflows w ON w.workflow_id = e.event_id
        WHERE e.depth = 0""",
    "run_status": """
        CREATE OR REPLACE VIEW run_status AS
        SELECT r.run_id, r.created_at, r.labels, r.parent_run_id,
               CASE WHEN arg_max(e.kind, e.seq) FILTER (WHERE e.kind LIKE 'run_%'
                                                        OR e.kind = 'cancel_requested')
                             = 'cancel_requested'
                         AND arg_max(e.kind, e.seq) FILTER (WHERE e.kind LIKE 'run_%')
                             = 'run_paused'
                    THEN 'RUNNING'  -- a paused run being cancelled waits no more
                    ELSE coalesce(arg_max(CASE e.kind
                   WHEN 'run_submitted' THEN 'PENDING' WHEN 'run_started' THEN 'RUNNING'
                   WHEN 'run_resumed' THEN 'RUNNING' WHEN 'run_paused' THEN 'PAUSED_AT_STEP'
                   WHEN 'run_succeeded' THEN 'SUCCEEDED' WHEN 'run_failed' THEN 'FAILED'
                   WHEN 'run_canceled' THEN 'CANCELED' END, e.seq)
                   FILTER (WHERE e.kind LIKE 'run_%'), 'PENDING') END AS status,
               max(e.occurred_at) AS updated_at
        FROM runs r LEFT JOIN run_events e USING (run_id)
        GROUP BY ALL""",
    "steps": """
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
                   FILTER (WHERE kind = 'step_completed') AS cost,
               arg_max(payload->>'span_id', seq) FILTER (WHERE kind = 'step_leased') AS span_id
        FROM run_events
        -- a step's own events: run_failed, run_paused and run_resumed name a step too (a step
        -- that failed its run read run_failed; one a cancelled pause held got a row)
        WHERE step_id <> '' AND kind LIKE 'step_%'
        GROUP BY run_id, step_id""",
}


# The DSSE envelope of a row of attestation_statements, as the daemon serves it (a test holds the
# two to byte equality): the statement base64-encoded, its type, the key id and the signature.
ENVELOPE_SQL = (
    """'{"payload":"' || to_base64(encode(statement)) || """
    """'","payloadType":"application/vnd.in-toto+json","signatures":[{"keyid":' || """
    """to_json(keyid) || ',"sig":"' || signature || '"}]}'"""
)

VIEWS["attestations"] = f"""
        CREATE OR REPLACE VIEW attestations AS
        SELECT attestation_id, run_id, step_id, kind,
               CAST(statement AS JSON)->'subject'->0 AS subject,
               CAST(statement AS JSON)->>'predicateType' AS predicate_type,
               CAST(statement AS JSON)->'predicate' AS claims,
               artifact_hash,
               {ENVELOPE_SQL} AS envelope,
               previous, created_at, seq
        FROM attestation_statements"""


def ddl() -> list[str]:
    return [*TABLES.values(), *VIEWS.values()]
