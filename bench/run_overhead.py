"""Per-step overhead of the durable scheduler, in-process, with no-op steps.

The real actors are wired inside trio as ``foundry.kernel.daemon.serve`` wires them (tap broker,
store on a DuckDB file in a temporary FOUNDRY_HOME, scheduler), without gRPC. The registry holds
two blocks defined here: ``noop`` (an observer: runs ahead of the commit of its lease) and
``noop_mut`` (a mutator: starts only once its lease is durable — at least one group commit per
step on a chain, the worst case). Both return a tiny JSON object at once, so what is measured is the
scheduler: leasing, resolving inputs, recording, group-committing and publishing each event.

Shapes: a 1,000-step chain (each step references the previous step's output) of observers, the
same shape with 200 mutators (each step waits for a commit: 200 keep it to seconds), and a
1 → 200 → 1 fan-out/fan-in of observers (202 steps) at the default ``[scheduler]
max_concurrent_steps`` (16) and at 64. Each repetition uses a fresh FOUNDRY_HOME and warms up
first (a 100-step observer chain and a 20-step mutator chain).

The clock starts before SubmitRun and stops when the run's ``run_succeeded`` event reaches a
subscriber of the tap broker (topic ``runs``, every key, subscribed before submitting). The store
publishes an event only after its group commit, and run_succeeded is the run's last event: at
that instant every event of the run is durable. Afterwards GetRun checks every step succeeded.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from foundry.kernel.actors.mailbox import ask
from foundry.kernel.actors.scheduler.actor import Scheduler
from foundry.kernel.actors.scheduler.messages import GetRun, RunView, SchedulerMessage, SubmitRun
from foundry.kernel.actors.store.actor import Store
from foundry.kernel.actors.store.journal import PreparedAppend
from foundry.kernel.actors.store.journal_writer import WriterProcess, hold_writer_lock
from foundry.kernel.actors.store.messages import GetStats, StoreMessage
from foundry.kernel.actors.tap.actor import TapBroker, receive_batch
from foundry.kernel.actors.tap.messages import Overflow, Subscribe, TapMessage
from foundry.kernel.blocks.api import Block, BlockContext, BlockKind, block
from foundry.kernel.blocks.registry import BlockRegistry
from foundry.kernel.config import SchedulerConfig
from foundry.kernel.core.runs import RunEventRecord
from foundry.kernel.daemon import tune_collector

from . import Figure, Options, Report, fsync_samples_ms, progress, scratch_dir
from .fleet_daemon import ceiling_met

NAME = "run_overhead"
TITLE = "Run overhead: per-step cost of the durable scheduler (no-op steps, in-process)"

MAILBOX_SIZE = 1_024  # as in kernel/daemon.py
TAP_BUFFER = 10_000  # as [tap] subscriber_buffer's default
CHAIN_STEPS = 1_000
QUICK_CHAIN_STEPS = 200
# A mutator chain commits at least once per step (DuckDB: milliseconds per commit), so it is
# shorter, to keep the benchmark well under a minute; its per-step figure is what matters.
MUTATOR_CHAIN_STEPS = 200
QUICK_MUTATOR_CHAIN_STEPS = 50
FAN_WIDTH = 200
QUICK_FAN_WIDTH = 50
WARMUP_STEPS = 100
MUTATOR_WARMUP_STEPS = 20
DEFAULT_CONCURRENCY = SchedulerConfig().max_concurrent_steps  # 16
WIDE_CONCURRENCY = 64
TIMEOUT = 120.0
TARGET_MS = 1.0  # per step, on the chain
AIM_MS = 0.3
# The mutator chain (issue 17): at most this per step, and at most this many fsyncs' worth.
MUTATOR_TARGET_MS = 0.5
MUTATOR_FSYNCS = 3.0
# The pause between a mutator chain's fdatasyncs: the rest of a step (~0.2-0.3 ms of the trio
# thread's work). The fsync probe is also run at this pace, as well as back to back.
CHAIN_PACE_SECONDS = 0.00025


@block("noop", kind=BlockKind.OBSERVER, timeout=None)
def _noop(ctx: BlockContext) -> dict[str, Any]:
    return {"n": ctx.inputs.get("n", 0)}


@block("noop_mut", kind=BlockKind.MUTATOR, timeout=None)
def _noop_mut(ctx: BlockContext) -> dict[str, Any]:
    return {"n": ctx.inputs.get("n", 0)}


BLOCKS: tuple[Block, ...] = (_noop, _noop_mut)


# --- DAG shapes ---------------------------------------------------------------------------------


def chain_dag(steps: int, step_type: str) -> str:
    """``s0000 → s0001 → …``; each step's input references the previous step's output."""
    dag = [{"id": "s0000", "type": step_type, "inputs": {"n": 0}}]
    for i in range(1, steps):
        previous = f"s{i - 1:04d}"
        dag.append(
            {
                "id": f"s{i:04d}",
                "type": step_type,
                "depends_on": [previous],
                "inputs": {"n": i, "prev": f"${{steps.{previous}.output.n}}"},
            }
        )
    return json.dumps({"steps": dag})


def fan_dag(width: int, step_type: str) -> str:
    """``root`` → ``w000`` … ``w{width-1}`` → ``join`` (which depends on every branch)."""
    dag: list[dict[str, Any]] = [{"id": "root", "type": step_type, "inputs": {"n": 0}}]
    branches = [f"w{i:03d}" for i in range(width)]
    for i, branch in enumerate(branches):
        dag.append(
            {
                "id": branch,
                "type": step_type,
                "inputs": {"n": i, "root": "${steps.root.output.n}"},
            }
        )
    dag.append({"id": "join", "type": step_type, "depends_on": branches, "inputs": {"n": -1}})
    return json.dumps({"steps": dag})


@dataclass(frozen=True)
class Shape:
    key: str
    label: str
    dag_json: str
    steps: int
    concurrency: int = DEFAULT_CONCURRENCY
    busy: bool = False  # run beside a task that keeps the trio thread busy (:func:`_keep_busy`)


# The rest of a loaded daemon, in the busy shape: a task that computes this long, then yields
# (a checkpoint: every other task gets its turn), again and again — the trio thread never idles.
BUSY_SLICE_SECONDS = 300e-6


async def _keep_busy(done: trio.Event) -> None:
    while not done.is_set():
        until = time.perf_counter() + BUSY_SLICE_SECONDS
        while time.perf_counter() < until:
            pass
        await trio.lowlevel.checkpoint()


# --- measuring ----------------------------------------------------------------------------------


def _cpu_seconds(who: int = resource.RUSAGE_SELF) -> float:
    """CPU seconds of the process (every thread), or of the calling thread (RUSAGE_THREAD)."""
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


async def _run_to_success(
    scheduler: trio.MemorySendChannel[SchedulerMessage],
    runs: trio.MemoryReceiveChannel[Any],
    dag_json: str,
) -> tuple[str, float, int]:
    """Submit, wait for the run's durable run_succeeded; (run id, seconds, events seen)."""
    events: dict[str, int] = {}
    finished: dict[str, float] = {}
    started = time.perf_counter()
    run_id = await ask(scheduler, lambda r: SubmitRun(dag_json, {}, 7, {}, (), "", r))
    while run_id not in finished:
        batch = await receive_batch(runs)
        if not batch:
            raise RuntimeError("the tap broker ended the subscription")
        for item in batch:
            if isinstance(item, Overflow):
                raise RuntimeError("the benchmark's own subscription overflowed")
            assert isinstance(item, RunEventRecord)
            events[item.run_id] = events.get(item.run_id, 0) + 1
            if item.kind == "run_failed":
                raise RuntimeError(f"run {item.run_id} failed: {item.payload.get('error')}")
            if item.kind == "run_succeeded":
                finished[item.run_id] = time.perf_counter()
    return run_id, finished[run_id] - started, events[run_id]


