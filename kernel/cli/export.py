"""``foundry export parquet DIR [--since DATE]``: the database as date-partitioned Parquet.

While the daemon runs, it writes the export (the Analytics service's ExportParquet → the store's
``ExportParquet``: rows from one snapshot on a read cursor, written by a separate in-memory DuckDB
instance), so DIR is a path on the daemon's machine. When nothing listens at ``--addr``
(connection refused), the CLI opens ``$FOUNDRY_HOME/foundry.duckdb`` read-only itself and writes
the same files the same way (``foundry.analytics.parquet``), and says so on stderr.

Layout: ``DIR/<table>/date=YYYY-MM-DD/export_<uuid>.parquet`` (hive partitioning, UTC dates).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import date
from pathlib import Path
from typing import Any

from foundry.kernel.cli.common import daemon_unreachable, journal_behind
from foundry.kernel.config import Config, default_home, expanded
from foundry.kernel.edge.grpc.client import connected
from foundry.kernel.errors import ConfigError
from grpclib import GRPCError


def add_export_command(commands: Any) -> None:
    from foundry.kernel.cli.main import _client_options

    export = commands.add_parser("export", help="export the database (Parquet)")
    formats = export.add_subparsers(dest="format", required=True, metavar="FORMAT")
    parquet = formats.add_parser("parquet", help="date-partitioned Parquet (hive layout)")
    parquet.add_argument("directory", help="where to write (each table's folder absent or empty)")
    parquet.add_argument("--since", type=_date, metavar="YYYY-MM-DD",
                         help="only rows dated on or after this day (UTC)")  # fmt: skip
    parquet.add_argument("--config", help="foundry.toml for the offline path (its home)")
    parquet.add_argument("--home", help="FOUNDRY_HOME for the offline path")
    _client_options(parquet)
    parquet.set_defaults(handler=cmd_export_parquet)


def _date(text: str) -> str:
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected YYYY-MM-DD, got {text!r}") from None


def cmd_export_parquet(args: argparse.Namespace) -> int:
    # DuckDB and the Parquet writer here, not at the top: every other command would import them.
    import duckdb
    from foundry.analytics.parquet import ExportError, counts_text, lands_inside
    from foundry.kernel.actors.supervisor import home_holder
    from foundry.kernel.cli.main import CommandFailed

    target = expanded(args.directory, "DIRECTORY").absolute()
    try:
        counts = asyncio.run(_remote(args.addr, target, args.since))
    except ConnectionRefusedError:
        home = _home(args)
        if lands_inside(target, home):
            raise CommandFailed(f"{target} is inside the daemon's home ({home}); export "
                                "somewhere else") from None  # fmt: skip
        if (holder := home_holder(home)) is not None:  # its journal and DuckDB's lock are its own
            raise CommandFailed(
                f"no daemon at {args.addr}, but {home} is in use by pid {holder}: ask that "
                "daemon (--addr or FOUNDRY_ADDR: its gRPC address)"
            ) from None
        print(f"foundry: no daemon at {args.addr}; exporting {home / 'foundry.duckdb'} directly "
              "(read-only)", file=sys.stderr)  # fmt: skip
        try:
            counts = export_offline(home, target, args.since)
        except (ExportError, OSError, duckdb.Error) as exc:
            raise CommandFailed(str(exc).splitlines()[0]) from None
    except GRPCError as exc:
        raise CommandFailed(f"{exc.status.name}: {exc.message}") from None
    except OSError as exc:
        raise CommandFailed(daemon_unreachable(args.addr, exc)) from None
    if args.json:
        print(json.dumps({"directory": str(target), "rows": counts}))
    else:
        print(f"wrote {sum(counts.values())} rows to {target}: {counts_text(counts)}")
    return 0


async def _remote(address: str, target: Path, since: str | None) -> dict[str, int]:
    from foundry.proto import analytics_api as api

    async with connected(address) as channel:
        reply = await api.AnalyticsStub(channel).export_parquet(
            api.ExportParquetRequest(directory=str(target), since=since or "")
        )
    return dict(reply.rows)


def _home(args: argparse.Namespace) -> Path:
    if args.home is not None:
        return expanded(args.home, "--home")
    return Config.load(args.config).home if args.config is not None else default_home()


def export_offline(home: Path, target: Path, since: str | None) -> dict[str, int]:
    """The daemon is stopped: read ``home``'s database read-only (not upgraded: an older database
    exports the tables it has) and write the export here."""
    import duckdb
    from foundry.analytics.parquet import DATED, export_tables, shadow_archive_views

    path = home / "foundry.duckdb"
    if not path.is_file():
        raise ConfigError(f"no database at {path}")
    if unapplied := journal_behind(home):
        print(f"foundry: {unapplied}", file=sys.stderr)
    with duckdb.connect(str(path), read_only=True) as con:
        con.execute("SET TimeZone = 'UTC'")
        shadow_archive_views(con, home)  # this home's archive, wherever the home was before
        present = {
            name
            for (name,) in con.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'"
            ).fetchall()
        }
        tables = [t for t in DATED if t in present]
        con.execute("BEGIN TRANSACTION")  # one snapshot
        return export_tables(con, target, tables, since)
