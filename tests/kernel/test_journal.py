"""The store's journal file format and its recovery rules, on real files."""

import os
import pickle
from datetime import UTC, datetime

import pytest
from foundry.kernel.actors.store.journal import (
    RECORD_HEADER,
    SEGMENT_HEADER,
    Journal,
    JournalCorrupt,
    decode,
    encode,
    pending_records,
)

AT = datetime(2026, 12, 2, 3, 4, 5, 678000, tzinfo=UTC)


def rows(n):
    return [("events", [(f"e{n}", n, AT, None, True, ["a", "b"], 1.5)])]


def write(directory, count, *, segment_bytes=1 << 20, applied=0):
    journal = Journal(directory, segment_bytes=segment_bytes)
    assert journal.recover(applied) == []
    seqs = [journal.append(encode(rows(n))) for n in range(count)]
    journal.close()
    return seqs


def segments(directory):
    return sorted(directory.glob("*.journal"))


def reopen(directory, applied=0):
    journal = Journal(directory)
    recovered = journal.recover(applied)
    return journal, recovered


def test_records_are_numbered_and_replayed_in_order_after_the_mark(tmp_path):
    assert write(tmp_path, 5) == [1, 2, 3, 4, 5]
    journal, recovered = reopen(tmp_path, applied=2)
    assert [r.seq for r in recovered] == [3, 4, 5]
    assert recovered[0].tables == (("events", rows(2)[0][1]),)
    assert journal.append(encode(rows(9))) == 6  # appends continue the sequence
    journal.close()
    assert [r.seq for r in reopen(tmp_path, applied=5)[1]] == [6]


def test_rows_round_trip_with_their_types(tmp_path):
    payload = decode(encode(rows(1)))
    assert payload == (("events", [("e1", 1, AT, None, True, ["a", "b"], 1.5)]),)
    assert payload[0][1][0][2].tzinfo is not None


def test_a_record_cannot_make_the_reader_build_arbitrary_objects():
    class Sneaky:
        def __reduce__(self):
            return (os.system, ("true",))

    with pytest.raises(pickle.UnpicklingError, match="may not hold"):
        decode(pickle.dumps([("events", [(Sneaky(),)])]))


def test_segments_rotate_and_are_deleted_once_applied(tmp_path):
    write(tmp_path, 20, segment_bytes=300)
    files = segments(tmp_path)
    assert len(files) > 3
    assert [int(f.stem) for f in files][0] == 1
    journal, recovered = reopen(tmp_path)
    assert [r.seq for r in recovered] == list(range(1, 21))
    second = int(files[1].stem)
    assert journal.release(second - 1) == 1  # the first segment only: all of it applied
    assert segments(tmp_path) == files[1:]
    journal.release(20)  # everything: the older segments go, the current one stays
    assert segments(tmp_path) == files[-1:]
    assert journal.append(encode(rows(0))) == 21  # appended to it: no new file
    journal.close()
    assert segments(tmp_path) == files[-1:]
    assert [r.seq for r in reopen(tmp_path, applied=20)[1]] == [21]


def test_released_in_full_at_start_or_stop_the_next_append_starts_a_segment(tmp_path):
    write(tmp_path, 5)
    journal, _ = reopen(tmp_path, applied=5)
    assert journal.release(5) == 0  # kept, to be appended to
    assert journal.release(5, keep_current=False) == 1
    assert segments(tmp_path) == []
    assert journal.append(encode(rows(0))) == 6  # a new segment, named by its first record
    journal.close()
    assert [f.name for f in segments(tmp_path)] == [f"{6:020d}.journal"]
    assert [r.seq for r in reopen(tmp_path, applied=5)[1]] == [6]


def test_the_current_segment_stays_when_caught_up_so_appends_start_no_file(tmp_path):
    """Releasing everything applied keeps the segment appends go to: the next append writes into
    its zeros (no new file, no directory sync, no new space written ahead)."""
    journal = Journal(tmp_path)
    journal.recover(0)
    for n in range(1, 6):
        assert journal.append(encode(rows(n))) == n
        assert journal.release(n) == 0
    [path] = segments(tmp_path)
    size = path.stat().st_size
    assert journal.append(encode(rows(6))) == 6
    journal.close()
    assert segments(tmp_path) == [path]
    assert path.stat().st_size == size
    assert [r.seq for r in reopen(tmp_path, applied=5)[1]] == [6]


