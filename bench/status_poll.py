"""Status as its clients poll it: the daemon's cost of a Status call on a daemon that has run
many chains.

A daemon (``foundry serve`` on 127.0.0.1:0, the built-in greeting pair) is sent greeting chains
for ``LOAD_SECONDS`` by ``bench.emit_rpc``'s load generator, then left to finish them: it holds
up to ``[engine] recent_workflows`` (1,000) finished workflows in memory and the rest in its
database. Then ``CALLS`` Status calls without filters or limit — what clients of the public
Foundry daemon send to see work finish: every in-flight workflow and the newest 100 finished
ones — one after the other, the replies left undecoded (decoding 100 workflows in pure Python
would be the client's cost, not the daemon's). Figures: the p50 per call, and the daemon's CPU
per call (all its threads, from ``/proc``).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

from . import REPO, Figure, Options, Report, progress, python_env

NAME = "status_poll"
TITLE = "Status polled on a daemon holding ~1,000 finished workflows (100 listed)"

LOAD_SECONDS = 3.0
QUICK_LOAD_SECONDS = 1.0
CALLS = 100
QUICK_CALLS = 20
WARM_UP = 5
PATH = "/foundry.Foundry/Status"


def run(options: Options) -> Report:
    from foundry.proto import foundry_api as api

    from .emit_rpc import CONFIG, GREET, _wait_idle
    from .fleet_daemon import daemon, percentile, process_cpu, timed_raw_calls

    report = Report(NAME, TITLE)
    calls = QUICK_CALLS if options.quick else CALLS
    p50s, cpus = [], []
    with daemon(CONFIG) as server:
        load = QUICK_LOAD_SECONDS if options.quick else LOAD_SECONDS
        progress(options, f"greeting chains for {load:g} s, then their end")
        _load(server.address, GREET, load)
        _wait_idle(server.address)
        for rep in range(options.repetitions):
            progress(options, f"repetition {rep + 1}: {calls} Status calls")
            before = process_cpu(server.process.pid)
            times, reply = asyncio.run(
                timed_raw_calls(
                    server.address, PATH, api.StatusRequest(), api.StatusResponse, calls,
                    warm_up=WARM_UP,
                )
            )  # fmt: skip
            used = process_cpu(server.process.pid) - before
            cpus.append(used / (calls + WARM_UP) * 1000)
            p50s.append(percentile(times, 0.50))
            listed = len(api.StatusResponse.parse(reply).workflows)
    note = f"{listed} workflows listed (every one in flight, the newest 100 finished)"
    report.figures += [
        Figure("Status p50, no filter", "ms", p50s, note=note),
        Figure("daemon CPU per Status call", "ms", cpus),
    ]
    report.notes.append(
        "The reply is ~370 bytes a workflow; the client does not decode it. Daemon CPU: user + "
        "system time of all its threads over the calls (warm-up included) ÷ their number."
    )
    return report


def _load(address: str, event: tuple[str, str], seconds: float) -> None:
    argv = [
        sys.executable, "-m", "bench.emit_rpc", "client", "--addr", address,
        "--event-type", event[0], "--payload", event[1], "--duration", str(seconds),
    ]  # fmt: skip
    subprocess.run(
        argv, capture_output=True, text=True, env=python_env(), cwd=REPO, check=True,
        timeout=seconds + 120,
    )  # fmt: skip
