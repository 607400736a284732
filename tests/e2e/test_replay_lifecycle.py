"""A replay's life beside its caller and the daemon: it stops when its caller gives up or the
stop's grace runs out, leaves no scratch folder, and does not run a cancelled step again. Each
found by a replay hunt against the real daemon (kernel/actors/replay/actor.py)."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from foundry.proto import runtime_api as api
from grpclib import GRPCError
from grpclib.const import Status

from tests.helpers import wait_until
from tests.runs.helpers import dag, submit, wait_done, wait_status

# A step that runs until its gate file exists (30 s at most): quick in the run, held in a replay
# once the gate is gone. Each start and each end is a line in its marker file.
CONFIG = """
[daemon]
shutdown_grace = 2.0

[[blocks]]
name = "gated"
type = "shell"
kind = "observer"
command = ["sh", "-c", '''echo "start $FOUNDRY_INPUT_NAME" >> "$MARKER"
for i in $(seq 600); do [ -e "$GATE" ] && break; sleep 0.05; done
echo "end $FOUNDRY_INPUT_NAME" >> "$MARKER"; echo "{}"''']
pass_env = ["MARKER", "GATE"]
timeout = 60
"""


def chain(*names: str) -> str:
    steps, before = [], []
    for name in names:
        steps.append({"id": name, "type": "gated", "inputs": {"name": name}, "depends_on": before})
        before = [name]
    return dag(*steps)


def marks(marker: Path) -> list[str]:
    return marker.read_text().splitlines() if marker.exists() else []


def replay(daemon: Any, run_id: str, timeout: float | None = None) -> Any:
    request = api.ReplayRunRequest(run_id=run_id, mode=api.ReplayMode.FULL)
    return daemon.call(lambda _, rt: rt.replay_run(request, timeout=timeout))


def scratch_left(daemon: Any) -> list[Path]:
    folder = daemon.home / "replays"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def started(tmp_path: Path, make_daemon: Any) -> tuple[Any, Path, Path]:
    marker, gate = tmp_path / "marker", tmp_path / "gate"
    gate.touch()
    daemon = make_daemon(CONFIG, env={"MARKER": str(marker), "GATE": str(gate)})
    return daemon, marker, gate


def give_up_over_grpc(daemon: Any, run_id: str) -> None:
    with pytest.raises((GRPCError, TimeoutError)) as gave_up:  # (grpclib: either, by the race)
        replay(daemon, run_id, timeout=1.0)
    if isinstance(gave_up.value, GRPCError):
        assert gave_up.value.status == Status.DEADLINE_EXCEEDED, gave_up.value


def give_up_over_connect(daemon: Any, run_id: str) -> None:
    reply = httpx.post(
        f"http://{daemon.http_address}/fleetforge.runtime.v1.RuntimeService/ReplayRun",
        json={"runId": run_id, "mode": "REPLAY_MODE_FULL"},
        headers={"connect-protocol-version": "1", "connect-timeout-ms": "1000"},
        timeout=20,
    )
    assert reply.status_code == 504, reply.text
    assert reply.json()["code"] == "deadline_exceeded"


@pytest.mark.parametrize("give_up", [give_up_over_grpc, give_up_over_connect])
def test_a_replay_stops_when_its_caller_gives_up_and_leaves_no_folder(
    make_daemon, tmp_path, give_up
):
    """Its steps went on after the caller's deadline: each retry of a call that timed out ran
    every step again, all at once. (gRPC's handlers wait in asyncio, Connect's in trio.)"""
    daemon, marker, gate = started(tmp_path, make_daemon)
    run = wait_done(daemon, submit(daemon, chain("a", "b")))
    assert run.status == api.RunStatus.SUCCEEDED
    assert marks(marker) == ["start a", "end a", "start b", "end b"]
    assert scratch_left(daemon) == []

    gate.unlink()  # the replay's first step is held
    give_up(daemon, run.run_id)
    wait_until(lambda: scratch_left(daemon) == [], what="the replay's scratch folder to go")
    gate.touch()
    time.sleep(1.5)  # a step still running would end, and the next start, meanwhile
    assert marks(marker)[4:] == ["start a"], "the abandoned replay went on"

    result = replay(daemon, run.run_id)  # a replay answered leaves nothing behind either
    assert result.all_within_tolerance
    assert [s.step_id for s in result.steps] == ["a", "b"]
    assert scratch_left(daemon) == []


def test_a_replay_in_flight_gets_the_shutdown_grace_not_its_steps_time(make_daemon, tmp_path):
    """SIGTERM waited for a replay's steps however long they took (44 s with a grace of 2 s),
    past the point a service manager kills the daemon."""
    daemon, marker, gate = started(tmp_path, make_daemon)
    run = wait_done(daemon, submit(daemon, chain("a")))
    gate.unlink()
    outcome: dict[str, Any] = {}

    def call() -> None:
        try:
            outcome["reply"] = replay(daemon, run.run_id)
        except BaseException as exc:  # reported below
            outcome["error"] = exc

    caller = threading.Thread(target=call)
    caller.start()
    try:
        wait_until(lambda: len(marks(marker)) == 3, what="the replayed step to start")
        process = daemon.process
        assert process is not None
        stopping = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code = process.wait(25)  # its step alone would hold it 30 s
        took = time.monotonic() - stopping
    finally:
        caller.join(30)
        gate.touch()
        daemon.close()
    assert code == 0, daemon.stderr()[-2000:]
    assert took < 15, took  # the edge's grace and the replay's: 2 s each, and the stop's own
    assert "reply" not in outcome
    error = outcome["error"]
    assert isinstance(error, GRPCError), error
    assert error.status == Status.UNAVAILABLE, error  # said, not a connection lost
    assert "stopped before answering" in (error.message or "")
    daemon.start()  # the scratch folder the stop may leave is cleared on start
    assert scratch_left(daemon) == []


def test_a_cancelled_step_is_not_run_again_by_a_replay(make_daemon, tmp_path):
    """It ran again to its timeout, then drifted by "cancelled" alone: every replay of a
    cancelled run was outside tolerance."""
    daemon, marker, gate = started(tmp_path, make_daemon)
    gate.unlink()
    run_id = submit(daemon, chain("a"))
    wait_until(lambda: marks(marker) == ["start a"], what="the step to start")
    daemon.call(lambda _, rt: rt.cancel_run(api.CancelRunRequest(run_id=run_id)))
    wait_status(daemon, run_id, api.RunStatus.CANCELED)
    count = len(marks(marker))

    result = replay(daemon, run_id, timeout=20)
    assert result.all_within_tolerance
    (step,) = result.steps
    assert step.step_id == "a"
    assert step.drift.within_tolerance
    assert result.strategy == api.ReplayStrategy.MOCKED
    assert len(marks(marker)) == count  # not started again
