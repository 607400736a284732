"""Watch and TapRun as WebSocket streams on the HTTP listener (the ``websockets`` client): JSON
text frames, a close frame with a code and reason at the end, on an error or a bad request."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import threading
import time
import uuid
import zlib
from pathlib import Path

import httpx
import pytest
from foundry.proto import foundry_api
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.e2e.http_helpers import url

SUBMIT = "/fleetforge.runtime.v1.RuntimeService/SubmitRun"
EMIT = "/foundry.Foundry/Emit"
DAG = json.dumps({"steps": [
    {"id": "a", "type": "transform", "inputs": {"value": 1}},
    {"id": "b", "type": "transform", "depends_on": ["a"], "inputs": {"value": 2}},
]})  # fmt: skip


@pytest.fixture(scope="module")
def daemon(shared_daemon):
    return shared_daemon()


def ws_url(daemon, path):
    return f"ws://{daemon.http_address}{path}"


async def read_all(uri, **options):
    """Every text frame until the server closes: (messages, close code, close reason)."""
    messages = []
    async with connect(uri, open_timeout=10, **options) as socket:
        try:
            while True:
                messages.append(json.loads(await asyncio.wait_for(socket.recv(), 30)))
        except ConnectionClosed as closed:
            received = closed.rcvd
            return messages, received.code if received else None, received.reason if received \
                else ""  # fmt: skip


def test_tap_run_over_websocket_ends_with_a_normal_close(daemon):
    run_id = httpx.post(url(daemon, SUBMIT), json={"spec": {"dagJson": DAG}}).json()["runId"]
    messages, code, reason = asyncio.run(read_all(ws_url(daemon, f"/ws/runs/{run_id}/tap")))
    assert code == 1000
    assert reason == "the run finished"
    assert messages[-1]["kind"] == "run_succeeded"
    assert {m["runId"] for m in messages} == {run_id}
    seqs = [m["payload"]["seq"] for m in messages]
    assert seqs == list(range(1, len(messages) + 1))  # each event once, in order, from the first


def test_watch_over_websocket_sees_live_events_of_its_project(daemon):
    project = f"ws-{uuid.uuid4().hex[:8]}"
    stop = threading.Event()

    def emit_until_stopped():
        while not stop.wait(0.2):
            httpx.post(url(daemon, EMIT), json={"eventType": "nobody_listens", "project": project})
            httpx.post(url(daemon, EMIT), json={"eventType": "nobody_listens", "project": "other"})

    async def first_two():
        async with connect(ws_url(daemon, f"/ws/watch?project={project}"),
                           origin=f"http://{daemon.http_address}") as socket:  # fmt: skip
            return [json.loads(await asyncio.wait_for(socket.recv(), 30)) for _ in range(2)]

    emitter = threading.Thread(target=emit_until_stopped, daemon=True)
    emitter.start()
    try:
        received = asyncio.run(first_two())
    finally:
        stop.set()
        emitter.join(10)
    assert {m["project"] for m in received} == {project}
    assert all(m["eventId"].startswith("evt_") and m["eventType"] == "nobody_listens"
               for m in received)  # fmt: skip


@pytest.mark.parametrize(
    ("path", "options", "code", "needle"),
    [
        ("/ws/nothing", {}, 1008, "unknown path"),
        ("/ws/watch?projcet=x", {}, 1008, "unknown parameter 'projcet'"),
        ("/ws/runs/run_nope/tap", {}, 1008, "not_found"),
        ("/ws/watch", {"origin": "https://evil.example"}, 1008, "permission_denied"),
        ("/ws/runs/" + "r" * 5000 + "/tap", {}, 1008, "run_id: longer than 256 characters"),
        ("/ws/watch?project=" + "p" * 5000, {}, 1008, "project: longer than 256 characters"),
    ],
    ids=[
        "unknown path",
        "misspelt parameter",
        "unknown run",
        "foreign origin",
        "long run id",
        "long project",
    ],
)
def test_bad_requests_are_closed_with_a_code_and_a_reason(daemon, path, options, code, needle):
    messages, closed_code, reason = asyncio.run(read_all(ws_url(daemon, path), **options))
    assert messages == []
    assert closed_code == code
    assert needle in reason


def raw_upgrade(daemon, header: bytes) -> bytes:
    """A WebSocket upgrade to /ws/watch as bytes, with ``header`` (a line a client library
    would refuse); what came back before the daemon closed the connection."""
    host, port = daemon.http_address.rsplit(":", 1)
    request = (
        b"GET /ws/watch HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        + header
        + b"\r\n"
    )
    answer = b""
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(request)
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                answer += chunk
    return answer


@pytest.mark.parametrize(
    "key",
    [b"abc", b"not base64 at all!!", b" ", b"dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Key: eA=="],
    ids=["short", "not base64", "blank", "two keys"],
)
def test_an_upgrade_without_one_16_byte_key_is_answered_400(daemon, key):
    """RFC 6455 §4.2.1: the key is a 16-byte nonce in base64; hypercorn upgraded any (a hunt)."""
    host, port = daemon.http_address.rsplit(":", 1)
    request = (b"GET /ws/watch HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: "
               b"Upgrade\r\nSec-WebSocket-Key: " + key
               + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")  # fmt: skip
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(request)
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:100]
    good, _ = _upgraded(daemon)
    good.close()


@pytest.mark.parametrize(
    "header",
    [b"Sec-WebSocket-Protocol: foundry, caf\xc3\xa9\r\n",
     b"Sec-WebSocket-Protocol: foundry\r\nSec-WebSocket-Protocol: caf\xe9\r\n"],
    ids=["utf-8", "latin-1, in a second header"],
)  # fmt: skip
def test_an_upgrade_with_a_list_header_that_is_not_ascii_is_answered_400(daemon, header):
    """wsproto decodes ``Sec-WebSocket-Protocol`` (and ``Connection``) as ASCII while hypercorn
    handles the upgrade, before the app (and its token check): the error stopped the whole
    listener, and the daemon; then it ended that connection unanswered (a hunt). Now a 400."""
    host, port = daemon.http_address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"GET /ws/watch HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: "
                     b"Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     b"Sec-WebSocket-Version: 13\r\n" + header + b"\r\n")  # fmt: skip
        answer = sock.recv(65536)  # (hypercorn keeps a refused upgrade's connection open)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert daemon.process.poll() is None, daemon.stderr()[-2000:]
    reply = httpx.post(
        url(daemon, EMIT), json={"eventType": "greet_requested", "payloadJson": "{}"}
    )
    assert reply.status_code == 200, reply.text
    assert "connection failed" not in daemon.stderr()


def test_a_message_of_too_many_fragments_is_closed_1009(daemon):
    """hypercorn reads a message's fragments without a turn for any other task, ~65 µs each:
    30,000 one-byte fragments a message (30 KB, under the size cap) held every client's Status
    for 2-4 s (a hunt). A message is at most 256 fragments now."""
    frames = _short(b"{", 1, False) + _short(b" ", 0, False) * 300 + _short(b"}", 0, True)
    assert b"\x88\x02\x03\xf1" in _answer_to(daemon, frames)  # a close frame, code 1009
    fine, head = _upgraded(daemon)  # 255 fragments are still a message
    with fine:
        fine.sendall(_short(b"{", 1, False) + _short(b" ", 0, False) * 254 + _short(b"}", 0, True))
        fine.settimeout(1)
        with contextlib.suppress(TimeoutError):
            assert not fine.recv(65536).startswith(b"\x88")  # (a watch sends nothing yet)
    assert "Traceback" not in daemon.stderr()


@pytest.mark.parametrize("bits", [b"abc", b"\xe9"])
def test_an_upgrade_with_extensions_wsproto_cannot_read_is_answered_400(daemon, bits):
    """hypercorn's accept raised from wsproto's extension parsing: no answer, and a traceback in
    the log for each such upgrade. Now the handshake is answered 400, naming the header (a byte
    that is not ASCII dropped the connection unanswered still: found by a WebSocket hunt)."""
    answer = raw_upgrade(
        daemon,
        b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits=" + bits + b"\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 400"), daemon.stderr()[-3000:]
    assert b"bad Sec-WebSocket-Extensions" in answer
    assert "Error in ASGI" not in daemon.stderr()
    # a good upgrade still works
    messages, code, _ = asyncio.run(read_all(ws_url(daemon, "/ws/tap/run_unknown")))
    assert messages == []
    assert code == 1008


def _frame(payload: bytes, opcode: int, fin: bool, rsv1: bool = False) -> bytes:
    """A masked client frame (mask 0: the payload as is), its length in 8 bytes."""
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    return struct.pack(">BBQ", first, 0x80 | 127, len(payload)) + b"\0\0\0\0" + payload


def _short(payload: bytes, opcode: int, fin: bool) -> bytes:
    """A masked client frame of at most 125 bytes (its length in the header's byte)."""
    return bytes([(0x80 if fin else 0) | opcode, 0x80 | len(payload)]) + b"\0\0\0\0" + payload


def _resident_mib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) // 1024


