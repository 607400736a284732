"""``foundry watch`` and ``foundry trace``: events as they happen, and a chain's trace — finished,
or (``--follow``) growing.

``watch --since`` prints a backlog from the daemon's store (``Admin.ListEvents``) before the live
events: the live stream is requested first (an event committed while the backlog is read then
comes live) and events are de-duplicated by id, so one in both is shown once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from foundry.kernel.cli.output import duration, message_dict, note, print_json, short_json, stamp
from foundry.kernel.core.since import parse_since
from foundry.kernel.errors import FoundryError
from foundry.proto import admin_api, foundry_api
from grpclib import GRPCError
from grpclib.const import Status

THROTTLE_NAMES = {"full": foundry_api.Throttle.FULL, "audit_only": foundry_api.Throttle.AUDIT_ONLY,
                  "dry_run": foundry_api.Throttle.DRY_RUN}  # fmt: skip
FINISHED = ("completed", "failed")
POLL_SECONDS = 0.25
BACKLOG_LIMIT = 1000


def add_live_commands(commands: Any, client: Any, client_options: Any) -> None:
    watch = commands.add_parser("watch", help="stream events live (Ctrl-C to stop)")
    watch.add_argument("--project", default="", help="only this project's events")
    watch.add_argument(
        "--since",
        type=_since,
        default="",
        metavar="WHEN",
        help="first show stored events since WHEN: a duration back (90s, 15m, 2h, 1d) or an "
        "RFC 3339 time (2026-01-02T03:04:05Z)",
    )
    client_options(watch)
    watch.set_defaults(handler=client(cmd_watch))

    trace = commands.add_parser("trace", help="the trace of a chain (--follow: as it grows)")
    trace.add_argument("event_id", help="the chain's root event id (its workflow id)")
    trace.add_argument(
        "--follow", action="store_true", help="show a running chain as it grows, until it ends"
    )
    client_options(trace)
    trace.set_defaults(handler=client(cmd_trace))


# --- watch ---------------------------------------------------------------------------------------


def _since(text: str) -> str:
    """``--since`` as given (the daemon reads it against its own clock), once it names a time:
    a bad one is a usage error before anything is said to be watched."""
    try:
        parse_since(text, datetime.now(UTC))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("since: ")) from None
    return text


async def cmd_watch(args: argparse.Namespace, stubs: Any) -> int:
    foundry = stubs[0]
    admin = admin_api.AdminStub(foundry.channel)
    project = f"project {args.project}" if args.project else "every project"
    since = f", since {args.since}" if args.since else ""
    await admin.get_version(admin_api.GetVersionRequest())  # a daemon is there before we say so
    note(f"watching {args.addr} ({project}{since}); Ctrl-C to stop")
    live: asyncio.Queue[foundry_api.WatchResponse | BaseException | None] = asyncio.Queue()
    reader = asyncio.create_task(
        _pump(foundry.watch(foundry_api.WatchRequest(project=args.project)), live)
    )
    try:
        seen: set[str] = set()
        if args.since:
            seen = await _backlog(admin, args, as_json=args.json)
        while (item := await live.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            if item.event_id not in seen:
                _print_event(item, as_json=args.json)
            seen.discard(item.event_id)  # a backlog id can reappear live only once
    finally:
        reader.cancel()
    return 0


async def _pump(stream: Any, queue: asyncio.Queue[Any]) -> None:
    try:
        async for item in stream:
            queue.put_nowait(item)
        queue.put_nowait(None)
    except Exception as exc:
        queue.put_nowait(exc)


async def _backlog(admin: Any, args: argparse.Namespace, *, as_json: bool) -> set[str]:
    reply = await admin.list_events(
        admin_api.ListEventsRequest(since=args.since, project=args.project, limit=BACKLOG_LIMIT)
    )
    cut = f" (the newest {len(reply.events)}; older ones left out)" if reply.truncated else ""
    note(f"{len(reply.events)} stored event(s) since {args.since}{cut}; then live events:")
    events = [watch_event(e) for e in reply.events]
    for event in events:
        _print_event(event, as_json=as_json)
    return {e.event_id for e in events}


def watch_event(event: admin_api.Event) -> foundry_api.WatchResponse:
    """A stored event in Watch's shape, so both are printed the same way."""
    return foundry_api.WatchResponse(
        event_id=event.event_id,
        event_type=event.event_type,
        project=event.project,
        payload_json=event.payload_json,
        throttle=THROTTLE_NAMES.get(event.throttle, foundry_api.Throttle.FULL),
        throttled=event.throttled,
        workflow_id=event.workflow_id,
        occurred_at=event.occurred_at,
        trace_id=event.trace_id,
        span_id=event.span_id,
        parent_span_id=event.parent_span_id,
    )


def _print_event(event: foundry_api.WatchResponse, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(message_dict(event)), flush=True)
    else:
        print(event_line(event), flush=True)


def event_line(event: foundry_api.WatchResponse) -> str:
    mark = "  (throttled: not delivered)" if event.throttled else ""
    return (f"{stamp(event.occurred_at)}  {event.event_id}  {event.project}  {event.event_type}  "
            f"{event.payload_json}{mark}")  # fmt: skip


# --- trace ---------------------------------------------------------------------------------------


