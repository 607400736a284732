"""Units of the HTTP edge: the connectrpc canary, the fast JSON codec against betterproto2's,
origins, the error table, and the bridge asked from trio tasks (the HTTP edge's world)."""

from __future__ import annotations

import inspect
import json
import math
import re
from dataclasses import dataclass

import pytest
import trio
import trio_asyncio
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from foundry.kernel import errors
from foundry.kernel.actors.tap.messages import Overflow, Publish, Subscribe
from foundry.kernel.edge.connections import ConnectionCap
from foundry.kernel.edge.grpc.bridge import QueueSink, StreamSink, ask_actor
from foundry.kernel.edge.http import hypercorn_guard, jsonfast, websocket
from foundry.kernel.edge.http.codecs import JsonCodec
from foundry.kernel.edge.http.cors import OriginPolicy, own_origins, parse_origin_entry
from foundry.kernel.edge.http.errors import CODE_OF, connect_error
from foundry.kernel.edge.http.hypercorn_guard import (
    _ResetAsEnd,
    bound_http2_streams,
    bound_websocket_messages,
    cap_connections,
    contain_connection_errors,
    ignore_data_of_closed_streams,
    limit_control_frames,
    release_streams_of_closed_connections,
    remember_fewer_closed_streams,
)
from foundry.kernel.edge.http.internals import connect_error_body, pick_loop_by_sniffio
from foundry.proto import analytics_api, foundry_api, runtime_api
from grpclib.const import Status

from tests.kernel.harness import GUARD_SECONDS
from tests.kernel.test_tap import started_broker

# --- the connectrpc canary ----------------------------------------------------------------------


async def test_connectrpc_uses_trio_in_trio_tasks_under_trio_asyncio():
    """``internals.pick_loop_by_sniffio`` still reaches connectrpc's loop choice; under
    trio-asyncio a trio task gets TrioLoop, an asyncio task the asyncio one."""
    from connectrpc import _server_async
    from connectrpc._server_trio import TrioLoop

    pick_loop_by_sniffio()
    async with trio_asyncio.open_loop():
        assert isinstance(_server_async._current_loop(), TrioLoop)

        async def from_asyncio():
            return _server_async._current_loop()

        assert not isinstance(await trio_asyncio.aio_as_trio(from_asyncio)(), TrioLoop)


async def test_hypercorn_serves_a_connection_by_tcp_server_run_and_its_error_stays_there(
    caplog, monkeypatch
):
    """``hypercorn_guard.contain_connection_errors`` still wraps what hypercorn awaits per
    connection (``TCPServer.__await__`` → ``run``): an error escaping it is logged and closes
    that connection's stream instead of leaving the listener's nursery."""
    from hypercorn.trio.tcp_server import TCPServer

    contain_connection_errors()
    fresh = hypercorn_guard.RecurringWarning(hypercorn_guard.log)  # no earlier test's period
    monkeypatch.setattr(hypercorn_guard, "CONNECTION_FAILED", fresh)
    closed = []

    class Stream:  # no SSL: ``run`` asks for its socket's addresses, which fail oddly here
        class socket:  # noqa: N801 - the attribute hypercorn reads
            family = 2

            @staticmethod
            def getpeername():
                raise LookupError("a connection's own failure")

        async def aclose(self):
            closed.append(True)

    server = TCPServer.__new__(TCPServer)
    server.stream = Stream()
    await server  # would raise LookupError through serve_listeners
    assert closed
    assert "an HTTP connection failed and is closed: LookupError" in caplog.text


async def test_a_hypercorn_listener_at_its_cap_closes_the_next_connection_unserved():
    """``TCPServer`` still keeps its hypercorn config as ``config``: the wrapper reads the cap
    from it (``hypercorn_guard.cap_connections``) and closes a connection over it at once."""
    from hypercorn.config import Config
    from hypercorn.trio.tcp_server import TCPServer

    contain_connection_errors()
    assert "self.config = config" in inspect.getsource(TCPServer.__init__)
    config = Config()
    cap = ConnectionCap(1, "HTTP")
    cap_connections(config, cap)
    assert cap.admit()  # the one connection it may hold
    closed = []

    class Stream:
        async def aclose(self):
            closed.append(True)

    server = TCPServer.__new__(TCPServer)
    server.config, server.stream = config, Stream()
    await server  # not served: hypercorn would have read the stream's socket
    assert closed == [True]
    assert (cap.live, cap.refused) == (1, 1)


async def test_hypercorn_reads_a_connection_through_its_stream_and_a_reset_reads_as_its_end():
    """``TCPServer`` still reads by ``self.stream.receive_some`` and still takes a reset for
    a plain stop (no end for h11): the wrapper's stream (``_ResetAsEnd``) reads it as ``b""``."""
    from hypercorn.trio.tcp_server import TCPServer

    read = inspect.getsource(TCPServer._read_data)
    assert "self.stream.receive_some" in read
    assert "trio.BrokenResourceError" in read

    class Reset:
        received = b"before"

        async def receive_some(self, max_bytes=None):
            if self.received:
                data, self.received = self.received, b""
                return data
            raise trio.BrokenResourceError("[Errno 104] Connection reset by peer")

    stream = _ResetAsEnd(Reset())
    assert await stream.receive_some(10) == b"before"
    assert await stream.receive_some(10) == b""
    assert stream.received == b""  # the rest is the wrapped stream's


