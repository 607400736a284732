"""Messages the store actor accepts.

Writes (``Append``) are group-committed one group at a time; ``Barrier`` is answered once every
write sent before it has been through its commit. Queries are typed: each names what it wants and
the store answers it with its own SQL (``reads.py``, ``runs.py``) on a read cursor of its own, on a
worker thread, concurrently with commits. A query sees what was committed when it starts — not
writes still waiting in the mailbox: to read your own writes, wait for their ack or a Barrier.
A database error reaches the asker as ``Unavailable`` (the daemon log has the details).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from foundry.analytics.sandbox import DEFAULT_MAX_BYTES, QueryResult
from foundry.kernel.actors.mailbox import Reply
from foundry.kernel.core.attest_records import AttestationRecord
from foundry.kernel.core.governance import StoredGate, StoredScenario
from foundry.kernel.core.run_control import RunListQuery, RunSummary
from foundry.kernel.core.runs import RunEventRecord, RunSubmission

StoredRun = tuple[RunSubmission, list[RunEventRecord]]
"""A run's submission and its event log, in order."""


@dataclass(frozen=True, slots=True)
class Append:
    """Records to commit in the next group commit (events, executions, finished chains, ...).

    ``publish`` items go to the tap broker once the commit is durable; ``ack`` is answered then,
    and so is each ``(reply, value)`` of ``answers`` — say, an Emit's reply, which the root's
    commit answers without the engine waiting for it. A failed commit fails them all. A write
    with either is waited for: it is committed at once.
    """

    records: tuple[Any, ...]
    publish: tuple[Any, ...] = ()
    ack: Reply[None] | None = None
    answers: tuple[tuple[Reply[Any], Any], ...] = ()


@dataclass(frozen=True, slots=True)
class CommitHealth:
    """Published (tap topic :data:`STORE_HEALTH`) when the store's commits start failing —
    every write refused: a full disk, its journal deleted under it — and when they work again.
    The health service reports NOT_SERVING meanwhile."""

    committing: bool
    reason: str = ""

    tap_topic = "store_health"
    tap_key = ""


STORE_HEALTH = CommitHealth.tap_topic


@dataclass(frozen=True, slots=True)
class Barrier:
    """Answered once every Append sent before it has been committed (or has failed)."""

    reply: Reply[None]


@dataclass(frozen=True, slots=True)
class GetStats:
    """The store's own counters (no SQL): answered at once."""

    reply: Reply[StoreStats]


@dataclass(frozen=True, slots=True)
class StoreStats:
    commits: int  # group commits that succeeded since the store started
    reads: int  # queries answered (or failed) since the store started


# --- queries: answered on a read cursor, concurrently with commits ------------------------------


@dataclass(frozen=True, slots=True)
class LoadWorkflow:
    """A finished workflow's row and its block executions (dicts), or None."""

    workflow_id: str
    reply: Reply[tuple[dict[str, Any], list[dict[str, Any]]] | None]


@dataclass(frozen=True, slots=True)
class LoadTrace:
    """A finished chain's trace document rebuilt from the database, or None."""

    workflow_id: str
    reply: Reply[Mapping[str, Any] | None]


@dataclass(frozen=True, slots=True)
class LoadRun:
    """A run's submission and event log, or None."""

    run_id: str
    reply: Reply[StoredRun | None]


@dataclass(frozen=True, slots=True)
class LoadSubmission:
    """A run's submission alone (its ``runs`` row), or None."""

    run_id: str
    reply: Reply[RunSubmission | None]


@dataclass(frozen=True, slots=True)
class LoadRunEvents:
    """A run's event log in order (empty for an unknown run)."""

    run_id: str
    reply: Reply[list[RunEventRecord]]


@dataclass(frozen=True, slots=True)
class LoadUnfinishedRuns:
    """Every run whose log has no terminal event, oldest first."""

    reply: Reply[list[StoredRun]]


@dataclass(frozen=True, slots=True)
class LoadRunSummaries:
    """Runs matching ``query``, newest first: up to one more than a page (``run_control``)."""

    query: RunListQuery
    reply: Reply[list[RunSummary]]


@dataclass(frozen=True, slots=True)
class LoadRecentEvents:
    """The newest stored events since ``since`` (of ``project``, of ``workflow_id``, each when
    set), newest first: at most ``limit`` of them, and of those as many as ``max_bytes`` of
    payload hold (the newest always). The reply: their rows (event id, type, project,
    microseconds since the epoch it occurred, workflow id — empty for a root no block sinks —,
    throttle, throttled, payload, emitted by, trace id, span id, parent span id) and whether
    older ones were left out."""

    since: datetime
    project: str
    workflow_id: str
    limit: int
    max_bytes: int
    reply: Reply[tuple[list[tuple[Any, ...]], bool]]


@dataclass(frozen=True, slots=True)
class LoadRecentWorkflows:
    """Finished workflows newest first (with their block executions), of ``project`` and in
    ``state`` when set, at most ``limit``."""

    project: str
    state: str
    limit: int
    reply: Reply[list[tuple[dict[str, Any], list[dict[str, Any]]]]]


