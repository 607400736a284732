"""``foundry emit --wait``: follow the chain an Emit started until it ends, then print its tree.

Waiting polls Status for the workflow id with a growing interval (a finished state is sticky, so
no completion can be missed, even across the daemon's recent list into its database), then reads
Trace. The tree is built by a pure function (:func:`tree_lines`) over the trace as plain data:
each event, the block executions it triggered beneath it, the events those emitted beneath them,
and so on.

Exit codes: 0 the workflow completed (or the event started none: no block sinks its type),
1 it failed, 3 it had not ended within ``--timeout`` seconds (it goes on in the daemon). With
``--json`` one document is printed: ``{event_id, workflow_id, state, error, trace}`` (``state``
"none" when no block sinks the type, "running" after a timeout; ``trace`` null then).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any

from foundry.kernel.cli.common import positive_seconds
from foundry.kernel.cli.output import duration, message_dict, note, print_json, stamp
from foundry.kernel.errors import FoundryError
from foundry.proto import foundry_api as api

FINISHED = ("completed", "failed")
FAILED_EXIT, TIMEOUT_EXIT = 1, 3
FIRST_POLL, MAX_POLL = 0.02, 0.5  # seconds: quick chains answer fast, long ones cost little
PAYLOAD_SHOWN = 120  # characters of a payload in the tree (--json has all of it)
TRACE_TRIES = 50  # a finished chain's trace may trail its state by a commit

Json = Mapping[str, Any]


async def wait_and_print(
    foundry: Any, reply: api.EmitResponse, *, limit: float | None, as_json: bool
) -> int:
    """Wait for the workflow ``reply`` started, print it, and return the exit code."""
    if not as_json:
        print(f"event    {reply.event_id}", flush=True)
    if not reply.workflow_id:  # no block sinks the type: nothing runs, nothing to wait for
        _print_outcome(reply, "none", as_json=as_json)
        return 0
    deadline = None if limit is None else time.monotonic() + limit
    workflow = await wait_for_workflow(foundry, reply.workflow_id, deadline)
    if workflow is None:
        note(
            f"workflow {reply.workflow_id} had not ended after {limit:g} s; it goes on in the "
            f"daemon (`foundry trace --follow {reply.workflow_id}`)"
        )
        _print_outcome(reply, "running", as_json=as_json)
        return TIMEOUT_EXIT
    trace = message_dict(await finished_trace(foundry, reply.workflow_id))
    _print_outcome(reply, workflow.state, error=workflow.error, trace=trace, as_json=as_json)
    return 0 if workflow.state == "completed" else FAILED_EXIT


def _print_outcome(
    reply: api.EmitResponse,
    state: str,
    *,
    error: str = "",
    trace: Json | None = None,
    as_json: bool,
) -> None:
    """``--json``: one document; else the workflow line, its error, and the tree."""
    if as_json:
        print_json(
            {"event_id": reply.event_id, "workflow_id": reply.workflow_id, "state": state,
             "error": error, "trace": trace}
        )  # fmt: skip
        return
    if state == "none":
        print("workflow (none: no block sinks its type)")
    elif trace is not None:
        print(f"workflow {reply.workflow_id}  {state}")
        if error:
            print(f"error    {error}")
        for line in tree_lines(trace):
            print(line)


async def wait_for_workflow(
    foundry: Any, workflow_id: str, deadline: float | None
) -> api.WorkflowStatus | None:
    """The workflow's status once it is completed or failed; None at the deadline."""
    interval = FIRST_POLL
    while True:
        reply = await foundry.status(api.StatusRequest(workflow_id=workflow_id))
        workflow: api.WorkflowStatus | None = reply.workflows[0] if reply.workflows else None
        if workflow is not None and workflow.state in FINISHED:
            return workflow
        if deadline is not None and time.monotonic() + interval > deadline:
            return None
        await asyncio.sleep(interval)
        interval = min(interval * 1.5, MAX_POLL)


async def finished_trace(foundry: Any, workflow_id: str) -> api.TraceResponse:
    """The trace of a workflow Status reports finished."""
    for _ in range(TRACE_TRIES):
        reply: api.TraceResponse = await foundry.trace(api.TraceRequest(event_id=workflow_id))
        if reply.found:
            return reply
        await asyncio.sleep(MAX_POLL / 5)
    raise FoundryError(f"workflow {workflow_id} ended, but the daemon has no trace of it")


