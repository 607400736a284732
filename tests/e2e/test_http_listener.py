"""The HTTP listener's configuration and life: the ready line, ``off``, a port in use, bad
``[http]`` keys, CORS for the configured origins, and an orderly stop with streams open."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import httpx
import pytest
from foundry.proto import foundry_api, runtime_api
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.daemon import write_config
from tests.e2e.helpers import foundry_cli
from tests.e2e.http_helpers import envelope, url
from tests.helpers import rss_mb, wait_until

EMIT = "/foundry.Foundry/Emit"
WATCH = "/foundry.Foundry/Watch"


def test_the_ready_line_names_both_listeners(make_daemon):
    daemon = make_daemon()
    grpc_host, _, grpc_port = daemon.address.rpartition(":")
    http_host, _, http_port = daemon.http_address.rpartition(":")
    assert grpc_host == http_host == "127.0.0.1"
    assert int(http_port) > 0
    assert http_port != grpc_port
    assert httpx.post(url(daemon, EMIT), json={"eventType": "x"}).status_code == 200


def test_http_off_prints_only_the_grpc_address(tmp_path):
    config = write_config(tmp_path / "off.toml", '[http]\nlisten = "off"\n')
    process = subprocess.Popen(
        [sys.executable, "-m", "foundry.kernel.cli", "serve", "--config", str(config),
         "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**__import__("os").environ, "FOUNDRY_HOME": str(tmp_path / "home")},
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert " " not in line
        assert line.startswith("127.0.0.1:")
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        if process.stdout:
            process.stdout.close()


def test_an_http_port_in_use_refuses_the_start_in_one_line(tmp_path):
    config = write_config(tmp_path / "empty.toml")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = foundry_cli(
            "serve", "--config", str(config), "--listen", "127.0.0.1:0",
            "--http-listen", f"127.0.0.1:{port}",
            env={"FOUNDRY_HOME": str(tmp_path / "home")}, timeout=60,
        )  # fmt: skip
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f"cannot listen on 127.0.0.1:{port} (HTTP)" in lines[0]
    assert done.stdout == ""  # never ready


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ('[http]\nlisten = "nowhere"\n', "[http].listen: expected HOST:PORT"),
        ('[http]\ncors_origins = ["localhost:3000"]\n', "[http].cors_origins[0]"),
        ("[http]\ncors_origins = 7\n", "[http].cors_origins"),
        # its watch of stalled sends woke every half of it: a core busy while idle
        ("[http]\nbody_timeout = 0.000001\n", "[http].body_timeout: expected seconds, at least"),
    ],
)
def test_bad_http_keys_are_refused_naming_file_and_key(tmp_path, body, needle):
    config = write_config(tmp_path / "bad.toml", body)
    done = foundry_cli("serve", "--config", str(config), "--listen", "127.0.0.1:0",
                       env={"FOUNDRY_HOME": str(tmp_path / "home")})  # fmt: skip
    assert done.returncode == 2
    assert str(config) in done.stderr
    assert needle in done.stderr


def test_bad_http_listen_flag_is_refused(tmp_path):
    config = write_config(tmp_path / "empty.toml")
    done = foundry_cli("serve", "--config", str(config), "--http-listen", "nope",
                       env={"FOUNDRY_HOME": str(tmp_path / "home")})  # fmt: skip
    assert done.returncode == 2
    assert "--http-listen: expected HOST:PORT" in done.stderr


# --- CORS ---------------------------------------------------------------------------------------


def preflight(daemon, origin):
    return httpx.options(url(daemon, EMIT), headers={
        "origin": origin, "access-control-request-method": "POST",
        "access-control-request-headers": "content-type,connect-protocol-version",
    })  # fmt: skip


def test_cors_allows_only_the_daemons_own_pages_by_default(make_daemon):
    """Its dashboard's origin, by any loopback name; not a page of another local server (a dev
    server, a notebook: whatever script it runs could drive the daemon through the browser)."""
    daemon = make_daemon()
    port = daemon.http_address.rsplit(":", 1)[1]
    own = [f"http://127.0.0.1:{port}", f"http://localhost:{port}", f"http://[::1]:{port}"]
    for origin in own:
        allowed = preflight(daemon, origin)
        assert allowed.status_code == 204
        assert allowed.headers["access-control-allow-origin"] == origin
        assert "POST" in allowed.headers["access-control-allow-methods"]
        assert "connect-protocol-version" in allowed.headers["access-control-allow-headers"]
    other_ports = ("http://localhost:5173", "http://127.0.0.1:8888", f"https://127.0.0.1:{port}")
    for origin in ("https://evil.example", f"http://rebound.example:{port}", *other_ports):
        refused = preflight(daemon, origin)
        assert refused.status_code == 403, origin
        assert "access-control-allow-origin" not in refused.headers
    call = httpx.post(url(daemon, EMIT), json={"eventType": "x"}, headers={"origin": own[1]})
    assert call.status_code == 200
    assert call.headers["access-control-allow-origin"] == own[1]
    assert "grpc-status" in call.headers["access-control-expose-headers"].lower()
    foreign = httpx.post(url(daemon, EMIT), json={"eventType": "x"},
                         headers={"origin": "http://localhost:5173"})  # fmt: skip
    assert foreign.status_code == 403
    assert foreign.json()["code"] == "permission_denied"


def test_cors_origins_from_the_config(make_daemon):
    daemon = make_daemon('[http]\ncors_origins = ["https://app.example.com"]\n')
    assert preflight(daemon, "https://app.example.com").status_code == 204
    assert preflight(daemon, "https://app.example.com:8443").status_code == 403
    assert preflight(daemon, "http://localhost:5173").status_code == 403


# --- an orderly stop ----------------------------------------------------------------------------


def test_a_stop_ends_open_streams_and_exits_zero(make_daemon):
    """SIGTERM with a Connect Watch and a WebSocket Watch open: both end (the WebSocket with
    1001, the Connect stream with ``unavailable`` in its end-of-stream frame: an end a client
    can tell from its own), and the daemon exits 0."""
    daemon = make_daemon()
    outcome: dict[str, object] = {}
    opened = threading.Event()

    def connect_watch():
        with httpx.Client(timeout=30) as client, client.stream(
            "POST", url(daemon, WATCH), content=envelope(json.dumps({"project": "q"}).encode()),
            headers={"content-type": "application/connect+json"},
        ) as response:  # fmt: skip
            outcome["connect"] = (response.status_code, response.read())

    async def websocket_watch():
        async with connect(f"ws://{daemon.http_address}/ws/watch?project=q") as socket:
            opened.set()
            try:
                await asyncio.wait_for(socket.recv(), 30)
            except ConnectionClosed as closed:
                return closed.rcvd.code if closed.rcvd else None

    reader = threading.Thread(target=connect_watch, daemon=True)
    reader.start()
    ws = threading.Thread(target=lambda: outcome.update(ws=asyncio.run(websocket_watch())))
    ws.start()
    assert opened.wait(10)
    time.sleep(0.5)  # the Connect watch subscribed too
    assert daemon.stop(timeout=60) == 0
    ws.join(30)
    reader.join(30)
    assert outcome["ws"] == 1001
    status, body = outcome["connect"]
    assert status == 200
    end = json.loads(body[5:])  # the end-of-stream frame (flag 2), the only frame
    assert body[0] == 2
    assert end["error"]["code"] == "unavailable"
    assert "the daemon is shutting down; watch again" in end["error"]["message"]


def test_a_stop_ends_connect_streams_over_http2_with_their_end_frame(make_daemon):
    """SIGTERM with Connect streams open over HTTP/2 (a TapRun of a paused run, a Watch): each
    gets its end-of-stream frame and the HTTP/2 stream its END_STREAM. The listener was
    cancelled as soon as the apps returned, before hypercorn wrote their streams' ends (4 stops
    in 5; a hunt): the client read GOAWAY and a closed connection, an error, not UNAVAILABLE."""
    daemon = make_daemon()
    dag = json.dumps({"steps": [{"id": "a", "type": "transform", "inputs": {"value": 1}}]})
    submitted = daemon.call(lambda _, rt: rt.submit_run(runtime_api.SubmitRunRequest(
        spec=runtime_api.RunSpec(dag_json=dag, breakpoints=["a"]))))  # fmt: skip
    calls = {
        "tap": ("/fleetforge.runtime.v1.RuntimeService/TapRun", {"runId": submitted.run_id}),
        "watch": (WATCH, {"project": "h2-stop"}),
    }
    outcome: dict[str, Any] = {}
    tapping = threading.Event()  # (a Watch's headers come with its first event)

    def read(name: str, path: str, request: dict[str, Any]) -> None:
        try:
            with httpx.Client(http1=False, http2=True, timeout=30) as client, client.stream(
                "POST", url(daemon, path), content=envelope(json.dumps(request).encode()),
                headers={"content-type": "application/connect+json"},
            ) as response:  # fmt: skip
                tapping.set()
                outcome[name] = (response.status_code, response.read())
        except Exception as exc:  # noqa: BLE001 - the outcome under test
            outcome[name] = exc

    readers = [threading.Thread(target=read, args=(name, *call)) for name, call in calls.items()]
    for reader in readers:
        reader.start()
    assert tapping.wait(10)
    time.sleep(0.5)  # both subscribed
    assert daemon.stop(timeout=60) == 0
    for reader in readers:
        reader.join(30)
    for name in calls:
        assert not isinstance(outcome[name], Exception), (name, outcome[name])
        status, body = outcome[name]
        assert status == 200
        last = body[body.rindex(b"\x02\x00") :]  # the end-of-stream frame (flag 2), the last
        end = json.loads(last[5:])
        assert end["error"]["code"] == "unavailable", (name, end)


@pytest.mark.parametrize("reset", [True, False], ids=["reset", "closed"])
def test_a_stream_whose_client_went_away_gives_its_place_back_at_once(make_daemon, reset):
    """Two Connect Watches on a listener capped at two connections, their clients gone — by a
    reset (RST) or a close (FIN): the next call is served. After a reset, hypercorn held each
    connection for its keep-alive time (60 s), and the listener refused every client."""
    daemon = make_daemon("[daemon]\nmax_connections = 2\n")
    host, port = daemon.http_address.rsplit(":", 1)
    body = envelope(json.dumps({"project": "nobody"}).encode())
    request = (f"POST {WATCH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/connect+json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body  # fmt: skip
    for _ in range(2):
        with socket.create_connection((host, int(port)), timeout=5) as watcher:
            watcher.sendall(request)
            time.sleep(0.5)  # the Watch is open (its reply starts with its first event)
            if reset:
                watcher.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    wait_until(lambda: _status_code(daemon) == 200, what=lambda: daemon.stderr()[-2000:],
               timeout=5)  # fmt: skip


def test_requests_reset_mid_body_are_not_logged_as_failed_connections(make_daemon):
    """A reset read as the stream's end: hypercorn answers a request cut short with a 400, whose
    send met the reset one and logged "an HTTP connection failed" (13 of 40 resets)."""
    daemon = make_daemon()
    host, port = daemon.http_address.rsplit(":", 1)
    head = (b"POST /foundry.Foundry/Status HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{")  # fmt: skip
    for _ in range(40):
        with socket.create_connection((host, int(port)), timeout=5) as client:
            client.sendall(head)
            time.sleep(0.05)  # the request is being read (its body waited for)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    time.sleep(0.5)
    assert _status_code(daemon) == 200
    assert "connection failed" not in daemon.stderr()


@pytest.mark.parametrize(
    ("path", "content_type", "first", "length"),
    [
        ("/foundry.Foundry/Status", "application/json", b"{", 4000),  # the unary fast path
        ("/foundry.Foundry/Emit", "application/proto", b"\n", 4000),  # connectrpc's unary
        (WATCH, "application/connect+json", b"\0\0\0\0\x64{", 4000),  # a stream: 100 bytes
        # read whole before connectrpc sees it, to decode it on a worker thread (a review:
        # its deadline was the app's fallback answer, 408, not connectrpc's)
        ("/foundry.Foundry/Status", "application/json", b"{", 40_000),
    ],
)
def test_a_body_trickled_past_body_timeout_is_answered_and_its_connection_closed(
    make_daemon, path, content_type, first, length
):
    """A body sent a byte at a time never met hypercorn's read timeout: each trickled request
    held its connection for good, and a thousand of them the listener's every place."""
    daemon = make_daemon("[daemon]\nmax_connections = 2\n[http]\nbody_timeout = 1.0\n")
    host, port = daemon.http_address.rsplit(":", 1)
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()  # fmt: skip
    clients = [socket.create_connection((host, int(port)), timeout=10) for _ in range(2)]
    try:
        started = time.monotonic()
        for client in clients:
            client.sendall(head + first)
        answers = [b"", b""]
        while time.monotonic() - started < 8 and not all(a.endswith(b"\0") for a in answers):
            for index, client in enumerate(clients):
                try:
                    client.sendall(b" ")  # a byte every 0.2 s: every read is quick
                except OSError:
                    answers[index] += b"\0"  # closed by the daemon
            time.sleep(0.2)
            for index, client in enumerate(clients):
                client.setblocking(False)
                try:
                    while chunk := client.recv(65536):
                        answers[index] += chunk
                    answers[index] += b"\0"  # the daemon closed it
                except (BlockingIOError, ConnectionResetError):
                    pass
                client.setblocking(True)
        elapsed = time.monotonic() - started
    finally:
        for client in clients:
            client.close()
    for answer in answers:
        assert answer.endswith(b"\0"), answer  # closed by the daemon
        assert b"deadline_exceeded" in answer or b"grpc-status" in answer, answer
        assert b"did not arrive within 1 s ([http] body_timeout)" in answer, answer
        if path != WATCH:
            assert answer.startswith(b"HTTP/1.1 504"), answer  # connectrpc's, as ever
    assert 1.0 <= elapsed < 6
    assert _status_code(daemon) == 200  # the places are given back
    assert "Traceback" not in daemon.stderr()


