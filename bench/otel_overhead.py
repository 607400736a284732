"""What OpenTelemetry export costs: engine events/s and Emit RPC/s with export on (to a local
OTLP/HTTP receiver) and off, measured in the same run, interleaved; target ≤ 10% slower.

1. *engine*: the kernel in-process as the daemon runs it (``open_kernel``), without gRPC; the
   3-block chains of ``engine_throughput`` (3 events, 3 block executions: 6 spans a chain);
   256 producers; the clock stops when every workflow row is committed and every trace file
   written. With export on, the spans are then awaited at the receiver, off the clock, and
   counted: a run that lost spans says so. CPU of the daemon's process per chain, and of the
   exporter process, are reported beside the rates.
2. *Emit RPC*: two real daemons (``foundry serve``), one exporting, one not, driven in turn by
   the ``emit_rpc`` load generator (grpcio, 96 in flight): ``greet_requested`` (a chain: 5 spans
   an Emit) and ``bench_ping`` (no block sinks it: 1 span).

The receiver is a process of its own (``python -m bench.otel_overhead receiver``): it decodes
each ``ExportTraceServiceRequest`` and counts the spans, as a collector would. It stands in for a
collector on another machine, so it runs at the lowest CPU priority, as the exporter process does
(``SCHED_IDLE``): on this 2-core machine it should not take the measured daemon's CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import trio

from . import Figure, Options, Report, emit_rpc, progress, python_env, scratch_dir, stop_process
from .engine_throughput import BLOCKS, ROOT_TYPE, _chains_for, _count_traces, _until

NAME = "otel_overhead"
TITLE = "OpenTelemetry export overhead: engine events/s and Emit RPC/s, export on vs off"

SPANS_PER_CHAIN = 6  # workflow, 2 emitted events, 3 block executions
EVENTS_PER_CHAIN = 3
PRODUCERS = 256
SECONDS = 3.0
QUICK_SECONDS = 0.7
SETTLE = 1.0  # the daemons have started and imported what they import lazily
SPAN_TIMEOUT = 60.0
RPC_DURATION = 2.5
QUICK_RPC_DURATION = 1.0
RATIO_TARGET = 0.9  # export on / off: at most 10% slower
EXPORTER = "foundry.kernel.edge.otel"  # the exporter process's module, in its command line


# --- the receiver (a subprocess) ----------------------------------------------------------------


def serve_receiver() -> None:
    """An OTLP/HTTP trace receiver on 127.0.0.1:0: prints its URL, counts spans, and answers
    ``GET /count`` with ``{"spans": N, "requests": M}``."""
    from foundry.kernel.edge.otel import lowest_priority
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
        ExportTraceServiceResponse,
    )

    lowest_priority()  # a collector elsewhere, not a competitor of the daemon measured here
    counts = {"spans": 0, "requests": 0}
    empty = ExportTraceServiceResponse().SerializeToString()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a collector serves the exporter

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            request = ExportTraceServiceRequest.FromString(body)
            counts["spans"] += sum(
                len(scope.spans) for rs in request.resource_spans for scope in rs.scope_spans
            )
            counts["requests"] += 1
            self._reply(empty, "application/x-protobuf")

        def do_GET(self) -> None:
            self._reply(json.dumps(counts).encode(), "application/json")

        def _reply(self, body: bytes, content_type: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"http://127.0.0.1:{server.server_address[1]}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


@contextlib.contextmanager
def receiver(workdir: Path) -> Iterator[str]:
    log = (workdir / "receiver.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.otel_overhead", "receiver"], stdout=subprocess.PIPE,
        stderr=log, text=True, env=python_env(), start_new_session=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        endpoint = process.stdout.readline().strip()
        if not endpoint.startswith("http://"):
            raise RuntimeError("the OTLP receiver did not start")
        yield endpoint
    finally:
        stop_process(process, grace=5)
        if process.stdout:
            process.stdout.close()
        log.close()


def received(endpoint: str) -> int:
    with urllib.request.urlopen(f"{endpoint}/count", timeout=10) as reply:
        return int(json.loads(reply.read())["spans"])


# --- 1. the engine, in-process ------------------------------------------------------------------


def _exporter_cpu() -> float:
    """CPU seconds of this process's live OTLP exporter process, from /proc: only that child (the
    daemon's others, the trace archivist, work as much with export off)."""
    total = 0.0
    for listing in Path("/proc/self/task").glob("*/children"):
        for pid in listing.read_text().split():
            with contextlib.suppress(OSError):
                if EXPORTER.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes():
                    continue
                fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _cpu() -> tuple[float, float]:
    whole = resource.getrusage(resource.RUSAGE_SELF)
    trio_thread = resource.getrusage(resource.RUSAGE_THREAD)
    return whole.ru_utime + whole.ru_stime, trio_thread.ru_utime + trio_thread.ru_stime


