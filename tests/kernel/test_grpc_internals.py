"""Canary for kernel/edge/grpc/internals.py, the one module that touches private attributes of
grpclib and trio-asyncio: each thing it touches is still where it was (a failure names the library
and what disappeared), each function takes its fast path today, and each fallback works."""

from __future__ import annotations

import asyncio
import gc
import gzip
import inspect
import time
from typing import Any

import grpclib
import grpclib.metadata
import grpclib.protocol
import grpclib.server
import grpclib.stream
import grpclib.utils
import h2.config
import h2.connection
import h2.events
import pytest
import trio_asyncio
from foundry.kernel.edge.grpc import internals
from foundry.kernel.edge.grpc.server import RequestCodec, bind
from foundry.proto import foundry_api
from foundry.proto import runtime_api as api
from grpclib import GRPCError
from grpclib.client import Channel
from grpclib.const import Cardinality, Handler, Status
from grpclib.server import Server

GRPCLIB = f"grpclib {grpclib.__version__}"
TRIO_ASYNCIO = f"trio-asyncio {trio_asyncio.__version__}"
TAP_RUN = "/fleetforge.runtime.v1.RuntimeService/TapRun"
GET_RUN = "/fleetforge.runtime.v1.RuntimeService/GetRun"


# --- what is touched is still there ------------------------------------------------------------


def test_grpclib_server_still_reads_messages_through_its_module_level_recv_message():
    reason = internals.recv_message_is_replaceable()
    assert reason is None, (
        f"{GRPCLIB}: {reason}; the message-size limit in internals.install_message_limit no "
        "longer applies before a message is read (only the codec's check after the read)"
    )


def test_the_replaced_recv_message_has_the_signature_and_framing_we_mimic():
    params = list(inspect.signature(internals.ORIGINAL_RECV_MESSAGE).parameters)
    assert params == ["stream", "codec", "message_type"], (
        f"{GRPCLIB}: grpclib.stream.recv_message changed its parameters to {params}"
    )
    source = inspect.getsource(internals.ORIGINAL_RECV_MESSAGE)
    assert "recv_data(5)" in source, f"{GRPCLIB}: grpclib changed its message framing"
    assert "size" in inspect.signature(grpclib.protocol.Stream.recv_data).parameters, (
        f"{GRPCLIB}: grpclib.protocol.Stream.recv_data(size) is gone"
    )


def test_grpclib_server_streams_still_hold_the_http2_stream_and_its_send_data():
    init = inspect.getsource(grpclib.server.Stream.__init__)
    assert "self._stream = stream" in init, (
        f"{GRPCLIB}: grpclib.server.Stream no longer keeps its protocol stream in _stream; "
        "internals.send_frames falls back to one send_message per message"
    )
    params = list(inspect.signature(grpclib.protocol.Stream.send_data).parameters)
    assert params[:2] == ["self", "data"], (
        f"{GRPCLIB}: grpclib.protocol.Stream.send_data(data, ...) changed to {params}"
    )


def test_grpclib_still_marks_a_unary_reply_sent_in_send_message_done():
    said = (
        f"{GRPCLIB}: grpclib.server.Stream no longer records a sent message in "
        "_send_message_done; internals.send_frames cannot answer a unary call (GetRun)"
    )
    assert "self._send_message_done = True" in inspect.getsource(
        grpclib.server.Stream.send_message
    ), said
    assert "_send_message_done" in inspect.getsource(grpclib.server.Stream.__aexit__), said


def test_trio_asyncio_still_runs_its_loop_one_callback_at_a_time_in_main_loop_one():
    reason = internals._main_loop_one_is_patchable()
    assert reason is None, (
        f"{TRIO_ASYNCIO}: {reason}; internals.batch_ready_callbacks cannot batch asyncio "
        "callbacks (every gRPC call gets slower)"
    )


def test_grpclib_server_still_keeps_its_asyncio_server_in_underscore_server():
    async def go() -> object:
        server = Server([])
        with bind("127.0.0.1", 0) as sock:
            await server.start(sock=sock)
            try:
                return getattr(server, "_server", None)
            finally:
                server.close()
                await server.wait_closed()

    listener = asyncio.run(go())
    assert isinstance(listener, asyncio.AbstractServer), (
        f"{GRPCLIB}: grpclib.server.Server._server is no longer the asyncio server; "
        "internals.stop_listening cannot stop the listener while calls drain"
    )


# --- each function works, on its fast path and on its fallback ----------------------------------


def events(n: int) -> list[bytes]:
    return [bytes(api.RunEvent(run_id="run", kind=f"k{i}")) for i in range(n)]


