"""Controlling a run — breakpoints, patches, resume, branches, cancel — as pure checks and plans
over a :class:`RunState`, and finding runs (ListRuns' query and paging). The scheduler records
what these return as run events; the store answers the query."""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from foundry.kernel.core.dag import (
    SEED_BITS,
    Dag,
    EnvAllowance,
    ModelRefusal,
    StepSpec,
    check_patch_references,
    check_step_env,
    check_step_model,
    no_model_refusal,
)
from foundry.kernel.core.ids import compact_json
from foundry.kernel.core.json_input import quoted
from foundry.kernel.core.planner import (
    MAX_RUN_BYTES,
    MAX_STEP_BYTES,
    Ending,
    ending,
    patch_bytes,
    recorded_total,
)
from foundry.kernel.core.runs import RunState, RunSubmission, StepState, merge_patch, patched_spec
from foundry.kernel.errors import FailedPrecondition, InvalidArgument, NotFound


def new_breakpoints(
    run: RunState, add: tuple[str, ...], remove: tuple[str, ...], clear_all: bool
) -> list[str]:
    """The breakpoint set after an update, in DAG order."""
    if run.terminal:
        raise FailedPrecondition(f"run {run.run_id} is {run.status.lower()}; breakpoints apply "
                                 "to live runs")  # fmt: skip
    if run.canceling:  # its cancel is durable: no step of it starts again
        raise FailedPrecondition(f"run {run.run_id} is being cancelled; breakpoints apply to "
                                 "live runs")  # fmt: skip
    for field, ids in (("add", add), ("remove", remove)):
        for step_id in ids:
            if step_id not in run.steps:
                unknown = quoted(step_id)
                raise InvalidArgument(f"{field}: unknown step {unknown} in run {run.run_id}")
    points = set() if clear_all else set(run.breakpoints)
    points = (points | set(add)) - set(remove)
    return [s.id for s in run.dag.steps if s.id in points]


def patchable_step(run: RunState, step_id: str) -> StepState:
    """The step a PatchStep may patch now (FailedPrecondition or NotFound saying why not)."""
    step = run.steps.get(step_id)
    if step is None:
        raise NotFound(f"step_id: no step {quoted(step_id)} in run {run.run_id}")
    if run.canceling and not run.terminal:  # a patch it acknowledged would never apply
        raise FailedPrecondition(f"run {run.run_id} is being cancelled: its steps will not run")
    if run.status != "PAUSED_AT_STEP":
        raise FailedPrecondition(
            f"run {run.run_id} is {run.status.lower()}, not paused: pause it at a breakpoint "
            "before patching"
        )
    if step.status != "pending":
        raise FailedPrecondition(f"step {step_id!r} is {step.status}; only steps that have not "
                                 "run yet can be patched")  # fmt: skip
    if step.attempt:  # pending again: a stopped daemon left the attempt (step_interrupted)
        raise FailedPrecondition(
            f"step {step_id!r} ran: attempt {step.attempt} was interrupted when the daemon "
            "stopped, and is leased again as it was; only steps that have not run yet can be "
            "patched"
        )
    return step


@dataclass(frozen=True, slots=True)
class MadePatch:
    """A PatchStep's step as patched, its event's payload and the JSON bytes it records."""

    spec: StepSpec  # the step's spec it was made from
    patched: StepSpec
    payload: dict[str, Any]
    recorded: int


def made_patch(
    dag: Dag,
    spec: StepSpec,
    inputs_patch: Mapping[str, Any] | None,
    env: Mapping[str, Any] | None,
    model: str | None,
    note: str,
    max_step: int = MAX_STEP_BYTES,
) -> MadePatch:
    """The patch of a step (``spec``) made and checked, reading nothing else: a worker thread
    makes a large one (an inputs_patch of 180,000 keys held the loop 2-4 s)."""
    patched = patched_spec(spec, inputs_patch, env, model)
    size = len(compact_json(patched.inputs)) if inputs_patch else 0
    if size > max_step:
        raise InvalidArgument(f"inputs_patch: the step's inputs would be {size:,} bytes of JSON "
                              f"once patched, over the step limit of {max_step:,} "
                              "([scheduler] max_step_bytes)")  # fmt: skip
    if inputs_patch:
        check_patch_references(dag, spec.id, patched.inputs)
    payload = {
        "inputs_patch": dict(inputs_patch or {}),
        "env": dict(env or {}),
        "model": model,
        "note": note,
        "previous": {"inputs": spec.inputs, "env": dict(spec.env), "model": spec.model},
        "source": "PatchStep",
    }
    return MadePatch(spec, patched, payload, patch_bytes(payload))