def test_hypercorn_h2_still_finds_a_data_frames_stream_in_its_streams_table():
    """The canary of ``ignore_data_of_closed_streams``: hypercorn's HTTP/2 protocol keeps its
    streams in ``self.streams`` (a dict it makes in ``__init__``) and hands a DATA frame to
    ``self.streams[event.stream_id]``; once patched, a stream it no longer holds takes nothing."""
    from hypercorn.protocol.h2 import H2Protocol

    assert "self.streams: dict" in inspect.getsource(inspect.unwrap(H2Protocol.__init__))
    events = inspect.getsource(H2Protocol._handle_events)
    assert "h2.events.DataReceived" in events
    assert "await self.streams[event.stream_id].handle(" in events
    ignore_data_of_closed_streams()
    ignore_data_of_closed_streams()  # idempotent
    assert getattr(H2Protocol.__init__, "closed_streams_ignored", False)


def test_hypercorn_still_keeps_what_release_streams_of_closed_connections_lets_go():
    """The canary of ``release_streams_of_closed_connections``: hypercorn's HTTP/2 protocol
    keeps each stream's send buffer in ``stream_buffers`` (closed with ``close``, awaited by a
    send through ``drain``), handles a lost connection as ``Closed``; its TCP server reads in
    ``_read_data`` and keeps its keep-alive timer as ``idle_task`` running ``_idle_timeout``."""
    from hypercorn.protocol.h2 import H2Protocol, StreamBuffer
    from hypercorn.trio.tcp_server import TCPServer

    assert "self.stream_buffers: dict" in inspect.getsource(inspect.unwrap(H2Protocol.__init__))
    assert "isinstance(event, Closed)" in inspect.getsource(inspect.unwrap(H2Protocol.handle))
    assert {"close", "drain"} <= set(vars(StreamBuffer))
    run = inspect.getsource(inspect.unwrap(TCPServer.run))
    assert "await self._read_data()" in run
    assert "self.idle_task.restart(self._task_group, self._idle_timeout)" in run
    release_streams_of_closed_connections()
    release_streams_of_closed_connections()  # idempotent
    assert getattr(H2Protocol.handle, "buffers_released", False)


def test_hypercorn_h2_still_buffers_a_streams_reply_where_bound_http2_streams_watches_it():
    """The canary of ``bound_http2_streams``: a stream's reply goes through ``stream_send``
    into its ``StreamBuffer`` (``push``, waiting there while it holds two frames), the send
    task takes it out with ``pop`` as the window allows, and ends a stream whose window
    lookup fails (a reset stream) by closing its buffer and removing it and its priority
    node; a client's reset is handled by ``_close_stream`` and ``_window_updated``."""
    from hypercorn.protocol.h2 import H2Protocol, StreamBuffer

    send = inspect.getsource(inspect.unwrap(H2Protocol.stream_send))
    assert "await self.stream_buffers[event.stream_id].push(event.data)" in send
    assert "await self.stream_buffers[event.stream_id].drain()" in send
    assert "del self.buffer[:length]" in inspect.getsource(inspect.unwrap(StreamBuffer.pop))
    assert "await self._paused.wait()" in inspect.getsource(inspect.unwrap(StreamBuffer.push))
    sending = inspect.getsource(H2Protocol._send_data)
    assert "self.connection.local_flow_control_window(stream_id)" in sending
    assert "h2.exceptions.StreamClosedError" in sending
    assert "self.priority.remove_stream(stream_id)" in sending
    handling = inspect.getsource(H2Protocol._handle_events)
    assert "await self._close_stream(event.stream_id)" in handling
    assert "await self._window_updated(event.stream_id)" in handling
    bound_http2_streams()
    bound_http2_streams()  # idempotent
    assert getattr(H2Protocol.stream_send, "streams_bounded", False)


def test_hypercorn_websockets_still_buffer_and_negotiate_where_the_bound_watches():
    """The canary of ``bound_websocket_messages``: a WebSocket's message gathers in a
    ``WebsocketBuffer`` (``extend``: ``value``, ``length``, ``max_length``), an oversized one
    is ``FrameTooLargeError`` in ``WSStream._handle_events``, and the handshake accepts the
    extensions its ``extensions`` holds."""
    from hypercorn.protocol.ws_stream import Handshake, WebsocketBuffer, WSStream

    extend = inspect.getsource(inspect.unwrap(WebsocketBuffer.extend))
    assert "self.length += self.value.write(event.data)" in extend
    assert "raise FrameTooLargeError()" in extend
    handling = inspect.getsource(inspect.unwrap(WSStream._handle_events))
    assert "self.buffer.extend(event)" in handling
    assert "except FrameTooLargeError:" in handling
    # a frame wsproto cannot read is a close event its connection.events() yields; the close
    # frame goes out through _send_wsproto_event
    assert "for event in self.connection.events():" in handling
    assert "async def _send_wsproto_event(self, event" in inspect.getsource(WSStream)
    accept = inspect.getsource(Handshake.accept)
    assert "if self.extensions is not None:" in accept
    bound_websocket_messages()
    bound_websocket_messages()  # idempotent
    assert getattr(WebsocketBuffer.extend, "messages_bounded", False)


