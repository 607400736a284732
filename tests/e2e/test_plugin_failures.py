"""Whatever a plugin block raises — ``SystemExit``, ``KeyboardInterrupt``, a ``BaseException`` of
its own — fails its execution or its step, never the daemon. One ``sys.exit()`` in a block took a
daemon down; as a DAG step it took every restart down too (an unfinished run goes on at start)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
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


def _chain_and_run(make_daemon, tmp_path, plugin, module, event_type, step_type):
    """A daemon with ``plugin`` as ``module`` beside its config; the workflow and trace of an
    ``event_type`` Emit, and a one-step run of ``step_type``, finished, and the daemon started
    again after it (the run is over: the next start has nothing of it to go on with)."""
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(plugin))
    daemon = make_daemon(f'[plugins]\npaths = ["."]\nmodules = ["{module}"]\n')
    reply = emit(daemon, event_type)
    workflow = finished(daemon, reply.workflow_id)
    chain = traced(daemon, reply.event_id)
    run_id = submit(daemon, json.dumps({"steps": [{"id": "a", "type": step_type}]}))
    run = wait_done(daemon, run_id)
    daemon.restart()
    return daemon, workflow, chain, run


def test_a_block_that_exits_fails_its_chain_and_a_step_that_does_fails_its_run(
    make_daemon, tmp_path
):
    daemon, workflow, chain, run = _chain_and_run(
        make_daemon, tmp_path, PLUGIN, "exiting_plugin", "exit_requested", "Booms"
    )
    after = wait_done(daemon, run.run_id)

    assert workflow.state == "failed"
    assert "SystemExit: 3" in block(chain, "Exits").summary
    assert "KeyboardInterrupt" in block(chain, "Interrupts").summary
    assert run.status == runtime_api.RunStatus.FAILED
    [step] = run.steps
    assert "Boom: boom" in value(step.error)["message"]
    assert after.status == runtime_api.RunStatus.FAILED
    assert finished(daemon, emit(daemon, "greet_requested").workflow_id).state == "completed"


UNRULY = """
import sys
import time

import trio
from foundry.kernel import block, hookimpl


@block("Prints", sinks=["print_requested"])
def prints(ctx):
    print("p" * 1_000_000)  # more than a pipe holds
    return "printed"


@block("Shields", sinks=["shield_requested"], timeout=1)
async def shields(ctx):
    with trio.CancelScope(shield=True):
        await trio.sleep_forever()


@block("Sleeps", sinks=["sleep_requested"], timeout=10)
async def sleeps(ctx):
    time.sleep(3)  # the trio thread's: every call waits


@hookimpl
def register_blocks():
    return [prints, shields, sleeps]
"""


@pytest.fixture
def unruly(make_daemon, tmp_path):
    (tmp_path / "unruly_plugin.py").write_text(textwrap.dedent(UNRULY))
    return make_daemon('[plugins]\npaths = ["."]\nmodules = ["unruly_plugin"]\n')


def test_what_a_block_prints_goes_to_stderr_not_to_the_ready_lines_pipe(unruly):
    """The harness reads stdout for the ready line alone, as callers do: a block printing 1 MB
    held the daemon's loop in write() to the full pipe, and no call was answered again."""
    reply = emit(unruly, "print_requested")
    assert finished(unruly, reply.workflow_id).state == "completed"
    assert "p" * 1_000 in unruly.stderr()


def test_a_second_signal_ends_a_daemon_whose_block_ignores_cancellation(unruly):
    """A block shielded from cancellation outlived its timeout and both signals: only SIGKILL
    ended the daemon. The second signal now ends the process a few seconds later."""
    emit(unruly, "shield_requested")
    time.sleep(0.5)  # the block runs
    process = unruly.process
    process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) != 0
    assert "after a second signal (a block does not end when cancelled): exiting now" in (
        unruly.stderr()
    )