def test_a_grpc_web_body_that_never_starts_is_deadline_exceeded(make_daemon):
    """Its first byte is waited for before connectrpc sees the request: a body that never came
    was answered grpc-status 2 (UNKNOWN), one that came a byte late 4 (DEADLINE_EXCEEDED)."""
    daemon = make_daemon("[http]\nbody_timeout = 1.0\n")
    host, port = daemon.http_address.rsplit(":", 1)
    head = (b"POST /foundry.Foundry/Status HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/grpc-web+proto\r\nContent-Length: 100\r\n\r\n")  # fmt: skip
    with socket.create_connection((host, int(port)), timeout=10) as client:
        client.sendall(head)
        answer = b""
        while b"\r\n\r\n" not in answer and (chunk := client.recv(65536)):
            answer += chunk
    assert b"grpc-status: 4\r\n" in answer.lower(), answer
    assert b"did not arrive within 1 s" in answer, answer


def test_a_grpc_h2c_body_that_never_starts_is_deadline_exceeded(make_daemon):
    """The same for gRPC over h2c on the HTTP listener: its status comes in trailers."""
    daemon = make_daemon("[http]\nbody_timeout = 1.0\n")
    host, port = daemon.http_address.rsplit(":", 1)
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    connection.initiate_connection()
    headers = [(":method", "POST"), (":path", "/foundry.Foundry/Status"), (":scheme", "http"),
               (":authority", daemon.http_address), ("content-type", "application/grpc"),
               ("te", "trailers")]  # fmt: skip
    connection.send_headers(1, headers)
    status: dict[bytes, bytes] = {}
    with socket.create_connection((host, int(port)), timeout=10) as client:
        client.sendall(connection.data_to_send())
        ended = False
        while not ended and (chunk := client.recv(65536)):
            for event in connection.receive_data(chunk):
                if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                    status.update(dict(event.headers))
                ended = ended or isinstance(event, h2.events.StreamEnded)
            client.sendall(connection.data_to_send())
    assert status.get(b"grpc-status") == b"4", status
    assert b"did not arrive within 1 s" in status.get(b"grpc-message", b""), status


