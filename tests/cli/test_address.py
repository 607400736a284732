"""Where a bad daemon address came from is what the CLI's error names."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading

import pytest


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [(["--addr", "garbage"], {}, "--addr"), ([], {"FOUNDRY_ADDR": "garbage"}, "FOUNDRY_ADDR")],
)
def test_a_bad_address_is_named_by_where_it_came_from(tmp_path, args, env, named):
    environment = {**os.environ, "FOUNDRY_HOME": str(tmp_path), **env}
    if "FOUNDRY_ADDR" not in env:
        environment.pop("FOUNDRY_ADDR", None)
    done = subprocess.run(
        [sys.executable, "-m", "foundry.kernel.cli", "status", *args],
        capture_output=True, text=True, env=environment, cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2  # a usage error, as sql's and blocks' (status's was 1)
    assert done.stderr.strip() == f"foundry: {named}: expected HOST:PORT, got 'garbage'"


@pytest.mark.parametrize(
    "args",
    [["--addr", "127.0.0.1:1", "status"], ["--json", "--addr=127.0.0.1:1", "run", "list"]],
    ids=["addr", "json-and-addr"],
)
def test_client_options_before_the_command_are_taken(tmp_path, args):
    # argparse said "argument COMMAND: invalid choice: '127.0.0.1:1'", naming no option
    environment = {**os.environ, "FOUNDRY_HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "foundry.kernel.cli", *args],
        capture_output=True, text=True, env=environment, cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "cannot reach the daemon at 127.0.0.1:1" in done.stderr


def test_a_port_that_never_answers_is_given_up_on(monkeypatch, capsys):
    # it held the command until Ctrl-C (a hung process, a server that is no gRPC one)
    from foundry.kernel.cli.main import main
    from foundry.kernel.edge.grpc import client

    monkeypatch.setattr(client, "ANSWER_SECONDS", 0.5)
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        assert main(["status", "--addr", f"127.0.0.1:{port}"]) == 1
    said = capsys.readouterr().err
    assert said.strip() == (
        f"foundry: cannot reach the daemon at 127.0.0.1:{port}: no gRPC answer within 0.5 s"
    )


def _serve_http2_404(listener: socket.socket) -> None:
    """One HTTP/2 connection answered as a web server with no such page would (no gRPC)."""
    import h2.config
    import h2.connection
    import h2.events

    conn, _ = listener.accept()
    with conn:
        h2conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        h2conn.initiate_connection()
        conn.sendall(h2conn.data_to_send())
        while data := conn.recv(65536):
            for event in h2conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    page = [(":status", "404"), ("content-type", "text/html")]
                    h2conn.send_headers(event.stream_id, page)
                    h2conn.send_data(event.stream_id, b"<h1>no such page</h1>", end_stream=True)
            conn.sendall(h2conn.data_to_send())


def test_an_http2_server_that_is_no_grpc_one_is_not_the_daemon(capsys):
    """Its 404 was taken for the daemon's answer: "UNIMPLEMENTED: Received :status = '404'",
    or "lost the connection to the daemon" though no daemon had ever answered."""
    from foundry.kernel.cli.main import main

    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        server = threading.Thread(target=_serve_http2_404, args=(listener,), daemon=True)
        server.start()
        assert main(["status", "--addr", f"127.0.0.1:{port}"]) == 1
        server.join(10)
    said = capsys.readouterr().err.strip()
    assert said == (f"foundry: cannot reach the daemon at 127.0.0.1:{port}: the server there "
                    "is no gRPC one (Received :status = '404')")  # fmt: skip


def _foundry(tmp_path, *args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "FOUNDRY_HOME": str(tmp_path), **extra_env}
    environment.pop("FOUNDRY_ADDR", None)
    return subprocess.run(
        [sys.executable, "-m", "foundry.kernel.cli", *args],
        capture_output=True, text=True, env=environment, cwd=tmp_path, timeout=60,
    )  # fmt: skip


LONG_LABEL = "a" * 64 + ".com"  # a DNS label past 63 characters: IDNA refuses to encode it


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["status", "--addr", f"{LONG_LABEL}:1"], "not a host name this machine can look up"),
        (["sql", "SELECT 1", "--addr", f"{LONG_LABEL}:1"], "not a host name"),
        (["status", "--addr", "127.0.0.1:\u00b2"], "expected HOST:PORT"),
    ],
    ids=["status", "sql", "superscript-port"],
)
def test_an_address_no_connection_can_be_made_to_is_one_line(tmp_path, args, said):
    # getaddrinfo's UnicodeError is no OSError, and isdigit() took "²": tracebacks
    done = _foundry(tmp_path, *args)
    assert done.returncode == (2 if said == "expected HOST:PORT" else 1)  # malformed: usage
    assert said in done.stderr
    assert "Traceback" not in done.stderr


def test_serve_on_a_host_name_that_cannot_be_looked_up_is_one_line(tmp_path):
    (tmp_path / "token.toml").write_text('[daemon]\ntoken_env = "ADDR_TEST_TOKEN"\n')
    done = _foundry(tmp_path, "serve", "--config", str(tmp_path / "token.toml"), "--listen",
                    f"{LONG_LABEL}:0", "--http-listen", "off", ADDR_TEST_TOKEN="t")  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.startswith(f"foundry: cannot listen on {LONG_LABEL}:0")
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("command", [["sql", "SELECT 1"], ["sql", "--list"], ["status"]])
def test_a_port_that_hangs_up_is_one_line(tmp_path, command):
    # (a TLS port, or no gRPC server: sql and export called grpclib themselves, and its
    # StreamTerminatedError came out as a traceback)
    with socket.create_server(("127.0.0.1", 0)) as hanging_up:
        port = hanging_up.getsockname()[1]
        stop = threading.Event()

        def hang_up() -> None:
            hanging_up.settimeout(0.2)
            while not stop.is_set():
                try:
                    client, _ = hanging_up.accept()
                except TimeoutError:
                    continue
                client.recv(1024)
                client.close()

        thread = threading.Thread(target=hang_up, daemon=True)
        thread.start()
        try:
            done = _foundry(tmp_path, *command, "--addr", f"127.0.0.1:{port}")
        finally:
            stop.set()
            thread.join(5)
    assert "Traceback" not in done.stderr, done.stderr
    if command != ["sql", "--list"]:  # (--list falls back to this installation's questions)
        assert done.returncode == 1
        assert f"cannot reach the daemon at 127.0.0.1:{port}" in done.stderr


def test_ctrl_c_while_the_command_imports_ends_it_quietly(tmp_path):
    # the command's modules take ~0.3 s to import, before main() could catch a KeyboardInterrupt
    interrupted = (
        "import sys\n"
        "class Interrupt:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'foundry.kernel.cli.main':\n"
        "            raise KeyboardInterrupt\n"
        "sys.meta_path.insert(0, Interrupt())\n"
        "from foundry.kernel.cli.entry import main\n"
        "sys.exit(main())\n"
    )
    done = subprocess.run([sys.executable, "-c", interrupted], capture_output=True, text=True,
                          cwd=tmp_path, timeout=60)  # fmt: skip
    assert done.returncode == 130
    assert done.stderr == ""


def test_a_servers_deadline_exceeded_is_an_answer_not_a_silence():
    """The health check's DEADLINE_EXCEEDED from a server (a [daemon] body_timeout of 1e-9 s)
    was said to be "no gRPC answer within 15 s", 0.4 s after the call."""
    import asyncio

    from foundry.kernel.edge.grpc.client import answering
    from grpclib import GRPCError
    from grpclib.client import Channel
    from grpclib.const import Status
    from grpclib.health.v1.health_grpc import HealthBase
    from grpclib.server import Server

    class TooLate(HealthBase):
        async def Check(self, stream):  # noqa: N802 - the service's method name
            raise GRPCError(Status.DEADLINE_EXCEEDED, "the request message came too late")

        async def Watch(self, stream):  # noqa: N802
            raise GRPCError(Status.UNIMPLEMENTED)

    async def check() -> None:
        server = Server([TooLate()])
        listener = socket.create_server(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        await server.start(sock=listener)
        channel = Channel("127.0.0.1", port)
        try:
            await asyncio.wait_for(answering(channel), 10)  # no ConnectionError: it answered
        finally:
            channel.close()
            server.close()
            await server.wait_closed()

    asyncio.run(check())


def test_a_grpc_server_without_a_health_service_is_an_answer():
    """grpclib's own server answers an unknown method (health's, here) with no content type:
    that is a gRPC answer (the benchmark's floor server was taken for "no gRPC one")."""
    import asyncio

    from foundry.kernel.edge.grpc.client import answering
    from grpclib.client import Channel
    from grpclib.server import Server

    async def check() -> None:
        server = Server([])
        listener = socket.create_server(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        await server.start(sock=listener)
        channel = Channel("127.0.0.1", port)
        try:
            await asyncio.wait_for(answering(channel), 10)  # no ConnectionError
        finally:
            channel.close()
            server.close()
            await server.wait_closed()

    asyncio.run(check())
