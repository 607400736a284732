"""Child processes of blocks and of the daemon: each in a session (and process group) of its own.

A terminal's Ctrl-C goes to its foreground process group. Were a block's command in the daemon's
group, it would die of the SIGINT meant for the daemon (``sh exited with -2``) before the daemon
could drain. In a session of its own, only the daemon is signalled, and the daemon decides: a
child is cancelled (step cancelled, timeout, shutdown past its grace) by signalling its whole
group, so what the command started dies with it.

A daemon killed outright (``kill -9``, the OOM killer) signals nothing: its commands' groups ran
on, and the next start leased their steps again — a mutator's command ran twice at once, the
killed daemon's attempt beside the new one, and CancelRun reached only the new one. So each
running command is recorded in a folder of the home (:func:`commands_recorded_in`: a file per
group, named by its id, holding the boot and the leader's start time), and a start kills the
groups the last daemon left there before anything is leased again (:func:`stop_left_behind`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import stat
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import trio

__all__ = [
    "KILL_AFTER", "MAX_OUTPUT", "Capture", "commands_recorded_in", "run_capturing",
    "stop_left_behind", "stop_process_group",
]  # fmt: skip

log = logging.getLogger("foundry.blocks")

KILL_AFTER = 5.0  # seconds between SIGTERM and SIGKILL to a cancelled child's group
# A command's output kept in memory, at most: its first bytes, then (past them) its last
# ``OUTPUT_TAIL``. ``trio.run_process`` kept it all: a command that wrote for its whole timeout
# (``yes``, a ``seq`` a payload sized) took the daemon's memory.
MAX_OUTPUT = 16 * 1024 * 1024
OUTPUT_TAIL = 64 * 1024
READ_BYTES = 64 * 1024


async def run_capturing(
    argv: Sequence[str],
    *,
    stdin: bytes,
    limit: int = MAX_OUTPUT,
    capture: Capture | None = None,
    stdout: Capture | None = None,
    stderr: Capture | None = None,
    **options: Any,
) -> tuple[int, bytes]:
    """Run ``argv`` in a process group of its own, stdout and stderr together; its exit code
    and output (:class:`Capture`: at most ``limit`` bytes kept). A cancel stops the group
    (:func:`stop_process_group`) — even once the command itself has exited, when what it
    started still holds its output open (``sh -c "sleep 300 & echo started"``: trio delivers a
    cancel only while it waits for the command, and the sleep ran on). ``capture`` (if given)
    fills as the output comes, and holds the exit code once the command is reaped: after a
    cancel (a block's timeout) it still has what the command wrote until then. ``stdout``
    and ``stderr`` (if given) get each alone as well: the two are read from pipes of their own
    then, each piece into the output as it comes (two written at once in either order)."""
    process: trio.Process | None = None
    record: str | None = None  # (forgotten once the command is reaped, not when its output ends)
    capture = capture if capture is not None else Capture(limit)
    try:
        async with trio.open_nursery() as nursery:
            process = await nursery.start(functools.partial(
                trio.run_process, list(argv), stdin=stdin, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT if stdout is stderr is None else subprocess.PIPE,
                check=False,
                start_new_session=True, deliver_cancel=stop_process_group, **options,
            ))  # fmt: skip
            capture.started = True
            record = _record(process.pid)
            assert process.stdout is not None
            if process.stderr is not None:
                nursery.start_soon(capture.read, process.stderr, stderr)
            await capture.read(process.stdout, stdout)
    except BaseException as exc:
        if process is not None:
            _signal_group(process.pid, signal.SIGKILL)  # what is left of it
            capture.returncode = process.returncode
        sole = _sole(exc)
        try:
            if sole is not exc:
                raise sole from None  # the nursery's group of one: FileNotFoundError, as before
            raise
        finally:
            del sole  # (its traceback holds this frame: a cycle only a full collection frees)
    finally:
        _forget(record)
        if process is not None:
            _close_pipes(process)
    assert process.returncode is not None
    capture.returncode = process.returncode
    return process.returncode, capture.output()


def _close_pipes(process: trio.Process) -> None:
    """Close the command's output pipes now: after a cancel (a block's timeout, CancelRun)
    they stayed open until a full garbage collection freed the frame holding them — which an
    idle daemon never ran (2 descriptors a cancelled step: 1,000 cancels, 2,000 open pipes)."""
    for pipe in (process.stdout, process.stderr):
        if pipe is not None:
            with contextlib.suppress(OSError, trio.ClosedResourceError):
                pipe.close()  # type: ignore[attr-defined]


# --- commands a killed daemon left running ------------------------------------------------------

_RECORDED_IN: list[Path] = []  # the folder of the daemon's running commands, while it runs


@contextlib.contextmanager
def commands_recorded_in(folder: Path) -> Iterator[None]:
    """Stop what the last daemon on this home left running (:func:`stop_left_behind`), then
    record each command this one runs in ``folder`` for as long as the block lasts. Only one
    daemon holds a home (its lock), so every group recorded there at a start is a dead one's."""
    folder.mkdir(mode=0o700, exist_ok=True)
    stop_left_behind(folder)
    _RECORDED_IN.append(folder)
    try:
        yield
    finally:
        _RECORDED_IN.remove(folder)


