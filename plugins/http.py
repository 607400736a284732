"""The ``http`` step type: one HTTP request.

Inputs: ``url`` (required), ``method`` (GET), ``headers``, ``json`` or ``body``, ``timeout``
(seconds, 30), ``allow_error_status`` (false: a 4xx/5xx answer fails the step),
``follow_redirects`` (false). Output: ``{status, headers, body}``; a JSON body is parsed. A
mutator: requests may change the world.

Requests follow the egress policy (kernel/egress.py, ``[http] allow``): a URL — or a redirect
hop — to a loopback, private, link-local or metadata address fails the step before anything is
sent. Messages and summaries show URLs without their query string.
"""

from __future__ import annotations

import codecs
import json
import re
from typing import Any

import httpx
import trio
from foundry.kernel import (
    Block,
    BlockContext,
    BlockError,
    BlockKind,
    EgressPolicy,
    guarded_client,
    hookimpl,
    payload_number,
    redact_url,
    request_bounded,
)
from foundry.kernel.config import Config, SchedulerConfig


class HttpBlock(Block):
    name = "http"
    kind = BlockKind.MUTATOR
    description = "one HTTP request: inputs {url, method, headers, json|body}"

    def __init__(
        self,
        egress: EgressPolicy | None = None,
        max_body_bytes: int = SchedulerConfig.max_step_bytes,
    ) -> None:
        super().__init__()
        self.egress = egress if egress is not None else EgressPolicy()
        self.max_body_bytes = max_body_bytes  # more cannot be a step's output anyway

    async def run(self, ctx: BlockContext) -> dict[str, Any]:
        url = ctx.inputs.get("url")
        # a scheme is case-insensitive (RFC 3986): HTTP://… is an http URL, as the egress check
        # (which lowercases it) reads it
        if not isinstance(url, str) or not url[:8].lower().startswith(("http://", "https://")):
            raise BlockError("inputs.url: an http:// or https:// URL is required")
        method = ctx.inputs.get("method", "GET")
        if not isinstance(method, str) or not _METHOD.fullmatch(method):  # (5 went on the wire)
            raise BlockError("inputs.method: expected an HTTP method such as GET or POST")
        method = method.upper()
        headers = _headers(ctx.inputs.get("headers", {}))
        if ctx.traceparent:  # W3C: the callee joins this step attempt's trace
            headers = {k: v for k, v in headers.items() if str(k).lower() != "traceparent"}
            headers["traceparent"] = ctx.traceparent
        request: dict[str, Any] = {"headers": headers}
        if "json" in ctx.inputs:
            request["json"] = ctx.inputs["json"]
        elif "body" in ctx.inputs:
            body = ctx.inputs["body"]
            if not isinstance(body, str):  # ({"a": 1} went as its Python repr)
                raise BlockError("inputs.body: expected a string (send JSON with inputs.json)")
            request["content"] = body.encode()
        timeout = _seconds(ctx.inputs.get("timeout", 30))
        follow = _flag(ctx.inputs, "follow_redirects")
        # the whole request within the timeout (httpx's bounds each read: a server sending a
        # byte a second held the step until the block's own limit)
        with trio.move_on_after(timeout) as waited:
            async with guarded_client(self.egress, timeout=timeout) as client:
                response, content = await request_bounded(
                    client, method, url, self.max_body_bytes, follow_redirects=follow, **request
                )
        if waited.cancelled_caught:
            raise BlockError(f"{method} {redact_url(url)} took more than inputs.timeout "
                             f"({timeout:g} s)")  # fmt: skip
        shown = redact_url(url)
        if response.status_code >= 400 and not _flag(ctx.inputs, "allow_error_status"):
            raise BlockError(f"{method} {shown} answered {response.status_code}")
        ctx.summary = f"{method} {shown} → {response.status_code}"
        # (up to max_step_bytes of it decoded and parsed: off the daemon's loop)
        body = await trio.to_thread.run_sync(_body, response.headers, response.encoding, content)
        return {"status": response.status_code, "headers": dict(response.headers), "body": body}