def _upgraded(daemon, extensions: bytes = b"") -> tuple[socket.socket, bytes]:
    host, port = daemon.http_address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(b"GET /ws/watch HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: "
                 b"Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 b"Sec-WebSocket-Version: 13\r\n" + extensions + b"\r\n")  # fmt: skip
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    return sock, head


def test_one_frame_arriving_in_many_reads_is_one_fragment(daemon):
    """A review: each read of a frame was counted a fragment, so one 50 KB frame over a slow
    link (300 reads) was closed 1009 as "too many fragments"."""
    sock, head = _upgraded(daemon)
    with sock:
        assert head.startswith(b"HTTP/1.1 101")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        payload = b" " * 51_200
        sock.sendall(struct.pack(">BBH", 0x81, 0x80 | 126, len(payload)) + b"\0\0\0\0")
        for start in range(0, len(payload), 171):
            sock.sendall(payload[start : start + 171])
            time.sleep(0.002)  # a read each
        sock.settimeout(1)
        with contextlib.suppress(TimeoutError):
            assert not sock.recv(65536).startswith(b"\x88")  # no close (a watch sends nothing)


def test_an_http2_upgrade_with_a_subprotocol_that_is_not_ascii_is_answered_400(daemon):
    """RFC 8441's upgrade has no key: the refusal (a key made None) did not stop it, and the
    header was dropped silently (a review)."""
    import h2.config
    import h2.connection
    import h2.events

    host, port = daemon.http_address.rsplit(":", 1)
    config = h2.config.H2Configuration(client_side=True, header_encoding=None,
                                       validate_outbound_headers=False,
                                       normalize_outbound_headers=False)  # fmt: skip
    connection = h2.connection.H2Connection(config)
    connection.initiate_connection()
    status = None
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(connection.data_to_send())
        connection.send_headers(1, [
            (b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"http"),
            (b":path", b"/ws/watch"), (b":authority", b"x"), (b"sec-websocket-version", b"13"),
            (b"sec-websocket-protocol", b"foundry, caf\xe9")])  # fmt: skip
        sock.sendall(connection.data_to_send())
        while status is None:
            data = sock.recv(65536)
            assert data, "the connection closed unanswered"
            for event in connection.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = dict(event.headers)[b":status"]
            sock.sendall(connection.data_to_send())
    assert status == b"400"


def _answer_to(daemon, data: bytes) -> bytes:
    """What the daemon sends on an upgraded ``/ws/watch`` after ``data``, to the connection's
    end (or 5 s of nothing)."""
    sock, head = _upgraded(daemon)
    with sock:
        assert head.startswith(b"HTTP/1.1 101")
        with contextlib.suppress(OSError):
            sock.sendall(data)
        sock.settimeout(5)
        received = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                received += chunk
    return received


def test_a_message_past_the_size_is_closed_1009_and_nothing_more_of_it_kept(daemon):
    """hypercorn answered a message over the 64 KiB cap with 1009 but kept every fragment the
    client sent after it (found by a framing hunt: 500 MiB sent, ~500 MiB held). Now the
    connection ends after the 1009, and 40 MiB more change nothing."""
    before = _resident_mib(daemon.process.pid)
    sock, head = _upgraded(daemon)
    assert head.startswith(b"HTTP/1.1 101")
    closed, received = False, b""
    with sock:
        sock.sendall(_frame(b"a" * (1 << 20), 1, False))
        with contextlib.suppress(OSError):
            for _ in range(40):
                sock.sendall(_frame(b"a" * (1 << 20), 0, False))
        sock.settimeout(5)
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                received += chunk
            closed = True
    assert b"\x88\x02\x03\xf1" in received  # a close frame, code 1009
    assert closed  # the daemon ended the connection
    assert _resident_mib(daemon.process.pid) - before < 30
    assert "Traceback" not in daemon.stderr()


def test_the_size_of_a_text_message_is_its_utf8_bytes(daemon):
    """30,000 three-byte characters: under the 64 KiB cap in characters (hypercorn's count, so
    a text message could hold four times the cap), 90,000 bytes over it in UTF-8."""
    received = _answer_to(daemon, _frame(("雪" * 30_000).encode(), 1, True))
    assert b"\x88\x02\x03\xf1" in received  # a close frame, code 1009


def test_no_compression_is_agreed_to(daemon):
    """permessage-deflate inflated a frame without bound (65 KB frames of 64 MiB each took the
    daemon to 3.7 GB, found by a framing hunt): the upgrade agrees to no extension, and a
    compressed frame (RSV1) ends the connection, unread."""
    sock, head = _upgraded(daemon, b"Sec-WebSocket-Extensions: permessage-deflate\r\n")
    with sock:
        assert head.startswith(b"HTTP/1.1 101")
        assert b"sec-websocket-extensions" not in head.lower()
        sock.sendall(_frame(zlib.compress(b"{}")[2:-4], 1, True, rsv1=True))
        sock.settimeout(5)
        received, ended = b"", False
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                received += chunk
            ended = True
    assert ended  # a protocol error: the connection ends, no message read
    assert "Traceback" not in daemon.stderr()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (struct.pack("!BB", 0x81, 2) + b"hi", 1002),  # unmasked (RFC 6455 §5.1)
        (b"\x81\x82\0\0\0\0\xff\xfe", 1007),  # text that is not UTF-8 (§8.1)
        (_frame(b"x" * 126, 9, True), 1002),  # a ping past 125 bytes (§5.5)
        (b"\x88\x82\0\0\0\0" + struct.pack("!H", 999), 1002),  # a code no one sends (§7.4)
        (b"\x80\x81\0\0\0\0x", 1002),  # a continuation of nothing (§5.4)
    ],
    ids=["unmasked", "bad utf-8", "long ping", "close code 999", "lone continuation"],
)
def test_a_frame_the_daemon_cannot_read_is_answered_with_a_close_saying_why(daemon, frame, code):
    """The connection ended with no close frame, so the client saw 1006, not what it did wrong
    (RFC 6455 §7.1.7: a hunt). The close carries wsproto's code and reason."""
    received = _answer_to(daemon, frame)
    close = received.find(b"\x88")
    assert close >= 0, received[:200]
    assert struct.unpack("!H", received[close + 2 : close + 4])[0] == code
    assert "Traceback" not in daemon.stderr()


