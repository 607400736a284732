"""kernel/edge/security.py: the token check, what counts as loopback, and the one-line refusals
(the daemon-level behaviour is in tests/e2e/test_auth_tls.py)."""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path

import pytest
from foundry.kernel.config import Config
from foundry.kernel.edge import security
from foundry.kernel.errors import ConfigError

from tests.e2e.test_auth_tls import make_certificate

TOKEN = "tok-123"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (f"Bearer {TOKEN}", True),
        (f"bearer {TOKEN}", True),  # the scheme is case-insensitive (RFC 9110)
        (f"  Bearer   {TOKEN}  ", True),
        (None, False),
        ("", False),
        (TOKEN, False),
        (f"Basic {TOKEN}", False),
        (f"Bearer {TOKEN.upper()}", False),
        (f"Bearer {TOKEN}4", False),
        ("Bearer ", False),
        ("Bearer tök", False),  # non-ASCII is compared as bytes, not refused with an error
    ],
)
def test_token_matches_only_the_bearer_token(header, expected):
    assert security.token_matches(header, TOKEN) is expected


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True),
        ("localhost", True), ("LOCALHOST", True),
        ("0.0.0.0", False), ("::", False), ("", False), ("10.0.0.5", False),
        ("192.168.1.2", False), ("example.com", False), ("localhost.example.com", False),
    ],
)  # fmt: skip
def test_what_counts_as_loopback(host, loopback):
    assert security.is_loopback(host) is loopback


def test_an_open_bind_without_a_token_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"^f.toml: \[http\].listen: 0.0.0.0 is not a loopback"):
        security.refuse_open_bind("0.0.0.0", "f.toml: [http].listen", None)
    security.refuse_open_bind("0.0.0.0", "f.toml: [http].listen", "a-token")
    security.refuse_open_bind("127.0.0.1", "f.toml: [http].listen", None)


@dataclass(frozen=True)
class Keys:
    token_env: str = ""
    tls_cert: str = ""
    tls_key: str = ""


def test_load_token_reads_the_named_variable(monkeypatch):
    assert security.load_token(Keys()) is None
    monkeypatch.setenv("FOUNDRY_TEST_SECURITY_TOKEN", f" {TOKEN}\n")
    assert security.load_token(Keys(token_env="FOUNDRY_TEST_SECURITY_TOKEN")) == TOKEN


def test_load_token_refuses_a_token_longer_than_a_client_can_send(monkeypatch):
    """70,000 characters: the daemon started, and no client got past its header limits."""
    monkeypatch.setenv("FOUNDRY_TEST_SECURITY_TOKEN", "a" * 70_000)
    with pytest.raises(ConfigError, match="70,000 characters: a token is at most 4,096"):
        security.load_token(Keys(token_env="FOUNDRY_TEST_SECURITY_TOKEN"))
    monkeypatch.setenv("FOUNDRY_TEST_SECURITY_TOKEN", "a" * 4096)
    assert security.load_token(Keys(token_env="FOUNDRY_TEST_SECURITY_TOKEN")) == "a" * 4096


