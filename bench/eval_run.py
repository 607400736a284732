"""``foundry eval run`` overhead per scenario beyond the runs themselves, on a real daemon.

A pack of ``SCENARIOS`` one-step scenarios (a ``transform`` step, so a run costs little) is run
with ``foundry eval run --repeat 1`` at a fresh commit; in the same repetition the same number of
runs is submitted and awaited directly over gRPC (SubmitRun, then GetRun until finished). The
overhead per scenario is (eval run wall time − direct runs' wall time − one CLI start) /
scenarios: syncing the pack, recording each result (judging it in the gate actor) and the table.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

from . import Figure, Options, Report, progress, python_env, scratch_dir
from .fleet_daemon import daemon

NAME = "eval_run"
TITLE = "foundry eval run: overhead per scenario beyond the runs"
SCENARIOS = 20
QUICK_SCENARIOS = 5
DAG = {"steps": [{"id": "t", "type": "transform", "inputs": {"value": "${inputs.n}"}}]}


def run(options: Options) -> Report:
    count = QUICK_SCENARIOS if options.quick else SCENARIOS
    pack = _write_pack(scratch_dir() / "pack.json", count)
    eval_s, direct_s, cli_s = [], [], []
    with daemon("") as server:
        for rep in range(options.repetitions):
            progress(options, f"repetition {rep + 1}: {count} scenarios via eval run and direct")
            cli_s.append(_timed_cli(server.address, ["blocks"]))
            eval_s.append(_timed_cli(server.address, ["eval", "run", str(pack), "--commit",
                                                      f"bench{rep}"]))  # fmt: skip
            direct_s.append(asyncio.run(_direct(server.address, count, rep)))
    per_scenario = [
        max(0.0, (e - d - c) / count * 1000)
        for e, d, c in zip(eval_s, direct_s, cli_s, strict=True)
    ]
    report = Report(NAME, TITLE)
    report.figures += [
        Figure("eval run overhead per scenario", "ms", per_scenario),
        Figure(f"eval run of {count} scenarios, wall", "s", eval_s),
        Figure(f"the same {count} runs submitted and awaited directly", "s", direct_s),
        Figure("one CLI start (foundry blocks)", "s", cli_s),
    ]
    return report


def _write_pack(path: Path, count: int) -> Path:
    scenarios = [
        {"slug": f"s{i}", "run_spec": {"dag": json.dumps(DAG), "inputs": {"n": i}},
         "expected": {"status": "succeeded", "steps": {"t": {"equals": i}}}}
        for i in range(count)
    ]  # fmt: skip
    path.write_text(json.dumps({"pack": "bench", "scenarios": scenarios}))
    return path


def _timed_cli(address: str, args: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "foundry.kernel.cli", *args],
        capture_output=True, text=True, env={**python_env(), "FOUNDRY_ADDR": address}, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"foundry {' '.join(args)} failed: {done.stderr[-500:]}")
    return time.perf_counter() - started


async def _direct(address: str, count: int, rep: int) -> float:
    from foundry.kernel.edge.grpc.client import connect
    from foundry.proto import runtime_api as api
    from foundry.proto.generated.google.protobuf import Struct

    terminal = {api.RunStatus.SUCCEEDED, api.RunStatus.FAILED, api.RunStatus.CANCELED}
    started = time.perf_counter()
    async with connect(address) as (_, runtime):
        run_ids = []
        for i in range(count):
            spec = api.RunSpec(dag_json=json.dumps(DAG), inputs=Struct.from_dict({"n": i}))
            reply = await runtime.submit_run(
                api.SubmitRunRequest(spec=spec, idempotency_key=f"direct:{rep}:{i}")
            )
            run_ids.append(reply.run_id)
        for run_id in run_ids:
            while True:
                got = await runtime.get_run(api.GetRunRequest(run_id=run_id))
                if got.run is not None and got.run.status in terminal:
                    break
                await asyncio.sleep(0.01)
    return time.perf_counter() - started
