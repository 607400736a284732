"""A small asyncio client for the CLI (the kernel's event loop is trio; a client's need not be).

The CLI talks to a daemon with auth and TLS (README.md, "Authentication and TLS") from the
environment: the bearer token from the variable ``[daemon] token_env`` of ``./foundry.toml``
names (the daemon's own), else ``FOUNDRY_TOKEN``; TLS when ``FOUNDRY_CA`` names a PEM file of
the certificate authority to trust (a self-signed certificate is its own), or with the system's
roots when ``FOUNDRY_TLS=1``.
"""

from __future__ import annotations

import os
import tomllib
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from foundry.kernel.config import DEFAULT_LISTEN, parse_listen
from foundry.kernel.edge.security import TOKEN_RULE, client_ssl_context, token_is_text
from foundry.kernel.errors import ConfigError
from foundry.proto import foundry_api, runtime_api
from grpclib import GRPCError
from grpclib.client import Channel
from grpclib.events import SendRequest, listen
from grpclib.exceptions import StreamTerminatedError
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest

TOKEN_ENV = "FOUNDRY_TOKEN"
CA_ENV = "FOUNDRY_CA"
TLS_ENV = "FOUNDRY_TLS"


def default_address() -> str:
    return os.environ.get("FOUNDRY_ADDR") or DEFAULT_LISTEN


def client_token() -> str | None:
    """The token to send: from the daemon's ``token_env`` variable, else ``FOUNDRY_TOKEN``."""
    for name in (_configured_token_env(), TOKEN_ENV):
        token = os.environ.get(name, "").strip() if name else ""
        if token and not token_is_text(token):  # (never quoted: it is a secret)
            raise ConfigError(f"{name}: the token is no token: {TOKEN_RULE}")
        if token:
            return token
    return None


def _configured_token_env() -> str:
    """``[daemon] token_env`` of ``./foundry.toml``, the file the daemon reads by default; only
    that key is read, so a config the client cannot use does not stop a client command."""
    try:
        daemon = tomllib.loads(Path("foundry.toml").read_text()).get("daemon", {})
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return ""
    name = daemon.get("token_env", "") if isinstance(daemon, dict) else ""
    return name if isinstance(name, str) else ""


def channel_uses_tls() -> bool:
    return bool(os.environ.get(CA_ENV)) or os.environ.get(TLS_ENV, "") not in ("", "0")


def open_channel(address: str) -> Channel:
    """A grpclib channel to ``address`` (``--addr``), with TLS and the bearer token as the
    environment asks."""
    from_env = address == os.environ.get("FOUNDRY_ADDR") and address != DEFAULT_LISTEN
    host, port = parse_listen(address, key="FOUNDRY_ADDR" if from_env else "--addr")
    ca = os.environ.get(CA_ENV, "")
    tls = client_ssl_context(ca or None) if channel_uses_tls() else None
    channel = Channel(host, port, ssl=tls)
    token = client_token()
    if token is not None:
        header = f"Bearer {token}"

        async def authorize(event: SendRequest) -> None:
            event.metadata["authorization"] = header

        listen(channel, SendRequest, authorize)
    checked = False

    async def answering_first(event: SendRequest) -> None:  # before the first call, not at
        nonlocal checked  # connect: a command's bad input file is still said first
        if not checked:
            checked = True
            await answering(channel)
            _ANSWERED.add(channel)

    listen(channel, SendRequest, answering_first)
    return channel


class ConnectionLost(ConnectionError):
    """The daemon answered on this connection, then the connection ended (not one that never
    worked: no TLS hint for it)."""


class CallReset(ConnectionError):
    """The daemon, answering on this connection, reset one call (the gRPC port gives up on a
    reply its client does not read, say)."""


_ANSWERED: weakref.WeakSet[Channel] = weakref.WeakSet()  # channels the daemon has answered on


@asynccontextmanager
async def connected(address: str) -> AsyncIterator[Channel]:
    """:func:`open_channel`, closed after; a connection that cannot be made or is lost is a
    ``ConnectionError`` saying so, for the command's one line (grpclib's own exceptions, and a
    host name IDNA cannot encode, came out as tracebacks)."""
    channel = open_channel(address)
    try:
        yield channel
    except StreamTerminatedError as exc:
        if channel in _ANSWERED and str(exc).startswith("Stream reset"):
            raise CallReset(str(exc)) from None  # this call alone: it gave up on a reply, say
        if channel in _ANSWERED:  # it answered, then went away (killed, say)
            raise ConnectionLost(str(exc)) from None
        # plain text to a TLS port, or a daemon at its cap of connections: it hangs up
        tls = "" if channel_uses_tls() else f"if it serves TLS, set {CA_ENV}; "
        raise ConnectionError(
            f"{exc} before any answer ({tls}or it is at its [daemon] max_connections)"
        ) from None
    except UnicodeError as exc:  # getaddrinfo of a label over 63 characters, say
        if type(exc) is not UnicodeError:  # (text that is not UTF-8, say: main names it)
            raise
        raise ConnectionError(f"not a host name this machine can look up ({exc})") from None
    finally:
        channel.close()


@asynccontextmanager
async def connect(
    address: str,
) -> AsyncIterator[tuple[foundry_api.FoundryStub, runtime_api.RuntimeServiceStub]]:
    async with connected(address) as channel:
        yield foundry_api.FoundryStub(channel), runtime_api.RuntimeServiceStub(channel)


ANSWER_SECONDS = 15.0  # for a daemon to answer its health service


async def answering(channel: Channel) -> None:
    """Fail (ConnectionError) unless the server answers a health check within
    ``ANSWER_SECONDS``: a port that takes the connection and never answers (a hung process, a
    server that is no gRPC one) held a command until Ctrl-C. Any answer will do, an error too
    (the health service needs no token)."""
    try:
        await HealthStub(channel).Check(HealthCheckRequest(), timeout=ANSWER_SECONDS)
    except (TimeoutError, GRPCError) as exc:
        if isinstance(exc, GRPCError) and (exc.message or "").startswith(_NOT_GRPC):
            # an HTTP/2 server's answer that is no gRPC one (a 404 page): not the daemon, where
            # its UNIMPLEMENTED was taken for one, and a call after it "lost the connection"
            raise ConnectionError(f"the server there is no gRPC one ({exc.message})") from None
        if isinstance(exc, GRPCError):  # the server's: a DEADLINE_EXCEEDED too (a 1 µs
            return  # [daemon] body_timeout's was said to be no answer in 15 s, after 0.4 s)
        raise ConnectionError(f"no gRPC answer within {ANSWER_SECONDS:g} s") from None


# grpclib's words for an HTTP response that is no gRPC one (its status, its content type; not a
# missing one: grpclib's own server answers an unknown method, health too, without any)
_NOT_GRPC = ("Received :status", "Invalid content-type")
