"""The journal's writer process (``journal_writer.py``, ``writer_process.py``): real child
processes writing real segment files; the store falling back to its journal thread."""

import dataclasses
import fcntl
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import trio
from foundry.kernel.actors.store import actor as store_actor
from foundry.kernel.actors.store import journal_writer
from foundry.kernel.actors.store.journal import (
    Journal,
    JournalCorrupt,
    PreparedAppend,
    decode,
    encode,
    pending_records,
)
from foundry.kernel.actors.store.journal_writer import (
    WriterLocked,
    WriterProcess,
    hold_writer_lock,
)
from foundry.kernel.core.ids import compact_json

from .harness import GUARD_SECONDS
from .test_journal import rows
from .test_store import committed_events, make_event, post_now, running_store


def opened(directory):
    journal = Journal(directory)
    assert journal.recover(0) == []
    journal.append(encode(rows(0)))  # a segment with space written ahead of its appends
    return journal


async def test_the_writer_process_writes_a_record_where_the_journal_says(tmp_path):
    journal = opened(tmp_path)
    lock = hold_writer_lock(tmp_path)
    try:
        with trio.fail_after(GUARD_SECONDS):
            process = await WriterProcess.start(lock)
            try:
                for n in (1, 2, 3):
                    prepared = journal.prepare(encode(rows(n)))
                    assert prepared is not None
                    assert process.send(prepared)
                    await process.acknowledged()
                    assert journal.appended(prepared) == n + 1
            finally:
                await process.close()
    finally:
        journal.close()
        os.close(lock)
    found = pending_records(tmp_path, 0)
    assert [r.seq for r in found] == [1, 2, 3, 4]
    assert [r.tables for r in found] == [tuple(rows(n)) for n in range(4)]


async def test_a_failed_write_answers_its_errno_and_leaves_nothing_behind(tmp_path):
    journal = opened(tmp_path)
    prepared = journal.prepare(encode(rows(1)))
    assert prepared is not None
    segment = next(tmp_path.glob("*.journal"))
    before = segment.read_bytes()
    read_only = os.open(segment, os.O_RDONLY)  # the child's pwrite fails: EBADF
    lock = hold_writer_lock(tmp_path)
    try:
        with trio.fail_after(GUARD_SECONDS):
            process = await WriterProcess.start(lock)
            try:
                assert process.send(dataclasses.replace(prepared, fd=read_only, segment=99))
                with pytest.raises(OSError, match="journal append") as failed:
                    await process.acknowledged()
                assert failed.value.errno == 9
            finally:
                await process.close()
    finally:
        os.close(read_only)
        os.close(lock)
        journal.close()
    assert segment.read_bytes() == before
    assert journal.last_seq == 1  # nothing moved on: the journal thread may append it again


async def test_a_record_too_large_for_one_message_is_left_to_the_journal_thread(tmp_path):
    segment = tmp_path / "segment"
    fd = os.open(segment, os.O_RDWR | os.O_CREAT, 0o600)
    lock = hold_writer_lock(tmp_path)
    try:
        with trio.fail_after(GUARD_SECONDS):
            process = await WriterProcess.start(lock)
            try:
                big = PreparedAppend(1, 0, b"h" * 16, b"p" * journal_writer.MAX_BYTES, fd, 1)
                assert not process.send(big)
                small = dataclasses.replace(big, payload=b"p" * 100)
                assert process.send(small)
                await process.acknowledged()
            finally:
                await process.close()
    finally:
        os.close(fd)
        os.close(lock)
    assert segment.read_bytes() == b"h" * 16 + b"p" * 100  # the small one only


