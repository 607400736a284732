"""Which browser origins may call the daemon (``[http] cors_origins``).

An entry is ``*`` (any origin), or ``scheme://host`` with an optional ``:port`` or ``:*`` (any
port, or none). The default (``config.DEFAULT_CORS_ORIGINS``) allows pages served from this
machine only.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class _Pattern:
    scheme: str
    host: str
    port: int | None  # None: any port


class OriginPolicy:
    def __init__(self, entries: tuple[str, ...]) -> None:
        self.any = "*" in entries
        self._patterns = tuple(parse_origin_entry(e) for e in entries if e != "*")

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
