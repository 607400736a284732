"""Emit RPCs per second against the real daemon, next to a plain grpclib server, in one run.

Three processes: the daemon (``foundry serve`` on 127.0.0.1:0, FOUNDRY_HOME in a temporary
directory), a plain asyncio grpclib server answering Emit with an EmitResponse and nothing else,
and a load generator — one client process per measurement, many requests in flight on one HTTP/2
connection, a warm-up, then a fixed measuring window. The load generator uses grpcio's C core by
default (``--library grpclib`` for the grpclib ``FoundryStub``): per RPC it costs the client about
a third of the CPU grpclib does, and on a 2-core machine every cycle the client saves is one the
server under test can use.

Measurements are interleaved (plain, foundry, foundry greeting; repeat) and the medians compared.
Beside throughput, each server's CPU time per Emit (user + system, all its threads, from
``/proc``; for the greeting, until its chains have finished): on a shared machine whose speed
changes within minutes, CPU time per call compares the servers where RPC/s cannot.
``bench_ping`` is sunk by no block: the pure Emit path, root durably stored before the reply.
``greet_requested`` starts the built-in greeting chain, which then runs in the background; the
daemon is left to go idle before the next measurement. The Emit rate counts Emits accepted in the
window, whether their chains ran in it or were left for later; *greeting chains through* counts
them over the window and the wait until every chain finished: what the daemon sustains. (Before
the artifact writes had a thread pool of their own, chains fell seconds behind their Emits —
4.7 s of chains after a 2.5 s window, in an A/B — and the Emit rate was 1.5x the rate chains got
through.)

This module is also the entry point of its own subprocesses::

    python -m bench.emit_rpc plain-server
    python -m bench.emit_rpc client --addr HOST:PORT --event-type T [--payload JSON] ...
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from . import REPO, Figure, Options, Report, progress, python_env, scratch_dir, stop_process
from .fleet_daemon import first_line, serve_until_stopped

NAME = "emit_rpc"
TITLE = "Emit RPC throughput: foundry daemon vs plain grpclib (pipelined client)"

LOAD_LIBRARY = "grpcio"  # or "grpclib"
CONCURRENCY = 96  # requests in flight on one HTTP/2 connection
WARMUP = 0.5
DURATION = 2.5
QUICK_DURATION = 1.0
START_TIMEOUT = 30.0
IDLE_TIMEOUT = 60.0
RATIO_TARGET = 0.7  # no block sinks the event (issue 17)
GREETING_RATIO_TARGET = 0.4  # the greeting chain

PING = ("bench_ping", '{"n":1}')  # no block sinks it
GREET = ("greet_requested", '{"name":"x"}')  # the built-in greeting chain

CONFIG = """\
# Written by bench/emit_rpc.py: the built-in blocks only (the greeting pair).
[daemon]
shutdown_grace = 10.0
"""


# --- the plain grpclib server (a subprocess) ---------------------------------------------------


async def _plain_server() -> None:
    from foundry.proto import foundry_api as api
    from grpclib.server import Server

    class PlainFoundry(api.FoundryBase):
        """Emit answered at once: no parsing, no storage, no engine."""

        def __init__(self) -> None:
            self.count = 0

        async def emit(self, message: api.EmitRequest) -> api.EmitResponse:
            self.count += 1
            event_id = f"evt_{self.count:024x}"
            return api.EmitResponse(event_id=event_id, workflow_id="")

    await serve_until_stopped(Server([PlainFoundry()]))


# --- the load generator (a subprocess) ----------------------------------------------------------


async def _client(
    addr: str,
    event_type: str,
    payload: str,
    *,
    library: str,
    concurrency: int,
    warmup: float,
    duration: float,
) -> dict[str, Any]:
    from foundry.proto import foundry_api as api

    request = api.EmitRequest(event_type=event_type, project="bench", payload_json=payload)
    async with _emitter(library, addr, request) as emit:
        window: dict[str, float] = {}
        counts = {"ok": 0, "errors": 0, "completed": 0}
        latencies: list[float] = []
        stopping = False

        async def worker() -> None:
            while not stopping:
                sent = time.perf_counter()
                try:
                    await emit()
                except Exception as exc:
                    counts["errors"] += 1
                    if counts["errors"] == 1:
                        print(f"Emit failed: {exc!r}", file=sys.stderr)
                    await asyncio.sleep(0.01)
                    continue
                done = time.perf_counter()
                counts["completed"] += 1  # the server's CPU time is divided by these
                # Completions inside the window count, whenever they were sent: with ~100 in
                # flight the latency can approach the window, and steady state is what matters.
                if "start" in window and "end" not in window:
                    counts["ok"] += 1
                    latencies.append(done - sent)

        workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
        await asyncio.sleep(warmup)
        cpu_before = resource.getrusage(resource.RUSAGE_SELF)
        window["start"] = time.perf_counter()
        await asyncio.sleep(duration)
        window["end"] = time.perf_counter()
        cpu_after = resource.getrusage(resource.RUSAGE_SELF)
        stopping = True
        await asyncio.wait_for(asyncio.gather(*workers), timeout=30)
    seconds = window["end"] - window["start"]
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    latencies.sort()
    return {
        "library": library,
        "requests": counts["ok"],
        "completed": counts["completed"],
        "errors": counts["errors"],
        "seconds": seconds,
        "rps": counts["ok"] / seconds,
        "client_cpu": cpu / seconds,
        "p50_ms": latencies[len(latencies) // 2] * 1000 if latencies else 0.0,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000 if latencies else 0.0,
    }


@contextlib.asynccontextmanager
async def _emitter(library: str, addr: str, request: Any) -> AsyncIterator[Callable[[], Any]]:
    """``emit()`` sends one Emit and checks the reply names an event."""
    from foundry.proto import foundry_api as api

    if library == "grpclib":
        from grpclib.client import Channel

        host, _, port = addr.rpartition(":")
        channel = Channel(host, int(port))
        stub = api.FoundryStub(channel)

        async def emit_grpclib() -> None:
            reply = await stub.emit(request)
            if not reply.event_id:
                raise RuntimeError("EmitResponse without an event_id")

        try:
            yield emit_grpclib
        finally:
            channel.close()
        return

    import grpc  # grpcio's C core: a cheaper load generator, so the server is what is measured

    body = bytes(request)
    async with grpc.aio.insecure_channel(addr) as grpc_channel:
        call = grpc_channel.unary_unary("/foundry.Foundry/Emit")

        async def emit_grpcio() -> None:
            reply = api.EmitResponse.parse(await call(body))
            if not reply.event_id:
                raise RuntimeError("EmitResponse without an event_id")

        yield emit_grpcio


# --- the orchestrator -------------------------------------------------------------------------


@dataclass
class Server:
    label: str
    process: subprocess.Popen[str]
    address: str
    log: IO[str]
    log_path: Path

    def tail(self) -> str:
        self.log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])


def _start(label: str, argv: Sequence[str], env: dict[str, str], workdir: Path) -> Server:
    log_path = workdir / f"{label}.log"
    log = log_path.open("w")
    process = subprocess.Popen(
        list(argv), stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=workdir,
        start_new_session=True,  # a Ctrl-C at the terminal reaches only the orchestrator
    )  # fmt: skip
    line = first_line(process, START_TIMEOUT)
    server = Server(label, process, line.split(" ")[0], log, log_path)  # gRPC, then HTTP
    if not line or ":" not in line:
        stop_process(process, grace=5)
        raise RuntimeError(f"{label} did not start:\n{server.tail()}")
    return server


@contextlib.contextmanager
def _servers(workdir: Path) -> Iterator[tuple[Server, Server]]:
    home = workdir / "home"
    config = workdir / "foundry-bench.toml"
    config.write_text(CONFIG)
    started: list[Server] = []
    try:
        serve = [sys.executable, "-m", "foundry.kernel.cli", "serve",
                 "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
                 "--config", str(config)]  # fmt: skip
        started.append(_start("foundry", serve, python_env(FOUNDRY_HOME=str(home)), workdir))
        started.append(
            _start(
                "plain",
                [sys.executable, "-m", "bench.emit_rpc", "plain-server"],
                python_env(),
                workdir,
            )
        )
        yield started[0], started[1]
    finally:
        for server in reversed(started):
            code = stop_process(server.process)
            if server.process.stdout:
                server.process.stdout.close()
            server.log.close()
            if code not in (0, -signal.SIGTERM):
                print(
                    f"warning: {server.label} exited with {code}:\n{server.tail()}", file=sys.stderr
                )


def _measure(
    address: str, event: tuple[str, str], duration: float, library: str = LOAD_LIBRARY
) -> dict[str, Any]:
    argv = [
        sys.executable, "-m", "bench.emit_rpc", "client", "--addr", address, "--library", library,
        "--event-type", event[0], "--payload", event[1], "--concurrency", str(CONCURRENCY),
        "--warmup", str(WARMUP), "--duration", str(duration),
    ]  # fmt: skip
    done = subprocess.run(
        argv, capture_output=True, text=True, env=python_env(), cwd=REPO,
        timeout=START_TIMEOUT + WARMUP + duration + 60, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed ({done.returncode}):\n{done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if result["errors"]:
        raise RuntimeError(f"{result['errors']} Emit RPCs failed against {address}")
    if not result["requests"]:
        raise RuntimeError(f"no Emit RPC completed in the {duration:g} s window ({address})")
    return result


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process, all its threads (Linux ``/proc``), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_idle(address: str) -> float:
    """Wait until the daemon has no workflow pending or running; returns the seconds waited."""
    from foundry.kernel.edge.grpc.client import connect
    from foundry.proto import foundry_api as api

    async def poll() -> float:
        started = time.perf_counter()
        async with connect(address) as (foundry, _):
            while True:
                reply = await foundry.status(api.StatusRequest(), timeout=30)
                busy = [w for w in reply.workflows if w.state in ("pending", "running")]
                failed = [w for w in reply.workflows if w.state == "failed"]
                if failed:
                    raise RuntimeError(f"a workflow failed: {failed[0].error}")
                if not busy:
                    return time.perf_counter() - started
                if time.perf_counter() - started > IDLE_TIMEOUT:
                    raise RuntimeError(f"daemon still busy with {len(busy)} workflows")
                await asyncio.sleep(0.05)

    return asyncio.run(poll())


def run(options: Options) -> Report:
    duration = QUICK_DURATION if options.quick else DURATION
    report = Report(NAME, TITLE)
    series: dict[str, list[dict[str, Any]]] = {"plain": [], "ping": [], "greet": []}
    drains: list[float] = []
    with _servers(scratch_dir()) as (foundry, plain):
        for rep in range(options.repetitions):
            for key, server, event in (
                ("plain", plain, PING),
                ("ping", foundry, PING),
                ("greet", foundry, GREET),
            ):
                cpu_before = _cpu_seconds(server.process.pid)
                result = _measure(server.address, event, duration)
                if server is foundry:
                    drains.append(_wait_idle(foundry.address))
                    # What the daemon sustains: every Emit's chain through, not only accepted.
                    result["through_rps"] = result["completed"] / (WARMUP + duration + drains[-1])
                cpu_after = _cpu_seconds(server.process.pid)
                if cpu_before is not None and cpu_after is not None:
                    result["server_cpu_us"] = (cpu_after - cpu_before) / result["completed"] * 1e6
                series[key].append(result)
                line = (
                    f"{NAME} rep {rep + 1}/{options.repetitions} {key:<5} "
                    f"{result['rps']:8,.0f} RPC/s  p50 {result['p50_ms']:.1f} ms  "
                    f"client CPU {result['client_cpu']:.0%}"
                )
                if "server_cpu_us" in result:
                    line += f"  server {result['server_cpu_us']:,.0f} µs CPU/RPC"
                if server is foundry:
                    line += f"  (idle after {drains[-1]:.2f} s)"
                progress(options, line)

    def figure(key: str, name: str, **extra: Any) -> Figure:
        runs = series[key]
        cpu = sorted(r["client_cpu"] for r in runs)[len(runs) // 2]
        p50 = sorted(r["p50_ms"] for r in runs)[len(runs) // 2]
        note = f"p50 latency {p50:.1f} ms, load generator CPU {cpu:.0%} of one core"
        return Figure(name, "RPC/s", [r["rps"] for r in runs], note=note, **extra)

    report.figures = [
        figure("plain", "plain grpclib Emit"),
        figure("ping", "foundry Emit (bench_ping)"),
        figure("greet", "foundry Emit (greet_requested)"),
    ]
    report.figures.append(
        Figure(
            "greeting chains through /s",
            "chains/s",
            [r["through_rps"] for r in series["greet"]],
            note="the greeting window's Emits ÷ (warm-up + window + the wait until every chain "
            "finished): what the daemon sustains, not only accepts",
        )
    )
    report.ratio(
        "foundry/plain (bench_ping)", "foundry Emit (bench_ping)", "plain grpclib Emit",
        target=RATIO_TARGET,
    )  # fmt: skip
    report.ratio("foundry/plain (greet_requested)", "foundry Emit (greet_requested)",
                 "plain grpclib Emit", target=GREETING_RATIO_TARGET)  # fmt: skip
    report.ratio("chains through/plain (greet_requested)", "greeting chains through /s",
                 "plain grpclib Emit")  # fmt: skip
    if all("server_cpu_us" in r for runs in series.values() for r in runs):
        for key, name in (
            ("plain", "plain grpclib CPU per Emit"),
            ("ping", "foundry CPU per Emit (bench_ping)"),
            ("greet", "foundry CPU per Emit (greet_requested)"),
        ):
            samples = [r["server_cpu_us"] for r in series[key]]
            note = "chains included" if key == "greet" else ""
            report.figures.append(Figure(name, "µs", samples, note=note))
        for event in ("bench_ping", "greet_requested"):
            report.ratio(
                f"CPU plain/foundry ({event})", "plain grpclib CPU per Emit",
                f"foundry CPU per Emit ({event})",
            )  # fmt: skip
    report.notes.append(
        f"{CONCURRENCY} requests in flight on one HTTP/2 connection, one {LOAD_LIBRARY} client "
        "process; "
        f"{WARMUP:g} s warm-up, {duration:g} s window; {os.cpu_count()} CPUs shared by "
        "client and server"
    )
    report.notes.append(
        "greet_requested chains keep running after their Emit returns; the daemon was left to "
        f"go idle after each such window (median {sorted(drains)[len(drains) // 2]:.2f} s)"
    )
    return report


# --- subprocess entry points -------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.emit_rpc", description=__doc__)
    roles = parser.add_subparsers(dest="role", required=True)
    roles.add_parser("plain-server", help="serve Emit with plain grpclib on 127.0.0.1:0")
    client = roles.add_parser("client", help="generate Emit load, print JSON")
    client.add_argument("--addr", required=True)
    client.add_argument("--event-type", required=True)
    client.add_argument("--payload", default="{}")
    client.add_argument("--concurrency", type=int, default=CONCURRENCY)
    client.add_argument("--warmup", type=float, default=WARMUP)
    client.add_argument("--duration", type=float, default=DURATION)
    client.add_argument("--library", choices=("grpcio", "grpclib"), default=LOAD_LIBRARY)
    args = parser.parse_args(argv)
    if args.role == "plain-server":
        asyncio.run(_plain_server())
        return 0
    result = asyncio.run(
        _client(
            args.addr,
            args.event_type,
            args.payload,
            library=args.library,
            concurrency=args.concurrency,
            warmup=args.warmup,
            duration=args.duration,
        )
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
