"""Daemon memory over a long run of greeting chains, and after one large request.

One real daemon (``foundry serve``, the built-in blocks only: the greeting pair) and one grpcio
client in this process, 64 Emits of ``greet_requested`` in flight on one HTTP/2 connection, each
with a 60 s deadline as clients set them (each deadline is an asyncio timer in the daemon). The
daemon's RSS (VmRSS in /proc/PID/status) is sampled once it is idle after the warm-up (10,000
chains), every 10,000 chains after that, and at the end (100,000; ``--quick``: 2,000 and 12,000).

DuckDB keeps the blocks of the database it wrote cached until ``[store] memory_limit`` (256MB by
default) forces them out; the store lets them go by reopening the database once they pass 8 MB
(``CACHE_BYTES`` in kernel/actors/store/actor.py). The whole growth has the target; it is also
reported as DuckDB's buffer memory (``duckdb_memory()``, asked through the daemon's
Analytics.Query RPC at each sample) and the rest.

Then one large request: an Emit with a ~1.9 MB ``payload_json`` (its greeting, the name twice,
~3.8 MB: under ``[engine] max_event_bytes``), whose chain carries it through three events and the
trace — RSS before it, once its
chain is done, and after it was released (``RELEASE_WAIT`` seconds idle: the store hands the
freed heap back to the OS a second after a large commit, DuckDB's allocator within seconds); and a
100 MB one, which the daemon refuses from its length prefix (RESOURCE_EXHAUSTED).

One run of each, whatever ``-n`` says: the soak takes minutes.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from . import Figure, Options, Report, progress
from .fleet_daemon import Daemon, daemon

NAME = "memory_soak"
TITLE = "Memory soak: RSS over 100,000 greeting chains, and after a large request"

CONFIG = """\
# Written by bench/memory_soak.py: the built-in blocks only (the greeting pair); [store] defaults.
[daemon]
shutdown_grace = 10.0
"""

CHAINS, WARMUP, STEP = 100_000, 10_000, 10_000
QUICK_CHAINS, QUICK_WARMUP = 12_000, 2_000
CONCURRENCY = 64
DEADLINE = 60.0  # seconds, per Emit
# characters of the one large payload: its greeting holds the name twice, under [engine]
# max_event_bytes (4,128,768; 3,500,000 made a 7 MB one, which failed the chain and the bench)
LARGE_PAYLOAD = 1_900_000
REFUSED_PAYLOAD = 100_000_000
SETTLE = 1.0  # seconds idle before a sample
RELEASE_WAIT = 10.0
IDLE_TIMEOUT = 120.0
GROWTH_CEILING = 20.0  # MB over the run, the whole process
LARGE_CEILING = 16.0  # MB still resident after the large request was released
REFUSED_CEILING = 4.0  # MB still resident after the refused request


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def database_mb(home: Path) -> float:
    """The database file and its write-ahead log."""
    paths = (home / "foundry.duckdb", home / "foundry.duckdb.wal")
    return sum(p.stat().st_size for p in paths if p.exists()) / 2**20


DUCKDB_MEMORY = "SELECT sum(memory_usage_bytes) FROM duckdb_memory()"


async def _soak(server: Daemon, options: Options) -> dict[str, Any]:
    import grpc
    from foundry.proto import analytics_api
    from foundry.proto import foundry_api as api

    total, warmup = (QUICK_CHAINS, QUICK_WARMUP) if options.quick else (CHAINS, WARMUP)
    pid = server.process.pid

    def request(name: str) -> bytes:
        payload = json.dumps({"name": name})
        return bytes(api.EmitRequest(event_type="greet_requested", project="soak",
                                     payload_json=payload))  # fmt: skip

    greet = request("x")
    limits = [("grpc.max_send_message_length", 2 * REFUSED_PAYLOAD)]
    result: dict[str, Any] = {"curve": []}
    async with grpc.aio.insecure_channel(server.address, options=limits) as channel:
        emit = channel.unary_unary("/foundry.Foundry/Emit")
        status = channel.unary_unary("/foundry.Foundry/Status")
        query = channel.unary_unary("/foundry.analytics.v1.Analytics/Query")

        async def duckdb_mb() -> float:
            """DuckDB's buffer memory (its cache of the database included), in the daemon."""
            request = bytes(analytics_api.QueryRequest(sql=DUCKDB_MEMORY))
            reply = analytics_api.QueryResponse.parse(await query(request, timeout=DEADLINE))
            return float(json.loads(reply.rows_json[0])[0] or 0) / 2**20

        async def emit_many(count: int) -> None:
            left = count

            async def worker() -> None:
                nonlocal left
                while left > 0:
                    left -= 1
                    await emit(greet, timeout=DEADLINE)

            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))

        async def idle(settle: float = SETTLE) -> None:
            """Until no workflow is pending or running, then ``settle`` seconds more."""
            deadline = time.monotonic() + IDLE_TIMEOUT
            request = bytes(api.StatusRequest())
            while True:
                reply = api.StatusResponse.parse(await status(request, timeout=DEADLINE))
                states = {w.state for w in reply.workflows}
                if "failed" in states:
                    raise RuntimeError("a greeting workflow failed")
                if not states & {"pending", "running"}:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("the daemon did not go idle")
                await asyncio.sleep(0.05)
            await asyncio.sleep(settle)

        result["start"] = rss_mb(pid)
        started = time.perf_counter()
        done = 0
        while done < total:
            count = warmup if not done else min(STEP, total - done)
            await emit_many(count)
            await idle()
            done += count
            sample = (done, rss_mb(pid), await duckdb_mb(), database_mb(server.home))
            result["curve"].append(sample)
            progress(options, f"{NAME}: {done:,} chains, RSS {result['curve'][-1][1]:.1f} MB")
        result["chains_per_s"] = total / (time.perf_counter() - started)

        large = request("x" * LARGE_PAYLOAD)
        result["large_before"] = rss_mb(pid)
        await emit(large, timeout=DEADLINE)
        del large
        await idle(settle=0.0)
        result["large_done"] = rss_mb(pid)
        await asyncio.sleep(RELEASE_WAIT)
        result["large_released"] = rss_mb(pid)
        rss = (result["large_before"], result["large_done"], result["large_released"])
        progress(options, f"{NAME}: large request, RSS " + " -> ".join(f"{m:.1f}" for m in rss))

        refused = request("x" * REFUSED_PAYLOAD)
        try:
            await emit(refused, timeout=DEADLINE)
        except grpc.aio.AioRpcError as exc:
            if exc.code() is not grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise
        else:
            raise RuntimeError("a 100 MB request was accepted")
        del refused
        await asyncio.sleep(RELEASE_WAIT)
        result["refused_released"] = rss_mb(pid)
    return result