async def cmd_trace(args: argparse.Namespace, stubs: Any) -> int:
    foundry = stubs[0]
    if args.follow:
        await _follow(foundry, args.event_id, as_json=args.json)
    workflow = await _workflow(foundry, args.event_id)
    reply = await foundry.trace(foundry_api.TraceRequest(event_id=args.event_id))
    if not reply.found:
        if workflow is not None and workflow.state not in FINISHED:
            raise FoundryError(
                f"chain {args.event_id} is still {workflow.state}; "
                f"`foundry trace --follow {args.event_id}` shows it as it grows"
            )
        raise FoundryError(f"no completed trace for {args.event_id}")
    if args.json:
        print_json({"trace": message_dict(reply)} if args.follow else reply,
                   indent=None if args.follow else 2)  # fmt: skip
        return 0
    for line in trace_lines(reply, workflow):
        print(line)
    return 0


async def _workflow(foundry: Any, root: str) -> foundry_api.WorkflowStatus | None:
    try:
        reply = await foundry.status(foundry_api.StatusRequest(workflow_id=root))
    except GRPCError as exc:
        if exc.status in (Status.NOT_FOUND, Status.INVALID_ARGUMENT):
            return None
        raise
    return reply.workflows[0] if reply.workflows else None


def trace_lines(
    reply: foundry_api.TraceResponse, workflow: foundry_api.WorkflowStatus | None
) -> list[str]:
    """The header (state, error, total duration), the events, then the block executions."""
    lines = [_header(reply, workflow)]
    if workflow is not None and workflow.error:
        lines.append(f"error  {workflow.error}")
    for e in reply.events:
        mark = "  (throttled)" if e.throttled else ""
        lines.append(f"event  {stamp(e.occurred_at)}  {e.event_id}  {e.event_type}  "
                     f"{e.payload_json}{mark}")  # fmt: skip
    for x in reply.block_executions:
        throttled = x.throttled and x.state != "skipped"  # skipped: nothing to withhold
        withheld = "  (throttled: emissions withheld)" if throttled else ""
        lines.append(f"block  {execution_label(x):<7} {x.block_name} on {x.trigger_event_id}  "
                     f"{duration(x.duration_ms)}  {x.summary}".rstrip() + withheld)  # fmt: skip
        lines.extend(f"       artifact {path}" for path in x.audit_artifacts)
        lines.extend(f"       | {line}" for line in x.raw_output.rstrip().splitlines())
    return lines


def execution_label(x: foundry_api.TraceBlockExecution) -> str:
    """``ok``, ``skipped`` (a mutator under DRY_RUN, or after the chain stopped) or ``FAILED``."""
    return "skipped" if x.state == "skipped" else "ok" if x.success else "FAILED"


def _header(reply: foundry_api.TraceResponse, workflow: foundry_api.WorkflowStatus | None) -> str:
    root = reply.events[0] if reply.events else None
    state = workflow.state if workflow is not None else "finished"
    total = getattr(reply, "total_duration_ms", 0) or _span_ms(reply)
    what = f"{root.event_type} [{root.project}]" if root is not None else ""
    started = f"  started {stamp(root.occurred_at)}" if root is not None else ""
    blocks = len(reply.block_executions)
    failed = sum(1 for x in reply.block_executions if not x.success and x.state != "skipped")
    return (f"chain  {root.event_id if root else ''}  {state}  {what}{started}  "
            f"total {duration(total)}  {len(reply.events)} event(s), {blocks} block "
            f"execution(s), {failed} failed")  # fmt: skip


def _span_ms(reply: foundry_api.TraceResponse) -> float:
    return float(sum(x.duration_ms for x in reply.block_executions))


# --- trace --follow ------------------------------------------------------------------------------


async def _follow(foundry: Any, root: str, *, as_json: bool) -> None:
    """Print the chain's events and block state changes until it ends."""
    admin = admin_api.AdminStub(foundry.channel)
    workflow = await _workflow(foundry, root)
    if workflow is None:
        raise FoundryError(f"no workflow {root} (a root event id that blocks sink)")
    if not as_json:
        note(f"following {root} ({workflow.workflow_type} [{workflow.project}]); Ctrl-C to stop")
    shown: set[str] = set()
    states: dict[tuple[str, int], str] = {}
    while True:
        events = await admin.list_events(
            admin_api.ListEventsRequest(workflow_id=root, limit=BACKLOG_LIMIT)
        )
        _print_new_events(events.events, shown, as_json=as_json)
        _print_block_changes(workflow, states, as_json=as_json)
        if workflow.state in FINISHED:
            if not as_json:
                print()
            return
        await asyncio.sleep(POLL_SECONDS)
        workflow = await _workflow(foundry, root) or workflow


def _print_new_events(events: Iterable[admin_api.Event], shown: set[str], *, as_json: bool) -> None:
    for event in events:
        if event.event_id in shown:
            continue
        shown.add(event.event_id)
        if as_json:
            print(json.dumps({"event": message_dict(watch_event(event))}), flush=True)
        else:
            by = f"  ← {event.emitted_by}" if event.emitted_by else ""
            mark = "  (throttled)" if event.throttled else ""  # as the trace after it says
            payload = short_json(json.loads(event.payload_json or "{}"))
            print(f"{stamp(event.occurred_at)}  event  {event.event_id}  {event.event_type}  "
                  f"{payload}{by}{mark}", flush=True)  # fmt: skip


def _print_block_changes(
    workflow: foundry_api.WorkflowStatus, states: dict[tuple[str, int], str], *, as_json: bool
) -> None:
    seen: dict[str, int] = {}
    for block in workflow.task_blocks:
        nth = seen[block.name] = seen.get(block.name, -1) + 1
        key = (block.name, nth)
        if states.get(key) == block.state:
            continue
        states[key] = block.state
        if as_json:
            print(json.dumps({"block": message_dict(block)}), flush=True)
            continue
        when = stamp(block.completed_at or block.started_at) or " " * 24
        mark = "  (throttled)" if block.throttled else ""
        print(f"{when}  block  {block.state:<9} {block.name}{mark}", flush=True)
