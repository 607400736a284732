"""The bearer token and TLS on a real daemon (README.md, "Authentication and TLS"): grpcio and the
CLI with and without the token, grpcurl's reflection with it, health probes without it, start
refused with one line for an open bind without a token, an empty token variable or a bad
certificate, a TLS handshake with a certificate made here, and a plain-text client against the
TLS port (it fails; the daemon serves on). The HTTP listener gets the same checks with httpx."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import socket
import ssl
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpclib.client import Channel
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

from tests.e2e.helpers import foundry_cli
from tests.helpers import DEADLINE

TOKEN_ENV = "FOUNDRY_TEST_TOKEN"
TOKEN = "s3cret-token-for-tests"
AUTH = f"""
[daemon]
token_env = "{TOKEN_ENV}"
"""
GRPCURL = Path(sys.executable).parent / "grpcurl"
STATUS = "/foundry.Foundry/Status"


# --- a certificate made for the test --------------------------------------------------------


def make_certificate(folder: Path, name: str = "server") -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost (its own CA) and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}-key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def tls_config(cert: Path, key: Path, *, token: bool = False) -> str:
    auth = f'token_env = "{TOKEN_ENV}"\n' if token else ""
    return f'[daemon]\n{auth}tls_cert = "{cert}"\ntls_key = "{key}"\n'


# --- grpcio against the token ----------------------------------------------------------------


@pytest.fixture(scope="module")
def auth_daemon(shared_daemon):
    return shared_daemon(AUTH, env={TOKEN_ENV: TOKEN}, name="auth")


def grpcio_status(address: str, metadata=(), credentials=None) -> grpc.StatusCode:
    """The status of one Status call made by grpcio (OK or the error's code)."""
    if credentials is None:
        channel = grpc.insecure_channel(address)
    else:
        channel = grpc.secure_channel(address, credentials)
    with channel:
        call = channel.unary_unary(STATUS)
        try:
            call(b"", metadata=list(metadata), timeout=DEADLINE)
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def test_a_call_without_the_token_is_unauthenticated(auth_daemon):
    assert grpcio_status(auth_daemon.address) == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize(
    "value", [f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", TOKEN, f"Basic {TOKEN}", "Bearer "]
)
def test_a_call_with_a_wrong_token_is_unauthenticated(auth_daemon, value):
    status = grpcio_status(auth_daemon.address, [("authorization", value)])
    assert status == grpc.StatusCode.UNAUTHENTICATED


def test_a_call_with_the_token_is_answered(auth_daemon):
    status = grpcio_status(auth_daemon.address, [("authorization", f"Bearer {TOKEN}")])
    assert status == grpc.StatusCode.OK


def test_the_generated_grpcio_client_is_refused_then_answered(auth_daemon, grpcio_client):
    with grpcio_client.connect(auth_daemon.address) as (foundry, _):
        request = grpcio_client.foundry_pb2.StatusRequest()
        with pytest.raises(grpc.RpcError) as refused:
            foundry.Status(request, timeout=DEADLINE)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "bearer token is missing" in refused.value.details()
        reply = foundry.Status(
            request, metadata=[("authorization", f"Bearer {TOKEN}")], timeout=DEADLINE
        )
        assert reply.workflows is not None


def test_health_checks_need_no_token(auth_daemon):
    async def check() -> int:
        host, port = auth_daemon.address.rsplit(":", 1)
        channel = Channel(host, int(port))
        try:
            reply = await HealthStub(channel).Check(HealthCheckRequest(service=""))
        finally:
            channel.close()
        return reply.status

    assert asyncio.run(asyncio.wait_for(check(), DEADLINE)) == HealthCheckResponse.SERVING


def test_an_unknown_method_without_the_token_is_unauthenticated_first(auth_daemon):
    with (
        grpc.insecure_channel(auth_daemon.address) as channel,
        pytest.raises(grpc.RpcError) as refused,
    ):
        channel.unary_unary("/foundry.Foundry/NoSuchMethod")(b"", timeout=DEADLINE)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_grpcurl_reflection_needs_the_token_too(auth_daemon):
    assert GRPCURL.exists(), "grpcurl comes with the dev dependencies: pip install -e '.[dev]'"

    def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
        command = [str(GRPCURL), "-plaintext", *args, auth_daemon.address, "list"]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)

    refused = grpcurl()
    assert refused.returncode != 0
    assert "Unauthenticated" in refused.stderr
    listed = grpcurl("-H", f"authorization: Bearer {TOKEN}")
    assert listed.returncode == 0, listed.stderr
    assert "foundry.Foundry" in listed.stdout.split()


# --- the CLI sends the token from the same variable -----------------------------------------


def cli(daemon, folder: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``foundry ARGS`` run in ``folder`` (whose foundry.toml the CLI reads ``token_env`` from)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("FOUNDRY_")}
    full_env.update({"FOUNDRY_ADDR": daemon.address, "FOUNDRY_HOME": str(folder / "home")})
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "foundry.kernel.cli", *args],
        capture_output=True, text=True, env=full_env, cwd=folder, timeout=60, check=False,
    )  # fmt: skip


