"""Hostile input on a real daemon: how long a 1 MB id takes to be refused, and how Emit latency
holds up while a client keeps sending huge ids and over-limit messages — or 4 MB run specs (a
DAG of ~38,000 steps, the largest a request may be, with one step id twice at its end: parsed
and checked in full, then refused) — or GetRun of a finished run of 5,000 steps, asked again and
again (over gRPC, or over Connect JSON: the reply's JSON written on a worker thread), TapRun of
it from its first event or ReplayRun of it — against the same Emits with no such client (same
run). Replies to those are taken undecoded (a client's parse of thousands of steps in pure Python
would be the measurement otherwise)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from . import Figure, Options, Report, progress
from .fleet_daemon import daemon, percentile

NAME = "hostile_input"
TITLE = "Hostile input: huge ids and over-limit messages vs Emit latency"


LARGE_RUN_STEPS = 5_000
QUICK_LARGE_RUN_STEPS = 1_000


def run(options: Options) -> Report:
    report = Report(NAME, TITLE)
    emits = 200 if options.quick else 1000
    steps = QUICK_LARGE_RUN_STEPS if options.quick else LARGE_RUN_STEPS
    samples: dict[str, list[float]] = {}
    with daemon("") as server:
        large_run = asyncio.run(_finished_run(server.address, steps))
        for rep in range(options.repetitions):
            progress(options, f"repetition {rep + 1}: {emits} emits, quiet then under attack")
            measured = _measure(server.address, server.http_address, emits, large_run)
            for key, value in asyncio.run(measured).items():
                samples.setdefault(key, []).append(value)
    quiet = "Emit p99, no hostile client"
    report.figures += [
        Figure("a 1 MB id refused (INVALID_ARGUMENT)", "ms", samples["huge_id"], ceiling=100.0),
        Figure(quiet, "ms", samples["quiet"]),
        Figure("Emit p99, while huge ids and 8 MB messages arrive", "ms", samples["attack"]),
        Figure("Emit p99, while 4 MB run specs arrive", "ms", samples["specs"]),
        Figure(f"Emit p99, while GetRun of {steps:,} steps repeats", "ms", samples["get_run"]),
        Figure(
            f"Emit p99, while Connect JSON GetRun of {steps:,} steps repeats",
            "ms",
            samples["json_get_run"],
        ),
        Figure(f"Emit p99, while TapRun of {steps:,} steps repeats", "ms", samples["tap_run"]),
        Figure(f"Emit p99, while ReplayRun of {steps:,} steps repeats", "ms", samples["replay"]),
        Figure(
            "Emit p99, while 200 KB ListRuns of packed statuses arrive (Connect, gRPC)",
            "ms",
            samples["packed"],
            note="each ~1 s of betterproto2 and the request check: on a worker thread from 16 "
            "KiB (a hunt saw both ports held for all of it)",
        ),
    ]
    labels = ("attack", "4 MB specs", "GetRun", "Connect JSON GetRun", "TapRun", "ReplayRun",
              "packed ListRuns")  # fmt: skip
    for label, figure in zip(labels, report.figures[2:], strict=True):
        report.ratio(f"Emit p99 under {label} / quiet", figure.name, quiet)
    return report


async def _measure(address: str, http_address: str, emits: int, large_run: str) -> dict[str, float]:
    from foundry.kernel.edge.grpc.client import connect
    from foundry.proto import foundry_api as api
    from grpclib import GRPCError

    async with connect(address) as (foundry, _):
        started = time.perf_counter()
        with contextlib.suppress(GRPCError):
            await foundry.status(api.StatusRequest(workflow_id="x" * 1_000_000))
        huge_id_ms = (time.perf_counter() - started) * 1000

        async def p99_while(load: Callable[[asyncio.Event], Awaitable[None]] | None) -> float:
            stop = asyncio.Event()
            task = asyncio.create_task(load(stop)) if load is not None else None
            latencies = await _emit_latencies(foundry, api, emits)
            stop.set()
            if task is not None:
                await task
            return percentile(latencies, 0.99)

        return {
            "huge_id": huge_id_ms,
            "quiet": await p99_while(None),
            "attack": await p99_while(lambda stop: _attack(address, stop)),
            "specs": await p99_while(lambda stop: _submit_large_specs(address, stop)),
            "get_run": await p99_while(lambda stop: _get_run_again(address, large_run, stop)),
            "json_get_run": await p99_while(
                lambda stop: _json_get_run_again(http_address, large_run, stop)
            ),
            "tap_run": await p99_while(lambda stop: _tap_run_again(address, large_run, stop)),
            "replay": await p99_while(lambda stop: _replay_again(address, large_run, stop)),
            "packed": await p99_while(lambda stop: _packed_list_runs(address, http_address, stop)),
        }


async def _finished_run(address: str, steps: int) -> str:
    """A run of a chain of ``steps`` transforms, once it has succeeded."""
    from foundry.kernel.edge.grpc.client import connect
    from foundry.proto import runtime_api as api

    from .time_travel import _until_terminal, chain

    async with connect(address) as (_, runtime):
        spec = api.RunSpec(dag_json=chain(steps, digits=5))
        run_id: str = (await runtime.submit_run(api.SubmitRunRequest(spec=spec))).run_id
    await _until_terminal(address, run_id)
    return run_id


async def _tap_run_again(address: str, run_id: str, stop: asyncio.Event) -> None:
    """TapRun of ``run_id`` (finished: its whole history) until ``stop``, events undecoded."""
    from .time_travel import _until_terminal

    while not stop.is_set():
        await _until_terminal(address, run_id)


async def _get_run_again(address: str, run_id: str, stop: asyncio.Event) -> None:
    """GetRun of ``run_id`` until ``stop``, each reply left undecoded."""
    from foundry.proto import runtime_api as api

    await _call_again(address, "GetRun", api.GetRunRequest(run_id=run_id), stop)


async def _json_get_run_again(http_address: str, run_id: str, stop: asyncio.Event) -> None:
    """GetRun of ``run_id`` over Connect JSON (httpx) until ``stop``, each reply undecoded."""
    import httpx

    url = f"http://{http_address}/fleetforge.runtime.v1.RuntimeService/GetRun"
    async with httpx.AsyncClient(timeout=120) as client:
        while not stop.is_set():
            reply = await client.post(url, json={"runId": run_id})
            if reply.status_code != 200:
                raise AssertionError(f"Connect JSON GetRun answered {reply.status_code}")


async def _replay_again(address: str, run_id: str, stop: asyncio.Event) -> None:
    """ReplayRun (FULL: every observer step re-executed) of ``run_id`` until ``stop``."""
    from foundry.proto import runtime_api as api

    await _call_again(address, "ReplayRun", api.ReplayRunRequest(run_id=run_id), stop)


async def _call_again(address: str, method: str, request: Any, stop: asyncio.Event) -> None:
    """A RuntimeService call until ``stop``, each reply left undecoded."""
    from foundry.proto import runtime_api as api

    from .fleet_daemon import timed_raw_calls

    path = f"/fleetforge.runtime.v1.RuntimeService/{method}"
    reply = getattr(api, f"{method}Response")
    while not stop.is_set():
        await timed_raw_calls(address, path, request, reply, 1)


PACKED_STATUSES = 200_000  # 200 KB: under the 256 KiB from which the gRPC port used a thread


async def _packed_list_runs(address: str, http_address: str, stop: asyncio.Event) -> None:
    """ListRuns of ``PACKED_STATUSES`` packed statuses, over Connect and gRPC in turn, until
    ``stop``: each ~1 s of decoding and checking, one element a byte."""
    import httpx
    from foundry.proto import runtime_api as api

    from .fleet_daemon import timed_raw_calls

    request = api.ListRunsRequest(statuses=[api.RunStatus.SUCCEEDED] * PACKED_STATUSES)
    path = "/fleetforge.runtime.v1.RuntimeService/ListRuns"
    async with httpx.AsyncClient(timeout=120) as client:
        while not stop.is_set():
            await client.post(f"http://{http_address}{path}", content=bytes(request),
                              headers={"content-type": "application/proto"})  # fmt: skip
            await timed_raw_calls(address, path, request, api.ListRunsResponse, 1)


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
