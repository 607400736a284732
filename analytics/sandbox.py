"""The SQL sandbox policy: which user SQL may run, and how it runs (limits, result shape).

Two layers. The DuckDB instance itself is locked down (:func:`lock_instance`:
``allowed_directories`` only the store's own folders, ``enable_external_access = false``,
``lock_configuration = true`` — instance-wide, and irreversible while the database runs). And every
statement is checked before it runs (:func:`check_sql`) with DuckDB's own parser: exactly one
statement, read-only (SELECT/WITH/VALUES/FROM/SHOW/DESCRIBE/SUMMARIZE, or EXPLAIN of one), no table
function that reads files or runs SQL text, no file path as a table. It then runs in a read-only
transaction, so a write that slipped through both would fail anyway.

The daemon's store runs user SQL with :func:`run_query` on a read cursor of its instance; the CLI
runs the same function on the file opened read-only when the daemon is stopped.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import math
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
from foundry.analytics.parquet import glob_escaped

DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_ROWS = 10_000
# As a gRPC client's default receive limit (grpcio's is 4 MiB): a larger reply would fail there.
DEFAULT_MAX_BYTES = 4 * 1024 * 1024
MAX_ERROR = 300

# Statement types that only read. SHOW, DESCRIBE, SUMMARIZE, VALUES, FROM-first and WITH all parse
# as SELECT; EXPLAIN is checked on the statement it explains.
READ_ONLY = {"SELECT", "EXPLAIN"}

# Table functions that read files (or globs, or other databases), run SQL given as text, or write.
# With external access off DuckDB refuses most of these itself, but not under the store's own
# folders (the archive), so they are refused here by name too.
FILE_FUNCTIONS = frozenset({
    "read_csv", "read_csv_auto", "read_parquet", "parquet_scan", "parquet_metadata",
    "parquet_schema", "parquet_file_metadata", "parquet_kv_metadata", "parquet_bloom_probe",
    "read_json", "read_json_auto", "read_json_objects", "read_json_objects_auto", "read_ndjson",
    "read_ndjson_auto", "read_ndjson_objects", "read_text", "read_blob", "glob", "sniff_csv",
    "read_xlsx", "iceberg_scan", "delta_scan", "sqlite_scan", "sqlite_attach", "postgres_scan",
    "mysql_scan", "query", "query_table", "checkpoint", "force_checkpoint",
    # run other SQL or actions given as text, or change the database's own state
    "json_execute_serialized_sql", "json_deserialize_sql", "truncate_duckdb_logs",
})  # fmt: skip
# DuckDB's own table macros that scan a table or file named by their argument (``histogram`` runs
# ``histogram_values``, which runs ``query_table``): refused as table functions only, since
# ``histogram`` is also an aggregate. A test checks no other built-in macro reaches a refused
# function.
READING_TABLE_MACROS = frozenset({"histogram", "histogram_values"})
FILE_PREFIXES = (
    "read_", "parquet_", "iceberg_", "delta_", "sqlite_", "postgres_", "mysql_",
    # destroy_external_resource('checkpoint', …) ran a CHECKPOINT, ('query', …) SQL given as text
    "create_external_resource", "destroy_external_resource", "register_external_resource",
    "deregister_external_resource", "enable_", "disable_",
)  # fmt: skip


class QueryRefused(ValueError):
    """The SQL is not allowed (or does not parse): the caller's error."""


class QueryFailed(ValueError):
    """DuckDB refused the query while binding or running it (a bad column, a bad cast)."""


class QueryTooLarge(QueryFailed):
    """DuckDB ran out of its memory (``[store] memory_limit``) making the result."""


@dataclass(frozen=True, slots=True)
class QueryResult:
    columns: tuple[tuple[str, str], ...]  # (name, DuckDB type)
    rows: tuple[str, ...]  # each a JSON array of the row's values, in column order
    truncated: bool  # more rows than max_rows, or more bytes than max_bytes
    elapsed_ms: float
    # The rows in a caller's wire form, when it asked for one (the store builds it on its worker
    # thread, so a large answer is not encoded on the daemon's loop).
    rows_wire: bytes | None = None


def lock_instance(
    con: duckdb.DuckDBPyConnection, home: Path, *, readable: Sequence[Path] = ()
) -> None:
    """Lock down the store's DuckDB instance: its own folders only (the archive, and the
    ``readable`` ones: the attestation spool, which the store's own statements read), no other
    file access, no extension loading, and no setting may change afterwards. Instance-wide;
    cannot be undone. (An analyst's query reads no file at all: ``check_sql``.)"""
    folders = (home / "archive", *readable)
    paths = {str(path) for folder in folders for path in (folder, folder.resolve())}
    # and as the archive views' globs name them (DuckDB checks the pattern's text)
    allowed = sorted({f"{text}/" for path in paths for text in (path, glob_escaped(path))})
    con.execute("SET allowed_directories = $dirs", {"dirs": allowed})
    # One core stays with the daemon's loop: a heavy query gets DuckDB's threads on the others.
    con.execute(f"SET threads = {max(1, (os.cpu_count() or 2) - 1)}")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


def cut(message: str, limit: int = MAX_ERROR) -> str:
    """DuckDB's message on one line, at most ``limit`` characters, and what it quotes of the
    query (a name in quotes, a literal, its ``LINE 1:`` echo) at most ``QUOTED`` of each: a
    3,000-character column name came back 264 characters long."""
    message = _QUOTED.sub(_shortened, " ".join(message.split()))
    return message if len(message) <= limit else message[: limit - 3] + "..."


QUOTED = 60
# a quoted span (DuckDB quotes names "…" and literals '…'), a word, or the statement it echoes
_QUOTED = re.compile(
    rf'"[^"]{{{QUOTED - 1},}}"|\'[^\']{{{QUOTED - 1},}}\'|\S{{{QUOTED + 1},}}'
    rf"|(?<=LINE \d: ).{{{QUOTED + 1},}}"
)


def _shortened(found: re.Match[str]) -> str:
    text = found.group()
    end = text[-1] if text[0] in "\"'" and text[-1] == text[0] else ""
    return text[: QUOTED - 3 - len(end)] + "..." + end


def check_sql(con: duckdb.DuckDBPyConnection, sql: str) -> set[str]:
    """Refuse (:class:`QueryRefused`) anything but one read-only statement that reads no files;
    returns the names of its ``$name`` parameters."""
    statements = _parse(con, sql)
    if len(statements) != 1:
        raise QueryRefused(f"expected exactly one SQL statement, got {len(statements)}")
    statement = statements[0]
    kind = _kind(statement)
    if kind not in READ_ONLY:
        raise QueryRefused(
            f"{kind} statements are not allowed: only SELECT, WITH, VALUES, SHOW, DESCRIBE, "
            "SUMMARIZE or EXPLAIN (queries are read-only)"
        )
    text = statement.query
    if kind == "EXPLAIN":
        text = _explained(con, text)
    return _check_tree(con, text)


