"""Emit latency while analysts' SQL runs on the same daemon (the Analytics RPC).

One daemon; each repetition sends ``EMITS`` Emits one after the other (grpclib, no block sinks
them: each is one durable commit) three times, in this order:

- *idle*: nothing else running;
- *cross join*: while a CPU-heavy allowed query runs (a cross join of 10^5 × 10^5 rows, which
  DuckDB would take minutes over; it is interrupted at its time limit, DEADLINE_EXCEEDED);
- *10k rows*: while a client asks, back to back, for queries of 10,000 rows each (DuckDB
  renders the rows' JSON and joins them; the store's worker thread frames them for the reply).
  The client decodes with upb (the C-backed ``protobuf``, as grpcio users do): a pure-Python
  decoder would take half of one of this machine's two cores from the daemon.

Reported: Emit p50 and p99 for each, and the p99 deltas against idle from the same repetition.
Target: a live query never delays Emit by more than 10 ms at p99.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import time
from typing import Any

from . import Figure, Options, Report, progress
from .fleet_daemon import daemon, percentile

NAME = "analytics_query"
TITLE = "Analytics: Emit latency while a heavy allowed SQL query runs, same daemon"

EMITS = 400
QUICK_EMITS = 100
CEILING_MS = 10.0
HEAVY = (
    "SELECT count(*) FROM range(100000) a, range(100000) b "
    "WHERE (a.range * 7 + b.range * 13) % 1000003 = 17"
)
PACKAGE = "foundry.analytics.v1"
QUERY_PATH = f"/{PACKAGE}.Analytics/Query"
ROWS = "SELECT range AS n, range::VARCHAR AS s, now() AS t FROM range(20000)"


def run(options: Options) -> Report:
    report = Report(NAME, TITLE)
    emits = QUICK_EMITS if options.quick else EMITS
    kinds = ("idle", "cross join", "10k rows")
    p50: dict[str, list[float]] = {k: [] for k in kinds}
    p99: dict[str, list[float]] = {k: [] for k in kinds}
    outcomes: list[str] = []
    with daemon("[analytics]\nquery_timeout = 60.0\n", label="analytics") as server:
        for rep in range(options.repetitions):
            progress(options, f"repetition {rep + 1}: {emits} Emits idle, then under each query")
            for kind in kinds:
                times, outcome = _measure(server.address, kind, emits)
                p50[kind].append(percentile(times, 0.50))
                p99[kind].append(percentile(times, 0.99))
                if outcome:
                    outcomes.append(f"{kind}: {outcome}")
    for kind in kinds:
        report.figures += [
            Figure(f"Emit p50, {kind}", "ms", p50[kind]),
            Figure(f"Emit p99, {kind}", "ms", p99[kind]),
        ]
    for kind in kinds[1:]:
        deltas = [b - a for a, b in zip(p99["idle"], p99[kind], strict=True)]
        report.figures.append(Figure(f"Emit p99 delta, {kind}", "ms", deltas, ceiling=CEILING_MS))
    report.notes.append("queries: " + "; ".join(sorted(set(outcomes))))
    return report


def _measure(address: str, kind: str, emits: int) -> tuple[list[float], str]:
    """Emits from this process; the queries from a child process (a client elsewhere: its
    decoding of 10,000 rows must not take this process's interpreter lock from the Emits)."""
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    results = context.Queue()
    worker = None
    if kind != "idle":
        worker = context.Process(target=_load, args=(address, kind, stop, results), daemon=True)
        worker.start()
        time.sleep(1.5)  # the child is up and its query running
    try:
        times = asyncio.run(_emits(address, emits))
    finally:
        stop.set()
        outcome = ""
        if worker is not None:
            outcome = results.get(timeout=120)
            worker.join(30)
    return times, outcome


def _load(address: str, kind: str, stop: Any, results: Any) -> None:
    outcome: list[str] = []
    asyncio.run(_queries(address, kind, stop, outcome))
    results.put(outcome[0] if outcome else "")


async def _queries(address: str, kind: str, stop: Any, outcome: list[str]) -> None:
    from foundry.kernel.config import parse_listen
    from foundry.kernel.edge.grpc.reflection import descriptor_pool_of_protos
    from foundry.proto import analytics_api as api
    from google.protobuf import message_factory
    from grpclib import GRPCError
    from grpclib.client import Channel, UnaryUnaryMethod
    from grpclib.exceptions import StreamTerminatedError

    host, port = parse_listen(address, key="address")
    channel = Channel(host, port)
    stub = api.AnalyticsStub(channel)
    try:
        if kind == "cross join":
            started = time.perf_counter()
            task = asyncio.ensure_future(stub.query(api.QueryRequest(sql=HEAVY, timeout_ms=60_000)))
            while not stop.is_set() and not task.done():  # noqa: ASYNC110 (a process Event)
                await asyncio.sleep(0.01)
            if task.done():
                outcome.append("finished before the Emits did (make it heavier)")
            # The Emits are done: a short limit ends the query (a second one shows the limit).
            try:
                await stub.query(api.QueryRequest(sql=HEAVY, timeout_ms=500))
            except GRPCError as exc:
                outcome.append(f"a second cross join: {exc.status.name} after "
                               f"{time.perf_counter() - started:.1f} s in all")  # fmt: skip
            task.cancel()
            # its end (cancelled, or cut off as the channel closes) is no news: retrieve it
            with contextlib.suppress(asyncio.CancelledError, GRPCError, StreamTerminatedError):
                await task
        else:
            # upb (the C-backed ``protobuf``, as grpcio users decode): betterproto2 would spend
            # ~0.5 of a core decoding 10,000 rows, a client cost that on this machine's 2 cores
            # would be charged to the daemon's Emits
            pool = descriptor_pool_of_protos()
            request_class, reply_class = (
                message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.{name}"))
                for name in ("QueryRequest", "QueryResponse")
            )
            query = UnaryUnaryMethod(channel, QUERY_PATH, request_class, reply_class)
            request = request_class(sql=ROWS, max_rows=10_000)
            count = 0
            while not stop.is_set():
                reply = await query(request)
                count += len(reply.rows_json)
            outcome.append(f"{count:,} rows fetched")
    finally:
        channel.close()


async def _emits(address: str, emits: int) -> list[float]:
    from foundry.kernel.edge.grpc.client import connect
    from foundry.proto import foundry_api

    request: Any = foundry_api.EmitRequest(event_type="bench", project="analytics")
    times = []
    async with connect(address) as (foundry, _):
        for _ in range(10):
            await foundry.emit(request)
        for _ in range(emits):
            started = time.perf_counter()
            await foundry.emit(request)
            times.append((time.perf_counter() - started) * 1000)
    return times