def test_a_websocket_text_message_is_bounded_in_its_utf8_bytes():
    from hypercorn.protocol.ws_stream import FrameTooLargeError, WebsocketBuffer
    from wsproto.events import TextMessage

    bound_websocket_messages()
    buffer = WebsocketBuffer(max_length=12)
    buffer.extend(TextMessage(data="雪雪", message_finished=False))  # 6 bytes, 2 characters
    with pytest.raises(FrameTooLargeError):
        buffer.extend(TextMessage(data="雪雪s", message_finished=True))  # 13 bytes, 5 characters
    with pytest.raises(FrameTooLargeError):  # over: nothing more of it is kept
        buffer.extend(TextMessage(data="s", message_finished=False))
    assert buffer.value is None
    buffer.clear()
    buffer.extend(TextMessage(data="雪雪雪雪", message_finished=True))  # a new message: 12 bytes
    assert buffer.to_message()["text"] == "雪雪雪雪"


def test_hypercorn_still_hands_a_connections_h2_events_to_handle_events():
    """The canary of ``hypercorn_guard.limit_control_frames``: what h2 makes of the bytes
    hypercorn reads goes to ``_handle_events`` in one list, where the control frames are
    counted before anything of them is handled."""
    from hypercorn.protocol.h2 import H2Protocol

    handle = inspect.getsource(inspect.unwrap(H2Protocol.handle))
    assert "events = self.connection.receive_data(event.data)" in handle
    assert "await self._handle_events(events)" in handle
    limit_control_frames()
    limit_control_frames()  # idempotent
    assert getattr(H2Protocol._handle_events, "control_frames_limited", False)


def test_hypercorn_connections_remember_a_bounded_number_of_closed_streams():
    """The canary of ``remember_fewer_closed_streams``: h2 keeps how closed streams ended in
    ``_closed_streams``, a ``SizeLimitDict`` sized at construction from MAX_CLOSED_STREAMS,
    and hypercorn's protocol makes its connection in ``__init__``."""
    import h2.connection
    from h2.utilities import SizeLimitDict
    from hypercorn.protocol.h2 import H2Protocol

    assert "SizeLimitDict(" in inspect.getsource(h2.connection.H2Connection.__init__)
    assert "self.connection = h2.connection.H2Connection(" in inspect.getsource(
        inspect.unwrap(H2Protocol.__init__)
    )
    remember_fewer_closed_streams()
    remember_fewer_closed_streams()  # idempotent
    assert getattr(H2Protocol.__init__, "closed_streams_bounded", False)
    table = SizeLimitDict(size_limit=3)
    for stream_id in range(1, 20, 2):
        table[stream_id] = None
    assert list(table) == [15, 17, 19]


@pytest.mark.parametrize(
    ("code", "status"),
    [(Code.INVALID_ARGUMENT, 400), (Code.RESOURCE_EXHAUSTED, 429), (Code.NOT_FOUND, 404),
     (Code.UNAVAILABLE, 503), (Code.INTERNAL, 500), (Code.UNAUTHENTICATED, 401)],
)  # fmt: skip
def test_connect_error_body_is_connectrpcs_own(code, status):
    """``internals.connect_error_body`` (the fast unary path's errors) still reaches
    connectrpc's wire error: the Connect spec's HTTP status and the JSON body, non-ASCII kept."""
    answer = connect_error_body(ConnectError(code, "request: événement"))
    assert answer[0] == status
    assert json.loads(answer[1]) == {"code": code.value, "message": "request: événement"}


# --- JSON ---------------------------------------------------------------------------------------

SAMPLES = [
    foundry_api.EmitResponse(event_id="evt_1", workflow_id="evt_1"),
    foundry_api.EmitRequest(event_type="x", throttle=foundry_api.Throttle.DRY_RUN),
    foundry_api.EmitRequest(throttle=foundry_api.Throttle(9)),  # unknown enum values: a number
    foundry_api.StatusResponse(workflows=[foundry_api.WorkflowStatus(
        workflow_id="w", task_blocks=[foundry_api.TaskBlockStatus(name="n", throttled=True)],
    )]),  # fmt: skip
    foundry_api.WatchResponse(event_id="e", throttled=False),
    runtime_api.GetRunResponse(
        run=runtime_api.RunDetail(run_id="r", status=runtime_api.RunStatus.FAILED)
    ),
    runtime_api.UpdateBreakpointsResponse(breakpoints=["a", "b"]),
    analytics_api.QueryResponse(columns=[analytics_api.Column(name="a", type="INT")],
                                rows_json=["[1]"], truncated=True, elapsed_ms=3),
    analytics_api.ListSavedQuestionsResponse(questions=[analytics_api.SavedQuestion(
        name="q", params=[analytics_api.SavedQuestionParam(name="p")])]),
    # 64-bit integers, written as decimal strings (a JSON Trace of 10,000 events went through
    # betterproto2 whole for them: 7-10 s with the daemon's loop held)
    foundry_api.TraceResponse(found=True, total_duration_ms=-(2**63), events=[
        foundry_api.TraceEvent(event_id="e", throttle=foundry_api.Throttle.AUDIT_ONLY)],
        block_executions=[
            foundry_api.TraceBlockExecution(block_name="b", duration_ms=2**64 - 1, attempts=2),
            foundry_api.TraceBlockExecution(block_name="c", duration_ms=0),
        ]),
    foundry_api.TraceResponse(total_duration_ms=0),
]  # fmt: skip


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_fast_json_writes_what_betterproto2_writes(message):
    assert jsonfast.to_dict(message) == message.to_dict()