# A chain step's group commit (its completion and the next lease) journals ~530 bytes.
FLOOR_RECORD_BYTES = 530
FLOOR_WARMUP = 50


def durable_round_trip_ms(directory: Path, steps: int) -> float:
    r"""The floor of a mutator step in this architecture, ms per step: a trio task hands a
    record's bytes to the journal's writer process (``journal_writer.py``, as the store does
    with a lease), which writes them into space written ahead and calls ``fdatasync``, and waits
    for its answer; ``steps`` times in a row. No scheduler, store actor, event or encoding: what
    any mutator chain on this stack waits for, at the least, per step (DESIGN.md: the trio
    thread never blocks on the disk)."""
    record = b"r" * FLOOR_RECORD_BYTES
    path = directory / "floor-journal"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.pwrite(fd, bytes((steps + FLOOR_WARMUP) * FLOOR_RECORD_BYTES), 0)
        os.fsync(fd)

        async def chain() -> float:
            lock = hold_writer_lock(directory)
            process = await WriterProcess.start(lock)
            try:
                started = 0.0
                for index in range(FLOOR_WARMUP + steps):
                    if index == FLOOR_WARMUP:
                        started = time.perf_counter()
                    offset = index * FLOOR_RECORD_BYTES
                    if not process.send(PreparedAppend(index + 1, offset, b"", record, fd, 1)):
                        raise RuntimeError("the writer process refused a floor record")
                    await process.acknowledged()
                return (time.perf_counter() - started) * 1000 / steps
            finally:
                await process.close()
                os.close(lock)

        return trio.run(chain)
    finally:
        os.close(fd)
        path.unlink()