@pytest.mark.parametrize("value", [None, "", "   "])
def test_load_token_refuses_a_named_variable_that_is_unset_or_empty(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("FOUNDRY_TEST_SECURITY_TOKEN", raising=False)
    else:
        monkeypatch.setenv("FOUNDRY_TEST_SECURITY_TOKEN", value)
    with pytest.raises(ConfigError, match="names FOUNDRY_TEST_SECURITY_TOKEN, which is unset"):
        security.load_token(Keys(token_env="FOUNDRY_TEST_SECURITY_TOKEN"))


@pytest.mark.parametrize("value", ["sécret-SECRET", "two SECRET", "SECRET\tx", "SECRET\x07"])
def test_a_token_no_header_can_carry_is_refused_and_never_quoted(monkeypatch, value):
    # no gRPC client could send a non-ASCII one; the CLI printed it in a 60-line traceback
    from foundry.kernel.edge.grpc import client

    monkeypatch.setenv("FOUNDRY_TEST_SECURITY_TOKEN", value)
    with pytest.raises(ConfigError, match="whose value is no token") as refused:
        security.load_token(Keys(token_env="FOUNDRY_TEST_SECURITY_TOKEN"))
    assert "SECRET" not in str(refused.value)
    monkeypatch.chdir(Path(__file__).parent)  # no ./foundry.toml naming another variable
    monkeypatch.setenv("FOUNDRY_TOKEN", value)
    with pytest.raises(ConfigError, match="FOUNDRY_TOKEN: the token is no token") as refused:
        client.client_token()
    assert "SECRET" not in str(refused.value)


def test_a_certificate_file_without_a_certificate_is_refused_with_a_reason(tmp_path):
    cert, key = make_certificate(tmp_path)
    empty = tmp_path / "empty.pem"
    empty.write_text("")
    for wrong in (key, empty):  # it said "(None)"
        with pytest.raises(ConfigError, match="tls_cert: cannot load") as refused:
            security.server_ssl_context(str(wrong), str(key))
        assert "(None)" not in str(refused.value)


def test_the_server_context_is_tls_12_plus_with_h2_first(tmp_path):
    cert, key = make_certificate(tmp_path)
    context = security.server_ssl_context(str(cert), str(key))
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert security.ALPN == ["h2", "http/1.1"]


def test_a_key_that_does_not_match_is_refused_naming_both_files(tmp_path):
    cert, _ = make_certificate(tmp_path, "one")
    _, other = make_certificate(tmp_path, "two")
    with pytest.raises(ConfigError, match=r"^\[daemon\].tls_key: .*two-key.pem does not match"):
        security.server_ssl_context(str(cert), str(other))


def test_an_unreadable_key_is_refused(tmp_path):
    cert, _ = make_certificate(tmp_path)
    (tmp_path / "dir.pem").mkdir()  # unreadable even as root, which reads any file
    with pytest.raises(ConfigError, match=r"^\[daemon\].tls_key: .*dir.pem: not a regular file"):
        security.server_ssl_context(str(cert), str(tmp_path / "dir.pem"))


def test_a_fifo_as_a_key_certificate_or_ca_is_refused_not_waited_on(tmp_path):
    """open() of a FIFO waits for a writer: config check, serve and every CLI command with it
    as FOUNDRY_CA hung for good (a hunt)."""
    cert, key = make_certificate(tmp_path)
    fifo = tmp_path / "fifo.pem"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match=r"^\[daemon\].tls_key: .*fifo.pem: not a regular file"):
        security.server_ssl_context(str(cert), str(fifo))
    with pytest.raises(ConfigError, match=r"^\[daemon\].tls_cert: .*fifo.pem: not a regular"):
        security.server_ssl_context(str(fifo), str(key))
    with pytest.raises(ConfigError, match=r"^FOUNDRY_CA: .*fifo.pem: not a regular file"):
        security.client_ssl_context(str(fifo))


def test_the_grpc_listener_offers_h2_alone(tmp_path):
    """Both listeners shared one context offering h2 and http/1.1: a client asking http/1.1 of
    the gRPC port got it, then HTTP/2 frames (curl: "Received HTTP/0.9"; a hunt)."""
    cert, key = make_certificate(tmp_path)
    given = Config.from_mapping({"daemon": {"tls_cert": str(cert), "tls_key": str(key)}})
    edge = security.edge_security(given, "127.0.0.1", "[daemon].listen")
    assert edge.grpc_ssl_context is not None
    assert edge.ssl_context is not None
    assert edge.grpc_ssl_context is not edge.ssl_context


def test_the_config_keys_resolve_paths_and_come_in_pairs(tmp_path):
    config = Config.from_mapping(
        {"daemon": {"token_env": "T", "tls_cert": "c.pem", "tls_key": "/abs/k.pem"}},
        base=tmp_path,
    )
    assert (config.token_env, config.tls_cert, config.tls_key) == (
        "T", str(tmp_path / "c.pem"), "/abs/k.pem",
    )  # fmt: skip
    with pytest.raises(ConfigError, match="tls_cert and tls_key go together"):
        Config.from_mapping({"daemon": {"tls_key": "k.pem"}})
    with pytest.raises(ConfigError, match=r"\[daemon\].token_env: expected a string"):
        Config.from_mapping({"daemon": {"token_env": 5}})


def test_edge_security_checks_everything_at_once(tmp_path, monkeypatch):
    cert, key = make_certificate(tmp_path)
    monkeypatch.setenv("FOUNDRY_TEST_SECURITY_TOKEN", TOKEN)
    keys = Keys("FOUNDRY_TEST_SECURITY_TOKEN", str(cert), str(key))
    checked = security.edge_security(keys, "0.0.0.0", "[daemon].listen")
    assert checked.token == TOKEN
    assert isinstance(checked.ssl_context, ssl.SSLContext)
    assert security.edge_security(Keys(), "127.0.0.1", "[daemon].listen") == (
        security.EdgeSecurity(None, None)
    )


def test_a_tls_key_every_user_can_read_is_one_warning_line(tmp_path, caplog):
    """Accepted silently at 0644 (a hunt); a group's read (certbot's ssl-cert) is not warned."""
    cert, key = make_certificate(tmp_path)
    given = Config.from_mapping({"daemon": {"tls_cert": str(cert), "tls_key": str(key)}})
    key.chmod(0o640)
    security.edge_security(given, "127.0.0.1", "[daemon].listen")
    assert "readable by every user" not in caplog.text
    key.chmod(0o644)
    security.edge_security(given, "127.0.0.1", "[daemon].listen")
    assert f"[daemon].tls_key {key} is readable by every user (mode 0644)" in caplog.text