def test_fast_json_reads_64_bit_integers_through_betterproto2():
    """Only writing takes them fast: reading a class with one stays betterproto2's (its checks
    of a 64-bit integer's text are its own)."""
    assert jsonfast._decoder(foundry_api.TraceBlockExecution) is None
    assert jsonfast._fields(foundry_api.TraceBlockExecution) is None
    assert jsonfast._fields(foundry_api.TraceBlockExecution, True) is not None


@pytest.mark.parametrize(
    ("kind", "document"),
    [
        (foundry_api.EmitRequest, {"eventType": "x", "throttle": "THROTTLE_DRY_RUN", "zz": 1}),
        (foundry_api.EmitRequest, {"event_type": "x", "payload_json": "{}", "throttle": 2}),
        (foundry_api.EmitRequest, {"throttle": 9}),
        (runtime_api.GetRunRequest, {"runId": "r"}),
        (runtime_api.ListChangeGatesRequest, {"changeId": "c", "limit": "5"}),
    ],
)
def test_fast_json_reads_what_betterproto2_reads(kind, document):
    assert jsonfast.from_dict(kind, document) == kind.from_dict(
        document, ignore_unknown_fields=True
    )


def test_the_json_codec_names_the_field_of_a_wrong_type():
    from connectrpc.errors import ConnectError

    with pytest.raises(ConnectError) as wrong:
        JsonCodec(1000).decode(b'{"runId": 5}', runtime_api.GetRunRequest)
    assert "run_id" in wrong.value.message
    with pytest.raises(ConnectError) as too_big:
        JsonCodec(10).decode(b'{"runId": "0123456789"}', runtime_api.GetRunRequest)
    assert "max_message_bytes" in too_big.value.message


@pytest.mark.parametrize(
    ("body", "named"),
    [('{"spec": {"dagJson": "{}", "seed": %s}}', "spec.seed: inf is not an integer"),
     ('{"spec": {"dagJson": "{}", "seed": -%s}}', "spec.seed: -inf is not an integer"),
     ('{"pageSize": %s}', "page_size: inf is not an integer")],
)  # fmt: skip
def test_an_integer_of_more_digits_than_python_reads_is_refused_naming_its_field(body, named):
    """Python's own words were the answer ("Exceeds the limit (4300 digits) for integer string
    conversion …; use sys.set_int_max_str_digits()"), naming no field (a hunt)."""
    kind = runtime_api.ListRunsRequest if "pageSize" in body else runtime_api.SubmitRunRequest
    with pytest.raises(ConnectError) as refused:
        JsonCodec(1 << 20).decode((body % ("9" * 5_000)).encode(), kind)
    assert refused.value.code is Code.INVALID_ARGUMENT
    assert refused.value.message == f"request: {named}"
    # in a field the daemon does not know, it is ignored like any other value there
    assert (
        JsonCodec(1 << 20)
        .decode(b'{"runId": "r", "later": %s}' % (b"9" * 5_000), runtime_api.GetRunRequest)
        .run_id
        == "r"
    )


# --- origins and errors -------------------------------------------------------------------------


def test_the_daemons_own_origins_are_its_listeners_by_every_name_a_local_browser_uses():
    loopback = own_origins("127.0.0.1", 50052, secure=False)
    assert set(loopback) == {
        "http://127.0.0.1:50052", "http://localhost:50052", "http://[::1]:50052"}  # fmt: skip
    assert own_origins("[::1]", 8443, secure=True)[0] == "https://[::1]:8443"
    assert set(own_origins("0.0.0.0", 80, secure=False)) == {  # every address: the loopback names
        "http://localhost:80", "http://127.0.0.1:80", "http://[::1]:80"}  # fmt: skip
    assert own_origins("10.0.0.5", 50052, secure=True) == ("https://10.0.0.5:50052",)
    policy = OriginPolicy((), loopback)
    assert policy.allows("http://localhost:50052")
    assert not policy.allows("http://localhost:5173")  # another local server's page
    assert not policy.allows("http://rebound.example:50052")  # a name rebound to 127.0.0.1


def test_origin_patterns():
    policy = OriginPolicy(("http://localhost:*", "https://app.example.com"))
    assert policy.allows("http://localhost:5173")
    assert policy.allows("http://localhost")
    assert policy.allows("https://app.example.com:443")
    assert not policy.allows("https://localhost:5173")
    assert not policy.allows("https://app.example.com:8443")
    assert not policy.allows("http://localhost.evil.example")
    assert not policy.allows("null")
    assert OriginPolicy(("*",)).allows("https://anything.example")
    for bad in ("localhost:3000", "ftp://x", "http://x/path", "http://x:99999"):
        with pytest.raises(ValueError, match="expected an origin"):
            parse_origin_entry(bad)


