"""The tap broker: filtered fan-out, bounded buffers, an explicit cut-off for slow subscribers."""

from dataclasses import dataclass

import trio
import trio.testing
from foundry.kernel.actors.mailbox import ask
from foundry.kernel.actors.tap.actor import TapBroker
from foundry.kernel.actors.tap.messages import CloseAll, Overflow, Publish, Subscribe

from .harness import GUARD_SECONDS


@dataclass(frozen=True)
class Item:
    tap_key: str
    n: int
    tap_topic: str = "events"


def drain(receive):
    items = []
    while True:
        try:
            items.append(receive.receive_nowait())
        except trio.WouldBlock:
            return items
        except trio.EndOfChannel:
            items.append("end")
            return items


async def subscribe(tap, key=None, topic="events"):
    return await ask(tap, lambda r: Subscribe(topic, key, r))


async def started_broker(nursery, buffer):
    send, receive = trio.open_memory_channel(100)
    broker = TapBroker(receive, buffer=buffer)
    await nursery.start(broker.run)
    return broker, send


async def test_subscribers_get_every_item_of_their_key_in_order():
    with trio.fail_after(GUARD_SECONDS):
        async with trio.open_nursery() as nursery:
            _, tap = await started_broker(nursery, buffer=16)
            everyone, only_a, only_b = (
                await subscribe(tap),
                await subscribe(tap, "a"),
                await subscribe(tap, "b"),
            )
            runs = await subscribe(tap, topic="runs")
            items = [Item("a", 1), Item("b", 2), Item("a", 3), Item("c", 4)]
            await tap.send(Publish(tuple(items[:2])))
            await tap.send(Publish(tuple(items[2:])))
            await tap.send(Publish((Item("a", 5, tap_topic="runs"),)))
            tap.close()

    assert drain(everyone) == [*items, "end"]
    assert drain(only_a) == [Item("a", 1), Item("a", 3), "end"]
    assert drain(only_b) == [Item("b", 2), "end"]
    assert drain(runs) == [Item("a", 5, tap_topic="runs"), "end"]


async def test_a_subscriber_that_falls_behind_is_cut_off_with_overflow():
    buffer = 3
    with trio.fail_after(GUARD_SECONDS):
        async with trio.open_nursery() as nursery:
            _, tap = await started_broker(nursery, buffer=buffer)
            slow = await subscribe(tap)
            fast = await subscribe(tap)
            received = []

            async def read_fast():
                async for item in fast:
                    received.append(item)

            nursery.start_soon(read_fast)
            for n in range(10):
                await tap.send(Publish((Item("k", n),)))
                await trio.testing.wait_all_tasks_blocked()
            slow_items = drain(slow)
            tap.close()

    assert slow_items == [Item("k", 0), Item("k", 1), Item("k", 2), Overflow(buffer), "end"]
    assert received == [Item("k", n) for n in range(10)]


async def test_a_burst_larger_than_the_buffer_cuts_off_a_subscriber_that_has_not_read():
    with trio.fail_after(GUARD_SECONDS):
        async with trio.open_nursery() as nursery:
            _, tap = await started_broker(nursery, buffer=2)
            sub = await subscribe(tap)
            await tap.send(Publish(tuple(Item("k", n) for n in range(5))))
            await trio.testing.wait_all_tasks_blocked()
            items = drain(sub)
            tap.close()

    assert items == [Item("k", 0), Item("k", 1), Overflow(2), "end"]


async def test_a_closed_subscriber_is_dropped_and_the_others_carry_on():
    with trio.fail_after(GUARD_SECONDS):
        async with trio.open_nursery() as nursery:
            broker, tap = await started_broker(nursery, buffer=4)
            leaver = await subscribe(tap)
            stayer = await subscribe(tap)
            leaver.close()
            await tap.send(Publish((Item("k", 1),)))
            await tap.send(Publish((Item("k", 2),)))
            await trio.testing.wait_all_tasks_blocked()
            # white-box: the broker no longer holds the departed subscriber's channel
            remaining = [len(subs) for subs in broker._topics.values()]
            tap.close()

    assert remaining == [1]
    assert drain(stayer) == [Item("k", 1), Item("k", 2), "end"]


async def test_close_all_ends_every_subscription_cleanly():
    with trio.fail_after(GUARD_SECONDS):
        async with trio.open_nursery() as nursery:
            _, tap = await started_broker(nursery, buffer=4)
            first, second = await subscribe(tap), await subscribe(tap, "x")
            await tap.send(Publish((Item("x", 1),)))
            await tap.send(CloseAll())
            await trio.testing.wait_all_tasks_blocked()
            assert drain(first) == [Item("x", 1), "end"]
            assert drain(second) == [Item("x", 1), "end"]
            # the broker still serves new subscribers afterwards
            third = await subscribe(tap)
            await tap.send(Publish((Item("y", 2),)))
            tap.close()

    assert drain(third) == [Item("y", 2), "end"]


async def test_the_broker_never_blocks_on_a_subscriber():
    """A publisher is never held up, however many items a stuck subscriber has not read."""
    with trio.fail_after(GUARD_SECONDS):
        async with trio.open_nursery() as nursery:
            _, tap = await started_broker(nursery, buffer=1)
            stuck = await subscribe(tap)
            for n in range(500):
                await tap.send(Publish((Item("k", n),)))
            tap.close()

    assert drain(stuck) == [Item("k", 0), Overflow(1), "end"]


