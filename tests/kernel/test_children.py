"""A block's command: its output kept within a bound, its failures as they were."""

from __future__ import annotations

import contextlib
import gc
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing
from foundry.kernel.blocks.children import (
    OUTPUT_TAIL,
    Capture,
    _boot_id,
    _start_time,
    commands_recorded_in,
    read_kept,
    run_capturing,
    stop_left_behind,
)

from tests.helpers import wait_until


async def _kept(data: bytes, limit: int) -> bytes:
    send, receive = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:

        async def write() -> None:
            for start in range(0, len(data), 10_000):
                await send.send_all(data[start : start + 10_000])
            await send.aclose()

        nursery.start_soon(write)
        return await read_kept(receive, limit)


async def test_output_within_the_limit_is_kept_whole():
    data = bytes(range(256)) * 1_000
    assert await _kept(data, len(data)) == data


async def test_past_the_limit_the_head_a_note_and_the_tail_are_kept():
    data = b"h" * 200_000 + b"m" * 500_000 + b"t" * OUTPUT_TAIL
    kept = await _kept(data, 300_000)
    head = 300_000 - OUTPUT_TAIL
    assert kept.startswith(b"h" * 200_000 + b"m" * (head - 200_000) + b"\n[foundry: ")
    assert kept.endswith(b" bytes of output dropped: kept 300,000 at most]\n" + b"t" * OUTPUT_TAIL)
    dropped = len(data) - head - OUTPUT_TAIL
    assert f"[foundry: {dropped:,} bytes of output dropped".encode() in kept


async def test_a_command_cut_short_keeps_what_it_wrote_and_how_it_ended():
    capture = Capture()
    script = "echo partial; echo err-partial 1>&2; exec sleep 30"
    with trio.move_on_after(1.0) as scope:  # as a block's timeout cancels its command
        await run_capturing(["sh", "-c", script], stdin=b"", capture=capture)
    assert scope.cancelled_caught
    assert capture.started
    assert capture.output() == b"partial\nerr-partial\n"
    assert capture.returncode == -15  # the SIGTERM its group was sent


async def test_a_program_that_cannot_start_leaves_its_capture_unstarted():
    capture = Capture()
    with pytest.raises(FileNotFoundError):
        await run_capturing(["/no/such/program"], stdin=b"", capture=capture)
    assert not capture.started
    assert capture.returncode is None


async def test_a_command_writing_past_the_limit_runs_to_its_end_within_it():
    script = "import sys; [sys.stdout.write('x' * 65536) for _ in range(400)]; print('done')"
    code, output = await run_capturing(
        [sys.executable, "-c", script], stdin=b"", limit=1_000_000
    )  # 26 MB written, ~1 MB kept
    assert code == 0
    assert len(output) < 1_100_000
    assert output.endswith(b"x" * 100 + b"done\n")


async def test_a_program_that_does_not_exist_raises_as_itself():
    # (the nursery's group of one is not what callers describe: "FileNotFoundError: ...")
    with pytest.raises(FileNotFoundError):
        await run_capturing(["/no/such/program"], stdin=b"")


async def test_stdin_larger_than_a_pipe_is_fed_while_the_output_is_read():
    data = b"y" * 3_000_000
    code, output = await run_capturing(["cat"], stdin=data)
    assert code == 0
    assert output == data


# --- commands a killed daemon left running --------------------------------------------------------


def _group(script: str, tmp_path: Path) -> subprocess.Popen[bytes]:
    """A process group of its own, as a block's command runs (its pid is the group's id), in a
    folder of the test's beside the records."""
    (tmp_path / "cwd").mkdir(exist_ok=True)
    return subprocess.Popen(["sh", "-c", script], start_new_session=True, cwd=tmp_path / "cwd")


def _gone(process: subprocess.Popen[bytes]) -> bool:
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        return False
    return True


