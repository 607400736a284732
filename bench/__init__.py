"""Foundry benchmarks: ``make bench`` (``python -m bench``) runs every module in ``BENCHMARKS``.

Each benchmark module defines ``NAME``, ``TITLE`` and ``run(options) -> Report``. A report holds
figures (each with its raw samples; the median is what is printed), ratios between peers measured
in the same run, and notes. Benchmarks bind only 127.0.0.1 with port 0, work in temporary
directories (:func:`scratch_dir`, removed at exit), and stop every process they start.
"""

from __future__ import annotations

import atexit
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

# Benchmark modules, in the order ``python -m bench`` runs them (FleetForge ones are added here).
BENCHMARKS: tuple[str, ...] = (
    "engine_throughput", "emit_rpc", "emit_connect", "run_overhead", "tap_latency", "time_travel",
    "hostile_input", "gate_check", "eval_run", "analytics_ingest", "analytics_query", "attest",
    "otel_overhead", "memory_soak", "status_poll",
)  # fmt: skip


_SCRATCH: list[str] = []


def scratch_dir() -> Path:
    """A temporary directory, removed when the benchmark process exits — not at once: deleting
    thousands of trace files makes ext4 slow to create files for the next ~30 s (new inodes skip
    recently freed ones, scanning past each), which would bleed into the next measurement."""
    if not _SCRATCH:
        atexit.register(_remove_scratch)
    _SCRATCH.append(tempfile.mkdtemp(prefix="foundry-bench-"))
    return Path(_SCRATCH[-1])


def _remove_scratch() -> None:
    for path in _SCRATCH:
        shutil.rmtree(path, ignore_errors=True)


@dataclass(frozen=True)
class Options:
    repetitions: int = 3
    quick: bool = False  # smaller runs, for checking that a benchmark works
    verbose: bool = True  # progress lines on stderr


@dataclass
class Figure:
    name: str
    unit: str
    samples: list[float]
    target: float | None = None  # a floor: the median should be at least this
    note: str = ""
    ceiling: float | None = None  # for lower-is-better figures: the median should be at most this

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def met(self) -> bool | None:
        if self.target is None and self.ceiling is None:
            return None
        floor_ok = self.target is None or self.median >= self.target
        ceiling_ok = self.ceiling is None or self.median <= self.ceiling
        return floor_ok and ceiling_ok

    @property
    def verdict(self) -> str:
        if self.met is None:
            return ""
        if self.target is not None and self.median < self.target:
            return "BELOW TARGET"
        return "ABOVE TARGET" if not self.met else "ok"

    @property
    def target_text(self) -> str:
        parts = []
        if self.target is not None:
            parts.append(f">= {fmt_number(self.target)}")
        if self.ceiling is not None:
            parts.append(f"<= {fmt_number(self.ceiling)}")
        return ", ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "unit": self.unit,
            "median": self.median,
            "samples": self.samples,
            "target": self.target,
            "ceiling": self.ceiling,
            "met": self.met,
            "note": self.note,
        }


@dataclass
class Ratio:
    name: str
    numerator: str
    denominator: str
    value: float
    target: float | None = None

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.value >= self.target

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "numerator": self.numerator,
            "denominator": self.denominator,
            "value": self.value,
            "target": self.target,
            "met": self.met,
        }


@dataclass
class Report:
    benchmark: str
    title: str
    figures: list[Figure] = field(default_factory=list)
    ratios: list[Ratio] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def figure(self, name: str) -> Figure:
        return next(f for f in self.figures if f.name == name)

    def ratio(
        self, name: str, numerator: str, denominator: str, target: float | None = None
    ) -> None:
        value = self.figure(numerator).median / self.figure(denominator).median
        self.ratios.append(Ratio(name, numerator, denominator, value, target))

    def as_dict(self) -> dict[str, Any]:
        return {
            "benchmark": self.benchmark,
            "title": self.title,
            "seconds": round(self.seconds, 2),
            "figures": [f.as_dict() for f in self.figures],
            "ratios": [r.as_dict() for r in self.ratios],
            "notes": self.notes,
        }