def add_wait_options(emit: argparse.ArgumentParser) -> None:
    """``emit --wait [--timeout SECONDS]``."""
    emit.add_argument(
        "--wait",
        action="store_true",
        help="follow the chain until it ends and print its tree of events and block executions "
        "(exit 0 completed, 1 failed, 3 not ended within --timeout)",
    )
    emit.add_argument(
        "--timeout",
        type=positive_seconds,
        default=None,
        metavar="SECONDS",
        help="with --wait: give up waiting after this long (exit 3; the chain goes on)",
    )


# --- the tree -------------------------------------------------------------------------------------


def tree_lines(trace: Json) -> list[str]:
    """The chain as a tree, indented by causality: an event, the block executions it triggered,
    the events each emitted, and so on. ``trace`` is a TraceResponse as plain data (``--json``'s
    form: ``events``, ``block_executions``, snake_case keys)."""
    tree = _Tree(trace)
    lines: list[str] = []
    for event in tree.roots():
        lines += tree.event(event, "", "")
    for event in tree.events:  # a malformed trace (a cycle) has events no root reaches
        if event.get("event_id", "") not in tree.shown:
            lines += tree.event(event, "", "")
    for trigger, executions in tree.triggered.items():  # a partial trace: still shown
        if trigger not in tree.by_id:
            lines.append(f"event {trigger} (not in the trace)")
            lines += tree.executions(executions, "")
    return lines


class _Tree:
    def __init__(self, trace: Json) -> None:
        self.events: Sequence[Json] = trace.get("events") or []
        self.by_id = {e.get("event_id", ""): e for e in self.events}
        self.triggered: dict[str, list[Json]] = {}
        for x in trace.get("block_executions") or []:
            self.triggered.setdefault(x.get("trigger_event_id", ""), []).append(x)
        self.shown: set[str] = set()

    def roots(self) -> list[Json]:
        emitted = {i for xs in self.triggered.values() for x in xs for i in _emitted(x)}
        return [e for e in self.events if e.get("event_id") not in emitted]

    def event(self, event: Json, first: str, rest: str) -> list[str]:
        """An event's line (after ``first``) and its subtree (each line after ``rest``)."""
        event_id = event.get("event_id", "")
        if event_id in self.shown:  # a malformed trace must not loop
            return [first + f"event {event_id} (shown above)"]
        self.shown.add(event_id)
        return [first + event_line(event), *self.executions(self.triggered.get(event_id, []), rest)]

    def executions(self, executions: Sequence[Json], rest: str) -> list[str]:
        lines: list[str] = []
        for x, last in _with_last(executions):
            lines.append(rest + _branch(last) + execution_line(x))
            below = rest + _trunk(last)
            for child_id, child_last in _with_last(_emitted(x)):
                child = self.by_id.get(child_id)
                if child is None:
                    lines.append(
                        below + _branch(child_last) + f"event {child_id} (not in the trace)"
                    )
                else:
                    lines += self.event(
                        child, below + _branch(child_last), below + _trunk(child_last)
                    )
        return lines


def _emitted(x: Json) -> list[str]:
    return list(x.get("emitted_event_ids") or [])


def _with_last(items: Sequence[Any]) -> list[tuple[Any, bool]]:
    return [(item, index == len(items) - 1) for index, item in enumerate(items)]


def _branch(last: bool) -> str:
    return "└─ " if last else "├─ "


def _trunk(last: bool) -> str:
    return "   " if last else "│  "


def event_line(event: Json) -> str:
    mark = "  (throttled: not delivered)" if event.get("throttled") else ""
    payload = event.get("payload_json") or "{}"
    if len(payload) > PAYLOAD_SHOWN:
        payload = payload[: PAYLOAD_SHOWN - 1] + "…"
    return (
        f"event {event.get('event_type', '')}  {event.get('event_id', '')}  "
        f"{stamp(event.get('occurred_at', ''))}  {payload}{mark}"
    )


def execution_line(x: Json) -> str:
    """``block NAME  ok|FAILED|skipped[*]  DURATION  [exit N]  SUMMARY`` (* = throttled)."""
    state = x.get("state") or ("completed" if x.get("success") else "failed")
    label = {"completed": "ok", "skipped": "skipped"}.get(state, "FAILED")
    if x.get("throttled"):
        label += "*"
    parts = [f"block {x.get('block_name', '')}", label, duration(float(x.get("duration_ms") or 0))]
    exit_code = int(x.get("exit_code") or 0)
    if exit_code or x.get("raw_output"):  # a block that ran a command
        parts.append(f"exit {exit_code}")
    if x.get("summary"):
        parts.append(str(x["summary"]))
    return "  ".join(parts)


__all__ = ["add_wait_options", "tree_lines", "wait_and_print", "wait_for_workflow"]
