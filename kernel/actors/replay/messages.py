"""The replay actor's messages: ask for a replay of a finished run, and its result."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from foundry.kernel.actors.mailbox import Reply
from foundry.kernel.core.drift import Drift

MODES = ("full", "step_only", "diff")


@dataclass(frozen=True, slots=True)
class ReplayedStep:
    step_id: str
    snapshot: dict[str, Any]
    drift: Drift
    live: bool


@dataclass(frozen=True, slots=True)
class ReplayResult:
    run_id: str
    all_within_tolerance: bool
    strategy: str  # live | mocked
    steps: tuple[ReplayedStep, ...]


@dataclass(frozen=True, slots=True)
class Replay:
    run_id: str
    mode: str  # one of MODES
    reply: Reply[ReplayResult]


ReplayMessage = Replay
