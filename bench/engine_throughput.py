"""Events per second through the engine, in-process, with every chain durable and traced.

The real actors are wired inside trio as ``foundry.kernel.daemon.serve`` wires them (tap broker,
store on a DuckDB file in a temporary FOUNDRY_HOME, engine), without gRPC. Three observer blocks
make a chain: ``bench_start`` → A emits ``bench_a`` → B emits ``bench_b`` → C (emits nothing).
One root gives 3 events (the root and 2 emitted), 3 block executions and one trace file.

256 producers send Emit messages into the engine's mailbox (each awaits its reply — root durable —
as an RPC handler does, then sends the next), so hundreds of chains are in flight. The clock stops
when the store reports every workflow row committed *and* every trace file is on disk (each poll
looks only for the files not seen yet: listing thousands of files every 5 ms cost as much CPU as
the engine's own work); then, off the clock, the rows (workflows, events, block executions) and
trace files are counted exactly. Reported beside: the rate to the last workflow row committed, and
how long the trace files took after it — the trace writer's file creation, which on this machine's
ext4 costs ~1 ms a file for seconds after thousands were deleted (an earlier benchmark's scratch
directory) and ~40 µs otherwise, so that wait tells a slow disk from a slow engine.
A warm-up run sizes the repetitions to about three seconds each. CPU time (whole process and the
trio thread alone) is reported too: on a shared machine it is steadier than wall-clock rates.
"""

from __future__ import annotations

import os
import resource
import statistics
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import trio
from foundry.kernel.actors.engine.actor import Engine
from foundry.kernel.actors.engine.messages import Emit, EngineMessage
from foundry.kernel.actors.mailbox import ask
from foundry.kernel.actors.store.actor import Store
from foundry.kernel.actors.store.messages import CountRows, StoreMessage
from foundry.kernel.actors.tap.actor import TapBroker
from foundry.kernel.actors.tap.messages import TapMessage
from foundry.kernel.blocks.api import Block, BlockContext, BlockKind, block
from foundry.kernel.blocks.registry import BlockRegistry
from foundry.kernel.config import EngineConfig
from foundry.kernel.core.throttle import Throttle
from foundry.kernel.daemon import tune_collector

from . import Figure, Options, Report, progress, scratch_dir

NAME = "engine_throughput"
TITLE = "Engine throughput: 3-block chains, in-process, traces persisted"

ROOT_TYPE = "bench_start"
# bench_start (root) → A emits bench_a → B emits bench_b → C emits nothing.
EMITTED_PER_CHAIN = 2
BLOCKS_PER_CHAIN = 3
MAILBOX_SIZE = 1_024  # as in kernel/daemon.py
PRODUCERS = 256
SECONDS = 3.0  # one repetition's target length; the warm-up's rate sizes it
QUICK_SECONDS = 0.5
QUICK_CHAINS = 600
MIN_CHAINS = 300
MAX_CHAINS = 60_000
POLL_INTERVAL = 0.005
TIMEOUT = 60.0
EVENTS_TARGET = 20_000.0  # issue 17
EVENTS_AIM = 20_000.0


@block("Bench A", sinks=["bench_start"], kind=BlockKind.OBSERVER)
def _block_a(ctx: BlockContext) -> None:
    ctx.emit("bench_a", {"i": ctx.payload["i"], "step": "a"})


@block("Bench B", sinks=["bench_a"], kind=BlockKind.OBSERVER)
def _block_b(ctx: BlockContext) -> None:
    ctx.emit("bench_b", {"i": ctx.payload["i"], "step": "b"})


@block("Bench C", sinks=["bench_b"], kind=BlockKind.OBSERVER)
def _block_c(ctx: BlockContext) -> str:
    return "done"


BLOCKS: tuple[Block, ...] = (_block_a, _block_b, _block_c)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return usage.ru_utime + usage.ru_stime


async def _until(count: Callable[[], Awaitable[int]], wanted: int) -> None:
    """Poll ``count()`` every POLL_INTERVAL until it reaches ``wanted``."""
    while True:
        if await count() >= wanted:
            return
        await trio.sleep(POLL_INTERVAL)


def _thread_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_THREAD)  # the trio thread: engine, store actor
    return usage.ru_utime + usage.ru_stime


