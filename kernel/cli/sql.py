"""``foundry sql``: read-only SQL over ``$FOUNDRY_HOME/foundry.duckdb``.

While the daemon runs, the query goes through its Analytics RPC (DuckDB lets one process hold the
file). When nothing listens at ``--addr`` (connection refused), the CLI opens the file read-only
itself, external access off, with the same statement check and limits, and says so on stderr.
``--list`` shows the saved questions, ``--run NAME`` runs one (``--param k=v`` over its defaults).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from foundry.kernel.cli.common import daemon_unreachable, journal_behind, whole_number
from foundry.kernel.cli.logs import printable
from foundry.kernel.config import Config, default_home, expanded
from foundry.kernel.edge.grpc.client import connected
from foundry.kernel.errors import ConfigError
from foundry.proto import analytics_api as api
from grpclib import GRPCError

if TYPE_CHECKING:
    from foundry.analytics import sandbox

MAX_CELL = 60  # characters of a value in the table view
INTERRUPT_AGAIN = 0.05  # seconds between a late query's interrupts


@dataclass(frozen=True)
class Answer:
    columns: list[tuple[str, str]]
    rows: list[list[Any]]
    truncated: bool
    elapsed_ms: float


def add_sql_command(commands: Any) -> None:
    from foundry.kernel.cli.main import _client_options

    sql = commands.add_parser("sql", help="read-only SQL over the daemon's database")
    sql.add_argument(
        "statement", nargs="?", default="", help="one SELECT/WITH/VALUES/... statement"
    )
    sql.add_argument("--csv", action="store_true", help="CSV output")
    # (QueryRequest.max_rows is a uint32: 4294967297 went as 1, silently)
    sql.add_argument("--max-rows", type=whole_number, metavar="N", help="most rows to return")
    sql.add_argument("--param", action="append", default=[], metavar="K=V",
                     help="a $K parameter's value (repeatable)")  # fmt: skip
    sql.add_argument("--list", action="store_true", help="list the saved questions")
    sql.add_argument("--run", metavar="NAME", help="run a saved question")
    sql.add_argument("--config", help="foundry.toml for the offline path (home, [analytics])")
    sql.add_argument("--home", help="FOUNDRY_HOME for the offline path")
    _client_options(sql)
    sql.set_defaults(handler=cmd_sql)


def cmd_sql(args: argparse.Namespace) -> int:
    from foundry.kernel.cli.main import CommandFailed

    params = _params(args.param)
    if args.csv and args.json:
        raise ConfigError("sql: --csv or --json, not both")
    if args.list and (args.statement or args.run):
        raise ConfigError("sql: --list takes no statement and no --run")
    if args.list:
        return _list(args)
    if bool(args.run) == bool(args.statement):
        raise ConfigError("sql: give a statement or --run NAME (or --list)")
    try:
        answer = asyncio.run(_remote(args, params))
    except ConnectionRefusedError:
        answer = _offline(args, params)
    except GRPCError as exc:
        raise CommandFailed(f"{exc.status.name}: {exc.message}") from None
    except OSError as exc:
        raise CommandFailed(daemon_unreachable(args.addr, exc)) from None
    _print(answer, args)
    if answer.truncated and not args.json:
        print(f"(truncated: more than {len(answer.rows)} rows)", file=sys.stderr)
    return 0


def _params(pairs: list[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--param: expected K=V, got {pair!r}")
        params[key] = value
    return params


async def _remote(args: argparse.Namespace, params: dict[str, str]) -> Answer:
    async with connected(args.addr) as channel:
        reply = await api.AnalyticsStub(channel).query(
            api.QueryRequest(
                sql=args.statement, question=args.run or "", params=params,
                max_rows=args.max_rows or 0,
            )
        )  # fmt: skip
    return Answer(
        [(c.name, c.type) for c in reply.columns],
        [json.loads(row) for row in reply.rows_json],
        reply.truncated,
        reply.elapsed_ms,
    )


def _offline(args: argparse.Namespace, params: dict[str, str]) -> Answer:
    """The daemon is stopped: open the file read-only, sandboxed, and run the query here."""
    # The sandbox (and DuckDB) here, not at the top: only the offline path needs them.
    from foundry.analytics import sandbox
    from foundry.analytics import saved_questions as questions
    from foundry.kernel.actors.supervisor import home_holder
    from foundry.kernel.cli.main import CommandFailed

    config = Config.load(args.config) if args.config is not None else Config()
    home = expanded(args.home, "--home") if args.home is not None else (
        config.home if args.config is not None else default_home()
    )  # fmt: skip
    path = home / "foundry.duckdb"
    sql = args.statement
    if args.run:
        try:
            question = questions.load(args.run)
            params = question.bind(params)
        except (KeyError, sandbox.QueryRefused) as exc:
            raise CommandFailed(f"INVALID_ARGUMENT: {exc.args[0]}") from None
        sql = question.sql
    if not path.is_file():
        raise CommandFailed(f"the daemon at {args.addr} is not running and there is no {path}")
    if (holder := home_holder(home)) is not None:  # its journal is its own, DuckDB's lock too
        raise CommandFailed(
            f"no daemon at {args.addr}, but {home} is in use by pid {holder}: ask that daemon "
            "(--addr or FOUNDRY_ADDR: its gRPC address)"
        )
    print(f"foundry: no daemon at {args.addr}; querying {path} directly (read-only)",
          file=sys.stderr)  # fmt: skip
    if unapplied := journal_behind(home):
        print(f"foundry: {unapplied}", file=sys.stderr)
    limits = config.analytics
    max_rows = min(args.max_rows or limits.max_rows, limits.max_rows)
    try:
        result = run_file(path, sql, params, max_rows, limits.query_timeout, limits.max_reply_bytes,
                          config.store.memory_limit)  # fmt: skip
    except sandbox.QueryTooLarge as exc:
        raise CommandFailed(f"RESOURCE_EXHAUSTED: {exc}") from None
    except (sandbox.QueryRefused, sandbox.QueryFailed) as exc:
        raise CommandFailed(f"INVALID_ARGUMENT: {exc}") from None
    except TimeoutError as exc:
        raise CommandFailed(f"DEADLINE_EXCEEDED: {exc}") from None
    except OSError as exc:
        raise CommandFailed(f"cannot open {path}: {exc}") from None
    return Answer(list(result.columns), [json.loads(r) for r in result.rows], result.truncated,
                  result.elapsed_ms)  # fmt: skip


def run_file(
    path: Path,
    sql: str,
    params: Mapping[str, str],
    max_rows: int,
    timeout: float,
    max_bytes: int,
    memory_limit: str | None = None,
) -> sandbox.QueryResult:
    """One sandboxed query on the database file opened read-only, external access off, within
    ``memory_limit`` (``[store] memory_limit``, as the daemon's: DuckDB's own default is 80% of
    the machine's memory); interrupted after ``timeout`` seconds (TimeoutError)."""
    import duckdb
    from foundry.analytics import sandbox
    from foundry.analytics.parquet import shadow_archive_views

    try:
        limits: dict[str, str | bool | int | float | list[str]] = (
            {"memory_limit": memory_limit} if memory_limit else {}
        )
        con = duckdb.connect(str(path), read_only=True, config=limits)
        con.execute("SET TimeZone = 'UTC'")  # not in the config: ICU loads after it is read
        shadow_archive_views(con, path.parent)  # this home's archive (the home may have moved)
        # as the daemon's instance: its archive readable (the archived_* views read it), no other
        # file, no setting changed after (external access off at connect refused the archive)
        sandbox.lock_instance(con, path.parent)
    except duckdb.Error as exc:
        raise OSError(sandbox.cut(str(exc))) from None
    done, expired = threading.Event(), threading.Event()

    def expire() -> None:
        # again and again: an interrupt between the sandbox's statements is lost (the daemon's
        # store does the same, ``Store._user_query_now``)
        if not done.wait(timeout):
            expired.set()  # (the sandbox's conversion of rows, which no interrupt reaches)
            con.interrupt()
            while not done.wait(INTERRUPT_AGAIN):
                con.interrupt()

    timer = threading.Thread(target=expire, name="foundry-sql-timer", daemon=True)
    timer.start()
    try:
        return sandbox.run_query(con, sql, params, max_rows, max_bytes, stopped=expired.is_set)
    except duckdb.InterruptException:
        raise TimeoutError(f"the query ran out of its time limit ({timeout:g} s)") from None
    finally:
        done.set()
        timer.join()
        con.close()


def _list(args: argparse.Namespace) -> int:
    from foundry.kernel.cli.main import CommandFailed

    async def remote() -> list[api.SavedQuestion]:
        async with connected(args.addr) as channel:
            reply = await api.AnalyticsStub(channel).list_saved_questions(
                api.ListSavedQuestionsRequest()
            )
        return list(reply.questions)

    found: list[Any]
    try:
        found = asyncio.run(remote())
    except GRPCError as exc:  # (a missing token came out as a traceback)
        raise CommandFailed(f"{exc.status.name}: {exc.message}") from None
    except OSError:  # no daemon: the same questions, from this installation
        from foundry.analytics import saved_questions

        found = list(saved_questions.list_questions())
    listed = [
        {"name": q.name, "title": q.title, "description": q.description,
         "params": [{"name": p.name, "default": p.default, "description": p.description}
                    for p in q.params]}
        for q in found
    ]  # fmt: skip
    if args.json:
        print(json.dumps(listed, indent=2))
        return 0
    for q in listed:
        print(f"{q['name']:<22} {q['title']}")
        if q["description"]:
            print(f"{'':<22} {q['description']}")
        for p in q["params"]:
            about = f"  {p['description']}" if p["description"] else ""
            print(f"{'':<22} --param {p['name']}={p['default']}{about}")
    return 0


def _print(answer: Answer, args: argparse.Namespace) -> None:
    names = [name for name, _ in answer.columns]
    if args.json:
        document = {
            "columns": [{"name": n, "type": t} for n, t in answer.columns],
            "rows": answer.rows,
            "truncated": answer.truncated,
            "elapsed_ms": answer.elapsed_ms,
        }
        print(json.dumps(document, indent=2))
    elif args.csv:
        # "\r\n" as the writer's line end, so a value holding a carriage return is quoted (with
        # "\n" alone it was not, and a reader split its row in two); "\n" written in its place
        line = io.StringIO()
        writer = csv.writer(line, lineterminator="\r\n")
        for row in [names, *([_text(v, csv=True) for v in row] for row in answer.rows)]:
            writer.writerow(row)
            sys.stdout.write(line.getvalue()[:-2] + "\n")
            line.seek(0)
            line.truncate()
    else:
        print(table(names, answer.rows))
        print(f"({len(answer.rows)} row{'s' if len(answer.rows) != 1 else ''}, "
              f"{answer.elapsed_ms:.1f} ms)", file=sys.stderr)  # fmt: skip


def table(names: list[str], rows: list[list[Any]]) -> str:
    names = [printable(name) for name in names]
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(n), *(len(r[i]) for r in cells)]) for i, n in enumerate(names)]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(n.ljust(w) for n, w in zip(names, widths, strict=True)), line]
    for row in rows:
        texts = [_cell(v) for v in row]
        out.append(
            "  ".join(
                t.rjust(w) if isinstance(v, int | float) and not isinstance(v, bool) else t.ljust(w)
                for t, v, w in zip(texts, row, widths, strict=True)
            ).rstrip()
        )
    return "\n".join(out)


def _text(value: Any, *, csv: bool = False) -> str:
    if value is None:
        return "" if csv else "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _cell(value: Any) -> str:
    # escaped: a stored "\x1b[31m…" wrote its escape sequence to the analyst's terminal
    text = printable(_text(value))
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"