def finished_patch(
    run: RunState,
    step_id: str,
    made: MadePatch,
    env_allowance: EnvAllowance = lambda _: frozenset(),
    max_run: int = MAX_RUN_BYTES,
    model_refusal: ModelRefusal = no_model_refusal,
) -> dict[str, Any]:
    """The ``step_patched`` payload of a patch made (:func:`made_patch` of the step
    :func:`patchable_step` found), if the step's env allows it and the run's budget has room for
    what it records. ``env_allowance``: the names a step's block lets a run set — asked of the
    step as patched, with its whole env: a patch of the inputs that picks another block (a shell
    step's ``command``) must not keep an env the old one allowed and the new one does not. What
    the event records (the patch and the inputs before it) counts toward the run's ``max_run``
    (:func:`patch_bytes`): patches merged into one step, each recording all before it, grew a run
    past its limit (313 MB), refused only at resume."""
    if made.patched.env:
        check_step_env(step_id, made.patched.env, env_allowance(made.patched))
    if made.payload["model"]:  # (a model the patch sets: one set before was checked then)
        check_step_model(made.patched, model_refusal)
    if recorded_total(run) + made.recorded > max_run:
        raise InvalidArgument(f"inputs_patch: recording this patch would take the run's "
                              f"recorded step inputs and outputs past {max_run:,} bytes of JSON "
                              "([scheduler] max_run_bytes)")  # fmt: skip
    return made.payload


def check_resumable(run: RunState) -> str:
    """The step a ResumeRun releases."""
    if run.canceling and not run.terminal:  # durable: it ends, whoever asks to resume it
        raise FailedPrecondition(f"run {run.run_id} is being cancelled, not paused")
    if run.status != "PAUSED_AT_STEP":
        raise FailedPrecondition(f"run {run.run_id} is {run.status.lower()}, not paused")
    return run.paused_step


MAX_LABEL_KEY = 256  # as an id (``message_check.MAX_ID_LENGTH``)


# A run's labels, keys and values, in characters. ListRuns filters by them in the store, which
# reads a whole vector of runs' labels at once (2,048): 24 runs of a 4 MB label made every
# filtered ListRuns run out of [store] memory_limit, for good (a hunt); at 32 KiB a run, 3,000
# runs did. Search attributes, their kin elsewhere, are bounded alike (Temporal: 40 KB).
MAX_LABELS_CHARACTERS = 16_384


def check_labels(labels: Mapping[str, Any], field: str, *, removals: bool = False) -> None:
    """A run's labels (or, ``removals``, a patch of them, where null removes one): each key
    non-empty (ListRuns could not ask for it), each value a string, and keys and values at most
    :data:`MAX_LABELS_CHARACTERS` in all. InvalidArgument naming the label."""
    for key, value in labels.items():
        if not key:
            raise InvalidArgument(f"{field}: a label needs a key (got an empty one)")
        if len(key) > MAX_LABEL_KEY:
            raise InvalidArgument(f"{field}: a label's key is at most {MAX_LABEL_KEY} characters")
        if not isinstance(value, str) and not (removals and value is None):
            got = "null" if value is None else type(value).__name__
            raise InvalidArgument(f"{field}[{quoted(key)}]: a label's value is a string, got {got}")
    check_labels_size(labels, field)


def check_labels_size(labels: Mapping[str, Any], field: str) -> None:
    size = sum(len(key) + len(value or "") for key, value in labels.items())
    if size > MAX_LABELS_CHARACTERS:
        raise InvalidArgument(f"{field}: a run's labels are at most {MAX_LABELS_CHARACTERS:,} "
                              f"characters of keys and values in all, got {size:,}")  # fmt: skip