def run(options: Options) -> Report:
    report = Report(NAME, TITLE)
    with daemon(CONFIG) as server:
        r = asyncio.run(_soak(server, options))
    (first, warm_rss, warm_duck, warm_db) = r["curve"][0]
    (last, end_rss, end_duck, end_db) = r["curve"][-1]
    growth, duck_growth = end_rss - warm_rss, end_duck - warm_duck
    report.figures = [
        Figure(
            f"RSS growth, {first:,} -> {last:,} chains",
            "MB",
            [growth],
            ceiling=GROWTH_CEILING,
            note=f"RSS {warm_rss:.1f} -> {end_rss:.1f} MB (at start {r['start']:.1f}); "
            "DuckDB's buffer memory included",
        ),
        Figure(
            "DuckDB buffer memory growth",
            "MB",
            [duck_growth],
            note=f"{warm_duck:.1f} -> {end_duck:.1f} MB (duckdb_memory()): its cache of the "
            f"database ({warm_db:.1f} -> {end_db:.1f} MB on disk), let go past 8 MB",
        ),
        Figure("RSS growth besides DuckDB's buffers", "MB", [growth - duck_growth]),
        Figure(
            "RSS kept after a 1.9 MB request (its chain 3.8 MB events)",
            "MB",
            [r["large_released"] - r["large_before"]],
            ceiling=LARGE_CEILING,
            note=f"RSS {r['large_before']:.1f} before, {r['large_done']:.1f} when its chain "
            f"was done, {r['large_released']:.1f} after {RELEASE_WAIT:g} s idle",
        ),
        Figure(
            "RSS kept after a refused 100 MB one",
            "MB",
            [r["refused_released"] - r["large_released"]],
            ceiling=REFUSED_CEILING,
        ),
    ]
    curve = ", ".join(f"{n // 1000}k {rss:.0f}/{duck:.0f}" for n, rss, duck, _ in r["curve"])
    report.notes.append(f"RSS/DuckDB buffers (MB) after n chains: {curve}")
    report.notes.append(
        f"{r['chains_per_s']:,.0f} chains/s over gRPC ({CONCURRENCY} Emits in flight, "
        f"{DEADLINE:g} s deadlines); one run (minutes long), whatever -n says"
    )
    return report