def test_every_grpc_status_has_a_connect_code_and_kernel_errors_keep_theirs():
    assert set(CODE_OF) == set(Status) - {Status.OK}
    assert connect_error(errors.NotFound("run 'x'")).code.value == "not_found"
    assert connect_error(errors.InvalidArgument("f: bad")).message == "f: bad"
    unexpected = connect_error(RuntimeError("secret detail"))
    assert unexpected.code.value == "internal"
    assert "secret" not in unexpected.message


# --- the bridge, asked from trio tasks ----------------------------------------------------------


@dataclass(frozen=True)
class Item:
    tap_key: str
    n: int
    tap_topic: str = "events"


async def test_trio_tasks_ask_actors_and_read_sinks_without_an_asyncio_hop():
    with trio.fail_after(GUARD_SECONDS):
        async with trio_asyncio.open_loop(), trio.open_nursery() as nursery:
            _, tap = await started_broker(nursery, buffer=4)
            queue, stream = QueueSink(), StreamSink(lambda items: ([i.n for i in items], False))
            await ask_actor(tap, lambda r: Subscribe("events", None, r, queue))
            await ask_actor(tap, lambda r: Subscribe("events", None, r, stream))
            await tap.send(Publish((Item("k", 1), Item("k", 2))))
            assert [i.n for i in await queue.batch()] == [1, 2]
            assert await stream.take() == ([1, 2], "more")
            await tap.send(Publish(tuple(Item("k", n) for n in range(10))))
            overflowed = await queue.batch()
            assert isinstance(overflowed[-1], Overflow)
            assert await queue.batch() == []
            tap.close()


@dataclass(frozen=True)
class Sized:
    payload_json: str


