"""Small pieces the ``foundry`` subcommands share."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any


def prepared_client(
    command: Any, prepare: Callable[[argparse.Namespace], None] | None = None
) -> Callable[[argparse.Namespace], int]:
    """Check the local inputs first (``prepare``: a bad file exits 2), then run ``command`` as a
    client command of the daemon."""

    def handler(args: argparse.Namespace) -> int:
        from foundry.kernel.cli.main import _client  # main imports the subcommands

        if prepare is not None:
            prepare(args)
        result: int = _client(command)(args)
        return result

    return handler


def whole_number(text: str, *, maximum: int = 2**32 - 1) -> int:
    """An argparse type: a whole number from 1 to ``maximum``."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= maximum:
        raise argparse.ArgumentTypeError(f"must be from 1 to {maximum}")
    return value


def journal_behind(home: Path) -> str:
    """A warning when the store's journal holds writes the database file lacks (a daemon killed
    before it applied them: the next start does), else ''."""
    segments = list((home / "journal").glob("*.journal"))
    if not segments:
        return ""
    return (
        f"{home / 'journal'} holds writes the database has not applied yet (the daemon was "
        "killed?); start the daemon once to apply them — this answer may miss them"
    )
