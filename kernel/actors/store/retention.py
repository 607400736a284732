"""Bounded history: ``[store] retain_days`` moves old finished work to the Parquet archive.

A pass (hourly, and once at start) has three steps, so that a row is never lost nor archived
twice, whenever the daemon stops:

1. **stage** (a read cursor, beside commits): the finished workflows and finished runs older than
   the cutoff, with their events, block executions and run events, are written as Parquet to
   ``archive/.staging/<pass>/`` (``analytics/parquet.py``: a separate in-memory instance);
2. **prune** (in the commit sequence, one transaction): the same rows are deleted — only if they
   are still exactly the rows staged (counted again) — and the pass is recorded in
   ``retention_passes``;
3. **publish**: the staged files move into ``archive/<table>/date=…/`` and the ``archived_*``
   views are recreated over them.

At start, a staged pass that was recorded is published, one that was not is thrown away (its rows
are still live). Workflows in flight and runs that have not ended (pending, running, paused) are
never touched; eval and gate tables are kept whole.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import date, datetime
from pathlib import Path
from typing import Any

import duckdb
from foundry.analytics.parquet import (
    ARCHIVED,
    ExportError,
    Selection,
    archive_dir,
    export_tables,
    refresh_archive_views,
    write_parquet,
)
from foundry.analytics.parquet import DATED as EXPORTED
from foundry.kernel.errors import FailedPrecondition, InvalidArgument

log = logging.getLogger("foundry.store")

OLD_WORKFLOWS = "SELECT workflow_id FROM workflows WHERE completed_at < ?"
OLD_RUNS = (
    "SELECT run_id FROM run_status "
    "WHERE status IN ('SUCCEEDED', 'FAILED', 'CANCELED') AND updated_at < ?"
)

# table → (the key column, the query of the keys to archive)
SCOPES: dict[str, tuple[str, str]] = {
    "workflows": ("workflow_id", OLD_WORKFLOWS),
    "events": ("workflow_id", OLD_WORKFLOWS),
    "block_executions": ("workflow_id", OLD_WORKFLOWS),
    "runs": ("run_id", OLD_RUNS),
    "run_events": ("run_id", OLD_RUNS),
}
assert set(SCOPES) == set(ARCHIVED)


def staging_dir(home: Path, pass_id: str) -> Path:
    return archive_dir(home) / ".staging" / pass_id


def stage(
    cursor: duckdb.DuckDBPyConnection, home: Path, cutoff: datetime, pass_id: str
) -> dict[str, int]:
    """Step 1, on a read cursor in a transaction: write the rows to archive into staging. A
    failure (a full disk) leaves no staged file behind (each failed pass's stayed until a
    restart)."""
    selections = [
        Selection(table, f"WHERE {key} IN ({keys})", (cutoff,))
        for table, (key, keys) in SCOPES.items()
    ]
    try:
        return write_parquet(cursor, staging_dir(home, pass_id), selections, prefix=f"r{pass_id}")
    except BaseException:
        discard(home, pass_id)
        raise


def prune(
    con: duckdb.DuckDBPyConnection,
    home: Path,
    cutoff: datetime,
    pass_id: str,
    staged: Mapping[str, int],
    gate: AbstractContextManager[Any] | None = None,
) -> tuple[list[tuple[str, datetime]], tuple[str, ...]] | None:
    """Step 2 and 3, in the commit sequence: delete what was staged and publish the files.
    Returns the pruned workflows (id, started_at) for their trace files and the pruned runs'
    ids, or None when the rows
    changed since they were staged (the staging is thrown away; the next pass tries again).
    Once the delete is committed the staged files are the rows' only copy: a failure to move
    them (a full disk, a folder in the way) leaves them staged, for the next pass or start.
    ``gate`` is held from the commit until the files are in the archive (``sandbox.run_query``
    takes a user query's snapshot under it)."""
    try:
        publish_recorded(con, home)  # a pass before this one could not move its files
    except (OSError, duckdb.Error) as exc:  # still: they stay staged; this pass goes on
        log.error("retention: the staged files of an earlier pass still cannot be moved into "
                  "the archive (%s)", exc)  # fmt: skip
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(
            "CREATE OR REPLACE TEMP TABLE prune_workflows AS "
            "SELECT workflow_id, started_at FROM workflows WHERE completed_at < ?",
            [cutoff],
        )
        con.execute(f"CREATE OR REPLACE TEMP TABLE prune_runs AS {OLD_RUNS}", [cutoff])
        temp = {"workflow_id": "prune_workflows", "run_id": "prune_runs"}
        for table, (key, _) in SCOPES.items():
            column = "workflow_id" if temp[key] == "prune_workflows" else "run_id"
            row = con.execute(
                f"SELECT count(*) FROM {table} WHERE {key} IN (SELECT {column} FROM {temp[key]})"
            ).fetchone()
            if (row[0] if row else 0) != staged.get(table, 0):
                con.execute("ROLLBACK")
                shutil.rmtree(staging_dir(home, pass_id), ignore_errors=True)
                return None
        pruned = con.execute("SELECT workflow_id, started_at FROM prune_workflows").fetchall()
        runs = tuple(r for (r,) in con.execute("SELECT run_id FROM prune_runs").fetchall())
        # children first: the workflow and run keys come from the temp tables, not the views
        for table in ("events", "block_executions", "workflows", "run_events", "runs"):
            key = SCOPES[table][0]
            column = "workflow_id" if temp[key] == "prune_workflows" else "run_id"
            con.execute(f"DELETE FROM {table} WHERE {key} IN (SELECT {column} FROM {temp[key]})")
        con.execute(
            "INSERT INTO retention_passes VALUES (?, ?, now(), ?)",
            [pass_id, cutoff, json.dumps(dict(staged))],
        )
        con.execute("DROP TABLE prune_workflows")
        con.execute("DROP TABLE prune_runs")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    with gate or contextlib.nullcontext():
        try:
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        try:
            publish(home, pass_id)
            refresh_archive_views(con, home)
        except (OSError, duckdb.Error) as exc:
            log.error("retention: the archived rows of pass %s stay staged in %s (%s); the "
                      "next pass or start moves them into the archive", pass_id,
                      staging_dir(home, pass_id), exc)  # fmt: skip
    return [(str(w), started) for w, started in pruned], runs


def publish_recorded(con: duckdb.DuckDBPyConnection, home: Path) -> None:
    """Move the staged files of every pass recorded (its delete committed) into the archive."""
    root = archive_dir(home) / ".staging"
    if not root.is_dir():
        return
    recorded = {p for (p,) in con.execute("SELECT pass_id FROM retention_passes").fetchall()}
    published = False
    for name in sorted(os.listdir(root)):
        if name in recorded:
            publish(home, name)
            published = True
    if published:
        refresh_archive_views(con, home)


def publish(home: Path, pass_id: str) -> None:
    """Move a recorded pass's staged files into the archive (idempotent: a file already moved is
    not there any more)."""
    staged = staging_dir(home, pass_id)
    if not staged.is_dir():
        return
    for root, _, files in os.walk(staged):
        relative = Path(root).relative_to(staged)
        for name in files:
            target = archive_dir(home) / relative / name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(Path(root) / name, target)
    shutil.rmtree(staged, ignore_errors=True)


def discard(home: Path, pass_id: str) -> None:
    """Throw a pass's staging away (nothing to archive, or its delete did not happen)."""
    shutil.rmtree(staging_dir(home, pass_id), ignore_errors=True)


def settle_staged(con: duckdb.DuckDBPyConnection, home: Path) -> None:
    """At start, before the archive's views are made: publish the staged passes a stopped
    daemon had recorded, drop the others."""
    root = archive_dir(home) / ".staging"
    if not root.is_dir():
        return
    recorded = {p for (p,) in con.execute("SELECT pass_id FROM retention_passes").fetchall()}
    with os.scandir(root) as entries:
        names = [entry.name for entry in entries]
    for name in names:
        if name not in recorded:
            discard(home, name)
            continue
        try:
            publish(home, name)
        except OSError as exc:  # the rows' only copy: kept staged, for the next pass
            log.error("retention: the archived rows of pass %s stay staged in %s (%s)", name,
                      staging_dir(home, name), exc)  # fmt: skip


def remove_trace_files(home: Path, pruned: list[tuple[str, datetime]]) -> None:
    """The trace files of pruned workflows (best effort; Trace answers not found for them)."""
    days = set()
    for workflow_id, started_at in pruned:
        day = home / "traces" / started_at.date().isoformat()
        days.add(day)
        with contextlib.suppress(OSError):
            os.unlink(day / f"{workflow_id}.json")
    for day in days:
        with contextlib.suppress(OSError):
            day.rmdir()  # only when empty


_PLAIN_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


def cleanup_dir(home: Path) -> Path:
    """Where a pass notes the files of what it pruned until they are dealt with."""
    return archive_dir(home) / ".cleanup"


def note_cleanup(
    home: Path, pass_id: str, workflows: Sequence[tuple[str, datetime]], runs: Sequence[str]
) -> Path:
    """Note a committed pass's pruned workflows and runs, whose trace files and artifact
    folders :func:`clean_up` deals with: a daemon killed meanwhile (or a folder that could not
    move) left them in place for good, Trace answering for pruned workflows."""
    folder = cleanup_dir(home)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / f"{pass_id}.json"
    listed = {"workflows": [[w, started.isoformat()] for w, started in workflows],
              "runs": list(runs)}  # fmt: skip
    partial = path.with_suffix(".partial")
    try:  # whole or not at all: a note cut short was unreadable at every pass after
        partial.write_text(json.dumps(listed))
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise
    return path


def clean_up(home: Path, path: Path) -> None:
    """Remove the noted workflows' trace files, move their and the runs' artifact folders to
    the archive; forget the note once every folder has moved (else the next pass tries again)."""
    noted = json.loads(path.read_text())
    workflows = [(w, datetime.fromisoformat(started)) for w, started in noted["workflows"]]
    remove_trace_files(home, workflows)
    if archive_artifacts(home, [w for w, _ in workflows], noted["runs"]):
        path.unlink()


def clean_up_left(home: Path) -> None:
    """:func:`clean_up` each note a pass left (a daemon stopped, a folder that could not move)."""
    folder = cleanup_dir(home)
    if not folder.is_dir():
        return
    for path in sorted(folder.glob("*.json")):
        try:
            clean_up(home, path)
        except OSError as exc:  # tried again at the next pass
            log.error("retention: the files of pass %s stay as they are (%s)", path.stem, exc)
        except (ValueError, KeyError, TypeError) as exc:  # not ours: set aside, not read again
            log.error("retention: %s is no note of a pass (%s); set aside as .unreadable",
                      path, exc)  # fmt: skip
            with contextlib.suppress(OSError):
                os.replace(path, path.with_suffix(".unreadable"))


def archive_artifacts(home: Path, workflow_ids: Sequence[str], run_ids: Sequence[str]) -> bool:
    """Move the artifact folders of pruned workflows and runs to ``archive/artifacts/`` (left
    in ``artifacts/`` they grew it without bound however short ``retain_days`` was); whether
    every one moved (a folder already gone counts). Kept, not deleted — a command's files are
    the only copy — beside the rows' Parquet, where an operator prunes the archive as a whole."""
    moved_all = True
    for source, ids in ((home / "artifacts", workflow_ids), (home / "artifacts" / "runs", run_ids)):
        target = archive_dir(home) / source.relative_to(home)
        for name in ids:
            if not _PLAIN_ID.fullmatch(name):  # (ids are ours; one from an edited database: left)
                continue
            folder = source / name
            if not folder.is_dir() or folder.is_symlink():
                continue
            try:
                target.mkdir(mode=0o700, parents=True, exist_ok=True)
                place = target / name
                if place.exists():  # (something else there already: beside it, not over it)
                    place = target / f"{name}.{uuid.uuid4().hex[:8]}"
                    log.warning("retention: %s is taken; the artifacts of %s go to %s", target /
                                name, name, place)  # fmt: skip
                os.rename(folder, place)
            except OSError as exc:
                moved_all = False
                log.error("retention: artifacts of %s stay in %s (%s); the next pass tries "
                          "again", name, folder, exc)  # fmt: skip
    return moved_all


_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def export_parquet(
    cursor: duckdb.DuckDBPyConnection, directory: str, since: str | None
) -> dict[str, int]:
    """``foundry export parquet``: every exported table (rows dated from ``since``) to
    ``directory``, from the cursor's snapshot. Rows written per table."""
    target = Path(directory)
    if not target.is_absolute():
        raise InvalidArgument(f"directory: must be an absolute path, got {directory[:100]!r}")
    if since is not None:
        try:  # date.fromisoformat alone also takes 20260105 and 2026-W01-1, which DuckDB refuses
            if not _ISO_DATE.fullmatch(since):
                raise ValueError(since)
            since = date.fromisoformat(since).isoformat()
        except ValueError:
            raise InvalidArgument(f"since: expected YYYY-MM-DD, got {since[:100]!r}") from None
    tables = list(EXPORTED)
    try:
        return export_tables(cursor, target, tables, since)
    except ExportError as exc:
        raise FailedPrecondition(str(exc)) from None
    except (OSError, duckdb.IOException) as exc:  # a full disk, say: DuckDB's is no OSError
        said = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise FailedPrecondition(
            f"cannot write {target}: {said.splitlines()[0][:300]} (the tables written before "
            "it are left there)"
        ) from None