def _masked_frame(opcode: int, payload: bytes) -> bytes:
    """A client's WebSocket frame, masked (with zeros: the payload as it is)."""
    size = len(payload)
    head = struct.pack("!BB", 0x80 | opcode, 0x80 | size) if size < 126 else (
        struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size) if size < 65536
        else struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size))  # fmt: skip
    return head + b"\0\0\0\0" + payload


def test_a_websocket_over_http2_is_ended_after_the_clients_close(daemon):
    """RFC 8441 (every browser's WebSocket on an HTTP/2 connection): the daemon echoed the
    client's close but never ended the stream, nor after a 1009 — 100 of them used up the
    connection's streams, and its next request was a GOAWAY (found by a WebSocket hunt)."""
    import h2.config
    import h2.connection
    import h2.events

    host, port = daemon.http_address.rsplit(":", 1)
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    connection.initiate_connection()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(connection.data_to_send())

        def events_until(wanted: type, stream_id: int) -> list[object]:
            seen: list[object] = []
            while not any(isinstance(e, wanted) and getattr(e, "stream_id", 0) == stream_id
                          for e in seen):  # fmt: skip
                data = sock.recv(65536)
                assert data, f"the connection closed: {seen}"
                for event in connection.receive_data(data):
                    seen.append(event)
                    if isinstance(event, h2.events.DataReceived):
                        connection.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
                    assert not isinstance(event, h2.events.ConnectionTerminated), seen
                sock.sendall(connection.data_to_send())
            return seen

        events_until(h2.events.RemoteSettingsChanged, 0)
        for closing in (_masked_frame(8, struct.pack("!H", 1000) + b"bye"),  # a close
                        _masked_frame(1, b"a" * 70_000)):  # past 64 KiB: 1009  # fmt: skip
            stream_id = connection.get_next_available_stream_id()
            connection.send_headers(stream_id, [
                (":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "http"),
                (":path", "/ws/watch"), (":authority", daemon.http_address),
                ("sec-websocket-version", "13")])  # fmt: skip
            sock.sendall(connection.data_to_send())
            events_until(h2.events.ResponseReceived, stream_id)
            left = closing
            while left:  # frames of 16 KiB at most, within the windows the daemon opens
                room = min(connection.local_flow_control_window(stream_id), 16_000, len(left))
                if room == 0:
                    for event in connection.receive_data(sock.recv(65536)):
                        assert not isinstance(event, h2.events.ConnectionTerminated), event
                    continue
                connection.send_data(stream_id, left[:room])
                sock.sendall(connection.data_to_send())
                left = left[room:]
            if closing[0] & 0x0F == 8:
                connection.end_stream(stream_id)  # the client's side ends, as a browser's
                sock.sendall(connection.data_to_send())
            events_until(h2.events.StreamEnded, stream_id)  # the daemon's side ends too


def test_a_taps_run_id_is_decoded_once_and_a_parameter_refused(daemon):
    """The path, decoded already, was decoded again ("run%255fx" asked for run_x), and a tap
    took any query string while the watch stream refused one it did not know."""

    async def close_reason(path: str) -> str:
        async with connect(ws_url(daemon, path)) as socket_:
            try:
                await asyncio.wait_for(socket_.recv(), 30)
            except ConnectionClosed as closed:
                return closed.rcvd.reason if closed.rcvd is not None else "no close frame"
        return "open"

    reason = asyncio.run(close_reason("/ws/runs/run%255fx/tap"))
    assert reason.startswith("not_found"), reason
    assert "run%5fx" in reason
    reason = asyncio.run(close_reason("/ws/runs/run_x/tap?x=1"))
    assert reason.startswith("invalid_argument: unknown parameter 'x'"), reason


def test_a_websocket_closed_at_window_0_over_http2_holds_no_other_stream(daemon):
    """The end of a closed WebSocket's stream waited, on the task reading the connection, for
    a reply its client had opened no window for: every other stream of the connection stopped
    for body_timeout (60 s), and a daemon stop waited its grace (found by a review)."""
    import h2.config
    import h2.connection
    import h2.events
    import h2.settings

    host, port = daemon.http_address.rsplit(":", 1)
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    connection.initiate_connection()
    connection.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(connection.data_to_send())

        def until(wanted: type, stream_id: int) -> None:
            seen: list[object] = []
            while not any(isinstance(e, wanted) and getattr(e, "stream_id", 0) == stream_id
                          for e in seen):  # fmt: skip
                data = sock.recv(65536)  # (10 s at most: a socket.timeout fails the test)
                assert data, f"the connection closed: {seen}"
                seen += connection.receive_data(data)
                sock.sendall(connection.data_to_send())

        until(h2.events.RemoteSettingsChanged, 0)
        socket_id = connection.get_next_available_stream_id()
        connection.send_headers(socket_id, [
            (":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "http"),
            (":path", "/ws/watch"), (":authority", daemon.http_address),
            ("sec-websocket-version", "13")])  # fmt: skip
        sock.sendall(connection.data_to_send())
        until(h2.events.ResponseReceived, socket_id)
        connection.send_data(socket_id, _masked_frame(8, struct.pack("!H", 1000) + b"bye"))
        sock.sendall(connection.data_to_send())
        time.sleep(0.5)  # the close is taken, its answer waits for a window never opened
        page = connection.get_next_available_stream_id()
        connection.send_headers(page, [(":method", "GET"), (":scheme", "http"),
                                       (":path", "/dashboard/"),
                                       (":authority", daemon.http_address)],
                                end_stream=True)  # fmt: skip
        sock.sendall(connection.data_to_send())
        until(h2.events.ResponseReceived, page)  # its headers need no window


def test_a_watcher_that_reads_nothing_does_not_hold_the_stop_past_the_grace(make_daemon):
    """hypercorn shields its sends from cancellation: a watch WebSocket whose client read
    nothing held the daemon up after SIGTERM for the whole [http] body_timeout (58 s, with a
    3 s shutdown_grace: a hunt). Once the listener closes, a send without progress for a
    second is given up."""
    daemon = make_daemon("[daemon]\nshutdown_grace = 2.0\n")
    sock, head = _upgraded(daemon)
    assert head.startswith(b"HTTP/1.1 101")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        blob = json.dumps({"pad": "z" * 30_000})
        for _ in range(300):  # ~9 MB: far past the socket buffers
            daemon.call(lambda f, _r: f.emit(foundry_api.EmitRequest(
                event_type="nobody_listens", project="p", payload_json=blob)))  # fmt: skip
        started = time.monotonic()
        assert daemon.stop(timeout=60) == 0
        took = time.monotonic() - started
    finally:
        sock.close()
    assert took < 10, f"the daemon took {took:.1f} s to stop (shutdown_grace 2 s)"
