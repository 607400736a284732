"""The ``foundry`` CLI as a user runs it: subprocesses talking to a real daemon."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.daemon import REPO
from tests.e2e.helpers import closed_port, emit, finished, foundry_cli
from tests.helpers import DEADLINE

UNKNOWN = "evt_" + "0" * 24


@pytest.fixture(scope="module")
def daemon(shared_daemon):
    return shared_daemon()


def run(daemon, *args):
    done = daemon.cli(*args)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def test_emit_status_and_trace(daemon):
    done = run(daemon, "emit", "greet_requested", "--project", "cli", "--payload",
               '{"name": "Cli"}', "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    reply = json.loads(done.stdout)
    assert reply["workflow_id"] == reply["event_id"]
    workflow_id = reply["workflow_id"]
    finished(daemon, workflow_id)

    listing = run(daemon, "status")
    assert listing.returncode == 0
    [line] = [x for x in listing.stdout.splitlines() if x.startswith(workflow_id)]
    assert "completed" in line
    assert "greet_requested" in line
    assert "[cli]" in line
    assert "Compose Greeting" in listing.stdout
    assert "Deliver Greeting" in listing.stdout

    one = run(daemon, "status", workflow_id, "--json")
    assert one.returncode == 0
    [workflow] = json.loads(one.stdout)["workflows"]
    assert workflow["workflow_id"] == workflow_id
    assert workflow["state"] == "completed"
    assert workflow["completed_at"]
    assert [(b["name"], b["state"]) for b in workflow["task_blocks"]] == [
        ("Compose Greeting", "completed"), ("Deliver Greeting", "completed"),
    ]  # fmt: skip

    chain = run(daemon, "trace", workflow_id)
    assert chain.returncode == 0
    text = chain.stdout
    for expected in ("greet_requested", "greeting_composed", "greeting_delivered",
                     "Compose Greeting", "Deliver Greeting", "greeting.txt"):  # fmt: skip
        assert expected in text, text
    assert text.count("block  ok") == 2


def test_emit_without_a_workflow_and_with_a_throttle(daemon):
    done = run(daemon, "emit", "nobody_listens", "--project", "cli")
    assert done.returncode == 0
    assert done.stdout.startswith("event    evt_")
    assert "(none: no block sinks nobody_listens)" in done.stdout

    audited = run(daemon, "emit", "greet_requested", "--project", "cli", "--throttle",
                  "audit_only", "--json")  # fmt: skip
    workflow = finished(daemon, json.loads(audited.stdout)["workflow_id"])
    assert [b.throttled for b in workflow.task_blocks] == [False, True]


def test_blocks_lists_the_repo_formation():
    done = foundry_cli("blocks", "--json", "--config", str(REPO / "foundry.toml"))
    assert done.returncode == 0, done.stderr
    # Task blocks sink events; blocks with no sinks serve only as DAG step types.
    blocks = {b["name"]: b for b in json.loads(done.stdout) if b["sinks"]}
    assert list(blocks) == [
        "Compose Greeting", "Deliver Greeting", "Archive Greeting", "Escalate Alert",
    ]  # fmt: skip
    assert blocks["Deliver Greeting"]["kind"] == "mutator"
    assert blocks["Archive Greeting"]["sinks"] == ["greeting_delivered"]
    assert blocks["Escalate Alert"]["sinks"] == ["alert_raised"]

    human = foundry_cli("blocks", "--config", str(REPO / "foundry.toml"))
    assert human.returncode == 0
    task_lines = [x for x in human.stdout.splitlines() if "(step type only)" not in x]
    assert [x.split("  ")[0].strip() for x in task_lines] == list(blocks)
    # docstrings' reST literals read as the README writes them
    assert "— Compose a greeting for `payload.name`." in human.stdout
    assert "``" not in human.stdout
    assert "``" not in foundry_cli("--help").stdout


def test_watch_prints_events_live_until_stopped(daemon):
    process = subprocess.Popen(
        [sys.executable, "-m", "foundry.kernel.cli", "watch", "--project", "tv", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "FOUNDRY_ADDR": daemon.address},
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    assert process.stdout is not None
    reader = threading.Thread(target=lambda: [lines.put(x) for x in process.stdout], daemon=True)
    reader.start()
    try:
        # Emit probes until the watcher prints one: it is then subscribed.
        deadline = time.monotonic() + DEADLINE
        while True:
            assert time.monotonic() < deadline, "foundry watch printed nothing"
            emit(daemon, "watch_probe", project="tv")  # (an RPC: quicker than the CLI)
            try:
                json.loads(lines.get(timeout=0.5))
                break
            except queue.Empty:
                continue
        emit(daemon, "greet_requested", project="other")
        done = run(daemon, "emit", "greet_requested", "--project", "tv", "--json")
        root = json.loads(done.stdout)["event_id"]
        seen = []
        while len(seen) < 3:
            event = json.loads(lines.get(timeout=max(0.0, deadline - time.monotonic())))
            if event["event_type"] != "watch_probe":
                seen.append(event)
        process.send_signal(signal.SIGINT)
        code = process.wait(15)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        reader.join(10)
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()
    assert [e["event_type"] for e in seen] == [
        "greet_requested", "greeting_composed", "greeting_delivered",
    ]  # fmt: skip
    assert seen[0]["event_id"] == root
    assert {e["project"] for e in seen} == {"tv"}
    assert {e["workflow_id"] for e in seen} == {root}
    assert code in (0, 130, -signal.SIGINT)  # stopped on request, not crashed


ERRORS = {
    "status of an unknown workflow": (
        ("status", UNKNOWN), ["NOT_FOUND", "workflow_id", UNKNOWN]
    ),
    "trace of an unknown event": (("trace", UNKNOWN), ["no completed trace", UNKNOWN]),
    "emit with a bad payload": (
        ("emit", "x", "--project", "p", "--payload", "[1]"), ["INVALID_ARGUMENT", "payload_json"]
    ),
}  # fmt: skip


@pytest.mark.parametrize(("args", "words"), ERRORS.values(), ids=ERRORS.keys())
def test_a_failed_command_exits_non_zero_with_one_readable_line(daemon, args, words):
    done = run(daemon, *args)
    assert done.returncode != 0
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith("foundry: ")
    for word in words:
        assert word in line


def test_an_unreachable_daemon_is_a_readable_error():
    with closed_port() as port:
        done = foundry_cli("status", "--addr", f"127.0.0.1:{port}")
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith("foundry: ")
    assert f"127.0.0.1:{port}" in line
    assert "cannot reach the daemon" in line


def test_a_bad_address_is_a_readable_error():
    done = foundry_cli("status", "--addr", "no-port-here")
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    [line] = done.stderr.splitlines()
    assert "--addr" in line
    assert "no-port-here" in line
