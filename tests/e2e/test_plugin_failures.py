"""Whatever a plugin block raises — ``SystemExit``, ``KeyboardInterrupt``, a ``BaseException`` of
its own — fails its execution or its step, never the daemon. One ``sys.exit()`` in a block took a
daemon down; as a DAG step it took every restart down too (an unfinished run goes on at start)."""

from __future__ import annotations

import json
import textwrap

from foundry.proto import runtime_api

from tests.e2e.helpers import block, emit, finished, traced
from tests.runs.helpers import submit, value, wait_done

PLUGIN = """
import sys

import trio
from foundry.kernel import block, hookimpl


class Boom(BaseException):
    pass


@block("Exits", sinks=["exit_requested"])
def exits(ctx):
    sys.exit(3)


@block("Interrupts", sinks=["exit_requested"])
async def interrupts(ctx):
    await trio.lowlevel.checkpoint()
    raise KeyboardInterrupt


@block("Booms", sinks=[])
async def booms(ctx):
    await trio.lowlevel.checkpoint()
    raise Boom("boom")


@hookimpl
def register_blocks():
    return [exits, interrupts, booms]
"""


def test_a_block_that_exits_fails_its_chain_and_a_step_that_does_fails_its_run(
    make_daemon, tmp_path
):
    (tmp_path / "exiting_plugin.py").write_text(textwrap.dedent(PLUGIN))  # beside the config
    daemon = make_daemon('[plugins]\npaths = ["."]\nmodules = ["exiting_plugin"]\n')

    reply = emit(daemon, "exit_requested")
    workflow = finished(daemon, reply.workflow_id)
    chain = traced(daemon, reply.event_id)
    run_id = submit(daemon, json.dumps({"steps": [{"id": "a", "type": "Booms"}]}))
    run = wait_done(daemon, run_id)
    daemon.restart()  # the run is over: the next start has nothing of it to go on with
    after = wait_done(daemon, run_id)

    assert workflow.state == "failed"
    assert "SystemExit: 3" in block(chain, "Exits").summary
    assert "KeyboardInterrupt" in block(chain, "Interrupts").summary
    assert run.status == runtime_api.RunStatus.FAILED
    [step] = run.steps
    assert "Boom: boom" in value(step.error)["message"]
    assert after.status == runtime_api.RunStatus.FAILED
    assert finished(daemon, emit(daemon, "greet_requested").workflow_id).state == "completed"
