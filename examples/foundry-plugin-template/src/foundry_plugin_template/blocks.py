"""Two blocks: an observer that tallies words, and a mutator that saves the tally."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from foundry.kernel import Block, BlockContext, BlockKind, block


def _has_text(payload: Mapping[str, Any]) -> bool:
    return isinstance(payload.get("text"), str)


@block("Tally Words", sinks=["text_submitted"], kind=BlockKind.OBSERVER, accepts=_has_text)
def tally_words(ctx: BlockContext) -> dict[str, Any]:
    """Observer: counts the words of ``text`` and emits ``words_tallied``.

    As a DAG step (``"type": "Tally Words"``) its inputs are the step's ``inputs`` and its
    return value is the step's output; what it emits there is dropped (see the README).
    """
    words = str(ctx.payload.get("text", "")).split()
    tally = {"words": len(words), "longest": max(words, key=len, default="")}
    ctx.summary = f"{tally['words']} words"
    ctx.emit("words_tallied", tally)
    return tally


class SaveTally(Block):
    """Mutator: writes the tally to ``tally.json`` in its artifact folder (a side effect, so
    throttles restrain it) and emits ``tally_saved``."""

    name = "Save Tally"
    kind = BlockKind.MUTATOR
    sinks = ("words_tallied",)
    timeout = 10

    async def run(self, ctx: BlockContext) -> dict[str, Any]:
        # on a worker thread, and listed in the trace's audit_artifacts
        path = await ctx.write_artifact("tally.json", json.dumps(dict(ctx.payload), sort_keys=True))
        ctx.summary = f"saved {ctx.payload.get('words')} words"
        ctx.emit("tally_saved", {"path": str(path)})
        return {"path": str(path)}

    async def audit(self, ctx: BlockContext) -> None:
        """AUDIT_ONLY: no side effects; what it emits is recorded, not delivered."""
        ctx.summary = f"would save {ctx.payload.get('words')} words"
        ctx.emit("tally_saved", {"path": None})

    async def simulate(self, ctx: BlockContext) -> None:
        """DRY_RUN: the block is skipped; this offers the event the chain would have seen."""
        ctx.emit("tally_saved", {"path": None, "simulated": True})
