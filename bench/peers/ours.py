"""Our side of ``make bench-peers``, measured with the project's own benchmarks' machinery:
``bench/run_overhead.py``'s in-process session (the real actors in trio, no gRPC) for the chains
and the fan-out, and ``bench/time_travel.py``'s client against a real daemon over gRPC for the
pause → patch → resume cycle and the branch. Every figure is in milliseconds."""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from .. import time_travel
from ..fleet_daemon import Daemon, daemon
from ..run_overhead import DEFAULT_CONCURRENCY, Shape, _measure, chain_dag, fan_dag


@dataclass(frozen=True)
class Sizes:
    """The scenarios' sizes, the same on both sides (passed to the LangGraph side as JSON)."""

    chains: tuple[int, ...] = (100, 1_000)
    fan: int = 200
    mutators: tuple[int, ...] = (100, 1_000)
    pause: int = 30
    fork: int = 1_000


QUICK = Sizes(chains=(100, 200), fan=50, mutators=(50, 100), pause=10, fork=200)


def shapes(sizes: Sizes) -> list[Shape]:
    """run_overhead's shapes: chains of observers (``noop``), the 1 → W → 1 fan of observers at
    the default concurrency, chains of mutators (``noop_mut``: each waits for its durable lease)."""
    chains = [Shape(f"chain{n}", f"{n}-step chain", chain_dag(n, "noop"), n) for n in sizes.chains]
    width = sizes.fan
    fan = Shape(f"fan{width}", f"1 → {width} → 1 fan", fan_dag(width, "noop"), width + 2)
    mutators = [
        Shape(f"mut{n}", f"{n}-step mutator chain", chain_dag(n, "noop_mut"), n)
        for n in sizes.mutators
    ]
    return [*chains, fan, *mutators]


def measure_in_process(sizes: Sizes) -> dict[str, float]:
    """Per step (per task for the fan) of each shape, in one fresh session (its own home)."""
    measured = _measure(DEFAULT_CONCURRENCY, shapes(sizes))
    return {key: result["ms_per_step"] for key, result in measured.items()}


@contextmanager
def time_travel_daemon() -> Iterator[Daemon]:
    """time_travel's daemon (built-in blocks only), warmed up as time_travel warms it."""
    with daemon(time_travel.CONFIG, label="foundry-peers") as server:
        asyncio.run(time_travel._pause_patch_resume(server.address, 3))
        asyncio.run(time_travel._branch(server.address, 20))
        yield server


def measure_time_travel(server: Daemon, sizes: Sizes) -> dict[str, float]:
    """The cycle's median over ``sizes.pause`` cycles; the branch from the middle step:
    CreateBranchRun sent → the branch's run_succeeded received (``fork``), and the RPC alone."""
    cycle = asyncio.run(time_travel._pause_patch_resume(server.address, sizes.pause))
    branch = asyncio.run(time_travel._branch(server.address, sizes.fork))
    return {
        "cycle": statistics.median(cycle.cycles_ms),
        "fork": branch.branch_s * 1000,
        "fork_rpc": branch.rpc_ms,
    }
