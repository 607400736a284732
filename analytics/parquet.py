"""Parquet copies of the database: ``foundry export parquet`` and the retention archive.

Rows are read on a cursor of the database (the store's read cursor while the daemon runs, a
read-only connection when it is stopped) in batches and appended to a table of a *separate*
in-memory DuckDB instance, which writes the files (``COPY ... (FORMAT parquet, PARTITION_BY
(date))``): the daemon's own instance never touches a path outside its sandbox. Batches of
``CHUNK_ROWS`` rows are written as they fill, so memory stays bounded whatever the table size.

Layout (hive partitioning, dates in UTC): ``DIR/<table>/date=YYYY-MM-DD/<prefix>_<uuid>.parquet``;
``read_parquet('DIR/events/*/*.parquet', hive_partitioning = true)`` reads a table back (with a
``date`` column).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

log = logging.getLogger("foundry.store")

# Every exported table and the timestamp its rows are dated (partitioned, ``--since``) by.
DATED: dict[str, str] = {
    "events": "occurred_at",
    "block_executions": "started_at",
    "workflows": "started_at",
    "runs": "created_at",
    "run_events": "occurred_at",
    "eval_scenarios": "created_at",
    "eval_results": "executed_at",
    "gate_decisions": "decided_at",
    "gate_followups": "recorded_at",
}

# Tables retention moves to ``$FOUNDRY_HOME/archive`` (a view ``archived_<table>`` reads each).
ARCHIVED: tuple[str, ...] = ("events", "block_executions", "workflows", "runs", "run_events")
# An archived table's rows belong to a workflow or a run: while that is live in the reader's
# snapshot, the archive's copies are not shown (see ``archive_view_ddl``).
OWNER: dict[str, tuple[str, str]] = {
    "events": ("workflows", "workflow_id"),
    "block_executions": ("workflows", "workflow_id"),
    "workflows": ("workflows", "workflow_id"),
    "runs": ("runs", "run_id"),
    "run_events": ("runs", "run_id"),
}

FETCH_ROWS = 20_000  # rows per fetchmany (Python objects in flight at once)
CHUNK_ROWS = 500_000  # rows the in-memory instance holds before it writes them out


@dataclass(frozen=True)
class Selection:
    """The rows of ``table`` to copy: ``SELECT * FROM table`` + ``where`` (with ``params``);
    ``archived``: and of ``archived_<table>``, the rows retention moved out (an export is the
    whole history, where it left out every archived row without a word)."""

    table: str
    where: str = ""
    params: tuple[Any, ...] = ()
    archived: bool = False

    def sql(self) -> str:
        live = f"SELECT * FROM {self.table} {self.where}".strip()
        if not self.archived:
            return live
        return f"{live} UNION ALL SELECT * FROM archived_{self.table} {self.where}".strip()

    def bound(self) -> list[Any]:
        """The parameters of :meth:`sql`."""
        return list(self.params) * (2 if self.archived else 1)


class ExportError(Exception):
    """An export that cannot be written as asked (its message names the path)."""


def archive_dir(home: Path) -> Path:
    return home / "archive"


def inside(target: Path, folder: Path) -> bool:
    """Whether ``target`` is ``folder`` or under it, both resolved (symlinks followed): an export
    into the daemon's home lands among its own files — its archive, where the next start reads
    the rows as archived ones (counted twice), or its attestation spool."""
    try:
        return target.resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError):  # a symlink loop: not the home
        return False


def lands_inside(target: Path, folder: Path) -> bool:
    """Whether an export to ``target`` writes anywhere :func:`inside` ``folder``: into
    ``target`` itself, or a table's folder there that is a link into it (``out/events ->
    HOME/spool/attestations`` put Parquet files in the daemon's attestation spool)."""
    return inside(target, folder) or any(inside(target / table, folder) for table in DATED)


def check_target(target: Path, tables: Sequence[str]) -> None:
    """Refuse to mix an export into an earlier one: each table's folder must be absent or
    empty (appending would duplicate rows). And a path with a backslash: DuckDB's COPY reads it
    as a separator where Python does not, so ``x\\..\\home\\archive`` passed the check
    against the daemon's home and wrote into its archive (its rows then counted twice)."""
    if "\\" in str(target):
        raise ExportError(f"{target}: a path with a backslash is refused (DuckDB reads it as a "
                          "separator); give the folder without one")  # fmt: skip
    for table in tables:
        folder = target / table
        if folder.exists() and any(folder.iterdir()):
            raise ExportError(f"{folder} already exists and is not empty; export to a new folder")


EXPORT_LOCK = ".foundry-export.lock"


