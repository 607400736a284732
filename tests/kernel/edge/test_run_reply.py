"""A large run's replies with the loop's other work going on: GetRun's and ReplayRun's made
and serialized on a worker thread (``runtime_service.encoded_run``: the same message as the
reply made on the loop, from either edge's world), and TapRun's history framed a batch at a
time."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import trio
import trio_asyncio
from foundry.kernel.actors.scheduler.messages import RunView, StepView
from foundry.kernel.edge.grpc import upb_encode
from foundry.kernel.edge.grpc.fastproto import upb_class
from foundry.kernel.edge.grpc.internals import Encoded
from foundry.kernel.edge.grpc.run_replies import SharedRunReplies
from foundry.kernel.edge.grpc.runtime_service import (
    STRUCT_VALUES_ON_LOOP,
    encoded_run,
    run_detail,
    run_is_large,
)
from foundry.kernel.edge.worker_threads import OffLoopReply
from foundry.proto import runtime_api as api

T0 = datetime(2026, 12, 4, 20, 0, tzinfo=UTC)
BATCHES = 12  # of TapRun's history, in the test of its batches
LARGE = STRUCT_VALUES_ON_LOOP // 2 + 1  # steps whose outputs and errors are past the limit
OUTPUTS = [None, 3, 2.5, "text", True, [1, "a", None], {"n": 1, "deep": {"list": [{"x": False}]}}]


def step(i: int) -> StepView:
    done = i % 5 != 4
    return StepView(
        step_id=f"s{i:05d}", idx=i, type="transform", status="succeeded" if done else "pending",
        attempt=1 if done else 0, leased_at=T0 + timedelta(microseconds=i) if done else None,
        completed_at=T0 + timedelta(seconds=1, microseconds=i) if done else None,
        output=OUTPUTS[i % len(OUTPUTS)] if done else None,
        error={"message": "no"} if i % 11 == 0 else None, inputs={"value": i}, seed=i, model="",
        usage={}, span_id=f"{i:016x}" if done else "",
    )  # fmt: skip


def view(steps: int, *, ids: int, **fields: str) -> RunView:
    return RunView(
        run_id="run_0123", status="PAUSED_AT_STEP", dag_json='{"steps": []}',
        inputs={"topic": "trio", "n": [1, 2]}, seed=7, labels={"team": "a"},
        breakpoints=("s00003",), created_at=T0, updated_at=T0 + timedelta(seconds=9),
        steps=tuple(step(i) for i in range(steps)),
        attestation_ids=tuple(f"att_run_0123_{i}" for i in range(ids)), **fields,
    )  # fmt: skip


async def from_asyncio(run: RunView) -> bytes:
    """``encoded_run`` from an asyncio task on trio-asyncio's loop, as a gRPC handler calls it."""
    async with trio_asyncio.open_loop():
        encoded: bytes = await trio_asyncio.aio_as_trio(encoded_run)(run)
        return encoded


def upb_message(name: str, data: bytes) -> Any:
    """``data`` parsed by upb as the message ``name`` (upb compares messages field by field)."""
    return upb_class(name).FromString(data)


def in_one_go(run: RunView) -> bytes:
    return upb_encode.encode(api.GetRunResponse(run=run_detail(run)))


@pytest.mark.parametrize(
    "run",
    [
        view(LARGE, ids=0),
        view(
            LARGE + 7,
            ids=2051,
            paused_step="s00003",
            error="e",
            parent_run_id="run_src",
            branch_step="s00002",
            trace_id="ab" * 16,
            span_id="cd" * 8,
        ),  # fmt: skip
    ],
    ids=["steps only", "every field"],
)
def test_a_large_reply_made_on_a_thread_is_the_reply_in_one_go(run):
    assert run_is_large(run)
    expected = upb_message("GetRunResponse", in_one_go(run))
    assert upb_message("GetRunResponse", trio.run(encoded_run, run)) == expected  # HTTP edge
    assert upb_message("GetRunResponse", trio.run(from_asyncio, run)) == expected  # grpclib's
    assert [s.step_id for s in expected.run.steps] == [s.step_id for s in run.steps]
    assert list(expected.run.attestation_ids) == list(run.attestation_ids)


