"""The ``transform`` step type: pure JSON reshaping, no side effects.

Its inputs (with references resolved) are the output, unless they hold exactly one operation:
``{"value": X}`` → X; ``{"merge": [obj, ...]}`` → the objects merged left to right;
``{"concat": [list or string, ...]}`` → joined; ``{"pick": {"from": obj, "keys": [...]}}`` → those
keys of ``from``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from foundry.kernel import Block, BlockContext, BlockError, BlockKind, hookimpl


def transform(inputs: Mapping[str, Any]) -> Any:
    if len(inputs) != 1:
        return dict(inputs)
    ((op, arg),) = inputs.items()
    if op == "value":
        return arg
    if op == "merge":
        if not isinstance(arg, list) or not all(isinstance(x, Mapping) for x in arg):
            raise BlockError("inputs.merge: expected a list of objects")
        merged: dict[str, Any] = {}
        for item in arg:
            merged.update(item)
        return merged
    if op == "concat":
        if isinstance(arg, list) and all(isinstance(x, str) for x in arg):
            return "".join(arg)
        if isinstance(arg, list) and all(isinstance(x, list) for x in arg):
            return [v for part in arg for v in part]
        raise BlockError("inputs.concat: expected a list of strings or a list of lists")
    if op == "pick":
        keys = arg.get("keys", []) if isinstance(arg, Mapping) else None
        if (
            not isinstance(arg, Mapping)
            or not isinstance(arg.get("from"), Mapping)
            or not isinstance(keys, list)
            or not all(isinstance(k, str) for k in keys)
        ):
            # ("ab" picked a and b; 5 was a TypeError)
            raise BlockError("inputs.pick: expected {from: object, keys: [strings]}")
        return {k: arg["from"][k] for k in keys if k in arg["from"]}
    return dict(inputs)


class TransformBlock(Block):
    name = "transform"
    kind = BlockKind.OBSERVER
    description = "pure JSON reshaping: value, merge, concat, pick"

    async def run(self, ctx: BlockContext) -> Any:
        return transform(ctx.inputs)


@hookimpl
def register_blocks() -> list[Block]:
    return [TransformBlock()]