class Tapper:
    """TapRun answered with :func:`internals.send_frames` of three serialized events."""

    def __init__(self) -> None:
        self.fast_path: bool | None = None

    async def serve(self, stream: grpclib.server.Stream) -> None:
        await stream.recv_message()
        await stream.send_initial_metadata()
        self.fast_path = internals.raw_send_data(stream) is not None
        await internals.send_frames(stream, events(3))

    def __mapping__(self) -> dict[str, Handler]:
        return {
            TAP_RUN: Handler(self.serve, Cardinality.UNARY_STREAM, api.TapRunRequest, api.RunEvent)
        }


async def tap(service: object, request: api.TapRunRequest, limit: int = 1 << 20) -> list[str]:
    server = Server([service], codec=RequestCodec(limit))
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    await server.start(sock=sock)
    channel = Channel("127.0.0.1", port)
    try:
        stub = api.RuntimeServiceStub(channel)
        return [event.kind async for event in stub.tap_run(request)]
    finally:
        channel.close()
        server.close()
        await server.wait_closed()


def test_send_frames_writes_many_messages_at_once():
    tapper = Tapper()
    assert asyncio.run(tap(tapper, api.TapRunRequest(run_id="r"))) == ["k0", "k1", "k2"]
    assert tapper.fast_path, f"{GRPCLIB}: send_frames took its fallback"


class RunGetter:
    """GetRun answered with :func:`internals.send_frames` of one serialized reply."""

    async def serve(self, stream: grpclib.server.Stream) -> None:
        request = await stream.recv_message()
        await stream.send_initial_metadata()
        reply = api.GetRunResponse(run=api.RunDetail(run_id=request.run_id))
        await internals.send_frames(stream, [bytes(reply)])

    def __mapping__(self) -> dict[str, Handler]:
        return {GET_RUN: Handler(self.serve, Cardinality.UNARY_UNARY, api.GetRunRequest,
                                 api.GetRunResponse)}  # fmt: skip


async def get_run(run_id: str) -> str:
    server = Server([RunGetter()], codec=RequestCodec(1 << 20))
    sock = bind("127.0.0.1", 0)
    await server.start(sock=sock)
    channel = Channel("127.0.0.1", sock.getsockname()[1])
    try:
        reply = await api.RuntimeServiceStub(channel).get_run(api.GetRunRequest(run_id=run_id))
        return reply.run.run_id
    finally:
        channel.close()
        server.close()
        await server.wait_closed()


def test_send_frames_answers_a_unary_call():
    """grpclib ended a unary call whose reply went out through send_frames UNKNOWN ("requires
    a single message to be sent"), its reply already sent."""
    assert asyncio.run(get_run("run_1")) == "run_1"


def test_send_frames_falls_back_to_send_message_per_message(monkeypatch):
    monkeypatch.setattr(internals, "raw_send_data", lambda stream: None)
    tapper = Tapper()
    assert asyncio.run(tap(tapper, api.TapRunRequest(run_id="r"))) == ["k0", "k1", "k2"]
    assert tapper.fast_path is False


def oversized_request_status(limit: int) -> GRPCError:
    with pytest.raises(GRPCError) as caught:
        asyncio.run(tap(Tapper(), api.TapRunRequest(run_id="r" * (limit + 10)), limit=limit))
    return caught.value


def test_the_message_limit_refuses_an_oversized_request(monkeypatch):
    monkeypatch.setattr(grpclib.server, "recv_message", internals.ORIGINAL_RECV_MESSAGE)
    assert internals.install_message_limit(100) is True
    assert grpclib.server.recv_message is not internals.ORIGINAL_RECV_MESSAGE
    error = oversized_request_status(100)
    assert error.status == Status.RESOURCE_EXHAUSTED
    assert "100-byte message limit" in (error.message or "")


def test_without_the_replacement_the_codec_still_refuses_an_oversized_request(monkeypatch):
    monkeypatch.setattr(grpclib.server, "recv_message", internals.ORIGINAL_RECV_MESSAGE)
    monkeypatch.setattr(internals, "recv_message_is_replaceable", lambda: "simulated")
    assert internals.install_message_limit(100) is False
    assert grpclib.server.recv_message is internals.ORIGINAL_RECV_MESSAGE
    error = oversized_request_status(100)
    assert error.status == Status.RESOURCE_EXHAUSTED
    assert "100-byte message limit" in (error.message or "")