def test_a_frame_sent_behind_a_websocket_upgrade_logs_no_traceback(make_daemon):
    """Bytes right behind the upgrade request, in one segment, were read as HTTP: the app's
    accept raised h11's error and the server logged 'Error in ASGI Framework' with a traceback,
    a connection, no token needed (~2.5 KB of log each)."""
    daemon = make_daemon()
    host, port = daemon.http_address.rsplit(":", 1)
    upgrade = (b"GET /ws/watch HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\n"
               b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")  # fmt: skip
    logged = len(daemon.stderr())
    for _ in range(20):
        with socket.create_connection((host, int(port)), timeout=5) as client:
            client.sendall(upgrade + b"\x81\x02hi")  # an unmasked text frame, at once
            with contextlib.suppress(OSError):
                while client.recv(65536):
                    pass
    time.sleep(0.5)
    said = daemon.stderr()[logged:]
    assert "Traceback" not in said
    assert "Error in ASGI Framework" not in said
    failures = [line for line in said.splitlines() if " WARNING " in line or " ERROR " in line]
    assert len(failures) <= 20  # at most a line a connection
    assert _status_code(daemon) == 200


def _status_code(daemon) -> int | None:
    try:
        return httpx.post(url(daemon, "/foundry.Foundry/Status"), json={}, timeout=5).status_code
    except httpx.TransportError:  # closed at once: the listener is at its cap
        return None


# --- the bearer token on the HTTP listener -------------------------------------------------------


def test_a_token_is_required_on_rpcs_and_streams_but_not_on_preflights(make_daemon):
    daemon = make_daemon('[daemon]\ntoken_env = "HTTP_TEST_TOKEN"\n',
                         env={"HTTP_TEST_TOKEN": "s3cret-token"})  # fmt: skip
    body = {"eventType": "nobody_listens", "project": "auth"}
    missing = httpx.post(url(daemon, EMIT), json=body)
    assert missing.status_code == 401
    assert missing.json()["code"] == "unauthenticated"
    wrong = httpx.post(url(daemon, EMIT), json=body, headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 401
    right = httpx.post(url(daemon, EMIT), json=body,
                       headers={"authorization": "Bearer s3cret-token"})  # fmt: skip
    assert right.status_code == 200
    assert preflight(daemon, f"http://{daemon.http_address}").status_code == 204

    async def close_code(**options):
        uri = f"ws://{daemon.http_address}/ws/runs/run_nope/tap"
        async with connect(uri, **options) as socket:
            try:
                await asyncio.wait_for(socket.recv(), 30)
            except ConnectionClosed as closed:
                return closed.rcvd.code, closed.rcvd.reason

    code, reason = asyncio.run(close_code())
    assert (code, reason.split(":")[0]) == (1008, "unauthenticated")
    code, reason = asyncio.run(close_code(subprotocols=["foundry", "bearer.s3cret-token"]))
    assert reason.startswith("not_found")  # past the token check: the run is unknown
    # one credential, as one Authorization header: 1,000 offered were 1,000 guesses (a hunt)
    guesses = [f"bearer.guess{i}" for i in range(50)]
    code, reason = asyncio.run(
        close_code(subprotocols=["foundry", *guesses, "bearer.s3cret-token"])
    )
    assert (code, reason.split(":")[0]) == (1008, "unauthenticated")
    assert "51 bearer subprotocols were offered: offer the token once" in reason
    # a second Sec-WebSocket-Protocol header is more of the same list (RFC 9110 5.3): hypercorn
    # kept the last header alone, and its one token passed (a hunt)
    host, port = daemon.http_address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        raw.sendall(b"GET /ws/runs/run_nope/tap HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                    b"Sec-WebSocket-Version: 13\r\n"
                    b"Sec-WebSocket-Protocol: foundry, bearer.guess\r\n"
                    b"Sec-WebSocket-Protocol: bearer.s3cret-token\r\n\r\n")  # fmt: skip
        answer = b""
        with contextlib.suppress(OSError):
            while chunk := raw.recv(65536):
                answer += chunk
    assert b"2 bearer subprotocols were offered" in answer, answer[:300]


def test_a_stream_answered_before_its_body_ends_leaves_the_connections_other_streams(
    make_daemon,
):
    """HTTP/2: a 404 (or a body timeout) answered while the client still uploads; the DATA it
    sends next found no stream in hypercorn's table, and the KeyError closed the connection,
    the page's Watch on it too."""
    import h2.config
    import h2.connection
    import h2.events

    daemon = make_daemon()
    host, port = daemon.http_address.rsplit(":", 1)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    with socket.create_connection((host, int(port)), timeout=10) as sock:

        def post(stream_id: int, path: str, content_type: str) -> None:
            conn.send_headers(stream_id, [(":method", "POST"), (":path", path),
                                          (":scheme", "http"), (":authority", "x"),
                                          ("content-type", content_type)])  # fmt: skip

        post(1, WATCH, "application/connect+json")
        conn.send_data(1, envelope(json.dumps({"project": "h2-sibling"}).encode()), end_stream=True)
        post(3, "/foundry.Foundry/NoSuchMethod", "application/json")
        conn.send_data(3, b"{")
        sock.sendall(conn.data_to_send())
        answered, events, ended = False, b"", False
        deadline = time.monotonic() + 8
        sent_after = 0
        while time.monotonic() < deadline and b"h2_sibling_seen" not in events:
            if answered and sent_after < 5:  # still uploading after the 404, as clients do
                with contextlib.suppress(Exception):
                    conn.send_data(3, b" ")
                sent_after += 1
                if sent_after == 5:
                    foundry_cli("emit", "h2_sibling_seen", "--project", "h2-sibling",
                                "--addr", daemon.address)  # fmt: skip
            sock.sendall(conn.data_to_send())
            sock.settimeout(0.3)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            assert data, "the daemon closed the connection"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived) and event.stream_id == 3:
                    answered = True
                if isinstance(event, h2.events.DataReceived) and event.stream_id == 1:
                    events += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, 1)
                if isinstance(event, h2.events.StreamEnded) and event.stream_id == 1:
                    ended = True
            sock.sendall(conn.data_to_send())
    assert answered
    assert not ended
    assert b"h2_sibling_seen" in events  # the Watch on the same connection still delivers
    assert "connection failed" not in daemon.stderr()


