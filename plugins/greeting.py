"""The greeting pair: the smallest complete workflow.

``greet_requested`` → *Compose Greeting* (observer) emits ``greeting_composed`` →
*Deliver Greeting* (mutator) writes the greeting to its artifact folder and emits
``greeting_delivered``.
"""

from __future__ import annotations

import json
from typing import Any

from foundry.kernel import Block, BlockContext, BlockKind, block, hookimpl


@block("Compose Greeting", sinks=["greet_requested"], kind=BlockKind.OBSERVER)
def compose_greeting(ctx: BlockContext) -> dict[str, Any]:
    """Compose a greeting for ``payload.name``."""
    name = str(ctx.payload.get("name") or "world")
    greeting = f"Hello, {name}!"
    ctx.summary = f"composed {quoted(greeting)}"
    ctx.emit("greeting_composed", {"name": name, "greeting": greeting})
    return {"greeting": greeting}


class DeliverGreeting(Block):
    """Deliver a composed greeting: writes it to ``greeting.txt`` in the artifact folder."""

    name = "Deliver Greeting"
    kind = BlockKind.MUTATOR
    sinks = ("greeting_composed",)

    async def run(self, ctx: BlockContext) -> dict[str, Any]:
        greeting = str(ctx.payload.get("greeting", ""))
        path = await ctx.write_artifact("greeting.txt", greeting + "\n")
        ctx.summary = f"delivered {quoted(greeting)}"
        ctx.emit("greeting_delivered", {"greeting": greeting, "delivered_to": str(path)})
        return {"delivered_to": str(path)}

    async def audit(self, ctx: BlockContext) -> None:
        greeting = str(ctx.payload.get("greeting", ""))
        ctx.summary = f"would deliver {quoted(greeting)}"
        ctx.emit("greeting_delivered", {"greeting": greeting, "delivered_to": None})

    async def simulate(self, ctx: BlockContext) -> None:
        greeting = str(ctx.payload.get("greeting", ""))
        ctx.emit("greeting_delivered", {"greeting": greeting, "simulated": True})


@hookimpl
def register_blocks() -> list[Block]:
    return [compose_greeting, DeliverGreeting()]


def quoted(text: str) -> str:
    """A value in a summary as JSON (``"Hello, Ada!"``), not as a Python repr."""
    return json.dumps(text, ensure_ascii=False)
