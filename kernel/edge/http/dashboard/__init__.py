"""The browser dashboard's static files, served by the HTTP listener at ``/`` (the page) and
``/dashboard/<file>`` (its modules and styles).

Plain HTML, CSS and JavaScript modules shipped as package data: nothing is built at install time
and nothing is fetched from the network at run time. The page is public (it holds no secret and
asks for the token itself); every call it makes goes through the Connect API and the WebSocket
streams, which check the token as for any client.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable, MutableMapping
from functools import cache
from pathlib import Path
from typing import Any

Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

FOLDER = Path(__file__).resolve().parent
PREFIX = "/dashboard/"
TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".svg": b"image/svg+xml",
    ".txt": b"text/plain; charset=utf-8",
}
SAFE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*\.(html|js|css|svg|txt)")
SAFE_HOST = re.compile(r"[A-Za-z0-9.\-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


def is_dashboard_path(path: str) -> bool:
    return path == "/" or path.startswith(PREFIX)


def _file_of(path: str) -> Path | None:
    name = "index.html" if path == "/" else path[len(PREFIX) :]
    if not SAFE_NAME.fullmatch(name) or name == "index.html" and path != "/":
        return None
    file = FOLDER / name
    return file if file.is_file() else None


@cache
def _read(file: Path) -> tuple[bytes, bytes]:
    """The file's bytes and its ETag (files do not change while the daemon runs)."""
    body = file.read_bytes()
    return body, b'"' + hashlib.sha256(body).hexdigest()[:20].encode() + b'"'


def _policy(host: str) -> bytes:
    """``default-src 'self'``; the streams are WebSockets to the same host, which older browsers
    do not count as 'self', so they are named."""
    sockets = f" ws://{host} wss://{host}" if SAFE_HOST.fullmatch(host) else ""
    return (
        "default-src 'self'; connect-src 'self'" + sockets + "; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ).encode()


async def serve(scope: MutableMapping[str, Any], send: Send) -> None:
    """Answer a GET or HEAD for the page or one of its files; 404 for other names under
    ``/dashboard/``, 405 for other methods."""
    headers = {k.decode("latin-1").lower(): v for k, v in scope.get("headers", ())}
    method = scope["method"]
    if method not in ("GET", "HEAD"):
        await _respond(send, 405, [(b"allow", b"GET, HEAD")], b"the dashboard is read with GET\n")
        return
    file = _file_of(scope["path"])
    if file is None:
        await _respond(send, 404, [], b"no such dashboard file\n")
        return
    body, etag = _read(file)
    common = [
        (b"etag", etag),
        # Revalidate every time: a daemon upgrade must not leave a stale module in the cache.
        (b"cache-control", b"no-cache"),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
        (b"content-security-policy", _policy(headers.get("host", b"").decode("latin-1"))),
    ]
    if headers.get("if-none-match") == etag:
        await _respond(send, 304, common, b"")
        return
    common.append((b"content-type", TYPES[file.suffix]))
    await _respond(send, 200, common, body, head=method == "HEAD")


async def _respond(
    send: Send,
    status: int,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    head: bool = False,
) -> None:
    if status >= 400:
        headers = [*headers, (b"content-type", b"text/plain; charset=utf-8")]
    if status != 304:  # a 304 has no body; its length would describe the 200's
        headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body, "more_body": False})