@dataclass(frozen=True, slots=True)
class LoadNewestWorkflowStart:
    """The latest start of a finished workflow stored (as ``LoadRecentWorkflows`` lists them:
    with a block execution), None when there is none."""

    reply: Reply[datetime | None]


@dataclass(frozen=True, slots=True)
class LoadIdempotencyKeys:
    """Idempotency key → run id, for every run submitted with one."""

    reply: Reply[dict[str, str]]


@dataclass(frozen=True, slots=True)
class CountRows:
    """How many rows the store holds (for benchmarks and checks)."""

    reply: Reply[RowCounts]


@dataclass(frozen=True, slots=True)
class RowCounts:
    workflows: dict[str, int]  # by state
    events: int
    block_executions: int
    runs: int
    run_events: int


@dataclass(frozen=True, slots=True)
class LoadEvalScenarios:
    """Eval scenarios by pack then slug — of one pack when ``pack`` is set, one scenario when
    ``slug`` is too — each with its newest ``history`` results, newest first."""

    pack: str
    slug: str
    history: int
    reply: Reply[list[StoredScenario]]


@dataclass(frozen=True, slots=True)
class LoadGateDecisions:
    """Gate decisions newest first, with their acknowledgements (oldest first): one decision
    when ``gate_id`` is set, else those of ``change_id`` ('' for every change), at most
    ``limit``."""

    gate_id: str
    change_id: str
    limit: int
    reply: Reply[list[StoredGate]]


@dataclass(frozen=True, slots=True)
class LoadAttestations:
    """The attestations with these ids, in the order asked; unknown ids are left out."""

    attestation_ids: tuple[str, ...]
    reply: Reply[list[AttestationRecord]]


@dataclass(frozen=True, slots=True)
class LoadRunAttestations:
    """A run's attestations in the order of its hash chain (of the events announcing them)."""

    run_id: str
    reply: Reply[list[AttestationRecord]]


@dataclass(frozen=True, slots=True)
class LoadUnattested:
    """Runs with an announced attestation that is not stored (after a crash)."""

    reply: Reply[list[str]]


@dataclass(frozen=True, slots=True)
class LoadUnattestedGovernance:
    """(label, record) of the gate decisions and eval results whose attestation is not stored
    (after a crash), oldest first."""

    reply: Reply[list[tuple[str, Any]]]


@dataclass(frozen=True, slots=True)
class ExportParquet:
    """``foundry export parquet``: write the trace, run, eval and gate tables as date-partitioned
    Parquet under ``directory`` (absolute; each table's folder absent or empty), rows dated on or
    after ``since`` (YYYY-MM-DD, UTC) or all, from one snapshot. Answers rows written per table.
    The files are written by a separate in-memory DuckDB instance (``analytics/parquet.py``)."""

    directory: str
    since: str | None
    reply: Reply[dict[str, int]]


@dataclass(frozen=True, slots=True)
class RunRetention:
    """Run a retention pass now (``[store] retain_days``; ``retention.py``): archive, then prune,
    finished work older than the cutoff."""

    reply: Reply[RetentionReport]


@dataclass(frozen=True, slots=True)
class Pruned:
    """The store's notice to the engine and the scheduler: retention moved these finished
    workflows and runs to the archive. What they held of them in memory answered as if they
    were still live (a run's idempotency key, Trace, Status, GetRun) until a restart."""

    workflow_ids: tuple[str, ...]
    run_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RetentionReport:
    cutoff: datetime | None  # None: retention is off (``retain_days`` = 0)
    archived: dict[str, int]  # rows moved to the archive, per table (empty: nothing was old)


StoreQuery = (
    LoadWorkflow
    | LoadTrace
    | LoadRun
    | LoadRunEvents
    | LoadSubmission
    | LoadUnfinishedRuns
    | LoadRunSummaries
    | LoadRecentWorkflows
    | LoadRecentEvents
    | LoadNewestWorkflowStart
    | LoadIdempotencyKeys
    | CountRows
    | LoadEvalScenarios
    | LoadGateDecisions
    | ExportParquet
    | LoadAttestations
    | LoadRunAttestations
    | LoadUnattested
    | LoadUnattestedGovernance
)


@dataclass(frozen=True, slots=True)
class RunUserQuery:
    """An analyst's SQL (``foundry.analytics.sandbox``): checked, then run on a read cursor of its
    own (not one of the store's query cursors) in a read-only transaction, interrupted after
    ``timeout`` seconds (DeadlineExceeded); at most ``max_rows`` rows and ``max_bytes`` of
    their JSON text. Refused SQL and DuckDB's
    errors are InvalidArgument. With ``encode_rows``, the answer's ``rows_wire`` holds the rows
    encoded by it, on the worker thread (an edge's wire form, kept off the daemon's loop)."""

    sql: str
    params: Mapping[str, str]
    max_rows: int
    timeout: float
    reply: Reply[QueryResult]
    encode_rows: Callable[[tuple[str, ...]], bytes] | None = None
    max_bytes: int = DEFAULT_MAX_BYTES


StoreMessage = Append | Barrier | GetStats | RunRetention | StoreQuery | RunUserQuery