def test_the_cli_sends_the_token_from_the_variable_token_env_names(auth_daemon, tmp_path):
    (tmp_path / "foundry.toml").write_text(AUTH)
    done = cli(auth_daemon, tmp_path, {TOKEN_ENV: TOKEN}, "emit", "cli_probe", "--project", "p")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("event    evt_")


def test_the_cli_sends_foundry_token_without_a_config(auth_daemon, tmp_path):
    done = cli(auth_daemon, tmp_path, {"FOUNDRY_TOKEN": TOKEN}, "status", "--json")
    assert done.returncode == 0, done.stderr


def test_the_cli_sql_command_sends_the_token_too(auth_daemon, tmp_path):
    done = cli(auth_daemon, tmp_path, {"FOUNDRY_TOKEN": TOKEN}, "sql", "SELECT 42 AS answer")
    assert done.returncode == 0, done.stderr
    assert "42" in done.stdout
    refused = cli(auth_daemon, tmp_path, {}, "sql", "SELECT 42 AS answer")
    assert refused.returncode == 1
    assert "UNAUTHENTICATED" in refused.stderr


@pytest.mark.parametrize("env", [{}, {"FOUNDRY_TOKEN": "wrong"}], ids=["none", "wrong"])
def test_the_cli_without_the_right_token_fails_with_one_line(auth_daemon, tmp_path, env):
    done = cli(auth_daemon, tmp_path, env, "status")
    assert done.returncode == 1
    assert done.stderr.splitlines() == [done.stderr.strip()]
    assert "UNAUTHENTICATED" in done.stderr


# --- start refused with one line ------------------------------------------------------------

TLS_MISMATCH = "tls mismatch"


def refusal_cases(folder: Path) -> dict[str, tuple[str, str, dict[str, str], str]]:
    """case: (config text, --listen, extra env, text the one line must hold)."""
    cert, key = make_certificate(folder, "good")
    _, other_key = make_certificate(folder, "other")
    return {
        "open bind": ("", "0.0.0.0:0", {}, "--listen: 0.0.0.0 is not a loopback"),
        "empty token variable": (AUTH, "127.0.0.1:0", {TOKEN_ENV: ""}, f"names {TOKEN_ENV}"),
        "unset token variable": (AUTH, "127.0.0.1:0", {}, f"names {TOKEN_ENV}"),
        "missing cert": (tls_config(folder / "nope.pem", key), "127.0.0.1:0", {},
                         "[daemon].tls_cert: " + str(folder / "nope.pem") + ": no such file"),
        TLS_MISMATCH: (tls_config(cert, other_key), "127.0.0.1:0", {},
                       f"[daemon].tls_key: {other_key} does not match {cert}"),
        "cert as key": (tls_config(cert, cert), "127.0.0.1:0", {},
                        "[daemon].tls_cert: cannot load"),
        "cert without key": (f'[daemon]\ntls_cert = "{cert}"\n', "127.0.0.1:0", {},
                             "tls_cert and tls_key go together"),
    }  # fmt: skip


@pytest.fixture(scope="module")
def refusals(tmp_path_factory):
    """``foundry serve`` with each refused setup, all started at once."""
    folder = tmp_path_factory.mktemp("refused")
    cases = refusal_cases(folder)

    def attempt(case: str) -> subprocess.CompletedProcess[str]:
        text, listen, env, _ = cases[case]
        config = folder / f"{case.replace(' ', '-')}.toml"
        config.write_text(text)
        env = {"FOUNDRY_HOME": str(folder / f"{config.stem}-home"), **env}
        if TOKEN_ENV not in env:
            env[TOKEN_ENV] = ""  # the test process's own value never leaks in
        return foundry_cli("serve", "--config", str(config), "--listen", listen, env=env)

    with ThreadPoolExecutor(max_workers=4) as pool:
        done = dict(zip(cases, pool.map(attempt, cases), strict=True))
    return {case: (cases[case][3], done[case]) for case in cases}


