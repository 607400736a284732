"""``foundry run …``: submit, find, inspect, follow, wait for and cancel FleetForge runs.

Exit codes of the commands that wait for a run (``run wait``, ``run submit --wait``): 0 the run
succeeded, 1 it failed or was cancelled, 3 it paused at a breakpoint (a resume hint is printed).
"""

from __future__ import annotations

import argparse
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import betterproto2
from foundry.kernel.cli.common import int64, read_text_file, whole_number
from foundry.kernel.cli.output import message_dict, short_json, stamp
from foundry.kernel.core.json_input import each_key_once, same_json
from foundry.kernel.core.numbers import restore_ints
from foundry.kernel.errors import ConfigError, FoundryError
from foundry.proto import runtime_api as api
from foundry.proto.generated.google.protobuf import Struct, Timestamp

TERMINAL = {api.RunStatus.SUCCEEDED, api.RunStatus.FAILED, api.RunStatus.CANCELED}
PAUSED_EXIT = 3  # ``run wait`` / ``submit --wait``: the run paused at a breakpoint
STATUSES = {s.name.lower(): s for s in api.RunStatus if s != api.RunStatus.UNSPECIFIED}


def add_run_commands(commands: Any, client: Any, client_options: Any) -> None:
    run = commands.add_parser("run", help="FleetForge runs")
    verbs = run.add_subparsers(dest="verb", required=True, metavar="VERB")

    submit = verbs.add_parser("submit", help="submit a DAG (a JSON file, or - for stdin)")
    submit.add_argument("dag_file")
    submit.add_argument("--inputs", default="{}", help="run inputs, a JSON object")
    submit.add_argument("--seed", type=int64, default=0)
    submit.add_argument("--label", action="append", default=[], metavar="K=V")
    submit.add_argument("--breakpoint", action="append", default=[], metavar="STEP")
    submit.add_argument("--idempotency-key", default="")
    submit.add_argument(
        "--wait", action="store_true", help="follow the run until it ends (exit 0/1) or pauses (3)"
    )
    client_options(submit)
    submit.set_defaults(handler=client(cmd_submit))

    get = verbs.add_parser("get", help="a run and its steps")
    get.add_argument("run_id")
    client_options(get)
    get.set_defaults(handler=client(cmd_get))

    found = verbs.add_parser("list", help="runs, newest first, with filters and paging")
    found.add_argument("--status", action="append", default=[], choices=sorted(STATUSES),
                       help="only runs in this status (repeatable: any of them)")  # fmt: skip
    found.add_argument("--label", action="append", default=[], metavar="K=V",
                       help="only runs with this label (repeatable: all of them)")  # fmt: skip
    found.add_argument("--parent", default="", metavar="RUN_ID", help="only branches of this run")
    found.add_argument("--since", type=_when, metavar="TIME",
                       help="created at or after TIME: ISO 8601 (UTC unless it says), "
                       "or an age like 30m, 2h, 7d")  # fmt: skip
    found.add_argument("--until", type=_when, metavar="TIME", help="created before TIME")
    found.add_argument("--limit", type=lambda s: whole_number(s, maximum=1000), default=20,
                       help="runs per page (default 20, at most 1000)")  # fmt: skip
    found.add_argument("--page-token", default="", help="the next page (printed after a page)")
    client_options(found)
    found.set_defaults(handler=client(cmd_list))

    wait = verbs.add_parser(
        "wait", help="wait until a run ends (exit 0 succeeded, 1 failed or cancelled) or pauses "
        "at a breakpoint (exit 3)",
    )  # fmt: skip
    wait.add_argument("run_id")
    client_options(wait)
    wait.set_defaults(handler=client(cmd_wait))

    cancel = verbs.add_parser(
        "cancel", help="cancel an unfinished run (running mutator steps get the shutdown grace)"
    )
    cancel.add_argument("run_id")
    cancel.add_argument("--reason", default="", help="recorded with the cancel")
    client_options(cancel)
    cancel.set_defaults(handler=client(cmd_cancel))

    tap = verbs.add_parser("tap", help="follow a run's events live, from its first one")
    tap.add_argument("run_id")
    client_options(tap)
    tap.set_defaults(handler=client(cmd_tap))

    points = verbs.add_parser("breakpoints", help="add, remove or clear a live run's breakpoints")
    points.add_argument("run_id")
    points.add_argument("--add", action="append", default=[], metavar="STEP")
    points.add_argument("--remove", action="append", default=[], metavar="STEP")
    points.add_argument("--clear", action="store_true", help="remove every breakpoint first")
    client_options(points)
    points.set_defaults(handler=client(cmd_breakpoints))

    patch = verbs.add_parser("patch", help="patch a step of a paused run")
    patch.add_argument("run_id")
    patch.add_argument("step_id")
    patch.add_argument("--inputs", help="JSON merge patch for the step's inputs")
    patch.add_argument("--env", help="JSON object of env vars to set")
    patch.add_argument("--model", help="model override")
    patch.add_argument("--note", default="")
    client_options(patch)
    patch.set_defaults(handler=client(cmd_patch))

    resume = verbs.add_parser("resume", help="continue a paused run")
    resume.add_argument("run_id")
    client_options(resume)
    resume.set_defaults(handler=client(cmd_resume))

    branch = verbs.add_parser("branch", help="a new run from a step of an old one")
    branch.add_argument("run_id")
    branch.add_argument("--from", dest="from_step", required=True, metavar="STEP")
    branch.add_argument("--seed-mode", choices=("same", "new", "custom"),
                        help="default: custom with --seed, else same")  # fmt: skip
    branch.add_argument("--seed", type=int64, help="the branch's seed (--seed-mode custom)")
    branch.add_argument("--inputs", default="{}", help="JSON merge patch for the run's inputs")
    branch.add_argument("--labels", default="{}", help="JSON object of label changes")
    branch.add_argument("--note", default="")
    client_options(branch)
    branch.set_defaults(handler=client(cmd_branch))

    replay = verbs.add_parser("replay", help="replay a finished run and show per-step drift")
    replay.add_argument("run_id")
    replay.add_argument("--mode", choices=("full", "step_only", "diff"), default="full")
    client_options(replay)
    replay.set_defaults(handler=client(cmd_replay))


