"""Analytics: rows ingested through the store's write path, and the saved questions at 1M rows.

1. *ingest while the engine runs*: the whole kernel in-process (``open_kernel``); one task emits
   events through the engine without pause (each a chain the store commits) while others send
   the store Append batches of ``BATCH`` run events each (the write path every actor uses: group
   commit through the appender) — rows/s acknowledged (durable). Target ≥ 50,000 rows/s.
2. *1M + 1M*: a store alone ingests 1,000,000 block executions and 1,000,000 run events (50,000
   runs of 9 steps: leased + completed with model and usage, and run-level events) through
   Append batches; then every saved question of ``analytics/questions/`` runs through the store
   (``RunUserQuery``, the sandbox's path) with its default parameters, each ``-n`` times, after
   one warm-up. Target < 1 s each. ``--quick`` uses a tenth of the rows.
"""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import trio

from . import Figure, Options, Report, progress, scratch_dir

NAME = "analytics_ingest"
TITLE = "Analytics: ingest through the store's write path; saved questions over 1M + 1M rows"

BATCH = 5_000  # rows per Append
WRITERS = 4  # tasks sending Appends at once
INGEST_SECONDS = 5.0
ROWS = 1_000_000
TARGET_ROWS_PER_S = 50_000
CEILING_S = 1.0
T0 = datetime(2026, 1, 1, tzinfo=UTC)
MODELS = ("mock-small", "mock-large", "gpt-x", "claude-y")
BLOCKS = tuple(f"block_{i:02d}" for i in range(40))


def run(options: Options) -> Report:
    report = Report(NAME, TITLE)
    rates = []
    for rep in range(options.repetitions):
        rate, emits = trio.run(_ingest_with_engine, scratch_dir(), options)
        progress(options, f"ingest rep {rep + 1}: {rate:,.0f} rows/s ({emits} emits meanwhile)")
        rates.append(rate)
    report.figures.append(Figure("ingest with the engine running", "rows/s", rates,
                                 target=TARGET_ROWS_PER_S,
                                 note=f"Append batches of {BATCH} run events, {WRITERS} senders, "
                                      "while Emits run"))  # fmt: skip
    rows = ROWS // 10 if options.quick else ROWS
    bulk_rate, timings = trio.run(_million, scratch_dir(), rows, options)
    report.figures.append(Figure(f"bulk ingest ({rows:,} + {rows:,} rows)", "rows/s",
                                 [bulk_rate],
                                 note="one Append at a time, each awaited"))  # fmt: skip
    for name, samples in timings.items():
        report.figures.append(Figure(f"question {name}", "s", samples, ceiling=CEILING_S))
    return report


def _run_events(run_index: int, steps: int, at: datetime) -> tuple[Any, list[Any]]:
    from foundry.kernel.core.runs import RunEventRecord, RunSubmission

    run_id = f"run_{run_index:08d}"
    submission = RunSubmission(run_id=run_id, idempotency_key="", dag_json="{}", inputs={},
                               seed=run_index, labels={"team": f"t{run_index % 7}"},
                               breakpoints=(), parent_run_id="", branch_step="", note="",
                               created_at=at)  # fmt: skip
    events, seq = [], 0

    def add(step: str, kind: str, payload: dict[str, Any], when: datetime) -> None:
        nonlocal seq
        seq += 1
        events.append(RunEventRecord(run_id=run_id, seq=seq, step_id=step, kind=kind,
                                     payload={"seq": seq, **payload},
                                     occurred_at=when))  # fmt: skip

    add("", "run_submitted", {"steps": steps, "seed": run_index}, at)
    add("", "run_started", {}, at)
    for s in range(steps):
        step, model = f"s{s}", MODELS[(run_index + s) % len(MODELS)]
        leased = at + timedelta(milliseconds=10 * s)
        add(step, "step_leased", {"attempt": 1, "model": model, "seed": s, "inputs": {}}, leased)
        usage = {"tokens_in": 100 + s, "tokens_out": 50 + run_index % 13, "cost": 0.0002}
        done = leased + timedelta(milliseconds=random.randint(1, 5_000))
        add(step, "step_completed", {"attempt": 1, "output": {"text": "ok", "model": model},
                                     "usage": usage, "duration_ms": 5}, done)  # fmt: skip
    return submission, events