def branch_seed(seed_mode: str, seed: int | None, source_seed: int) -> int:
    """A branch's seed by its mode (``unspecified``, ``same``, ``new``, ``custom``). A seed with
    no mode is a custom one, as the CLI's ``--seed`` alone; with SAME or NEW it is refused (it
    was dropped without a word: the client would not know which seed its branch ran with)."""
    if seed is not None and seed_mode in ("same", "new"):
        raise InvalidArgument(f"seed: seed_mode {seed_mode.upper()} takes no seed "
                              "(a seed of its own is seed_mode CUSTOM)")  # fmt: skip
    if seed_mode == "custom" or (seed_mode == "unspecified" and seed is not None):
        if seed is None:
            raise InvalidArgument("seed: seed_mode CUSTOM needs a seed")
        return seed
    return secrets.randbits(SEED_BITS) if seed_mode == "new" else source_seed


def branch_submission(
    source: RunState,
    *,
    run_id: str,
    from_step: str,
    seed_mode: str,
    seed: int | None,
    values: tuple[Mapping[str, Any], Mapping[str, str]],
    note: str,
    created_at: datetime,
) -> RunSubmission:
    """The submission of a branch of ``source`` from ``from_step``, of ``values``: its inputs
    and labels (:func:`branched_values`)."""
    check_branchable(source, from_step)
    sub = source.submission
    inputs, labels = values
    return RunSubmission(
        run_id=run_id,
        dag_json=sub.dag_json,
        inputs=dict(inputs),
        seed=branch_seed(seed_mode, seed, sub.seed),
        labels=dict(labels),
        breakpoints=(),
        idempotency_key="",
        created_at=created_at,
        parent_run_id=source.run_id,
        branch_step=from_step,
        note=note,
    )


def check_branchable(source: RunState, from_step: str) -> None:
    """NotFound or FailedPrecondition when ``source`` cannot be branched from ``from_step``."""
    if from_step not in source.steps:
        raise NotFound(f"from_step: no step {quoted(from_step)} in run {source.run_id}")
    check_settled_upstream(source, from_step)


def branched_values(
    sub: RunSubmission,
    inputs_patch: Mapping[str, Any],
    labels_patch: Mapping[str, Any],
    max_inputs_bytes: int,
) -> tuple[dict[str, Any], dict[str, str]]:
    """A branch's inputs (the source's, ``inputs_patch`` merged in), and its labels likewise,
    at most ``max_inputs_bytes`` of JSON each: patch after patch grew a branch's inputs past
    what any client could read back (17.7 MB after four branches). Reads nothing else: a
    worker thread makes large ones (an inputs_patch of 180,000 keys held the loop 1.4 s)."""
    check_labels(labels_patch, "labels_patch", removals=True)
    labels = dict(sub.labels)
    for key, value in labels_patch.items():
        if value is None:
            labels.pop(key, None)
        else:
            labels[key] = value
    if labels_patch:
        check_labels_size(labels, "labels_patch")  # the branch's, once patched
    inputs = merge_patch(sub.inputs, dict(inputs_patch))
    patched = (("inputs", inputs_patch, inputs), ("labels", labels_patch, labels))
    for field, patch, merged in patched:
        if patch and (size := len(compact_json(merged))) > max_inputs_bytes:
            raise InvalidArgument(
                f"{field}_patch: the branch's {field} would be {size:,} bytes of JSON once "
                f"patched, over the step limit of {max_inputs_bytes:,} ([scheduler] max_step_bytes)"
            )
    return inputs, labels