def _object(text: str, flag: str) -> dict[str, Any]:
    try:
        value = json.loads(text, object_pairs_hook=each_key_once)
    except ValueError as exc:
        raise ConfigError(f"{flag}: not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{flag}: expected a JSON object")
    return value


def _labels(pairs: list[str]) -> dict[str, str]:
    labels = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise FoundryError(f"--label: expected K=V, got {pair!r}")
        labels[key] = value
    return labels


def _read_dag(path: str) -> str:
    try:
        return read_text_file(path)
    except OSError as exc:
        raise FoundryError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise FoundryError(f"{path}: {exc}") from None


async def cmd_submit(args: argparse.Namespace, stubs: Any) -> int:
    _, runtime = stubs
    spec = api.RunSpec(
        dag_json=_read_dag(args.dag_file),
        inputs=Struct.from_dict(_object(args.inputs, "--inputs")),
        seed=args.seed,
        labels=_labels(args.label),
        breakpoints=args.breakpoint,
    )
    reply = await runtime.submit_run(
        api.SubmitRunRequest(spec=spec, idempotency_key=args.idempotency_key)
    )
    if not args.wait:
        print(json.dumps({"run_id": reply.run_id}) if args.json else reply.run_id)
        return 0
    if not args.json:
        print(f"run {reply.run_id}")
    detail = await wait_for_run(runtime, reply.run_id, on_event=_printer(args.json))
    # The events have shown how it ended; a pause needs saying (and how to go on).
    return _report_end(detail, as_json=args.json, quiet=detail.status in TERMINAL)


async def cmd_get(args: argparse.Namespace, stubs: Any) -> int:
    _, runtime = stubs
    run = (await runtime.get_run(api.GetRunRequest(run_id=args.run_id))).run
    assert run is not None
    if args.json:
        print(json.dumps(_as_json(run), indent=2))
        return 0
    from foundry.kernel.cli.run_view import run_header, run_totals

    for line in run_header(run, await run_totals(runtime.channel, run.run_id)):
        print(line)
    for step in run.steps:
        done = f" → {stamp(step.completed_at)}" if step.completed_at else ""
        print(f"  {step.idx:>3} {step.step_id:<20} {step.type:<10} {step.status:<10} "
              f"attempt {step.attempt}{done}")  # fmt: skip
        if step.output is not None and step.status in ("succeeded", "reused"):
            print(f"        output {_short(step.output.to_dict())}")
        if step.error is not None and step.error.to_dict() is not None:
            print(f"        error  {_short(step.error.to_dict())}")
    return 0


