"""The daemon's full collections when it has grown (``daemon.collect_when_grown``)."""

import gc
import weakref

import trio
from foundry.kernel import daemon
from foundry.kernel.daemon import (
    GARBAGE_GROWTH,
    GARBAGE_RECHECK_SECONDS,
    HeapSizes,
    collection_due,
    resident_bytes,
)


def test_a_collection_is_due_once_the_process_grew_by_garbage_growth():
    base = 500 << 20
    sizes = HeapSizes(after_last=base, low_point=base, since_last=1.0)
    assert not collection_due(base, sizes)
    assert not collection_due(base + GARBAGE_GROWTH - 1, sizes)
    assert collection_due(base + GARBAGE_GROWTH, sizes)
    assert not collection_due(base - (10 << 20), sizes)  # smaller: nothing to look for


def test_a_process_staying_far_above_its_low_point_is_looked_at_again_now_and_then():
    # taps that held memory, then were abandoned: garbage, and no growth since the last look
    high, low = 2_000 << 20, 200 << 20
    recent = HeapSizes(after_last=high, low_point=low, since_last=5.0)
    assert not collection_due(high, recent)
    later = HeapSizes(after_last=high, low_point=low, since_last=GARBAGE_RECHECK_SECONDS)
    assert collection_due(high, later)
    assert not collection_due(low + (10 << 20), later)  # near its low point: not worth it


def test_resident_bytes_counts_what_the_process_touches():
    before = resident_bytes()
    block = bytearray(b"x" * (64 << 20))
    assert resident_bytes() - before >= 48 << 20
    del block


class _Cycle:
    def __init__(self) -> None:
        self.itself = self
        self.body = bytearray(b"b" * (32 << 20))  # a request body an exception's frame holds


async def test_garbage_in_reference_cycles_is_collected_once_the_process_grew(monkeypatch):
    # the daemon's thresholds scan old objects every ~500,000 net allocations: an idle daemon
    # kept a cycle's buffers for good
    monkeypatch.setattr(daemon, "GARBAGE_CHECK_SECONDS", 0.05)
    monkeypatch.setattr(daemon, "GARBAGE_GROWTH", 16 << 20)
    collected = trio.Event()
    gc.disable()  # only the daemon's collection may find it
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(daemon.collect_when_grown)
            await trio.sleep(0.2)  # its first look: the size before the garbage
            cycle = _Cycle()
            weakref.finalize(cycle, collected.set)
            del cycle
            with trio.fail_after(10):
                await collected.wait()
            nursery.cancel_scope.cancel()
    finally:
        gc.enable()


def test_a_full_disk_behind_a_failed_start_is_found_wherever_it_hides():
    # a start on a full disk was a traceback of 68 to 124 lines: an OSError from the home's
    # lock or the keys, or DuckDB's "cannot rollback" that replaced the write that failed
    def replaced() -> BaseException:
        try:
            try:
                raise OSError(28, "No space left on device")
            except OSError:
                raise RuntimeError("cannot rollback - no transaction is active")  # noqa: B904
        except RuntimeError as exc:
            return exc

    assert daemon._no_space(OSError(28, "No space left on device"))
    assert daemon._no_space(BaseExceptionGroup("g", [ValueError("x"), replaced()]))
    assert daemon._no_space(RuntimeError('Could not write file "f.wal": No space left on device'))
    assert not daemon._no_space(BaseExceptionGroup("g", [ValueError("x"), OSError(13, "no")]))
