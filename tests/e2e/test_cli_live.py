"""``foundry watch`` and ``foundry trace`` as a user runs them (CLI subprocesses, a real daemon):
the "watching" line, timestamps, ``--since`` backlogs, ``trace --follow`` of a running chain."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from foundry.proto import foundry_api

from tests.e2e.helpers import closed_port, emit, finished, foundry_cli, status
from tests.helpers import DEADLINE

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
UNKNOWN = "evt_" + "0" * 24

CONFIG = """
[[blocks]]
name = "First Stage"
type = "shell"
kind = "observer"
sinks = ["two_stage_requested"]
command = ["sh", "-c", "echo first"]
emits = "stage_two"

# Runs until the test creates the file the payload names ("gate"), or 20 s. A mutator: what
# came before it is committed (and so shown) before it starts; observers run ahead of commits.
[[blocks]]
name = "Slow Stage"
type = "shell"
kind = "mutator"
sinks = ["two_stage_requested"]
command = ['sh', '-c', '''
i=0
while [ -n "$FOUNDRY_INPUT_GATE" ] && [ ! -e "$FOUNDRY_INPUT_GATE" ] && [ $i -lt 400 ]; do
  sleep 0.05; i=$((i+1))
done
echo slow''']
emits = "two_stage_done"
timeout = 30
"""


@pytest.fixture(scope="module")
def daemon(shared_daemon):
    return shared_daemon(CONFIG)


class Lines:
    """A CLI subprocess whose stdout and stderr lines are read as they come."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.out: queue.Queue[str] = queue.Queue()
        self.err: queue.Queue[str] = queue.Queue()
        self._readers = [
            threading.Thread(target=_pump, args=(process.stdout, self.out), daemon=True),
            threading.Thread(target=_pump, args=(process.stderr, self.err), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def next_out(self, timeout: float = DEADLINE) -> str:
        return self.out.get(timeout=timeout)

    def next_err(self, timeout: float = DEADLINE) -> str:
        return self.err.get(timeout=timeout)

    def rest(self) -> tuple[list[str], list[str]]:
        for reader in self._readers:
            reader.join(10)
        return _drain(self.out), _drain(self.err)


def _pump(stream, into: queue.Queue[str]) -> None:
    for line in stream:
        into.put(line.rstrip("\n"))


def _drain(lines: queue.Queue[str]) -> list[str]:
    out = []
    while not lines.empty():
        out.append(lines.get_nowait())
    return out


@contextmanager
def cli(daemon, *args: str) -> Iterator[Lines]:
    process = subprocess.Popen(
        [sys.executable, "-m", "foundry.kernel.cli", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "FOUNDRY_ADDR": daemon.address},
    )  # fmt: skip
    try:
        yield Lines(process)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()


def stop(lines: Lines) -> int:
    lines.process.send_signal(signal.SIGINT)
    return lines.process.wait(15)


def test_watch_says_what_it_watches_and_stamps_each_event(daemon):
    with cli(daemon, "watch", "--project", "live-a") as watch:
        first = watch.next_err()
        assert first.startswith(f"watching {daemon.address} (project live-a)"), first
        # The watcher is subscribed once it prints something: emit probes until it does.
        deadline = time.monotonic() + DEADLINE
        while True:
            assert time.monotonic() < deadline, "foundry watch printed nothing"
            emit(daemon, "probe", project="live-a")
            try:
                line = watch.next_out(timeout=0.5)
                break
            except queue.Empty:
                continue
        assert re.match(rf"^{STAMP}  evt_[0-9a-f]{{24}}  live-a  probe  \{{\}}$", line), line
        code = stop(watch)
        _, err = watch.rest()
    assert code in (0, 130)
    assert not any("Traceback" in x for x in err), err


def test_watch_since_shows_the_backlog_then_live_events_once_each(daemon):
    old = emit(daemon, "two_stage_requested", project="live-b", payload={"n": 1})
    finished(daemon, old.workflow_id)
    unsunk = emit(daemon, "probe", project="live-b")  # no block sinks it: no workflow
    assert unsunk.workflow_id == ""
    with cli(daemon, "watch", "--project", "live-b", "--since", "10m", "--json") as watch:
        assert watch.next_err().startswith(f"watching {daemon.address} (project live-b, since 10m)")
        backlog = [json.loads(watch.next_out()) for _ in range(4)]
        assert [e["event_type"] for e in backlog] == [
            "two_stage_requested", "stage_two", "two_stage_done", "probe",
        ]  # fmt: skip
        assert [e["workflow_id"] for e in backlog] == [old.workflow_id] * 3 + [""]
        assert all(re.match(r"^\d{4}-\d\d-\d\dT", e["occurred_at"]) for e in backlog)
        assert "4 stored event(s) since 10m" in watch.next_err()
        new = emit(daemon, "probe", project="live-b")
        live = json.loads(watch.next_out())
        assert live["event_id"] == new.event_id
        assert live["occurred_at"]
        # printed as the live one is: the trace context too (it was left out of the backlog)
        assert backlog[3].keys() == live.keys()
        assert live["workflow_id"] == ""
        root, child = backlog[0], backlog[1]
        assert re.fullmatch(r"[0-9a-f]{32}", root["trace_id"])
        assert child["trace_id"] == root["trace_id"]
        assert re.fullmatch(r"[0-9a-f]{16}", child["parent_span_id"])  # its block's span
        assert root["span_id"] != child["span_id"]
        assert re.fullmatch(r"[0-9a-f]{32}", backlog[3]["trace_id"])
        stop(watch)
        rest, _ = watch.rest()
    ids = [e["event_id"] for e in [*backlog, live, *map(json.loads, rest)]]
    assert len(ids) == len(set(ids)), "an event was printed twice"


def test_watch_with_a_bad_since_is_a_usage_error_before_watching(daemon):
    done = daemon.cli("watch", "--since", "last tuesday")
    assert done.returncode == 2
    assert "watching" not in done.stderr
    assert "argument --since: 'last tuesday' is neither a duration" in done.stderr.splitlines()[-1]


def test_trace_follow_shows_a_running_chain_as_it_grows(daemon, tmp_path):
    gate = tmp_path / "gate"
    root = emit(daemon, "two_stage_requested", project="live-c", payload={"gate": str(gate)})
    with cli(daemon, "trace", "--follow", root.workflow_id) as follow:
        assert follow.next_err().startswith(f"following {root.workflow_id}")
        seen = []
        while not any(" event " in x and "stage_two" in x for x in seen):
            seen.append(follow.next_out())
        # Printed while the chain still runs: the slow stage waits for the gate.
        assert status(daemon, root.workflow_id)[0].state == "running"
        assert not any(x.startswith("chain ") for x in seen)
        gate.touch()
        while not any(x.startswith("chain ") for x in seen):
            seen.append(follow.next_out())
        code = follow.process.wait(DEADLINE)
        rest, err = follow.rest()
    seen += rest
    assert code == 0, err
    events = [x for x in seen if "  event  " in x]
    assert [x.split("  ")[3] for x in events[:3]] == [
        "two_stage_requested", "stage_two", "two_stage_done",
    ]  # fmt: skip
    assert all(re.match(rf"^{STAMP}  ", x) for x in events)
    assert any(re.match(rf"^{STAMP}  block  completed Slow Stage", x) for x in seen), seen
    [header] = [x for x in seen if x.startswith("chain ")]
    assert f"chain  {root.workflow_id}  completed  two_stage_requested [live-c]" in header
    assert "total " in header


def test_trace_of_a_running_chain_points_at_follow(daemon, tmp_path):
    gate = tmp_path / "gate"
    root = emit(daemon, "two_stage_requested", project="live-d", payload={"gate": str(gate)})
    done = daemon.cli("trace", root.workflow_id)
    gate.touch()
    finished(daemon, root.workflow_id)
    assert done.returncode == 1
    [line] = done.stderr.splitlines()
    assert "still running" in line or "still pending" in line
    assert f"foundry trace --follow {root.workflow_id}" in line


def test_trace_follow_of_an_unknown_chain_is_one_readable_line(daemon):
    done = daemon.cli("trace", "--follow", UNKNOWN)
    assert done.returncode == 1
    [line] = done.stderr.splitlines()
    assert line == f"foundry: no workflow {UNKNOWN} (a root event id that blocks sink)"


def test_trace_follow_of_a_finished_chain_prints_it_and_ends(daemon):
    root = emit(daemon, "two_stage_requested", project="live-e")
    finished(daemon, root.workflow_id)
    done = daemon.cli("trace", "--follow", "--json", root.workflow_id)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(x) for x in done.stdout.splitlines()]
    assert [x["event"]["event_type"] for x in lines if "event" in x] == [
        "two_stage_requested", "stage_two", "two_stage_done",
    ]  # fmt: skip
    assert [x["block"]["state"] for x in lines if "block" in x] == ["completed", "completed"]
    [trace] = [x["trace"] for x in lines if "trace" in x]
    assert trace["found"] is True
    assert all(isinstance(x["duration_ms"], int) for x in trace["block_executions"])


def test_trace_follow_marks_an_emission_withheld_as_the_trace_after_it_does(daemon):
    """An AUDIT_ONLY mutator's emission is recorded, not delivered: the followed lines showed it
    as any other event, the trace printed after them "(throttled)" (a README walkthrough)."""
    root = emit(daemon, "greet_requested", project="live-g", payload={"name": "Bob"},
                throttle=foundry_api.Throttle.AUDIT_ONLY)  # fmt: skip
    finished(daemon, root.workflow_id)
    done = daemon.cli("trace", "--follow", root.workflow_id)
    assert done.returncode == 0, done.stderr
    followed = done.stdout.split("\n\n")[0].splitlines()
    [withheld] = [x for x in followed if "  event  " in x and "greeting_delivered" in x]
    assert withheld.endswith("(throttled)")
    assert not any(x.endswith("(throttled)") for x in followed if "greet_requested" in x)


def test_watch_without_a_daemon_does_not_claim_to_watch():
    with closed_port() as port:
        done = foundry_cli("watch", "--addr", f"127.0.0.1:{port}")
    assert done.returncode == 1
    [line] = done.stderr.splitlines()
    assert line.startswith(f"foundry: cannot reach the daemon at 127.0.0.1:{port}")


def test_a_daemon_killed_under_a_watcher_is_a_lost_connection_not_a_tls_hint(make_daemon):
    """A daemon killed mid-watch was "cannot reach the daemon …: Connection lost (if it serves
    TLS, set FOUNDRY_CA)" (a hunt): it had answered on that connection, in plain text."""
    daemon = make_daemon()
    with cli(daemon, "watch", "--project", "live-kill") as watch:
        assert watch.next_err().startswith("watching")
        deadline = time.monotonic() + DEADLINE
        while True:  # subscribed once it prints an event
            assert time.monotonic() < deadline, "foundry watch printed nothing"
            emit(daemon, "probe", project="live-kill")
            try:
                watch.next_out(timeout=0.5)
                break
            except queue.Empty:
                continue
        daemon.kill()
        code = watch.process.wait(30)
        _, err = watch.rest()
    assert code == 1
    [line] = [x for x in err if x.startswith("foundry:")]
    assert line.startswith(f"foundry: lost the connection to the daemon at {daemon.address}"), line
    assert "TLS" not in line
