"""Helpers of the journal crash tests (``test_journal_crash.py``): a daemon in a process group of
its own (so ``kill -9`` takes the whole group), the store's config, a look at a dead daemon's
journal and DuckDB mark, and the Analytics RPC."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
from foundry.kernel.actors.store.journal import (
    RECORD_HEADER,
    SEGMENT_HEADER,
    Recovered,
    pending_records,
)
from foundry.kernel.edge.grpc.client import open_channel
from foundry.proto import analytics_api

from tests.daemon import Daemon, _first_line
from tests.helpers import DEADLINE

MAX_ROWS = 200_000  # every event id of the crash test in one answer


def store_config(
    path: Path, *, delay: float, segment_bytes: int = 64 << 20, extra: str = ""
) -> Path:
    path.write_text(
        f"[store]\nmaterialize_delay = {delay}\njournal_segment_bytes = {segment_bytes}\n"
        f"[analytics]\nmax_rows = {MAX_ROWS}\n{extra}"
    )
    return path


def serve_command(config: Path) -> list[str]:
    # No HTTP listener: these tests do not use it, and it costs each start ~0.4 s of imports.
    return [sys.executable, "-m", "foundry.kernel.cli", "serve", "--config", str(config),
            "--listen", "127.0.0.1:0", "--http-listen", "off"]  # fmt: skip


class GroupDaemon(Daemon):
    """A :class:`Daemon` that leads a process group of its own: :meth:`kill` is ``kill -9`` of
    the group (the daemon and anything it started), never of the test runner's group."""

    def start(self, timeout: float = 30.0) -> GroupDaemon:
        env = {**os.environ, "FOUNDRY_HOME": str(self.home), **self.extra_env}
        env.pop("FOUNDRY_ADDR", None)
        self.stderr_file = self.stderr_path.open("a")
        self.process = subprocess.Popen(
            serve_command(self.config), stdout=subprocess.PIPE, stderr=self.stderr_file,
            text=True, env=env, cwd=self.home.parent, start_new_session=True,
        )  # fmt: skip
        assert self.process.stdout is not None
        line = _first_line(self.process.stdout, timeout)
        if not line:
            self.kill()
            # the log's end: the home (and its log) may have served many daemons before
            raise RuntimeError(f"daemon did not start within {timeout}s: {self.stderr()[-4000:]}")
        self.address, _, self.http_address = line.partition(" ")
        return self

    def kill_group(self) -> None:
        """SIGKILL the group; the caller reaps it (:meth:`kill`)."""
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):  # already gone
            os.killpg(self.process.pid, signal.SIGKILL)

    def kill(self) -> None:
        self.kill_group()
        assert self.process is not None
        self.process.wait(10)
        self._closed()

    def close(self) -> None:
        if self.process is not None:
            self.kill()


def refused_start(home: Path, config: Path) -> subprocess.CompletedProcess[str]:
    """``foundry serve`` that is expected to refuse to start: its exit code and output."""
    env = {**os.environ, "FOUNDRY_HOME": str(home)}
    env.pop("FOUNDRY_ADDR", None)
    return subprocess.run(
        serve_command(config), capture_output=True, text=True, env=env, timeout=60,
        cwd=home.parent, start_new_session=True, check=False,
    )  # fmt: skip


# --- a dead daemon's files ----------------------------------------------------------------------


def applied_mark(home: Path) -> int:
    """DuckDB's high-water mark of the journal (the daemon must not be running)."""
    with duckdb.connect(str(home / "foundry.duckdb"), read_only=True) as con:
        row = con.execute("SELECT max(seq) FROM journal_applied").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def database_rows(home: Path) -> dict[str, int]:
    """Rows per table of a dead daemon's database, and its journal mark."""
    with duckdb.connect(str(home / "foundry.duckdb"), read_only=True) as con:
        tables = [
            row[0] for row in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()
        ]
        counts = {t: con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
    return {**counts, "journal mark": applied_mark(home)}


def lagging_records(home: Path) -> list[Recovered]:
    """The journal records a dead daemon's DuckDB lacks."""
    return pending_records(home / "journal", applied_mark(home))


def segments(home: Path) -> list[Path]:
    return sorted((home / "journal").glob("*.journal"))


def journaled(home: Path, table: str, *needles: str) -> bool:
    """Whether a row of ``table`` in the journal holds every one of ``needles`` (a live
    daemon's journal may be read: segments deleted meanwhile are skipped)."""
    for record in pending_records(home / "journal", 0):
        for name, rows in record.tables:
            if name == table and any(all(n in row for n in needles) for row in rows):
                return True
    return False


def digests(home: Path, pattern: str) -> dict[str, str]:
    return {
        str(path.relative_to(home)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(home.glob(pattern))
        if path.is_file()
    }


# --- the Analytics RPC (grpclib) ------------------------------------------------------------------


def sql(daemon: Daemon, query: str) -> list[list[Any]]:
    """Rows of the daemon's own SQL (the Analytics service), each a list of column values."""

    async def go() -> analytics_api.QueryResponse:
        channel = open_channel(daemon.address)
        try:
            request = analytics_api.QueryRequest(sql=query, max_rows=MAX_ROWS)
            return await analytics_api.AnalyticsStub(channel).query(request, timeout=DEADLINE)
        finally:
            channel.close()

    reply = asyncio.run(go())
    assert not reply.truncated, query
    return [json.loads(row) for row in reply.rows_json]


def records_end(path: Path) -> int:
    """Where a segment's records end: the zeros written ahead of the appends begin there."""
    data = path.read_bytes()
    offset = SEGMENT_HEADER.size
    while offset < len(data) and any(data[offset : offset + RECORD_HEADER.size]):
        offset += RECORD_HEADER.size + RECORD_HEADER.unpack_from(data, offset)[0]
    return offset