def test_connections_lost_mid_request_give_back_their_places(make_daemon):
    """HTTP/2 connections reset while their requests' bodies were unfinished: the apps, told
    of the disconnect, waited for good to send their answers (hypercorn left the streams' send
    buffers as they were), so each connection kept its requests' memory and its place under
    ``[daemon] max_connections`` — with 3 places, three such resets shut the listener."""
    import h2.config
    import h2.connection

    daemon = make_daemon("[daemon]\nmax_connections = 3\n")
    host, port = daemon.http_address.rsplit(":", 1)
    for _ in range(3):  # twice the places, in rounds of as many as there are
        socks = []
        for _ in range(3):
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
            conn.initiate_connection()
            sock = socket.create_connection((host, int(port)), timeout=10)
            for stream_id in (1, 3):
                conn.send_headers(stream_id, [
                    (":method", "POST"), (":path", "/foundry.Foundry/Emit"), (":scheme", "http"),
                    (":authority", "x"), ("content-type", "application/grpc"), ("te", "trailers"),
                ])  # fmt: skip
                conn.send_data(stream_id, b"\x00\x00\x00\x10\x00" + b"\x0a" * 2_000)  # of 4,096
            sock.sendall(conn.data_to_send())
            socks.append(sock)
        time.sleep(0.5)  # read by the daemon
        for sock in socks:  # reset (RST), as a client that died
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        time.sleep(0.5)

    def answered() -> bool:
        try:
            reply = httpx.post(url(daemon, "/foundry.Foundry/Status"), json={}, timeout=5)
        except httpx.TransportError:
            return False
        return reply.status_code == 200

    wait_until(answered, what="a Status answered on the HTTP listener", timeout=15)
    assert "Traceback" not in daemon.stderr()


@pytest.mark.parametrize("listener", ["grpc", "http"])
def test_a_connection_flooding_control_frames_is_closed_and_others_are_served(
    make_daemon, listener
):
    """PING and SETTINGS frames sent as fast as a socket takes them, their answers never read:
    four such connections slowed every client of both listeners from 3 ms to 1-4 s."""
    import h2.config
    import h2.connection
    import h2.errors
    import h2.events

    daemon = make_daemon()
    address = daemon.address if listener == "grpc" else daemon.http_address
    host, port = address.rsplit(":", 1)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(conn.data_to_send())
        ping = struct.pack(">I", 8)[1:] + b"\x06\x00" + struct.pack(">I", 0) + b"12345678"
        closed_at = None
        for sent in range(1, 21):
            try:
                sock.sendall(ping * 500)
            except OSError:
                closed_at = sent * 500
                break
        received, reset = b"", False
        sock.settimeout(15)  # a loaded host: the daemon may be seconds behind the flood
        try:
            while chunk := sock.recv(1 << 16):
                received += chunk
        except ConnectionResetError:
            # closed with our unread frames in its buffer: the kernel resets, and the GOAWAY
            # sent before may be lost with it (seen on a loaded 2-core host)
            reset = True
        except OSError:
            pass
    events = conn.receive_data(received) if received else []
    goaway = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
    assert goaway or closed_at or reset, f"served to its end: {len(received)} bytes, {events}"[:500]
    if goaway:
        assert goaway[-1].error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    reply = httpx.post(url(daemon, "/foundry.Foundry/Status"), json={}, timeout=10)
    assert reply.status_code == 200
    assert "flooded it with HTTP/2 control frames" in daemon.stderr()
    assert "Traceback" not in daemon.stderr()


