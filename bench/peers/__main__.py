"""``python -m bench.peers``: see the package docstring (:mod:`bench.peers`)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .. import REPO, fmt_number, scratch_dir
from ..fleet_daemon import Daemon
from . import ours
from .ours import QUICK, Sizes
from .table import Row, format_markdown, format_table

LANGGRAPH_SIDE = Path(__file__).with_name("langgraph_side.py")
DEFAULT_PEERS_PYTHON = REPO / ".peers-venv" / "bin" / "python"
PEER_TIMEOUT = 900.0
FSYNC_WRITES = 200

Samples = dict[str, list[float]]


def run_langgraph_side(python: Path, sizes: Sizes) -> dict[str, Any]:
    """One repetition of every LangGraph scenario, in the peers' virtualenv."""
    # Absolute but not resolved: the venv's python is a symlink to the base interpreter.
    argv = [str(python.absolute()), "-I", str(LANGGRAPH_SIDE), json.dumps(asdict(sizes))]
    done = subprocess.run(
        argv, stdout=subprocess.PIPE, text=True, timeout=PEER_TIMEOUT, cwd=scratch_dir()
    )
    if done.returncode != 0:
        raise RuntimeError(f"the LangGraph side exited with {done.returncode} (its stderr above)")
    document: dict[str, Any] = json.loads(done.stdout)
    return document


def fsync_median_us(writes: int = FSYNC_WRITES) -> float:
    """Median of ``writes`` × (write 4 KiB, then os.fsync) on one file in a temporary directory."""
    block = os.urandom(4096)
    samples = []
    with (scratch_dir() / "fsync.bin").open("wb", buffering=0) as file:
        for _ in range(writes):
            started = time.perf_counter()
            file.write(block)
            os.fsync(file.fileno())
            samples.append((time.perf_counter() - started) * 1e6)
    return statistics.median(samples)


def _add(samples: Samples, figures: dict[str, Any]) -> None:
    for key, value in figures.items():
        # A list is one repetition's cycles: its median is that repetition's sample.
        sample = statistics.median(value) if isinstance(value, list) else float(value)
        samples.setdefault(key, []).append(sample)


def _median(samples: Samples, key: str) -> float | None:
    values = samples.get(key)
    return statistics.median(values) if values else None


def rows(sizes: Sizes, peer: Samples, mine: Samples) -> list[Row]:
    """The table: each scenario's LangGraph median beside ours (all in ms)."""
    bare = "LangGraph without checkpointer"
    spec: list[tuple[str, str, str, str]] = []  # scenario, LangGraph's key, our key, note
    for n in sizes.chains:
        spec.append((f"{n:,}-step chain, per step", f"chain{n}_sqlite", f"chain{n}", ""))
        spec.append(
            (f"{n:,}-step chain, per step, {bare}", f"chain{n}_memoryless", f"chain{n}", "")
        )
    w = sizes.fan
    spec.append((f"fan-out 1→{w}→1, per task", f"fan{w}_sqlite", f"fan{w}", ""))
    spec.append((f"fan-out 1→{w}→1, per task, {bare}", f"fan{w}_memoryless", f"fan{w}", ""))
    for n in sizes.mutators:
        spec.append(
            (f"{n:,}-step chain of side-effecting steps, per step", f"mut{n}_sqlite", f"mut{n}", "")
        )
    over_grpc = "LangGraph in-process; ours over gRPC to the daemon"
    spec.append(("interrupt → update → resume, per cycle", "cycle", "cycle", over_grpc))
    fork = f"fork at step {sizes.fork // 2:,} of {sizes.fork:,}, run to the end"
    spec.append((fork, "fork", "fork", _fork_note(peer, mine)))
    return [Row(s, "ms", _median(peer, p), _median(mine, o), note) for s, p, o, note in spec]


def _fork_note(peer: Samples, mine: Samples) -> str:
    lookup = _median(peer, "fork_lookup")
    rpc = _median(mine, "fork_rpc")
    found = (
        f" (finding the checkpoint in get_state_history: {fmt_number(lookup)} ms more)"
        if lookup
        else ""
    )
    alone = f" (the RPC alone: {fmt_number(rpc)} ms)" if rpc else ""
    return (
        f"LangGraph in-process: update_state + invoke{found}; "
        f"ours over gRPC: CreateBranchRun → the branch's run_succeeded{alone}"
    )


def _measure_ours(server: Daemon, sizes: Sizes, mine: Samples, errors: list[str]) -> None:
    # Our store may be mid-change: a failing side leaves its cells empty instead of losing the run.
    parts: list[Callable[[], dict[str, float]]] = [
        lambda: ours.measure_in_process(sizes),
        lambda: ours.measure_time_travel(server, sizes),
    ]
    for part in parts:
        try:
            _add(mine, part())
        except Exception as exc:
            errors.append(f"ours: {type(exc).__name__}: {exc}")
            print(f"  ours failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)


def measure(python: Path, sizes: Sizes, repetitions: int) -> tuple[Samples, Samples, Samples, Any]:
    """(LangGraph's samples, ours, fsync µs, the LangGraph side's versions and settings)."""
    peer: Samples = {}
    mine: Samples = {}
    fsync: Samples = {}
    errors: list[str] = []
    about: dict[str, Any] = {}
    with ours.time_travel_daemon() as server:
        for rep in range(repetitions):
            print(f"  rep {rep + 1}/{repetitions}: LangGraph …", file=sys.stderr, flush=True)
            document = run_langgraph_side(python, sizes)
            about = {"versions": document["versions"], "settings": document["settings"]}
            _add(peer, document["figures"])
            print(f"  rep {rep + 1}/{repetitions}: ours …", file=sys.stderr, flush=True)
            _measure_ours(server, sizes, mine, errors)
            _add(fsync, {"fsync_us": fsync_median_us()})
    about["errors"] = errors
    return peer, mine, fsync, about


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, to check it works")
    parser.add_argument("--repetitions", "-n", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    parser.add_argument(
        "--peers-python",
        type=Path,
        default=DEFAULT_PEERS_PYTHON,
        help="the peers' virtualenv's python (default .peers-venv/bin/python; make bench-peers "
        "creates it)",
    )
    args = parser.parse_args(argv)
    if args.repetitions < 1:
        parser.error("--repetitions must be at least 1")
    if not args.peers_python.exists():
        parser.error(f"--peers-python {args.peers_python} does not exist: run `make bench-peers`")
    sizes = QUICK if args.quick else Sizes()
    load = os.getloadavg()[0]
    peer, mine, fsync, about = measure(args.peers_python, sizes, args.repetitions)
    versions = ", ".join(f"{k} {v}" for k, v in about["versions"].items())
    settings = about["settings"]
    print(
        f"LangGraph vs ours: Python {platform.python_version()}, {os.cpu_count()} CPUs, load "
        f"average {load:.2f} at start; medians of {args.repetitions}; fsync median "
        f"{_median(fsync, 'fsync_us'):,.0f} µs (4 KiB write + fsync)\n"
        f"{versions}; SQLite {settings['sqlite']}, journal_mode={settings['journal_mode']}, "
        f"synchronous={settings['synchronous']}; the LangGraph column is SqliteSaver with "
        'durability="sync" unless its row says otherwise\n'
    )
    table = rows(sizes, peer, mine)
    print(format_table(table))
    if args.markdown:
        print("\n" + format_markdown(table))
    for error in about["errors"]:
        print(f"error: {error}")
    return 1 if about["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
