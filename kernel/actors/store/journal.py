"""The store's append-only journal: a write is durable once it is here, before DuckDB has it.

``$FOUNDRY_HOME/journal/`` holds segment files named by the sequence number of their first record
(20 digits, ``00000000000000000001.journal``), each starting with an 8-byte header::

    b"FJNL"  u16 format version (1)  u16 reserved (0)        -- little-endian

then records, back to back::

    u32 payload length  u32 CRC-32 of (seq bytes + payload)  u64 seq   payload

A record is one group commit: its payload is the rows of every write in the group (but a run's
attestations, which a start makes again from the facts: ``TableWriter.journaled``)
(:func:`encode`). Sequence numbers are consecutive across segments. :meth:`Journal.append` writes a
record with one ``os.pwritev`` and makes it durable with one ``fdatasync``; only then is anything
told. A new segment is started once the current one passes ``segment_bytes`` (its file and the
directory entry made durable first), and older segments are deleted once DuckDB has every record
in them (:meth:`Journal.release`). The current segment stays when DuckDB has caught up with it:
deleting it would make the next append start a new file (its creation, header, zeros and
directory entry synced, then its space grown again from 64 KiB, each step a change of the file's
size whose sync waits for whatever else the filesystem commits — DuckDB's own writes: measured
0.3–57 ms each).

A segment's space is written ahead as zeros (64 KiB, then doubling up to 1 MiB at a time, made
durable with the file's size): an append overwrites zeros in place, so its ``fdatasync``
flushes the record's blocks alone — no change of the file's size to commit to the filesystem's
own journal, which other writers on the disk share (measured here: ~0.1 ms instead of ~0.2 ms).
The records end where the zeros begin: the rest of the segment is all zeros.

Recovery (:meth:`Journal.recover`) reads the segments in order and returns the records DuckDB
lacks. A record that fails its checksum at the very end of the last segment, within the file and
zeros after it, is a torn append: it was never acknowledged (the ack waits for the
``fdatasync``), so it is cut off and logged. A last segment that ends inside a record, by its
length, was cut or has that length damaged (an append writes into zeros written ahead and made
durable before it, and a length torn short reads less, not more). That, or a damaged record
anywhere else — in an older segment, or followed by an intact record, or a gap in the sequence,
or bytes other than zeros after an older segment's records — is corruption of acknowledged
data, and the journal refuses to open with one line
naming the file and byte (:class:`JournalCorrupt`) instead of skipping it.

The store appends on a thread of its own (``actors/threads.JobThread``), which hands each
outcome back through an eventfd the committing trio task waits on — or, for a small write
someone waits for, has its writer process (``journal_writer.py``) write and sync the record
that :meth:`~Journal.prepare` placed, then records it with :meth:`~Journal.appended`.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import io
import logging
import os
import pickle
import stat
import struct
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from foundry.kernel.errors import ConfigError

log = logging.getLogger("foundry.store")

MAGIC = b"FJNL"
VERSION = 1
SEGMENT_HEADER = struct.Struct("<4sHH")
RECORD_HEADER = struct.Struct("<IIQ")  # payload length, CRC-32, seq
SUFFIX = ".journal"
SEGMENT_BYTES = 64 << 20
# Zeros written ahead of the appends: a new segment gets PREALLOCATE_FIRST bytes (a daemon that
# writes little never fills more), then each step doubles the space, up to PREALLOCATE at a time.
PREALLOCATE_FIRST = 64 << 10
PREALLOCATE = 1 << 20

Rows = tuple[str, list[tuple[Any, ...]]]
"""One table's rows of a record: (table name, rows in its writer's column order)."""


class JournalCorrupt(ConfigError):
    """Acknowledged data in the journal is damaged: the daemon does not start over it."""


@dataclass(frozen=True, slots=True)
class Recovered:
    seq: int
    tables: tuple[Rows, ...]


@dataclass(frozen=True, slots=True)
class PreparedAppend:
    """The next record, to be written by someone else (``journal_writer.py``): its bytes go to
    ``offset`` of the segment open as ``fd`` (``segment``: which one, counting from 1)."""

    seq: int
    offset: int
    header: bytes
    payload: bytes
    fd: int
    segment: int


def encode(tables: Sequence[Rows]) -> bytes:
    """A record's payload: pickle (protocol 5) of ``[(table, rows), ...]``. Rows hold only str,
    int, float, bool, None, bytes, lists of those and datetimes (an aware one in UTC, as a
    ``datetime.timezone``); :func:`decode` refuses anything else, so a journal file cannot make
    the daemon build arbitrary objects."""
    buffer = io.BytesIO()
    _RowsPickler(buffer, protocol=5).dump(list(tables))
    return buffer.getvalue()


# ``datetime.UTC`` as ``timezone.__reduce_ex__`` gives it, without the generic reduction's call of
# ``copyreg._slotnames`` (Python, once a record: a static type cannot cache its answer) — the
# same bytes.
_UTC_REDUCED = (datetime.timezone, (datetime.timedelta(0),))


class _RowsPickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        """A datetime read back from DuckDB carries a ``zoneinfo.ZoneInfo``, which pickles
        through ``getattr``: store the same instant with ``datetime.timezone.utc``. (Only called
        for objects that are not plain ints, strs, lists, ...: cheap.)"""
        if obj is datetime.UTC:
            return _UTC_REDUCED
        zone = obj.tzinfo if type(obj) is datetime.datetime else None
        if zone is not None and type(zone) is not datetime.timezone:
            return obj.astimezone(datetime.UTC).__reduce_ex__(5)
        return NotImplemented


class _RowsUnpickler(pickle.Unpickler):
    ALLOWED = {("datetime", "datetime"), ("datetime", "timezone"), ("datetime", "timedelta")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return getattr(datetime, name)
        raise pickle.UnpicklingError(f"a journal record may not hold {module}.{name}")


def decode(payload: bytes) -> tuple[Rows, ...]:
    return tuple((table, rows) for table, rows in _RowsUnpickler(io.BytesIO(payload)).load())


def _segment_name(first_seq: int) -> str:
    return f"{first_seq:020d}{SUFFIX}"


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Journal:
    """The store appends from its commit thread and releases from its materializer's: a lock
    keeps a release from closing the segment under an append."""

    def __init__(self, directory: Path, *, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.directory = directory
        self._segment_bytes = segment_bytes
        self._segments: list[int] = []  # first seq of each segment on disk, oldest first
        self._fd = -1
        self._size = 0  # bytes of the current segment's header and records
        self._allocated = 0  # bytes of its file: the records, then zeros
        self.last_seq = 0  # of the last durable record
        self._generation = 0  # counts the segments opened for appending
        self._lock = threading.Lock()

    # --- recovery ---------------------------------------------------------------------------

    def recover(self, applied: int) -> list[Recovered]:
        """Open the journal; return, in order, the records after ``applied`` (what DuckDB has)."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        paths = sorted(self.directory.glob(f"*{SUFFIX}"))
        pending: list[Recovered] = []
        previous = applied if not paths else self._first_seq(paths[0]) - 1
        if previous > applied:
            raise JournalCorrupt(
                f"{paths[0]}: the journal starts at record {previous + 1}, but the database has "
                f"only up to {applied}; records {applied + 1}..{previous} are missing"
            )
        tail: tuple[list[int], int] | None = None
        for index, path in enumerate(paths):
            first = self._first_seq(path)
            if first != previous + 1 and max(first - 1, previous) > applied:
                raise JournalCorrupt(
                    f"{path}: starts at record {first}, but the segment before it ends at "
                    f"{previous}; the journal is missing records"
                )
            tail = self._scan(path, first, last=index == len(paths) - 1, applied=applied,
                              into=pending)  # fmt: skip
            previous = tail[0][-1] if tail and tail[0] else first - 1
        self.last_seq = max(applied, previous)
        self._segments = [self._first_seq(path) for path in paths]
        if paths:
            self._adopt_tail(paths[-1], tail)
        return pending

    def _adopt_tail(self, path: Path, scanned: tuple[list[int], int] | None) -> None:
        """Append to the last segment if it continues at ``last_seq``; else leave it be (it
        is deleted once applied) or, holding no record, delete it now."""
        seqs, end = scanned if scanned is not None else (None, 0)
        if seqs and seqs[-1] == self.last_seq:
            self._reopen(path, end)
        elif seqs is not None and not seqs and self._segments[-1] == self.last_seq + 1:
            self._reopen(path, end)  # created with its header, no record yet
        elif not seqs:
            path.unlink()
            self._segments.pop()

    @staticmethod
    def _first_seq(path: Path) -> int:
        try:
            return int(path.name.removesuffix(SUFFIX))
        except ValueError:
            raise JournalCorrupt(f"{path}: not a journal segment name") from None

    def _scan(
        self, path: Path, first: int, *, last: bool, applied: int, into: list[Recovered]
    ) -> tuple[list[int], int] | None:
        """Check one segment; collect its records after ``applied``; return their seqs and
        where they end (None: the last segment was created but its header never written). A
        torn tail of the last segment is truncated."""
        data = _read_segment(path)
        # (all zeros: a power loss kept the size it was given, not its header — synced first)
        if last and (len(data) < SEGMENT_HEADER.size or not data[0] and data.count(0) == len(data)):
            log.warning("journal: %s was created but never written; starting it again", path)
            return None
        magic, version, _ = SEGMENT_HEADER.unpack_from(data) if len(data) >= 8 else (b"", 0, 0)
        if magic != MAGIC:
            raise JournalCorrupt(f"{path}: not a Foundry journal segment (bad header)")
        if version != VERSION:
            raise JournalCorrupt(
                f"{path}: journal format version {version}; this Foundry reads {VERSION}"
            )
        offset, seqs = SEGMENT_HEADER.size, list[int]()
        written = _written_end(data)
        while offset < written:
            record = _record_at(data, offset)
            if record is None:
                expected = first + len(seqs)
                if last and not _intact_after(data, offset, expected):
                    if not _torn_append(data, offset):
                        raise JournalCorrupt(
                            f"{path}: the file ends inside the record at byte {offset}: it was "
                            "cut, or that record's length is damaged (an append never reaches "
                            "the end of the zeros written ahead of it), and acknowledged records "
                            "may be gone (restore the file, or move the journal aside to start "
                            "without it)"
                        )
                    self._truncate_torn(path, offset, data)
                    break
                raise JournalCorrupt(
                    f"{path}: the record at byte {offset} fails its checksum and is not the last "
                    "one written; acknowledged data is damaged (restore the file, or move the "
                    "journal aside to start without it)"
                )
            seq, payload, end = record
            if seq != first + len(seqs):
                raise JournalCorrupt(
                    f"{path}: the record at byte {offset} has seq {seq}, expected "
                    f"{first + len(seqs)}"
                )
            seqs.append(seq)
            if seq > applied:
                into.append(Recovered(seq, _decoded(path, offset, seq, payload)))
            offset = end
        return seqs, offset

    @staticmethod
    def _truncate_torn(path: Path, offset: int, data: bytes) -> None:
        log.warning(
            "journal: dropped %d bytes of a torn record at the end of %s (byte %d); it was "
            "never acknowledged",
            max(len(data.rstrip(b"\0")) - offset, 0),  # not the zeros written ahead
            path,
            offset,
        )
        with open(path, "r+b") as file:
            file.truncate(offset)
            os.fsync(file.fileno())

    def _reopen(self, path: Path, end: int) -> None:
        """Append to ``path`` from byte ``end`` (its records' end; zeros, if any, follow)."""
        self._fd = os.open(path, os.O_WRONLY)
        self._generation += 1
        self._size = end
        self._allocated = max(end, os.fstat(self._fd).st_size)

    # --- writing ----------------------------------------------------------------------------

    def append(self, payload: bytes) -> int:
        """Write one record and make it durable (one fdatasync); returns its seq."""
        with self._lock:
            return self._append(payload)

    def _append(self, payload: bytes) -> int:
        seq = self.last_seq + 1
        if self._fd < 0 or self._size >= self._segment_bytes:
            self._start_segment(seq)
        header = RECORD_HEADER.pack(len(payload), _checksum(seq, payload), seq)
        length = len(header) + len(payload)
        if self._size + length > self._allocated:
            self._preallocate(self._size + length)
        try:
            written = os.pwritev(self._fd, [header, payload], self._size)
            if written != length:
                raise OSError(f"short write to the journal ({written} bytes)")
            os.fdatasync(self._fd)
        except OSError:
            self._undo_partial_write(length)
            raise
        _still_linked(self._fd, self.directory)
        self._size += length
        self.last_seq = seq
        return seq

    def prepare(self, payload: bytes) -> PreparedAppend | None:
        """The next append, for another writer: None unless it fits the space written ahead
        in the current segment (no new segment, no zeros to write first) and no release is
        under way — then :meth:`append` it. Nothing changes until :meth:`appended`."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            length = RECORD_HEADER.size + len(payload)
            if self._fd < 0 or self._size >= self._segment_bytes:
                return None
            if self._size + length > self._allocated:
                return None
            seq = self.last_seq + 1
            header = RECORD_HEADER.pack(len(payload), _checksum(seq, payload), seq)
            return PreparedAppend(seq, self._size, header, payload, self._fd, self._generation)
        finally:
            self._lock.release()

    def appended(self, prepared: PreparedAppend) -> int:
        """``prepared`` is written and synced: it is the last record now; returns its seq.
        Without the lock (a release may hold it for a while, and this runs on the trio
        thread): only the one append in flight changes where appends go, and a release that
        reads the last seq a moment early keeps a segment a while longer."""
        if prepared.seq != self.last_seq + 1 or prepared.offset != self._size:
            raise RuntimeError(f"journal: record {prepared.seq} is not the next one")
        _still_linked(prepared.fd, self.directory)
        self._size += len(prepared.header) + len(prepared.payload)
        self.last_seq = prepared.seq
        return prepared.seq

    def _preallocate(self, needed: int) -> None:
        """Write zeros up to ``needed`` bytes and a step beyond, durably (the file's new size
        too): the appends into them change no metadata. On failure (disk full) the file is cut
        back to what it was."""
        step = min(PREALLOCATE, self._segment_bytes, max(PREALLOCATE_FIRST, self._allocated))
        target = needed + step
        try:
            _write_all(self._fd, bytes(target - self._allocated), self._allocated)
            os.fdatasync(self._fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._allocated)
            raise
        self._allocated = target

    def _undo_partial_write(self, length: int) -> None:
        """A failed append must not leave half a record before the next one: its bytes go back
        to zeros (the next append overwrites them anyway, from the same offset)."""
        try:
            _write_all(self._fd, bytes(length), self._size)
        except OSError:
            log.exception("journal: could not clear a failed append")

    def _start_segment(self, first_seq: int) -> None:
        self._close_segment()
        path = self.directory / _segment_name(first_seq)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        header = SEGMENT_HEADER.pack(MAGIC, VERSION, 0)
        allocated = len(header) + min(PREALLOCATE_FIRST, self._segment_bytes)
        try:
            _write_all(fd, header + bytes(allocated - len(header)), 0)
            os.fsync(fd)
            _fsync_directory(self.directory)  # the new file's name is durable too
        except OSError:
            # (a full disk) no record is in it: gone, so that the next append can make it again
            # — left, every later append failed on it (File exists) until a restart
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        self._fd, self._size, self._allocated = fd, SEGMENT_HEADER.size, allocated
        self._generation += 1
        self._segments.append(first_seq)

    def release(self, applied: int, *, keep_current: bool = True) -> int:
        """Delete segments whose records DuckDB has (``applied``), except the one appends go to
        (it stays, to be appended to) unless ``keep_current`` is False (at start and at a clean
        stop: the next append starts a new one); returns how many were deleted."""
        with self._lock:
            return self._release(applied, keep_current)

    def _release(self, applied: int, keep_current: bool) -> int:
        removed = 0
        while self._segments:
            following = self._segments[1] if len(self._segments) > 1 else self.last_seq + 1
            if following - 1 > applied:
                break
            if len(self._segments) == 1:
                if keep_current and self._fd >= 0:
                    break
                self._close_segment()
            (self.directory / _segment_name(self._segments.pop(0))).unlink(missing_ok=True)
            removed += 1
        return removed

    def close(self) -> None:
        with self._lock:
            self._close_segment()

    def _close_segment(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _decoded(path: Path, offset: int, seq: int, payload: bytes) -> tuple[Rows, ...]:
    try:
        return decode(payload)
    except Exception as exc:  # intact (its checksum holds) but not rows this Foundry reads
        raise JournalCorrupt(
            f"{path}: record {seq} at byte {offset} cannot be read ({type(exc).__name__}: "
            f"{exc}); move the journal aside to start without it"
        ) from None


def pending_records(directory: Path, applied: int) -> list[Recovered]:
    """The intact records after ``applied``, read only (no repair: for tools and tests). Read
    the journal before DuckDB's mark: a record applied meanwhile is then still counted once."""
    found: list[Recovered] = []
    for path in sorted(directory.glob(f"*{SUFFIX}")):
        try:
            data = _read_segment(path)
        except FileNotFoundError:  # deleted once applied
            continue
        offset = SEGMENT_HEADER.size
        while (record := _record_at(data, offset)) is not None:
            seq, payload, offset = record
            if seq > applied:
                found.append(Recovered(seq, decode(payload)))
    return found


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _still_linked(fd: int, directory: Path) -> None:
    """OSError unless the segment open as ``fd`` still has a name: one deleted under a running
    daemon (``rm -rf journal/``) took every append after it, acknowledged, into a file no start
    would read again."""
    if os.fstat(fd).st_nlink == 0:
        raise OSError(
            errno.ENOENT,
            f"the journal segment being written was deleted from {directory} under the "
            "running daemon: no write is acknowledged until it is restarted",
        )