def test_a_watch_outlives_a_thousand_calls_on_its_http2_connection(make_daemon, grpcio_client):
    """hypercorn ends an HTTP/2 connection after 1,000 requests (its keep_alive_max_requests):
    a grpcio channel to the HTTP listener that made them lost its live Watch (UNAVAILABLE)."""
    daemon = make_daemon()
    pb = grpcio_client.foundry_pb2
    with grpcio_client.connect(daemon.http_address) as (foundry, _):
        watch = foundry.Watch(pb.WatchRequest(project="keep-alive"), timeout=60)
        foundry.Emit(pb.EmitRequest(event_type="first", project="keep-alive"), timeout=10)
        assert next(watch).event_type == "first"
        for _ in range(1_100):
            foundry.Status(pb.StatusRequest(), timeout=10)
        foundry.Emit(pb.EmitRequest(event_type="after", project="keep-alive"), timeout=10)
        assert next(watch).event_type == "after"
        watch.cancel()


RUNTIME = "/fleetforge.runtime.v1.RuntimeService"


def _finished_run_with_a_large_output(daemon) -> tuple[str, int]:
    """A run whose Connect JSON GetRun is several MB; (its id, that reply's size)."""
    dag = {"steps": [{"id": "a", "type": "transform", "inputs": {"value": "x" * 3_000_000}}]}
    submitted = httpx.post(
        url(daemon, f"{RUNTIME}/SubmitRun"), json={"spec": {"dagJson": json.dumps(dag)}}, timeout=30
    )
    assert submitted.status_code == 200, submitted.text
    run_id = submitted.json()["runId"]

    def finished() -> httpx.Response | None:
        reply = httpx.post(url(daemon, f"{RUNTIME}/GetRun"), json={"runId": run_id}, timeout=30)
        return reply if reply.json()["run"]["status"] == "RUN_STATUS_SUCCEEDED" else None

    reply = wait_until(finished, what="the run to finish", timeout=30)
    return run_id, len(reply.content)


def _closed_by_daemon(port: int) -> Callable[[socket.socket], bool]:
    """Whether the daemon's end (on ``port``) of a client's connection is closed, by its TCP
    state in /proc/net/tcp (its FIN waits behind the unread reply: the client cannot see it
    without reading, and a read would move the reply along)."""

    def closed(client: socket.socket) -> bool:
        peer = client.getsockname()[1]
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            local, remote, state = line.split()[1:4]
            if int(local.split(":")[1], 16) == port and int(remote.split(":")[1], 16) == peer:
                return int(state, 16) != 1  # not TCP_ESTABLISHED
        return True  # gone

    return closed


def test_a_reply_its_client_reads_none_of_is_given_up_after_body_timeout(make_daemon):
    """hypercorn waited for ever to send a reply: a client that asked for a large one and read
    none of it held the whole reply in the daemon (40 sockets asking a 51 MB GetRun: 2.1 GB)
    for as long as it kept the connection. Now, with no progress for ``[http] body_timeout``,
    the connection is closed; a client that reads is served meanwhile."""
    daemon = make_daemon("[http]\nbody_timeout = 2.0\n")
    run_id, size = _finished_run_with_a_large_output(daemon)
    assert size > 4_000_000
    host, port = daemon.http_address.rsplit(":", 1)
    body = json.dumps({"runId": run_id}).encode()
    request = (f"POST {RUNTIME}/GetRun HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body  # fmt: skip
    clients = []
    for _ in range(3):
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect((host, int(port)))
        client.sendall(request)
        clients.append(client)
    try:
        time.sleep(1.0)
        assert _status_code(daemon) == 200  # a client that reads is served meanwhile
        given_up = "read none of a reply for 2 s ([http] body_timeout)"
        wait_until(lambda: given_up in daemon.stderr(), what="a send given up", timeout=15)
        # every connection closed by the daemon before any is read: reading one whose reply
        # started late (a loaded host builds the three GetRuns one after another) moved it
        closed = _closed_by_daemon(int(port))
        wait_until(lambda: all(map(closed, clients)), what="every reply given up", timeout=20)
        for client in clients:
            received = b""
            client.settimeout(10)
            with contextlib.suppress(ConnectionResetError):
                while chunk := client.recv(1 << 20):
                    received += chunk
            assert 0 < len(received) < size, len(received)  # cut short: the daemon closed it
    finally:
        for client in clients:
            client.close()
    assert _status_code(daemon) == 200
    assert "Traceback" not in daemon.stderr()


class _H2Client:
    """A raw HTTP/2 client over a socket, its streams' flow-control windows at 0 until it opens
    them (``open``): it reads its socket all along, as a client holding replies back would."""

    def __init__(self, daemon) -> None:
        host, port = daemon.http_address.rsplit(":", 1)
        self.authority = daemon.http_address
        self.connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.connection.local_settings = h2.settings.Settings(
            client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0}
        )
        self.connection.initiate_connection()
        self.socket = socket.create_connection((host, int(port)), timeout=10)
        self.received: dict[int, int] = {}
        self.reset: dict[int, int] = {}  # stream id: error code
        self.ended: set[int] = set()

    def post(
        self, path: str, payload: bytes, content_type: str = "application/json", **priority: Any
    ) -> int:
        stream_id = self.connection.get_next_available_stream_id()
        headers = [(":method", "POST"), (":path", path), (":scheme", "http"),
                   (":authority", self.authority), ("content-type", content_type)]  # fmt: skip
        self.connection.send_headers(stream_id, headers, **priority)
        self.connection.send_data(stream_id, payload, end_stream=True)
        self.received[stream_id] = 0
        return stream_id

    def open(self, stream_id: int, size: int) -> None:
        """Open the stream's window (and the connection's) by ``size`` bytes."""
        self.connection.increment_flow_control_window(size, stream_id=stream_id)
        self.connection.increment_flow_control_window(size)

    def pump(self, seconds: float, read: int = 1 << 20, pause: float = 0.0) -> None:
        """Send what is due, then read and take what comes for ``seconds``, ``read`` bytes at
        a time, ``pause`` seconds after each."""
        self.socket.sendall(self.connection.data_to_send())
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.socket.settimeout(left)
            try:
                data = self.socket.recv(read)
            except TimeoutError:
                break
            assert data, "the daemon closed the connection"
            time.sleep(pause)
            for event in self.connection.receive_data(data):
                if isinstance(event, h2.events.DataReceived):
                    self.received[event.stream_id] += len(event.data)
                elif isinstance(event, h2.events.StreamReset):
                    self.reset[event.stream_id] = event.error_code
                elif isinstance(event, h2.events.StreamEnded):
                    self.ended.add(event.stream_id)
            self.socket.sendall(self.connection.data_to_send())

    def close(self) -> None:
        self.socket.close()


