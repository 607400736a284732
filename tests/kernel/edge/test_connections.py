"""``edge/connections.py``: a listener's count of connections against its cap, and the cap the
open-files limit allows."""

from __future__ import annotations

import asyncio
import logging
import resource
import ssl
from typing import Any

import pytest
from foundry.kernel.edge import connections
from foundry.kernel.edge.connections import ConnectionCap, capped_listener, connection_budget
from foundry.kernel.edge.grpc.server import RequestCodec, bind, probing_idle_connections
from grpclib.client import Channel
from grpclib.server import Server

from tests.e2e.test_auth_tls import make_certificate


def test_a_cap_admits_up_to_its_limit_and_again_once_one_ends(caplog):
    cap = ConnectionCap(2, "gRPC")
    with caplog.at_level(logging.WARNING, "foundry.daemon"):
        assert [cap.admit() for _ in range(5)] == [True, True, False, False, False]
    assert (cap.live, cap.refused) == (2, 3)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["the gRPC listener holds 2 connections, its cap ([daemon] max_connections): "
                     "new ones are closed at once (1 so far)"]  # one line a burst  # fmt: skip
    cap.release()
    assert cap.admit()
    assert not cap.admit()


def test_the_budget_keeps_the_cap_when_the_limit_can_be_raised_to_hold_it(monkeypatch):
    limits = {"soft": 1_024, "hard": 65_536}
    monkeypatch.setattr(resource, "getrlimit", lambda _: (limits["soft"], limits["hard"]))
    monkeypatch.setattr(resource, "setrlimit", lambda _, pair: limits.update(soft=pair[0]))
    assert connection_budget(1_024) == 1_024
    assert limits["soft"] == 2 * 1_024 + connections.RESERVED_FDS


def test_the_budget_lowers_the_cap_to_what_the_hard_limit_leaves(monkeypatch, caplog):
    monkeypatch.setattr(resource, "getrlimit", lambda _: (256, 1_024))
    monkeypatch.setattr(resource, "setrlimit", lambda _, pair: None)
    with caplog.at_level(logging.WARNING, "foundry.daemon"):
        assert connection_budget(1_024) == (1_024 - connections.RESERVED_FDS) // 2
    assert "max_connections 1024 lowered to 256: the open-files limit is 1024" in caplog.text


@pytest.mark.parametrize("soft", [64, 512])
def test_the_budget_never_goes_under_its_minimum(monkeypatch, soft):
    monkeypatch.setattr(resource, "getrlimit", lambda _: (soft, soft))
    assert connection_budget(1_024) == connections.MINIMUM_CAP


# --- the gRPC listener's socket, with a real grpclib server ----------------------------------


async def _serve_and_probe(cap: ConnectionCap, ssl_context: Any, probes: list[str]) -> list[bool]:
    """A grpclib server on a capped listener; each probe connects and either holds its
    connection ("hold") or sends garbage or nothing and closes it ("garbage", "close"). Returns
    for each probe whether the server closed it within 0.3 s."""
    server = Server([], codec=RequestCodec(1 << 20))
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    await server.start(sock=capped_listener(sock, cap), ssl=ssl_context)
    held, closed = [], []
    try:
        for probe in probes:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            if probe == "garbage":
                writer.write(b"GET / HTTP/1.0\r\n\r\n" * 8)
            if probe != "hold":
                writer.close()
                closed.append(False)
                continue
            try:
                closed.append(await asyncio.wait_for(reader.read(1 << 16), 0.3) == b"")
            except TimeoutError:
                closed.append(False)
            held.append(writer)
        for writer in held:
            writer.close()
        await asyncio.sleep(0.3)  # their ends reach the server
    finally:
        server.close()
        await server.wait_closed()
    return closed


def test_the_grpc_listener_closes_connections_over_its_cap_and_counts_ends():
    cap = ConnectionCap(2, "gRPC")
    closed = asyncio.run(_serve_and_probe(cap, None, ["hold", "hold", "hold", "close"]))
    assert closed[:3] == [False, False, True]
    assert (cap.live, cap.refused) == (0, 2)