def records_end(path):
    """Where a segment's records end (the zeros written ahead begin)."""
    data = path.read_bytes()
    offset = SEGMENT_HEADER.size
    while offset < len(data) and any(data[offset : offset + RECORD_HEADER.size]):
        offset += RECORD_HEADER.size + RECORD_HEADER.unpack_from(data, offset)[0]
    return offset


def overwrite(path, offset, data):
    with open(path, "r+b") as file:
        file.seek(offset)
        file.write(data)


@pytest.mark.parametrize("cut", [1, RECORD_HEADER.size - 1, RECORD_HEADER.size + 3, -1])
def test_a_torn_last_record_is_cut_off_and_the_journal_goes_on(tmp_path, caplog, cut):
    write(tmp_path, 3)
    [path] = segments(tmp_path)
    end = records_end(path)
    # a fourth append, torn: only part of it reached the disk, over the zeros written ahead
    record = RECORD_HEADER.pack(50, 0, 4) + b"x" * 50
    overwrite(path, end, record[:cut] if cut > 0 else record)  # -1: whole, but a wrong checksum
    journal, recovered = reopen(tmp_path)
    assert [r.seq for r in recovered] == [1, 2, 3]
    assert path.stat().st_size == end
    assert "torn record" in caplog.text
    assert journal.append(encode(rows(4))) == 4
    journal.close()
    assert [r.seq for r in reopen(tmp_path)[1]] == [1, 2, 3, 4]