def _status_over(client: _H2Client) -> bool:
    """A Status call on the client's connection, its window open, is answered whole."""
    stream_id = client.post("/foundry.Foundry/Status", b"{}")
    client.open(stream_id, 1 << 20)
    deadline = time.monotonic() + 10
    while stream_id not in client.ended and time.monotonic() < deadline:
        client.pump(0.2)
    return stream_id in client.ended and client.received[stream_id] > 0


def _a_large_get_run_over_h2(make_daemon):  # type: ignore[no-untyped-def]
    """A daemon with ``[http] body_timeout = 2``, an HTTP/2 client with its windows at 0, and
    the stream of its GetRun of a run of several MB."""
    daemon = make_daemon("[http]\nbody_timeout = 2.0\n")
    run_id, _ = _finished_run_with_a_large_output(daemon)
    client = _H2Client(daemon)
    return daemon, client, client.post(f"{RUNTIME}/GetRun", json.dumps({"runId": run_id}).encode())


def _until_reset(client: _H2Client, stream_id: int, each: Callable[[], None]) -> float:
    """Seconds until the stream is reset (15 at most), ``each`` done every 0.1 s meanwhile."""
    started = time.monotonic()
    while stream_id not in client.reset and time.monotonic() - started < 15:
        each()
        client.pump(0.1)
    return time.monotonic() - started


def test_an_http2_stream_whose_client_opens_no_window_is_reset_after_body_timeout(make_daemon):
    """A reply waits in hypercorn's buffer of its stream for the client's flow-control window: a
    client that kept its windows at 0 (and read its socket, so the connection's own watch saw
    it move) held a whole GetRun a stream for as long as it kept the connection. Now the stream
    is reset (CANCEL) once it moved nothing for ``[http] body_timeout``; the connection and its
    other streams go on."""
    daemon, client, stream_id = _a_large_get_run_over_h2(make_daemon)
    try:
        seconds = _until_reset(client, stream_id, lambda: None)
        assert client.reset.get(stream_id) == h2.errors.ErrorCodes.CANCEL
        assert 1.5 < seconds < 6
        assert client.received[stream_id] == 0  # it never had a window for any of it
        assert _status_over(client)  # the connection serves on
    finally:
        client.close()
    assert "reset an HTTP/2 stream whose client read none of a reply for 2 s" in daemon.stderr()
    assert "Traceback" not in daemon.stderr()


def test_an_http2_window_opened_a_byte_at_a_time_does_not_hold_a_reply(make_daemon):
    """A window update of one byte now and then moves the reply, but not a piece (64 KiB) in
    ``[http] body_timeout``: the stream is reset as if it moved nothing."""
    _, client, stream_id = _a_large_get_run_over_h2(make_daemon)
    try:
        seconds = _until_reset(client, stream_id, lambda: client.open(stream_id, 1))
        assert client.reset.get(stream_id) == h2.errors.ErrorCodes.CANCEL
        assert seconds < 6
        assert 0 < client.received[stream_id] < 200  # it moved, a byte at a time
    finally:
        client.close()


def test_an_http2_reader_that_keeps_opening_its_window_gets_its_whole_reply(make_daemon):
    """Slow but moving: 64 KiB a second against a body timeout of 2 s, never reset."""
    daemon = make_daemon("[http]\nbody_timeout = 2.0\n")
    dag = {"steps": [{"id": "a", "type": "transform", "inputs": {"value": "x" * 300_000}}]}
    submitted = httpx.post(url(daemon, f"{RUNTIME}/SubmitRun"),
                           json={"spec": {"dagJson": json.dumps(dag)}}, timeout=30)  # fmt: skip
    run_id = submitted.json()["runId"]
    wait_until(lambda: httpx.post(url(daemon, f"{RUNTIME}/GetRun"), json={"runId": run_id},
                                  timeout=30).json()["run"]["status"] == "RUN_STATUS_SUCCEEDED",
               what="the run to finish", timeout=30)  # fmt: skip
    client = _H2Client(daemon)
    try:
        stream_id = client.post(f"{RUNTIME}/GetRun", json.dumps({"runId": run_id}).encode())
        started = time.monotonic()
        while stream_id not in client.ended and time.monotonic() - started < 30:
            assert stream_id not in client.reset
            client.open(stream_id, 16_384)
            client.pump(0.25)
        assert stream_id in client.ended
        assert client.received[stream_id] > 600_000  # the output, twice (inputs and output)
    finally:
        client.close()
    assert "reset an HTTP/2 stream" not in daemon.stderr()


def test_an_http2_stream_waiting_its_turn_behind_another_is_not_reset(make_daemon):
    """Its window open, a stream the client made depend on another (as a browser orders its
    streams) waits while the connection sends the other: it moves with its connection (found by
    a review: such a stream was reset after ``[http] body_timeout``, its client reading all
    along). Over a connection read at ~200 KB/s, behind a GetRun of several MB."""
    daemon = make_daemon("[http]\nbody_timeout = 2.0\n")
    run_id, size = _finished_run_with_a_large_output(daemon)
    client = _H2Client(daemon)
    body = json.dumps({"runId": run_id}).encode()
    try:
        first = client.post(f"{RUNTIME}/GetRun", body)
        client.open(first, size)
        client.pump(0.5, read=4096, pause=0.02)
        second = client.post("/foundry.Foundry/Status", b"{}", priority_depends_on=first,
                             priority_exclusive=True, priority_weight=16)  # fmt: skip
        client.open(second, 1 << 20)
        started = time.monotonic()
        while time.monotonic() - started < 6:  # three body timeouts
            client.pump(0.1, read=4096, pause=0.02)
        assert second not in client.reset
        assert first not in client.reset
        assert client.received[second] == 0  # still behind the first: the test's premise
        assert client.received[first] < size
    finally:
        client.close()
    assert "reset an HTTP/2 stream" not in daemon.stderr()


def test_http2_streams_waiting_on_a_trickled_connection_window_share_its_progress(make_daemon):
    """Ten GetRuns of several MB on one connection, every stream's window open, the
    connection's fed 16 KiB every 0.25 s: each stream waits its turn, and the connection's
    64 KiB/s, shared, moves none of them 64 KiB per ``[http] body_timeout`` — they are reset
    but the one left last (found by a review: credited in full to every stream, a trickle held
    70 replies, 6 MB each, none stalled)."""
    daemon = make_daemon("[http]\nbody_timeout = 2.0\n")
    run_id, _ = _finished_run_with_a_large_output(daemon)
    client = _H2Client(daemon)
    body = json.dumps({"runId": run_id}).encode()
    try:
        client.connection.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1})
        streams = [client.post(f"{RUNTIME}/GetRun", body) for _ in range(10)]
        started = time.monotonic()
        while len(client.reset) < len(streams) - 2 and time.monotonic() - started < 15:
            client.connection.increment_flow_control_window(16_384)
            client.pump(0.25)
        # the last one left has the connection's 64 KiB/s to itself: a slow reader, not held;
        # the two last share it, 64 KiB per body_timeout each: at the bound, either way
        assert len(client.reset) >= len(streams) - 2, client.reset
    finally:
        client.close()
    assert "reset an HTTP/2 stream" in daemon.stderr()