async def _engine(home: Path, chains: int, endpoint: str) -> dict[str, float]:
    """One run; a warm-up chain goes first, and with export on its spans are awaited at the
    receiver (the exporter process is up) before the clock starts."""
    from foundry.kernel.actors.engine.messages import Emit
    from foundry.kernel.actors.mailbox import ask
    from foundry.kernel.actors.store.messages import CountRows
    from foundry.kernel.actors.supervisor import open_kernel
    from foundry.kernel.blocks.registry import BlockRegistry
    from foundry.kernel.config import Config, OtelConfig
    from foundry.kernel.core.throttle import Throttle
    from foundry.kernel.daemon import tune_collector

    tune_collector()  # as the daemon does
    config = Config(home=home, otel=OtelConfig(endpoint=endpoint))
    async with open_kernel(config, BlockRegistry(BLOCKS)) as mailboxes:
        next_index = -1

        async def emit_one() -> None:
            nonlocal next_index
            payload = {"i": next_index}
            next_index += 1
            await ask(
                mailboxes.engine, lambda r: Emit(ROOT_TYPE, "bench", Throttle.FULL, payload, r)
            )

        async def producer() -> None:
            while next_index < chains:
                await emit_one()

        async def committed() -> int:
            counts = await ask(mailboxes.store, CountRows)
            return sum(counts.workflows.values())

        before = await trio.to_thread.run_sync(received, endpoint) if endpoint else 0
        await emit_one()  # the warm-up chain
        await _until(committed, 1)
        if endpoint:
            wanted = before + SPANS_PER_CHAIN
            await _until(lambda: trio.to_thread.run_sync(received, endpoint), wanted)
        cpu_before, trio_before = _cpu()
        exporter_before = _exporter_cpu()
        started = time.perf_counter()
        with trio.fail_after(SPAN_TIMEOUT):
            async with trio.open_nursery() as producing:
                for _ in range(PRODUCERS):
                    producing.start_soon(producer)
            await _until(committed, chains + 1)
            await _until(lambda: trio.to_thread.run_sync(_count_traces, home), chains + 1)
        elapsed = time.perf_counter() - started
        cpu_after, trio_after = _cpu()
        if endpoint:
            with trio.move_on_after(10):  # every span at the receiver: its CPU is all spent
                wanted = before + SPANS_PER_CHAIN * (chains + 1)
                await _until(lambda: trio.to_thread.run_sync(received, endpoint), wanted)
        exporter = _exporter_cpu() - exporter_before  # its work for these chains, all exported
    return {
        "elapsed": elapsed,
        "events_per_s": chains * EVENTS_PER_CHAIN / elapsed,
        "chains_per_s": chains / elapsed,
        "cpu_us_per_chain": (cpu_after - cpu_before) / chains * 1e6,
        "trio_us_per_chain": (trio_after - trio_before) / chains * 1e6,
        "exporter_us_per_chain": exporter / chains * 1e6,
        "exporter_us_per_span": exporter / (chains * SPANS_PER_CHAIN) * 1e6,
    }


def engine_once(chains: int, endpoint: str = "") -> dict[str, float]:
    before = received(endpoint) if endpoint else 0
    result = trio.run(_engine, scratch_dir() / "home", chains, endpoint)
    if endpoint:  # the kernel has stopped, so the exporter has flushed and ended
        wanted = (chains + 1) * SPANS_PER_CHAIN
        result["spans"] = _spans_arrived(endpoint, before, wanted) - SPANS_PER_CHAIN
    return result


def _spans_arrived(endpoint: str, before: int, wanted: int) -> float:
    deadline = time.monotonic() + 10
    while (got := received(endpoint) - before) < wanted and time.monotonic() < deadline:
        time.sleep(0.05)
    return got