def test_a_second_signal_ends_the_daemon_when_no_one_reads_its_stderr(unruly):
    """Started with stderr a pipe no one reads (stdout read for the ready line alone, as callers
    do): a block's 1 MB print fills it, and the exit's own log line blocked on it for good."""
    unruly.stop()
    env = {**os.environ, "FOUNDRY_HOME": str(unruly.home)}
    env.pop("FOUNDRY_ADDR", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "foundry.kernel.cli", "serve", "--config", str(unruly.config),
         "--listen", "127.0.0.1:0", "--http-listen", "off"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=unruly.home.parent,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        address = process.stdout.readline().decode().strip()
        # its 1 MB fills the pipe: the loop blocks writing it, and the Emit is never answered
        emitting = subprocess.Popen(
            [sys.executable, "-m", "foundry.kernel.cli", "emit", "print_requested",
             "--project", "p", "--addr", address],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(2.0)
        emitting.kill()
        emitting.wait(10)
        process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 1
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()


HOSTILE_VALUES = """
from foundry.kernel import block, hookimpl


class ReprExits:  # not JSON, and its repr raises SystemExit
    def __repr__(self):
        raise SystemExit("repr")


class ItemsInterrupt(dict):  # JSON by its type; reading it raises KeyboardInterrupt
    def items(self):
        raise KeyboardInterrupt("items")


@block("Answers ReprExits", sinks=["hostile_value"])
def answers_repr_exits(ctx):
    return ReprExits()


@block("Answers ItemsInterrupt", sinks=["hostile_value"])
def answers_items_interrupt(ctx):
    return ItemsInterrupt(a=1)


@block("Emits ItemsInterrupt", sinks=["hostile_value"])
def emits_items_interrupt(ctx):
    ctx.emit("never_stored", {"nested": ItemsInterrupt(a=1)})  # (the top level is copied)
    return "emitted"


@hookimpl
def register_blocks():
    return [answers_repr_exits, answers_items_interrupt, emits_items_interrupt]
"""


def test_a_value_that_raises_systemexit_while_read_fails_only_its_block(make_daemon, tmp_path):
    """A block's answer (or an emitted payload) whose ``__repr__`` or ``items()`` raised
    SystemExit or KeyboardInterrupt while the kernel read it ended the daemon — and, as a DAG
    step's output, every start after it (the run went on at each)."""
    daemon, workflow, chain, run = _chain_and_run(
        make_daemon, tmp_path, HOSTILE_VALUES, "hostile_values", "hostile_value",
        "Answers ItemsInterrupt",
    )  # fmt: skip

    assert "repr() raised SystemExit" in block(chain, "Answers ReprExits").summary
    assert block(chain, "Answers ItemsInterrupt").summary  # its repr: the dict's own
    emits = block(chain, "Emits ItemsInterrupt")
    assert "could not be read: KeyboardInterrupt: items" in emits.summary
    assert workflow.state == "failed"
    assert run.status == runtime_api.RunStatus.FAILED
    [step] = run.steps
    assert "not JSON: reading it raised KeyboardInterrupt: items" in value(step.error)["message"]
    assert wait_done(daemon, run.run_id).status == runtime_api.RunStatus.FAILED
    assert finished(daemon, emit(daemon, "greet_requested").workflow_id).state == "completed"


def test_a_block_that_holds_the_loop_is_named_in_the_log(unruly):
    """An async block calling time.sleep held every call of the daemon for as long, and the
    log said nothing (a plugin hunt): a watcher thread names the line the loop is held at."""
    reply = emit(unruly, "sleep_requested")
    assert finished(unruly, reply.workflow_id).state == "completed"
    deadline = time.monotonic() + 10
    while "came round again" not in unruly.stderr() and time.monotonic() < deadline:
        time.sleep(0.1)
    log = unruly.stderr()
    assert "the daemon's loop has not come round for" in log
    assert "The trio thread is at " in log
    assert "unruly_plugin.py:" in log
    assert "(sleeps)" in log
    assert "the daemon's loop came round again after" in log


def test_a_stop_held_by_a_block_that_ignores_cancellation_is_said_in_the_log(make_daemon, tmp_path):
    """One SIGTERM (a service manager's), a block shielded from cancellation: the daemon never
    exited and its log said nothing after "stopping" (an operator hunt)."""
    (tmp_path / "unruly_plugin.py").write_text(textwrap.dedent(UNRULY))
    daemon = make_daemon(
        '[daemon]\nshutdown_grace = 1\n[plugins]\npaths = ["."]\nmodules = ["unruly_plugin"]\n'
    )
    emit(daemon, "shield_requested")
    time.sleep(0.5)  # the block runs
    daemon.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 30
    while "still stopping" not in daemon.stderr() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "still stopping 7 s after the signal: work that does not end when cancelled" in (
        daemon.stderr()
    )
    assert daemon.process.poll() is None  # held: the log says how to end it
    daemon.process.send_signal(signal.SIGTERM)
    assert daemon.process.wait(timeout=30) != 0