def _parse(con: duckdb.DuckDBPyConnection, sql: str) -> list[Any]:
    try:
        return list(con.extract_statements(sql))
    except duckdb.Error as exc:
        raise QueryRefused(cut(str(exc))) from None


def _kind(statement: Any) -> str:
    """The statement's type; a type DuckDB's Python enum does not know (``UPDATE EXTENSIONS``:
    ``ValueError``) is none that is allowed."""
    try:
        return str(statement.type.name)
    except ValueError:
        return "this kind of"


def _explained(con: duckdb.DuckDBPyConnection, text: str) -> str:
    """The statement an ``EXPLAIN [ANALYZE]`` or ``EXPLAIN (options)`` explains, which must
    itself be a SELECT (EXPLAIN ANALYZE runs it)."""
    tokens = [t for t in duckdb.tokenize(text) if t[1] != duckdb.token_type.comment]
    skip = 1
    if len(tokens) > 1 and text[tokens[1][0] :].upper().startswith(("ANALYZE", "ANALYSE")):
        skip = 2
    elif len(tokens) > 2 and text[tokens[1][0]] == "(" and not _starts_a_query(text, tokens[2]):
        depth = 0
        for skip, (start, _) in enumerate(tokens[1:], 1):  # noqa: B007 - skip is kept
            depth += {"(": 1, ")": -1}.get(text[start], 0)
            if depth == 0:
                break
        skip += 1  # past the closing parenthesis
    inner = text[tokens[skip][0] :] if len(tokens) > skip else ""
    statements = _parse(con, inner)
    if len(statements) != 1 or _kind(statements[0]) != "SELECT":
        kind = _kind(statements[0]) if statements else "an empty"
        raise QueryRefused(f"EXPLAIN of {kind} statement is not allowed: only of a query")
    return str(statements[0].query)


def _starts_a_query(text: str, token: tuple[int, Any]) -> bool:
    """Whether ``token`` opens a query (``EXPLAIN (SELECT 1)``), not an option's name
    (``EXPLAIN (FORMAT JSON) …``)."""
    word = text[token[0] :].split(None, 1)
    return text[token[0]] == "(" or bool(word) and word[0].upper() in _QUERY_WORDS


_QUERY_WORDS = frozenset(("SELECT", "WITH", "VALUES", "FROM", "TABLE", "SUMMARIZE", "DESCRIBE"))


def _check_tree(con: duckdb.DuckDBPyConnection, text: str) -> set[str]:
    row = con.execute("SELECT json_serialize_sql($sql)", {"sql": text}).fetchone()
    try:
        tree = json.loads(row[0]) if row else {"error": True}
    except RecursionError:  # DuckDB nests deeper than Python's parser goes
        raise QueryRefused(
            "the statement is nested too deeply to check: split its expressions or joins"
        ) from None
    if tree.get("error"):
        raise QueryRefused(cut(str(tree.get("error_message", "the statement does not parse"))))
    bound = _bound_columns(tree, _table_widths(con))
    if bound > MAX_BOUND_COLUMNS:
        raise QueryRefused(
            f"the statement binds about {bound:,} columns, more than {MAX_BOUND_COLUMNS:,} "
            "(DuckDB's binding of a query, which its time limit cannot interrupt, takes time "
            "growing with the square of its columns): select fewer columns, or fewer stars"
        )
    params: set[str] = set()
    for node in _nodes(tree):
        name = node.get("function_name")
        if isinstance(name, str) and _reads_files(name.lower()):
            raise QueryRefused(f"function {name}() is not allowed: queries cannot read files")
        if node.get("type") == "TABLE_FUNCTION" and _reads_tables(node.get("function")):
            called = node["function"]["function_name"]
            raise QueryRefused(
                f"table function {called}() is not allowed: it reads the table or file it names"
            )
        table = node.get("table_name")
        if node.get("type") == "BASE_TABLE" and isinstance(table, str) and _looks_like_path(table):
            raise QueryRefused(f"table {table!r} looks like a file: queries cannot read files")
        if node.get("type") == "VALUE_PARAMETER" and isinstance(node.get("identifier"), str):
            params.add(node["identifier"])
    return params


# Columns a statement's binding may make in all, at most: DuckDB binds 12,800 columns in ~0.7 s,
# 25,600 in ~2.7 s, and cannot be interrupted while it does (a 1.3 KB query of self-joined CTEs,
# 204,800 columns, held the analyst threads ~4 minutes and a stop 142 s past its grace).
MAX_BOUND_COLUMNS = 20_000
TABLE_COLUMNS = 64  # a table's or table function's columns as the bound counts them (18 at most)


def _bound_columns(tree: Any, tables: Mapping[str, int]) -> int:
    """An upper bound of the columns binding the statement makes: for every query in it, its
    select list's columns — a star (``*``, ``COLUMNS(*)``, anywhere in the query's expressions)
    counted as all the columns of what the query selects from: a table as its columns
    (``tables``; one not known as :data:`TABLE_COLUMNS`), a CTE as its own query's columns, a
    join and a ``UNION BY NAME`` as both sides' — and a star of a struct (``s.*``) or a struct
    ``unnest`` as the most fields a struct in the statement is built with. QueryRefused for an
    ``unnest`` with ``recursive := true``: the columns it makes, a struct's every nested
    field, cannot be bounded before DuckDB binds it."""
    ctes: dict[str, list[dict[str, Any]]] = {}
    selects = []
    arity = TABLE_COLUMNS
    for node in _nodes(tree):
        if node.get("type") == "SELECT_NODE":
            selects.append(node)
        name = node.get("function_name")
        if name in _STRUCT_MAKERS:
            arity = max(arity, len(node.get("children") or node.get("arguments") or ()))
        elif name == "unnest" and _recursive(node):
            raise QueryRefused(
                "unnest(…, recursive := true) is not allowed: the columns it makes cannot be "
                "bounded before DuckDB binds it (and its binding cannot be interrupted)"
            )
        cte_map = node.get("cte_map")
        for entry in cte_map.get("map") or () if isinstance(cte_map, dict) else ():
            name, value = entry.get("key"), entry.get("value")
            if isinstance(name, str) and isinstance(value, dict):
                query = value.get("query_node")
                if isinstance(query, dict):
                    ctes.setdefault(name.lower(), []).append(query)
    widths = _Widths(ctes, tables, arity)
    try:
        return sum(widths.bound(node) for node in selects)
    except RecursionError:
        raise QueryRefused(
            "the statement is nested too deeply to check: split its expressions or joins"
        ) from None