async def _ingest_with_engine(home: Path, options: Options) -> tuple[float, int]:
    from foundry.kernel.actors.engine.messages import Emit
    from foundry.kernel.actors.mailbox import ask, reply_pair
    from foundry.kernel.actors.store.messages import Append
    from foundry.kernel.actors.supervisor import open_kernel
    from foundry.kernel.blocks.registry import BlockRegistry
    from foundry.kernel.config import Config
    from foundry.kernel.core.throttle import Throttle

    seconds = 1.5 if options.quick else INGEST_SECONDS
    # the rows, built before the clock starts: batches of BATCH run events, sent round-robin
    # (nothing in run_events is unique; building every row anew would measure Python, not the store)
    batches: list[tuple[Any, ...]] = []
    run_index = 0
    while len(batches) < 40:
        records: list[Any] = []
        while len(records) < BATCH:
            submission, events = _run_events(run_index, 9, T0)
            records += [submission, *events]
            run_index += 1
        batches.append(tuple(records))
    acked = emits = 0
    async with open_kernel(Config(home=home), BlockRegistry(())) as mailboxes:
        stop = trio.current_time() + seconds
        next_batch = 0

        async def writer() -> None:
            nonlocal acked, next_batch
            while trio.current_time() < stop:
                records = batches[next_batch % len(batches)]
                next_batch += 1
                reply, pending = reply_pair()
                await mailboxes.store.send(Append(records, (), reply))
                await pending.wait()
                acked += len(records)

        async def emitter() -> None:
            nonlocal emits
            while trio.current_time() < stop:
                payload = {"n": emits}
                await ask(mailboxes.engine, lambda r, p=payload: Emit(
                    "bench_tick", "bench", Throttle.FULL, p, r))  # fmt: skip
                emits += 1

        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(emitter)
            for _ in range(WRITERS):
                nursery.start_soon(writer)
        elapsed = trio.current_time() - started
    return acked / elapsed, emits


async def _million(home: Path, rows: int, options: Options) -> tuple[float, dict[str, list[float]]]:
    from foundry.analytics import saved_questions as questions
    from foundry.kernel.actors.mailbox import ask, reply_pair
    from foundry.kernel.actors.store.actor import Store
    from foundry.kernel.actors.store.messages import Append, RunUserQuery
    from foundry.kernel.core.ids import compact_json
    from foundry.kernel.core.records import Event, ExecutionRecord
    from foundry.kernel.core.throttle import Throttle

    tap_send, tap_receive = trio.open_memory_channel[Any](1_000)
    send, receive = trio.open_memory_channel[Any](100)
    rng = random.Random(7)
    timings: dict[str, list[float]] = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(Store(home, receive, tap_send).run)
        nursery.start_soon(_drain, tap_receive)

        async def commit(records: list[Any]) -> None:
            reply, pending = reply_pair()
            await send.send(Append(tuple(records), (), reply))
            await pending.wait()

        # the rows are built batch by batch (2M objects at once would be gigabytes)
        progress(options, f"ingesting {rows:,} block executions and {rows:,} run events")
        root = Event(id="evt_bench", event_type="bench", project="p", occurred_at=T0,
                     recorded_at=T0, throttle=Throttle.FULL, workflow_id="evt_bench",
                     payload={}, payload_json=compact_json({}), depth=0)  # fmt: skip
        busy = 0.0
        written = 0
        while written < rows:
            batch = []
            for i in range(written, min(written + BATCH, rows)):
                at = T0 + timedelta(seconds=i * 2)
                failed = rng.random() < 0.03
                batch.append(ExecutionRecord(
                    workflow_id=f"evt_{i // 5:024x}", block_name=BLOCKS[i % len(BLOCKS)],
                    trigger=root, state="failed" if failed else "completed", success=not failed,
                    summary="", emitted=(), started_at=at,
                    completed_at=at + timedelta(milliseconds=rng.randint(1, 900)),
                    duration_ms=rng.randint(1, 900), raw_output="", exit_code=0,
                    audit_artifacts=(), attempts=1, throttled=False))  # fmt: skip
            started = time.perf_counter()
            await commit(batch)
            busy += time.perf_counter() - started
            written += len(batch)
        run_events = run_index = 0
        while run_events < rows:
            batch = []
            while len(batch) < BATCH and run_events < rows:
                at = T0 + timedelta(minutes=run_index)
                submission, events = _run_events(run_index, 9, at)
                batch += [submission, *events]
                run_events += len(events)
                run_index += 1
            started = time.perf_counter()
            await commit(batch)
            busy += time.perf_counter() - started
        rate = (rows + run_events) / busy
        progress(options, f"ingested at {rate:,.0f} rows/s ({run_index:,} runs)")

        for question in questions.list_questions():
            params = question.bind({})
            samples = []
            for rep in range(options.repetitions + 1):
                started = time.perf_counter()
                await ask(send, lambda r, q=question, p=params: RunUserQuery(
                    q.sql, p, 10_000, 60.0, r))  # fmt: skip
                if rep:  # the first is a warm-up
                    samples.append(time.perf_counter() - started)
            timings[question.name] = samples
            progress(options, f"{question.name}: {min(samples):.3f} s")
        send.close()
    return rate, timings


async def _drain(channel: Any) -> None:
    async for _ in channel:
        pass