def test_stop_listening_closes_the_listener_and_keeps_the_call_in_flight():
    release = asyncio.Event()

    class Slow(Tapper):
        async def serve(self, stream: grpclib.server.Stream) -> None:
            await stream.recv_message()
            await stream.send_initial_metadata()
            started.set()
            await release.wait()
            await internals.send_frames(stream, events(2))

    async def go() -> tuple[bool, list[str], bool]:
        server = Server([Slow()], codec=RequestCodec(1 << 20))
        sock = bind("127.0.0.1", 0)
        port = sock.getsockname()[1]
        await server.start(sock=sock)
        channel = Channel("127.0.0.1", port)
        try:
            stub = api.RuntimeServiceStub(channel)
            call = asyncio.ensure_future(_kinds(stub.tap_run(api.TapRunRequest(run_id="r"))))
            await started.wait()
            stopped = internals.stop_listening(server)
            refused = await _refused(port)
            release.set()
            return stopped, await call, refused
        finally:
            channel.close()
            server.close()
            await server.wait_closed()

    started = asyncio.Event()
    stopped, kinds, refused = asyncio.run(go())
    assert stopped
    assert kinds == ["k0", "k1"]
    assert refused, "a new connection was accepted after stop_listening"


async def _kinds(stream: object) -> list[str]:
    return [event.kind async for event in stream]  # type: ignore[attr-defined]