def _seconds(value: Any) -> float:
    """``inputs.timeout``: seconds, more than 0 and at most a day (NaN, -1 and "abc" failed
    with Python's or httpx's words)."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or not 0 < value <= 86_400:  # (NaN fails the comparison)
        raise BlockError(f"inputs.timeout: expected seconds, more than 0 and at most 86400, "
                         f"got {value!r:.40}")  # fmt: skip
    return float(value)


def _flag(inputs: Any, name: str) -> bool:
    """A true/false input (the string "false" was read as true)."""
    value = inputs.get(name, False)
    if not isinstance(value, bool):
        raise BlockError(f"inputs.{name}: expected true or false, got {value!r:.40}")
    return value


def _headers(given: Any) -> dict[str, str]:
    """The step's headers, checked before anything is sent: httpx quoted a value it refused
    (a line break, another control character, a space at an end) in its error — a bearer
    token in the step's error and the log. The request's framing and its host are the
    daemon's: a run's Content-Length beside Transfer-Encoding smuggled a second request to a
    path the allow-list refused, and its Host reached another virtual host."""
    if not isinstance(given, dict):
        raise BlockError("inputs.headers: an object of header names and values is expected")
    for name, value in given.items():
        if not _TOKEN.fullmatch(str(name)):
            raise BlockError(f"inputs.headers: {str(name)[:64]!r} is not a header name")
        if str(name).lower() in _DAEMONS:
            raise BlockError(f"inputs.headers.{name}: set by the daemon (the request's framing "
                             "and the URL's host), not by a step")  # fmt: skip
        if not isinstance(value, str) or not _VALUE.fullmatch(value):
            raise BlockError(f"inputs.headers.{name}: a value is printable ASCII, without line "
                             "breaks, other control characters or spaces at its ends (the value "
                             "is not shown)")  # fmt: skip
    return dict(given)


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}")  # RFC 9110's token
# RFC 9110's field-value (obs-text aside): visible characters, spaces and tabs between them
_VALUE = re.compile(r"(?:[\x21-\x7e](?:[\t\x20-\x7e]*[\x21-\x7e])?)?")
_DAEMONS = frozenset({
    "host", "content-length", "transfer-encoding", "connection", "te", "upgrade", "keep-alive",
    "proxy-connection", "trailer", "expect",
})  # fmt: skip


def _body(headers: httpx.Headers, encoding: str | None, content: bytes) -> Any:
    """The response's body as the step's output: JSON the daemon stores, as the shell block
    reads stdout (``NaN``, ``1e400``: text; Python's reader took them and the step failed,
    its output "not JSON"), else text in its charset when that is a text encoding made for
    it, else UTF-8 (``rot13`` and ``hex`` failed the step with Python's words, ``idna`` with
    its error handling's, and ``punycode``, quadratic, held the daemon's loop for minutes)."""
    text = content.decode(_charset(encoding, content), errors="replace")
    if "json" in headers.get("content-type", ""):
        try:
            value = json.loads(text, parse_int=payload_number, parse_float=payload_number)
            json.dumps(value, allow_nan=False, ensure_ascii=False).encode()
        except (ValueError, OverflowError, RecursionError):  # (nested ~1,000 levels deep)
            return text
        return value
    return text


def _charset(encoding: str | None, content: bytes) -> str:
    """The body's byte-order mark's, as a browser sniffs it (json.loads of the bytes did: a
    UTF-8 BOM before JSON was read as JSON), else ``encoding`` when it names a charset of the
    web's (the WHATWG Encoding Standard's families: Unicode, ISO 8859, the Windows and Mac code
    pages, KOI8, the CJK ones), else UTF-8, as a browser falls back."""
    if content.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if content.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"  # (which reads the mark, and drops it)
    try:
        name = codecs.lookup(encoding or "utf-8").name
    except LookupError:
        return "utf-8"
    web = name in _WEB_CHARSETS or name.startswith(("iso8859-", "cp", "mac-", "koi8-"))
    return name if web else "utf-8"


_WEB_CHARSETS = frozenset({
    "utf-8", "utf-16", "utf-16-le", "utf-16-be", "ascii", "latin-1", "gbk", "gb18030", "big5",
    "big5hkscs", "gb2312", "euc_jp", "iso2022_jp", "shift_jis", "euc_kr", "tis-620",
})  # fmt: skip


@hookimpl
def register_blocks(config: Config) -> list[Block]:
    return [HttpBlock(EgressPolicy.from_allow(config.http.allow), config.scheduler.max_step_bytes)]


_METHOD = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,32}")  # an HTTP token (RFC 9110)