def _engine_figures(options: Options, endpoint: str, report: Report) -> None:
    warmup = engine_once(300)
    chains = _chains_for(QUICK_SECONDS if options.quick else SECONDS, warmup["chains_per_s"])
    progress(options, f"{NAME} engine: {chains} chains per run (6 spans each when exporting)")
    runs: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    for rep in range(options.repetitions):
        # off, on, on, off, ...: a machine that speeds up or slows down over the run favors
        # neither side
        for key in ("off", "on") if rep % 2 == 0 else ("on", "off"):
            sample = engine_once(chains, endpoint if key == "on" else "")
            runs[key].append(sample)
            line = (f"{NAME} rep {rep + 1}/{options.repetitions} engine export {key:<3} "
                    f"{sample['events_per_s']:8,.0f} events/s, "
                    f"{sample['cpu_us_per_chain']:,.0f} us CPU/chain")  # fmt: skip
            if key == "on":
                spans = f"{sample['spans']:,.0f}/{chains * SPANS_PER_CHAIN:,}"
                exporter = sample["exporter_us_per_chain"]
                line += f", exporter {exporter:,.0f} us/chain, {spans} spans received"
            progress(options, line)
    lost = [chains * SPANS_PER_CHAIN - s["spans"] for s in runs["on"]]

    def figure(key: str, name: str, field: str, unit: str, note: str = "") -> Figure:
        return Figure(name, unit, [s[field] for s in runs[key]], note=note)

    report.figures += [
        figure("off", "engine events/s, export off", "events_per_s", "events/s"),
        figure("on", "engine events/s, export on", "events_per_s", "events/s",
               f"spans not received, per run: {lost}"),
        figure("off", "daemon CPU per chain, export off", "cpu_us_per_chain", "us"),
        figure("on", "daemon CPU per chain, export on", "cpu_us_per_chain", "us",
               "the daemon's process, all threads; lower is better"),
        figure("off", "trio thread CPU per chain, off", "trio_us_per_chain", "us"),
        figure("on", "trio thread CPU per chain, on", "trio_us_per_chain", "us",
               "the thread every actor shares, the engine's ceiling"),
        figure("on", "exporter process CPU per chain", "exporter_us_per_chain", "us",
               "OTLP encoding and HTTP, off the daemon's process (6 spans a chain)"),
        figure("on", "exporter process CPU per span", "exporter_us_per_span", "us",
               "span making, OTLP encoding and HTTP at SCHED_IDLE"),
    ]  # fmt: skip
    report.ratio("engine events/s on/off", "engine events/s, export on",
                 "engine events/s, export off", target=RATIO_TARGET)  # fmt: skip
    cost = statistics.median(s["trio_us_per_chain"] for s in runs["on"]) - statistics.median(
        s["trio_us_per_chain"] for s in runs["off"]
    )
    report.notes.append(
        f"engine: {chains} chains a run, {PRODUCERS} producers; export on costs the trio "
        f"thread {cost:+,.1f} us of CPU a chain ({cost / SPANS_PER_CHAIN:+,.1f} us a span)"
    )


# --- 2. Emit RPC, real daemons ------------------------------------------------------------------


@contextlib.contextmanager
def _daemon(workdir: Path, label: str, endpoint: str) -> Iterator[emit_rpc.Server]:
    home, config = workdir / f"{label}-home", workdir / f"{label}.toml"
    config.write_text(
        emit_rpc.CONFIG + (f'\n[otel]\nendpoint = "{endpoint}"\n' if endpoint else "")
    )
    serve = [sys.executable, "-m", "foundry.kernel.cli", "serve", "--listen", "127.0.0.1:0",
             "--http-listen", "127.0.0.1:0", "--config", str(config)]  # fmt: skip
    server = emit_rpc._start(label, serve, python_env(FOUNDRY_HOME=str(home)), workdir)
    try:
        yield server
    finally:
        stop_process(server.process)
        if server.process.stdout:
            server.process.stdout.close()
        server.log.close()


def _rpc_figures(options: Options, endpoint: str, report: Report) -> None:
    duration = QUICK_RPC_DURATION if options.quick else RPC_DURATION
    workdir = scratch_dir()
    series: dict[str, list[float]] = {}
    with _daemon(workdir, "off", "") as off, _daemon(workdir, "on", endpoint) as on:
        time.sleep(SETTLE)
        for rep in range(options.repetitions):
            for event in (emit_rpc.GREET, emit_rpc.PING):
                for key, daemon in (("off", off), ("on", on)):
                    result = emit_rpc._measure(daemon.address, event, duration)
                    series.setdefault(f"{event[0]} {key}", []).append(result["rps"])
                    emit_rpc._wait_idle(daemon.address)
                    rate = f"{result['rps']:8,.0f} RPC/s"
                    what = f"Emit {event[0]:<15} export {key:<3}"
                    progress(options, f"{NAME} rep {rep + 1}/{options.repetitions} {what} {rate}")
    for event in (emit_rpc.GREET[0], emit_rpc.PING[0]):
        off_name, on_name = f"Emit RPC/s {event}, export off", f"Emit RPC/s {event}, export on"
        report.figures += [
            Figure(off_name, "RPC/s", series[f"{event} off"]),
            Figure(on_name, "RPC/s", series[f"{event} on"]),
        ]
        report.ratio(f"Emit {event} on/off", on_name, off_name, target=RATIO_TARGET)


def run(options: Options) -> Report:
    report = Report(NAME, TITLE)
    with receiver(scratch_dir()) as endpoint:
        _engine_figures(options, endpoint, report)
        _rpc_figures(options, endpoint, report)
    report.notes.append(
        "interleaved off/on in one run; the receiver is a separate process on the same machine"
    )
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.otel_overhead", description=__doc__)
    parser.add_argument("role", choices=["receiver"])
    parser.parse_args(argv)
    serve_receiver()
    return 0


if __name__ == "__main__":
    sys.exit(main())
