"""How the CLI writes things, in one place: times (one style everywhere: RFC 3339 in UTC with
milliseconds and ``Z``, ``2026-12-02T00:50:27.123Z``), durations, JSON values in summaries, and
``--json`` documents whose numbers are numbers."""

from __future__ import annotations

import contextlib
import io
import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, TextIO
from unicodedata import category

import betterproto2
from foundry.kernel.core.numbers import restore_ints


def stamp(value: str | datetime | None) -> str:
    """A time in the CLI's one style; '' for none; text that is not a time is shown as it is."""
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            return str(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def now_stamp() -> str:
    return stamp(datetime.now(UTC))


def duration(ms: float) -> str:
    """``850 ms``, ``12.3 s``, ``4 min 05 s``."""
    if ms < 1000:
        return f"{ms:.0f} ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes} min {rest:02d} s"


def short_json(value: Any, limit: int | None = 120, *, sort_keys: bool = False) -> str:
    """A JSON value as compact JSON (never a Python repr), cut at ``limit`` characters (None:
    whole); a whole number as one (protobuf Values carry every number as a double: 17, not
    17.0)."""
    text = json.dumps(restore_ints(value), separators=(",", ":"), ensure_ascii=False,
                      default=str, sort_keys=sort_keys)  # fmt: skip
    return text if limit is None or len(text) <= limit else text[: limit - 1] + "…"


def message_dict(message: betterproto2.Message) -> dict[str, Any]:
    """A message as proto3 JSON with snake_case names, every field present, 64-bit integers as
    JSON numbers (proto3 JSON writes them as strings) and whole numbers as whole (a Struct's
    are doubles: 9, not 9.0)."""
    data = message.to_dict(casing=betterproto2.Casing.SNAKE, include_default_values=True)
    result: dict[str, Any] = restore_ints(_numbers(message, data))
    return result


def _numbers(message: Any, data: Any) -> Any:
    if isinstance(data, dict) and isinstance(message, betterproto2.Message):
        return {key: _numbers(getattr(message, key, None), value) for key, value in data.items()}
    if isinstance(data, list) and isinstance(message, list):
        return [_numbers(m, d) for m, d in zip(message, data, strict=False)]
    if isinstance(data, str) and _is_plain_int(message):
        return int(data)
    return data


def _is_plain_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and type(value) is int


def print_json(value: Any, *, indent: int | None = 2) -> None:
    if isinstance(value, betterproto2.Message):
        value = message_dict(value)
    print(json.dumps(value, indent=indent, ensure_ascii=False), flush=indent is None)


# The exit code the output being written reports (``reported``), if a command said one first.
_VERDICT: list[int] = [0]


def reported(code: int) -> int:
    """Note ``code`` as the verdict a command's output is about to report, and return it: a
    reader gone mid-output (``| head -1``) then ends the command with it, not 0 (a DENY whose
    reader closed early counted as a pass in a ``pipefail`` CI step)."""
    _VERDICT[0] = code
    return code


def verdict_reported() -> int:
    return _VERDICT[0]


def note(text: str) -> None:
    """A line for the person at the terminal (stderr: stdout stays the command's output)."""
    print(text, file=sys.stderr, flush=True)


def plain(text: str) -> str:
    """A docstring's line for a terminal: its reST literals (````x````) as Markdown's (```x```),
    as the README writes them."""
    return text.replace("``", "`")


# --- text a client stored, on a terminal ---------------------------------------------------------

_KEPT = "\n\t"  # control characters written as they are
# Unicode's control, format (a right-to-left override, a zero-width joiner), line and paragraph
# separator and surrogate categories: what a terminal may act on, or cannot show. Spaces
# (U+00A0, U+3000), private-use and unassigned characters are text.
_ESCAPED = frozenset(("Cc", "Cf", "Zl", "Zp", "Cs"))


class TerminalSafe(io.TextIOBase):
    """A text stream whose control and format characters (ESC, BEL, a carriage return, C1
    controls, a right-to-left override; newlines and tabs aside) are written as JSON escapes
    (``\\u001b``): what the CLI prints holds text any client stored — an event's project, a
    block's summary and output, a run's labels — and a stored ``"\\x1b]0;…\\x07\\x1b[2J"`` set
    the reader's window title and cleared the screen. The escape reads the same inside a JSON
    string, so a ``--json`` document stays one. The CLI's own controls (a progress line's
    ``\\r``) go through :meth:`write_control`."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self._stream = stream

    def write(self, text: str) -> int:
        if not text.isprintable() and not text.translate(_UNTOUCHED).isprintable():
            text = "".join(map(_safe, text))
        return self._stream.write(text)

    def write_control(self, text: str) -> int:
        """Write the CLI's own ``text`` as it is."""
        return self._stream.write(text)

    def flush(self) -> None:
        self._stream.flush()

    def fileno(self) -> int:
        return self._stream.fileno()

    def isatty(self) -> bool:
        return self._stream.isatty()

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._stream.encoding


_UNTOUCHED = dict.fromkeys(map(ord, _KEPT))


def _safe(char: str) -> str:
    if char.isprintable() or char in _KEPT or category(char) not in _ESCAPED:
        return char
    code = ord(char)
    if code > 0xFFFF:  # as JSON writes it: a surrogate pair
        code -= 0x10000
        return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
    return f"\\u{code:04x}"


def write_control(stream: TextIO, text: str) -> None:
    """The CLI's own control characters (a progress line's ``\\r``), not escaped."""
    if isinstance(stream, TerminalSafe):
        stream.write_control(text)
    else:
        stream.write(text)


class OutputFailed(Exception):
    """Writing the command's output failed (a full disk): not the daemon's doing, so no
    OSError for the client commands' "cannot reach the daemon" to take."""


class _WriteErrors(io.TextIOBase):
    """stdout, whose write errors (but a closed pipe's, which ``main`` takes as the reader's
    going) are :class:`OutputFailed`: ``foundry status > /dev/full`` said it could not reach
    the daemon, and ``foundry sql`` ended in a traceback."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self._stream = stream

    def write(self, text: str) -> int:
        with _output_failed():
            return self._stream.write(text)

    def flush(self) -> None:
        with _output_failed():
            self._stream.flush()

    def fileno(self) -> int:
        return self._stream.fileno()

    def isatty(self) -> bool:
        return self._stream.isatty()


@contextlib.contextmanager
def _output_failed() -> Iterator[None]:
    try:
        yield
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise OutputFailed(exc.strerror or str(exc)) from None


@contextlib.contextmanager
def terminal_safe(*, stdout: bool, guard: bool = True) -> Iterator[None]:
    """Escape what a command writes to stderr (it is for a person) and, if ``stdout``, to
    stdout, while the block runs; if ``guard``, stdout's write errors are :class:`OutputFailed`
    (argparse's own output, ``--help``, is not guarded: it drops a write error itself)."""
    saved = sys.stdout, sys.stderr
    sys.stderr = TerminalSafe(saved[1])
    guarded: TextIO = _WriteErrors(saved[0]) if guard else saved[0]  # type: ignore[assignment]
    sys.stdout = TerminalSafe(guarded) if stdout else guarded
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved
