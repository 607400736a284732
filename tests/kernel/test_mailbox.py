"""ask/post/Reply: the request-reply pattern every actor uses."""

import pytest
import trio
import trio.testing
from foundry.kernel.actors.mailbox import ask, post, reply_pair
from foundry.kernel.errors import Unavailable

from .harness import GUARD_SECONDS


async def echo_actor(inbox):
    async for value, reply in inbox:
        if isinstance(value, Exception):
            reply.fail(value)
        else:
            reply.send(value * 2)


async def test_ask_gets_the_answer_or_raises_the_failure():
    send, receive = trio.open_memory_channel(10)
    with trio.fail_after(GUARD_SECONDS):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(echo_actor, receive)
            assert await ask(send, lambda r: (21, r)) == 42
            with pytest.raises(KeyError, match="nope"):
                await ask(send, lambda r: (KeyError("nope"), r))
            send.close()


async def test_post_returns_before_the_answer_and_wait_can_repeat():
    send, receive = trio.open_memory_channel(10)
    pending = await post(send, lambda r: ("hello", r))
    value, reply = receive.receive_nowait()
    reply.send(value.upper())

    assert await pending.wait() == "HELLO"
    assert await pending.wait() == "HELLO"


async def test_a_reply_nobody_waits_for_is_harmless():
    reply, pending = reply_pair()
    del pending  # the asker gave up

    reply.send("late")  # must not raise


async def test_an_unanswered_request_is_unavailable():
    reply, pending = reply_pair()
    reply.abandon()  # the actor stopped without answering

    with pytest.raises(Unavailable):
        await pending.wait()


async def test_asking_a_stopped_actor_is_unavailable():
    send, receive = trio.open_memory_channel(1)
    receive.close()

    with pytest.raises(Unavailable, match="shutting down"):
        await ask(send, lambda r: ("x", r))


async def test_a_cancelled_asker_does_not_break_the_actor():
    send, receive = trio.open_memory_channel(10)
    hold = trio.Event()
    answered = []

    async def slow_actor():
        async for value, reply in receive:
            await hold.wait()
            reply.send(value)
            answered.append(value)

    with trio.fail_after(GUARD_SECONDS):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(slow_actor)
            with trio.move_on_after(0.01):
                await ask(send, lambda r: ("first", r))
            hold.set()
            assert await ask(send, lambda r: ("second", r)) == "second"
            send.close()

    assert answered == ["first", "second"]