@contextmanager
def claimed(target: Path) -> Iterator[None]:
    """``target`` written by this export alone, until it ends: two exports into one new folder
    each found it empty and both wrote (every row two or three times: a hunt). An ``flock`` of
    a file in it, which the kernel releases should the process die; the file goes at the end."""
    target.mkdir(parents=True, exist_ok=True)
    lock = target / EXPORT_LOCK
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = os.fstat(fd)
            now = os.lstat(lock)  # still the file at that name (not one an export just removed)
            if (held.st_dev, held.st_ino) != (now.st_dev, now.st_ino):
                raise BlockingIOError
        except (BlockingIOError, FileNotFoundError):
            raise ExportError(f"{target}: another export is writing there; export to a new "
                              "folder, or once it has ended") from None  # fmt: skip
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock)
    finally:
        os.close(fd)


def export_tables(
    source: duckdb.DuckDBPyConnection, target: Path, tables: Sequence[str], since: str | None
) -> dict[str, int]:
    """``foundry export parquet``'s files, the daemon's or offline: the target checked (before
    the claim makes its folder), claimed, checked again (no other export writes there now),
    then written from ``source``'s snapshot. Rows written per table."""
    check_target(target, tables)
    views = {name for (name,) in source.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' AND "
        "table_name LIKE 'archived_%'").fetchall()}  # fmt: skip
    archived = [t for t in tables if f"archived_{t}" in views]  # (none in an old database)
    with claimed(target):
        check_target(target, tables)
        selections = since_selections(tables, since, archived)
        return write_parquet(source, target, selections, prefix="export")


def write_parquet(
    source: duckdb.DuckDBPyConnection,
    target: Path,
    selections: Sequence[Selection],
    *,
    prefix: str = "part",
) -> dict[str, int]:
    """Copy each selection's rows from ``source`` to ``target/<table>/date=…/`` as Parquet and
    return the rows written per table. Files are added next to any already there (names are
    unique). Runs on the caller's thread; ``source`` may be inside a transaction (a snapshot)."""
    memory = duckdb.connect()  # a separate instance: its own settings, no database file
    try:
        memory.execute("SET TimeZone = 'UTC'")
        memory.execute("SET enable_progress_bar = false")
        counts: dict[str, int] = {}
        for selection in selections:
            counts[selection.table] = _copy_table(source, memory, target, selection, prefix)
        return counts
    finally:
        memory.close()


def _copy_table(
    source: duckdb.DuckDBPyConnection,
    memory: duckdb.DuckDBPyConnection,
    target: Path,
    selection: Selection,
    prefix: str,
) -> int:
    table = selection.table
    columns = source.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_name = ? AND table_schema = 'main' ORDER BY ordinal_position",
        [table],
    ).fetchall()
    if not columns:
        raise ExportError(f"no table {table!r} in the database")
    memory.execute(f"DROP TABLE IF EXISTS {table}")
    memory.execute(f"CREATE TABLE {table} ({', '.join(f'{n} {t}' for n, t in columns)})")
    folder = target / table
    cursor = source.execute(selection.sql(), selection.bound())
    total = held = 0
    appender = memory.appender(table)
    while rows := cursor.fetchmany(FETCH_ROWS):
        appender.append_rows(rows)
        total += len(rows)
        held += len(rows)
        if held >= CHUNK_ROWS:
            appender.flush()
            _write_chunk(memory, table, folder, prefix)
            held = 0
    appender.flush()
    if held:
        _write_chunk(memory, table, folder, prefix)
    memory.execute(f"DROP TABLE {table}")
    return total