def _read_segment(path: Path) -> bytes:
    """A segment's bytes; JournalCorrupt naming it when it is not a regular file (a FIFO put in
    its place blocked the start for good, saying nothing)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise JournalCorrupt(f"{path}: not a regular file; move it aside")
        with open(fd, "rb", closefd=False) as file:
            return file.read()
    finally:
        os.close(fd)


def _torn_append(data: bytes, offset: int) -> bool:
    """Whether the damaged last record at ``offset`` can be an append a crash cut short: an
    append writes into zeros written ahead and made durable, up to or past the end its header
    declares (a length torn short declares less), so the file goes on at least that far, its
    last bytes zeros. A file that ends sooner was cut (one that ended in a 0 byte passed for
    torn: acknowledged records were dropped as never acknowledged)."""
    whole_header = len(data) - offset >= RECORD_HEADER.size  # (its space was written ahead)
    return data[-1:] == b"\0" and whole_header and _declared_end(data, offset) <= len(data)


def _written_end(data: bytes) -> int:
    """Where the segment's zeros to its end begin: space written ahead, where the records end.
    (A record's header is never all zeros: its seq is at least 1.)"""
    return len(data.rstrip(b"\0"))


def _checksum(seq: int, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(seq.to_bytes(8, "little")))


# How many later seqs a damaged record's successors are looked for by: a torn tail has none.
SUCCESSORS_LOOKED_FOR = 16


def _intact_after(data: bytes, offset: int, seq: int) -> bool:
    """Whether an intact record follows the damaged one at ``offset`` (which should have held
    ``seq``): at its declared end, or anywhere after it with one of the next seqs — a damaged
    length field declares an end in the middle of nothing, and the records after it were
    acknowledged (the last append alone can be torn)."""
    if _record_at(data, _declared_end(data, offset)) is not None:
        return True
    for later in range(seq + 1, seq + 1 + SUCCESSORS_LOOKED_FOR):
        pattern = later.to_bytes(8, "little")
        found = data.find(pattern, offset + RECORD_HEADER.size)
        while found >= 0:
            record = _record_at(data, found - 8)  # the seq is a header's last 8 bytes
            if record is not None and record[0] == later:
                return True
            found = data.find(pattern, found + 1)
    return False


def _declared_end(data: bytes, offset: int) -> int:
    if len(data) - offset < RECORD_HEADER.size:
        return len(data)
    length: int = RECORD_HEADER.unpack_from(data, offset)[0]
    return offset + RECORD_HEADER.size + length


def _record_at(data: bytes, offset: int) -> tuple[int, bytes, int] | None:
    """(seq, payload, end) of an intact record at ``offset``, else None."""
    if len(data) - offset < RECORD_HEADER.size:
        return None
    length, crc, seq = RECORD_HEADER.unpack_from(data, offset)
    start = offset + RECORD_HEADER.size
    end = start + length
    if end > len(data):
        return None
    payload = data[start:end]
    if _checksum(seq, payload) != crc:
        return None
    return seq, payload, end
