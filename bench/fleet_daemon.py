"""Shared by the FleetForge benchmarks on a real daemon (``tap_latency``, ``time_travel``).

Not a benchmark itself (it is not in ``BENCHMARKS``): a daemon in a temporary FOUNDRY_HOME on
127.0.0.1:0, the plain grpclib peer servers some benchmarks measure beside it (started, served,
stopped), a few asyncio client helpers, percentiles, and a verdict line for ceilings.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from . import Figure, python_env, scratch_dir, stop_process

START_TIMEOUT = 30.0


@dataclass
class Daemon:
    process: subprocess.Popen[str]
    address: str
    home: Path
    log: IO[str]
    log_path: Path
    http_address: str = ""  # the HTTP listener's (Connect, gRPC-Web)

    def tail(self) -> str:
        self.log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])


@contextlib.contextmanager
def daemon(config: str, *, label: str = "foundry") -> Iterator[Daemon]:
    """``foundry serve --listen 127.0.0.1:0`` with ``config`` (TOML) in a temporary FOUNDRY_HOME;
    stopped with SIGTERM (exit 0 expected); its directory is a :func:`scratch_dir`."""
    workdir = scratch_dir()
    home = workdir / "home"
    config_path = workdir / "foundry-bench.toml"
    config_path.write_text(config)
    log_path = workdir / f"{label}.log"
    with log_path.open("w") as log:
        argv = [
            sys.executable, "-m", "foundry.kernel.cli", "serve",
            "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
            "--config", str(config_path),
        ]  # fmt: skip
        process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=log, text=True, cwd=workdir,
            env=python_env(FOUNDRY_HOME=str(home)),
            start_new_session=True,  # a Ctrl-C at the terminal reaches only the orchestrator
        )  # fmt: skip
        server = Daemon(process, "", home, log, log_path)
        try:
            line = first_line(process)
            if not line or ":" not in line:
                raise RuntimeError(f"{label} did not start:\n{server.tail()}")
            server.address, _, server.http_address = line.partition(" ")  # gRPC, then HTTP
            yield server
        finally:
            code = stop_process(process)
            if process.stdout:
                process.stdout.close()
            if code not in (0, -signal.SIGTERM):
                print(f"warning: {label} exited with {code}:\n{server.tail()}", file=sys.stderr)


def first_line(process: subprocess.Popen[str], timeout: float = START_TIMEOUT) -> str:
    """The first line a starting server prints on stdout (its address), stripped; "" if it
    exits, or ``timeout`` seconds pass, first."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    line = ""
    while time.monotonic() < deadline and process.poll() is None and not line:
        line = process.stdout.readline().strip()
    return line


@contextlib.contextmanager
def plain_server(module: str, *args: str) -> Iterator[str]:
    """``python -m MODULE ARGS``, a benchmark's plain peer server that prints its address
    (:func:`serve_until_stopped`), stopped at the end; its address."""
    process = subprocess.Popen(
        [sys.executable, "-m", module, *args], stdout=subprocess.PIPE, text=True,
        env=python_env(), start_new_session=True,  # a terminal's Ctrl-C: the orchestrator's
    )  # fmt: skip
    try:
        address = first_line(process)
        if ":" not in address:
            raise RuntimeError(f"{module} did not start (exit status {process.poll()})")
        yield address
    finally:
        stop_process(process)
        if process.stdout:
            process.stdout.close()


async def serve_until_stopped(server: Any) -> None:
    """Start a grpclib ``server`` on 127.0.0.1:0 in this asyncio loop, print its address, and
    serve until SIGINT or SIGTERM."""
    await server.start("127.0.0.1", 0)
    assert server._server is not None
    host, port = server._server.sockets[0].getsockname()[:2]
    print(f"{host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    await server.wait_closed()


# --- client helpers (asyncio, grpclib) -----------------------------------------------------------


def raw_codec() -> Any:
    """A grpclib client codec that hands each reply over undecoded."""
    from grpclib.encoding.proto import ProtoCodec

    class RawReplies(ProtoCodec):
        def decode(self, data: bytes, message_type: Any) -> Any:
            return data

    return RawReplies()


async def timed_raw_calls(
    address: str, path: str, request: Any, reply_class: type, calls: int, *, warm_up: int = 0
) -> tuple[list[float], bytes]:
    """``calls`` unary calls of ``request`` to ``path`` one after the other (after ``warm_up``
    more), replies left undecoded: each call's milliseconds, and the last reply's bytes."""
    from grpclib.client import Channel, UnaryUnaryMethod

    host, _, port = address.rpartition(":")
    channel = Channel(host, int(port), codec=raw_codec())
    method: Any = UnaryUnaryMethod(channel, path, type(request), reply_class)
    times, reply = [], b""
    try:
        for _ in range(warm_up):
            await method(request, timeout=START_TIMEOUT)
        for _ in range(calls):
            started = time.perf_counter()
            reply = await method(request, timeout=START_TIMEOUT)
            times.append((time.perf_counter() - started) * 1000)
    finally:
        channel.close()
    return times, reply


def run_spec(
    dag_json: str, *, breakpoints: Sequence[str] = (), seed: int = 7, inputs: Any = None
) -> Any:
    from foundry.proto import runtime_api as api
    from foundry.proto.generated.google.protobuf import Struct

    return api.RunSpec(
        dag_json=dag_json,
        inputs=Struct.from_dict(inputs or {}),
        seed=seed,
        labels={"bench": "1"},
        breakpoints=list(breakpoints),
    )


def payload_of(event: Any) -> dict[str, Any]:
    """A RunEvent's payload (a google.protobuf.Value) as a plain dict."""
    value = event.payload.to_dict() if event.payload is not None else {}
    return value if isinstance(value, dict) else {}


def dag_json(steps: Sequence[dict[str, Any]]) -> str:
    return json.dumps({"steps": list(steps)})


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid`` (Linux /proc); 0 if unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


# --- statistics ---------------------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` in [0, 1]) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, int(round(fraction * len(ordered) + 0.5)) - 1))
    return ordered[rank]


def ceiling_met(figure: Figure, ceiling: float) -> str:
    """For a note: is the figure's median within ``ceiling``?"""
    return "met" if figure.median <= ceiling else "NOT met"
