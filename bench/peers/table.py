"""The side-by-side table of ``make bench-peers``: pure formatting, no measuring."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .. import fmt_number

MISSING = "—"


@dataclass(frozen=True)
class Row:
    """One scenario: the peer's median and ours (milliseconds; lower is better)."""

    scenario: str
    unit: str
    peer: float | None
    ours: float | None
    note: str = ""


def ratio(peer: float | None, ours: float | None) -> float | None:
    """The peer's figure divided by ours: above 1, ours takes less time; None if either is
    missing or ours is zero."""
    if peer is None or ours is None or ours <= 0:
        return None
    return peer / ours


def format_ratio(value: float | None) -> str:
    if value is None:
        return MISSING
    return f"{value:.2f}×" if value < 10 else f"{value:.1f}×"


def _cell(value: float | None) -> str:
    return MISSING if value is None else fmt_number(value)


HEADER = ("scenario", "unit", "LangGraph", "ours", "LangGraph ÷ ours")


def row_cells(row: Row) -> tuple[str, str, str, str, str]:
    return (
        row.scenario,
        row.unit,
        _cell(row.peer),
        _cell(row.ours),
        format_ratio(ratio(row.peer, row.ours)),
    )


def format_table(rows: Sequence[Row]) -> str:
    """An aligned plain-text table, then each row's note (if any) as a numbered footnote."""
    cells = [HEADER, *(row_cells(r) for r in rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADER))]
    aligns = ["<", "<", ">", ">", ">"]
    lines = []
    for index, line in enumerate(cells):
        text = "  ".join(f"{c:{a}{w}}" for c, a, w in zip(line, aligns, widths, strict=True))
        lines.append(text.rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    notes = [f"  {r.scenario}: {r.note}" for r in rows if r.note]
    return "\n".join(lines + (["", "notes:", *notes] if notes else []))


def format_markdown(rows: Sequence[Row]) -> str:
    """The same table in Markdown, for the README."""
    lines = ["| " + " | ".join(HEADER) + " |", "|---|---|--:|--:|--:|"]
    lines.extend("| " + " | ".join(row_cells(r)) + " |" for r in rows)
    return "\n".join(lines)