def stop_left_behind(folder: Path) -> int:
    """SIGKILL each command group recorded in ``folder`` that still runs, forget every record;
    how many groups were killed. A group is the recorded one if its leader runs with the
    recorded start time, or (the leader gone) if members of it still run: Linux hands out no
    pid that is a live group's id, so its id cannot have been reused meanwhile. A record of
    another boot or pid namespace, of the daemon's own group, or whose id a new process holds
    now, is forgotten untouched."""
    boot, killed = _boot_id(), []
    for record in sorted(folder.iterdir()):
        pgid, recorded_boot, started = _read_record(record)
        with contextlib.suppress(OSError):
            record.unlink()
        if pgid <= 1 or not _this_boot(recorded_boot, boot) or pgid == os.getpgrp():
            continue  # (a command that exec'd a daemon on this home: that is us now)
        leader = _start_time(pgid)
        if leader is not None and leader != started:
            continue  # the id is another process's now
        if not _runs_in_group(pgid):  # exited, maybe not reaped yet: it ran to its end
            continue  # (it was said to be killed, its step "run again" after it had finished)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
            killed.append(pgid)
    if killed:
        log.warning("killed %d command(s) the last daemon left running when it was killed "
                    "(process groups %s): their steps run again", len(killed),
                    ", ".join(map(str, killed)))  # fmt: skip
    return len(killed)


RECORD_BYTES = 256  # a record's size, at most: what is larger is not one


def _read_record(record: Path) -> tuple[int, str, str]:
    """(group id, boot id, leader's start time) of a record; (0, "", "") for anything else (a
    folder, a FIFO: not waited on, a link: not followed, a large file: not read whole)."""
    try:
        fd = os.open(record, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return 0, "", ""
            boot, started = os.read(fd, RECORD_BYTES + 1).decode().split()
        finally:
            os.close(fd)
        return int(record.name), boot, started
    except (OSError, ValueError):
        return 0, "", ""


def _record(pid: int) -> str | None:
    """Record a command's group (its pid is the group's id) in the daemon's folder, if any:
    ~30 µs of the trio thread a command (os calls; pathlib's took twice that)."""
    if not _RECORDED_IN:
        return None
    record = f"{_RECORDED_IN[-1]}/{pid}"
    # Written under another name, then renamed: a daemon killed between the file's creation
    # and its write left an empty record, which the next start could not read, and the
    # command ran on beside its step's next attempt. (A start drops a stray ``.new``.)
    written = f"{record}.new"
    try:
        fd = os.open(written, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, f"{_boot_id() or '-'} {_start_time(pid) or '-'}\n".encode())
        finally:
            os.close(fd)
        os.rename(written, record)
    except OSError as exc:  # a full disk: the command runs, unrecorded
        log.warning("could not record command %d in %s: %s", pid, _RECORDED_IN[-1], exc)
        return None
    return record


def _forget(record: str | None) -> None:
    if record is not None:
        with contextlib.suppress(OSError):
            os.unlink(record)


def _this_boot(recorded: str, boot: str) -> bool:
    """Whether a record's boot is this one: its boot id and pid namespace, or (a record of a
    daemon of before 12627bc, its boot id alone) its boot id — the leader's start time still
    has to match. Such records were forgotten untouched: an upgrade left a killed daemon's
    mutator command running beside the step's next attempt."""
    if not boot:
        return False
    return recorded == boot or ("/" not in recorded and recorded == boot.split("/", 1)[0])


@functools.cache  # (neither changes while the daemon runs; read once, not per command)
def _boot_id() -> str:
    """This boot's id and pid namespace (Linux: the host and its containers share the boot's,
    and a group id means something only in its namespace); "" where there is none: then
    nothing is ever killed."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return ""


def _runs_in_group(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (one that exited and waits to be reaped,
    a zombie, does not)."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as file:
                line = file.read()
        except OSError:  # (it ended meanwhile)
            continue
        fields = line[line.rindex(")") + 2 :].split()  # state, ppid, pgrp, …
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return True
    return False


def _start_time(pid: int) -> str | None:
    """A process's start time (clock ticks after boot, /proc/PID/stat's 22nd field), None when
    no such process runs."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            line = file.read()
    except OSError:
        return None
    fields = line[line.rindex(")") + 2 :].split()  # (the name may hold spaces and parentheses)
    return fields[19] if len(fields) > 19 else None