async def _session(
    home: Path, concurrency: int, shapes: Sequence[Shape]
) -> dict[str, dict[str, float]]:
    """Start the actors once, warm up, then run each shape once, one after the other."""
    config = SchedulerConfig(max_concurrent_steps=concurrency)
    tap_send, tap_receive = trio.open_memory_channel[TapMessage](MAILBOX_SIZE)
    store_send, store_receive = trio.open_memory_channel[StoreMessage](MAILBOX_SIZE)
    scheduler_send, scheduler_receive = trio.open_memory_channel[SchedulerMessage](MAILBOX_SIZE)
    results: dict[str, dict[str, float]] = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(TapBroker(tap_receive, buffer=TAP_BUFFER).run)
        await nursery.start(Store(home, store_receive, tap_send.clone()).run)
        probe = store_send.clone()  # the benchmark's own line to the store, for its commit count
        scheduler = Scheduler(
            BlockRegistry(BLOCKS),
            scheduler_receive,
            store_send.clone(),
            tap_send.clone(),
            home=home,
            config=config,
            shutdown_grace=10.0,
        )
        await nursery.start(scheduler.run)
        store_send.close()
        runs = await ask(tap_send, lambda r: Subscribe("runs", None, r))
        with trio.fail_after(TIMEOUT):
            # Warm-up: imports, DuckDB's first inserts, every code path of both block kinds.
            await _run_to_success(scheduler_send, runs, chain_dag(WARMUP_STEPS, "noop"))
            await _run_to_success(scheduler_send, runs, chain_dag(MUTATOR_WARMUP_STEPS, "noop_mut"))
            for shape in shapes:
                commits_before = (await ask(probe, GetStats)).commits
                cpu_before = _cpu_seconds()
                trio_before = _cpu_seconds(resource.RUSAGE_THREAD)
                done = trio.Event()
                if shape.busy:
                    nursery.start_soon(_keep_busy, done)
                try:
                    run_id, seconds, events = await _run_to_success(
                        scheduler_send, runs, shape.dag_json
                    )
                finally:
                    done.set()
                cpu = _cpu_seconds() - cpu_before
                trio_cpu = _cpu_seconds(resource.RUSAGE_THREAD) - trio_before
                commits = (await ask(probe, GetStats)).commits - commits_before
                view: RunView = await ask(scheduler_send, lambda r, i=run_id: GetRun(i, r))
                statuses = {s.status for s in view.steps}
                if view.status != "SUCCEEDED" or statuses != {"succeeded"}:
                    raise AssertionError(f"{shape.key}: run {view.status}, steps {statuses}")
                if len(view.steps) != shape.steps or events != 2 * shape.steps + 3:
                    raise AssertionError(
                        f"{shape.key}: {len(view.steps)} steps and {events} events seen; "
                        f"expected {shape.steps} and {2 * shape.steps + 3}"
                    )
                results[shape.key] = {
                    "seconds": seconds,
                    "ms_per_step": seconds * 1000 / shape.steps,
                    "cpu_ms_per_step": cpu * 1000 / shape.steps,
                    "trio_cpu_ms_per_step": trio_cpu * 1000 / shape.steps,
                    "commits": commits,
                    "events_per_commit": events / max(commits, 1),
                }
        runs.close()
        probe.close()
        scheduler_send.close()
        tap_send.close()
    return results