class RecordingSink:
    """A sink with only the two methods of ``Sink`` (and its ``closed``): the broker may call
    nothing else."""

    def __init__(self):
        self.calls = []

    def offer(self, item, capacity):
        self.calls.append(("offer", item.n))
        return True

    def close(self):
        self.calls.append(("close",))

    @property
    def closed(self):
        return False


async def test_the_broker_only_offers_items_and_closes_sinks():
    sink = RecordingSink()
    with trio.fail_after(GUARD_SECONDS):
        async with trio.open_nursery() as nursery:
            _, tap = await started_broker(nursery, buffer=8)
            await ask(tap, lambda r: Subscribe("events", None, r, sink))
            await tap.send(Publish((Item("k", 1), Item("k", 2))))
            await tap.send(CloseAll())
            tap.close()

    assert sink.calls == [("offer", 1), ("offer", 2), ("close",)]


async def test_a_stream_sink_wakes_its_handler_which_frames_the_whole_backlog_in_its_task():
    """The edge's TapRun sink: offering (in the broker) only stores and wakes; the handler's
    task frames everything offered since it last looked, for one write."""
    import asyncio

    import trio_asyncio
    from foundry.kernel.edge.grpc.bridge import StreamSink

    framed = []

    def framer(items):
        framed.append(([i.n for i in items], asyncio.current_task()))
        return [bytes([i.n]) for i in items], items[-1].n == 9

    async def handler(sink, started):
        sent = []
        started.set()
        while True:
            messages, state = await sink.take()
            sent.append(b"".join(messages))
            if state == "end":
                return sent, asyncio.current_task()

    with trio.fail_after(GUARD_SECONDS):
        async with trio_asyncio.open_loop(), trio.open_nursery() as nursery:
            _, tap = await started_broker(nursery, buffer=100)
            sink = StreamSink(framer)
            await ask(tap, lambda r: Subscribe("events", None, r, sink))
            started = asyncio.Event()
            task = asyncio.ensure_future(handler(sink, started))
            await trio_asyncio.aio_as_trio(started.wait)()
            await tap.send(Publish(tuple(Item("k", n) for n in range(5))))
            await tap.send(Publish(tuple(Item("k", n) for n in range(5, 8))))
            await tap.send(Publish((Item("k", 8), Item("k", 9))))
            sent, handler_task = await trio_asyncio.aio_as_trio(lambda: task)()
            tap.close()

    # the handler framed in its own task (never the broker's), each take the whole backlog:
    # at least each published batch at once, in order, through the last item
    assert {t for _, t in framed} == {handler_task}
    batches = [batch for batch, _ in framed]
    assert [n for batch in batches for n in batch] == list(range(10))
    assert all(set(batch) >= {0, 1, 2, 3, 4} for batch in batches if 0 in batch)
    assert all(set(batch) >= {5, 6, 7} for batch in batches if 5 in batch)
    assert b"".join(sent) == bytes(range(10))
    assert len(sent) == len(batches)


def test_the_buffer_count_matches_trios_statistics():
    """``buffered`` reads trio's private buffer (cheaper than ``statistics()``, once per item
    delivered); it must say what ``statistics()`` says, and the fallback is ``statistics()``."""
    from foundry.kernel.actors.tap import buffered

    assert buffered.buffered is buffered._private  # this trio keeps its buffer where expected
    send, receive = trio.open_memory_channel[int](4)
    for n in range(4):
        for count in (buffered.buffered, buffered._statistics):
            assert count(send) == n == send.statistics().current_buffer_used
        send.send_nowait(n)
    receive.receive_nowait()
    assert buffered.buffered(send) == 3 == buffered._statistics(send)
    send.close()
    receive.close()


async def test_ended_subscriptions_are_forgotten_though_no_item_of_their_key_comes():
    """A subscriber was dropped only when an offer to it failed: every TapRun of a finished
    run, every Watch of a quiet project was held for the daemon's life (~1 KB each), and each
    publish walked them all."""
    from foundry.kernel.edge.grpc.bridge import QueueSink

    with trio.fail_after(GUARD_SECONDS):
        async with trio.open_nursery() as nursery:
            broker, tap = await started_broker(nursery, buffer=8)
            live = [QueueSink() for _ in range(10)]
            for sink in live:
                await ask(tap, lambda r, s=sink: Subscribe("runs", "live", r, s))
            for n in range(5_000):
                ended = QueueSink()
                await ask(tap, lambda r, s=ended, k=f"run_{n}": Subscribe("runs", k, r, s))
                ended.close()  # the stream ended: no item of its key ever comes
                channel = await subscribe(tap, f"quiet_{n}")  # a trio-side subscriber
                channel.close()
            assert broker.held("runs") < 200  # at most about twice the live ones, and a floor
            assert broker.held("events") < 200
            await tap.send(Publish((Item("live", 1, tap_topic="runs"),)))
            tap.close()
    got = [[item.n for item in await sink.batch()] for sink in live]
    assert got == [[1]] * 10  # the live ones still get theirs