class _Widths:
    """Columns of queries and what they select from, each worked out once."""

    def __init__(
        self, ctes: Mapping[str, list[dict[str, Any]]], tables: Mapping[str, int], arity: int
    ) -> None:
        self._ctes, self._tables, self._arity = ctes, tables, arity
        self._known: dict[str, int] = {}
        self._source: dict[int, int] = {}

    def bound(self, select: dict[str, Any]) -> int:
        """A SELECT's columns, its stars outside its select list too."""
        others = (v for k, v in select.items() if k not in ("select_list", "from_table", "cte_map"))
        return self.query(select) + sum(self._stars(v, select) for v in others)

    def query(self, node: Any) -> int:
        if not isinstance(node, dict):
            return TABLE_COLUMNS
        if node.get("type") == "SELECT_NODE":
            items = node.get("select_list") or ()
            return sum(max(1, self._stars(item, node)) for item in items)
        children = [c for c in node.get("children") or [node.get("left"), node.get("right")]
                    if isinstance(c, dict)]  # fmt: skip
        widths = [self.query(c) for c in children] or [TABLE_COLUMNS]
        return sum(widths) if node.get("setop_type") == "UNION_BY_NAME" else max(widths)

    def _stars(self, value: Any, select: dict[str, Any]) -> int:
        """The columns the stars in an expression of ``select`` make: a relation's, or, one
        naming no relation of its FROM (``s.*`` of a struct ``s``) and a struct's unnest, a
        struct's fields."""
        relations = stars = 0
        for star in _star_nodes(value):
            if star.get("class") == "STAR":
                named = star.get("relation_name")
                if named and named.lower() not in _relations(select.get("from_table")):
                    stars += self._arity
                else:
                    relations += 1
            else:  # unnest
                stars += self._arity
        return relations * self._from(select) + stars

    def _from(self, select: dict[str, Any]) -> int:
        key = id(select)
        if key not in self._source:
            self._source[key] = self.table(select.get("from_table"))
        return self._source[key]

    def table(self, ref: Any) -> int:
        kind = ref.get("type") if isinstance(ref, dict) else None
        if kind is None or kind == "EMPTY":
            return 0
        if kind == "JOIN":
            return self.table(ref.get("left")) + self.table(ref.get("right"))
        if kind == "SUBQUERY":
            subquery = ref.get("subquery")
            return self.query(subquery.get("node") if isinstance(subquery, dict) else None)
        if kind == "EXPRESSION_LIST":
            rows = ref.get("values") or ()
            return max((len(row) for row in rows if isinstance(row, list)), default=0)
        if kind == "PIVOT":
            return self.table(ref.get("source")) + _pivoted(ref)
        name = ref.get("table_name")
        if kind == "BASE_TABLE" and isinstance(name, str):
            if name.lower() in self._ctes:
                return self._cte(name.lower())
            return self._tables.get(name.lower(), TABLE_COLUMNS)
        return TABLE_COLUMNS

    def _cte(self, name: str) -> int:
        if name not in self._known:
            self._known[name] = TABLE_COLUMNS  # while it is worked out: a recursive CTE's own
            self._known[name] = max(self.query(q) for q in self._ctes[name])
        return self._known[name]


def _star_nodes(value: Any) -> Iterator[dict[str, Any]]:
    """The stars and unnest calls in an expression, not those of the queries nested in it
    (counted as theirs)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if item.get("class") == "SUBQUERY" or item.get("type") == "SELECT_NODE":
                continue
            if item.get("class") == "STAR" or item.get("function_name") == "unnest":
                yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _relations(ref: Any) -> set[str]:
    """The names a FROM clause's relations go by (aliases, table names), lower-cased."""
    names: set[str] = set()
    stack = [ref]
    while stack:
        item = stack.pop()
        if not isinstance(item, dict):
            continue
        for key in ("alias", "table_name"):
            if isinstance(item.get(key), str) and item[key]:
                names.add(item[key].lower())
        if item.get("type") == "JOIN":
            stack += [item.get("left"), item.get("right")]
        elif item.get("type") == "PIVOT":
            stack.append(item.get("source"))
    return names


def _recursive(call: dict[str, Any]) -> bool:
    """Whether an ``unnest`` call says ``recursive :=`` anything but the literal false."""
    for argument in call.get("children") or call.get("arguments") or ():
        named = argument.get("name") if isinstance(argument, dict) else None
        if isinstance(named, str) and named.lower() == "recursive":
            literal = (argument.get("expression") or {}).get("literal") or {}
            return str(literal.get("text", "")).lower() != "false"
    return False


# The functions that build a struct, whose arguments are its fields.
_STRUCT_MAKERS = frozenset({"struct_pack", "row", "struct_insert"})