def _members(pgid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (entry / "stat").read_text()
                fields = stat[stat.rindex(")") + 2 :].split()
                if int(fields[2]) == pgid and fields[0] not in "ZX":
                    found.append(int(entry.name))
    return found


async def test_a_running_command_is_recorded_in_the_folder_until_it_ends(tmp_path):
    folder, seen = tmp_path / "commands", []
    with commands_recorded_in(folder):
        # (the record is written once the command started: on a busy machine its ls ran first)
        wait = f"for i in $(seq 500); do [ -e {folder}/$$ ] && break; sleep 0.01; done"
        script = f"{wait}; ls {folder} > {tmp_path / 'seen'}; cat /proc/$$/stat"
        code, output = await run_capturing(["sh", "-c", script], stdin=b"")
        seen = (tmp_path / "seen").read_text().split()
        assert code == 0
        pid = int(output.split()[0])
        # its record, named by its group, while it ran — whole once it has that name (a daemon
        # killed between its creation and its write left an empty one, which no start read)
        assert seen == [str(pid)]
        assert list(folder.iterdir()) == []  # and gone once it ended
    assert folder.stat().st_mode & 0o777 == 0o700


def test_the_recorded_group_is_killed_and_its_record_forgotten(tmp_path):
    records = tmp_path / "records"
    records.mkdir()
    leader = _group("sleep 60 & wait", tmp_path)
    try:
        wait_until(lambda: len(_members(leader.pid)) == 2, what="the group's two processes")
        (records / str(leader.pid)).write_text(f"{_boot_id()} {_start_time(leader.pid)}\n")
        assert stop_left_behind(records) == 1
        assert _gone(leader)
        wait_until(lambda: _members(leader.pid) == [], what="the whole group gone")
        assert list(records.iterdir()) == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(leader.pid, 9)


def test_a_record_of_a_daemon_of_before_is_read_as_this_boots(tmp_path):
    # "BOOT START", with no pid namespace: an upgrade read it as another boot's and left the
    # killed daemon's command running beside the step's next attempt
    records = tmp_path / "records"
    records.mkdir()
    leader = _group("sleep 60 & wait", tmp_path)
    try:
        wait_until(lambda: len(_members(leader.pid)) == 2, what="the group's two processes")
        boot = _boot_id().partition("/")[0]
        (records / str(leader.pid)).write_text(f"{boot} {_start_time(leader.pid)}\n")
        (records / "2").write_text(f"not-{boot} 1\n")  # another boot's: forgotten untouched
        assert stop_left_behind(records) == 1
        assert _gone(leader)
        assert list(records.iterdir()) == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(leader.pid, 9)


def test_a_group_whose_leader_died_is_killed_by_its_members(tmp_path):
    records = tmp_path / "records"
    records.mkdir()
    leader = _group("sleep 60 & echo $! > member", tmp_path)
    try:
        leader.wait(5)  # the leader ends; its member runs on, in its group
        wait_until(lambda: _members(leader.pid), what="the member")
        (records / str(leader.pid)).write_text(f"{_boot_id()} 12345\n")
        assert stop_left_behind(records) == 1
        wait_until(lambda: _members(leader.pid) == [], what="the member killed")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(leader.pid, 9)


def test_a_recorded_group_that_exited_unreaped_is_not_said_killed(tmp_path):
    """A command that ran to its end just before the daemon was killed waited, a zombie, for
    init to reap it: the start said it killed it and that its step ran again."""
    records = tmp_path / "records"
    records.mkdir()
    leader = _group("true", tmp_path)  # its parent (this test) does not reap it yet
    try:
        wait_until(lambda: _members(leader.pid) == [], what="the command to exit, unreaped")
        (records / str(leader.pid)).write_text(f"{_boot_id()} {_start_time(leader.pid)}\n")
        assert stop_left_behind(records) == 0
        assert list(records.iterdir()) == []
    finally:
        leader.wait(5)


@pytest.mark.parametrize("record", ["another-boot {start}", "{boot} 1", "not a record", ""])
def test_a_record_of_another_boot_or_process_or_unreadable_kills_nothing(tmp_path, record):
    records = tmp_path / "records"
    records.mkdir()
    leader = _group("sleep 60", tmp_path)
    try:
        text = record.format(boot=_boot_id(), start=_start_time(leader.pid))
        (records / str(leader.pid)).write_text(text)
        assert stop_left_behind(records) == 0
        assert leader.poll() is None  # still running
        assert list(records.iterdir()) == []  # forgotten all the same
    finally:
        os.killpg(leader.pid, 9)  # (sh may have forked its sleep rather than exec'd it)
        leader.wait(5)


async def test_a_command_stays_recorded_after_its_output_ends_until_it_is_reaped(tmp_path):
    """``exec >log 2>&1``, common in scripts, ends the output at once: the record was dropped
    then, and a kill of the daemon left that command running, unrecorded."""
    folder = tmp_path / "commands"
    with commands_recorded_in(folder):
        async with trio.open_nursery() as nursery:
            script = "echo hi; exec >/dev/null 2>&1; sleep 1"
            nursery.start_soon(partial(run_capturing, ["sh", "-c", script], stdin=b""))
            await trio.sleep(0.5)
            assert len(list(folder.iterdir())) == 1
        assert list(folder.iterdir()) == []


def test_a_start_never_kills_its_own_group(tmp_path):
    """A mutator that restarts the daemon (``kill -9 $PPID; exec foundry serve``) leaves its
    record naming the group the new daemon runs in."""
    own = os.getpgrp()
    (tmp_path / str(own)).write_text(f"{_boot_id()} {_start_time(own)}\n")
    assert stop_left_behind(tmp_path) == 0
    assert list(tmp_path.iterdir()) == []


def test_a_record_names_the_boot_and_the_pid_namespace():
    boot, _, namespace = _boot_id().partition("/")
    assert boot == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert namespace == os.readlink("/proc/self/ns/pid")


def test_what_is_not_a_record_is_neither_waited_on_nor_read_whole(tmp_path):
    """A FIFO (a start waited on it for ever), a folder, a link, a large file, a name that is
    not a number: all skipped; the start goes on."""
    os.mkfifo(tmp_path / "123")
    (tmp_path / "456").mkdir()
    (tmp_path / "789").symlink_to("/proc/self/stat")
    (tmp_path / "1011").write_text(f"{_boot_id()} 1 " + "x" * 10_000_000)
    (tmp_path / "abc").write_text(f"{_boot_id()} 1\n")
    (tmp_path / "1").write_text(f"{_boot_id()} {_start_time(1)}\n")  # init: never
    assert stop_left_behind(tmp_path) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["456"]


def _open_pipes() -> int:
    fds = Path("/proc/self/fd")
    return sum(1 for fd in fds.iterdir() if _link(fd).startswith("pipe:"))


def _link(fd: Path) -> str:
    try:
        return os.readlink(fd)
    except OSError:  # the listing's own descriptor, closed meanwhile
        return ""


async def test_a_cancelled_commands_pipes_are_closed_at_once():
    """They stayed open until a full garbage collection freed the frame holding them (a
    cycle through the exception's traceback), which an idle daemon never ran: 2 descriptors a
    cancelled step, 2,000 after 1,000 cancels (a hunt). With no collection at all here."""
    before = _open_pipes()
    gc.disable()
    try:
        for _ in range(10):
            with trio.move_on_after(0.2):
                await run_capturing(["sh", "-c", "sleep 60"], stdin=b"")
        assert _open_pipes() == before
    finally:
        gc.enable()
