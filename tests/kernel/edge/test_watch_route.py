"""Watch's gRPC route: it closes its responses however the call ends, and sends each batch in
a few writes, letting the loop's other work run between batches."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

from foundry.kernel.edge.grpc.foundry_service import FoundryService
from foundry.proto import foundry_api as api


class _WatchOfRecord(FoundryService):
    """The service with a subscription that says when it was let go."""

    def __init__(self) -> None:
        super().__init__(mailboxes=None)  # type: ignore[arg-type]  # watch below asks no actor
        self.let_go = asyncio.Event()

    async def watch_batches(
        self, message: api.WatchRequest
    ) -> AsyncGenerator[list[api.WatchResponse], None]:
        try:
            for n in range(1_000_000):
                yield [api.WatchResponse(event_id=f"e{n}", event_type="flood")]
        finally:
            self.let_go.set()  # (the real one closes its sink here: the broker stops offering)


class _PeerThatNeverReads:
    """grpclib's stream as a watcher that stopped reading sees it: a send never returns."""

    async def recv_message(self) -> api.WatchRequest:
        return api.WatchRequest(project="stall")

    async def send_initial_metadata(self) -> None:
        return None

    async def send_message(self, _: Any) -> None:
        await asyncio.Event().wait()


def test_a_watch_whose_peer_went_away_lets_its_subscription_go_at_once():
    """The generated route iterated Watch without closing it: a watcher that stopped reading,
    then went away (grpclib cancels its task), left the subscription suspended at a ``yield``,
    held by the cancelled task's traceback and taking events until 10,000 were buffered."""

    async def scenario() -> None:
        service = _WatchOfRecord()
        route = asyncio.create_task(service._serve_watch(_PeerThatNeverReads()))  # type: ignore[arg-type]
        await asyncio.sleep(0.05)  # the first reply's send is waiting on the peer
        assert not service.let_go.is_set()
        route.cancel()  # what grpclib does when the connection is lost
        await asyncio.gather(route, return_exceptions=True)
        assert service.let_go.is_set(), "the subscription outlived its call"

    asyncio.run(scenario())


BATCHES, PER_BATCH = 20, 500


class _Backlog(FoundryService):
    """Watch with a backlog: batches of events waiting, as a chain of thousands leaves them."""

    def __init__(self) -> None:
        super().__init__(mailboxes=None)  # type: ignore[arg-type]  # asks no actor
        self.log: list[str] = []

    async def watch_batches(
        self, message: api.WatchRequest
    ) -> AsyncGenerator[list[api.WatchResponse], None]:
        for b in range(BATCHES):
            self.log.append("batch")
            yield [
                api.WatchResponse(event_id=f"e{b}-{n}", event_type="fan_item", payload_json="{}")
                for n in range(PER_BATCH)
            ]


class _H2Stream:
    """The HTTP/2 stream under grpclib's: a peer that reads as fast as it is sent to."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    async def send_data(self, data: bytes) -> None:
        self.writes.append(bytes(data))


class _FastPeer:
    def __init__(self) -> None:
        self._stream = _H2Stream()

    async def recv_message(self) -> api.WatchRequest:
        return api.WatchRequest()

    async def send_initial_metadata(self) -> None:
        return None


def test_a_watch_backlog_goes_out_in_few_writes_and_lets_other_calls_run_between_batches():
    """40 watchers of a chain of 9,000 events each sent its backlog an event at a time, in one
    turn of the loop (a peer that reads never makes a send wait): every other call waited (a
    Status took 12 s)."""

    async def scenario() -> None:
        service, peer = _Backlog(), _FastPeer()

        async def other_call() -> None:
            while not route.done():
                service.log.append("other")
                await asyncio.sleep(0)

        route = asyncio.create_task(service._serve_watch(peer))  # type: ignore[arg-type]
        await asyncio.gather(route, other_call())

        sent = b"".join(peer._stream.writes)
        count, offset = 0, 0
        while offset < len(sent):  # gRPC length-prefixed messages, back to back
            length = int.from_bytes(sent[offset + 1 : offset + 5], "big")
            offset, count = offset + 5 + length, count + 1
        assert count == BATCHES * PER_BATCH
        assert len(peer._stream.writes) <= BATCHES * (1 + len(sent) // 65_536 // BATCHES + 1)
        # between any two batches, the other call had a turn
        turns = "".join("b" if entry == "batch" else "o" for entry in service.log)
        assert "bb" not in turns.lstrip("o"), turns

    asyncio.run(scenario())


def test_small_messages_go_out_in_writes_of_about_64_kb_not_one_copy_of_the_whole_batch():
    """A batch of 8 MB of small events joined into one write was a copy of it per watcher,
    held while a slow watcher's window let it out."""
    from foundry.kernel.edge.grpc.internals import UNCOPIED_BYTES, send_frames

    messages = [bytes([n % 251]) * 1_000 for n in range(2_000)]  # 2 MB of 1 KB messages
    peer = _FastPeer()
    asyncio.run(send_frames(peer, messages))  # type: ignore[arg-type]

    assert b"".join(peer._stream.writes) == b"".join(
        b"\x00" + len(m).to_bytes(4, "big") + m for m in messages
    )
    assert max(map(len, peer._stream.writes)) < 2 * UNCOPIED_BYTES


async def test_a_watch_cancelled_while_it_subscribes_lets_its_subscription_go():
    """The broker took the subscription, then the Watch was cancelled before its answer came
    (a client cancelling as the stream opened): its sink was never closed, so the broker offered
    it every later event for good (20,000 such made a burst cost 40× the loop's time: a hunt)."""
    import trio
    from foundry.kernel.actors.messages import Mailboxes
    from foundry.kernel.actors.tap.actor import TapBroker

    watching, sinks = trio.CancelScope(), []

    class CancellingAsItSubscribes(TapBroker):
        def _subscribe(self, message: Any) -> None:
            watching.cancel()  # the asker is cancelled as it waits for the answer,
            sinks.append(message.sink)
            super()._subscribe(message)  # which the broker gives: it holds the subscription

    tap_send, tap_receive = trio.open_memory_channel[Any](16)
    others = dict.fromkeys(("engine", "scheduler", "replay", "gate", "attestor", "store"))
    service = FoundryService(Mailboxes(tap=tap_send, **others))  # (the Watch asks only the tap)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(CancellingAsItSubscribes(tap_receive, buffer=16).run)
            with watching:
                async for _ in service.watch_batches(api.WatchRequest(project="quiet")):
                    pass
            assert len(sinks) == 1
            assert sinks[0].closed, "the subscription outlived its cancelled Watch"
            nursery.cancel_scope.cancel()
