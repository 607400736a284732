"""Debugging a run — breakpoints, patches, resume, branches — as pure checks and plans over a
:class:`RunState`. The scheduler records what these return as run events."""

from __future__ import annotations

import json
import secrets
from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any

from foundry.kernel.core.dag import SEED_BITS, check_patch_references, check_step_env
from foundry.kernel.core.json_input import quoted
from foundry.kernel.core.runs import RunState, RunSubmission, merge_patch
from foundry.kernel.errors import FailedPrecondition, InvalidArgument, NotFound


def new_breakpoints(
    run: RunState, add: tuple[str, ...], remove: tuple[str, ...], clear_all: bool
) -> list[str]:
    """The breakpoint set after an update, in DAG order."""
    if run.terminal:
        raise FailedPrecondition(f"run {run.run_id} is {run.status.lower()}; breakpoints apply "
                                 "to live runs")  # fmt: skip
    for field, ids in (("add", add), ("remove", remove)):
        for step_id in ids:
            if step_id not in run.steps:
                unknown = quoted(step_id)
                raise InvalidArgument(f"{field}: unknown step {unknown} in run {run.run_id}")
    points = set() if clear_all else set(run.breakpoints)
    points = (points | set(add)) - set(remove)
    return [s.id for s in run.dag.steps if s.id in points]


def patch_payload(
    run: RunState,
    step_id: str,
    inputs_patch: Mapping[str, Any] | None,
    env: Mapping[str, Any] | None,
    model: str | None,
    note: str,
    allowed_env: Collection[str] = frozenset(),
) -> dict[str, Any]:
    """Check a PatchStep and return the ``step_patched`` event payload. ``allowed_env``: the
    names the step's block lets a run set."""
    step = run.steps.get(step_id)
    if step is None:
        raise NotFound(f"step_id: no step {quoted(step_id)} in run {run.run_id}")
    if run.status != "PAUSED_AT_STEP":
        raise FailedPrecondition(
            f"run {run.run_id} is {run.status.lower()}, not paused: pause it at a breakpoint "
            "before patching"
        )
    if step.status != "pending":
        raise FailedPrecondition(f"step {step_id!r} is {step.status}; only steps that have not "
                                 "run yet can be patched")  # fmt: skip
    if env:
        check_step_env(step_id, env, allowed_env)
    if inputs_patch:
        check_patch_references(run.dag, step_id, merge_patch(step.spec.inputs, inputs_patch))
    return {
        "inputs_patch": dict(inputs_patch or {}),
        "env": dict(env or {}),
        "model": model,
        "note": note,
        "previous": {"inputs": step.spec.inputs, "env": dict(step.spec.env),
                     "model": step.spec.model},
        "source": "PatchStep",
    }  # fmt: skip


def check_resumable(run: RunState) -> str:
    """The step a ResumeRun releases."""
    if run.status != "PAUSED_AT_STEP":
        raise FailedPrecondition(f"run {run.run_id} is {run.status.lower()}, not paused")
    return run.paused_step


def branch_submission(
    source: RunState,
    *,
    run_id: str,
    from_step: str,
    seed_mode: str,
    seed: int | None,
    inputs_patch: Mapping[str, Any],
    labels_patch: Mapping[str, Any],
    note: str,
    created_at: datetime,
) -> RunSubmission:
    if from_step not in source.steps:
        raise NotFound(f"from_step: no step {quoted(from_step)} in run {source.run_id}")
    sub = source.submission
    if seed_mode == "custom":
        if seed is None:
            raise InvalidArgument("seed: seed_mode CUSTOM needs a seed")
        new_seed = seed
    elif seed_mode == "new":
        new_seed = secrets.randbits(SEED_BITS)
    else:
        new_seed = sub.seed
    labels = dict(sub.labels)
    for key, value in labels_patch.items():
        if value is None:
            labels.pop(key, None)
        else:
            labels[key] = value if isinstance(value, str) else json.dumps(value)
    return RunSubmission(
        run_id=run_id,
        dag_json=sub.dag_json,
        inputs=merge_patch(sub.inputs, dict(inputs_patch)),
        seed=new_seed,
        labels=labels,
        breakpoints=(),
        idempotency_key="",
        created_at=created_at,
        parent_run_id=source.run_id,
        branch_step=from_step,
        note=note,
    )


def reusable_steps(source: RunState, from_step: str) -> list[dict[str, Any]]:
    """``step_reused`` payloads: steps outside ``from_step``'s downstream that succeeded."""
    rerun = source.dag.downstream_of(from_step)
    reused = []
    for spec in source.dag.steps:
        step = source.steps[spec.id]
        if spec.id in rerun or not step.succeeded:
            continue
        reused.append({
            "step_id": spec.id, "source_run_id": source.run_id, "attempt": step.attempt,
            "output": step.output, "usage": dict(step.usage), "inputs": step.inputs,
            "seed": step.seed, "model": step.model,
        })  # fmt: skip
    return reused
