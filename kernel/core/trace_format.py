"""The trace archivist's child process: writes the framed files it reads from stdin until EOF.

A frame carries a file's text, or a chain's trace rows (see ``render``) which the child turns into
the text itself: building the JSON is then done on the other core, not by the daemon's busy
interpreter (measured: 11-17% of the engine's throughput). Rows travel as ``marshal`` data —
tuples of strings, numbers and booleans, a few microseconds a chain to encode.

Standard library only, run as a script (not ``-m``), so it starts in milliseconds.
"""

from __future__ import annotations

import contextlib
import json
import marshal
import os
import re
import struct
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from json.encoder import encode_basestring, encode_basestring_ascii
from typing import Any, BinaryIO

from foundry.kernel.core.json_input import double_int
from foundry.kernel.errors import ResourceExhausted

_HEADER = struct.Struct(">BII")  # kind, path length, data length
TEXT, ROWS = 0, 1

# A chain's trace rows: (events, executions, total_ms, workflow_id, state, error), where
EventRow = tuple[Any, ...]  # id, event_type, project, occurred_at, recorded_at, throttle,
# trace_id (W3C), payload_json, parent_id, emitted_by, depth, throttled, span_id, parent_span_id
ExecutionRow = tuple[Any, ...]  # block_name, trigger_event_id, success, summary,
# emitted_event_ids, duration_ms, raw_output, exit_code (both None: it ran no command),
# trigger_payload_json,
# emitted_payload_jsons, audit_artifacts, state, throttled, attempts, started_at, completed_at,
# span_id, parent_span_id
TraceRows = tuple[tuple[EventRow, ...], tuple[ExecutionRow, ...], int, str, str, str]


def text_bytes(trace: TraceRows) -> int:
    """What a chain's trace rows hold of payloads and block texts."""
    events, executions = trace[0], trace[1]
    return sum(len(e[7]) for e in events) + sum(len(x[3]) + len(x[6] or "") for x in executions)


def frame(path: str, trace: str | TraceRows) -> bytes:
    """One file for the archivist: its path, and its text or its chain's trace rows."""
    encoded_path = path.encode()
    kind, data = (TEXT, trace.encode()) if isinstance(trace, str) else (ROWS, marshal.dumps(trace))
    return _HEADER.pack(kind, len(encoded_path), len(data)) + encoded_path + data


def frames(blob: bytes) -> Iterable[tuple[str, bytes]]:
    """The files in a blob of frames: path and contents."""
    for kind, path, data in _framed(blob):
        yield path.decode(), _contents(kind, data)


def framed_rows(blob: bytes) -> Iterable[TraceRows | None]:
    """Each frame's trace rows, None for a file framed as text (OpenTelemetry export reads the
    archivist's frames: the rows are marshalled already)."""
    for kind, _, data in _framed(blob):
        yield marshal.loads(data) if kind == ROWS else None


def _framed(blob: bytes) -> Iterable[tuple[int, bytes, bytes]]:
    offset = 0
    while offset < len(blob):
        kind, path_length, data_length = _HEADER.unpack_from(blob, offset)
        offset += _HEADER.size
        path = blob[offset : offset + path_length]
        offset += path_length
        yield kind, path, blob[offset : offset + data_length]
        offset += data_length


def _contents(kind: int, data: bytes) -> bytes:
    return data if kind == TEXT else render(marshal.loads(data)).encode()


# The largest trace Trace answers, as JSON: a 5,000-event fan-out of 20 KB payloads made a
# 305 MB reply, 1 GB of memory and 14 s during which no other call was answered. Its events are
# in ListEvents (paged) and in SQL.
MAX_TRACE_BYTES = 24 * 1024 * 1024


def check_trace_size(size: int, event_id: str) -> None:
    """ResourceExhausted for a trace of ``size`` bytes of JSON, past :data:`MAX_TRACE_BYTES`."""
    if size > MAX_TRACE_BYTES:
        raise ResourceExhausted(
            f"the trace of {event_id} is {size:,} bytes of JSON, over the {MAX_TRACE_BYTES:,} "
            "Trace answers; read its events with ListEvents (workflow_id) or SQL (foundry sql)"
        )