@pytest.mark.parametrize(
    "case",
    ["open bind", "empty token variable", "unset token variable", "missing cert", TLS_MISMATCH,
     "cert as key", "cert without key"],
)  # fmt: skip
def test_start_is_refused_with_one_line(refusals, case):
    expected, done = refusals[case]
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""  # it never served
    assert done.stderr.splitlines() == [done.stderr.strip()], done.stderr
    assert expected in done.stderr
    assert "Traceback" not in done.stderr
    if case != "open bind":  # (--listen's, not the file's)
        assert ".toml: [daemon]." in done.stderr  # the file named, as every other setting's
    else:  # the flag's: the file said nothing of it (it was blamed all the same)
        assert ".toml" not in done.stderr


def test_config_check_names_the_file_of_a_tls_refusal_as_serve_does(tmp_path):
    _, key = make_certificate(tmp_path, "good")
    config = tmp_path / "cc.toml"
    config.write_text(tls_config(tmp_path / "nope.pem", key))
    done = foundry_cli("config", "check", "--config", str(config),
                       env={"FOUNDRY_HOME": str(tmp_path / "home")})  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert f"cc.toml: [daemon].tls_cert: {tmp_path / 'nope.pem'}: no such file" in done.stderr


# --- TLS ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    return make_certificate(folder)


@pytest.fixture(scope="module")
def tls_daemon(shared_daemon, tls):
    cert, key = tls
    return shared_daemon(tls_config(cert, key, token=True), env={TOKEN_ENV: TOKEN}, name="tls")


def test_grpcio_completes_a_tls_handshake_with_the_test_ca(tls_daemon, tls):
    credentials = grpc.ssl_channel_credentials(root_certificates=tls[0].read_bytes())
    auth = [("authorization", f"Bearer {TOKEN}")]
    assert grpcio_status(tls_daemon.address, auth, credentials) == grpc.StatusCode.OK
    refused = grpcio_status(tls_daemon.address, (), credentials)
    assert refused == grpc.StatusCode.UNAUTHENTICATED


def test_grpcio_refuses_a_certificate_it_does_not_trust(tls_daemon, tmp_path):
    stranger, _ = make_certificate(tmp_path, "stranger")
    credentials = grpc.ssl_channel_credentials(root_certificates=stranger.read_bytes())
    status = grpcio_status(tls_daemon.address, [("authorization", f"Bearer {TOKEN}")], credentials)
    assert status == grpc.StatusCode.UNAVAILABLE


def test_a_plain_text_client_on_the_tls_port_fails_and_the_daemon_serves_on(tls_daemon, tls):
    assert grpcio_status(tls_daemon.address, [("authorization", f"Bearer {TOKEN}")]) in {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.INTERNAL,  # some grpcio versions report the garbled reply so
    }
    credentials = grpc.ssl_channel_credentials(root_certificates=tls[0].read_bytes())
    auth = [("authorization", f"Bearer {TOKEN}")]
    assert grpcio_status(tls_daemon.address, auth, credentials) == grpc.StatusCode.OK
    assert tls_daemon.process is not None
    assert tls_daemon.process.poll() is None


def _negotiated(address: str, ca: Path, offered: list[str]) -> str | None:
    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols(offered)
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls_socket:  # fmt: skip
        return tls_socket.selected_alpn_protocol()


def test_the_grpc_port_agrees_to_h2_alone_and_the_http_port_to_http11_too(tls_daemon, tls):
    """One context for both listeners: the gRPC port agreed to http/1.1, then sent HTTP/2
    frames (curl --http1.1: "Received HTTP/0.9 when not allowed"; a hunt)."""
    assert _negotiated(tls_daemon.address, tls[0], ["http/1.1"]) is None
    assert _negotiated(tls_daemon.address, tls[0], ["h2", "http/1.1"]) == "h2"
    assert _negotiated(tls_daemon.http_address, tls[0], ["http/1.1"]) == "http/1.1"


def test_the_cli_talks_to_a_tls_daemon_with_foundry_ca(tls_daemon, tls, tmp_path):
    env = {"FOUNDRY_TOKEN": TOKEN, "FOUNDRY_CA": str(tls[0])}
    done = cli(tls_daemon, tmp_path, env, "emit", "tls_probe", "--project", "p")
    assert done.returncode == 0, done.stderr
    plain = cli(tls_daemon, tmp_path, {"FOUNDRY_TOKEN": TOKEN}, "status")
    assert plain.returncode == 1
    assert plain.stderr.splitlines() == [plain.stderr.strip()], plain.stderr
    assert "cannot reach the daemon" in plain.stderr
    assert "FOUNDRY_CA" in plain.stderr


def test_the_cli_names_an_unreadable_ca_file(tls_daemon, tmp_path):
    env = {"FOUNDRY_TOKEN": TOKEN, "FOUNDRY_CA": str(tmp_path / "nope.pem")}
    done = cli(tls_daemon, tmp_path, env, "status")
    assert done.returncode != 0
    assert f"FOUNDRY_CA: {tmp_path / 'nope.pem'}: no such file" in done.stderr
    assert "Traceback" not in done.stderr