def _sole(exc: BaseException) -> BaseException:
    """The one exception a nursery's group holds, when it is not a cancellation (cancel scopes
    take groups of those), else ``exc`` itself."""
    if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        inner: BaseException = exc.exceptions[0]
        if not isinstance(inner, trio.Cancelled | BaseExceptionGroup):
            return inner
    return exc


class Capture:
    """A command's output as it comes: all of it up to ``limit`` bytes; past them, its first
    ``limit - OUTPUT_TAIL`` bytes, a line saying how many were dropped, and its last
    ``OUTPUT_TAIL`` (read and dropped as they come, so that the command can go on to its end).
    Readable at any time: a command cancelled part way (its block's timeout) keeps what it
    wrote until then, which is what its trace needs most."""

    def __init__(self, limit: int = MAX_OUTPUT) -> None:
        self.limit = limit
        self.started = False  # the command was started (its program found and run)
        self.returncode: int | None = None  # once it is reaped
        self._head, self._tail, self._total = bytearray(), bytearray(), 0

    async def read(self, stream: trio.abc.ReceiveStream, also: Capture | None = None) -> None:
        """Keep ``stream``'s bytes, to its end (and give them to ``also`` too)."""
        while chunk := await stream.receive_some(READ_BYTES):
            self.keep(chunk)
            if also is not None:
                also.keep(chunk)

    def keep(self, chunk: bytes | bytearray) -> None:
        keep_head = max(self.limit - OUTPUT_TAIL, 0)
        head, tail = self._head, self._tail
        self._total += len(chunk)
        if self._total <= self.limit:
            head += chunk
            return
        if len(head) > keep_head:  # just went past the limit: the head's end starts the tail
            tail += head[keep_head:]
            del head[keep_head:]
        tail += chunk
        if len(tail) > OUTPUT_TAIL:
            del tail[: len(tail) - OUTPUT_TAIL]

    def output(self) -> bytes:
        """What was kept, so far."""
        if self._total <= self.limit:
            return bytes(self._head)
        dropped = self._total - len(self._head) - len(self._tail)
        note = f"\n[foundry: {dropped:,} bytes of output dropped: kept {self.limit:,} at most]\n"
        return bytes(self._head) + note.encode() + bytes(self._tail)


async def read_kept(stream: trio.abc.ReceiveStream, limit: int) -> bytes:
    """All of ``stream``, as :class:`Capture` keeps it."""
    capture = Capture(limit)
    await capture.read(stream)
    return capture.output()


async def stop_process_group(process: trio.Process) -> None:
    """``trio.run_process``'s ``deliver_cancel`` for a child started with
    ``start_new_session=True`` (its pid is its group's id): SIGTERM to the group, then SIGKILL to
    what is left of it after :data:`KILL_AFTER` seconds."""
    _signal_group(process.pid, signal.SIGTERM)
    with trio.move_on_after(KILL_AFTER):
        await process.wait()
    _signal_group(process.pid, signal.SIGKILL)  # the child's own children, too


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone already
        os.killpg(pgid, sig)