def _measure(concurrency: int, shapes: Sequence[Shape]) -> dict[str, dict[str, float]]:
    return trio.run(_session, scratch_dir() / "home", concurrency, shapes)


def _shapes(quick: bool) -> tuple[list[Shape], list[Shape]]:
    chain = QUICK_CHAIN_STEPS if quick else CHAIN_STEPS
    mutators = QUICK_MUTATOR_CHAIN_STEPS if quick else MUTATOR_CHAIN_STEPS
    width = QUICK_FAN_WIDTH if quick else FAN_WIDTH
    fan = f"1 → {width} → 1 fan of observers"
    default = [
        Shape("chain", f"{chain}-step chain of observers", chain_dag(chain, "noop"), chain),
        Shape(
            "chain_mut",
            f"{mutators}-step chain of mutators (each awaits its durable lease)",
            chain_dag(mutators, "noop_mut"),
            mutators,
        ),
        Shape(
            "chain_mut_busy",
            f"the same chain of mutators, the trio thread kept busy by another task (it computes "
            f"{BUSY_SLICE_SECONDS * 1e6:.0f} µs, yields, again: a loaded daemon)",
            chain_dag(mutators, "noop_mut"),
            mutators,
            busy=True,
        ),
        Shape("fan", f"{fan}, {DEFAULT_CONCURRENCY} slots", fan_dag(width, "noop"), width + 2),
    ]
    wide = [
        Shape(
            "fan64",
            f"{fan}, {WIDE_CONCURRENCY} slots",
            fan_dag(width, "noop"),
            width + 2,
            WIDE_CONCURRENCY,
        )
    ]
    return default, wide


