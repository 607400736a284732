"""Emit over the HTTP listener (Connect JSON, HTTP/1.1 keep-alive, ``httpx``) next to Emit over
gRPC (the grpclib client), against the same daemon in the same run.

One daemon (``foundry serve`` on 127.0.0.1:0 for both listeners, FOUNDRY_HOME in a temporary
directory); one load-generator process per measurement, with the same number of requests in
flight for both protocols: for Connect, that many keep-alive HTTP/1.1 connections (HTTP/1.1 has
one request at a time per connection), for gRPC that many streams on one HTTP/2 connection.

Measurements alternate (gRPC, Connect; repeat) and the medians are compared (target: Connect at
least half the gRPC rate). ``bench_ping`` is sunk by no block: the pure Emit path.

Each Connect connection is its own ``httpx.AsyncClient`` (a pool of one): httpcore's pool walks
every connection it holds on each request, polling each idle socket (encode/httpx#3215,
encode/httpcore#1035), so one client over 16 connections spent most of the load generator's CPU
in its pool — on the two cores the daemon shares with it — and measured httpx, not the daemon.

This module is also the entry point of its own load generator::

    python -m bench.emit_connect client --protocol connect|grpc --addr HOST:PORT ...
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

from . import Figure, Options, Report, progress, python_env, scratch_dir, stop_process
from .fleet_daemon import first_line, process_cpu

NAME = "emit_connect"
TITLE = "Emit over Connect JSON (HTTP/1.1 keep-alive) vs over gRPC, same daemon"

CONCURRENCY = 16  # requests in flight (Connect: keep-alive connections; gRPC: HTTP/2 streams)
WARMUP = 0.5
DURATION = 2.5
QUICK_DURATION = 1.0
START_TIMEOUT = 30.0
RATIO_TARGET = 0.5
EVENT_TYPE, PAYLOAD = "bench_ping", '{"n":1}'

CONFIG = """\
# Written by bench/emit_connect.py: the built-in blocks only.
[daemon]
shutdown_grace = 10.0
"""


def run(options: Options) -> Report:
    report = Report(NAME, TITLE)
    duration = QUICK_DURATION if options.quick else DURATION
    rates: dict[str, list[float]] = {"grpc": [], "connect": []}
    cpu: dict[str, list[float]] = {"grpc": [], "connect": []}
    workdir = scratch_dir()
    with _daemon(workdir) as (pid, grpc_address, http_address):
        for repetition in range(options.repetitions):
            for protocol, address in (("grpc", grpc_address), ("connect", http_address)):
                rate, cpu_ms = _measure(protocol, address, duration, workdir, pid)
                rates[protocol].append(rate)
                cpu[protocol].append(cpu_ms)
                progress(options, f"#{repetition + 1} {protocol}: {rate:,.0f} emits/s, "
                                  f"daemon CPU {cpu_ms:.2f} ms per Emit")  # fmt: skip
    report.figures.append(Figure("Emit over gRPC (grpclib)", "emits/s", rates["grpc"]))
    report.figures.append(Figure("Emit over Connect JSON (httpx)", "emits/s", rates["connect"]))
    report.figures.append(Figure("daemon CPU per Emit, gRPC", "ms", cpu["grpc"]))
    report.figures.append(Figure("daemon CPU per Emit, Connect JSON", "ms", cpu["connect"]))
    report.ratio(
        "Connect JSON / gRPC",
        "Emit over Connect JSON (httpx)",
        "Emit over gRPC (grpclib)",
        target=RATIO_TARGET,
    )
    report.ratio(
        "daemon CPU per Emit, Connect / gRPC",
        "daemon CPU per Emit, Connect JSON",
        "daemon CPU per Emit, gRPC",
    )
    report.notes.append(
        f"{CONCURRENCY} requests in flight; Connect on {CONCURRENCY} keep-alive HTTP/1.1 "
        "connections (one httpx client each), gRPC on one HTTP/2 connection; one client "
        "process per measurement"
    )
    return report


@contextlib.contextmanager
def _daemon(workdir: Path) -> Iterator[tuple[int, str, str]]:
    config = workdir / "foundry-bench.toml"
    config.write_text(CONFIG)
    log = (workdir / "foundry.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "foundry.kernel.cli", "serve", "--config", str(config),
         "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=log, text=True, cwd=workdir,
        env=python_env(FOUNDRY_HOME=str(workdir / "home")), start_new_session=True,
    )  # fmt: skip
    try:
        line = first_line(process, START_TIMEOUT)
        grpc_address, _, http_address = line.partition(" ")
        if not http_address:
            raise RuntimeError(f"the daemon did not start: {(workdir / 'foundry.log').read_text()}")
        yield process.pid, grpc_address, http_address
    finally:
        stop_process(process)
        if process.stdout:
            process.stdout.close()
        log.close()


def _measure(
    protocol: str, address: str, duration: float, workdir: Path, pid: int
) -> tuple[float, float]:
    """(Emits per second, the daemon's CPU milliseconds per Emit, warm-up included)."""
    cpu_before = process_cpu(pid)
    done = subprocess.run(
        [sys.executable, "-m", "bench.emit_connect", "client", "--protocol", protocol,
         "--addr", address, "--duration", str(duration)],
        capture_output=True, text=True, env=python_env(), cwd=workdir, timeout=120, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"the {protocol} client failed: {done.stderr[-2000:]}")
    cpu_seconds = process_cpu(pid) - cpu_before
    result = json.loads(done.stdout)
    rate = float(result["count"]) / float(result["seconds"])
    return rate, 1000 * cpu_seconds / max(1, int(result["total"]))


# --- the load generator (its own process) --------------------------------------------------------


async def _load(emits: list[Callable[[], Awaitable[None]]], duration: float) -> dict[str, float]:
    """One task per ``emits`` item, each calling it in a loop."""
    count = total = 0
    measuring = False
    stop_at = time.monotonic() + WARMUP + duration

    async def worker(emit: Callable[[], Awaitable[None]]) -> None:
        nonlocal count, total
        while time.monotonic() < stop_at:
            await emit()
            total += 1
            if measuring:
                count += 1

    tasks = [asyncio.create_task(worker(emit)) for emit in emits]
    await asyncio.sleep(WARMUP)
    measuring, started = True, time.monotonic()
    await asyncio.gather(*tasks)
    return {"count": count, "seconds": time.monotonic() - started, "total": total}


async def _connect_client(address: str, duration: float) -> dict[str, float]:
    import httpx

    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    body = json.dumps({"eventType": EVENT_TYPE, "project": "bench", "payloadJson": PAYLOAD})
    url = f"http://{address}/foundry.Foundry/Emit"
    headers = {"content-type": "application/json"}

    def emitter(client: httpx.AsyncClient) -> Callable[[], Awaitable[None]]:
        async def emit() -> None:
            response = await client.post(url, content=body, headers=headers)
            if response.status_code != 200:
                raise RuntimeError(f"Emit answered {response.status_code}: {response.text}")

        return emit

    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(httpx.AsyncClient(limits=limits, timeout=30))
            for _ in range(CONCURRENCY)
        ]  # one keep-alive connection each (see the module's docstring)
        return await _load([emitter(client) for client in clients], duration)


async def _grpc_client(address: str, duration: float) -> dict[str, float]:
    from foundry.proto import foundry_api as api
    from grpclib.client import Channel

    host, _, port = address.rpartition(":")
    channel = Channel(host, int(port))
    stub = api.FoundryStub(channel)
    request = api.EmitRequest(event_type=EVENT_TYPE, project="bench", payload_json=PAYLOAD)
    try:

        async def emit() -> None:
            await stub.emit(request)

        return await _load([emit] * CONCURRENCY, duration)
    finally:
        channel.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.emit_connect")
    commands = parser.add_subparsers(dest="command", required=True)
    client = commands.add_parser("client")
    client.add_argument("--protocol", choices=("connect", "grpc"), required=True)
    client.add_argument("--addr", required=True)
    client.add_argument("--duration", type=float, default=DURATION)
    args = parser.parse_args(argv)
    load = _connect_client if args.protocol == "connect" else _grpc_client
    print(json.dumps(asyncio.run(load(args.addr, args.duration))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