def fsync_samples_ms(directory: Path, count: int = 200, pause: float = 0.0) -> list[float]:
    """This machine's durability floor, for same-run comparisons: ``count`` appends of 4 KiB to
    one file in ``directory``, each followed by ``fdatasync`` (what the store's journal does per
    group commit); the milliseconds each took. ``pause``: seconds slept after each — a virtual
    disk may answer a flush that follows another at once several times faster than one that
    comes after a pause (on the 2-core CI machine, 0.06 ms back to back, ~0.5–1 ms 0.3 ms
    apart), so a workload's own pace decides which of the two it pays."""
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    block = b"x" * 4096
    taken = []
    try:
        for _ in range(count):
            started = time.perf_counter()
            os.write(fd, block)
            os.fdatasync(fd)
            taken.append((time.perf_counter() - started) * 1000)
            if pause:
                time.sleep(pause)
    finally:
        os.close(fd)
        path.unlink()
    return taken


def progress(options: Options, text: str) -> None:
    if options.verbose:
        print(f"  {text}", file=sys.stderr, flush=True)


def fmt_number(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:,.1f}"
    return f"{value:,.2f}"


def verdict(met: bool | None) -> str:
    return {None: "", True: "ok", False: "BELOW TARGET"}[met]


def format_report(report: Report) -> str:
    lines = [f"{report.title}  ({report.seconds:.1f} s)"]
    for f in report.figures:
        samples = ", ".join(fmt_number(s) for s in f.samples)
        target = f"  target {f.target_text} {f.verdict}" if f.target_text else ""
        lines.append(f"  {f.name:<34} {fmt_number(f.median):>10} {f.unit:<9} [{samples}]{target}")
        if f.note:
            lines.append(f"  {'':<34} {f.note}")
    for r in report.ratios:
        target = f"  target >= {r.target:g}x {verdict(r.met)}" if r.target else ""
        lines.append(f"  {r.name:<34} {r.value:>10.2f}x  ({r.numerator} / {r.denominator}){target}")
    lines.extend(f"  note: {n}" for n in report.notes)
    return "\n".join(lines)


def format_summary(reports: Sequence[Report]) -> str:
    rows = [("benchmark", "figure", "median", "unit", "target", "")]
    for report in reports:
        for f in report.figures:
            target = f.target_text
            rows.append((report.benchmark, f.name, fmt_number(f.median), f.unit, target, f.verdict))
        for r in report.ratios:
            target = f"{r.target:g}x" if r.target else ""
            rows.append((report.benchmark, r.name, f"{r.value:.2f}", "x", target, verdict(r.met)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    aligns = ["<", "<", ">", "<", ">", "<"]
    out = []
    for index, row in enumerate(rows):
        cells = [f"{cell:{a}{w}}" for cell, a, w in zip(row, aligns, widths, strict=True)]
        out.append("  ".join(cells).rstrip())
        if index == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def python_env(**extra: str) -> dict[str, str]:
    """The environment for a benchmark subprocess: the repo importable, no stray daemon address."""
    env = {**os.environ, **extra}
    env.pop("FOUNDRY_ADDR", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    return env


def stop_process(process: subprocess.Popen[Any], *, grace: float = 15.0) -> int | None:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL. Returns the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    return process.returncode


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def median_interval(
    samples: Sequence[float], confidence: float = 0.9, resamples: int = 2_000, seed: int = 0
) -> tuple[float, float]:
    """A bootstrap interval of the median of ``samples``: the medians of ``resamples`` draws
    (with replacement, as many as there are samples), their ``(1 - confidence) / 2`` and
    ``(1 + confidence) / 2`` quantiles. Seeded: the same samples give the same interval. On a
    host whose speed swings from run to run, it says whether a median differs from a target
    by more than the run's own scatter."""
    if not samples:
        raise ValueError("median_interval: no samples")
    draw = random.Random(seed)
    medians = sorted(
        statistics.median(draw.choices(samples, k=len(samples))) for _ in range(resamples)
    )
    tail = (1 - confidence) / 2
    low = medians[int(tail * (resamples - 1))]
    high = medians[int((1 - tail) * (resamples - 1) + 0.5)]
    return low, high


def against_ceiling(interval: tuple[float, float], ceiling: float) -> str:
    """Whether a median's interval (:func:`median_interval`) lies under ``ceiling``, over it,
    or across it — for the run it comes from: on a host whose speed drifts, another run's
    interval can lie elsewhere (compare runs too)."""
    low, high = interval
    if high <= ceiling:
        return "under the target beyond this run's scatter"
    if low > ceiling:
        return "over the target beyond this run's scatter"
    return "this run's scatter spans the target"
