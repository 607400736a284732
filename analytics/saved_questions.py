"""Saved questions: ``analytics/questions/NAME.sql``, loaded by name.

Each file starts with a header of ``--`` comments::

    -- title: Block failure rate and duration
    -- description: one line on what it answers
    -- param: since = 1970-01-01 | executions started at or after this time (UTC)

then one SELECT whose parameters are DuckDB prepared parameters (``$since``), bound from the
caller's values or the defaults — never formatted into the text. Parameters arrive as strings;
the SQL casts them (``$since::TIMESTAMPTZ``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from foundry.analytics.sandbox import QueryRefused

FOLDER = Path(__file__).resolve().parent / "questions"


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    default: str
    description: str


@dataclass(frozen=True, slots=True)
class Question:
    name: str
    title: str
    description: str
    params: tuple[Param, ...]
    sql: str

    def bind(self, given: Mapping[str, str]) -> dict[str, str]:
        """The parameter values: the given ones over the defaults; an unknown name is refused."""
        known = {p.name for p in self.params}
        unknown = sorted(set(given) - known)
        if unknown:
            expected = ", ".join(sorted(known)) or "none"
            raise QueryRefused(
                f"question {self.name!r} has no parameter {', '.join(unknown)} "
                f"(parameters: {expected})"
            )
        return {p.name: given.get(p.name, p.default) for p in self.params}


def parse(name: str, text: str) -> Question:
    title = description = ""
    params: list[Param] = []
    lines = text.splitlines()
    start = 0
    while start < len(lines) and (
        not lines[start].strip() or lines[start].lstrip().startswith("--")
    ):
        key, _, value = lines[start].strip()[2:].strip().partition(":")
        value = value.strip()
        if key == "title":
            title = value
        elif key == "description":
            description = value
        elif key == "param":
            spec, _, about = value.partition("|")
            pname, _, default = spec.partition("=")
            params.append(Param(pname.strip(), default.strip(), about.strip()))
        start += 1
    sql = "\n".join(lines[start:]).strip()
    return Question(name, title or name, description, tuple(params), sql)


def list_questions(folder: Path = FOLDER) -> list[Question]:
    return [parse(p.stem, p.read_text()) for p in sorted(folder.glob("*.sql"))]


def load(name: str, folder: Path = FOLDER) -> Question:
    for question in list_questions(folder):
        if question.name == name:
            return question
    names = ", ".join(q.name for q in list_questions(folder))
    raise KeyError(f"no saved question {name!r} (saved questions: {names})")