def test_a_run_is_large_by_its_values_nested_ones_too():
    assert not run_is_large(view(100, ids=0))
    huge = step(1)
    for output in (
        [None] * STRUCT_VALUES_ON_LOOP,
        {"a": {"b": list(range(STRUCT_VALUES_ON_LOOP))}},
    ):
        assert run_is_large(replace(view(2, ids=0), steps=(replace(huge, output=output),)))
    assert run_is_large(replace(view(2, ids=0), inputs={"x": [[1]] * STRUCT_VALUES_ON_LOOP}))
    assert not run_is_large(replace(view(2, ids=0), inputs={"x": "y" * 100_000}))
    # 10 MB of text cost GetRun ~22-43 ms to encode, as much as ~10,000 values
    assert run_is_large(replace(view(2, ids=0), inputs={"x": "y" * 10_000_000}))
    text = replace(huge, output="y" * 3_900_000)
    assert run_is_large(replace(view(2, ids=0), steps=(text,)))


async def test_a_large_reply_lets_other_tasks_run_while_it_is_made():
    """(In one go on the loop, an output of 900,000 nulls held every other client 11 s.)"""
    turns = 0

    async def other() -> None:
        nonlocal turns
        while True:
            turns += 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other)
        await trio.lowlevel.checkpoint()
        await encoded_run(replace(view(2, ids=0), inputs={"x": [None] * 200_000}))
        nursery.cancel_scope.cancel()
    assert turns >= 20


async def test_a_long_tap_history_is_framed_in_batches_with_other_tasks_between():
    """TapRun of a finished run: its history in batches of HISTORY_BATCH, each event once, in
    order, through the terminal one — and the loop's other tasks run between batches."""
    from foundry.kernel.actors.messages import Mailboxes
    from foundry.kernel.actors.scheduler.messages import OpenTap, TapOpened
    from foundry.kernel.core.runs import RunEventRecord
    from foundry.kernel.edge.grpc.runtime_service import HISTORY_BATCH, RuntimeService

    events = [RunEventRecord("run_0123", seq, "", "step_completed", {}, T0)
              for seq in range(1, HISTORY_BATCH * BATCHES)]  # fmt: skip
    events.append(RunEventRecord("run_0123", len(events) + 1, "", "run_succeeded", {}, T0))
    scheduler, inbox = trio.open_memory_channel[object](1)
    unused = trio.open_memory_channel[object](0)[0]
    service = RuntimeService(Mailboxes(unused, unused, scheduler, unused, unused, unused, unused))  # type: ignore[arg-type]
    turns: list[int] = []
    batches: list[list[int]] = []

    async def scheduler_answers() -> None:
        message = await inbox.receive()
        assert isinstance(message, OpenTap)
        message.reply.send(TapOpened(tuple(events)))

    async def other() -> None:
        while True:
            turns.append(len(batches))
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(scheduler_answers)
        nursery.start_soon(other)
        async for batch in service.tap_batches("run_0123", lambda e: e.seq):
            batches.append(batch)
        nursery.cancel_scope.cancel()
    assert [len(b) for b in batches] == [HISTORY_BATCH] * BATCHES
    assert [seq for b in batches for seq in b] == [e.seq for e in events]
    # trio runs a batch's tasks in either order: the other task's turn falls between two
    # batches at least every other time (never, when the history goes out in one go)
    assert len({t for t in turns if 0 < t < BATCHES}) >= BATCHES // 2 - 1


def test_a_long_replays_reply_made_on_a_thread_is_the_reply_in_one_go():
    from foundry.kernel.actors.replay.messages import Replay, ReplayedStep, ReplayResult
    from foundry.kernel.core.drift import Drift
    from foundry.kernel.edge.grpc.runtime_service import replay_response

    steps = tuple(
        ReplayedStep(
            step_id=f"s{i:05d}",
            snapshot={"step_id": f"s{i:05d}", "inputs": {"value": i}, "output": OUTPUTS[i % 7]},
            drift=Drift(
                OUTPUTS[i % 7], OUTPUTS[(i + i % 3) % 7], i % 4, 0.5 * (i % 2), 0.9, i % 3 == 0
            ),
            live=True,
        )
        for i in range(LARGE)
    )
    result = ReplayResult("run_0123", False, "live", steps)
    expected = upb_message("ReplayRunResponse", upb_encode.encode(replay_response(result)))

    def answered(from_asyncio: bool) -> object:
        request = api.ReplayRunRequest(run_id="run_0123")
        return trio.run(answer, "replay_run", request, Replay, result, from_asyncio)

    reply = answered(True)  # grpclib's: the bytes, made on a worker thread
    assert isinstance(reply, Encoded)
    assert upb_message("ReplayRunResponse", reply.data) == expected
    reply = answered(False)  # the HTTP edge's: made as its client reads it
    assert isinstance(reply, OffLoopReply)
    made = upb_encode.encode(reply.make())
    assert upb_message("ReplayRunResponse", made) == expected
    assert [s.step_id for s in expected.steps] == [s.step_id for s in steps]