def flip_byte(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_damaged_record_followed_by_an_intact_one_refuses_to_open(tmp_path):
    write(tmp_path, 3)
    [path] = segments(tmp_path)
    offset = SEGMENT_HEADER.size + RECORD_HEADER.size + 2  # inside the first record's payload
    flip_byte(path, offset)
    before = path.read_bytes()
    with pytest.raises(JournalCorrupt) as refused:
        reopen(tmp_path)
    message = str(refused.value)
    assert str(path) in message
    assert f"byte {SEGMENT_HEADER.size}" in message
    assert "\n" not in message
    assert path.read_bytes() == before  # nothing is cut off or repaired


@pytest.mark.parametrize("damaged", [1, 2, 5])
@pytest.mark.parametrize("length_byte", [0, 1, 3])
def test_a_damaged_length_followed_by_intact_records_refuses_to_open(
    tmp_path, damaged, length_byte
):
    # a length field's damage declares an end in the middle of nothing: the records after it,
    # acknowledged, were taken for a torn tail and cut off
    write(tmp_path, 6)
    [path] = segments(tmp_path)
    offset = SEGMENT_HEADER.size
    data = path.read_bytes()
    for _ in range(damaged - 1):
        offset += RECORD_HEADER.size + RECORD_HEADER.unpack_from(data, offset)[0]
    flip_byte(path, offset + length_byte)
    before = path.read_bytes()
    with pytest.raises(JournalCorrupt, match=f"byte {offset} fails its checksum"):
        reopen(tmp_path)
    assert path.read_bytes() == before


def test_a_last_record_whose_length_runs_past_the_file_refuses_the_start(tmp_path):
    # Not a torn append: its length would read shorter (some of its bytes still the zeros
    # written ahead), never past the zeros. A damaged length: the record may be acknowledged.
    write(tmp_path, 3)
    [path] = segments(tmp_path)
    end = records_end(path)
    overwrite(path, end, RECORD_HEADER.pack(0xFFFF_FF00, 0, 4) + b"x" * 20)
    size = path.stat().st_size
    with pytest.raises(JournalCorrupt, match=f"inside the record at byte {end}: it was cut, or"):
        reopen(tmp_path)
    assert path.stat().st_size == size


def test_damage_in_an_older_segment_refuses_to_open_even_at_its_end(tmp_path):
    write(tmp_path, 12, segment_bytes=300)
    first = segments(tmp_path)[0]
    flip_byte(first, records_end(first) - 1)  # the last byte of its last record
    with pytest.raises(JournalCorrupt, match=str(first)):
        reopen(tmp_path)


def test_a_missing_segment_refuses_to_open(tmp_path):
    write(tmp_path, 12, segment_bytes=300)
    files = segments(tmp_path)
    files[1].unlink()
    with pytest.raises(JournalCorrupt, match="missing records"):
        reopen(tmp_path)


def test_a_journal_that_starts_after_the_database_mark_refuses_to_open(tmp_path):
    write(tmp_path, 12, segment_bytes=300)
    segments(tmp_path)[0].unlink()
    with pytest.raises(JournalCorrupt, match="missing"):
        reopen(tmp_path, applied=0)
    second_start = int(segments(tmp_path)[0].stem)
    _, recovered = reopen(tmp_path, applied=second_start - 1)  # DuckDB has those: fine
    assert recovered[0].seq == second_start


def test_a_segment_of_another_format_version_refuses_to_open(tmp_path):
    write(tmp_path, 1)
    [path] = segments(tmp_path)
    data = bytearray(path.read_bytes())
    data[4] = 9
    path.write_bytes(bytes(data))
    with pytest.raises(JournalCorrupt, match="format version 9"):
        reopen(tmp_path)


@pytest.mark.parametrize(
    "left", [b"FJ", bytes(65_544)], ids=["killed writing its header", "zeros: a power loss"]
)
def test_a_segment_created_but_never_written_is_started_again(tmp_path, left):
    """Its header is synced before any append: what has no header holds no record. A power
    loss may leave the size a new segment was given and none of its bytes (XFS, ext4's
    data=writeback): all zeros refused the start as "not a Foundry journal segment"."""
    write(tmp_path, 2)
    (tmp_path / f"{3:020d}.journal").write_bytes(left)
    journal, recovered = reopen(tmp_path)
    assert [r.seq for r in recovered] == [1, 2]
    assert journal.append(encode(rows(3))) == 3
    journal.close()
    assert [r.seq for r in reopen(tmp_path)[1]] == [1, 2, 3]


def test_pending_records_reads_without_repairing(tmp_path):
    write(tmp_path, 3)
    [path] = segments(tmp_path)
    with open(path, "ab") as file:
        file.write(b"\x01\x02")  # a torn tail: left as it is
    size = path.stat().st_size
    assert [r.seq for r in pending_records(tmp_path, 1)] == [2, 3]
    assert path.stat().st_size == size


def test_a_failed_append_leaves_no_partial_record(tmp_path, monkeypatch):
    journal = Journal(tmp_path)
    journal.recover(0)
    journal.append(encode(rows(1)))

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fdatasync", full_disk)
    with pytest.raises(OSError, match="No space"):
        journal.append(encode(rows(2)))
    monkeypatch.undo()
    assert journal.append(encode(rows(3))) == 2  # the failed one was never acknowledged
    journal.close()
    assert [r.tables[0][1][0][0] for r in reopen(tmp_path)[1]] == ["e1", "e3"]


def test_a_datetime_read_back_from_duckdb_is_journaled_as_the_same_instant():
    """DuckDB hands back zoneinfo datetimes, which pickle through getattr: the journal stores
    them with datetime.timezone instead, and reads them back."""
    from zoneinfo import ZoneInfo

    from_duckdb = AT.replace(tzinfo=ZoneInfo("UTC"))
    elsewhere = AT.astimezone(ZoneInfo("Europe/Lisbon"))
    [(_, [row])] = decode(encode([("events", [(from_duckdb, elsewhere)])]))
    assert row == (AT, AT)
    assert all(value.tzinfo is UTC for value in row)


def test_a_utc_datetime_is_journaled_as_the_standard_pickle_writes_it():
    """The shortcut for ``datetime.UTC`` (no generic reduction of it) changes no byte: a journal
    written before it reads the same, and so does one written after it by an older daemon."""
    rows = [
        (
            "run_events",
            [
                ("run_a", 1, "s", "step_leased", "{}", AT),
                ("run_a", 2, "", "x", "{}", AT.replace(second=7)),
            ],
        )
    ]
    assert encode(rows) == pickle.dumps(rows, protocol=5)
    [(_, decoded)] = decode(encode(rows))
    assert [row[5] for row in decoded] == [AT, AT.replace(second=7)]
    assert all(row[5].tzinfo is UTC for row in decoded)


def test_an_intact_record_of_unreadable_rows_refuses_to_open_in_one_line(tmp_path):
    journal = Journal(tmp_path)
    journal.recover(0)
    journal.append(pickle.dumps([("events", [(os.system,)])]))  # intact, checksum and all
    journal.close()
    with pytest.raises(JournalCorrupt, match="record 1 at byte 8 cannot be read") as refused:
        reopen(tmp_path)
    assert "\n" not in str(refused.value)


# --- the writer thread ----------------------------------------------------------------------------


class _Records(list):  # a list that a weak reference can watch
    pass


async def test_the_writer_thread_does_not_hold_a_write_once_it_is_done():
    # A large write's records must be freed when its commit is through, not when the next
    # write comes (an idle daemon would keep a large request resident).
    import gc
    import weakref

    import trio
    from foundry.kernel.actors.threads import JobThread

    writer = JobThread("test-writer")
    writer.start()
    try:
        records = _Records(["x" * 1000])
        watch = weakref.ref(records)
        assert await writer.run(lambda held=records: len(held)) == 1
        del records
        await trio.sleep(0.05)  # the thread has gone back to waiting for the next job
        gc.collect()
        assert watch() is None
    finally:
        await trio.to_thread.run_sync(writer.stop)


def test_appends_overwrite_zeros_written_ahead_and_leave_the_size_alone(tmp_path):
    """An append's fdatasync then has no new file size to commit: the space is written ahead."""
    journal = Journal(tmp_path, segment_bytes=1 << 16)
    journal.recover(0)
    journal.append(encode(rows(1)))
    [path] = segments(tmp_path)
    size = path.stat().st_size
    assert size >= 1 << 16
    for n in range(2, 6):
        journal.append(encode(rows(n)))
    assert path.stat().st_size == size
    end = records_end(path)
    assert not any(path.read_bytes()[end:])  # zeros after the records
    journal.close()
    journal, recovered = reopen(tmp_path)
    assert [r.seq for r in recovered] == [1, 2, 3, 4, 5]
    assert journal.append(encode(rows(6))) == 6  # continues where the records end
    journal.close()
    assert records_end(path) > end
    assert [r.seq for r in reopen(tmp_path)[1]] == [1, 2, 3, 4, 5, 6]
    assert [r.seq for r in pending_records(tmp_path, 4)] == [5, 6]


def test_a_record_larger_than_the_space_ahead_extends_the_segment(tmp_path):
    journal = Journal(tmp_path, segment_bytes=4096)
    journal.recover(0)
    big = [("events", [(f"e{n}", n, AT, f"{n}" + "x" * 3000) for n in range(5)])]
    assert journal.append(encode(big)) == 1
    assert journal.append(encode(rows(2))) == 2
    journal.close()
    [first, second] = segments(tmp_path)  # the big record filled the first segment
    assert first.stat().st_size >= records_end(first)
    assert [r.seq for r in reopen(tmp_path)[1]] == [1, 2]


def test_bytes_in_an_older_segments_zeros_refuse_to_open(tmp_path):
    """Only zeros may follow a segment's records: anything else there is damage."""
    write(tmp_path, 12, segment_bytes=300)
    first = segments(tmp_path)[0]
    flip_byte(first, records_end(first) + 40)
    with pytest.raises(JournalCorrupt, match=str(first)):
        reopen(tmp_path)


def test_the_space_ahead_grows_in_doubling_steps(tmp_path):
    """A new segment starts small (it may be deleted after a few appends) and its zeros grow
    in steps that double: few appends pay for writing the space ahead."""
    journal = Journal(tmp_path, segment_bytes=1 << 22)
    journal.recover(0)
    sizes = []
    for n in range(200):
        journal.append(encode([("events", [(f"e{n}", n, AT, f"{n}" + "y" * 2000)])]))
        sizes.append(segments(tmp_path)[0].stat().st_size)
    journal.close()
    assert sizes[0] <= SEGMENT_HEADER.size + (64 << 10)
    steps = sorted(set(sizes))
    assert len(steps) <= 5  # 64 KiB, then about 128, 256, 512 KiB
    grown = zip(steps, steps[1:], strict=False)
    assert all(b - a >= a - SEGMENT_HEADER.size // 2 for a, b in grown)
    assert [r.seq for r in reopen(tmp_path)[1]] == list(range(1, 201))


# --- the journal thread ----------------------------------------------------------------------


async def test_the_journal_thread_returns_outcomes_in_order_and_raises_failures():
    import threading

    import trio
    from foundry.kernel.actors.threads import JobThread

    thread = JobThread("test-journal")
    thread.start()
    names: list[str] = []

    def job(value):
        names.append(threading.current_thread().name)
        return value

    def failing():
        raise OSError(28, "No space left on device")

    try:
        thread.submit(lambda: job(1))
        thread.submit(failing)
        thread.submit(lambda: job(3))
        assert await thread.result() == 1
        with pytest.raises(OSError, match="No space"):
            await thread.result()
        assert await thread.result() == 3
        with trio.CancelScope() as scope:
            scope.cancel()  # a write in progress is never abandoned: the wait is shielded
            assert await thread.run(lambda: job(4)) == 4
        assert names == ["test-journal"] * 3
    finally:
        await trio.to_thread.run_sync(thread.stop)


async def test_the_journal_thread_wakes_a_waiter_when_a_job_ends_or_when_woken():
    """The store's idle commit loop waits in ``wait``: a commit the receiver hands the thread
    wakes it when it is done; ``wake`` wakes it with no job."""
    import threading

    import trio
    from foundry.kernel.actors.threads import JobThread

    thread = JobThread("test-journal")
    thread.start()
    gate = threading.Event()
    try:
        with trio.fail_after(10):
            thread.wake()
            await thread.wait()  # woken, no job
            thread.submit(lambda: gate.wait(10) and 7)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(thread.wait)
                await trio.testing.wait_all_tasks_blocked()
                gate.set()  # the job ends: the waiter returns
            assert await thread.result() == 7
    finally:
        await trio.to_thread.run_sync(thread.stop)


async def test_a_cancelled_result_waits_for_its_job_and_the_next_checkpoint_is_cancelled():
    import threading

    import trio
    from foundry.kernel.actors.threads import JobThread

    thread = JobThread("test-journal")
    thread.start()
    gate = threading.Event()
    got = []
    try:
        with trio.fail_after(10):
            thread.submit(lambda: gate.wait(10) and 1)
            with trio.CancelScope() as scope:
                threading.Timer(0.05, gate.set).start()
                scope.cancel()
                got.append(await thread.result())  # not abandoned: the job's outcome
                await trio.lowlevel.checkpoint()
                got.append("not cancelled")
            assert scope.cancelled_caught
            assert got == [1]
            assert await thread.run(lambda: 2) == 2  # outcomes stay in order
    finally:
        await trio.to_thread.run_sync(thread.stop)


def test_a_segment_that_could_not_be_started_is_started_again_once_there_is_room(
    tmp_path, monkeypatch
):
    # A full disk while a new segment's header and zeros were written left its empty file:
    # every later append failed on it (File exists) until a restart.
    from foundry.kernel.actors.store import journal as journal_module

    journal = Journal(tmp_path, segment_bytes=4096)
    assert journal.recover(0) == []
    full = {"on": True}
    write_all = journal_module._write_all

    def disk(fd, data, offset):
        if full["on"]:
            raise OSError(28, "No space left on device")
        write_all(fd, data, offset)

    monkeypatch.setattr(journal_module, "_write_all", disk)
    with pytest.raises(OSError, match="No space left"):
        journal.append(encode(rows(1)))
    assert segments(tmp_path) == []  # nothing left behind
    full["on"] = False  # room again
    assert journal.append(encode(rows(1))) == 1
    journal.close()
    assert [r.seq for r in reopen(tmp_path)[1]] == [1]


def test_a_last_segment_cut_inside_a_record_refuses_the_start(tmp_path):
    # Cut to a few bytes into its first record, the segment lost 274 acknowledged records and
    # the start said only "dropped 258 bytes of a torn record … never acknowledged": an append
    # writes into zeros made durable before it, so a torn one always has zeros after it.
    write(tmp_path, 20)
    [segment] = segments(tmp_path)
    with open(segment, "r+b") as file:
        file.truncate(SEGMENT_HEADER.size + RECORD_HEADER.size + 3)
    with pytest.raises(JournalCorrupt, match="ends inside the record at byte 8: it was cut"):
        reopen(tmp_path)


@pytest.mark.parametrize("where", ["header", "payload"])
def test_a_last_segment_cut_after_a_zero_byte_inside_a_record_refuses_the_start(tmp_path, where):
    # The cut was told from a torn append by the file's last byte alone: a cut that left a 0
    # (a length's high byte, a pickle's) dropped the acknowledged record as "never acknowledged".
    write(tmp_path, 5)
    [segment] = segments(tmp_path)
    data = segment.read_bytes()
    last = SEGMENT_HEADER.size
    for _ in range(4):
        last += RECORD_HEADER.size + RECORD_HEADER.unpack_from(data, last)[0]
    start = last + 1 if where == "header" else last + RECORD_HEADER.size + 1
    end = last + RECORD_HEADER.size if where == "header" else records_end(segment)
    cut = next(i + 1 for i in range(start, end) if data[i] == 0)
    with open(segment, "r+b") as file:
        file.truncate(cut)
    with pytest.raises(JournalCorrupt, match=f"ends inside the record at byte {last}: it was cut"):
        reopen(tmp_path)
    assert segment.stat().st_size == cut  # left as it is, for the operator


def test_a_torn_append_that_filled_the_space_ahead_exactly_is_cut_off(tmp_path, caplog):
    # No zeros after it (an append fills the space written ahead up to its last byte), its
    # last page never written: torn, never acknowledged — not a cut file refusing the start.
    journal = Journal(tmp_path)
    journal.recover(0)
    journal.append(encode(rows(1)))
    room = journal._allocated - journal._size - RECORD_HEADER.size
    text = "b" * room
    while len(payload := encode([("events", [(text,)])])) > room:
        text = text[: len(text) - (len(payload) - room)]
    assert len(payload) == room
    [segment] = segments(tmp_path)
    size = segment.stat().st_size
    journal.append(payload)
    journal.close()
    assert segment.stat().st_size == size  # no zeros written after it
    overwrite(segment, size - 512, bytes(512))
    assert [r.seq for r in reopen(tmp_path)[1]] == [1]
    assert "torn record" in caplog.text


@pytest.mark.parametrize("newest", [True, False])
def test_a_segment_that_is_not_a_regular_file_refuses_the_start(tmp_path, newest):
    # A FIFO in a segment's place blocked the start for good, saying nothing.
    write(tmp_path, 6, segment_bytes=200)
    paths = segments(tmp_path)
    assert len(paths) >= 3
    victim = paths[-1] if newest else paths[1]
    victim.unlink()
    os.mkfifo(victim)
    with pytest.raises(JournalCorrupt, match=f"{victim.name}: not a regular file"):
        reopen(tmp_path)
    with pytest.raises(JournalCorrupt, match="not a regular file"):
        pending_records(tmp_path, 0)


def test_an_append_to_a_segment_deleted_under_the_daemon_fails(tmp_path):
    # `rm -rf journal/` under a running daemon: every append after it was acknowledged, into a
    # file no start would read again (864 acknowledged Emits lost at the next start)
    journal = Journal(tmp_path, segment_bytes=1 << 20)
    assert journal.recover(0) == []
    assert journal.append(encode(rows(1))) == 1
    [segment] = segments(tmp_path)
    segment.unlink()
    with pytest.raises(OSError, match="deleted from .* under the running daemon"):
        journal.append(encode(rows(2)))
    prepared = journal.prepare(encode(rows(2)))  # the writer process's road
    assert prepared is not None
    with pytest.raises(OSError, match="no write is acknowledged until it is restarted"):
        journal.appended(prepared)
    journal.close()