async def test_a_watch_that_does_not_read_is_cut_off_by_the_bytes_waiting_not_only_their_count():
    # one Watch that never read held every event's payload: 100 events of 3.5 MB, 1.6 GB
    from foundry.kernel.edge.grpc.bridge import BATCH_BYTES, SINK_BYTES

    queue = QueueSink()
    event = Sized("x" * (4 << 20))
    offered = [queue.offer(event, capacity=10_000) for _ in range(SINK_BYTES // (4 << 20) + 1)]
    assert offered == [True] * (SINK_BYTES // (4 << 20)) + [False]
    batch = await queue.batch()
    assert len(batch) == BATCH_BYTES // (4 << 20)  # a batch: about BATCH_BYTES of payloads
    while more := await queue.batch():
        batch = more
    assert batch[-1] == Overflow(10_000, SINK_BYTES)  # what it passed: the bytes, not the count
    counted = QueueSink()
    assert [counted.offer(Sized("x"), capacity=2) for _ in range(3)] == [True, True, False]
    assert (await counted.batch())[-1] == Overflow(2, 0)
    one = QueueSink()
    assert one.offer(Sized("y" * (SINK_BYTES + 1)), capacity=10)  # alone, any size passes
    assert [len(i.payload_json) for i in await one.batch()] == [SINK_BYTES + 1]


async def test_a_closed_mailbox_is_unavailable_from_trio_too():
    send, receive = trio.open_memory_channel(1)
    receive.close()
    with pytest.raises(errors.Unavailable):
        await ask_actor(send, lambda r: r)


async def test_a_large_reply_written_as_json_on_a_thread_is_what_the_codec_writes():
    """``routes.json_reply``: the JSON codec sends it as it is, the same bytes it would write."""
    from foundry.kernel.edge.http.routes import LARGE_REPLIES, json_reply

    steps = [runtime_api.StepSummary(step_id=f"s{i}", status="succeeded", attempt=1)
             for i in range(300)]  # fmt: skip
    reply = runtime_api.GetRunResponse(run=runtime_api.RunDetail(run_id="run_x", steps=steps))
    assert isinstance(reply, LARGE_REPLIES)
    codec = JsonCodec(1 << 20)
    written = await json_reply(reply)
    assert codec.encode(written) == codec.encode(reply)
    assert json.loads(written.data)["run"]["steps"][299]["stepId"] == "s299"


@pytest.mark.parametrize(
    ("kind", "document", "message"),
    [
        (runtime_api.SubmitRunRequest, {"spec": {"seed": 2.5}}, "spec.seed: 2.5 is not an integer"),
        (runtime_api.CreateBranchRunRequest, {"seed": 1e-3}, "seed: 0.001 is not an integer"),
        # every spelling betterproto2's from_dict reads as the field (safe_snake_case)
        (runtime_api.SubmitRunRequest, {"Spec": {"SEED": 7.5}}, "spec.seed: 7.5 is not an integer"),
        (runtime_api.CheckChangeGateRequest, {"diffs": [{"path": "b", "Lines_Deleted": 0.5}]},
         "diffs[0].lines_deleted: 0.5"),
        (runtime_api.CheckChangeGateRequest,
         {"diffs": [{"path": "a"}, {"path": "b", "lines_added": 3.25}]},
         "diffs[1].lines_added: 3.25 is not an integer"),
        # from_dict's int() made true the seed 1, took " 12", "+12" and other scripts' digits,
        # and answered "1e3" with "request: spec: invalid literal for int()"
        (runtime_api.SubmitRunRequest, {"spec": {"seed": True}}, "spec.seed: true is not an"),
        (runtime_api.SubmitRunRequest, {"spec": {"seed": " 12"}}, "spec.seed: ' 12' is not an"),
        (runtime_api.SubmitRunRequest, {"spec": {"seed": "+12"}}, "spec.seed: '+12' is not an"),
        (runtime_api.SubmitRunRequest, {"spec": {"seed": "\u0661\u0662"}}, "spec.seed: '١٢'"),
        (runtime_api.SubmitRunRequest, {"spec": {"seed": "1e3"}}, "spec.seed: '1e3' is not an"),
        (runtime_api.CreateBranchRunRequest, {"seed": False}, "seed: false is not an integer"),
        # a double: from_dict's float() made true the budget's 1.0 (a DENY), and took "inf"
        (runtime_api.CheckChangeGateRequest,
         {"budgets": [{"name": "cost", "actual": True, "limit": 0.5}]},
         "budgets[0].actual: true is not a number"),
        (runtime_api.CheckChangeGateRequest,
         {"evals": [{"name": "a", "score": 1}, {"name": "b", "score": " 1"}]},
         "evals[1].score: ' 1' is not a number"),
        (runtime_api.CheckChangeGateRequest, {"evals": [{"name": "a", "score": "inf"}]},
         "evals[0].score: 'inf' is not a number"),
        # an enum: from_dict took true as its value 1 (a follow-up APPROVED; a hunt)
        (runtime_api.RecordGateFollowupRequest, {"gateId": "g", "outcome": True},
         "outcome: true is not an enum value"),
        (runtime_api.CheckChangeGateRequest,
         {"evals": [{"name": "a", "score": 1, "direction": True}]},
         "evals[0].direction: true is not an enum value"),
        (runtime_api.ListRunsRequest, {"statuses": [1, True]}, "statuses[1]: true is not an enum"),
        (runtime_api.CreateBranchRunRequest, {"seedMode": 1.5}, "seed_mode: 1.5 is not an enum"),
        (runtime_api.CreateBranchRunRequest, {"seedMode": {}}, "seed_mode: an object is not an"),
    ],
)  # fmt: skip
def test_json_with_a_fraction_in_an_integer_field_is_refused_naming_it(kind, document, message):
    """betterproto2's from_dict reads 2.5 into an integer field as 2."""
    with pytest.raises(ConnectError, match=re.escape(message)) as caught:
        JsonCodec(1 << 20).decode(json.dumps(document).encode(), kind)
    assert caught.value.code == Code.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("kind", "document", "message"),
    [
        (runtime_api.CheckChangeGateRequest,
         {"evals": [{"name": "a", "score": 1, "direction": "SIDEWAYS"}]},
         "request: evals[0].direction: Unknown value SIDEWAYS"),
        (runtime_api.SyncEvalPackRequest,
         {"pack": "p", "scenarios": [{"slug": "a"}, {"slug": "b", "runSpec": "x"}]},
         "request: scenarios[1].run_spec"),
        (runtime_api.SyncEvalPackRequest, {"pack": "p", "scenarios": ["x"]},
         "request: scenarios[0]:"),
    ],
)  # fmt: skip
def test_json_a_list_items_field_betterproto2_cannot_read_is_named(kind, document, message):
    """The path went into nested messages but stopped at a list: ``request: evals: Unknown
    value SIDEWAYS``, without the item or the field."""
    with pytest.raises(ConnectError, match=re.escape(message)) as caught:
        JsonCodec(1 << 20).decode(json.dumps(document).encode(), kind)
    assert caught.value.code == Code.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("score", "read"),
    [(0.5, 0.5), (1, 1.0), ("0.25", 0.25), ("-1e-3", -0.001), ("Infinity", math.inf)],
)
def test_json_doubles_as_numbers_or_proto3_strings_are_read(score, read):
    request = JsonCodec(1 << 20).decode(
        json.dumps({"evals": [{"name": "a", "score": score}]}).encode(),
        runtime_api.CheckChangeGateRequest,
    )
    assert request.evals[0].score == read


@pytest.mark.parametrize("seed", [12, "12", "-12", 1e3, "9223372036854775807"])
def test_json_integers_as_numbers_or_decimal_strings_are_read(seed):
    request = JsonCodec(1 << 20).decode(
        json.dumps({"spec": {"dagJson": "{}", "seed": seed}}).encode(), runtime_api.SubmitRunRequest
    )
    assert request.spec.seed == (int(seed) if isinstance(seed, str) else int(float(seed)))


@pytest.mark.parametrize(
    ("kind", "document", "message"),
    [
        (runtime_api.CheckChangeGateRequest, {"diffs": [{"path": "x", "riskTags": "security"}]},
         "diffs[0].risk_tags: expected a JSON array, got a string"),
        (runtime_api.SubmitRunRequest, {"spec": {"dagJson": "{}", "breakpoints": "a"}},
         "spec.breakpoints: expected a JSON array, got a string"),
        (runtime_api.GetAttestationsRequest, {"attestationIds": "att_x"},
         "attestation_ids: expected a JSON array, got a string"),
        (runtime_api.CheckChangeGateRequest, {"diffs": "xy"},
         "diffs: expected a JSON array, got a string"),
        (runtime_api.CheckChangeGateRequest, {"diffs": [{"path": "a"}, 3]},
         "diffs[1]: expected a JSON object, got a number"),
        (runtime_api.SyncEvalPackRequest, {"pack": "p", "scenarios": [None]},
         "scenarios[0]: expected a JSON object, got null"),
        (runtime_api.SubmitRunRequest, {"spec": {"dagJson": "{}", "labels": ["a"]}},
         "spec.labels: expected a JSON object, got an array"),
        (runtime_api.SubmitRunRequest, {"spec": "{}"},
         "spec: expected a JSON object, got a string"),
    ],
)  # fmt: skip
def test_json_of_the_wrong_shape_for_a_list_a_map_or_a_message_is_refused_naming_it(
    kind, document, message
):
    """betterproto2's from_dict iterated a string given for a repeated field: a risk tag
    "security" became the tags "s", "e", "c", … and the gate missed it."""
    with pytest.raises(ConnectError, match=re.escape(message)) as caught:
        JsonCodec(1 << 20).decode(json.dumps(document).encode(), kind)
    assert caught.value.code == Code.INVALID_ARGUMENT


def test_whole_numbers_and_fractions_where_they_belong_are_read():
    document = {
        "spec": {"seed": 7.0, "inputs": {"ratio": 0.5, "n": 2}},
        "labels": {},
    }
    request = JsonCodec(1 << 20).decode(json.dumps(document).encode(), runtime_api.SubmitRunRequest)
    assert request.spec.seed == 7
    assert isinstance(request.spec.seed, int)
    gate = JsonCodec(1 << 20).decode(
        json.dumps({"changeId": "c", "diffs": [{"path": "a", "noveltyScore": 0.25,
                                                "linesAdded": 4.0}],
                    "telemetry": {"fields": 1.5}}).encode(),
        runtime_api.CheckChangeGateRequest,
    )  # fmt: skip
    assert gate.diffs[0].lines_added == 4
    assert gate.diffs[0].novelty_score == 0.25


@pytest.mark.parametrize(
    ("text", "number"),
    [("0.5", 0.5), ("1e-3", 0.001), ("-0", -0.0), ("Infinity", math.inf), ("-Infinity", -math.inf)],
)
def test_a_double_wrapper_takes_proto3_jsons_string_forms(text, number):
    """proto3 JSON writes a double as a number or a string ("0.5", "NaN", "Infinity"): the
    wrappers (novelty scores, ratios, thresholds) refused the strings, in wire-format words."""
    document = {"changeId": "c", "diffs": [{"path": "a", "noveltyScore": text}],
                "coverage": {"overallRatio": text}}  # fmt: skip
    message = JsonCodec(1 << 20).decode(
        json.dumps(document).encode(), runtime_api.CheckChangeGateRequest
    )
    assert message.diffs[0].novelty_score == number
    assert message.coverage.overall_ratio == number
    nan = {"changeId": "c", "coverage": {"overallRatio": "NaN"}}
    read = JsonCodec(1 << 20).decode(json.dumps(nan).encode(), runtime_api.CheckChangeGateRequest)
    assert math.isnan(read.coverage.overall_ratio)  # then refused by the gate's own check


async def test_a_websocket_pump_stops_making_messages_once_its_client_is_gone():
    """hypercorn returns from a send it gave up (its client read nothing) as if it were sent,
    and tells of the disconnect on ``receive``: the pump made every message already waiting —
    200 watchers of 4 MB events held the loop 20 s — before it heard."""
    made, sent = [], []
    gone = trio.Event()

    async def messages():
        for n in range(100):  # waiting already: no checkpoint between them
            made.append(n)
            yield foundry_api.WatchResponse(event_id=f"evt_{n}")

    async def receive():
        await gone.wait()
        return {"type": "websocket.disconnect", "code": 1006}

    async def send(message):
        sent.append(message)
        gone.set()  # the first send is given up; what follows goes nowhere

    with trio.fail_after(GUARD_SECONDS):
        await websocket.pump(messages(), (1001, "stopping"), receive, send)
    # the one sent, and one or two more (trio runs the pump and the disconnect's task, both
    # ready at once, in a random order)
    assert len(made) <= 3, f"{len(made)} messages made for a client that was gone"


# --- an ended run's GetRun JSON, written once (``routes.json_reply``) ----------------------------


def _run_reply(status: object, updated: str = "2026-12-06T10:00:00Z", steps: int = 2) -> object:
    from datetime import datetime

    from foundry.proto import runtime_api

    return runtime_api.GetRunResponse(run=runtime_api.RunDetail(
        run_id="run_1", status=status, updated_at=datetime.fromisoformat(updated),
        steps=[runtime_api.StepSummary(step_id=f"s{i}") for i in range(steps)],
    ))  # fmt: skip


async def test_an_ended_runs_getrun_json_is_written_once_and_a_changed_one_again(monkeypatch):
    from foundry.kernel.edge.http import codecs, routes
    from foundry.proto import runtime_api

    texts = codecs.EndedRunTexts()
    monkeypatch.setattr(routes, "ENDED_RUN_TEXTS", texts)
    ended = runtime_api.RunStatus.SUCCEEDED
    first = (await routes.json_reply(_run_reply(ended))).data
    again = (await routes.json_reply(_run_reply(ended))).data
    assert again is first  # one text for every caller
    later = (await routes.json_reply(_run_reply(ended, "2026-12-06T10:00:01Z"))).data
    assert later != first
    running = runtime_api.RunStatus.RUNNING
    assert routes.ended_run_key(_run_reply(running), "json") is None  # it changes: never kept
    assert texts.held_bytes == len(first) + len(later)


def test_an_ended_runs_getrun_protobuf_is_encoded_once(monkeypatch):
    """As its JSON: Connect-proto and gRPC-Web callers each encoded their own copy."""
    from foundry.kernel.edge.http import codecs
    from foundry.proto import runtime_api

    monkeypatch.setattr(codecs, "ENDED_RUN_TEXTS", codecs.EndedRunTexts())
    codec = codecs.BinaryCodec(1 << 20)
    ended = runtime_api.RunStatus.SUCCEEDED
    first = codec.encode(_run_reply(ended))
    assert codec.encode(_run_reply(ended)) is first
    assert runtime_api.GetRunResponse().parse(first).run.run_id == "run_1"
    running = codec.encode(_run_reply(runtime_api.RunStatus.RUNNING))
    assert codec.encode(_run_reply(runtime_api.RunStatus.RUNNING)) is not running


def test_the_kept_texts_stay_within_their_budget_but_the_newest():
    from foundry.kernel.edge.http.codecs import EndedRunTexts

    texts = EndedRunTexts(budget=10)
    assert texts.put("a", b"123456") == b"123456"
    assert texts.put("a", b"other") == b"123456"  # made meanwhile: the kept one
    texts.put("b", b"abcdef")
    assert texts.get("a") is None  # over the budget: the oldest went
    texts.put("c", b"x" * 50)  # larger than the budget: kept while the newest
    assert (texts.get("b"), texts.get("c")) == (None, b"x" * 50)
    assert texts.held_bytes == 50


async def test_a_large_request_is_decoded_once_on_a_worker_thread():
    """``large_requests``: a unary body of 16 KiB or more is read whole, its message decoded
    on a worker thread, the body given again as it came, and the codec connectrpc calls answers
    with that message — or raises what decoding raised — without decoding it again."""
    import threading

    from foundry.kernel.edge.http.codecs import BinaryCodec
    from foundry.kernel.edge.http.large_requests import DECODED, decoded_ahead
    from foundry.proto import runtime_api

    codec = BinaryCodec(4 << 20)
    where: list[bool] = []

    def decode(data: bytes, kind: type) -> object:
        where.append(threading.current_thread() is threading.main_thread())
        return codec.decode(data, kind)

    kind = runtime_api.ListRunsRequest
    for body, good in ((bytes(kind(statuses=[runtime_api.RunStatus.FAILED] * 40_000)), True),
                       (b"\x0a\x02" + b"\xff" * 40_000, False)):  # fmt: skip
        parts = [body[:1_000], body[1_000:]]
        events = [{"type": "http.request", "body": p, "more_body": i == 0}
                  for i, p in enumerate(parts)]  # fmt: skip

        async def receive(events: list = events) -> dict:
            return events.pop(0)

        again, ahead = await decoded_ahead(receive, False, decode, kind, 4 << 20)
        assert where.pop() is False  # not the trio (main) thread
        assert await again() == {"type": "http.request", "body": body, "more_body": False}
        assert ahead is not None
        token = DECODED.set(ahead)
        try:
            if good:
                assert codec.decode(bytearray(body), kind) is ahead.message
                assert len(ahead.message.statuses) == 40_000
            else:
                with pytest.raises(ConnectError) as refused:
                    codec.decode(body, kind)
                assert refused.value is ahead.error
            assert where == []  # decoded once
        finally:
            DECODED.reset(token)


def test_hypercorn_h2_still_closes_a_stream_before_it_looks_whether_to_send_goaway():
    """The canary of ``end_streams_before_goaway``: a stream's close (``StreamClosed``) goes
    through ``_close_stream`` first, then — with no await between — closes a connection left
    idle in a stop (``context.terminated``); the send task writes a stream's END_STREAM once
    its buffer is complete, then lets the buffer go from ``stream_buffers``."""
    from hypercorn.protocol.h2 import H2Protocol

    send = inspect.getsource(inspect.unwrap(H2Protocol.stream_send))
    closed = send[send.index("isinstance(event, StreamClosed)") :]
    closing = closed.index("await self._close_stream(event.stream_id)")
    assert closing < closed.index("if idle and self.context.terminated.is_set():")
    assert "await" not in closed[closing + 10 : closed.index("self.connection.close_connection()")]
    sending = inspect.getsource(H2Protocol._send_data)
    assert sending.index("self.connection.end_stream(stream_id)") < sending.index(
        "del self.stream_buffers[stream_id]"
    )
    hypercorn_guard.end_streams_before_goaway()
    hypercorn_guard.end_streams_before_goaway()  # idempotent
    assert getattr(H2Protocol._close_stream, "ends_before_goaway", False)