def test_an_http2_watch_whose_client_opens_no_window_is_reset_and_let_go(make_daemon):
    """A streamed reply (a Connect Watch) waits the same way, its task and subscription held:
    reset after ``[http] body_timeout``. Over a thousand such streams on one connection, each
    given up, and the connection still serves: a given-up stream's buffer and its node of the
    connection's priority tree (which holds 1,000) are let go."""
    daemon = make_daemon("[http]\nbody_timeout = 1.0\n")
    client = _H2Client(daemon)
    watch = envelope(json.dumps({"project": "held"}).encode())
    try:
        streams = [client.post(WATCH, watch, "application/connect+json") for _ in range(3)]
        client.pump(0.5)
        foundry_cli("emit", "held_event", "--project", "held", "--addr", daemon.address)
        started = time.monotonic()
        while not all(s in client.reset for s in streams) and time.monotonic() - started < 10:
            client.pump(0.2)
        assert all(client.reset.get(s) == h2.errors.ErrorCodes.CANCEL for s in streams)
        given_up = 3
        while given_up < 1_050:  # 100 at a time: hypercorn's concurrent streams
            batch = [client.post("/foundry.Foundry/Status", b"{}") for _ in range(100)]
            deadline = time.monotonic() + 15
            while not all(s in client.reset for s in batch) and time.monotonic() < deadline:
                client.pump(0.2)
            assert all(s in client.reset for s in batch), len(client.reset)
            given_up += len(batch)
        assert _status_over(client)
    finally:
        client.close()
    assert "Traceback" not in daemon.stderr()
    assert "connection failed" not in daemon.stderr()


def _grpc_h2_client(
    daemon, listener: str = "grpc"
) -> tuple[socket.socket, h2.connection.H2Connection]:
    host, port = (daemon.address if listener == "grpc" else daemon.http_address).rsplit(":", 1)
    config = h2.config.H2Configuration(client_side=True, validate_outbound_headers=False)
    conn = h2.connection.H2Connection(config)
    conn.initiate_connection()
    sock = socket.create_connection((host, int(port)), timeout=15)
    sock.sendall(conn.data_to_send())
    return sock, conn


STATUS_HEADERS = [
    (":method", "POST"), (":scheme", "http"), (":authority", "x"),
    (":path", "/foundry.Foundry/Status"), ("content-type", "application/grpc"), ("te", "trailers"),
]  # fmt: skip


def _events_until_closed(sock: socket.socket, conn: h2.connection.H2Connection) -> list[Any]:
    received = b""
    with contextlib.suppress(OSError):
        while chunk := sock.recv(1 << 16):
            received += chunk
    return conn.receive_data(received) if received else []


def _data_frame(stream_id: int, payload: bytes, *, end: bool) -> bytes:
    return (struct.pack(">I", len(payload))[1:] + b"\x00" + (b"\x01" if end else b"\x00")
            + struct.pack(">I", stream_id) + payload)  # fmt: skip


def _reset_by_the_peer(conn: h2.connection.H2Connection, stream_id: int) -> bytes:
    conn.send_headers(stream_id, STATUS_HEADERS)
    conn.reset_stream(stream_id)
    return conn.data_to_send()


def _reset_by_the_daemon(conn: h2.connection.H2Connection, stream_id: int) -> bytes:
    conn.send_headers(stream_id, STATUS_HEADERS)
    frames = conn.data_to_send() + _data_frame(stream_id, b"\x00" * 5, end=True)  # a request
    conn.streams.pop(stream_id, None)  # (the rest sent by hand: h2 keeps no state of it)
    return frames + _data_frame(stream_id, b"\x00", end=False)  # on its half-closed stream


@pytest.mark.parametrize("listener", ["grpc", "http"])
@pytest.mark.parametrize(
    "stream", [_reset_by_the_peer, _reset_by_the_daemon], ids=["rapid-reset", "made-you-reset"]
)
def test_a_connection_resetting_streams_in_a_loop_is_closed(make_daemon, listener, stream):
    """HTTP/2 "rapid reset" (CVE-2023-44487): HEADERS then RST_STREAM, 100 streams a write,
    on three connections for 10 s, ran the daemon up to 2.5 GB and starved gRPC clients 20 s;
    the HTTP listener, which counted only control frames, served every reset request, its CPU
    pegged for minutes after the peer had gone (a wire-level hunt). "MadeYouReset"
    (CVE-2025-8671): a whole request, then a DATA frame on its half-closed stream, which h2
    answers with a reset of its own: only the peer's resets were counted, and three
    connections ran the daemon to 1.5 GB and its other clients' calls to 10 s (a hunt)."""
    daemon = make_daemon()
    before = rss_mb(daemon.process.pid)
    sock, conn = _grpc_h2_client(daemon, listener)
    with sock:
        stream_id, closed = 1, False
        for _ in range(100):  # 10,000 streams, as fast as the socket takes them
            frames = b""
            for _ in range(100):
                frames += stream(conn, stream_id)
                stream_id += 2
            try:
                sock.sendall(frames)
            except OSError:
                closed = True
                break
        events = [] if closed else _events_until_closed(sock, conn)
    _closed_calmly(daemon, closed, events)
    assert rss_mb(daemon.process.pid) - before < 150
    assert "flooded it with HTTP/2 stream resets" in daemon.stderr()
    assert "Traceback" not in daemon.stderr()


def _closed_calmly(daemon: Any, closed: bool, events: list[Any]) -> None:
    """The flooding connection was closed (with GOAWAY ENHANCE_YOUR_CALM, when it got there),
    and the daemon still answers."""
    goaway = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
    assert closed or goaway, "served to its end"
    if goaway:
        assert goaway[-1].error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    assert daemon.call(lambda foundry, _: foundry.status(foundry_api.StatusRequest())) is not None


# Frames of no answer, each h2's work on the daemon's thread: a frame of type 0x42, an empty DATA
# frame on an open stream (CVE-2019-9518).
_UNKNOWN = b"\x00\x00\x00\x42\x00" + struct.pack(">I", 0)
_EMPTY_DATA = b"\x00\x00\x00\x00\x00" + struct.pack(">I", 1)
# a WINDOW_UPDATE of the connection's window by one byte
_WINDOW_UPDATE = b"\x00\x00\x04\x08\x00" + struct.pack(">I", 0) + struct.pack(">I", 1)