async def cmd_tap(args: argparse.Namespace, stubs: Any) -> int:
    _, runtime = stubs
    await _follow(runtime, args.run_id, as_json=args.json)
    return 0


async def _follow(runtime: Any, run_id: str, *, as_json: bool) -> None:
    show = _printer(as_json)
    async for event in runtime.tap_run(api.TapRunRequest(run_id=run_id)):
        show(event)


def _printer(as_json: bool) -> Any:
    def show(event: Any) -> None:
        payload = restore_ints(event.payload.to_dict()) if event.payload is not None else {}
        if as_json:
            print(json.dumps({"run_id": event.run_id, "step_id": event.step_id,
                              "kind": event.kind, "payload": payload,
                              # as run get --json writes times (proto3 JSON), not str()'s
                              "occurred_at": Timestamp.timestamp_to_json(event.occurred_at)}),
                  flush=True)  # fmt: skip
        else:
            print(_line(event, payload), flush=True)

    return show


def _as_json(message: betterproto2.Message) -> Any:
    """A reply as JSON: 64-bit integers (a seed) and integral doubles as JSON numbers."""
    return message_dict(message)


def _line(event: Any, payload: dict[str, Any]) -> str:
    when = stamp(event.occurred_at)
    step = f" {event.step_id}" if event.step_id else ""
    detail = ""
    if event.kind == "step_leased":
        detail = f"attempt {int(payload.get('attempt', 0))}"
    elif event.kind == "step_completed":
        detail = f"{_short(payload.get('output'))}  ({payload.get('duration_ms', 0):.0f} ms)"
    elif event.kind == "step_interrupted":
        why = "the daemon was killed" if payload.get("crashed") else "the daemon stopped"
        detail = f"attempt {int(payload.get('attempt', 0))}: {why}"
    elif event.kind in ("step_failed", "step_retrying"):
        detail = str((payload.get("error") or {}).get("message", ""))
    elif event.kind == "run_failed":
        detail = str(payload.get("error", ""))
    return f"{when} {event.kind:<15}{step}  {detail}".rstrip()


def _short(value: Any, limit: int = 100) -> str:
    return short_json(value, limit, sort_keys=True)  # compact, as the other summaries


async def cmd_breakpoints(args: argparse.Namespace, stubs: Any) -> int:
    _, runtime = stubs
    reply = await runtime.update_breakpoints(
        api.UpdateBreakpointsRequest(
            run_id=args.run_id, add=args.add, remove=args.remove, clear_all=args.clear
        )
    )
    points = list(reply.breakpoints)
    print(json.dumps({"breakpoints": points}) if args.json else " ".join(points) or "(none)")
    return 0


async def cmd_patch(args: argparse.Namespace, stubs: Any) -> int:
    _, runtime = stubs
    request = api.PatchStepRequest(
        run_id=args.run_id, step_id=args.step_id, model=args.model, note=args.note
    )
    if args.inputs is not None:
        request.inputs_patch = Struct.from_dict(_object(args.inputs, "--inputs"))
    if args.env is not None:
        request.env = Struct.from_dict(_object(args.env, "--env"))
    reply = await runtime.patch_step(request)
    print(json.dumps({"step_id": reply.step_id}) if args.json else f"patched {reply.step_id}")
    return 0


async def cmd_resume(args: argparse.Namespace, stubs: Any) -> int:
    _, runtime = stubs
    reply = await runtime.resume_run(api.ResumeRunRequest(run_id=args.run_id))
    if args.json:
        print(json.dumps(_as_json(reply)))
    else:
        print(f"{reply.status.name}: resumed at {reply.resumed_step_id}")
    return 0


SEED_MODES = {"same": api.BranchSeedMode.SAME, "new": api.BranchSeedMode.NEW,
              "custom": api.BranchSeedMode.CUSTOM}  # fmt: skip
