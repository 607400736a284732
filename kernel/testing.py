"""Run one block in isolation, the way the kernel would — for plugin authors' tests.

async def test_compose_greeting(tmp_path):
    result = await run_block(compose_greeting, {"name": "Ada"}, artifact_dir=tmp_path)
    assert result.delivered == [Emission("greeting_composed", {...})]
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from foundry.kernel.blocks.api import Block, BlockContext, BlockKind, Emission
from foundry.kernel.blocks.execution import Outcome, execute
from foundry.kernel.core.throttle import Throttle, decide


@dataclass(frozen=True)
class BlockRun:
    outcome: Outcome
    state: str  # completed | skipped | failed, as the trace would record it
    delivered: list[Emission]  # what downstream blocks would receive
    withheld: list[Emission]  # recorded but not delivered (AUDIT_ONLY mutators)

    @property
    def output(self) -> Any:
        return self.outcome.output


def _as_stored(emission: Emission) -> Emission:
    """An emission as the kernel stores and delivers it: what emit() took, when it took its
    JSON (a payload holding more than plain values), as that JSON reads back."""
    taken = emission.taken_json()
    return emission if taken is None else Emission(emission.event_type, json.loads(taken))


async def run_block(
    block: Block,
    payload: Mapping[str, Any] | None = None,
    *,
    artifact_dir: Path,
    throttle: Throttle = Throttle.FULL,
    event_type: str = "",
    seed: int = 0,
    model: str = "",
    env: Mapping[str, str] | None = None,
) -> BlockRun:
    """Run ``block`` on ``payload`` under ``throttle`` (timeouts and retries included)."""
    decision = decide(throttle, block.kind is BlockKind.MUTATOR)
    outcome = await execute(
        block,
        decision.action,
        lambda attempt: BlockContext(
            payload=dict(payload or {}),
            artifact_dir=artifact_dir,
            throttle=throttle,
            event_type=event_type or (block.sinks[0] if block.sinks else ""),
            seed=seed,
            model=model,
            env=dict(env or {}),
            attempt=attempt,
        ),  # fmt: skip
    )
    emitted = [_as_stored(e) for e in outcome.emissions]
    return BlockRun(
        outcome=outcome,
        state=decision.state if outcome.success else "failed",
        delivered=emitted if decision.deliver else [],
        withheld=[] if decision.deliver else emitted,
    )