def test_get_run_of_a_large_run_is_the_message_in_one_go_from_either_world():
    """The object form (the HTTP edge's, whose codec writes JSON or binary; grpclib's route
    sends ``encoded_run``'s bytes), made on a worker thread as its client reads it (JSON made
    from the message: its bytes parsed back made integers doubles); an ended run's names it, so
    the HTTP edge writes it once for its callers."""
    from foundry.kernel.actors.scheduler.messages import GetRun

    run = replace(view(LARGE, ids=5, span_id="cd" * 8), status="SUCCEEDED")
    expected = upb_message("GetRunResponse", in_one_go(run))

    for from_asyncio in (True, False):
        request = api.GetRunRequest(run_id=run.run_id)
        reply = trio.run(answer, "get_run", request, GetRun, run, from_asyncio)
        assert isinstance(reply, OffLoopReply)
        assert upb_message("GetRunResponse", upb_encode.encode(reply.make())) == expected
        assert reply.key == ("run_0123", "SUCCEEDED", run.updated_at, LARGE, 5)


# --- an ended run's reply, encoded once for all its callers (``run_replies``) -------------------


def test_a_small_reply_is_the_reply_in_one_go():
    run = view(3, ids=2)
    assert trio.run(encoded_run, run) == in_one_go(run)


class Encoder:
    """Counts its encodings; each waits for ``release`` (a caller stalled mid-encoding)."""

    def __init__(self) -> None:
        self.made = 0
        self.release = asyncio.Event()

    async def __call__(self, run: RunView) -> bytes:
        self.made += 1
        await self.release.wait()
        return f"{run.run_id}:{run.status}:{len(run.steps)}:{self.made}".encode()


async def callers(replies: SharedRunReplies, run: RunView, n: int, encode: Encoder) -> list[Any]:
    tasks = [asyncio.ensure_future(replies.reply(run, encode)) for _ in range(n)]
    await asyncio.sleep(0)
    encode.release.set()
    return list(await asyncio.gather(*tasks))


def test_concurrent_callers_of_an_ended_run_share_one_encoding():
    replies, encode = SharedRunReplies(), Encoder()
    got = asyncio.run(callers(replies, replace(view(3, ids=0), status="SUCCEEDED"), 20, encode))
    assert encode.made == 1
    assert all(reply is got[0] for reply in got)
    assert got[0].data == b"run_0123:SUCCEEDED:3:1"


def test_a_run_not_ended_is_encoded_for_each_caller():
    replies, encode = SharedRunReplies(), Encoder()
    got = asyncio.run(callers(replies, view(3, ids=0), 5, encode))  # paused
    assert encode.made == 5
    assert len({id(reply) for reply in got}) == 5


def test_a_cancelled_maker_leaves_the_encoding_to_a_waiting_caller():
    async def scenario() -> tuple[bytes, int]:
        replies, encode = SharedRunReplies(), Encoder()
        run = replace(view(3, ids=0), status="FAILED")
        maker = asyncio.ensure_future(replies.reply(run, encode))
        await asyncio.sleep(0)
        waiter = asyncio.ensure_future(replies.reply(run, encode))
        await asyncio.sleep(0)
        maker.cancel()  # its client went away mid-encoding
        await asyncio.sleep(0)
        encode.release.set()
        reply = await asyncio.wait_for(waiter, 5)
        return reply.data, encode.made

    assert asyncio.run(scenario()) == (b"run_0123:FAILED:3:2", 2)


def test_a_reply_over_the_kept_bytes_is_shared_only_while_in_use():
    async def scenario() -> tuple[bool, int, int]:
        replies, encode = SharedRunReplies(kept_bytes=10), Encoder()
        encode.release.set()
        run = replace(view(3, ids=0), status="CANCELED")
        held = await replies.reply(run, encode)  # a caller still sending it
        shared = await replies.reply(run, encode) is held
        del held
        await replies.reply(run, encode)
        return shared, encode.made, replies.kept_bytes

    assert asyncio.run(scenario()) == (True, 2, 0)


def test_an_ended_run_changed_since_is_encoded_again():
    async def scenario() -> list[bytes]:
        replies, encode = SharedRunReplies(), Encoder()
        encode.release.set()
        run = replace(view(3, ids=0), status="SUCCEEDED")
        later = replace(run, updated_at=run.updated_at + timedelta(seconds=1))
        return [(await replies.reply(r, encode)).data for r in (run, run, later)]

    assert asyncio.run(scenario()) == [b"run_0123:SUCCEEDED:3:1"] * 2 + [b"run_0123:SUCCEEDED:3:2"]


