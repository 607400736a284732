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

from typing import Any

import httpx
from foundry.kernel import (
    Block,
    BlockContext,
    BlockError,
    BlockKind,
    EgressPolicy,
    guarded_client,
    hookimpl,
    redact_url,
)
from foundry.kernel.config import Config


class HttpBlock(Block):
    name = "http"
    kind = BlockKind.MUTATOR
    description = "one HTTP request: inputs {url, method, headers, json|body}"

    def __init__(self, egress: EgressPolicy | None = None) -> None:
        super().__init__()
        self.egress = egress if egress is not None else EgressPolicy()

    async def run(self, ctx: BlockContext) -> dict[str, Any]:
        url = ctx.inputs.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise BlockError("inputs.url: an http:// or https:// URL is required")
        method = str(ctx.inputs.get("method", "GET")).upper()
        headers = dict(ctx.inputs.get("headers", {}))
        if ctx.traceparent:  # W3C: the callee joins this step attempt's trace
            headers = {k: v for k, v in headers.items() if str(k).lower() != "traceparent"}
            headers["traceparent"] = ctx.traceparent
        request: dict[str, Any] = {"headers": headers}
        if "json" in ctx.inputs:
            request["json"] = ctx.inputs["json"]
        elif "body" in ctx.inputs:
            request["content"] = str(ctx.inputs["body"]).encode()
        timeout = float(ctx.inputs.get("timeout", 30))
        follow = bool(ctx.inputs.get("follow_redirects", False))
        async with guarded_client(self.egress, timeout=timeout, follow_redirects=follow) as client:
            response = await client.request(method, url, **request)
        shown = redact_url(url)
        if response.status_code >= 400 and not ctx.inputs.get("allow_error_status"):
            raise BlockError(f"{method} {shown} answered {response.status_code}")
        ctx.summary = f"{method} {shown} → {response.status_code}"
        return {"status": response.status_code, "headers": dict(response.headers),
                "body": _body(response)}  # fmt: skip


def _body(response: httpx.Response) -> Any:
    if "json" in response.headers.get("content-type", ""):
        try:
            return response.json()
        except ValueError:
            pass
    return response.text


@hookimpl
def register_blocks(config: Config) -> list[Block]:
    return [HttpBlock(EgressPolicy.from_allow(config.http.allow))]
