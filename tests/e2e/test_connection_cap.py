"""``[daemon] max_connections``: each listener holds at most that many connections at once; one
more is closed as soon as it is accepted, and the daemon serves on. Without the cap, a client that
opened connections until ``accept`` failed (EMFILE) left the daemon unable to open its own files
and logged a traceback per failed ``accept``."""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import grpc
import httpx
import pytest
from foundry.proto import foundry_api as api

from tests.e2e.helpers import emit, status
from tests.grpcio_client import raw_call, raw_channel

CAP = 4
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


@pytest.fixture(scope="module")
def daemon(shared_daemon):
    return shared_daemon(f"[daemon]\nmax_connections = {CAP}\n")


def _connect(address: str, hello: bytes) -> socket.socket:
    host, port = address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=5)
    if hello:
        sock.sendall(hello)
    return sock


def _closed_by_peer(sock: socket.socket, within: float = 5.0) -> bool:
    """Whether the daemon ends the connection (EOF or reset) within ``within`` seconds, reading
    past whatever it sends first (an HTTP/2 SETTINGS frame)."""
    sock.settimeout(0.2)
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if sock.recv(65536) == b"":
                return True
        except TimeoutError:
            continue
        except ConnectionResetError:
            return True
    return False


@contextmanager
def held(address: str, count: int, hello: bytes) -> Iterator[list[socket.socket]]:
    with ExitStack() as stack:
        socks = []
        for _ in range(count):
            socks.append(stack.enter_context(_connect(address, hello)))
        time.sleep(0.3)  # each accepted and counted
        yield socks


def _status_call(daemon) -> grpc.StatusCode:
    with raw_channel(daemon.address) as channel:
        code, _ = raw_call(channel, "/foundry.Foundry/Status", bytes(api.StatusRequest()), 5)
    return code


@pytest.mark.parametrize(
    ("listener", "hello"), [("grpc", H2_PREFACE), ("http", b"")], ids=["grpc", "http"]
)
def test_a_listener_at_its_cap_closes_one_more_connection_and_serves_on(daemon, listener, hello):
    address = daemon.address if listener == "grpc" else daemon.http_address
    with held(address, CAP, hello) as socks:
        with _connect(address, hello) as extra:
            assert _closed_by_peer(extra), "a connection over the cap was kept open"
        if listener == "grpc":
            assert _status_call(daemon) == grpc.StatusCode.UNAVAILABLE
            # the CLI's line names the cap, not only TLS (which this daemon does not serve)
            said = daemon.cli("status").stderr
            assert "before any answer" in said, said
            assert "[daemon] max_connections" in said, said
        assert not _closed_by_peer(socks[0], within=0.5), "a held connection was closed"
        socks.pop().close()
        time.sleep(0.3)  # its end counted
        if listener == "grpc":
            assert _status_call(daemon) == grpc.StatusCode.OK  # the freed place is taken again
    time.sleep(0.3)
    reply = emit(daemon, "greet_requested", project="capped", payload={"name": "Ada"})
    assert [w.workflow_id for w in status(daemon, reply.workflow_id)] == [reply.event_id]
    cap_line = f"the {'gRPC' if listener == 'grpc' else 'HTTP'} listener holds {CAP} connections"
    assert daemon.stderr().count(cap_line) == 1, daemon.stderr()[-2000:]
    assert "Traceback" not in daemon.stderr()


def test_a_stream_its_client_abandoned_ends_and_frees_its_place(make_daemon):
    """A Connect Watch on a project nobody emits to, its client gone: it waited for the next
    event for good, holding its connection; ``CAP`` of them shut the HTTP listener."""
    daemon = make_daemon(f"[daemon]\nmax_connections = {CAP}\n")
    body = json.dumps({"project": f"nobody-{uuid.uuid4().hex}"}).encode()
    envelope = b"\x00" + len(body).to_bytes(4, "big") + body
    request = (
        b"POST /foundry.Foundry/Watch HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/connect+json\r\n"
        + f"Content-Length: {len(envelope)}\r\n\r\n".encode() + envelope
    )  # fmt: skip
    for _ in range(3 * CAP):
        with _connect(daemon.http_address, request):
            time.sleep(0.05)  # the call is under way when its client goes
    time.sleep(0.5)
    reply = httpx.post(f"http://{daemon.http_address}/foundry.Foundry/Emit",
                       json={"eventType": "after_abandoned_watches", "project": "capped"},
                       timeout=10)  # fmt: skip
    assert reply.status_code == 200, reply.text
