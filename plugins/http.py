"""The ``http`` step type: one HTTP request.

Inputs: ``url`` (required), ``method`` (GET), ``headers``, ``json`` or ``body``, ``timeout``
(seconds, 30), ``allow_error_status`` (false: a 4xx/5xx answer fails the step). Output:
``{status, headers, body}``; a JSON body is parsed. A mutator: requests may change the world.
"""

from __future__ import annotations

from typing import Any

import httpx
from foundry.kernel import Block, BlockContext, BlockError, BlockKind, hookimpl


class HttpBlock(Block):
    name = "http"
    kind = BlockKind.MUTATOR
    description = "one HTTP request: inputs {url, method, headers, json|body}"

    async def run(self, ctx: BlockContext) -> dict[str, Any]:
        url = ctx.inputs.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise BlockError("inputs.url: an http:// or https:// URL is required")
        method = str(ctx.inputs.get("method", "GET")).upper()
        request: dict[str, Any] = {"headers": dict(ctx.inputs.get("headers", {}))}
        if "json" in ctx.inputs:
            request["json"] = ctx.inputs["json"]
        elif "body" in ctx.inputs:
            request["content"] = str(ctx.inputs["body"]).encode()
        timeout = float(ctx.inputs.get("timeout", 30))
        async with httpx.AsyncClient(timeout=timeout) as client:
            response = await client.request(method, url, **request)
        if response.status_code >= 400 and not ctx.inputs.get("allow_error_status"):
            raise BlockError(f"{method} {url} answered {response.status_code}")
        ctx.summary = f"{method} {url} → {response.status_code}"
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
def register_blocks() -> list[Block]:
    return [HttpBlock()]
