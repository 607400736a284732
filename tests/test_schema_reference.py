"""analytics/README.md lists every table, view and column of a fresh database, with its type."""

import re
from pathlib import Path

import duckdb
import trio
from foundry.kernel.actors.store.actor import Store

PAGE = Path(__file__).resolve().parent.parent / "analytics" / "README.md"
SHORT = {"TIMESTAMP WITH TIME ZONE": "TIMESTAMPTZ"}


def documented() -> dict[str, dict[str, str]]:
    """table → column → type, from the page's ``### `table` `` sections; a section saying
    "Same columns as `x`" has x's columns."""
    sections: dict[str, dict[str, str]] = {}
    aliases: dict[str, str] = {}
    current = ""
    for line in PAGE.read_text().splitlines():
        if heading := re.match(r"### `(\w+)`", line):
            current = heading[1]
            sections[current] = {}
        elif same := re.match(r"Same columns as `(\w+)`", line):
            aliases[current] = same[1]
        elif current and (row := re.match(r"\| `(\w+)` \| ([^|]+?) \| (.+) \|$", line)):
            sections[current][row[1]] = row[2]
    for view, table in aliases.items():
        sections[view] = sections[table]
    return sections


def fresh_columns(home: Path) -> dict[str, dict[str, str]]:
    async def start_and_stop() -> None:
        tap_send, _ = trio.open_memory_channel(10)
        send, receive = trio.open_memory_channel(10)
        async with trio.open_nursery() as nursery:
            await nursery.start(Store(home, receive, tap_send).run)
            send.close()

    trio.run(start_and_stop)
    with duckdb.connect(str(home / "foundry.duckdb"), read_only=True) as con:
        rows = con.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'main'"
        ).fetchall()
    tables: dict[str, dict[str, str]] = {}
    for table, column, kind in rows:
        tables.setdefault(table, {})[column] = SHORT.get(kind, kind)
    return tables


def test_the_schema_reference_lists_every_table_and_column_with_its_type(tmp_path):
    actual = fresh_columns(tmp_path)
    page = documented()
    missing = [
        f"{table}.{column} ({kind})"
        for table, columns in actual.items()
        for column, kind in columns.items()
        if page.get(table, {}).get(column) != kind
    ]
    assert missing == [], f"analytics/README.md lacks (or mistypes): {', '.join(missing)}"
    stale = [f"{t}.{c}" for t, cols in page.items() for c in cols if c not in actual.get(t, {})]
    assert stale == [], f"analytics/README.md documents what the database lacks: {stale}"


def test_the_main_readme_links_the_schema_reference():
    readme = (PAGE.parent.parent / "README.md").read_text()
    assert "analytics/README.md" in readme