def render(rows: TraceRows) -> str:
    """A chain's trace file, ``{events, block_executions, total_duration_ms, ...}``, as JSON text
    built straight from its rows (payloads are JSON already: they are not encoded again)."""
    events, executions, total_ms, workflow_id, state, error = rows
    return (
        f'{{"events":[{",".join(map(_event, events))}],'
        f'"block_executions":[{",".join(map(_execution, executions))}],'
        f'"total_duration_ms":{total_ms},"workflow_id":"{workflow_id}","state":"{state}",'
        f'"error":{_text(error)}}}'
    )


def _event(row: EventRow) -> str:
    (id_, type_, project, occurred, recorded, throttle, trace_id, payload, parent, by, depth,
     held, span_id, parent_span) = row  # fmt: skip
    return (
        f'{{"id":"{id_}","event_type":{_text(type_)},"project":{_text(project)},'
        f'"occurred_at":"{zulu(occurred)}","recorded_at":"{zulu(recorded)}","throttle":"{throttle}",'
        f'"trace_id":"{trace_id}","span_id":"{span_id}","payload":{payload},'
        f'"parent_id":{_optional(parent)},"emitted_by":{_optional(by)},"depth":{depth},'
        f'"throttled":{_TRUTH[held]},"parent_span_id":{_optional(parent_span)}}}'
    )


def _execution(row: ExecutionRow) -> str:
    (name, trigger, success, summary, emitted_ids, duration_ms, raw_output, exit_code,
     trigger_payload, emitted_payloads, artifacts, state, throttled, attempts, started,
     completed, span_id, parent_span) = row  # fmt: skip
    ids = ",".join(f'"{i}"' for i in emitted_ids)
    return (
        f'{{"block_name":{_text(name)},"trigger_event_id":"{trigger}",'
        f'"success":{_TRUTH[success]},"summary":{_text(summary)},'
        f'"emitted_event_ids":[{ids}],"duration_ms":{duration_ms},'
        f'"raw_output":{_NULL if raw_output is None else _text(raw_output)},'
        f'"exit_code":{_NULL if exit_code is None else exit_code},'
        f'"trigger_payload":{trigger_payload},"emitted_payloads":[{",".join(emitted_payloads)}],'
        f'"audit_artifacts":[{",".join(map(_text, artifacts))}],"state":"{state}",'
        f'"throttled":{_TRUTH[throttled]},"attempts":{attempts},"started_at":"{zulu(started)}",'
        f'"completed_at":"{zulu(completed)}","span_id":"{span_id}",'
        f'"parent_span_id":"{parent_span}"}}'
    )


def zulu(stamp: str) -> str:
    """A UTC time as upstream's trace files write it: ``…Z``, where our stamps (and the text an
    event id hashes) end ``+00:00`` — the same digits either way (chrono's AutoSi)."""
    return stamp[:-6] + "Z" if stamp.endswith("+00:00") else stamp


def id_stamp(stamp: str) -> str:
    """A trace file's time in the form an event id hashes (chrono's AutoSi in UTC, ``+00:00``):
    :func:`zulu` undone, and a fraction written otherwise (``.1``, ``.000``, ``.123000``,
    ``.1234567``: JavaScript's ``toISOString`` writes ``.000Z``) given 0, 3, 6 or 9 digits as
    chrono would. A time at another offset (RFC 3339 allows it, a lowercase ``t`` or ``z``
    too, and a space for the ``T``) is that instant in UTC, its digits kept; a leap second
    (``:60``) stays one. Text that is no RFC 3339 time makes the file unreadable."""
    found = _RFC3339.fullmatch(stamp)
    if found is None:
        raise Unreadable(f"not an RFC 3339 time: {stamp[:40]!r}")
    date, minute, second, fraction, offset = found.groups()
    leap = second == "60"
    utc_offset = "+00:00" if offset in ("Z", "z") else offset
    try:  # a month 13, a 30 February, an offset of 24 hours
        moment = datetime.fromisoformat(f"{date}T{minute}:{'59' if leap else second}{utc_offset}")
    except ValueError:
        raise Unreadable(f"not a time: {stamp[:40]!r}") from None
    if utc_offset != "+00:00":
        try:
            moment = moment.astimezone(UTC)
        except OverflowError:  # before year 1 in UTC
            raise Unreadable(f"not a time: {stamp[:40]!r}") from None
    nanos = int(fraction[:9].ljust(9, "0")) if fraction else 0
    return _auto_si(moment.isoformat()[:17] + ("60" if leap else second), nanos)


