"""``foundry run …``: submit, inspect and follow FleetForge runs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import betterproto2

from foundry.proto import runtime_api as api
from foundry.proto.generated.google.protobuf import Struct

from .errors import FoundryError

TERMINAL = {api.RunStatus.SUCCEEDED, api.RunStatus.FAILED, api.RunStatus.CANCELED}


def add_run_commands(commands: Any, client: Any, client_options: Any) -> None:
    run = commands.add_parser("run", help="FleetForge runs")
    verbs = run.add_subparsers(dest="verb", required=True, metavar="VERB")

    submit = verbs.add_parser("submit", help="submit a DAG (a JSON file, or - for stdin)")
    submit.add_argument("dag_file")
    submit.add_argument("--inputs", default="{}", help="run inputs, a JSON object")
    submit.add_argument("--seed", type=int, default=0)
    submit.add_argument("--label", action="append", default=[], metavar="K=V")
    submit.add_argument("--breakpoint", action="append", default=[], metavar="STEP")
    submit.add_argument("--idempotency-key", default="")
    submit.add_argument("--wait", action="store_true", help="follow the run until it ends")
    client_options(submit)
    submit.set_defaults(handler=client(cmd_submit))

    get = verbs.add_parser("get", help="a run and its steps")
    get.add_argument("run_id")
    client_options(get)
    get.set_defaults(handler=client(cmd_get))

    tap = verbs.add_parser("tap", help="follow a run's events live, from its first one")
    tap.add_argument("run_id")
    client_options(tap)
    tap.set_defaults(handler=client(cmd_tap))


def _object(text: str, flag: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise FoundryError(f"{flag}: not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise FoundryError(f"{flag}: expected a JSON object")
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
    import sys

    try:
        return sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as exc:
        raise FoundryError(f"{path}: cannot read: {exc.strerror}") from None


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
    await _follow(runtime, reply.run_id, as_json=args.json)
    detail = (await runtime.get_run(api.GetRunRequest(run_id=reply.run_id))).run
    return 0 if detail and detail.status == api.RunStatus.SUCCEEDED else 1


async def cmd_get(args: argparse.Namespace, stubs: Any) -> int:
    _, runtime = stubs
    run = (await runtime.get_run(api.GetRunRequest(run_id=args.run_id))).run
    assert run is not None
    if args.json:
        print(json.dumps(run.to_dict(casing=betterproto2.Casing.SNAKE,
                                     include_default_values=True), indent=2))  # fmt: skip
        return 0
    print(f"run {run.run_id}  {run.status.name}  created {run.created_at}  updated {run.updated_at}")
    for step in run.steps:
        done = f" → {step.completed_at}" if step.completed_at else ""
        print(f"  {step.idx:>3} {step.step_id:<20} {step.type:<10} {step.status:<10} "
              f"attempt {step.attempt}{done}")  # fmt: skip
        if step.output is not None and step.status == "succeeded":
            print(f"        output {_short(step.output.to_dict())}")
        if step.error is not None and step.error.to_dict() is not None:
            print(f"        error  {_short(step.error.to_dict())}")
    return 0


async def cmd_tap(args: argparse.Namespace, stubs: Any) -> int:
    _, runtime = stubs
    await _follow(runtime, args.run_id, as_json=args.json)
    return 0


async def _follow(runtime: Any, run_id: str, *, as_json: bool) -> None:
    async for event in runtime.tap_run(api.TapRunRequest(run_id=run_id)):
        payload = event.payload.to_dict() if event.payload is not None else {}
        if as_json:
            print(json.dumps({"run_id": event.run_id, "step_id": event.step_id,
                              "kind": event.kind, "payload": payload,
                              "occurred_at": str(event.occurred_at)}), flush=True)  # fmt: skip
        else:
            print(_line(event, payload), flush=True)


def _line(event: Any, payload: dict[str, Any]) -> str:
    when = event.occurred_at.strftime("%H:%M:%S.%f")[:-3] if event.occurred_at else ""
    step = f" {event.step_id}" if event.step_id else ""
    detail = ""
    if event.kind == "step_leased":
        detail = f"attempt {int(payload.get('attempt', 0))}"
    elif event.kind == "step_completed":
        detail = f"{_short(payload.get('output'))}  ({payload.get('duration_ms', 0):.0f} ms)"
    elif event.kind in ("step_failed", "step_retrying"):
        detail = str((payload.get("error") or {}).get("message", ""))
    elif event.kind == "run_failed":
        detail = str(payload.get("error", ""))
    return f"{when} {event.kind:<15}{step}  {detail}".rstrip()


def _short(value: Any, limit: int = 100) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."
