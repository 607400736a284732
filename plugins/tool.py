"""The ``tool`` step type: calls a tool some plugin registered (``register_tools``).

Inputs: ``tool`` (the name) and ``args`` (an object). Tools may touch the world, so the block is
a mutator: its lease is durable before the tool runs. Built-in tools: ``echo``, ``word_count``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from foundry.kernel import Block, BlockContext, BlockError, BlockKind, Tool, hookimpl


class ToolBlock(Block):
    name = "tool"
    kind = BlockKind.MUTATOR
    description = "calls a registered tool: inputs {tool, args}"

    def __init__(self, tools: Mapping[str, Tool]) -> None:
        super().__init__()
        self.tools = dict(tools)

    async def run(self, ctx: BlockContext) -> Any:
        name = ctx.inputs.get("tool")
        tool = self.tools.get(name) if isinstance(name, str) else None
        if tool is None:
            known = ", ".join(sorted(self.tools))
            raise BlockError(f"inputs.tool: unknown tool {name!r} (known: {known})")
        args = ctx.inputs.get("args", {})
        if not isinstance(args, Mapping):
            raise BlockError("inputs.args: expected an object")
        result = tool.fn(args)
        if inspect.isawaitable(result):
            result = await result
        ctx.summary = f"tool {name}"
        return result


def _echo(args: Mapping[str, Any]) -> Any:
    return dict(args)


def _word_count(args: Mapping[str, Any]) -> Any:
    return {"words": len(str(args.get("text", "")).split())}


@hookimpl
def register_tools() -> list[Tool]:
    return [
        Tool("echo", _echo, "returns its arguments"),
        Tool("word_count", _word_count, "counts the words of args.text"),
    ]


@hookimpl
def register_blocks(tools: dict[str, Tool]) -> list[Block]:
    return [ToolBlock(tools)]