def test_a_tls_handshake_that_never_finishes_ends_its_count(tmp_path):
    """Counted above TLS, a connection closed before its handshake finished (a port scan, a
    TCP health check) kept its place for good: after ``limit`` of them the listener refused
    everyone. Over the cap, a connection is closed before any handshake."""
    cert, key = make_certificate(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    cap = ConnectionCap(2, "gRPC")
    probes = ["close", "garbage"] * 3 + ["hold", "hold", "hold"]
    closed = asyncio.run(_serve_and_probe(cap, context, probes))
    assert closed[-3:] == [False, False, True]  # the third held one: over the cap, at once
    assert cap.live == 0
    assert cap.refused == 1


async def _silent_and_speaking(every: float, answer_within: float) -> tuple[bool, int]:
    """Whether a socket that never speaks HTTP/2 was closed by the server within a few probe
    periods, and the cap's count then (a grpclib client's idle connection stays open)."""
    cap = ConnectionCap(8, "gRPC")
    server = Server(
        [], codec=RequestCodec(1 << 20), config=probing_idle_connections(every, answer_within)
    )
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    await server.start(sock=capped_listener(sock, cap))
    channel = Channel("127.0.0.1", port)
    try:
        await channel.__connect__()  # an HTTP/2 connection, idle: no call
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        deadline = asyncio.get_running_loop().time() + 5 * (every + answer_within)
        silent_closed = False
        while not silent_closed and asyncio.get_running_loop().time() < deadline:
            try:
                silent_closed = await asyncio.wait_for(reader.read(1 << 16), 0.1) == b""
            except TimeoutError:
                continue
        writer.close()
        await asyncio.sleep(0.1)
        return silent_closed, cap.live
    finally:
        channel.close()
        server.close()
        await server.wait_closed()


def test_a_socket_that_never_answers_a_ping_is_closed_and_a_client_that_does_stays():
    silent_closed, live = asyncio.run(_silent_and_speaking(0.2, 0.3))
    assert silent_closed  # its place in the cap comes free
    assert live == 1  # the client's idle connection answered every ping: still open


# --- control frame floods ------------------------------------------------------------------------


def test_a_connections_control_frames_are_a_burst_then_a_rate():
    budget = connections.ControlFrames(now=0.0)
    assert budget.spend(connections.CONTROL_BURST, 0.0)  # the whole burst at once
    assert not budget.spend(1, 0.0)  # one more: a flood
    budget = connections.ControlFrames(now=0.0)
    assert budget.spend(connections.CONTROL_BURST, 0.0)
    assert budget.spend(int(connections.CONTROL_RATE), 1.0)  # a second's worth a second
    # keepalive PINGs for an hour: never near it
    steady = connections.ControlFrames(now=0.0)
    assert all(steady.spend(1, float(t)) for t in range(0, 3_600, 10))


def test_control_frames_are_pings_settings_and_priorities_not_data():
    import h2.config
    import h2.connection
    import h2.events

    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    client.initiate_connection()  # a SETTINGS
    client.ping(b"12345678")
    client.prioritize(1, weight=32)
    client.send_headers(3, [(":method", "POST"), (":path", "/x"), (":scheme", "http"),
                            (":authority", "x")])  # fmt: skip
    client.send_data(3, b"body", end_stream=True)
    # a request whose HEADERS carry a priority, as browsers send every request: not a control
    client.send_headers(5, [(":method", "GET"), (":path", "/y"), (":scheme", "http"),
                            (":authority", "x")], end_stream=True, priority_weight=200)  # fmt: skip
    events = server.receive_data(client.data_to_send())
    assert any(isinstance(e, h2.events.PriorityUpdated) and e.stream_id == 5 for e in events)
    assert len(events) > 3  # the requests, a body and their ends too
    assert connections.control_frames(events) == 3


def test_a_recurring_warning_is_one_line_a_period_with_how_many_were_held_back(caplog):
    now = [100.0]
    warning = connections.RecurringWarning(logging.getLogger("t"), every=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING):
        for n in range(500):
            now[0] += 0.001
            warning.warning("bad connection %d", n)
        assert [r.getMessage() for r in caplog.records] == ["bad connection 0"]
        now[0] += 10.0
        warning.warning("bad connection %d", 500)
        warning.warning("bad connection %d", 501)
    assert [r.getMessage() for r in caplog.records][1:] == [
        "bad connection 500 (and 499 more like it in the last 10 s)"
    ]


def test_a_recurring_warning_holds_back_per_key_and_shares_a_period_past_its_keys(caplog):
    warning = connections.RecurringWarning(logging.getLogger("t"), every=10.0, clock=lambda: 5.0)
    with caplog.at_level(logging.WARNING):
        for key in ("LookupError", "UnicodeDecodeError", "LookupError"):
            warning.warning("failed: %s", key, key=key)
        for n in range(warning.KEYS + 5):
            warning.warning("failed: %s", n, key=f"k{n}")
    logged = [r.getMessage() for r in caplog.records]
    assert logged[:2] == ["failed: LookupError", "failed: UnicodeDecodeError"]
    assert len(logged) == warning.KEYS + 1  # 30 more keys, then one line for all the rest