def _auto_si(second: str, nanos: int) -> str:
    if nanos == 0:
        digits = ""
    elif nanos % 1_000_000 == 0:
        digits = f".{nanos // 1_000_000:03d}"
    elif nanos % 1_000 == 0:
        digits = f".{nanos // 1_000:06d}"
    else:
        digits = f".{nanos:09d}"
    return f"{second}{digits}+00:00"


_RFC3339 = re.compile(
    r"([0-9]{4}-[0-9]{2}-[0-9]{2})[Tt ]([0-9]{2}:[0-9]{2}):([0-9]{2})(?:\.([0-9]{1,12}))?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})",
    re.ASCII,
)


_TRUTH = {True: "true", False: "false"}
_NULL = "null"  # raw_output and exit_code of a block that ran no command, as upstream writes them


def _text(text: str) -> str:
    """A JSON string literal as upstream's serde_json writes it: UTF-8 as it is (a CJK output
    escaped took 6 bytes a character, not 3), control characters escaped. A lone surrogate (a
    block's own summary can hold one; UTF-8 cannot) is escaped too, ``\\udcff``."""
    if text.isascii() or _SURROGATE.search(text) is None:
        return encode_basestring(text)
    return encode_basestring_ascii(text)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _optional(text: str) -> str:
    return _text(text) if text else "null"


# --- reading: ours and the public Foundry daemon's --------------------------------------------

THROTTLES = frozenset({"full", "audit_only", "dry_run"})


class Unreadable(ValueError):
    """A trace document that is not a trace (corrupt, torn, or wrong-typed)."""


def parse(data: bytes | str) -> dict[str, Any] | None:
    """A trace file's document, as written (memory and disk answer alike), once :func:`readable`
    accepts it; None when it is not a trace (the caller reads the database instead). Never
    raises for any content."""
    try:
        document = json.loads(data, parse_constant=_not_json, parse_int=double_int)
        # What the response could not carry: NaN, lone surrogates, nesting the encoder refuses.
        json.dumps(document, ensure_ascii=False, allow_nan=False).encode()
        readable(document)
    # not JSON, not UTF-8, too deep, a number no double holds, or not a trace
    except (ValueError, RecursionError, OverflowError):
        return None
    return dict(document)


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def readable(document: Any) -> dict[str, Any]:
    """A trace document — ours, or one the public Foundry daemon wrote (``null`` raw output and
    exit code for a block that ran no command, ``Z`` timestamps, pretty-printed, without our extra
    keys, with keys we do not know) — with every field the Trace RPC reads present and typed:
    ``None`` raw output and exit code become ``""`` and 0, missing extra keys their defaults, an
    event's times the ``+00:00`` form its id hashed (:func:`id_stamp`).
    Raises :class:`Unreadable` naming what is wrong."""
    if not isinstance(document, dict):
        raise Unreadable("a trace is a JSON object")
    clean = dict(document)
    clean["events"] = [_event_in(e) for e in _list(document, "events")]
    clean["block_executions"] = [_execution_in(x) for x in _list(document, "block_executions")]
    total = document.get("total_duration_ms", 0)
    clean["total_duration_ms"] = _whole(total, "total_duration_ms") if total is not None else 0
    return clean


def _event_in(event: Any) -> dict[str, Any]:
    if not isinstance(event, dict):
        raise Unreadable("events: each is an object")
    clean = dict(event)
    for key in ("id", "event_type", "project", "occurred_at"):
        clean[key] = _str(event, key)
    for key in ("recorded_at", "trace_id", "span_id", "parent_span_id"):
        clean[key] = _str(event, key, default="")
    # shown as the event's id hashed it, whoever wrote the file (ours and upstream's say Z)
    clean["occurred_at"] = id_stamp(clean["occurred_at"])
    clean["recorded_at"] = id_stamp(clean["recorded_at"]) if clean["recorded_at"] else ""
    if event.get("throttle", "full") not in THROTTLES:
        raise Unreadable(f"throttle: unknown value {str(event.get('throttle'))[:40]!r}")
    clean["throttle"] = event.get("throttle", "full")
    clean["payload"] = event.get("payload", {})
    clean["throttled"] = _bool(event, "throttled", default=False)
    return clean