@pytest.mark.parametrize("listener", ["grpc", "http"])
@pytest.mark.parametrize(
    ("frame", "what"),
    [(_UNKNOWN, "control frames"), (_EMPTY_DATA, "control frames"),
     (_WINDOW_UPDATE, "WINDOW_UPDATE frames")],
    ids=["unknown-type", "empty-data", "window-update"],
)  # fmt: skip
def test_a_connection_flooding_frames_of_no_answer_is_closed(make_daemon, listener, frame, what):
    """Unknown-type and empty DATA frames were not counted: four connections sending them for
    8 s slowed every client of both listeners to 4-12 s (a wire-level hunt); nor were
    WINDOW_UPDATE frames (one connection took a core)."""
    daemon = make_daemon()
    sock, conn = _grpc_h2_client(daemon, listener)
    with sock:
        conn.send_headers(1, STATUS_HEADERS)  # stream 1 open: the DATA frames' stream
        sock.sendall(conn.data_to_send())
        closed = False
        for _ in range(60):  # up to 60,000 frames
            try:
                sock.sendall(frame * 1_000)
            except OSError:
                closed = True
                break
        events = [] if closed else _events_until_closed(sock, conn)
    _closed_calmly(daemon, closed, events)
    wait_until(lambda: f"flooded it with HTTP/2 {what}" in daemon.stderr(),
               what="the flood's warning")  # fmt: skip
    assert "Traceback" not in daemon.stderr()


def _header_block(stream_id: int, block: bytes, frame_size: int = 16_384) -> bytes:
    """``block`` as a HEADERS frame and CONTINUATION frames of ``frame_size`` bytes."""
    parts = [block[at : at + frame_size] for at in range(0, len(block), frame_size)] or [b""]
    frames = []
    for index, part in enumerate(parts):
        kind = 0x01 if index == 0 else 0x09  # HEADERS, CONTINUATION
        flags = (0x04 if index == len(parts) - 1 else 0) | (0x01 if index == 0 else 0)
        frames.append(struct.pack(">I", len(part))[1:] + bytes([kind, flags])
                      + struct.pack(">I", stream_id) + part)  # fmt: skip
    return b"".join(frames)


@pytest.mark.parametrize("listener", ["grpc", "http"])
@pytest.mark.parametrize(
    "block",
    [b"\x20" * 1_000_000 + b"\x82", b"\x20\x20\x20\x82\x84\x86"],
    ids=["a million size updates", "three size updates"],
)
def test_a_header_block_hpack_would_spend_seconds_on_is_refused(make_daemon, listener, block):
    """A HEADERS frame and 62 CONTINUATION frames of one-byte dynamic table size updates
    (they add nothing to the header list, whose size is capped) held both listeners for 2.5 s
    of HPACK each, one such block a second kept the daemon saturated (a wire-level hunt)."""
    daemon = make_daemon()
    sock, conn = _grpc_h2_client(daemon, listener)
    with sock:
        closed = False
        try:
            sock.sendall(_header_block(1, block))
        except OSError:
            closed = True
        events = [] if closed else _events_until_closed(sock, conn)
    _closed_calmly(daemon, closed, events)
    assert "Traceback" not in daemon.stderr()


def test_a_grpc_request_without_a_path_is_reset_and_logs_nothing(make_daemon):
    """grpclib never answered HEADERS without :path, and logged a traceback for each (~575 KB
    of log a second from one client); 100 of them held every stream of the connection."""
    daemon = make_daemon()
    sock, conn = _grpc_h2_client(daemon)
    with sock:
        pathless = [h for h in STATUS_HEADERS if h[0] != ":path"]
        resets: set[int] = set()
        sock.settimeout(15)

        def read_until(done: Callable[[list[Any]], bool]) -> None:
            while True:
                chunk = sock.recv(1 << 16)
                assert chunk, "closed by the daemon"
                events = conn.receive_data(chunk)
                sock.sendall(conn.data_to_send())
                for event in events:
                    if isinstance(event, h2.events.StreamReset):
                        assert event.error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR
                        resets.add(event.stream_id)
                if done(events):
                    return

        for batch in range(4):  # 200 in all: more than a connection's 100 streams
            ids = range(1 + 100 * batch, 101 + 100 * batch, 2)
            for stream_id in ids:
                conn.send_headers(stream_id, pathless, end_stream=True)
            sock.sendall(conn.data_to_send())
            read_until(lambda _, ids=ids: set(ids) <= resets)
        conn.send_headers(401, STATUS_HEADERS)
        conn.send_data(401, b"\x00\x00\x00\x00\x00", end_stream=True)
        sock.sendall(conn.data_to_send())
        read_until(
            lambda events: any(
                isinstance(e, h2.events.TrailersReceived) and e.stream_id == 401 for e in events
            )
        )
    assert resets == set(range(1, 400, 2))
    assert "Traceback" not in daemon.stderr()
    assert ":path" not in daemon.stderr()


def test_a_request_framed_by_both_length_and_chunks_is_refused_and_its_connection_closed(
    make_daemon,
):
    """RFC 9112 §6.1: a request with both Transfer-Encoding and Content-Length is a smuggling
    attempt's shape; the server MUST close the connection after its answer (h11 read the chunks,
    and the connection stayed open for the next request a proxy might have framed otherwise).
    With a request behind it (a review: answered before its body was read, 13 of 30 such
    answers collided with hypercorn's own to the bytes behind, and were lost to a traceback)."""
    daemon = make_daemon()
    host, port = daemon.http_address.rsplit(":", 1)
    pipelined = "GET /dashboard/ HTTP/1.1\r\nHost: x\r\n\r\n"  # a smuggled request's place
    for path in ["/foundry.Foundry/Status", "/dashboard/"] * 10:
        request = (
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
        )
        with socket.create_connection((host, int(port)), timeout=10) as client:
            client.sendall((request + pipelined).encode())
            answer = b""
            while chunk := client.recv(65536):  # to the end: the daemon closes the connection
                answer += chunk
        head = answer.split(b"\r\n\r\n", 1)[0].lower()
        assert head.startswith(b"http/1.1 400"), answer[:200]
        assert b"connection: close" in head
        assert b"transfer-encoding" in answer.split(b"\r\n\r\n", 1)[1].lower()  # the reason
        assert answer.count(b"HTTP/1.1 ") == 1  # the pipelined request is not served
    assert _status_code(daemon) == 200
    assert "Traceback" not in daemon.stderr()
