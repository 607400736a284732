"""``foundry run get``'s header: status, times, seed, labels, breakpoints, where a paused run
waits, why a failed one failed, a branch's source, and the run's token and cost totals (from the
``steps`` view, through the daemon's Analytics service; left out when that cannot answer)."""

from __future__ import annotations

import json
from typing import Any

from foundry.kernel.cli.output import stamp
from foundry.proto import analytics_api
from foundry.proto import runtime_api as api
from grpclib import GRPCError

TOTALS_SQL = """
SELECT CAST(coalesce(sum(tokens_in), 0) AS BIGINT) AS tokens_in,
       CAST(coalesce(sum(tokens_out), 0) AS BIGINT) AS tokens_out,
       round(coalesce(sum(cost), 0), 6) AS cost
FROM steps WHERE run_id = $run_id AND last_event = 'step_completed'
"""


async def run_totals(channel: Any, run_id: str) -> dict[str, float] | None:
    """Tokens in and out and cost over the run's completed steps; None if not available."""
    analytics = analytics_api.AnalyticsStub(channel, timeout=5.0)
    try:
        reply = await analytics.query(
            analytics_api.QueryRequest(sql=TOTALS_SQL, params={"run_id": run_id})
        )
    except (GRPCError, OSError):
        return None
    if not reply.rows_json:
        return None
    tokens_in, tokens_out, cost = json.loads(reply.rows_json[0])
    return {"tokens_in": tokens_in, "tokens_out": tokens_out, "cost": cost}


def run_header(run: api.RunDetail, totals: dict[str, float] | None) -> list[str]:
    spec = run.spec or api.RunSpec()
    lines = [f"run {run.run_id}  {run.status.name}  created {stamp(run.created_at)}  "
             f"updated {stamp(run.updated_at)}"]  # fmt: skip
    labels = ", ".join(f"{k}={v}" for k, v in sorted(spec.labels.items())) or "(none)"
    lines.append(f"  seed {spec.seed}  labels {labels}")
    lines.append(f"  breakpoints {', '.join(spec.breakpoints) or '(none)'}")
    paused = getattr(run, "paused_step", "")
    if paused:
        lines.append(f"  paused before {paused}: `foundry run resume {run.run_id}` continues")
    parent = getattr(run, "parent_run_id", "")
    if parent:
        lines.append(f"  branched from {parent} at step {getattr(run, 'branch_step', '')}")
    error = getattr(run, "error", "")
    if error:
        lines.append(f"  error {error}")
    if totals is not None:
        lines.append(f"  tokens {totals['tokens_in']} in, {totals['tokens_out']} out  "
                     f"cost {totals['cost']:.6f}")  # fmt: skip
    return lines