def _execution_in(execution: Any) -> dict[str, Any]:
    if not isinstance(execution, dict):
        raise Unreadable("block_executions: each is an object")
    clean = dict(execution)
    for key in ("block_name", "trigger_event_id"):
        clean[key] = _str(execution, key)
    for key in ("summary", "raw_output", "state", "span_id", "parent_span_id"):
        clean[key] = _str(execution, key, default="")
    clean["success"] = _bool(execution, "success", default=False)
    clean["throttled"] = _bool(execution, "throttled", default=False)
    clean["duration_ms"] = _whole(execution.get("duration_ms") or 0, "duration_ms")
    exit_code = _whole(execution.get("exit_code") or 0, "exit_code", low=-(2**31))
    clean["exit_code"] = exit_code if exit_code < 2**31 else -1
    clean["attempts"] = _whole(execution.get("attempts", 1), "attempts")
    clean["emitted_event_ids"] = _strings(execution, "emitted_event_ids")
    clean["audit_artifacts"] = _strings(execution, "audit_artifacts")
    clean["trigger_payload"] = execution.get("trigger_payload", {})
    clean["emitted_payloads"] = _list(execution, "emitted_payloads", required=False)
    return clean


def _list(document: dict[str, Any], key: str, *, required: bool = True) -> list[Any]:
    value = document.get(key, None if required else [])
    if value is None and not required:
        return []
    if not isinstance(value, list):
        raise Unreadable(f"{key}: must be a list")
    return value


def _str(document: dict[str, Any], key: str, *, default: str | None = None) -> str:
    """A text field; ``null`` or missing is ``default`` (an error when there is none)."""
    value = document.get(key)
    if value is None and default is not None:
        return default
    if not isinstance(value, str):
        raise Unreadable(f"{key}: must be a string")
    return value


def _strings(document: dict[str, Any], key: str) -> list[str]:
    values = _list(document, key, required=False)
    if not all(isinstance(v, str) for v in values):
        raise Unreadable(f"{key}: must be a list of strings")
    return values


def _bool(document: dict[str, Any], key: str, *, default: bool) -> bool:
    value = document.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise Unreadable(f"{key}: must be true or false")
    return value


def _whole(value: Any, key: str, *, low: int = 0) -> int:
    """A whole number (``3`` or ``3.0``) that fits an int64 field."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Unreadable(f"{key}: must be a number")
    if isinstance(value, float) and not value.is_integer():
        raise Unreadable(f"{key}: must be a whole number")
    if not low <= value < 2**63:
        raise Unreadable(f"{key}: out of range")
    return int(value)


class FileWriter:
    """Writes each file in place, making each folder once (and again, should it be removed).

    Not through a temporary file and a rename: on ext4 that rename costs 6x the write (280 vs
    47 µs measured). Trace answers a recent workflow's small trace from memory; a part-written
    file (a large trace being written, or one torn by a crash) is no trace to :func:`parse`, and
    Trace reads the database instead.
    """

    def __init__(self) -> None:
        self._folders: set[str] = set()

    def write(self, path: str, data: bytes) -> None:
        folder = os.path.dirname(path)
        if folder not in self._folders:
            os.makedirs(folder, exist_ok=True)
            self._folders.add(folder)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except FileNotFoundError:  # its folder removed since (retention empties old days)
            os.makedirs(folder, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)

    def write_all(self, blob: bytes) -> None:
        for path, data in frames(blob):
            self.write(path, data)


def _serve(stream: BinaryIO) -> None:
    """The trace-file writer process: write each framed file it is sent. A file it cannot write
    (a full disk) is left unwritten — the database holds the trace, and Trace reads it there —
    where the process died, its traceback raw in the daemon's log (not a line of its format)."""
    writer = FileWriter()
    while header := stream.read(_HEADER.size):
        kind, path_length, data_length = _HEADER.unpack(header)
        path = stream.read(path_length).decode()
        data = stream.read(data_length)
        with contextlib.suppress(OSError):
            writer.write(path, _contents(kind, data))


if __name__ == "__main__":
    _serve(sys.stdin.buffer)
