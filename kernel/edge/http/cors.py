"""Which browser origins may call the daemon: its own pages, and ``[http] cors_origins``.

An entry is ``*`` (any origin), or ``scheme://host`` with an optional ``:port`` or ``:*`` (any
port, or none). The default list is empty: only the daemon's own pages (its dashboard) may call —
:func:`own_origins`, the listener's scheme and port under its host's name and, for a loopback
listener, every loopback name. An allowed page on another port of this machine (any local dev
server, notebook or app, and whatever script it runs) could otherwise drive the daemon through
the browser: submit runs, cancel them, export files.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from foundry.kernel.edge.security import is_loopback

DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class _Pattern:
    scheme: str
    host: str
    port: int | None  # None: any port


class OriginPolicy:
    def __init__(self, entries: tuple[str, ...], own: tuple[str, ...] = ()) -> None:
        """``entries``: ``[http] cors_origins``; ``own``: the daemon's own origins (exact)."""
        self.any = "*" in entries
        self._patterns = tuple(parse_origin_entry(e) for e in (*entries, *own) if e != "*")

    def allows(self, origin: str) -> bool:
        if self.any:
            return True
        parsed = _parse_origin(origin)
        if parsed is None:
            return False
        scheme, host, port = parsed
        return any(
            p.scheme == scheme and p.host == host and p.port in (None, port) for p in self._patterns
        )


def parse_origin_entry(entry: str) -> _Pattern:
    """An entry of ``[http] cors_origins``; ValueError says what is wrong with it."""
    if entry == "*":
        return _Pattern("*", "*", None)
    any_port = entry.endswith(":*")
    parsed = _parse_origin(entry[:-2] if any_port else entry)
    if parsed is None:
        raise ValueError(
            "expected an origin such as http://localhost:5173, https://app.example.com, "
            "http://localhost:* or *"
        )
    scheme, host, port = parsed
    return _Pattern(scheme, host, None if any_port else port)


def _parse_origin(origin: str) -> tuple[str, str, int] | None:
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return parts.scheme, host.lower(), port or DEFAULT_PORTS[parts.scheme]


WILDCARD_HOSTS = ("0.0.0.0", "[::]", "")  # a listener on every address


def own_origins(host: str, port: int, *, secure: bool) -> tuple[str, ...]:
    """The origins of the pages the daemon's HTTP listener on ``host:port`` serves itself: that
    host's (an IPv6 literal in brackets), and every loopback name's when it listens on one or
    on every address. Other names a listener on every address is reached by cannot be known:
    those go in ``[http] cors_origins``."""
    scheme = "https" if secure else "http"
    wildcard = host in WILDCARD_HOSTS
    names = [] if wildcard else [host.lower()]
    if wildcard or is_loopback(host):
        names += ("localhost", "127.0.0.1", "[::1]")  # the machine's own browser uses any
    return tuple(dict.fromkeys(f"{scheme}://{name}:{port}" for name in names))