async def _refused(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return True
    writer.close()
    await writer.wait_closed()
    return False


def test_stop_listening_without_the_asyncio_server_says_so():
    class NoListener:
        pass

    assert internals.stop_listening(NoListener()) is False  # type: ignore[arg-type]


def test_batch_ready_callbacks_installs_once_and_falls_back_when_trio_asyncio_changed(
    monkeypatch,
):
    loop_class = internals._trio_loop_class()
    monkeypatch.setattr(loop_class, "_main_loop_one", loop_class._main_loop_one)
    assert internals.batch_ready_callbacks() is True
    installed = loop_class._main_loop_one
    assert internals.batch_ready_callbacks() is True  # idempotent: wraps the original once
    assert loop_class._main_loop_one.__wrapped__ is installed.__wrapped__

    class Changed:
        async def _main_loop_one(self) -> None:  # lost its no_wait
            return None

    monkeypatch.setattr(internals, "_trio_loop_class", lambda: Changed)
    assert internals.batch_ready_callbacks() is False


async def test_the_batched_loop_still_runs_asyncio_work_inside_trio(monkeypatch):
    loop_class = internals._trio_loop_class()
    monkeypatch.setattr(loop_class, "_main_loop_one", loop_class._main_loop_one)
    assert internals.batch_ready_callbacks() is True

    async def many_callbacks() -> int:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        count = 0

        def step(n: int) -> None:
            nonlocal count
            count += 1
            if n:
                loop.call_soon(step, n - 1)
            else:
                done.set_result(None)

        loop.call_soon(step, 500)
        await asyncio.wait_for(done, 10)
        return count

    async with trio_asyncio.open_loop():
        count = await trio_asyncio.aio_as_trio(many_callbacks)()
    assert count == 501


# --- memory: closed HTTP/2 streams and cancelled asyncio timers stay bounded ---------------------


def test_h2_still_remembers_closed_streams_in_a_bound_we_can_set():
    reason = internals.closed_streams_are_boundable()
    assert reason is None, (
        f"{GRPCLIB}: {reason}; internals.bound_closed_streams cannot keep a connection's memory "
        "of closed streams small (h2 keeps 65,536, ~9.5 MB per connection)"
    )


def test_a_grpclib_connection_remembers_only_the_bounded_number_of_closed_streams(monkeypatch):
    monkeypatch.setattr(grpclib.protocol, "H2Connection", grpclib.protocol.H2Connection)
    assert internals.bound_closed_streams(16) is True
    assert internals.bound_closed_streams(16) is True  # idempotent: no subclass of a subclass
    connection = grpclib.protocol.H2Connection()
    assert type(connection).__bases__ == (h2.connection.H2Connection,)
    for stream_id in range(1, 2_000, 2):
        connection._closed_streams[stream_id] = None
    assert len(connection._closed_streams) == 16


def test_trio_asyncio_still_keeps_its_timers_in_a_heap_we_can_compact():
    reason = internals._timers_are_compactable()
    assert reason is None, (
        f"{TRIO_ASYNCIO}: {reason}; internals.drop_cancelled_timers cannot drop cancelled timers "
        "(one per call with a deadline stays until due)"
    )


async def test_cancelled_asyncio_timers_do_not_pile_up_in_the_loop(monkeypatch):
    loop_class = internals._trio_loop_class()
    monkeypatch.setattr(loop_class, "_timer_handle_cancelled", loop_class._timer_handle_cancelled)
    assert internals.drop_cancelled_timers() is True

    async def calls_with_deadlines(count: int) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(count // 100):  # as grpclib: a timer per call, cancelled when it ends
            handles = [loop.call_later(3600, lambda: None) for _ in range(100)]
            await asyncio.sleep(0)
            for handle in handles:
                handle.cancel()
        kept = loop.call_later(3600, lambda: None)
        await asyncio.sleep(0.01)
        assert not kept.cancelled()

    async with trio_asyncio.open_loop() as loop:
        await trio_asyncio.aio_as_trio(calls_with_deadlines)(10_000)
        live = [t for t in loop._timers if not t.cancelled()]
        assert len(live) == 1  # the one not cancelled is still due
        assert len(loop._timers) < 300  # not 10,001


# --- unknown methods answer UNIMPLEMENTED with a content-type ------------------------------------


def test_grpclib_server_still_looks_methods_up_with_get_on_its_underscore_mapping():
    async def go() -> str | None:
        return internals.unknown_methods_are_answerable(Server([]))

    reason = asyncio.run(go())
    assert reason is None, (
        f"{GRPCLIB}: {reason}; internals.answer_unknown_methods falls back to grpclib's bare "
        "answer (grpc-status 12 without content-type: 'missing content-type' in clients)"
    )


async def call_unknown() -> GRPCError:
    """The error a grpclib client gets for an unknown method."""
    server = Server([Tapper()], codec=RequestCodec(1 << 20))
    assert internals.answer_unknown_methods(server) is True
    sock = bind("127.0.0.1", 0)
    await server.start(sock=sock)
    channel = Channel("127.0.0.1", sock.getsockname()[1])
    try:
        path = "/fleetforge.runtime.v1.RuntimeService/NoSuchMethod"
        async with channel.request(
            path, Cardinality.UNARY_UNARY, api.TapRunRequest, api.RunEvent
        ) as stream:
            await stream.send_message(api.TapRunRequest(run_id="r"), end=True)
            try:
                await stream.recv_message()
            except GRPCError as exc:
                return exc
            raise AssertionError("an unknown method was answered")
    finally:
        channel.close()
        server.close()
        await server.wait_closed()


def test_an_unknown_method_is_unimplemented_through_grpclibs_normal_answer():
    error = asyncio.run(call_unknown())
    assert error.status == Status.UNIMPLEMENTED
    assert error.message == "unknown method '/fleetforge.runtime.v1.RuntimeService/NoSuchMethod'"


def test_answer_unknown_methods_falls_back_when_the_mapping_is_gone():
    class NoMapping:
        pass

    assert internals.answer_unknown_methods(NoMapping()) is False  # type: ignore[arg-type]


# --- request headers grpclib cannot read ---------------------------------------------------------


def test_grpclib_still_reads_metadata_and_deadlines_where_they_are_patched():
    reason = internals.header_reading_is_patchable()
    assert reason is None, (
        f"{GRPCLIB}: {reason}; internals.read_hostile_headers falls back: a -bin metadata value "
        "that is not base64 hangs its call, and a bad grpc-timeout is UNKNOWN, no content-type"
    )


# --- a deadline already passed ------------------------------------------------------------------


def test_grpclib_still_makes_a_deadline_wrapper_it_checks_for_cancellation():
    reason = internals.expired_deadlines_are_answerable()
    assert reason is None, (
        f"{GRPCLIB}: {reason}; internals.answer_expired_deadlines falls back: a call whose "
        "deadline passed before it began is UNKNOWN, with a traceback in the log"
    )


def test_a_deadline_passed_before_the_call_began_is_deadline_exceeded(monkeypatch):
    monkeypatch.setattr(grpclib.server, "DeadlineWrapper", grpclib.server.DeadlineWrapper)
    assert internals.answer_expired_deadlines() is True
    assert internals.answer_expired_deadlines() is True  # once: not a subclass of a subclass
    wrapper = grpclib.server.DeadlineWrapper()
    assert type(wrapper).__mro__[1] is grpclib.utils.DeadlineWrapper
    with (
        pytest.raises(asyncio.TimeoutError),
        wrapper.start(grpclib.metadata.Deadline.from_timeout(0.0)),
    ):
        pass
    assert wrapper.cancelled is True  # grpclib's request_handler then answers DEADLINE_EXCEEDED


def test_a_deadline_that_passes_between_start_and_entry_is_deadline_exceeded_too(monkeypatch):
    """grpclib checks the time left as its context is entered, not when ``start`` is called:
    a deadline of microseconds ran out in between (UNKNOWN and a traceback, ~1 call in 200)."""
    monkeypatch.setattr(grpclib.server, "DeadlineWrapper", grpclib.server.DeadlineWrapper)
    assert internals.answer_expired_deadlines() is True
    wrapper = grpclib.server.DeadlineWrapper()
    entering = wrapper.start(grpclib.metadata.Deadline.from_timeout(0.001))
    time.sleep(0.01)
    with pytest.raises(asyncio.TimeoutError), entering:
        pass
    assert wrapper.cancelled is True

    async def in_time() -> Any:
        fine = grpclib.server.DeadlineWrapper()
        with fine.start(grpclib.metadata.Deadline.from_timeout(5.0)):
            await asyncio.sleep(0)
        return fine.cancelled

    assert not asyncio.run(in_time())  # a deadline with time left runs the call as ever


def test_answer_expired_deadlines_falls_back_when_grpclib_changed(monkeypatch):
    monkeypatch.delattr(grpclib.server, "DeadlineWrapper")
    assert internals.answer_expired_deadlines() is False


# --- streams reset before their task started ------------------------------------------------------


def test_grpclib_handlers_still_keep_each_streams_task_where_we_hook_in():
    reason = internals.reset_streams_are_releasable()
    assert reason is None, (
        f"{GRPCLIB}: {reason}; internals.release_reset_streams falls back: a stream reset "
        "before its task ran stays in memory until its connection closes"
    )


ORDINARY = 20
TAP_HEADERS = [(":method", "POST"), (":scheme", "http"), (":path", TAP_RUN), (":authority", "x"),
               ("content-type", "application/grpc"), ("te", "trailers")]  # fmt: skip


async def _tapper_and_h2_client() -> tuple[Any, Any, Any, Any]:
    """A grpclib server of :class:`Tapper` on 127.0.0.1, and an h2 client connected to it:
    (server, reader, writer, h2 connection)."""
    server = Server([Tapper()], codec=RequestCodec(1 << 20))
    sock = bind("127.0.0.1", 0)
    await server.start(sock=sock)
    reader, writer = await asyncio.open_connection("127.0.0.1", sock.getsockname()[1])
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    return server, reader, writer, client


async def kept_after_resets(count: int) -> int:
    """How many streams the server's connection still holds after ``count`` requests on it,
    each reset (RST_STREAM) as soon as it was sent, the connection still open — measured once
    ``ORDINARY`` ordinary calls sent after them were answered (the server read them all)."""
    earlier = [o for o in gc.get_objects() if type(o) is grpclib.protocol.EventsProcessor]
    server, reader, writer, client = await _tapper_and_h2_client()
    reset = range(1, 2 * count, 2)
    ordinary = set(range(2 * count + 1, 2 * (count + ORDINARY), 2))
    for stream_id in [*reset, *sorted(ordinary)]:
        client.send_headers(stream_id, TAP_HEADERS)
        client.send_data(stream_id, b"\x00\x00\x00\x00\x00", end_stream=True)
        if stream_id not in ordinary:
            client.reset_stream(stream_id)
        writer.write(client.data_to_send())
    await writer.drain()
    async with asyncio.timeout(20):
        while ordinary:
            for event in client.receive_data(await reader.read(1 << 20)):
                if isinstance(event, h2.events.StreamEnded):
                    ordinary.discard(event.stream_id)
            writer.write(client.data_to_send())
    await asyncio.sleep(0.1)  # the cancelled tasks' callbacks
    kept = sum(
        len(o.streams)
        for o in gc.get_objects()
        if type(o) is grpclib.protocol.EventsProcessor and not any(o is e for e in earlier)
    )  # this server's connection's (the client here is h2 alone; earlier ones are others')
    writer.close()
    server.close()
    await server.wait_closed()
    return kept


def test_streams_reset_before_their_task_ran_are_released(monkeypatch):
    monkeypatch.setattr(grpclib.server.Handler, "accept", grpclib.server.Handler.accept)
    monkeypatch.setattr(grpclib.server.Handler, "cancel", grpclib.server.Handler.cancel)
    monkeypatch.delattr(grpclib.server.Handler, "_releases_reset", raising=False)
    leaked = asyncio.run(kept_after_resets(300))
    assert leaked > 200  # grpclib alone keeps them: the canary for the mend below
    assert internals.reset_streams_are_releasable() is None
    assert internals.release_reset_streams() is True
    assert internals.release_reset_streams() is True  # idempotent
    assert asyncio.run(kept_after_resets(300)) == 0


# --- a closed connection's tasks and bodies -------------------------------------------------------


def test_grpclib_handlers_still_keep_their_tasks_where_we_let_go_of_them():
    reason = internals.finished_tasks_are_forgettable()
    assert reason is None, (
        f"{GRPCLIB}: {reason}; internals.forget_finished_tasks falls back: a closed "
        "connection's tasks, and their streams' buffered bodies, stay in memory"
    )


async def buffered_after_close(streams: int) -> int:
    """Bytes of request bodies the server still holds (reachable or not: the collector is not
    run) once a connection that sent ``streams`` requests, each with half its message, closed."""
    server, _, writer, client = await _tapper_and_h2_client()
    for stream_id in range(1, 2 * streams, 2):
        client.send_headers(stream_id, TAP_HEADERS)
        # 1,500 bytes of a 3,000-byte message (40 fit the connection's first window)
        client.send_data(stream_id, b"\x00\x00\x00\x0b\xb8" + b"x" * 1_500)
    writer.write(client.data_to_send())
    await writer.drain()
    await asyncio.sleep(0.3)  # the server reads it all
    writer.close()
    await asyncio.sleep(0.3)  # it sees the connection lost, cancels the tasks
    held = sum(
        sum(len(chunk.data) for chunk in o._acked) + o._unacked.qsize()
        for o in gc.get_objects()
        if type(o) is grpclib.protocol.Buffer  # (isinstance: a dead weakproxy raises)
    )
    server.close()
    await server.wait_closed()
    return held


def test_a_closed_connections_unfinished_bodies_are_let_go(monkeypatch):
    # 200 streams of ~4 MiB bodies left unfinished, their connection reset, kept ~900 MB
    for name in ("close", "cancel"):
        monkeypatch.setattr(grpclib.server.Handler, name, inspect.unwrap(
            getattr(grpclib.server.Handler, name)))  # fmt: skip
    monkeypatch.delattr(grpclib.server.Handler, "_forgets_finished", raising=False)
    monkeypatch.delattr(grpclib.server.Handler, "_releases_reset", raising=False)
    gc.collect()
    assert asyncio.run(buffered_after_close(40)) >= 40 * 1_500  # grpclib alone: the canary
    gc.collect()
    assert internals.forget_finished_tasks() is True
    assert internals.forget_finished_tasks() is True  # idempotent
    assert asyncio.run(buffered_after_close(40)) == 0


def test_a_stream_reset_after_its_handler_closed_is_ignored():
    # the handler's tasks are let go at close; a reset arriving after (grpclib's Server.close
    # closes handlers, not their transports) popped a task no longer there: a KeyError
    async def closed_then_reset() -> None:
        codec = RequestCodec(1 << 20)
        handler = grpclib.server.Handler({}, codec, None, None)  # type: ignore[arg-type]
        stream = object()
        task = asyncio.get_running_loop().create_task(asyncio.sleep(10))
        handler._tasks[stream] = task  # type: ignore[index]
        handler.close()
        handler.cancel(stream)  # type: ignore[arg-type]
        await asyncio.sleep(0)
        assert task.cancelled()
        assert not handler._tasks

    assert internals.forget_finished_tasks() is True
    asyncio.run(closed_then_reset())


# --- control frame floods ------------------------------------------------------------------------


def test_grpclib_still_feeds_h2_where_we_count_control_frames():
    reason = internals.control_frames_are_countable()
    assert reason is None, (
        f"{GRPCLIB}: {reason}; internals.limit_control_frames falls back: a connection "
        "flooding PING and SETTINGS frames is served, slowing every other client"
    )
    assert internals.limit_control_frames() is True
    assert internals.limit_control_frames() is True  # idempotent


# --- one socket write per loop turn ---------------------------------------------------------------


def test_grpclib_servers_still_write_through_the_transport_their_h2protocol_is_given():
    reason = internals.writes_are_coalescable()
    assert reason is None, (
        f"{GRPCLIB}: {reason}; internals.coalesce_writes cannot gather a connection's frames "
        "(one socket write per HTTP/2 send, three per unary reply)"
    )


class FakeTransport:
    def __init__(self, fail: bool = False) -> None:
        self.writes: list[bytes] = []
        self.closed = self.aborted = False
        self.fail = fail

    def write(self, data: bytes) -> None:
        if self.fail:
            raise RuntimeError("simulated")
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"peername": ("192.0.2.1", 4)}.get(name, default)

    def get_write_buffer_size(self) -> int:
        return 7


def test_coalesced_writes_leave_together_in_order_once_the_queued_callbacks_ran():
    async def go() -> None:
        fake = FakeTransport()
        transport = internals.CoalescedWrites(fake, asyncio.get_running_loop())
        ran: list[str] = []
        asyncio.get_running_loop().call_soon(ran.append, "queued before")
        transport.write(b"head")
        transport.write(b"")
        transport.write(b"ers")
        assert fake.writes == []
        await asyncio.sleep(0)
        assert ran == ["queued before"]
        assert fake.writes == [b"headers"]
        big = b"x" * internals.FLUSH_AT
        transport.write(b"a")
        transport.write(big)  # at the threshold: written at once, after what came first
        assert fake.writes == [b"headers", b"a" + big]
        transport.write(b"trailers")
        transport.close()  # what is gathered goes first
        assert fake.writes[-1] == b"trailers"
        assert fake.closed
        assert transport.is_closing()
        await asyncio.sleep(0)  # the scheduled flush finds nothing left
        assert len(fake.writes) == 3
        assert transport.get_extra_info("peername") == ("192.0.2.1", 4)
        assert transport.get_write_buffer_size() == 7  # the rest is the real transport's

    asyncio.run(go())


def test_an_aborted_or_failing_coalesced_transport_drops_what_it_gathered(caplog):
    async def go() -> tuple[FakeTransport, FakeTransport]:
        loop = asyncio.get_running_loop()
        aborted = FakeTransport()
        transport = internals.CoalescedWrites(aborted, loop)
        transport.write(b"lost")
        transport.abort()
        failing = FakeTransport(fail=True)
        internals.CoalescedWrites(failing, loop).write(b"x")
        await asyncio.sleep(0)  # a failing write must not escape into the loop
        return aborted, failing

    aborted, failing = asyncio.run(go())
    assert aborted.writes == []
    assert aborted.aborted
    assert failing.aborted
    assert "a write to a connection failed" in caplog.text


class Echo(foundry_api.FoundryBase):
    """Emit answered with the request's payload as the event id (as large as the request)."""

    async def emit(self, message: foundry_api.EmitRequest) -> foundry_api.EmitResponse:
        return foundry_api.EmitResponse(event_id=message.payload_json, workflow_id="w")


async def echo_calls(payloads: list[str], limit: int) -> list[str]:
    server = Server([Echo()], codec=RequestCodec(limit))
    sock = bind("127.0.0.1", 0)
    await server.start(sock=sock)
    channel = Channel("127.0.0.1", sock.getsockname()[1])
    try:
        stub = foundry_api.FoundryStub(channel)
        requests = [foundry_api.EmitRequest(event_type="t", payload_json=p) for p in payloads]
        calls = [stub.emit(request) for request in requests]
        return [reply.event_id for reply in await asyncio.gather(*calls)]
    finally:
        channel.close()
        server.close()
        await server.wait_closed()


PAYLOADS = [*(f"p{i}" for i in range(60)), "L" * (3 << 20)]  # and one past the flow windows


@pytest.fixture
def counted_writes(monkeypatch) -> list[int]:
    """Installs coalesce_writes; the sizes of the writes CoalescedWrites hands on."""
    monkeypatch.setattr(grpclib.server, "H2Protocol", grpclib.server.H2Protocol)
    assert internals.coalesce_writes() is True
    assert internals.coalesce_writes() is True  # idempotent: no subclass of a subclass
    assert grpclib.server.H2Protocol.__bases__ == (grpclib.protocol.H2Protocol,)
    writes: list[int] = []
    real_flush = internals.CoalescedWrites.flush

    def counted_flush(self: internals.CoalescedWrites) -> None:
        writes.append(self._size)
        real_flush(self)

    monkeypatch.setattr(internals.CoalescedWrites, "flush", counted_flush)
    return writes


def few_writes(writes: list[int]) -> None:
    assert writes, "the server's writes did not go through CoalescedWrites"
    # 61 replies of three sends each, and the large one in 16 KiB frames, would be > 380 writes
    assert len([w for w in writes if w]) < 120, writes


def test_coalesced_servers_answer_many_calls_and_large_messages_in_few_writes(counted_writes):
    assert asyncio.run(echo_calls(PAYLOADS, 4 << 20)) == PAYLOADS
    few_writes(counted_writes)


async def test_coalesced_writes_in_the_daemons_loop(counted_writes, monkeypatch):
    loop_class = internals._trio_loop_class()
    monkeypatch.setattr(loop_class, "_main_loop_one", loop_class._main_loop_one)
    assert internals.batch_ready_callbacks() is True
    async with trio_asyncio.open_loop():
        answers = await trio_asyncio.aio_as_trio(echo_calls)(PAYLOADS, 4 << 20)
    assert answers == PAYLOADS
    few_writes(counted_writes)


def test_coalesce_writes_falls_back_when_grpclib_changed(monkeypatch):
    monkeypatch.setattr(grpclib.server, "H2Protocol", grpclib.server.H2Protocol)
    before = grpclib.server.H2Protocol
    monkeypatch.setattr(internals, "writes_are_coalescable", lambda: "simulated")
    assert internals.coalesce_writes() is False
    assert grpclib.server.H2Protocol is before


# --- replies a client does not read ------------------------------------------------------------


def test_grpclib_streams_still_wait_for_the_window_where_we_hook_in():
    reason = internals.reply_sends_are_boundable()
    assert reason is None, (
        f"{GRPCLIB}: {reason}; internals.bound_unread_replies falls back: a reply its client "
        "never reads is held as long as the connection"
    )


def test_while_stalled_replies_pass_a_budget_a_reply_that_must_wait_is_refused(monkeypatch):
    """The stall timeout bounds how long a reply is held; the budgets, how many stalled ones
    at once. Only replies that must wait for the client's window are refused, and only while
    stalled ones (no byte read for seconds) pass a budget: a client that reads is never."""
    assert internals.bound_unread_replies(60.0) is True
    assert internals.bound_unread_replies(60.0) is True  # idempotent

    class Window:
        def __init__(self, size: int) -> None:
            self.size = size

        def local_flow_control_window(self, stream_id: int) -> int:
            return self.size

    connection = object()

    class NoStream:  # the budgets are checked before grpclib's send_data touches the stream
        data_sent, id = 0, 1

        def __init__(self, window: int) -> None:
            self._h2_connection, self.connection = Window(window), connection

    async def send(size: int, window: int = 0) -> None:
        stream: Any = NoStream(window)
        await grpclib.protocol.Stream.send_data(stream, b"x" * size)

    for stalled, held in ((internals.REPLY_BUDGET + 1, 0),
                          (0, internals.CONNECTION_REPLY_BUDGET + 1)):  # fmt: skip
        monkeypatch.setattr(internals, "_STALLED_BYTES", [stalled])
        monkeypatch.setattr(internals, "_HELD", {connection: held})
        for size in (10, 100_000):  # small replies too: a window of 0 holds them the same
            with pytest.raises(GRPCError) as refused:
                asyncio.run(send(size))
            assert refused.value.status is Status.RESOURCE_EXHAUSTED
            assert "wait for clients that read none of them" in str(refused.value.message)
        with pytest.raises(AttributeError):  # what fits the window goes straight to grpclib
            asyncio.run(send(10, window=65_535))
    monkeypatch.setattr(internals, "_STALLED_BYTES", [0])
    monkeypatch.setattr(internals, "_HELD", {})
    with pytest.raises(AttributeError):  # under the budgets: any reply may wait, however large
        asyncio.run(send(internals.REPLY_BUDGET + 1))
    assert internals._STALLED_BYTES == [0]
    assert internals._HELD == {}  # what it held is let go when it ends


def test_a_reply_moves_with_its_connection_only_while_its_own_window_is_open():
    """The window is shared: a reply whose own window is open waits its turn while a large one
    takes the connection's (it moves with its connection). One whose own window stays 0 is not
    read, however much of the connection's other streams the client reads."""

    class H2Stream:
        outbound_flow_control_window = 0

    class Connection:
        data_sent = 0

    class Stream:
        data_sent, id = 0, 1

        def __init__(self) -> None:
            self._h2_connection = type("H2", (), {"streams": {1: H2Stream()}})()

    connection, stream = Connection(), Stream()
    watched = internals._Watched(stream, connection, 100_000, now=0.0)
    connection.data_sent = 5_000  # the client reads other streams
    assert watched.look(10.0) == 10.0  # this one's own window is 0: it has not moved
    stream._h2_connection.streams[1].outbound_flow_control_window = 65_535
    connection.data_sent = 9_000
    assert watched.look(12.0) == 0.0  # its turn will come: it moves with its connection
    stream.data_sent = 100
    assert watched.look(20.0) == 0.0  # it sent bytes of its own
    assert watched.look(25.0) == 5.0


def test_a_compressed_message_is_decoded_off_the_loop_by_its_inflated_size(monkeypatch):
    """The choice of a worker thread went by the length prefix: a 3.2 MB ListRuns sent as
    4.7 KB of gzip was decoded on the loop, which it held 4 s (found by a review)."""
    monkeypatch.setattr(grpclib.server, "recv_message", internals.ORIGINAL_RECV_MESSAGE)
    assert internals.install_message_limit(8 << 20) is True
    plain = bytes(api.ListRunsRequest(labels={f"k{i}": "v" for i in range(40_000)}))
    packed = gzip.compress(plain)
    asked: list[int] = []

    class Codec:
        def decodes_off_loop(self, message_type: object, length: int) -> bool:
            asked.append(length)
            return False

        def decode(self, data: bytes, message_type: type) -> object:
            return message_type().parse(data)

    class Stream:
        def __init__(self, body: bytes) -> None:
            self.body = body

        async def recv_data(self, size: int) -> bytes:
            taken, self.body = self.body[:size], self.body[size:]
            return taken

    async def receive() -> object:
        internals._ENCODING.set("gzip")
        frame = b"\x01" + len(packed).to_bytes(4, "big") + packed
        return await grpclib.server.recv_message(Stream(frame), Codec(), api.ListRunsRequest)

    received = asyncio.run(receive())
    assert asked == [len(plain)]  # not len(packed)
    assert isinstance(received, api.ListRunsRequest)
    assert len(received.labels) == 40_000
