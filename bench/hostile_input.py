"""Hostile input on a real daemon: how long a 1 MB id takes to be refused, and how Emit latency
holds up while a client keeps sending huge ids and over-limit messages — or 4 MB run specs (a
DAG of ~38,000 steps, the largest a request may be, with one step id twice at its end: parsed
and checked in full, then refused) — against the same Emits with no such client (same run)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from . import Figure, Options, Report, progress
from .fleet_daemon import daemon, percentile

NAME = "hostile_input"
TITLE = "Hostile input: huge ids and over-limit messages vs Emit latency"


def run(options: Options) -> Report:
    report = Report(NAME, TITLE)
    emits = 200 if options.quick else 1000
    huge_id, quiet, noisy, dags = [], [], [], []
    with daemon("") as server:
        for rep in range(options.repetitions):
            progress(options, f"repetition {rep + 1}: {emits} emits, quiet then under attack")
            figures = asyncio.run(_measure(server.address, emits))
            huge_id.append(figures["huge_id_ms"])
            quiet.append(figures["quiet_p99_ms"])
            noisy.append(figures["noisy_p99_ms"])
            dags.append(figures["dags_p99_ms"])
    report.figures += [
        Figure("a 1 MB id refused (INVALID_ARGUMENT)", "ms", huge_id, ceiling=100.0),
        Figure("Emit p99, no hostile client", "ms", quiet),
        Figure("Emit p99, while huge ids and 8 MB messages arrive", "ms", noisy),
        Figure("Emit p99, while 4 MB run specs arrive", "ms", dags),
    ]
    quiet_p99, attacked, specs = (f.name for f in report.figures[1:4])
    report.ratio("Emit p99 under attack / quiet", attacked, quiet_p99)
    report.ratio("Emit p99 under 4 MB specs / quiet", specs, quiet_p99)
    return report


async def _measure(address: str, emits: int) -> dict[str, float]:
    from foundry.kernel.edge.grpc.client import connect
    from foundry.proto import foundry_api as api
    from grpclib import GRPCError

    async with connect(address) as (foundry, _):
        started = time.perf_counter()
        with contextlib.suppress(GRPCError):
            await foundry.status(api.StatusRequest(workflow_id="x" * 1_000_000))
        huge_id_ms = (time.perf_counter() - started) * 1000
        quiet = await _emit_latencies(foundry, api, emits)
        stop = asyncio.Event()
        attacker = asyncio.create_task(_attack(address, stop))
        noisy = await _emit_latencies(foundry, api, emits)
        stop.set()
        await attacker
        stop = asyncio.Event()
        submitter = asyncio.create_task(_submit_large_specs(address, stop))
        dags = await _emit_latencies(foundry, api, emits)
        stop.set()
        await submitter
    return {
        "huge_id_ms": huge_id_ms,
        "quiet_p99_ms": percentile(quiet, 0.99),
        "noisy_p99_ms": percentile(noisy, 0.99),
        "dags_p99_ms": percentile(dags, 0.99),
    }


def large_spec_dag(limit: int = 4 * 1024 * 1024 - 4096) -> str:
    """A chain of transforms as long as fits in ``limit`` bytes, its last step's id repeated:
    valid up to its end, so the daemon parses and checks all of it before it refuses it."""
    steps: list[dict[str, Any]] = []
    size = 20
    while True:
        i = len(steps)
        value = {"n": i, "prev": f"${{steps.s{i - 1:06d}.output.n}}"} if i else {"n": 0}
        entry = {"id": f"s{i:06d}", "type": "transform", "inputs": {"value": value}}
        size += len(json.dumps(entry)) + 2
        if size > limit:
            break
        steps.append(entry)
    steps[-1]["id"] = steps[-2]["id"]
    return json.dumps({"steps": steps})


async def _submit_large_specs(address: str, stop: asyncio.Event) -> None:
    from foundry.kernel.edge.grpc.client import connect
    from foundry.proto import runtime_api as api
    from grpclib import GRPCError, Status

    spec = api.RunSpec(dag_json=large_spec_dag())
    async with connect(address) as (_, runtime):
        while not stop.is_set():
            try:
                await runtime.submit_run(api.SubmitRunRequest(spec=spec))
            except GRPCError as exc:
                if exc.status is not Status.INVALID_ARGUMENT:
                    raise
            else:
                raise AssertionError("a DAG with a step id twice was accepted")


async def _emit_latencies(foundry: Any, api: Any, count: int) -> list[float]:
    latencies = []
    for index in range(count):
        payload = f'{{"i":{index}}}'
        request = api.EmitRequest(event_type="bench_probe", project="b", payload_json=payload)
        started = time.perf_counter()
        await foundry.emit(request)
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


async def _attack(address: str, stop: asyncio.Event) -> None:
    from foundry.kernel.edge.grpc.client import connect
    from foundry.proto import foundry_api as api
    from grpclib import GRPCError

    big = json.dumps({"blob": "x" * (8 * 1024 * 1024)})
    async with connect(address) as (foundry, _):
        while not stop.is_set():
            for request in (
                api.StatusRequest(workflow_id="y" * 1_000_000),
                api.EmitRequest(event_type="x", project="p", payload_json=big),
            ):
                try:
                    if isinstance(request, api.StatusRequest):
                        await foundry.status(request)
                    else:
                        await foundry.emit(request)
                except GRPCError:
                    pass