# --- a large run event, made ahead once for all its tappers -------------------------------------


def test_tappers_of_a_large_event_at_once_make_it_once(monkeypatch):
    """Each tapper made its own on a worker thread: 12 tappers, 6x the wait (a review)."""
    from foundry.kernel.core.runs import RunEventRecord
    from foundry.kernel.edge.grpc import runtime_service
    from foundry.kernel.edge.shared_replies import JSON, PROTO, SHARED_REPLIES, STREAM_FORMS

    event = RunEventRecord("run_once", 3, "a", "step_completed", {"output": [None] * 3_000}, T0)
    made: list[str] = []
    real_bytes, real_message = runtime_service.serialized_run_event, runtime_service.run_event

    def counted_bytes(e: Any) -> bytes:
        made.append("bytes")
        return real_bytes(e)

    def counted_message(e: Any) -> Any:
        made.append("message")
        return real_message(e)

    monkeypatch.setattr(runtime_service, "serialized_run_event", counted_bytes)
    monkeypatch.setattr(runtime_service, "run_event", counted_message)

    async def grpc_tappers() -> None:
        async def tappers() -> None:
            await asyncio.gather(*(runtime_service.encoded_ahead([event]) for _ in range(12)))

        async with trio_asyncio.open_loop():
            await trio_asyncio.aio_as_trio(tappers)()

    async def http_tappers() -> None:
        STREAM_FORMS.set(((PROTO, upb_encode.encode), (JSON, lambda m: m.to_json())))
        async with trio.open_nursery() as nursery:
            for _ in range(12):
                nursery.start_soon(runtime_service.shared_ahead, [event])

    trio.run(grpc_tappers)
    assert made == ["bytes"]
    assert runtime_service.encoded_run_event(event) == real_bytes(event)
    trio.run(http_tappers)
    assert made == ["bytes", "message"]
    message = runtime_service.shared_run_event(event)
    assert SHARED_REPLIES.encoded(message, PROTO, lambda m: b"made again") == upb_encode.encode(
        real_message(event)
    )  # fmt: skip


async def answer(method: str, request: Any, asked: type, found: Any, from_asyncio: bool) -> Any:
    """``RuntimeService.<method>(request)``, called from grpclib's world (asyncio) or the HTTP
    edge's (trio), its actor (the scheduler for GetRun, the replay actor for a Replay)
    answering ``found``."""
    from foundry.kernel.actors.messages import Mailboxes
    from foundry.kernel.edge.grpc.runtime_service import RuntimeService

    actor, inbox = trio.open_memory_channel[object](1)
    unused = trio.open_memory_channel[object](0)[0]
    channels = [unused] * 7
    channels[3 if asked.__name__ == "Replay" else 2] = actor  # (the replay actor, the scheduler)
    service = RuntimeService(Mailboxes(*channels))  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:

        async def actor_answers() -> None:
            message = await inbox.receive()
            assert isinstance(message, asked)
            message.reply.send(found)

        nursery.start_soon(actor_answers)
        call = getattr(service, method)
        if not from_asyncio:
            return await call(request)
        async with trio_asyncio.open_loop():
            return await trio_asyncio.aio_as_trio(call)(request)


def test_callers_of_a_large_ended_run_at_once_over_http_share_one_reply():
    """Each made its own on the heavy threads: 20 Connect proto callers took 12x as long as
    the one shared encoding before (a review). A run that may change is made for each."""
    from foundry.kernel.edge.http.routes import off_loop_reply

    run = replace(view(LARGE, ids=2), status="SUCCEEDED")
    made: list[str] = []

    def make() -> api.GetRunResponse:
        made.append("made")
        return api.GetRunResponse(run=run_detail(run))

    async def callers(key: Any, json: bool) -> list[bytes]:
        replies: list[bytes] = []

        async def call() -> None:
            replies.append((await off_loop_reply(OffLoopReply(make, key), json)).data)

        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(call)
        return replies

    for json in (False, True):
        made.clear()
        replies = trio.run(callers, ("shared-test", json), json)
        assert made == ["made"]
        assert len(set(replies)) == 1
    assert upb_message("GetRunResponse", trio.run(callers, ("shared-test", False), False)[0]) == (
        upb_message("GetRunResponse", in_one_go(run))
    )  # fmt: skip
    made.clear()
    trio.run(callers, None, False)
    assert len(made) == 10
