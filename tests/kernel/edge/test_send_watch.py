"""``SendWatch``: sends to clients that read none of them are given up (``send_watch.py``). The
stream is a stand-in for a socket whose peer reads at a pace the test sets; the clock is trio's
autojump clock, so the timeouts cost no wall time."""

from __future__ import annotations

import math

import pytest
import trio
from foundry.kernel.edge.http.send_watch import CLOSING_SECONDS, PIECE, SendGivenUp, SendWatch


class Peer:
    """A socket's far end: takes each piece after ``delay`` seconds (inf: never)."""

    def __init__(self, delay: float) -> None:
        self.delay, self.received = delay, 0

    async def send_all(self, data: bytes | memoryview) -> None:
        await trio.sleep(self.delay) if math.isfinite(self.delay) else await trio.sleep_forever()
        self.received += len(data)


async def _send(watch: SendWatch, peer: Peer, size: int, outcome: dict[str, object]) -> None:
    started = trio.current_time()
    try:
        await watch.send(peer, b"x" * size)
        outcome["result"] = "sent"
    except SendGivenUp as exc:
        outcome["result"] = str(exc)
    outcome["seconds"] = trio.current_time() - started


async def test_a_send_that_moves_nothing_for_the_stall_timeout_is_given_up(autojump_clock):
    watch, peer, outcome = SendWatch(10.0), Peer(math.inf), {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch.run)
        await _send(watch, peer, 100, outcome)
        nursery.cancel_scope.cancel()
    assert outcome["result"] == "the client read none of a reply for 10 s ([http] body_timeout)"
    assert 10.0 <= outcome["seconds"] <= 11.0  # type: ignore[operator]
    assert watch.given_up == 1


async def test_once_the_listener_closes_a_wait_is_given_up_within_a_second_or_two(autojump_clock):
    """hypercorn shields its sends from cancellation: a WebSocket client reading nothing held
    the daemon's stop for the whole body_timeout (58 s after SIGTERM, a hunt). Once closing, a
    send waiting already and one begun after are given up ``CLOSING_SECONDS`` without progress;
    one that keeps moving is not."""
    watch, stuck, late, reading = SendWatch(60.0), {}, {}, {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch.run)
        nursery.start_soon(_send, watch, Peer(math.inf), 100, stuck)
        await trio.sleep(5.0)
        watch.closing()
        closed_at = trio.current_time()
        nursery.start_soon(_send, watch, Peer(math.inf), 100, late)
        nursery.start_soon(_send, watch, Peer(0.5), PIECE * 8, reading)  # a piece every 0.5 s
        await trio.sleep(10.0)
        nursery.cancel_scope.cancel()
    assert (
        stuck["result"]
        == late["result"]
        == (f"the client read none of a reply for {CLOSING_SECONDS:g} s as the listener closed")
    )
    assert stuck["seconds"] <= 5.0 + CLOSING_SECONDS + 1.0  # type: ignore[operator]
    assert late["seconds"] <= CLOSING_SECONDS + 1.0  # type: ignore[operator]
    assert reading["result"] == "sent"
    assert trio.current_time() - closed_at >= 10.0


async def test_a_slow_reader_that_keeps_moving_gets_its_whole_reply(autojump_clock):
    """Each piece takes 6 s, the whole reply 60 s, against a stall timeout of 10: it moves, so
    it is never given up, however long it takes."""
    watch, peer, outcome = SendWatch(10.0), Peer(6.0), {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch.run)
        await _send(watch, peer, 10 * PIECE, outcome)
        nursery.cancel_scope.cancel()
    assert outcome["result"] == "sent"
    assert peer.received == 10 * PIECE
    assert outcome["seconds"] == pytest.approx(60.0)


async def test_over_the_budget_the_largest_stalled_send_is_given_up_first(autojump_clock):
    watch = SendWatch(60.0, budget=5 * PIECE)
    large, small, reading = {}, {}, {}  # type: ignore[var-annotated]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch.run)
        async with trio.open_nursery() as sends:
            sends.start_soon(_send, watch, Peer(math.inf), 4 * PIECE, large)
            sends.start_soon(_send, watch, Peer(math.inf), 2 * PIECE, small)
            sends.start_soon(_send, watch, Peer(1.0), 40 * PIECE, reading)
        nursery.cancel_scope.cancel()
    assert "while unread replies held over" in large["result"]
    assert large["seconds"] <= 7.0  # stalled after 5 s, given up at the next look
    # under the budget once the large one was gone: held until the stall timeout
    assert small["result"] == "the client read none of a reply for 60 s ([http] body_timeout)"
    assert 60.0 <= small["seconds"] <= 61.0
    assert reading["result"] == "sent"  # a client that reads is never the one closed


class _Held:
    """A wait that moves by its own account (as an HTTP/2 stream's buffer does)."""

    def __init__(self, left: int) -> None:
        self.left, self.since, self.reasons = left, 0.0, []  # type: list[str]

    def give_up(self, reason: str) -> None:
        self.reasons.append(reason)


async def test_a_held_wait_is_given_up_once_and_its_give_up_runs_in_the_watch(
    autojump_clock, caplog
):
    """:meth:`SendWatch.hold`: a wait given up is let go of (given up once); what its give-up
    runs in :meth:`SendWatch.soon` may fail — logged, and the watch goes on looking."""
    watch = SendWatch(10.0)
    stalled, moving = _Held(100), _Held(100)
    ran: list[str] = []

    async def failing() -> None:
        ran.append("failing")
        raise RuntimeError("the connection went away")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch.run)
        await trio.lowlevel.checkpoint()
        watch.hold(stalled)
        watch.hold(moving)
        for _ in range(15):
            await trio.sleep(1.0)
            moving.since = trio.current_time()
        watch.release(moving)  # done: no longer looked at
        watch.soon(failing)
        await trio.sleep(1.0)
        watch.hold(_Held(1))  # looked at after the failure: the watch still runs
        await trio.sleep(11.0)
        nursery.cancel_scope.cancel()
    assert stalled.reasons == ["read none of a reply for 10 s ([http] body_timeout)"]
    assert moving.reasons == []
    assert ran == ["failing"]
    assert "could not give up a reply: RuntimeError: the connection went away" in caplog.text
