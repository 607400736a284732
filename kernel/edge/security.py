"""Bearer-token auth and TLS for both listeners (README.md, "Authentication and TLS").

Everything here is checked once at start and fails with one line (``ConfigError``, exit 2):
a token variable that is named but empty, a non-loopback bind without a token, a certificate or
key that is missing, unreadable or does not match.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import ssl
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from foundry.kernel.errors import ConfigError

log = logging.getLogger("foundry.daemon")

ALPN = ["h2", "http/1.1"]  # the HTTP listener's
GRPC_ALPN = ["h2"]  # the gRPC listener's: it agreed to http/1.1, then spoke HTTP/2 (a hunt)
LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


class SecurityConfig(Protocol):
    """The ``[daemon]`` keys this module reads (``foundry.kernel.config.Config``)."""

    @property
    def token_env(self) -> str: ...


def token_matches(header_value: str | None, token: str) -> bool:
    """Whether an ``authorization`` header value is ``Bearer <token>`` (constant-time compare)."""
    if header_value is None:
        return False
    scheme, _, presented = header_value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(presented.strip().encode(), token.encode())


def sole_value(values: Sequence[str]) -> str | None:
    """The one value of a credential header; None when there is none — or more than one: edges
    and the proxies in front of them differ in which copy they read (grpclib the first, an ASGI
    dict the last), so two copies authenticate nobody, on every edge alike."""
    return values[0] if len(values) == 1 else None


def credential(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """An HTTP request's one ``Authorization`` value (:func:`sole_value`), of its raw headers."""
    return sole_value([v.decode("latin-1") for k, v in headers if k == b"authorization"])


def load_token(config: SecurityConfig) -> str | None:
    """The token from the variable ``[daemon] token_env`` names; None when no variable is named.
    A named variable that is unset or empty is refused: the operator asked for auth."""
    name = config.token_env
    if not name:
        return None
    token = os.environ.get(name, "").strip()
    if not token:
        raise ConfigError(
            f"[daemon].token_env names {name}, which is unset or empty: set it to the token"
        )
    if not token_is_text(token):  # (never quoted: it is a secret)
        raise ConfigError(f"[daemon].token_env names {name}, whose value is no token: "
                          f"{TOKEN_RULE}")  # fmt: skip
    if len(token) > MAX_TOKEN_CHARS:  # past what the edges take in headers: no client got in
        raise ConfigError(f"[daemon].token_env names {name}, whose value is {len(token):,} "
                          f"characters: a token is at most {MAX_TOKEN_CHARS:,}")  # fmt: skip
    return token


TOKEN_RULE = "printable ASCII without spaces (what a gRPC header can carry)"
MAX_TOKEN_CHARS = 4096  # a JWT is ~1-2 KB; gRPC takes 64 KiB of metadata, HTTP 16 KiB of headers


def token_is_text(token: str) -> bool:
    """Whether ``token`` can travel in an ``authorization`` header of every edge: a non-ASCII
    one no gRPC client could send (and the CLI printed it in a traceback)."""
    return token.isascii() and token.isprintable() and " " not in token


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address; anything else (a wildcard, a name) is open."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def refuse_open_bind(host: str, key: str, token: str | None) -> None:
    """Refuse to listen beyond this machine without a token (``key`` names the config key)."""
    if token is None and not is_loopback(host):
        raise ConfigError(
            f"{key}: {host or '*'} is not a loopback address; set [daemon].token_env "
            "(a bearer token) before listening beyond this machine"
        )


def server_ssl_context(cert: str, key: str, alpn: Sequence[str] = ALPN) -> ssl.SSLContext:
    """TLS 1.2+ with ALPN ``alpn``, from PEM files; one-line errors for a missing or
    unreadable file and for a key that does not match the certificate."""
    for name, path in (("tls_cert", cert), ("tls_key", key)):
        _check_readable(name, path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(list(alpn))
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        reason = (exc.reason or str(exc)).upper()
        if "KEY_VALUES_MISMATCH" in reason:
            raise ConfigError(f"[daemon].tls_key: {key} does not match {cert}") from None
        raise ConfigError(
            f"[daemon].tls_cert: cannot load {cert} with key {key} as PEM "
            f"({exc.reason or exc.strerror or exc})"
        ) from None
    return context


def client_ssl_context(ca: str | None, *, source: str = "FOUNDRY_CA") -> ssl.SSLContext:
    """A client context trusting ``ca`` (a PEM file; ``source`` names where it was given), else
    the system's roots; ALPN h2."""
    if ca:
        _check_readable(source, ca)
    try:
        context = ssl.create_default_context(cafile=ca or None)
    except ssl.SSLError as exc:
        raise ConfigError(f"{source}: {ca}: not a PEM certificate ({exc.reason})") from None
    context.set_alpn_protocols(["h2"])
    return context


def _warn_if_anyone_reads(key: str) -> None:
    """One line when the TLS key is readable by every user (a group, as certbot's ``ssl-cert``
    gives, is the operator's choice): the daemon serves on, as a web server does."""
    try:
        mode = stat.S_IMODE(os.stat(key).st_mode)
    except OSError:
        return
    if mode & stat.S_IROTH:
        log.warning("[daemon].tls_key %s is readable by every user (mode %04o): chmod o-r it",
                    key, mode)  # fmt: skip


def _check_readable(name: str, path: str) -> None:
    try:
        # (not blocking: a FIFO's open waits for a writer, and held the start for good)
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            if not stat.S_ISREG(os.fstat(descriptor).st_mode):
                raise ConfigError(f"{_key(name)}: {path}: not a regular file")
            os.read(descriptor, 1)
        finally:
            os.close(descriptor)
    except FileNotFoundError:
        raise ConfigError(f"{_key(name)}: {path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{_key(name)}: {path}: cannot read: {exc.strerror}") from None


def _key(name: str) -> str:
    return f"[daemon].{name}" if name.islower() else name  # a config key, or an env variable


@dataclass(frozen=True)
class EdgeSecurity:
    """What both listeners enforce: the bearer token (None: no auth) and the TLS context."""

    token: str | None = None
    ssl_context: ssl.SSLContext | None = None  # the HTTP listener's
    grpc_ssl_context: ssl.SSLContext | None = None  # the gRPC listener's (ALPN h2 alone)


class DaemonSecurityConfig(SecurityConfig, Protocol):
    @property
    def tls_cert(self) -> str: ...

    @property
    def tls_key(self) -> str: ...


def edge_security(
    config: DaemonSecurityConfig, grpc_host: str, key: str, source: str = ""
) -> EdgeSecurity:
    """Checked at start, before anything listens: the token variable, the gRPC listener's
    address (``key`` names it for the error), the certificate and key. A refusal names
    ``source`` (the config file), as every other setting's does."""
    try:
        token = load_token(config)
        tls = grpc_tls = None
        if config.tls_cert:
            tls = server_ssl_context(config.tls_cert, config.tls_key)
            grpc_tls = server_ssl_context(config.tls_cert, config.tls_key, GRPC_ALPN)
            _warn_if_anyone_reads(config.tls_key)
    except ConfigError as exc:
        said = str(exc)
        raise ConfigError(
            said if not source or said.startswith(source) else f"{source}: {said}"
        ) from None
    refuse_open_bind(grpc_host, key, token)  # (``key`` says where: a file's key, or --listen)
    return EdgeSecurity(token, tls, grpc_tls)
