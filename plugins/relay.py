"""The ``relay`` block type: a block declared purely in foundry.toml.

It re-emits its trigger as ``emits``, with the trigger's payload merged with the ``set`` table::

    [[blocks]]
    name = "Escalate"
    type = "relay"
    sinks = ["alert_raised"]
    when = { severity = "high" }
    emits = "page_oncall"
    set = { team = "sre" }
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from foundry.kernel import (
    Block,
    BlockContext,
    BlockKind,
    common_options,
    event_type_fault,
    hookimpl,
    json_table,
    matches,
    payload_filter,
)


class RelayBlock(Block):
    def __init__(
        self, *, emits: str, extra: Mapping[str, Any], when: Mapping[str, Any], **options: Any
    ) -> None:
        super().__init__(**options)
        self.emits, self.extra, self.when = emits, dict(extra), dict(when)

    def accepts(self, payload: Mapping[str, Any]) -> bool:
        return matches(self.when, payload)

    async def run(self, ctx: BlockContext) -> dict[str, Any]:
        payload = {**ctx.payload, **self.extra}
        ctx.emit(self.emits, payload)
        ctx.summary = f"relayed as {self.emits}"
        return payload

    async def audit(self, ctx: BlockContext) -> None:
        """What it would emit (a relay has no side effect): recorded, not delivered."""
        ctx.emit(self.emits, {**ctx.payload, **self.extra})

    async def simulate(self, ctx: BlockContext) -> None:
        ctx.emit(self.emits, {**ctx.payload, **self.extra, "simulated": True})


def relay_block_from_table(table: Mapping[str, Any]) -> RelayBlock:
    options = common_options(table, {"emits", "set"}, default_kind=BlockKind.OBSERVER)
    emits = table.get("emits")
    if not isinstance(emits, str) or not emits:
        raise ValueError("emits: a non-empty event type is required")
    if "\0" in emits:  # every run would fail to emit it (no environment can hold one)
        raise ValueError("emits: the event type holds a NUL character")
    if emits and event_type_fault(emits):  # too long, say: every run would fail to emit it
        raise ValueError(f"emits: the event type {event_type_fault(emits)}")
    extra = table.get("set", {})
    if not isinstance(extra, Mapping):
        raise ValueError("set: expected a table")
    return RelayBlock(
        emits=emits, extra=json_table(extra, "set"), when=payload_filter(table), **options
    )


@hookimpl
def register_block_types() -> dict[str, Any]:
    return {"relay": relay_block_from_table}