def _write_chunk(memory: duckdb.DuckDBPyConnection, table: str, folder: Path, prefix: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    dated = DATED.get(table)
    date = f"strftime({dated}, '%Y-%m-%d')" if dated else "'unknown'"
    path = str(folder).replace("'", "''")
    memory.execute(
        f"COPY (SELECT *, {date} AS date FROM {table}) TO '{path}' "
        f"(FORMAT parquet, PARTITION_BY (date), APPEND, FILENAME_PATTERN '{prefix}_{{uuid}}')"
    )
    memory.execute(f"DELETE FROM {table}")


def parquet_glob(folder: Path) -> str:
    """The glob of a table's archive files, the folder's own glob characters escaped (a home
    named ``h[1]`` matched no file: its views failed after a retention pass, and every start)."""
    return f"{glob_escaped(str(folder))}/*/*.parquet"


def glob_escaped(path: str) -> str:
    """``path`` as a DuckDB glob matching itself alone (``[`` ``*`` ``?`` each in a class)."""
    return "".join(f"[{c}]" if c in "[*?" else c for c in path)


def has_files(folder: Path) -> bool:
    if not folder.is_dir():
        return False
    with os.scandir(folder) as days:
        for day in days:
            if not day.is_dir():
                continue
            with os.scandir(day.path) as files:
                if any(f.name.endswith(".parquet") for f in files):
                    return True
    return False


def archive_view_ddl(con: duckdb.DuckDBPyConnection, home: Path) -> dict[str, str]:
    """``archived_<table>`` for each archived table: the archive's rows with the live table's
    columns, in its order (the hive ``date`` left out; a column no file has, as files written
    before it was added, NULL), so ``SELECT * FROM events UNION ALL SELECT * FROM
    archived_events`` is the whole history. With no archive files yet the view is empty (a
    ``read_parquet`` of nothing cannot be bound); the store recreates the views at start and after
    every retention pass. Rows whose workflow or run is still live in the reader's snapshot are
    left out: a query that began before a pass's delete committed, and read the archive once
    its files had moved in, counted those rows twice."""
    views: dict[str, str] = {}
    for table in ARCHIVED:
        folder = archive_dir(home) / table
        if has_files(folder):
            glob = parquet_glob(folder).replace("'", "''")
            source = f"read_parquet('{glob}', hive_partitioning = true, union_by_name = true)"
            try:
                described = con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()
            except duckdb.Error as exc:  # a file that is no Parquet: the daemon did not start
                views[table] = _unreadable_view(con, table, folder, exc)
                continue
            present = {name for (name, *_) in described}
            columns = ", ".join(
                f'"{name}"' if name in present else f'NULL::{kind} AS "{name}"'
                for name, kind in _live_columns(con, table)
            )
            owner, key = OWNER[table]
            live = f"SELECT 1 FROM main.{owner} AS live WHERE live.{key} = archived.{key}"
            body = f"SELECT {columns} FROM {source} AS archived WHERE NOT EXISTS ({live})"
        else:
            body = f"SELECT * FROM {table} WHERE false"
        views[table] = f"CREATE OR REPLACE VIEW archived_{table} AS {body}"
    return views


def _unreadable_view(
    con: duckdb.DuckDBPyConnection, table: str, folder: Path, exc: duckdb.Error
) -> str:
    """``archived_<table>`` for an archive DuckDB cannot read: every query of it fails, saying
    why (an ERROR line says so at start too) — not an empty view, which would leave history out
    without a word, nor a daemon that refuses to start over its analytics."""
    why = str(exc).splitlines()[0][:300]
    message = f"the archive in {folder} cannot be read ({why}); move the damaged file aside"
    log.error("%s", message)
    columns = ", ".join(f'NULL::{kind} AS "{name}"' for name, kind in _live_columns(con, table))
    quoted = message.replace("'", "''")
    body = f"SELECT {columns} FROM (SELECT 1) WHERE error('{quoted}') IS NULL"
    return f"CREATE OR REPLACE VIEW archived_{table} AS {body}"


def _live_columns(con: duckdb.DuckDBPyConnection, table: str) -> list[tuple[str, str]]:
    return [
        (name, kind)
        for name, kind in con.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'main' AND table_name = ? ORDER BY ordinal_position",
            [table],
        ).fetchall()
    ]


def refresh_archive_views(con: duckdb.DuckDBPyConnection, home: Path) -> None:
    for statement in archive_view_ddl(con, home).values():
        con.execute(statement)


def shadow_archive_views(con: duckdb.DuckDBPyConnection, home: Path) -> None:
    """On a connection that cannot rewrite the database (the CLI's, read-only): ``archived_*``
    as temporary views over ``home``'s archive, in front of the stored ones — which name the
    archive where the home was when the daemon made them (a home moved or restored elsewhere:
    "No files found", or another home's archive read)."""
    present = {
        name
        for (name,) in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' AND "
            "table_type = 'BASE TABLE'"
        ).fetchall()
    }  # fmt: skip (a file without them: none)
    try:
        made = archive_view_ddl(con, home)
    except (duckdb.Error, OSError) as exc:  # (an archive folder it cannot list)
        log.error("the archive in %s cannot be read (%s)", home, str(exc).splitlines()[0][:300])
        return
    for table, statement in made.items():
        if table not in present:
            continue
        temp = statement.replace("CREATE OR REPLACE VIEW", "CREATE OR REPLACE TEMP VIEW", 1)
        try:
            con.execute(temp)
        except duckdb.Error:  # a database of an older schema, never upgraded: its own view
            continue


def since_selections(
    tables: Sequence[str], since: str | None, archived: Sequence[str] = ()
) -> list[Selection]:
    """Every row of ``tables`` (and of ``archived``'s ``archived_*`` views), or those dated on
    or after ``since`` (YYYY-MM-DD, UTC)."""
    if since is None:
        return [Selection(t, archived=t in archived) for t in tables]
    return [
        Selection(t, f"WHERE {DATED[t]} >= CAST(? AS DATE)", (since,), archived=t in archived)
        for t in tables
    ]


def counts_text(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{table} {n}" for table, n in counts.items())
