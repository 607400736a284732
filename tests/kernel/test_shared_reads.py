"""``actors/shared_reads.py``: concurrent reads of one key share one read, later ones what a
holder still holds; failures, cancellations and values that may not be shared are not shared."""

from __future__ import annotations

import gc

import pytest
import trio
from foundry.kernel.actors.shared_reads import SharedReads


class Value:
    def __init__(self, text: str) -> None:
        self.text = text


class Reader:
    def __init__(self, text: str = "v", fail: bool = False) -> None:
        self.reads, self.text, self.fail = 0, text, fail
        self.release = trio.Event()

    async def __call__(self) -> Value:
        self.reads += 1
        await self.release.wait()
        if self.fail:
            raise KeyError("no such thing")
        return Value(self.text)


async def _at_once(shared: SharedReads[Value], reader: Reader, count: int) -> list[object]:
    """``count`` reads of one key at once, then the read let go: each one's value or error."""
    outcomes: list[object] = []

    async def read() -> None:
        try:
            outcomes.append(await shared.read("k", reader))
        except KeyError as exc:
            outcomes.append(exc)

    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(read)
        await trio.testing.wait_all_tasks_blocked()
        reader.release.set()
    return outcomes


async def test_readers_at_once_share_one_read_and_later_ones_what_is_held():
    shared: SharedReads[Value] = SharedReads()
    reader = Reader()
    got = await _at_once(shared, reader, 5)
    assert reader.reads == 1
    assert len({id(v) for v in got}) == 1
    assert await shared.read("k", reader) is got[0]  # held still: no read
    assert reader.reads == 1
    got.clear()
    gc.collect()
    await shared.read("k", reader)  # its last holder let it go: read again
    assert reader.reads == 2


async def test_a_failed_read_is_not_shared_each_waiter_reads_for_itself():
    shared: SharedReads[Value] = SharedReads()
    failing = Reader(fail=True)
    outcomes = await _at_once(shared, failing, 3)
    assert failing.reads == 3
    assert all(isinstance(o, KeyError) for o in outcomes)


async def test_a_cancelled_first_reader_leaves_the_others_reading_for_themselves():
    shared: SharedReads[Value] = SharedReads()
    reader = Reader()
    got: list[Value] = []

    async with trio.open_nursery() as nursery:
        first = trio.CancelScope()

        async def cancelled() -> None:
            with first:
                await shared.read("k", reader)

        async def waiter() -> None:
            got.append(await shared.read("k", reader))

        nursery.start_soon(cancelled)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        first.cancel()
        await trio.testing.wait_all_tasks_blocked()
        reader.release.set()
    assert [v.text for v in got] == ["v"]
    assert reader.reads == 2


@pytest.mark.parametrize("share", [True, False])
async def test_a_value_that_may_not_be_shared_is_read_by_each(share):
    shared: SharedReads[Value] = SharedReads()
    reader = Reader()
    reader.release.set()
    one = await shared.read("k", reader, lambda _: share)
    two = await shared.read("k", reader, lambda _: share)
    assert (one is two) is share
    assert reader.reads == (1 if share else 2)
