"""Attestations: what signing costs the daemon, per attestation and per step of a run.

In process, the real actors wired as ``open_kernel`` wires them (tap broker, store on a DuckDB
file, attestor with a fresh key pair, scheduler), without gRPC. Two figures:

- **sign + store per attestation**: the daemon's CPU (every thread, and its signing process)
  per attestation, from the difference between a 1,000-step chain of no-op observers
  (``bench.run_overhead``'s) run with ``[attest] enabled = true`` and the same chain with
  attestation off, in the same process, divided by the attestations made (a step attestation
  per step, plus the run's). It includes everything attestation adds: a notice's job (trio
  thread), drafting and signing the statement (the signing process), its announcement (the
  attestation id a step's ``step_completed`` carries; the run's ``attested`` event), the
  attestation row in the group commit (journal, then DuckDB). Also reported: the
  signing process's share, and a step's statement + Ed25519 signature alone
  (``drafting.draft_batch``, what the signing process does per attestation), in a loop.
- **per-step overhead**: what attestation adds to the 1,000-step run benchmark
  (``bench.run_overhead``) as that benchmark measures a run: submit → the durable
  ``run_succeeded`` reaching a tap subscriber, enabled ÷ disabled − 1. Both variants alternate
  within one run of the benchmark (on, off, then off, on: ABBA), on one store (so DuckDB's
  growth and its checkpoints, which attestation rows hasten, fall on both). Reported beside it,
  **to every attestation readable**: the same ratio to the moment ``GetAttestations`` of the
  run's attestation answers (every step attestation signed, committed and in DuckDB: the
  attestor signs after the facts, so this trails ``run_succeeded`` by its last batch); the
  disabled run ends with the same catch-up of DuckDB (``LoadRunAttestations`` of the run), else
  its rows would be left for DuckDB to take in during the next (enabled) run. And the **trio
  thread's CPU** a step, off, and what attestation adds to it (on − off, each run up to every
  attestation readable, so the attestor's whole work): the daemon's one loop, which the
  scheduler, the store, the tap and the attestor share.

The note gives a 90% bootstrap interval of the median overhead over the run's pairs
(``bench.median_interval``) and whether it lies under the target, over it or across it. It speaks
for that run: on this 2-core host, runs a minute apart can differ by more than one run's interval
(the host's speed drifts), so compare several runs.
"""

from __future__ import annotations

import os
import resource
import statistics
import time
from pathlib import Path
from typing import Any

import trio
from foundry.kernel.actors.attestor import keys
from foundry.kernel.actors.attestor.actor import BATCH, Attestor
from foundry.kernel.actors.attestor.drafting import draft_batch
from foundry.kernel.actors.attestor.messages import AttestorMessage, GetAttestations
from foundry.kernel.actors.attestor.signing_process import signer
from foundry.kernel.actors.mailbox import ask
from foundry.kernel.actors.scheduler.actor import Scheduler
from foundry.kernel.actors.scheduler.messages import SchedulerMessage, SubmitRun
from foundry.kernel.actors.store.actor import Store
from foundry.kernel.actors.store.messages import LoadRunAttestations, StoreMessage
from foundry.kernel.actors.tap.actor import TapBroker, receive_batch
from foundry.kernel.actors.tap.messages import Subscribe, TapMessage
from foundry.kernel.blocks.registry import BlockRegistry
from foundry.kernel.config import SchedulerConfig
from foundry.kernel.core.attest import key_id
from foundry.kernel.core.attest_records import SPOOL, announced, run_attestation_id
from foundry.kernel.core.runs import RunEventRecord
from foundry.kernel.daemon import tune_collector

from . import (
    Figure,
    Options,
    Report,
    against_ceiling,
    median_interval,
    progress,
    scratch_dir,
)
from .run_overhead import BLOCKS, chain_dag

NAME = "attest"
TITLE = "Attestations: sign + store per attestation, and per-step overhead on a 1,000-step run"

MAILBOX_SIZE = 1_024
TAP_BUFFER = 100_000
STEPS = 1_000
QUICK_STEPS = 200
WARMUP_STEPS = 100
# On/off pairs per repetition: one pair's overhead swings by tens of percent on a busy 2-core
# host (a 1,000-step run is ~0.4 s); the median of many is what can tell 10% from 20%.
PAIRS_PER_REPETITION = 10
SIGN_LOOP = 2_000
TARGET_OVERHEAD = 10.0  # percent per step
TARGET_CPU_MS = 0.2  # per attestation
TIMEOUT = 300.0