def check_settled_upstream(source: RunState, from_step: str) -> None:
    """A branch reuses what the source's steps outside ``from_step``'s downstream did: none of
    them may be running still — the branch would run it again (a mutator's side effect twice)
    instead of reusing its output."""
    rerun = source.dag.downstream_of(from_step)
    for spec in source.dag.steps:
        if spec.id not in rerun and source.steps[spec.id].status in ("running", "retrying"):
            raise FailedPrecondition(
                f"step {quoted(spec.id)} of run {source.run_id} is still running: branch from "
                f"{quoted(from_step)} once it has finished (the branch reuses its output)"
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


# --- CancelRun ----------------------------------------------------------------------------------


def check_cancelable(run: RunState) -> None:
    """A run can be cancelled until it has ended (cancelling one being cancelled is a no-op)."""
    if run.terminal:
        raise FailedPrecondition(
            f"run {run.run_id} is {run.status.lower()} already; only an unfinished run can be "
            "cancelled"
        )


def run_ending(run: RunState) -> Ending:
    """How a run whose driver is done ends: cancelled once a cancel was requested (whatever its
    steps did meanwhile), else as the planner says."""
    if run.canceling:
        return Ending("run_canceled")
    return ending(run)


# --- ListRuns -----------------------------------------------------------------------------------

RUN_STATUSES = ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELED", "PAUSED_AT_STEP")
PAGE_SIZE = 50  # when the request says 0
MAX_PAGE_SIZE = 1_000
MAX_TOKEN = 512  # characters; ours are about 100


@dataclass(frozen=True, slots=True)
class RunListQuery:
    """Which runs, newest first (``created_at``, then ``run_id``, both descending): every filter
    given holds. ``after``: the last run of the previous page (keyset paging, so a page never
    repeats or skips a run when new runs arrive)."""

    statuses: tuple[str, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    parent_run_id: str = ""
    created_after: datetime | None = None
    created_before: datetime | None = None
    page_size: int = PAGE_SIZE
    after: tuple[datetime, str] | None = None


@dataclass(frozen=True, slots=True)
class RunSummary:
    run_id: str
    status: str
    created_at: datetime
    updated_at: datetime
    labels: Mapping[str, str]
    parent_run_id: str
    branch_step: str
    step_count: int
    paused_step: str  # the step a paused run waits before ("" otherwise)
    error: str  # why a failed run failed ("" otherwise)


MAX_LABEL_FILTERS = 64  # label filters of one ListRuns


def run_list_query(
    *,
    statuses: Sequence[str] = (),
    labels: Mapping[str, str] | None = None,
    parent_run_id: str = "",
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    page_size: int = 0,
    page_token: str = "",
) -> RunListQuery:
    """Check a ListRuns request (InvalidArgument naming the field)."""
    for index, status in enumerate(statuses):
        if status not in RUN_STATUSES:
            raise InvalidArgument(f"statuses[{index}]: unknown run status {quoted(status)}")
    if len(labels or {}) > MAX_LABEL_FILTERS:  # each a condition of the store's one query:
        # 50,000 of them held a query slot for a minute, and four every other read
        raise InvalidArgument(f"labels: at most {MAX_LABEL_FILTERS} label filters, got "
                              f"{len(labels or {}):,}")  # fmt: skip
    for key in labels or {}:
        if not key:
            raise InvalidArgument("labels: a label filter needs a key")
    if page_size < 0 or page_size > MAX_PAGE_SIZE:
        raise InvalidArgument(f"page_size: must be from 0 (the default, {PAGE_SIZE}) to "
                              f"{MAX_PAGE_SIZE}, got {page_size}")  # fmt: skip
    if created_after and created_before and created_after >= created_before:
        raise InvalidArgument("created_after: must be before created_before")
    return RunListQuery(
        statuses=tuple(dict.fromkeys(statuses)),
        labels=tuple(sorted((labels or {}).items())),
        parent_run_id=parent_run_id,
        created_after=created_after,
        created_before=created_before,
        page_size=page_size or PAGE_SIZE,
        after=_decode_token(page_token) if page_token else None,
    )


def run_page(found: Sequence[RunSummary], query: RunListQuery) -> tuple[list[RunSummary], str]:
    """The page (the store reads one run more than a page, to know whether another follows) and
    the token of the next page ("" on the last)."""
    page = list(found[: query.page_size])
    if len(found) <= query.page_size:
        return page, ""
    last = page[-1]
    return page, _encode_token(last.created_at, last.run_id)


def _encode_token(created_at: datetime, run_id: str) -> str:
    text = json.dumps([created_at.isoformat(), run_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _decode_token(token: str) -> tuple[datetime, str]:
    try:
        if len(token) > MAX_TOKEN:
            raise ValueError("too long")
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        decoded = json.loads(raw)
        if not isinstance(decoded, list):  # (a two-key object unpacked to its keys)
            raise ValueError(decoded)
        created_at, run_id = decoded
        when = datetime.fromisoformat(created_at)
        if not isinstance(run_id, str) or when.tzinfo is None or len(run_id) > MAX_TOKEN:
            raise ValueError(run_id)
        run_id.encode()  # a lone surrogate (a JSON escape) is no run id: the store refused it
    except (binascii.Error, ValueError, TypeError, UnicodeError):
        raise InvalidArgument(
            f"page_token: {quoted(token)} is not a next_page_token this daemon gave"
        ) from None
    return when, run_id
