"""The daemon's log (``foundry serve``): text lines, or ``--log-format json`` — one JSON object per
line for log collectors — and client disconnects kept out of it."""

from __future__ import annotations

import json
import logging
import traceback
from datetime import UTC, datetime
from typing import Any

# What every LogRecord has; anything else on a record came from ``extra=`` and is a field.
STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", …extra fields, "exception"}``, one per line."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": _stamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in STANDARD and not key.startswith("_"):
                document[key] = value
        if record.exc_info:
            document["exception"] = "".join(traceback.format_exception(*record.exc_info))
        # ASCII: a client's text (a project name) can hold U+2028, NEL, a C1 control or a
        # right-to-left override, which a reader splits lines on or a terminal obeys
        return json.dumps(document, default=str)


class TextFormatter(logging.Formatter):
    """``TIME LOGGER LEVEL MESSAGE``, the time in the CLI's one style (RFC 3339 UTC, ms). A
    record is one line: what a client sent can reach a message (a project, a reference path),
    and a newline in it wrote a line of its own choosing into the log; control and format
    characters (a NUL, a right-to-left override) are escaped as Python writes them. A
    traceback keeps its lines."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(name)s %(levelname)s %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802
        return printable(super().formatMessage(record))

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return _stamp(record.created)


def printable(text: str) -> str:
    """``text`` with its control and format characters (a newline, ESC, NUL, a right-to-left
    override) escaped as Python writes them: text a client stored, shown on a terminal."""
    return text if text.isprintable() else "".join(map(_printable, text))


def _printable(char: str) -> str:
    return char if char.isprintable() else repr(char)[1:-1]


def _stamp(created: float) -> str:
    instant = datetime.fromtimestamp(created, UTC)
    return instant.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class DisconnectsAreDebug(logging.Filter):
    """grpclib logs every call whose client went away (``Request was cancelled: Connection
    lost`` — a Ctrl-C'd ``foundry watch``) at INFO: that is routine, so it is DEBUG here."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO and record.msg == "Request was cancelled: %s":
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def quiet_disconnects() -> None:
    logger = logging.getLogger("grpclib.server")
    if not any(isinstance(f, DisconnectsAreDebug) for f in logger.filters):
        logger.addFilter(DisconnectsAreDebug())
