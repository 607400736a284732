"""Small pieces the ``foundry`` subcommands share."""

from __future__ import annotations

import argparse
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from foundry.kernel.edge.grpc.client import CallReset, ConnectionLost


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


MAX_SECONDS = 10**9  # a wait longer than 31 years is a mistake (and trio's deadlines overflow)


def positive_seconds(text: str) -> float:
    """An ``argparse`` type: a number of seconds, more than 0 and less than ``MAX_SECONDS``."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value < MAX_SECONDS:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(
            f"must be more than 0 and less than {MAX_SECONDS:,} seconds"
        )
    return value


def int64(text: str) -> int:
    """An argparse type: a whole number a seed (int64) holds."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text[:40]!r}") from None
    if not -(2**63) <= value < 2**63:
        raise argparse.ArgumentTypeError(f"must be from {-(2**63)} to {2**63 - 1} (int64)")
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


# More than any request the daemon takes (``[daemon] max_message_bytes``, 4 MiB by default).
MAX_INPUT_BYTES = 16 * 1024 * 1024


def read_text_file(path: str) -> str:
    """The text of a file a command sends (``-``: standard input): a regular file, UTF-8, at
    most ``MAX_INPUT_BYTES`` — ``/dev/zero`` as a DAG file filled 7 GB before the daemon could
    refuse it. OSError, or ValueError with a one-line reason."""
    if path == "-":
        data = sys.stdin.buffer.read(MAX_INPUT_BYTES + 1)
    else:
        if not stat.S_ISREG(os.stat(path).st_mode):  # before opening: a FIFO would block
            raise ValueError("not a regular file")
        with open(path, "rb") as file:
            data = file.read(MAX_INPUT_BYTES + 1)
    if len(data) > MAX_INPUT_BYTES:
        raise ValueError(f"larger than {MAX_INPUT_BYTES} bytes, more than any request takes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None


def daemon_unreachable(address: str, exc: OSError) -> str:
    """A client command's one line for a connection to the daemon that failed or was lost."""
    if isinstance(exc, ConnectionLost):
        return f"lost the connection to the daemon at {address}: {exc}"
    if isinstance(exc, CallReset):
        return f"the daemon at {address} reset the call: {exc}"
    # (a TLS connection the daemon closed at its cap is a ConnectionResetError of no words)
    said = str(exc) or (
        f"{type(exc).__name__}: closed before any answer (the daemon may be at its "
        "[daemon] max_connections)"
    )
    return f"cannot reach the daemon at {address}: {said}"
