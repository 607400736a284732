"""A retired workflow keeps only what Status and Trace read of it while it is recent, so one large
payload is not held in memory until ``recent_workflows`` more chains have ended."""

from __future__ import annotations

import contextlib
import os
import threading
from datetime import UTC, datetime

import pytest
from foundry.kernel.actors.engine.actor import read_trace_file
from foundry.kernel.blocks.registry import load_blocks
from foundry.kernel.core.chain import Workflow
from foundry.kernel.core.ids import compact_json
from foundry.kernel.core.records import Event
from foundry.kernel.core.throttle import Throttle
from foundry.kernel.core.trace_format import MAX_TRACE_BYTES
from foundry.kernel.errors import ResourceExhausted

from .harness import running_kernel

BUDGET = 16 * 1024


def _workflow(payload: dict) -> Workflow:
    now = datetime.now(UTC)
    payload_json = compact_json(payload)
    root = Event("evt_" + "0" * 24, "t", "p", now, now, Throttle.FULL, "evt_" + "0" * 24,
                 payload, payload_json)  # fmt: skip
    workflow = Workflow(root, is_workflow=True)
    workflow.events.append(root)
    workflow.add_slot("B").state = "completed"
    workflow.finished(now)
    workflow.state = "completed"
    return workflow


def test_a_retired_workflow_drops_its_events_and_a_large_trace_but_keeps_its_status():
    workflow = _workflow({"blob": "x" * 100_000})
    before = workflow.view()
    workflow.retire(BUDGET)
    assert workflow.events == []
    assert workflow.executions == []
    assert workflow.root.payload == {}
    assert workflow.root.payload_json == ""
    assert workflow.trace is None  # Trace reads the file (or the database) instead
    assert workflow.view() == before
    assert workflow.view() is workflow.view()  # made once: a retired workflow no longer changes


def test_an_unretired_workflows_view_follows_it():
    workflow = _workflow({"name": "Ada"})
    workflow.state = "running"
    running = workflow.view()
    workflow.state = "completed"
    assert (running.state, workflow.view().state) == ("running", "completed")


def test_a_retired_workflow_keeps_a_small_trace_for_trace():
    workflow = _workflow({"name": "Ada"})
    trace = workflow.trace
    workflow.retire(BUDGET)
    assert workflow.trace is trace
    assert workflow.events == []
    # A small root payload is kept: dropping it would cost more per chain than it frees.
    assert workflow.root.payload_json == '{"name":"Ada"}'


async def test_trace_and_status_of_a_chain_too_large_to_keep_still_answer(tmp_path):
    name = "y" * 50_000
    async with running_kernel(tmp_path, load_blocks(entry_points=False)) as k:
        emitted = await k.emit("greet_requested", {"name": name})
        trace = await k.finished(emitted.workflow_id)
        [view] = await k.status(emitted.workflow_id)
    assert [e["event_type"] for e in trace["events"]] == [
        "greet_requested",
        "greeting_composed",
        "greeting_delivered",
    ]
    assert trace["events"][0]["payload"] == {"name": name}
    assert trace["events"][1]["payload"]["greeting"] == f"Hello, {name}!"
    assert view.state == "completed"
    assert [(b.name, b.state) for b in view.task_blocks] == [
        ("Compose Greeting", "completed"),
        ("Deliver Greeting", "completed"),
    ]


def test_a_trace_file_that_grows_past_the_limit_while_read_is_refused(tmp_path):
    """A large trace's file is written after its chain retired, in place: a Trace between the
    file's size and its read measured it part-written and answered it whole (CI failure)."""
    day = tmp_path / "traces" / "2026-12-06"
    day.mkdir(parents=True)
    event_id = "evt_" + "1" * 24
    fifo = day / f"{event_id}.json"
    os.mkfifo(fifo)  # its size reads 0 however much is written through it
    padding = "x" * (MAX_TRACE_BYTES + 1_000)
    document = f'{{"events":[],"block_executions":[],"padding":"{padding}"}}'.encode()

    def write() -> None:
        with contextlib.suppress(BrokenPipeError), fifo.open("wb") as pipe:
            pipe.write(document)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        with pytest.raises(ResourceExhausted, match=f"the trace of {event_id} is 25,16"):
            read_trace_file(tmp_path, event_id)
    finally:
        with contextlib.suppress(OSError):  # a writer still waiting for a reader
            os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
        writer.join()