# --- the HTTP listener: the same token and TLS ----------------------------------------------

CONNECT_STATUS = "/foundry.Foundry/Status"


def http_status(base: str, headers: dict[str, str], verify: object = True) -> httpx.Response:
    with httpx.Client(base_url=base, verify=verify, timeout=DEADLINE) as client:
        return client.post(
            CONNECT_STATUS, json={}, headers={"content-type": "application/json", **headers}
        )


def test_http_without_the_token_is_401_and_with_it_200(auth_daemon):
    base = f"http://{auth_daemon.http_address}"
    refused = http_status(base, {})
    assert refused.status_code == 401
    assert refused.json()["code"] == "unauthenticated"
    wrong = http_status(base, {"authorization": f"Bearer {TOKEN}-wrong"})
    assert wrong.status_code == 401
    answered = http_status(base, {"authorization": f"Bearer {TOKEN}"})
    assert answered.status_code == 200, answered.text


def test_https_with_the_test_ca_and_the_token(tls_daemon, tls):
    import ssl

    context = ssl.create_default_context(cafile=str(tls[0]))
    base = f"https://{tls_daemon.http_address}"
    answered = http_status(base, {"authorization": f"Bearer {TOKEN}"}, verify=context)
    assert answered.status_code == 200, answered.text
    assert http_status(base, {}, verify=context).status_code == 401
    with pytest.raises(httpx.ConnectError):
        http_status(base, {"authorization": f"Bearer {TOKEN}"})  # the system roots: untrusted


def test_handshakes_that_never_finish_do_not_use_up_the_connection_cap(shared_daemon, tls):
    """``[daemon] max_connections`` counted above TLS: a connection closed before its handshake
    finished (a port scan, a load balancer's TCP check) kept its place for good, and after
    ``max_connections`` of them every client was refused until a restart."""
    cert, key = tls
    config = tls_config(cert, key, token=True) + "max_connections = 2\n"
    daemon = shared_daemon(config, env={TOKEN_ENV: TOKEN}, name="tls-capped")
    host, port = daemon.address.rsplit(":", 1)
    for garbage in (b"", b"GET / HTTP/1.1\r\n\r\n", b"\x16\x03\x01\x00") * 3:
        with socket.create_connection((host, int(port)), timeout=5) as probe:
            probe.sendall(garbage)
    time.sleep(0.5)  # their ends reach the daemon
    credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    auth = [("authorization", f"Bearer {TOKEN}")]
    for _ in range(3):  # each call a connection of its own: the places came free
        assert grpcio_status(daemon.address, auth, credentials) == grpc.StatusCode.OK


# --- two Authorization headers: no edge picks one ----------------------------------------------

RIGHT, WRONG = f"Bearer {TOKEN}", f"Bearer {TOKEN}-wrong"


@pytest.mark.parametrize("values", [(RIGHT, WRONG), (WRONG, RIGHT), (RIGHT, RIGHT)])
def test_two_authorization_headers_are_refused_by_every_edge(auth_daemon, values):
    """grpclib read the first copy and the HTTP edge the last, so one request was let in by one
    edge and refused by the other (and a proxy reading the other copy decides otherwise again)."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    headers = [("authorization", value) for value in values]
    with (
        grpc.insecure_channel(auth_daemon.address) as channel,
        pytest.raises(grpc.RpcError) as refused,
    ):
        channel.unary_unary(STATUS)(b"", metadata=headers, timeout=DEADLINE)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "sent more than once" in refused.value.details()

    with httpx.Client(base_url=f"http://{auth_daemon.http_address}", timeout=DEADLINE) as client:
        answer = client.post(CONNECT_STATUS, json={},
                             headers=[("content-type", "application/json"), *headers])  # fmt: skip
    assert answer.status_code == 401
    assert answer.json()["code"] == "unauthenticated"
    assert "once" in answer.json()["message"]

    async def close_reason() -> str:
        uri = f"ws://{auth_daemon.http_address}/ws/runs/run_nope/tap"
        async with connect(uri, additional_headers=headers) as socket:
            try:
                await asyncio.wait_for(socket.recv(), DEADLINE)
            except ConnectionClosed as closed:
                return closed.rcvd.reason if closed.rcvd is not None else "no close frame"
        return "open"

    assert asyncio.run(close_reason()).startswith("unauthenticated")
    assert grpcio_status(auth_daemon.address, headers[:1]) == (  # the daemon serves on
        grpc.StatusCode.OK if values[0] == RIGHT else grpc.StatusCode.UNAUTHENTICATED
    )