REPLAY_MODES = {"full": api.ReplayMode.FULL, "step_only": api.ReplayMode.STEP_ONLY,
                "diff": api.ReplayMode.DIFF}  # fmt: skip


def _seed_mode(mode: str | None, seed: int | None) -> str:
    """The branch's seed mode: a ``--seed`` is a custom seed (it was sent with mode SAME, and
    the daemon kept the source's seed without a word); with another mode it is an error."""
    if seed is None:
        return mode or "same"
    if mode not in (None, "custom"):
        raise ConfigError(f"--seed: a seed of its own is --seed-mode custom, not {mode}")
    return "custom"


async def cmd_branch(args: argparse.Namespace, stubs: Any) -> int:
    _, runtime = stubs
    reply = await runtime.create_branch_run(
        api.CreateBranchRunRequest(
            run_id=args.run_id,
            from_step=args.from_step,
            seed_mode=SEED_MODES[_seed_mode(args.seed_mode, args.seed)],
            seed=args.seed,
            inputs_patch=Struct.from_dict(_object(args.inputs, "--inputs")),
            labels_patch=Struct.from_dict(_object(args.labels, "--labels")),
            note=args.note,
        )
    )
    print(json.dumps({"run_id": reply.run_id}) if args.json else reply.run_id)
    return 0


async def cmd_replay(args: argparse.Namespace, stubs: Any) -> int:
    _, runtime = stubs
    reply = await runtime.replay_run(
        api.ReplayRunRequest(run_id=args.run_id, mode=REPLAY_MODES[args.mode])
    )
    if args.json:  # (the same exit code: a script reading --json may not read the JSON)
        print(json.dumps(_as_json(reply), indent=2))
        return 0 if reply.all_within_tolerance else 1
    verdict = "all within tolerance" if reply.all_within_tolerance else "DRIFT outside tolerance"
    print(f"replay of {reply.run_id}: {reply.strategy.name.lower()}, {verdict}")
    print(f"  {'step':<20} {'ok':<4} {'Δtokens':>8} {'Δcost':>10}  recorded → current")
    for step in reply.steps:
        d = step.drift
        assert d is not None
        ok = "yes" if d.within_tolerance else "NO"
        recorded, current = _changed(
            d.recorded.to_dict() if d.recorded else None, d.current.to_dict() if d.current else None
        )
        change = "(same)"
        if not same_json(recorded, current):
            change = f"{_short(recorded, 40)} → {_short(current, 40)}"
        print(f"  {step.step_id:<20} {ok:<4} {d.token_delta or 0:>8.0f} {d.cost_delta or 0:>10.6f}"
              f"  {change}")  # fmt: skip
    return 0 if reply.all_within_tolerance else 1


def _changed(recorded: Any, current: Any) -> tuple[Any, Any]:
    """Two objects shown by the keys where they differ (else the two values): a truncated
    rendering of the whole values could hide the difference."""
    if isinstance(recorded, dict) and isinstance(current, dict):
        keys = [k for k in {**recorded, **current} if k not in recorded or k not in current
                or not same_json(recorded[k], current[k])]  # fmt: skip
        return ({k: recorded[k] for k in keys if k in recorded},
                {k: current[k] for k in keys if k in current})  # fmt: skip
    return recorded, current


# --- list, wait, cancel -------------------------------------------------------------------------

_AGE = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _when(text: str) -> datetime:
    """An argparse type: an ISO 8601 time (UTC unless it names an offset) or an age ("2h"), in
    UTC. One past the range of times is refused here (it was a traceback further on)."""
    age = _AGE.fullmatch(text.strip())
    try:
        if age:
            return datetime.now(UTC) - timedelta(seconds=float(age[1]) * _AGE_UNITS[age[2]])
        when = datetime.fromisoformat(text)
        return (when if when.tzinfo else when.replace(tzinfo=UTC)).astimezone(UTC)
    except (OverflowError, ValueError):
        raise argparse.ArgumentTypeError(
            f"not a time, or out of the range of times: {text[:100]!r} (ISO 8601 like "
            "2026-01-31T12:00:00, or an age like 2h)"
        ) from None


