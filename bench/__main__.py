"""``python -m bench [NAME ...] [--quick] [--json]``: run benchmarks, print medians, summarize."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from collections.abc import Sequence

from . import BENCHMARKS, Options, Report, format_report, format_summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"benchmarks to run (default: all of {', '.join(BENCHMARKS)})",
    )
    parser.add_argument("--repetitions", "-n", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument(
        "--quick", action="store_true", help="short runs, to check the benchmarks work"
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r} (known: {', '.join(BENCHMARKS)})")
    if args.repetitions < 1:
        parser.error("--repetitions must be at least 1")
    options = Options(repetitions=args.repetitions, quick=args.quick, verbose=True)
    names = args.names or list(BENCHMARKS)

    load = os.getloadavg()[0]
    header = (
        f"Foundry benchmarks: Python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"load average {load:.2f} at start; medians of {options.repetitions}"
    )
    out = sys.stderr if args.json else sys.stdout
    print(header, file=out, flush=True)
    reports: list[Report] = []
    failed: list[str] = []
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        print(f"\n== {module.TITLE}", file=sys.stderr, flush=True)
        started = time.perf_counter()
        try:
            report: Report = module.run(options)
        except Exception as exc:
            failed.append(name)
            print(f"{name}: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            continue
        report.seconds = time.perf_counter() - started
        reports.append(report)
        print("\n" + format_report(report), file=out, flush=True)

    if args.json:
        document = {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average_at_start": load,
            "repetitions": options.repetitions,
            "reports": [r.as_dict() for r in reports],
            "failed": failed,
        }
        print(json.dumps(document, indent=2))
    elif reports:
        print("\nSummary (medians)\n" + format_summary(reports), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