def _count_traces(home: Path) -> int:
    """Trace files on disk (counted once, off the clock)."""
    return sum(1 for _ in home.glob("traces/*/*.json"))


class _TraceFiles:
    """The chains' trace files still missing from disk. Polled every POLL_INTERVAL on a thread
    that competes for the interpreter lock, so a poll looks only for the files not found yet,
    oldest first, and stops at the first one missing (the archivist writes them in commit
    order): listing thousands of files per poll cost as much CPU as the engine's own work."""

    def __init__(self, home: Path, workflow_ids: list[str]) -> None:
        self._traces = home / "traces"
        self._missing = workflow_ids  # in the order their Emits were answered
        self._found = 0

    def count(self) -> int:
        try:
            days = [self._traces / day for day in os.listdir(self._traces)]  # UTC days: 1 or 2
        except FileNotFoundError:  # no file written yet
            return 0
        while self._found < len(self._missing):
            name = f"{self._missing[self._found]}.json"
            if not any(os.path.exists(day / name) for day in days):
                break
            self._found += 1
        return self._found


async def _count_workflows(probe: trio.MemorySendChannel[StoreMessage]) -> int:
    """Workflow rows committed, whatever their state (every root here is a ROOT_TYPE event)."""
    counts = await ask(probe, CountRows)
    return sum(counts.workflows.values())


async def _measure(home: Path, chains: int, producers: int) -> Mapping[str, float]:
    tune_collector()  # as the daemon does
    registry = BlockRegistry(BLOCKS)
    tap_send, tap_receive = trio.open_memory_channel[TapMessage](MAILBOX_SIZE)
    store_send, store_receive = trio.open_memory_channel[StoreMessage](MAILBOX_SIZE)
    engine_send, engine_receive = trio.open_memory_channel[EngineMessage](MAILBOX_SIZE)
    result: dict[str, float] = {}

    async with trio.open_nursery() as nursery:
        await nursery.start(TapBroker(tap_receive, buffer=1_024).run)
        store = Store(home, store_receive, tap_send.clone())
        await nursery.start(store.run)
        engine = Engine(
            registry,
            engine_receive,
            store_send.clone(),
            home=home,
            config=EngineConfig(),
            shutdown_grace=10.0,
        )
        await nursery.start(engine.run)
        probe = store_send.clone()  # the benchmark's own line to the store, for counting rows
        store_send.close()

        next_index = 0
        workflow_ids: list[str] = []  # as their Emits are answered

        async def producer() -> None:
            nonlocal next_index
            while next_index < chains:
                index = next_index
                next_index += 1
                payload = {"i": index}
                answer = await ask(
                    engine_send, lambda r, p=payload: Emit(ROOT_TYPE, "bench", Throttle.FULL, p, r)
                )
                workflow_ids.append(answer.workflow_id)

        cpu_before = _cpu_seconds()
        engine_cpu_before = _thread_cpu_seconds()
        started = time.perf_counter()
        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as producing:
                for _ in range(producers):
                    producing.start_soon(producer)
            emitted = time.perf_counter()
            await _until(lambda: _count_workflows(probe), chains)
            committed = time.perf_counter()
            # Every workflow row is committed; the archivist writes trace files after the
            # journal commit, from a child process: the clock stops once they are all there too.
            files = _TraceFiles(home, workflow_ids)
            await _until(lambda: trio.to_thread.run_sync(files.count), chains)
        finished = time.perf_counter()
        cpu = _cpu_seconds() - cpu_before
        engine_cpu = _thread_cpu_seconds() - engine_cpu_before

        # Outside the measurement: everything the clock claimed is really there.
        counts = await ask(probe, CountRows)
        workflows = counts.workflows.get("completed", 0)
        events, executions = counts.events, counts.block_executions
        traces = await trio.to_thread.run_sync(_count_traces, home)
        expected = (chains, chains * (1 + EMITTED_PER_CHAIN), chains * BLOCKS_PER_CHAIN, chains)
        if (workflows, events, executions, traces) != expected:
            raise AssertionError(
                f"expected (workflows, events, executions, traces) = {expected}, "
                f"found {(workflows, events, executions, traces)}"
            )

        probe.close()
        engine_send.close()
        tap_send.close()

    elapsed = finished - started
    result["elapsed"] = elapsed
    result["emit_phase"] = emitted - started
    result["durable_events_per_s"] = chains * (1 + EMITTED_PER_CHAIN) / (committed - started)
    result["trace_wait_ms"] = (finished - committed) * 1000
    result["events_per_s"] = chains * (1 + EMITTED_PER_CHAIN) / elapsed
    result["chains_per_s"] = chains / elapsed
    result["executions_per_s"] = chains * BLOCKS_PER_CHAIN / elapsed
    result["cpu_us_per_chain"] = cpu / chains * 1e6
    result["cpu_utilisation"] = cpu / elapsed
    result["trio_thread_cpu_us_per_chain"] = engine_cpu / chains * 1e6
    result["events_per_cpu_s"] = chains * (1 + EMITTED_PER_CHAIN) / cpu
    return result