async def cmd_list(args: argparse.Namespace, stubs: Any) -> int:
    _, runtime = stubs
    reply = await runtime.list_runs(
        api.ListRunsRequest(
            statuses=[STATUSES[s] for s in args.status],
            labels=_labels(args.label),
            parent_run_id=args.parent,
            created_after=args.since,
            created_before=args.until,
            page_size=args.limit,
            page_token=args.page_token,
        )
    )
    if args.json:
        print(json.dumps(_as_json(reply), indent=2))
        return 0
    if not reply.runs:
        print("no runs match")
    for run in reply.runs:
        print(_run_row(run))
    if reply.next_page_token:
        print(f"more: foundry run list --page-token {reply.next_page_token} (same filters)")
    return 0


def _run_row(run: Any) -> str:
    status = run.status.name
    if run.paused_step:
        status = f"PAUSED at {run.paused_step}"
    extra = []
    if run.labels:
        extra.append(" ".join(f"{k}={v}" for k, v in sorted(run.labels.items())))
    if run.parent_run_id:
        extra.append(f"branch of {run.parent_run_id} at {run.branch_step}")
    if run.error:
        extra.append(f"error: {run.error[:80]}")
    return (f"{run.run_id}  {status:<22} {stamp(run.created_at)}  {run.step_count:>3} steps"
            f"  {'  '.join(extra)}").rstrip()  # fmt: skip


async def cmd_wait(args: argparse.Namespace, stubs: Any) -> int:
    _, runtime = stubs
    detail = await wait_for_run(runtime, args.run_id)
    return _report_end(detail, as_json=args.json)


async def wait_for_run(runtime: Any, run_id: str, *, on_event: Any = None) -> api.RunDetail:
    """The run once it has ended or paused at a breakpoint. Follows its TapRun stream (which
    ends at the terminal event); a ``run_paused`` event is checked against GetRun, since the
    stream's history repeats pauses that were resumed long ago."""
    detail = await _get_run(runtime, run_id)
    if on_event is None and _settled(detail):
        return detail
    async for event in runtime.tap_run(api.TapRunRequest(run_id=run_id)):
        if on_event is not None:
            on_event(event)
        if event.kind == "run_paused":
            detail = await _get_run(runtime, run_id)
            if detail.status == api.RunStatus.PAUSED_AT_STEP:
                return detail
    return await _get_run(runtime, run_id)


def _settled(detail: api.RunDetail) -> bool:
    return detail.status in TERMINAL or detail.status == api.RunStatus.PAUSED_AT_STEP


async def _get_run(runtime: Any, run_id: str) -> api.RunDetail:
    run: api.RunDetail | None = (await runtime.get_run(api.GetRunRequest(run_id=run_id))).run
    assert run is not None
    return run


def _report_end(detail: api.RunDetail, *, as_json: bool, quiet: bool = False) -> int:
    """Print how the run settled (unless ``quiet``); the exit code (module docstring)."""
    paused = detail.status == api.RunStatus.PAUSED_AT_STEP
    hint = f"foundry run resume {detail.run_id}" if paused else ""
    if quiet:
        pass
    elif as_json:
        print(json.dumps({"run_id": detail.run_id, "status": detail.status.name,
                          "paused_step": detail.paused_step, "error": detail.error,
                          "resume": hint}))  # fmt: skip
    elif paused:
        print(f"run {detail.run_id} paused before step {detail.paused_step}: inspect it with "
              f"`foundry run get {detail.run_id}`, continue with `{hint}`")  # fmt: skip
    else:
        error = f": {detail.error}" if detail.error else ""
        print(f"run {detail.run_id} {detail.status.name}{error}")
    if paused:
        return PAUSED_EXIT
    return 0 if detail.status == api.RunStatus.SUCCEEDED else 1


async def cmd_cancel(args: argparse.Namespace, stubs: Any) -> int:
    _, runtime = stubs
    reply = await runtime.cancel_run(api.CancelRunRequest(run_id=args.run_id, reason=args.reason))
    if args.json:
        print(json.dumps(_as_json(reply)))
        return 0
    steps = ", ".join(reply.canceled_steps) or "none were running"
    print(f"run {args.run_id} {reply.status.name} (steps cancelled: {steps})")
    return 0