def run(options: Options) -> Report:
    report = Report(NAME, TITLE)
    tune_collector()  # as the daemon does (run alone, this benchmark kept Python's defaults)
    default, wide = _shapes(options.quick)
    shapes = {s.key: s for s in [*default, *wide]}
    samples: dict[str, list[Mapping[str, float]]] = {key: [] for key in shapes}
    fsyncs: list[float] = []
    paced: list[float] = []
    floors: list[float] = []
    for rep in range(options.repetitions):
        # A fresh FOUNDRY_HOME per repetition; the 64-slot scheduler is a session of its own.
        measured = {**_measure(DEFAULT_CONCURRENCY, default), **_measure(WIDE_CONCURRENCY, wide)}
        fsyncs.append(statistics.median(fsync_samples_ms(scratch_dir())))
        paced.append(statistics.median(fsync_samples_ms(scratch_dir(), pause=CHAIN_PACE_SECONDS)))
        floors.append(durable_round_trip_ms(scratch_dir(), shapes["chain_mut"].steps))
        for key, sample in measured.items():
            samples[key].append(sample)
        progress(
            options,
            f"{NAME} rep {rep + 1}/{options.repetitions}: "
            + ", ".join(
                f"{key} {s['seconds'] * 1000:,.0f} ms ({s['ms_per_step']:.3f} ms/step, "
                f"{s['commits']:.0f} commits)"
                for key, s in measured.items()
            ),
        )

    for key, shape in shapes.items():
        runs = samples[key]
        commits = statistics.median(r["commits"] for r in runs)
        per_commit = statistics.median(r["events_per_commit"] for r in runs)
        cpu = statistics.median(r["cpu_ms_per_step"] for r in runs)
        trio_cpu = statistics.median(r["trio_cpu_ms_per_step"] for r in runs)
        report.figures.append(
            Figure(
                f"{key}: total",
                "ms",
                [r["seconds"] * 1000 for r in runs],
                note=f"{shape.label}: submit → durable run_succeeded",
            )
        )
        report.figures.append(
            Figure(
                f"{key}: per step",
                "ms",
                [r["ms_per_step"] for r in runs],
                ceiling={"chain": TARGET_MS, "chain_mut": MUTATOR_TARGET_MS}.get(key),
                note=(
                    f"CPU per step: {trio_cpu:.2f} ms trio thread (scheduler, store actor, tap"
                    f"{', the busy task' if shape.busy else ''}), {cpu:.2f} ms all threads "
                    f"(+ DuckDB); {commits:.0f} group commits of {per_commit:.1f} events"
                ),
            )
        )
    report.figures.append(
        Figure(
            "fsync (4 KiB append + fdatasync)",
            "ms",
            fsyncs,
            note="this machine's floor for a durable write, measured in the same run",
        )
    )
    per_fsync = [
        r["ms_per_step"] / fsync for r, fsync in zip(samples["chain_mut"], fsyncs, strict=True)
    ]
    report.figures.append(
        Figure(
            "chain_mut: per step / fsync",
            "x",
            per_fsync,
            ceiling=MUTATOR_FSYNCS,
            note="each mutator step waits for its lease's journal append (one fdatasync)",
        )
    )
    report.figures.append(
        Figure(
            "fsync at a chain's pace",
            "ms",
            paced,
            note=(
                f"the same probe with {CHAIN_PACE_SECONDS * 1000:g} ms between one fdatasync and "
                "the next, as on a mutator chain (this machine's disk answers a flush that "
                "follows another at once faster)"
            ),
        )
    )
    report.figures.append(
        Figure(
            "chain_mut: per step / fsync at its pace",
            "x",
            [r["ms_per_step"] / p for r, p in zip(samples["chain_mut"], paced, strict=True)],
            note="the same ratio against the fdatasync a chain's pace gets",
        )
    )
    report.figures.append(
        Figure(
            "durable step floor",
            "ms",
            floors,
            note=(
                "per step: a trio task hands ~530 bytes to the journal's writer process, which "
                "writes and fdatasyncs them, and waits for its answer (what a mutator step waits "
                "for at the least on this stack)"
            ),
        )
    )
    report.figures.append(
        Figure(
            "durable step floor / fsync",
            "x",
            [floor / fsync for floor, fsync in zip(floors, fsyncs, strict=True)],
            note="the round trip's share: the part of the 3x budget nothing but it uses",
        )
    )
    report.figures.append(
        Figure(
            "chain_mut: per step / floor",
            "x",
            [
                r["ms_per_step"] / floor
                for r, floor in zip(samples["chain_mut"], floors, strict=True)
            ],
            note="the scheduler's, store's and tap's share of a mutator step, on top of the floor",
        )
    )
    chain = report.figure("chain: per step")
    mutators = report.figure("chain_mut: per step")
    mutator_commits = statistics.median(r["commits"] for r in samples["chain_mut"])
    report.notes.append(
        f"target <= {TARGET_MS:g} ms per step on the chain (aim {AIM_MS:g} ms): "
        f"{ceiling_met(chain, TARGET_MS)}, {chain.median:.2f} ms; aim "
        f"{ceiling_met(chain, AIM_MS)}. The mutator chain ({mutators.median:.2f} ms per step; "
        f"target <= {MUTATOR_TARGET_MS:g} ms and <= {MUTATOR_FSYNCS:g} fsyncs) waits for a group "
        f"commit before each step: {mutator_commits / shapes['chain_mut'].steps:.1f} commits per "
        "step, so the journal's fdatasync is its floor (2 per step when a step's completion "
        "commits alone, before the next lease is appended)"
    )
    report.notes.append(
        "a run of N steps writes 2N + 3 events (submitted, started, leased + completed per "
        "step, succeeded); observers run ahead of their lease's commit"
    )
    return report