def run_once(chains: int, producers: int = PRODUCERS) -> Mapping[str, float]:
    return trio.run(_measure, scratch_dir() / "home", chains, producers)


def _chains_for(seconds: float, rate: float) -> int:
    """Enough chains for ``seconds`` at ``rate`` chains/s, in hundreds, within sane bounds."""
    return int(min(MAX_CHAINS, max(MIN_CHAINS, round(rate * seconds, -2))))


def run(options: Options) -> Report:
    report = Report(NAME, TITLE)
    # Warm-up (imports, DuckDB, code paths), which also sizes the runs to a few seconds each.
    warmup = run_once(QUICK_CHAINS // 2)
    seconds = QUICK_SECONDS if options.quick else SECONDS
    chains = _chains_for(seconds, warmup["chains_per_s"])
    progress(
        options, f"{NAME} warm-up: {warmup['chains_per_s']:,.0f} chains/s; {chains} chains per run"
    )
    samples: list[Mapping[str, float]] = []
    for rep in range(options.repetitions):
        sample = run_once(chains)
        samples.append(sample)
        progress(
            options,
            f"{NAME} rep {rep + 1}/{options.repetitions}: {chains} chains in "
            f"{sample['elapsed']:.2f} s, {sample['events_per_s']:,.0f} events/s, "
            f"{sample['cpu_us_per_chain']:,.0f} us CPU/chain "
            f"({sample['cpu_utilisation']:.0%} of a core; emits accepted after "
            f"{sample['emit_phase']:.2f} s, trace files all on disk "
            f"{sample['trace_wait_ms']:,.0f} ms after the last commit)",
        )

    def figure(name: str, unit: str, key: str, **extra: Any) -> Figure:
        return Figure(name, unit, [s[key] for s in samples], **extra)

    report.figures = [
        figure("events/s (roots + emitted)", "events/s", "events_per_s", target=EVENTS_TARGET),
        figure("chains/s (durable + traced)", "chains/s", "chains_per_s"),
        figure("events/s to durable", "events/s", "durable_events_per_s",
               note="to the last workflow row committed, before the trace files are all written"),
        figure("wait for trace files after the last commit", "ms", "trace_wait_ms",
               note="the trace writer's file creation (ext4 here: ~1 ms a file for seconds after "
               "thousands were deleted, ~40 µs otherwise)"),
        figure("block executions/s", "execs/s", "executions_per_s"),
        figure("events per CPU-second", "events", "events_per_cpu_s",
               note="events/s if the process had a whole core; less sensitive to a busy machine"),
        figure("CPU per chain, whole process", "us", "cpu_us_per_chain",
               note="lower is better; all threads (trio + store worker thread)"),
        figure("CPU per chain, trio thread", "us", "trio_thread_cpu_us_per_chain",
               note="lower is better; engine, store actor, tap broker, producers"),
    ]  # fmt: skip
    utilisation = statistics.median(s["cpu_utilisation"] for s in samples)
    report.notes.append(
        f"{chains} chains per repetition, {PRODUCERS} concurrent producers, "
        f"{1 + EMITTED_PER_CHAIN} events and {BLOCKS_PER_CHAIN} block executions per chain; "
        f"aim: {EVENTS_AIM:,.0f} events/s. The process used {utilisation:.0%} of one core "
        "(GIL-bound: one core is the ceiling)"
    )
    return report