def test_the_writer_lock_waits_for_a_writer_left_behind_then_names_its_file(tmp_path):
    other = os.open(tmp_path / journal_writer.LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(other, fcntl.LOCK_EX)
        started = time.monotonic()
        with pytest.raises(WriterLocked, match=r"writer\.lock: still locked .* after 0\.3 s"):
            hold_writer_lock(tmp_path, timeout=0.3)
        assert time.monotonic() - started >= 0.3
    finally:
        os.close(other)  # the writer left behind ends
    os.close(hold_writer_lock(tmp_path, timeout=0.3))


DAEMON = textwrap.dedent(
    """
    import os, sys, time, trio
    from pathlib import Path
    from foundry.kernel.actors.store.journal_writer import WriterProcess, hold_writer_lock

    async def main():
        lock = hold_writer_lock(Path(sys.argv[1]))
        process = await WriterProcess.start(lock)
        print(process.pid, flush=True)
        await trio.sleep(60)

    trio.run(main)
    """
)


def test_the_writer_process_ends_with_a_daemon_killed_and_frees_the_lock(tmp_path):
    daemon = subprocess.Popen(
        [sys.executable, "-c", DAEMON, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert daemon.stdout is not None
        child = int(daemon.stdout.readline())
        with pytest.raises(WriterLocked):
            hold_writer_lock(tmp_path, timeout=0.2)  # the daemon and its child hold it
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(10)
        os.close(hold_writer_lock(tmp_path, timeout=GUARD_SECONDS))  # once the child ended
        assert not os.path.exists(f"/proc/{child}") or _zombie(child)
    finally:
        daemon.kill()
        daemon.wait()
        if daemon.stdout:
            daemon.stdout.close()


def _zombie(pid):
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] == "Z"


async def test_small_awaited_writes_go_to_the_writer_process_large_ones_to_the_thread(
    tmp_path, monkeypatch
):
    """A write someone waits for, of a few records, is appended by the child; a large group,
    or one that starts a segment (the first), on the journal thread."""
    by_thread, by_child = [], []
    append, appended = Journal.append, Journal.appended
    monkeypatch.setattr(Journal, "append", lambda self, p: by_thread.append(p) or append(self, p))
    monkeypatch.setattr(
        Journal, "appended", lambda self, p: by_child.append(p) or appended(self, p)
    )
    async with running_store(tmp_path) as store:
        await post_now(store, [make_event(1)]).wait()  # a new segment: the thread
        await post_now(store, [make_event(2)]).wait()
        await post_now(store, [make_event(n) for n in range(3, 60)]).wait()
        await post_now(store, [make_event(60), make_event(61)]).wait()
    assert [_event_rows(encoded) for encoded in by_thread] == [1, 57]
    assert [p.seq for p in by_child] == [2, 4]
    assert committed_events(tmp_path) == 61


async def test_segments_rotate_under_writer_process_appends(tmp_path, monkeypatch):
    """A new segment is started on the journal thread; the child is handed it before its next
    append: every record lands, in order, across segments, and a restart recovers them."""
    segments = []
    appended = Journal.appended
    monkeypatch.setattr(
        Journal, "appended", lambda self, p: segments.append(p.segment) or appended(self, p)
    )
    async with running_store(tmp_path, segment_bytes=4096, materialize_delay=3600) as store:
        for n in range(1, 80):
            await post_now(store, [make_event(n)]).wait()
        # DuckDB has none yet: every segment is still there, each record in its place.
        journaled = pending_records(tmp_path / "journal", 0)
        assert [r.seq for r in journaled] == list(range(1, 80))
    assert len(set(segments)) >= 3
    assert len(segments) >= 60  # the rest started segments, on the thread
    assert committed_events(tmp_path) == 79
    async with running_store(tmp_path) as store:  # its journal and DuckDB agree
        await post_now(store, [make_event(80)]).wait()
    assert committed_events(tmp_path) == 80


async def test_the_store_appends_on_its_thread_once_the_writer_process_is_gone(tmp_path, caplog):
    caplog.set_level(logging.WARNING, "foundry.store")
    async with running_store(tmp_path) as store:
        await post_now(store, [make_event(1)]).wait()
        pids = _writer_processes()
        assert len(pids) == 1
        os.kill(pids[0], signal.SIGKILL)
        for n in range(2, 12):
            await post_now(store, [make_event(n)]).wait()
    assert committed_events(tmp_path) == 11
    assert "the journal thread appends every write from now on" in caplog.text


def _event_rows(payload):
    return sum(len(rows) for table, rows in decode(payload) if table == "events")


def _writer_processes():
    """This process's children running ``writer_process.py``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as cmdline:
                argv = cmdline.read().split(b"\0")
            with open(f"/proc/{name}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        if parent == os.getpid() and any(a.endswith(b"writer_process.py") for a in argv):
            found.append(int(name))
    return found


async def test_a_store_that_refuses_its_journal_leaves_the_writer_lock_free(tmp_path):
    journal = tmp_path / "journal"
    journal.mkdir()
    (journal / "00000000000000000001.journal").write_bytes(b"not a segment")
    with pytest.RaisesGroup(pytest.RaisesExc(JournalCorrupt, match="bad header")):
        async with running_store(tmp_path):
            pass
    os.close(hold_writer_lock(journal, timeout=0.2))


async def test_a_small_group_too_large_for_a_message_is_appended_by_the_thread_encoded_once(
    tmp_path, monkeypatch
):
    by_thread, by_child = [], []
    append, appended = Journal.append, Journal.appended
    monkeypatch.setattr(Journal, "append", lambda self, p: by_thread.append(p) or append(self, p))
    monkeypatch.setattr(
        Journal, "appended", lambda self, p: by_child.append(p) or appended(self, p)
    )
    encoded = []
    encode_rows = store_actor.encode
    monkeypatch.setattr(store_actor, "encode", lambda t: encoded.append(t) or encode_rows(t))
    big = {"text": "x" * (journal_writer.MAX_BYTES + 1)}
    large = dataclasses.replace(make_event(2), payload=big, payload_json=compact_json(big))
    async with running_store(tmp_path, materialize_delay=3600) as store:
        await post_now(store, [make_event(1)]).wait()  # a new segment: the thread
        await post_now(store, [large]).wait()
        journaled = pending_records(tmp_path / "journal", 0)
        assert [r.seq for r in journaled] == [1, 2]
    assert by_child == []
    assert len(by_thread) == 2
    assert len(by_thread[1]) > journal_writer.MAX_BYTES
    assert len(encoded) == 2  # each group once, on the trio thread
    assert committed_events(tmp_path) == 2