def _table_widths(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Each table's and view's columns in the instance, by lower-cased name."""
    rows = con.execute(
        "SELECT lower(table_name), count(*) FROM duckdb_columns() GROUP BY ALL"
    ).fetchall()
    return dict(rows)


def _pivoted(ref: dict[str, Any]) -> int:
    """The columns a PIVOT's ``IN`` lists make: every combination of their entries, once per
    aggregate."""
    combinations = 1
    for pivot in ref.get("pivots") or ():
        entries = pivot.get("entries") if isinstance(pivot, dict) else None
        combinations *= len(entries) if isinstance(entries, list) and entries else TABLE_COLUMNS
        if combinations > MAX_BOUND_COLUMNS:
            break
    return combinations * max(1, len(ref.get("aggregates") or ()))


def _nodes(value: Any) -> Iterator[dict[str, Any]]:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _reads_files(name: str) -> bool:
    return name in FILE_FUNCTIONS or name.startswith(FILE_PREFIXES)


def _reads_tables(function: Any) -> bool:
    name = function.get("function_name") if isinstance(function, dict) else None
    return isinstance(name, str) and name.lower() in READING_TABLE_MACROS


def _looks_like_path(name: str) -> bool:
    return any(c in name for c in "/\\.*:?")


def run_query(
    cursor: duckdb.DuckDBPyConnection,
    sql: str,
    params: Mapping[str, str],
    max_rows: int,
    max_bytes: int = DEFAULT_MAX_BYTES,
    snapshot_gate: AbstractContextManager[Any] | None = None,
    stopped: Stopped = lambda: False,
) -> QueryResult:
    """Check and run one user query on ``cursor`` in a read-only transaction; at most
    ``max_rows`` rows come back, and a reply of at most ``max_bytes`` as protobuf
    (:func:`row_budget`; a first row that does not fit is QueryFailed, a result DuckDB runs out
    of memory for QueryTooLarge). The caller enforces the time limit: ``cursor.interrupt()``,
    and ``stopped()`` true from then on (checked between the fetches of the result's rows,
    which DuckDB's interrupt does not reach: duckdb.InterruptException).
    ``snapshot_gate``: held while the transaction takes its snapshot (the daemon's retention
    holds it from a pass's delete until its files are in the archive: a query whose snapshot
    came in between found those rows in neither)."""
    started = time.perf_counter()
    wanted = check_sql(cursor, sql)
    # DuckDB's names ignore case: $a and $A are one parameter, bound to whichever came last
    by_name: dict[str, str] = {}
    for name in params:
        other = by_name.setdefault(name.lower(), name)
        if other != name:
            raise QueryRefused(f"parameters {other} and {name} name one parameter: DuckDB's "
                               "parameter names ignore case")  # fmt: skip
    named = {w.lower(): w for w in wanted}
    unknown = sorted(k for k in params if k.lower() not in named)
    if unknown:
        raise QueryRefused(f"unknown parameter(s) {', '.join(unknown)}: the SQL has no such $name")
    missing = sorted(w for n, w in named.items() if n not in by_name)
    if missing:
        raise QueryRefused(f"missing parameter(s): {', '.join('$' + m for m in missing)}")
    if snapshot_gate is None:
        cursor.execute("BEGIN TRANSACTION READ ONLY")
    else:
        with snapshot_gate:
            cursor.execute("BEGIN TRANSACTION READ ONLY")
            # DuckDB takes the snapshot at the transaction's first read of the database
            cursor.execute("SELECT count(*) FROM retention_passes").fetchall()
    try:
        columns, rows, truncated = _run(cursor, sql, params, max_rows, max_bytes, stopped)
    finally:
        cursor.execute("ROLLBACK")
    elapsed = (time.perf_counter() - started) * 1000
    return QueryResult(columns, rows, truncated, round(elapsed, 3))


Columns = tuple[tuple[str, str], ...]
Rows = tuple[tuple[str, ...], bool]  # the rows' JSON, and whether there were more
Stopped = Callable[[], bool]  # whether the query was interrupted (its time is up)

# What a reply costs besides its rows' JSON, as protobuf (``QueryResponse``): a row's tag and
# its length (at most 6 bytes), a column's tags and lengths, and the other fields.
ROW_FRAMING = 6
COLUMN_FRAMING = 12
REPLY_FRAMING = 32


def row_budget(columns: Columns, max_bytes: int) -> int:
    """The bytes a reply of ``max_bytes`` leaves for its rows: each row counts its JSON and
    ``ROW_FRAMING``. QueryFailed when the columns alone take it all."""
    head = REPLY_FRAMING + sum(
        len(n.encode()) + len(t.encode()) + COLUMN_FRAMING for n, t in columns
    )
    if head >= max_bytes:
        raise QueryFailed(
            f"the result's columns alone are {head} bytes, more than the {max_bytes}-byte limit "
            "of a reply ([analytics] max_reply_bytes)"
        )
    return max_bytes - head


class _FirstRowTooLarge(Exception):
    """The first row does not fit: its JSON is ``size`` bytes (at least, if not ``exact``)."""

    def __init__(self, size: int, exact: bool = True) -> None:
        super().__init__(size)
        self.size, self.exact = size, exact


class _AsWritten(Exception):
    """DuckDB refused a wrapped run: the statement runs as written, and reports its own error."""


def _run(
    cursor: duckdb.DuckDBPyConnection,
    sql: str,
    params: Mapping[str, str],
    max_rows: int,
    max_bytes: int,
    stopped: Stopped,
) -> tuple[Columns, tuple[str, ...], bool]:
    """A SELECT is run wrapped, so that DuckDB stops at ``max_rows`` and drops the rows past the
    byte budget before they reach Python: rendered as JSON by DuckDB where every column's type
    allows it (:func:`_run_as_json`), else converted by Python (:func:`_run_bounded`). Anything
    else (EXPLAIN), or a wrapped run DuckDB refuses, runs as written (:func:`_run_as_written`)."""
    try:
        try:
            wrapped = _run_wrapped(cursor, sql, params, max_rows, max_bytes, stopped)
            if wrapped is not None:
                return wrapped
        except _AsWritten:
            pass
        return _run_as_written(cursor, sql, params, max_rows, max_bytes, stopped)
    except _FirstRowTooLarge as exc:
        raise QueryFailed(_too_large(exc, max_bytes)) from None


def _run_wrapped(
    cursor: duckdb.DuckDBPyConnection,
    sql: str,
    params: Mapping[str, str],
    max_rows: int,
    max_bytes: int,
    stopped: Stopped,
) -> tuple[Columns, tuple[str, ...], bool] | None:
    text = _select_text(cursor, sql)
    columns = _described(cursor, text, params) if text is not None else None
    if text is None or not columns:
        return None
    budget = row_budget(columns, max_bytes)
    rows = _run_as_json(cursor, text, params, columns, max_rows, budget)
    if rows is None:
        rows = _run_bounded(cursor, text, params, columns, max_rows, budget, stopped)
    return columns, *rows


def _too_large(first: _FirstRowTooLarge, max_bytes: int) -> str:
    size = f"{first.size} bytes" if first.exact else f"at least {first.size} bytes"
    return (
        f"the result's first row is {size} of JSON, more than fits the {max_bytes}-byte limit "
        "of a reply ([analytics] max_reply_bytes)"
    )


def _select_text(cursor: duckdb.DuckDBPyConnection, sql: str) -> str | None:
    statements = _parse(cursor, sql)
    if len(statements) != 1 or statements[0].type.name != "SELECT":
        return None
    return _without_trailing_end(str(statements[0].query))


def _without_trailing_end(text: str) -> str:
    """``text`` cut after its last token that is neither a ``;`` nor a comment: DuckDB keeps
    empty statements and comments after a statement's ``;`` in its text (``SELECT …; ;``),
    and such a text cannot be wrapped — it then ran as written, unbounded (3.9 GB)."""
    encoded = text.encode()  # the tokenizer's positions count bytes
    tokens = duckdb.tokenize(text)
    starts = [position for position, _ in tokens] + [len(encoded)]
    kinds = [kind for _, kind in tokens]
    end = len(kinds)
    while end > 0 and (
        kinds[end - 1] == duckdb.token_type.comment
        or encoded[starts[end - 1] : starts[end]].strip() == b";"
    ):
        end -= 1
    return encoded[: starts[end]].decode().rstrip() if end < len(kinds) else text.rstrip()


def _described(
    cursor: duckdb.DuckDBPyConnection, text: str, params: Mapping[str, str]
) -> Columns | None:
    try:
        described = cursor.execute(f"DESCRIBE {text}", dict(params)).fetchall()
    except duckdb.InterruptException:
        raise
    except duckdb.Error:  # the statement runs as written, with its own error, in a fresh
        cursor.execute("ROLLBACK")  # transaction: DuckDB aborted this one
        cursor.execute("BEGIN TRANSACTION READ ONLY")
        return None
    return tuple((str(row[0]), str(row[1])) for row in described)


def _failed(exc: duckdb.Error) -> QueryFailed:
    """DuckDB's error as the caller's: out of memory is QueryTooLarge."""
    if isinstance(exc, duckdb.OutOfMemoryException):
        return QueryTooLarge(cut(f"the result is too large to make: {exc}"))
    return QueryFailed(cut(str(exc)))


def _execute_wrapped(
    cursor: duckdb.DuckDBPyConnection, query: str, params: Mapping[str, str]
) -> duckdb.DuckDBPyConnection:
    """``query`` run (its result on ``cursor``); _AsWritten when DuckDB refuses it — then the
    statement runs as written, reporting its own error, in a transaction of its own (DuckDB
    aborted this one). Out of memory is the answer: the result is too large to send anyway."""
    try:
        return cursor.execute(query, dict(params))
    except duckdb.InterruptException:
        raise
    except duckdb.OutOfMemoryException as exc:
        raise _failed(exc) from None
    except duckdb.Error:
        cursor.execute("ROLLBACK")
        cursor.execute("BEGIN TRANSACTION READ ONLY")
        raise _AsWritten from None


def _run_bounded(
    cursor: duckdb.DuckDBPyConnection,
    text: str,
    params: Mapping[str, str],
    columns: Columns,
    max_rows: int,
    budget: int,
    stopped: Stopped,
) -> Rows:
    """Rows converted by Python, of a query DuckDB stops at ``max_rows`` and at the budget by a
    lower bound of the rows' size (``_guessed``): the rows that may be sent, and a few more."""
    # the rows within the budget, and the first past it, its values left out: its guess says
    # there was more
    values = ", ".join(f"CASE WHEN guess <= {budget} THEN c{i} END" for i in range(len(columns)))
    kept = (
        f"SELECT {values}, guess FROM ({_guessed(text, columns, max_rows)}) "
        f"WHERE guess - own <= {budget}"
    )
    result = _execute_wrapped(cursor, kept, params)
    return _converted(result, columns, max_rows, budget, stopped, guessed=True)


def _run_as_written(
    cursor: duckdb.DuckDBPyConnection,
    sql: str,
    params: Mapping[str, str],
    max_rows: int,
    max_bytes: int,
    stopped: Stopped,
) -> tuple[Columns, tuple[str, ...], bool]:
    """The statement as written (EXPLAIN, or a query DuckDB refused to run wrapped: its own
    error is reported), its rows converted by Python in batches."""
    try:
        result = cursor.execute(sql, dict(params)) if params else cursor.execute(sql)
    except duckdb.InterruptException:
        raise
    except duckdb.Error as exc:
        raise _failed(exc) from None
    columns = tuple((str(d[0]), str(d[1])) for d in result.description or [])
    if not columns:
        return columns, (), False
    budget = row_budget(columns, max_bytes)
    return columns, *_converted(result, columns, max_rows, budget, stopped)


# Rows converted by Python per fetch, at most; and about how long one fetch may take. A fetch
# converts its rows to Python objects in one call that holds the interpreter lock (every other
# client of the daemon waits): 1,000 rows of 5,000-entry maps, 12 s. So the first fetch takes
# one row, and each next one as many as would take about FETCH_SECONDS at the last one's pace
# (at most eight times as many), checking between them whether the query was stopped.
FETCH = 1_000
FETCH_SECONDS = 0.005


def _fetched(
    result: duckdb.DuckDBPyConnection, stopped: Stopped
) -> Iterator[list[tuple[Any, ...]]]:
    """The result's rows, a batch at a time (see ``FETCH_SECONDS``); InterruptException once
    ``stopped()`` says the query was (its time is up): DuckDB's interrupt does not reach a
    conversion, and a query past its limit of 10 s went on for 60."""
    size = 1
    while True:
        if stopped():
            raise duckdb.InterruptException("INTERRUPT Error: Interrupted!")
        started = time.perf_counter()
        batch = result.fetchmany(size)
        took = time.perf_counter() - started
        if not batch:
            return
        yield batch
        size = min(FETCH, size * 8, max(1, int(size * FETCH_SECONDS / max(took, 1e-6))))


def _converted(
    result: duckdb.DuckDBPyConnection,
    columns: Columns,
    max_rows: int,
    budget: int,
    stopped: Stopped,
    *,
    guessed: bool = False,
) -> Rows:
    """The rows' JSON within ``max_rows`` and ``budget``, and whether there were more;
    _FirstRowTooLarge when not even the first fits. ``guessed``: each row ends with the lower
    bound of the bytes so far (``_guessed``), past the budget on a last row of no values."""
    json_columns = [i for i, (_, kind) in enumerate(columns) if kind == "JSON"]
    rows: list[str] = []
    used = 0
    try:
        for batch in _fetched(result, stopped):
            for row in batch:
                if len(rows) == max_rows:
                    return tuple(rows), True
                if guessed:
                    guess = row[-1]
                    if guess > budget:
                        if not rows:
                            raise _FirstRowTooLarge(guess - ROW_FRAMING, exact=False)
                        return tuple(rows), True
                    row = row[:-1]
                text = _row_json(row, json_columns)
                size = len(text.encode())
                used += size + ROW_FRAMING
                if used > budget:
                    if not rows:
                        raise _FirstRowTooLarge(size)
                    return tuple(rows), True
                rows.append(text)
    except duckdb.InterruptException:
        raise
    except duckdb.Error as exc:
        raise _failed(exc) from None
    except (OverflowError, ValueError) as exc:  # a value Python cannot hold: 10^8 years
        raise QueryFailed(cut(f"a value of the result cannot be read: {exc}")) from None
    except RecursionError:  # a JSON value ~1,000 levels deep: it answered INTERNAL
        raise QueryFailed("a JSON value of the result is nested too deeply to answer") from None
    return tuple(rows), False


# Rows of these types are rendered as JSON by DuckDB itself (:func:`_run_as_json`), exactly as
# :func:`_plain` renders them: a large result then costs the worker thread one string per row, not
# a Python object per value (the conversion holds the interpreter lock, against the daemon's loop).
_SAFE_INT = 2**53
# A number's text without the zeros ending its fraction, nor a point left bare; a decimal's
# text with the zero before its point (DuckDB writes ".5" of a DECIMAL(18,18))
_TRIMMED = "CASE WHEN contains({t}, '.') THEN rtrim(rtrim({t}, '0'), '.') ELSE {t} END"
_DECIMAL_TEXT = "regexp_replace(CAST({c} AS VARCHAR), '^(-?)\\.', '\\10.')"
_DOUBLE_TEXT = "CAST(CAST({c} AS DOUBLE) AS VARCHAR)"
_AS_JSON = {
    "BOOLEAN": "CASE WHEN {c} THEN 'true' ELSE 'false' END",
    **dict.fromkeys(
        ("TINYINT", "SMALLINT", "INTEGER", "UTINYINT", "USMALLINT", "UINTEGER"),
        "CAST({c} AS VARCHAR)",
    ),
    **dict.fromkeys(
        ("BIGINT", "UBIGINT", "HUGEINT", "UHUGEINT"),
        f"CASE WHEN {{c}} BETWEEN -{_SAFE_INT} AND {_SAFE_INT} THEN CAST({{c}} AS VARCHAR) "
        "ELSE '\"' || CAST({c} AS VARCHAR) || '\"' END",
    ),
    # DuckDB's DOUBLE text is the shortest round-trip form, as Python's repr
    **dict.fromkeys(
        ("DOUBLE", "FLOAT"),
        "CASE WHEN isfinite({c}) THEN CAST(CAST({c} AS DOUBLE) AS VARCHAR) "
        "ELSE '\"' || CAST(CAST({c} AS DOUBLE) AS VARCHAR) || '\"' END",
    ),
    # A decimal as its double when that is the decimal exactly (the rule ``_plain`` follows),
    # else its exact text, a string: one of at most 15 digits always is (DBL_DIG); a wider one
    # is when the double's shortest text is the decimal's (trailing zeros aside) or, written
    # with an exponent, reads back as the decimal exactly: a cast of that text to the column's
    # type is exact when the text has no more fraction digits than the type (DuckDB's DOUBLE →
    # DECIMAL cast rounds: comparing through it let lossy values through)
    "DECIMAL(15)": _DOUBLE_TEXT,
    "DECIMAL": f"CASE WHEN {_TRIMMED.format(t=_DECIMAL_TEXT)} = {_TRIMMED.format(t=_DOUBLE_TEXT)}"
    f" OR (contains({_DOUBLE_TEXT}, 'e') AND length(split_part(split_part({_DOUBLE_TEXT}, 'e', 1),"
    f" '.', 2)) - TRY_CAST(split_part({_DOUBLE_TEXT}, 'e', 2) AS INTEGER) <= {{s}}"
    f" AND TRY_CAST({_DOUBLE_TEXT} AS DECIMAL({{w}},{{s}})) = {{c}})"
    f" THEN {_DOUBLE_TEXT} ELSE '\"' || {_DECIMAL_TEXT} || '\"' END",
    "VARCHAR": "CAST(to_json({c}) AS VARCHAR)",
    "UUID": "CAST(to_json(CAST({c} AS VARCHAR)) AS VARCHAR)",
    "DATE": "'\"' || CASE WHEN isfinite({c}) THEN strftime({c}, '%Y-%m-%d') "
    "ELSE CAST({c} AS VARCHAR) END || '\"'",
    # (a format strftime takes for a TIMESTAMP must be a constant: a CASE of formats was refused,
    # and every query with such a column ran unbounded, as written)
    "TIMESTAMP": "'\"' || CASE WHEN NOT isfinite({c}) THEN CAST({c} AS VARCHAR) "
    "WHEN epoch_us({c}) % 1000000 = 0 THEN strftime({c}, '%Y-%m-%dT%H:%M:%S') "
    "ELSE strftime({c}, '%Y-%m-%dT%H:%M:%S.%f') END || '\"'",
    # its nanoseconds kept (Python's datetime, 6 digits, cut them off)
    "TIMESTAMP_NS": "'\"' || CASE WHEN NOT isfinite({c}) THEN CAST({c} AS VARCHAR) "
    "WHEN epoch_ns({c}) % 1000000000 = 0 THEN strftime({c}, '%Y-%m-%dT%H:%M:%S') "
    "ELSE strftime({c}, '%Y-%m-%dT%H:%M:%S.%n') END || '\"'",
    # DuckDB's text ("1 year 2 months 3 days 04:00:00.5"): its months and days are its own
    # (Python's timedelta made a month 30 days, and the whole a number of seconds)
    "INTERVAL": "CAST(to_json({c}) AS VARCHAR)",
}
# With the session in UTC, Python's datetime for a TIMESTAMPTZ is in UTC too.
_AS_JSON_UTC = {
    "TIMESTAMP WITH TIME ZONE": "'\"' || CASE WHEN NOT isfinite({c}) THEN CAST({c} AS VARCHAR) "
    "WHEN epoch_us({c}) % 1000000 = 0 THEN strftime({c}, '%Y-%m-%dT%H:%M:%S+00:00') "
    "ELSE strftime({c}, '%Y-%m-%dT%H:%M:%S.%f+00:00') END || '\"'",
}
_UTC = frozenset(("UTC", "Etc/UTC"))


def _decimal_kind(kind: str) -> tuple[str, int, int]:
    """The ``_AS_JSON`` key of a column's type — ``DECIMAL(15)`` for a DECIMAL of at most 15
    digits, ``DECIMAL`` for a wider one, any other type itself — and, for a DECIMAL, the width
    and scale its exponent texts are read back in: one more digit of width where it has none
    before its point (DuckDB reads ``9.5e-28`` as no DECIMAL(38,38)): a DECIMAL(38,38) has no
    wider type, and is rendered by ``_plain``."""
    found = _DECIMAL_TYPE.fullmatch(kind)
    if found is None:
        return kind, 0, 0
    width, scale = int(found[1]), int(found[2])
    if width == scale == 38:
        return kind, 0, 0
    return ("DECIMAL(15)" if width <= 15 else "DECIMAL"), width + (width == scale), scale


_DECIMAL_TYPE = re.compile(r"DECIMAL\(([0-9]{1,2}),([0-9]{1,2})\)")


def _run_as_json(
    cursor: duckdb.DuckDBPyConnection,
    text: str,
    params: Mapping[str, str],
    columns: Columns,
    max_rows: int,
    budget: int,
) -> Rows | None:
    """Run a query whose columns all have a type in ``_AS_JSON`` with DuckDB rendering each row's
    JSON text; ``None`` when it does not apply (then the caller runs it another way)."""
    try:
        zone = cursor.execute("SELECT current_setting('TimeZone')").fetchone()
    except duckdb.InterruptException:
        raise
    except duckdb.Error:
        return None
    renderers = _AS_JSON | _AS_JSON_UTC if zone and zone[0] in _UTC else _AS_JSON
    parts = []
    for i, (_, kind) in enumerate(columns):
        key, width, scale = _decimal_kind(kind)
        template = renderers.get(key)
        if template is None:
            return None
        parts.append(f"coalesce({template.format(c=f'q.c{i}', w=width, s=scale)}, 'null')")
    row = " || ',' || ".join(parts)
    # DuckDB renders only the rows that may be sent (``_guessed``: up to max_rows + 1, within
    # the budget by a lower bound of their size, none made for that), measures them exactly as
    # they stream by, and joins those within the budget into one text (a row's JSON never holds
    # a raw newline): the worker thread then converts one value, not a Python str per row, so it
    # holds the interpreter lock against the daemon's loop for a fraction of the time.
    rendered = (
        f"SELECT i, own, CASE WHEN guess <= {budget} THEN '[' || {row} || ']' END AS r "
        f"FROM ({_guessed(text, columns, max_rows)}) AS q"
    )
    measured = (
        f"SELECT r, i, own, sum(strlen(r) + {ROW_FRAMING}) OVER (ROWS UNBOUNDED PRECEDING) "
        f"AS used FROM ({rendered})"
    )
    joined = (
        f"SELECT string_agg(r, chr(10) ORDER BY i) FILTER (WHERE used <= {budget}), "
        f"count(*) FILTER (WHERE r IS NULL OR used > {budget}), "
        f"max(strlen(r)) FILTER (WHERE i = 1), max(own) FILTER (WHERE i = 1) FROM ({measured})"
    )
    found = _execute_wrapped(cursor, joined, params).fetchone()
    assert found is not None  # an aggregate has one row
    joined_rows, past_budget, first_size, first_guess = found
    rows = joined_rows.split("\n") if joined_rows is not None else []
    if past_budget and not rows:
        if first_size is None:  # not even rendered: its lower bound is past the budget
            raise _FirstRowTooLarge(first_guess - ROW_FRAMING, exact=False)
        raise _FirstRowTooLarge(first_size)
    return tuple(rows[:max_rows]), past_budget > 0 or len(rows) > max_rows


def _guessed(text: str, columns: Columns, max_rows: int) -> str:
    """The query's first ``max_rows + 1`` rows, columns ``c0``, ``c1`` …, numbered ``i`` from 1,
    with ``own``, a lower bound of the bytes of the row's JSON and framing (strings', blobs' and
    lists' lengths, :func:`_lower_bound`, none of it made), and ``guess``, of the rows' so far."""
    names = ", ".join(f"c{i}" for i in range(len(columns)))
    bound = " + ".join(_lower_bound(f"c{i}", kind) for i, (_, kind) in enumerate(columns))
    # the limit right on the query, as written: DuckDB then makes no row past it (a window
    # between them made whole vectors of 2,048 rows, and a later row's failed cast failed all)
    limited = f"SELECT * FROM ({text}\n) AS q({names}) LIMIT {max_rows + 1}"
    numbered = (
        f"SELECT {names}, row_number() OVER () AS i, {bound} + {len(columns) + 1 + ROW_FRAMING} "
        f"AS own FROM ({limited})"
    )
    return (
        f"SELECT {names}, i, own, sum(own) OVER (ROWS UNBOUNDED PRECEDING) AS guess "
        f"FROM ({numbered})"
    )


def _lower_bound(value: str, kind: str, depth: int = 0) -> str:
    """SQL for the least bytes a value's JSON takes, as this module writes it (a comma after it
    is counted apart): a string's length and quotes, a blob's length, a list's (or array's)
    items and commas, a struct's fields and their names, a map's entries and values (its keys
    distinct once converted, ``_DISTINCT_KEYS``; else its braces), ``null``'s 4; a union's or
    a value nested deeper than ``MAX_BOUND_DEPTH`` by the separators of its text
    (:func:`_separators`: one byte when it holds a map whose keys may merge,
    :func:`_merges_keys`); one byte for any other value (a JSON text: written as parsed, a key
    it gives twice once). A
    map, a union, a deep list counted one byte let a 2,048-row vector of 5,000-entry maps reach
    Python's conversion, which held the interpreter lock (every other client of the daemon)
    for 25 s."""
    if kind == "VARCHAR":
        return f"coalesce(strlen({value}) + 2, 4)"
    if kind == "BLOB":
        return f"coalesce(octet_length({value}), 4)"
    nested = _item_kind(kind) is not None or bool(struct_fields(kind)) or _is_map(kind)
    if kind.startswith("UNION(") or (nested and depth >= MAX_BOUND_DEPTH):
        if _merges_keys(kind):
            return "1"
        return _separators(f"CAST({value} AS VARCHAR)", ", ")
    if depth >= MAX_BOUND_DEPTH:
        return "1"
    if _is_map(kind):
        key_kind, value_kind = _map_parts(kind)
        if not _DISTINCT_KEYS.fullmatch(key_kind):
            return f"CASE WHEN {value} IS NULL THEN 4 ELSE 2 END"  # its entries may become one
        item = f"x{depth}"
        values = (
            f"list_transform(map_values({value}), lambda {item}: "
            + _lower_bound(item, value_kind, depth + 1)
            + ")"
        )
        # each entry: its key's quotes and colon, a comma; the braces
        total = f"4 * cardinality({value}) + 1 + coalesce(list_sum({values}), 0)"
        return f"CASE WHEN {value} IS NULL THEN 4 ELSE {total} END"
    item_kind = _item_kind(kind)
    if item_kind is not None:
        item = f"x{depth}"
        items = (
            f"list_transform({value}, lambda {item}: {_lower_bound(item, item_kind, depth + 1)})"
        )
        total = f"coalesce(list_sum({items}), 0) + len({value}) + 1"
        return f"CASE WHEN {value} IS NULL THEN 4 ELSE {total} END"
    fields = struct_fields(kind)
    if fields:
        parts = [
            _lower_bound(f"struct_extract({value}, {_sql_text(name)})", field, depth + 1)
            + f" + {len(name.encode()) + 4}"
            for name, field in fields
        ]
        return f"CASE WHEN {value} IS NULL THEN 4 ELSE {' + '.join(parts)} + 1 END"
    return "1"


MAX_BOUND_DEPTH = 4  # lists, structs and maps bounded by their parts this deep, then by text


def _separators(text: str, separator: str) -> str:
    """SQL for the least bytes of JSON a value written as ``text`` (DuckDB's) takes: one for
    each ``separator`` in it, and one. Each one of DuckDB's ", " in a nested value's text
    separates two items (a comma of the JSON, when no map's entries merge: :func:`_merges_keys`)
    or is in a string (two bytes of it); DuckDB makes the text off the interpreter lock."""
    width = len(separator)
    return (
        f"coalesce((strlen({text}) - strlen(replace({text}, '{separator}', ''))) // {width} + 1, 4)"
    )


# Map key types whose distinct values stay distinct as Python converts them and ``_plain`` makes
# them a JSON object's keys (a TIMESTAMP_NS loses its nanoseconds, an INTERVAL's month becomes 30
# days, a union's members lose their tags: distinct keys became one entry). A key of a struct,
# map or list type makes the map a key/value pair of lists, every entry kept.
_DISTINCT_KEYS = re.compile(
    r"(U?(TINYINT|SMALLINT|INTEGER|BIGINT|HUGEINT)|VARCHAR|BOOLEAN|DATE|UUID|DOUBLE|FLOAT|BLOB"
    r"|DECIMAL\(\d+,\d+\)|TIME|TIMESTAMP|TIMESTAMP_S|TIMESTAMP_MS|TIMESTAMP WITH TIME ZONE"
    r"|ENUM\(.*\)|(STRUCT|MAP)\(.*\)|.*\[\d*\])"
)


def _merges_keys(kind: str) -> bool:
    """Whether a type (DuckDB's name of it) holds a map whose distinct keys may become one entry
    once converted (a key type not in ``_DISTINCT_KEYS``), walked part by part."""
    if _is_map(kind):
        key, value = _map_parts(kind)
        return not _DISTINCT_KEYS.fullmatch(key) or _merges_keys(key) or _merges_keys(value)
    item_kind = _item_kind(kind)
    if item_kind is not None:
        return _merges_keys(item_kind)
    if kind.startswith("UNION(") and kind.endswith(")"):
        kind = "STRUCT(" + kind[len("UNION(") :]  # its members are named as a struct's fields
    return any(_merges_keys(field) for _, field in struct_fields(kind))


def _is_map(kind: str) -> bool:
    return kind.startswith("MAP(") and kind.endswith(")")


def _map_parts(kind: str) -> tuple[str, str]:
    """The key and value types of DuckDB's name of a MAP type (``MAP(VARCHAR, INTEGER[])``)."""
    parts = _top_level_parts(kind[len("MAP(") : -1])
    return (parts[0], parts[1]) if len(parts) == 2 else ("", "")


_ARRAY = re.compile(r"(.*)\[\d*\]")  # a list (T[]) or a fixed-size array (T[3]) of T


def _item_kind(kind: str) -> str | None:
    found = _ARRAY.fullmatch(kind)
    return found.group(1) if found is not None else None


def struct_fields(kind: str) -> list[tuple[str, str]]:
    """The (name, type) fields of DuckDB's name of a STRUCT type (``STRUCT(a VARCHAR, "b c"
    INTEGER[])``); [] for any other type."""
    if not (kind.startswith("STRUCT(") and kind.endswith(")")):
        return []
    fields = []
    for part in _top_level_parts(kind[len("STRUCT(") : -1]):
        if part.startswith('"'):
            end = _closing_quote(part)
            name, rest = part[1:end].replace('""', '"'), part[end + 1 :]
        else:
            name, _, rest = part.partition(" ")
        fields.append((name, rest.strip()))
    return fields


def _top_level_parts(body: str) -> list[str]:
    """A type's parameters (``body``: what is between its parentheses), split at the commas
    that are neither quoted nor inside another type's parentheses."""
    parts, depth, quote, start = [], 0, "", 0
    for i, char in enumerate(body):
        if char in "\"'" and quote in ("", char):
            quote = "" if quote else char  # a doubled quote inside toggles twice
        elif not quote and char in "()":
            depth += 1 if char == "(" else -1
        elif not quote and char == "," and depth == 0:
            parts.append(body[start:i].strip())
            start = i + 1
    parts.append(body[start:].strip())
    return parts


def _closing_quote(part: str) -> int:
    i = 1
    while i < len(part):
        if part[i] == '"':
            if part[i + 1 : i + 2] != '"':
                return i
            i += 1
        i += 1
    return len(part)


def _sql_text(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _row_json(row: tuple[Any, ...], json_columns: list[int]) -> str:
    values = list(row)
    for i in json_columns:
        if isinstance(values[i], str):
            values[i] = _Raw(values[i])
    return json.dumps([_plain(v) for v in values], separators=(",", ":"), ensure_ascii=False)


def interval_text(value: dt.timedelta) -> str:
    """A timedelta as DuckDB writes an INTERVAL of those days and microseconds: ``3 days``,
    ``01:30:00``, ``-01:30:00``, ``2 days 00:00:01.5`` (an INTERVAL inside a list or struct
    reaches Python as a timedelta, its months already 30 days each)."""
    days, rest = value.days, value - dt.timedelta(days=value.days)
    if days < 0 and rest:  # Python keeps the time positive; DuckDB the sign of the whole
        days, rest = days + 1, rest - dt.timedelta(days=1)
    parts = [f"{days} day{'' if abs(days) == 1 else 's'}"] if days else []
    if rest or not days:
        micros = abs(rest // dt.timedelta(microseconds=1))
        seconds, fraction = divmod(micros, 1_000_000)
        clock = f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        if fraction:
            clock += f".{fraction:06d}".rstrip("0")
        parts.append(("-" if rest < dt.timedelta(0) else "") + clock)
    return " ".join(parts)


class _Raw(str):
    """A JSON column's text, decoded into the row (it is already JSON)."""


def _plain(value: Any) -> Any:
    """A DuckDB value as JSON: numbers stay numbers (integers beyond 2^53, decimals a double
    cannot hold and non-finite floats become strings), times are ISO 8601, lists and structs
    nest, blobs are base64."""
    if value is None or isinstance(value, bool | str) and not isinstance(value, _Raw):
        return value
    if isinstance(value, _Raw):  # DuckDB's JSON may hold NaN, Infinity, integers past 2^53
        return _plain(json.loads(value))
    if isinstance(value, int):
        return value if abs(value) <= 2**53 else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, decimal.Decimal):  # as a number when a double is it exactly
        number = float(value)
        exact = value.is_finite() and decimal.Decimal(repr(number)) == value
        return number if exact else format(value, "f")  # (str() wrote "1.2E-7")
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return interval_text(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, uuid.UUID):
        return str(value)
    return str(value)