def _cpu(who: int = resource.RUSAGE_SELF) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _children_cpu() -> float:
    """CPU seconds of this process's live children (the attestor's signing process), from
    ``/proc/PID/schedstat`` (nanoseconds: ``stat``'s clock ticks are 10 ms)."""
    total, me = 0.0, os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == me:
                total += int((entry / "schedstat").read_text().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            continue
    return total


# wall s to all readable, daemon CPU s, attestations, signing CPU s, wall s to run_succeeded,
# the trio thread's CPU s (up to all readable)
Sample = tuple[float, float, int, float, float, float]


async def _run(
    scheduler: trio.MemorySendChannel[SchedulerMessage],
    attestor: trio.MemorySendChannel[AttestorMessage],
    store: trio.MemorySendChannel[StoreMessage],
    runs: trio.MemoryReceiveChannel[Any],
    dag_json: str,
    attested: bool,
) -> Sample:
    """(wall seconds until everything is committed and in DuckDB, CPU seconds, attestations,
    signing process CPU seconds, wall seconds until the durable run_succeeded) of one run."""
    signing = _children_cpu()
    cpu, started = _cpu(), time.perf_counter()
    trio_cpu = _cpu(resource.RUSAGE_THREAD)  # this task runs on the trio thread, as all do
    run_id = await ask(scheduler, lambda r: SubmitRun(dag_json, {}, 7, {}, (), "", r))
    run_attestation, run_seq, count, succeeded = "", 0, 0, 0.0
    while True:
        batch = await receive_batch(runs)
        ended = False
        for item in batch:
            assert isinstance(item, RunEventRecord)
            if item.run_id != run_id:
                continue
            announcement = announced(item.kind, item.payload)
            if announcement is not None:
                count += 1
                if announcement[1] == "run":
                    run_attestation, run_seq = announcement[0], item.seq
            if item.kind == "run_failed":
                raise RuntimeError(f"run failed: {item.payload}")
            ended = ended or item.kind == "run_succeeded"
        if ended:
            succeeded = time.perf_counter() - started
            break
    if attested:
        # submitted, started, a lease and a completion (announcing its attestation) a step
        assert count == STEPS_OF[dag_json] + 1
        assert run_seq == 2 * STEPS_OF[dag_json] + 3
        assert run_attestation == run_attestation_id(run_id, run_seq)
        await ask(attestor, lambda r: GetAttestations((run_attestation,), r))
    else:
        await ask(store, lambda r: LoadRunAttestations(run_id, r))  # DuckDB has the run too
    wall, cpu = time.perf_counter() - started, _cpu() - cpu
    trio_cpu = _cpu(resource.RUSAGE_THREAD) - trio_cpu
    return wall, cpu, count, _children_cpu() - signing, succeeded, trio_cpu


STEPS_OF: dict[str, int] = {}


async def _session(home: Path, steps: int, pairs: int) -> dict[str, list[Sample]]:
    tap_send, tap_receive = trio.open_memory_channel[TapMessage](MAILBOX_SIZE)
    store_send, store_receive = trio.open_memory_channel[StoreMessage](MAILBOX_SIZE)
    attest_send, attest_receive = trio.open_memory_channel[AttestorMessage](MAILBOX_SIZE)
    results: dict[str, list[Sample]] = {"on": [], "off": []}
    pair = keys.load_or_create(home)
    async with trio.open_nursery() as nursery:
        await nursery.start(TapBroker(tap_receive, buffer=TAP_BUFFER).run)
        await nursery.start(Store(home, store_receive, tap_send.clone()).run)
        attestor = Attestor(pair, attest_receive, store_send.clone(), spool=home / SPOOL)
        await nursery.start(attestor.run)
        inboxes = {}
        for variant in ("on", "off"):
            send, receive = trio.open_memory_channel[SchedulerMessage](MAILBOX_SIZE)
            scheduler = Scheduler(
                BlockRegistry(BLOCKS), receive, store_send.clone(), tap_send.clone(),
                home=home, config=SchedulerConfig(), shutdown_grace=10.0,
                attestor=attest_send.clone() if variant == "on" else None,
            )  # fmt: skip
            await nursery.start(scheduler.run)
            inboxes[variant] = send
        runs = await ask(tap_send, lambda r: Subscribe("runs", None, r))
        chain = chain_dag(steps, "noop")
        warm = chain_dag(WARMUP_STEPS, "noop")
        STEPS_OF.update({chain: steps, warm: WARMUP_STEPS})
        with trio.fail_after(TIMEOUT):
            for variant in ("on", "off"):
                on = variant == "on"
                await _run(inboxes[variant], attest_send, store_send, runs, warm, on)
            for rep in range(pairs):
                # on, off, then off, on: whatever the order favours (a collection, the host's
                # speed drifting) falls on both variants alike
                for variant in ("on", "off") if rep % 2 == 0 else ("off", "on"):
                    on = variant == "on"
                    sample = await _run(inboxes[variant], attest_send, store_send, runs, chain, on)
                    results[variant].append(sample)
        runs.close()
        store_send.close()
        for send in inboxes.values():
            send.close()
        attest_send.close()
        tap_send.close()
    return results


def _sign_loop(home: Path, n: int) -> float:
    """CPU µs per step attestation drafted and signed (``drafting.draft_batch``: hashes, claims,
    statement, Ed25519), in batches of ``attestor.actor.BATCH``, as the signing process does."""
    sign, public = signer(keys.load_or_create(home).private)  # libsodium's, as the process signs
    usage = {"tokens_in": 0, "tokens_out": 0, "cost": 0.0}
    jobs = [("step", "run_b", f"s{i}", "noop", 1, usage, {"n": i, "prev": i - 1}, 5, None,
             {"n": i}) for i in range(n)]  # fmt: skip
    cpu = _cpu(resource.RUSAGE_THREAD)
    for start in range(0, n, BATCH):
        draft_batch({}, jobs[start : start + BATCH], sign, key_id(public))
    return (_cpu(resource.RUSAGE_THREAD) - cpu) * 1e6 / n


def run(options: Options) -> Report:
    report = Report(NAME, TITLE)
    steps = QUICK_STEPS if options.quick else STEPS
    home = scratch_dir() / "home"
    tune_collector()  # as the daemon does
    pairs = options.repetitions * (1 if options.quick else PAIRS_PER_REPETITION)
    results = trio.run(_session, home, steps, pairs)
    on, off = results["on"], results["off"]
    overheads = [(a[4] / b[4] - 1) * 100 for a, b in zip(on, off, strict=True)]
    readable = [(a[0] / b[0] - 1) * 100 for a, b in zip(on, off, strict=True)]
    cpu_each = [
        (a[1] + a[3] - b[1] - b[3]) * 1000 / max(a[2], 1) for a, b in zip(on, off, strict=True)
    ]
    signing_each = [a[3] * 1e6 / max(a[2], 1) for a in on]
    progress(options, f"{NAME}: to run_succeeded, on {[round(s[4], 3) for s in on]} s, off "
             f"{[round(s[4], 3) for s in off]} s")  # fmt: skip
    progress(options, f"{NAME}: to all readable, on {[round(s[0], 3) for s in on]} s, off "
             f"{[round(s[0], 3) for s in off]} s")  # fmt: skip
    note = f"{steps}-step chain of no-op observers"
    report.figures.append(Figure("per step, attest on", "ms", [s[4] * 1000 / steps for s in on],
                                 note=f"{note}, submit → durable run_succeeded"))  # fmt: skip
    report.figures.append(Figure("per step, attest off", "ms", [s[4] * 1000 / steps for s in off]))
    report.figures.append(
        Figure(
            "per-step overhead",
            "%",
            overheads,
            ceiling=TARGET_OVERHEAD,
            note="the run benchmark's measure (to run_succeeded), on ÷ off − 1, ABBA pairs",
        )  # fmt: skip
    )
    report.figures.append(
        Figure("per step to every attestation readable, on", "ms",
               [s[0] * 1000 / steps for s in on], note=f"{note}, submit → GetAttestations")
    )  # fmt: skip
    report.figures.append(
        Figure("per step to DuckDB caught up, off", "ms", [s[0] * 1000 / steps for s in off])
    )
    report.figures.append(
        Figure(
            "per-step overhead to every attestation readable",
            "%",
            readable,
            note="on ÷ off − 1: signed, committed and in DuckDB (trails run_succeeded)",
        )  # fmt: skip
    )
    report.figures.append(
        Figure(
            "sign + store per attestation",
            "ms",
            cpu_each,
            ceiling=TARGET_CPU_MS,
            note="daemon CPU (every thread, and the signing process), on − off, ÷ attestations",
        )  # fmt: skip
    )
    report.figures.append(
        Figure(
            "of which the signing process",
            "µs",
            signing_each,
            note="its CPU ÷ attestations: signatures off the daemon's interpreter lock",
        )  # fmt: skip
    )
    report.figures.append(
        Figure(
            "trio-thread CPU a step, attest off",
            "µs",
            [s[5] * 1e6 / steps for s in off],
            note="the daemon's one loop: every actor's task, up to DuckDB caught up",
        )  # fmt: skip
    )
    report.figures.append(
        Figure(
            "trio-thread CPU attestation adds a step",
            "µs",
            [(a[5] - b[5]) * 1e6 / steps for a, b in zip(on, off, strict=True)],
            note="on − off, pairs, up to every attestation readable (the whole of its trio work)",
        )  # fmt: skip
    )
    sign = [_sign_loop(scratch_dir() / "sign", SIGN_LOOP // (4 if options.quick else 1))
            for _ in range(options.repetitions)]  # fmt: skip
    report.figures.append(
        Figure(
            "statement + Ed25519 signature",
            "µs",
            sign,
            note="drafting.draft_batch of step jobs (the signing process's work), CPU per step",
        )  # fmt: skip
    )
    median_off = statistics.median(s[4] for s in off) * 1000 / steps
    interval = median_interval(overheads)
    report.notes.append(
        f"attestation adds {statistics.median(overheads):.1f}% per step to run_succeeded "
        f"({median_off:.3f} ms/step without it; target < {TARGET_OVERHEAD:g}%; 90% bootstrap "
        f"interval of the median over the {len(overheads)} pairs {interval[0]:.1f} to "
        f"{interval[1]:.1f}%: {against_ceiling(interval, TARGET_OVERHEAD)}), "
        f"{statistics.median(readable):.1f}% to every attestation readable"
    )
    return report
