"""Run one block in isolation, the way the kernel would — for plugin authors' tests.

async def test_compose_greeting(tmp_path):
    result = await run_block(compose_greeting, {"name": "Ada"}, artifact_dir=tmp_path)
    assert result.delivered == [Emission("greeting_composed", {...})]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from foundry.kernel.blocks.api import Block, BlockContext, BlockKind, Emission
from foundry.kernel.blocks.execution import Outcome, execute
from foundry.kernel.config import EngineConfig
from foundry.kernel.core.emissions import RawEmission, stored_emissions
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


def _stored(outcome: Outcome, engine: EngineConfig) -> tuple[Outcome, list[Emission]]:
    """The outcome and its emissions as the kernel stores and delivers them (the payload each
    took at emit(), read back from its JSON), or — where the engine would refuse them (see
    ``core.emissions``) — a failed outcome naming why, and no emissions."""
    raw = [RawEmission(e.event_type, e.payload, e.taken_json()) for e in outcome.emissions]
    stored, refusal = stored_emissions(
        raw, room=engine.max_chain_events - 1, chain_limit=engine.max_chain_events,
        max_event_bytes=engine.max_event_bytes,
    )  # fmt: skip
    if refusal:
        failed = replace(outcome, success=False, error=refusal, summary=refusal, emissions=())
        return failed, []
    return outcome, [Emission(e.event_type, e.payload) for e in stored]


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
    engine: EngineConfig | None = None,
) -> BlockRun:
    """Run ``block`` on ``payload`` under ``throttle`` (timeouts and retries included); what it
    emits is checked as the engine checks it, under ``engine``'s limits (``[engine]``)."""
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
    outcome, emitted = _stored(outcome, engine or EngineConfig())
    return BlockRun(
        outcome=outcome,
        state=decision.state if outcome.success else "failed",
        delivered=emitted if decision.deliver else [],
        withheld=[] if decision.deliver else emitted,
    )
