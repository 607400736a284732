"""Finding and controlling work against a real daemon: ListRuns (filters, newest first, paging)
and ``foundry run list``; CancelRun and ``foundry run cancel`` (running steps' commands killed, a
mutator given its grace, CANCELED durable across restarts); ``foundry run wait`` and ``run submit
--wait`` (exit 3 with a resume hint at a breakpoint); ``foundry status --project --state
--limit`` (newest first, finished workflows from the database after a restart)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from foundry.proto import foundry_api as fapi
from foundry.proto import runtime_api as api
from foundry.proto.generated.google.protobuf import Struct
from grpclib.const import Status

from tests.daemon import Daemon
from tests.e2e.helpers import emit, finished
from tests.helpers import wait_until
from tests.runs.helpers import (
    assert_error,
    dag,
    get_run,
    history,
    rpc_error,
    spec,
    steps,
    submit,
    tap,
    wait_done,
    wait_status,
)

CONFIG = """
[daemon]
shutdown_grace = {grace}

[[blocks]]
name = "slow"
type = "shell"
kind = "observer"
command = ["sh", "-c", 'echo "$$" >> "$MARKER.slow"; sleep 60; echo "{{}}"']
pass_env = ["MARKER"]
timeout = 120

[[blocks]]
name = "careful"
type = "shell"
kind = "mutator"
command = ["sh", "-c", '''echo "$$" >> "$MARKER.careful"; sleep {mutator_seconds}
  echo done >> "$MARKER.careful"; echo "{{}}"''']
pass_env = ["MARKER"]
timeout = 120

[[blocks]]
name = "after"
type = "shell"
kind = "observer"
command = ["sh", "-c", 'echo ran >> "$MARKER.after"; echo "{{}}"']
pass_env = ["MARKER"]

[[blocks]]
name = "quick"
type = "shell"
kind = "observer"
sinks = ["ping"]
command = ["sh", "-c", 'echo "{{}}"']

[[blocks]]
name = "broken"
type = "shell"
kind = "observer"
command = ["sh", "-c", 'echo nope; exit 3']

[[blocks]]
name = "fatal"
type = "shell"
kind = "mutator"
command = ["sh", "-c", 'echo "$$" >> "$MARKER.fatal"; sleep 1; kill -9 "$PPID"; sleep 60']
pass_env = ["MARKER"]
timeout = 120

[[blocks]]
name = "fatal_at_once"
type = "shell"
kind = "observer"
command = ["sh", "-c", 'echo "$$" >> "$MARKER.at_once"; kill -9 "$PPID"']
pass_env = ["MARKER"]
"""


def start(make_daemon: Any, tmp_path: Path, *, grace: float = 30.0, mutator: float = 1.0) -> Any:
    env = {"MARKER": str(tmp_path / "marker")}
    text = CONFIG.format(grace=grace, mutator_seconds=mutator)
    return make_daemon(text, env=env)


def marker(tmp_path: Path, name: str) -> list[str]:
    path = tmp_path / f"marker.{name}"
    return path.read_text().splitlines() if path.exists() else []


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def list_runs(daemon: Daemon, **fields: Any) -> api.ListRunsResponse:
    request = api.ListRunsRequest(**fields)
    reply: api.ListRunsResponse = daemon.call(lambda _, rt: rt.list_runs(request))
    return reply


def cli(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return daemon.cli(*args, timeout=60)


SLOW_THEN_AFTER = dag(
    {"id": "work", "type": "slow"}, {"id": "next", "type": "after", "depends_on": ["work"]}
)


# --- CancelRun -----------------------------------------------------------------------------------


def test_cancel_kills_the_running_command_and_the_run_stays_canceled_after_a_restart(
    make_daemon, tmp_path
):
    daemon = start(make_daemon, tmp_path)
    run_id = submit(daemon, SLOW_THEN_AFTER)
    pid = int(wait_until(lambda: marker(tmp_path, "slow"), what="the slow step to start")[0])

    done = cli(daemon, "run", "cancel", run_id, "--reason", "wrong inputs")
    assert done.returncode == 0, done.stderr
    assert f"run {run_id} CANCELED" in done.stdout
    assert "work" in done.stdout

    run = get_run(daemon, run_id)
    assert run.status == api.RunStatus.CANCELED
    assert {k: s.status for k, s in steps(run).items()} == {"work": "canceled", "next": "skipped"}
    wait_until(lambda: not alive(pid), what="the step's command to be killed")
    events = tap(daemon, run_id)
    assert [e["kind"] for e in events][-1] == "run_canceled"
    requested = [e for e in events if e["kind"] == "cancel_requested"]
    assert requested[0]["payload"]["reason"] == "wrong inputs"

    daemon.restart()
    again = get_run(daemon, run_id)
    assert again.status == api.RunStatus.CANCELED
    assert len(tap(daemon, run_id)) == len(events)  # nothing was resumed
    assert marker(tmp_path, "after") == []
    assert len(marker(tmp_path, "slow")) == 1


def test_a_running_mutator_gets_its_grace_and_the_run_still_ends_canceled(make_daemon, tmp_path):
    daemon = start(make_daemon, tmp_path, grace=30.0, mutator=1.0)
    run_id = submit(daemon, dag({"id": "change", "type": "careful"}, {"id": "then", "type":
                                "after", "depends_on": ["change"]}))  # fmt: skip
    wait_until(lambda: marker(tmp_path, "careful"), what="the mutator to start")

    reply = daemon.call(lambda _, rt: rt.cancel_run(api.CancelRunRequest(run_id=run_id)))
    assert reply.status == api.RunStatus.CANCELED
    # it was let finish, not killed: not a cancelled step (it was listed as one, its side
    # effect done: found by a time-travel hunt)
    assert list(reply.canceled_steps) == []
    assert marker(tmp_path, "careful")[-1] == "done"
    run = get_run(daemon, run_id)
    assert {k: s.status for k, s in steps(run).items()} == {
        "change": "succeeded",
        "then": "skipped",
    }
    assert marker(tmp_path, "after") == []


def test_a_paused_run_being_cancelled_is_running_everywhere_until_it_ends(make_daemon, tmp_path):
    daemon = start(make_daemon, tmp_path, grace=30.0, mutator=6.0)
    run_id = submit(daemon, dag(
        {"id": "change", "type": "careful"},
        {"id": "first", "type": "after"},
        {"id": "held", "type": "after", "depends_on": ["first"]},
    ), breakpoints=["held"])  # fmt: skip
    wait_until(lambda: marker(tmp_path, "careful"), what="the mutator to start")
    wait_status(daemon, run_id, api.RunStatus.PAUSED_AT_STEP)

    cancel = threading.Thread(target=lambda: daemon.call(
        lambda _, rt: rt.cancel_run(api.CancelRunRequest(run_id=run_id))
    ))  # fmt: skip
    cancel.start()
    try:
        # its cancel_requested is in, its mutator in its grace: no longer paused, not ended
        run = wait_until(
            lambda: (r := get_run(daemon, run_id)).status != api.RunStatus.PAUSED_AT_STEP and r,
            what="the cancel to be in",
        )
        assert (run.status, run.paused_step) == (api.RunStatus.RUNNING, "")
        running = list_runs(daemon, statuses=[api.RunStatus.RUNNING])
        assert run_id in [r.run_id for r in running.runs]
        paused = list_runs(daemon, statuses=[api.RunStatus.PAUSED_AT_STEP])
        assert run_id not in [r.run_id for r in paused.runs]
        analytics = cli(daemon, "sql", f"SELECT status FROM run_status WHERE run_id = '{run_id}'",
                        "--json")  # fmt: skip
        assert json.loads(analytics.stdout)["rows"] == [["RUNNING"]], analytics.stderr
        refused = rpc_error(daemon, lambda rt: rt.resume_run(api.ResumeRunRequest(run_id=run_id)))
        assert refused.status == Status.FAILED_PRECONDITION
        assert "being cancelled" in refused.message
    finally:
        cancel.join(timeout=60)
    assert get_run(daemon, run_id).status == api.RunStatus.CANCELED


def test_a_cancel_recorded_before_a_crash_ends_the_run_at_the_next_start(make_daemon, tmp_path):
    # A long mutator: the CancelRun waits out its grace, and the daemon is killed meanwhile.
    daemon = start(make_daemon, tmp_path, grace=60.0, mutator=60.0)
    run_id = submit(daemon, dag({"id": "change", "type": "careful"}, {"id": "then", "type":
                                "after", "depends_on": ["change"]}))  # fmt: skip
    wait_until(lambda: marker(tmp_path, "careful"), what="the mutator to start")
    env = {**os.environ, "FOUNDRY_ADDR": daemon.address}
    canceller = subprocess.Popen(
        [sys.executable, "-m", "foundry.kernel.cli", "run", "cancel", run_id],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    try:
        history(daemon, run_id, lambda events: any(e["kind"] == "cancel_requested"
                                                   for e in events))  # fmt: skip
        daemon.kill()
    finally:
        canceller.kill()
        canceller.wait(10)
    for pid in marker(tmp_path, "careful"):  # a killed daemon's child would run on: stop it
        if pid.isdigit() and alive(int(pid)):
            os.killpg(int(pid), 9)

    daemon.start()
    run = wait_done(daemon, run_id)
    assert run.status == api.RunStatus.CANCELED
    # It had started: canceled, as without the crash (not "skipped", never started)
    assert {k: s.status for k, s in steps(run).items()} == {"change": "canceled",
                                                              "then": "skipped"}  # fmt: skip
    ended = [e for e in tap(daemon, run_id) if e["kind"] == "step_canceled"]
    assert [(e["step_id"], e["payload"]["attempt"]) for e in ended] == [("change", 1)]
    assert len(marker(tmp_path, "careful")) == 1  # the mutator was not run again
    assert marker(tmp_path, "after") == []


def running(pid: int) -> bool:
    """The process runs (a zombie, dead but not reaped by whoever adopted it, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def test_a_killed_daemons_command_is_killed_at_the_next_start_before_its_step_runs_again(
    make_daemon, tmp_path
):
    """``kill -9`` signals none of the daemon's children: a mutator's command (in a process
    group of its own) ran on beside the attempt the next start leased — its side effect twice
    at once — and CancelRun reached only the new one. A start now kills what the killed daemon
    left running first."""
    daemon = start(make_daemon, tmp_path, grace=1.0, mutator=60.0)
    run_id = submit(daemon, dag({"id": "change", "type": "careful"}))
    [first] = wait_until(lambda: marker(tmp_path, "careful"), what="the mutator to start")
    # (its record is written just after it starts: a loaded host can run its first line first)
    wait_until(lambda: (daemon.home / "commands" / first).exists(), what="its record")
    second = 0
    try:
        daemon.kill()
        time.sleep(0.5)
        assert running(int(first))  # nothing stopped it
        daemon.start()
        wait_until(lambda: not running(int(first)), what="the left command killed", timeout=10)
        assert "killed 1 command(s) the last daemon left running" in daemon.stderr()
        pids = wait_until(
            lambda: m if len(m := marker(tmp_path, "careful")) == 2 else None,
            what="the step's second attempt",
        )
        second = int(pids[1])
        events = history(
            daemon, run_id, lambda ev: [e["kind"] for e in ev].count("step_leased") > 1
        )
        leases = [e["payload"]["attempt"] for e in events if e["kind"] == "step_leased"]
        assert leases == [1, 2]
        assert not running(int(first))  # one attempt runs, the new one
        assert list((daemon.home / "commands").iterdir()) == [daemon.home / "commands" / pids[1]]
    finally:
        for pid in (int(first), second):
            if pid and running(pid):
                os.killpg(pid, 9)


def test_a_step_that_kills_the_daemon_fails_after_three_crashes_instead_of_looping(
    make_daemon, tmp_path
):
    """Each start leased the interrupted step again: one whose command takes the daemon down
    (here ``kill -9`` of its parent; the OOM killer alike) did so at every start, for ever. Each
    interrupted attempt is now recorded (``step_interrupted``, ``crashed`` when the daemon was
    killed outright), and the third crash in a row fails the step."""
    daemon = start(make_daemon, tmp_path)
    run_id = submit(daemon, dag({"id": "boom", "type": "fatal"}))
    for attempt in (1, 2, 3):
        assert daemon.process is not None
        daemon.process.wait(30)  # the step's command killed it
        daemon.kill()
        assert len(marker(tmp_path, "fatal")) == attempt
        daemon.start()
    run = wait_done(daemon, run_id)
    assert run.status == api.RunStatus.FAILED
    assert steps(run)["boom"].status == "failed"
    assert "interrupted its last 3 attempts in a row" in run.error
    events = tap(daemon, run_id)
    interrupted = [(e["payload"]["attempt"], e["payload"]["crashed"]) for e in events
                   if e["kind"] == "step_interrupted"]  # fmt: skip
    assert interrupted == [(1, True), (2, True), (3, True)]
    assert [e["kind"] for e in events].count("step_leased") == 3
    assert len(marker(tmp_path, "fatal")) == 3  # not a fourth time
    shown = cli(daemon, "run", "tap", run_id).stdout
    assert "step_interrupted boom  attempt 3: the daemon was killed" in shown
    daemon.restart()
    assert wait_done(daemon, run_id).status == api.RunStatus.FAILED


def test_an_observer_that_kills_the_daemon_at_once_is_counted_too(make_daemon, tmp_path):
    """An observer runs ahead of its lease's commit: one that killed the daemon at once left no
    lease, so no start counted a crash, and the loop never ended. After a crash, the leases of
    the runs it left are durable before their steps run."""
    daemon = start(make_daemon, tmp_path)
    run_id = submit(daemon, dag({"id": "boom", "type": "fatal_at_once"}))
    for _ in range(8):  # the daemon may die before it says it serves
        if daemon.process is not None:
            daemon.process.wait(30)
            daemon.kill()
        try:
            daemon.start()
        except RuntimeError:
            continue
        with contextlib.suppress(subprocess.TimeoutExpired):
            assert daemon.process is not None
            daemon.process.wait(3)
            continue
        break
    run = wait_done(daemon, run_id)
    assert run.status == api.RunStatus.FAILED
    assert "interrupted its last 3 attempts in a row" in run.error
    assert 3 <= len(marker(tmp_path, "at_once")) <= 4


def test_an_attempt_a_clean_stop_interrupted_is_leased_again_and_not_counted_a_crash(
    make_daemon, tmp_path
):
    daemon = start(make_daemon, tmp_path, grace=0.5)
    run_id = submit(daemon, dag({"id": "work", "type": "slow"}))
    [first] = wait_until(lambda: marker(tmp_path, "slow"), what="the slow step to start")
    daemon.restart()  # SIGTERM: the grace runs out, the command is killed
    wait_until(lambda: len(marker(tmp_path, "slow")) == 2, what="the step leased again")
    events = history(daemon, run_id, lambda ev: [e["kind"] for e in ev].count("step_leased") > 1)
    interrupted = [(e["payload"]["attempt"], e["payload"]["crashed"]) for e in events
                   if e["kind"] == "step_interrupted"]  # fmt: skip
    assert interrupted == [(1, False)]
    assert not running(int(first))
    cancelled = daemon.call(lambda _, rt: rt.cancel_run(api.CancelRunRequest(run_id=run_id)))
    assert cancelled.status == api.RunStatus.CANCELED


def test_cancelling_a_finished_or_unknown_run_is_refused(make_daemon, tmp_path):
    daemon = start(make_daemon, tmp_path)
    run_id = submit(daemon, dag({"id": "a", "type": "after"}))
    assert wait_done(daemon, run_id).status == api.RunStatus.SUCCEEDED

    error = rpc_error(daemon, lambda rt: rt.cancel_run(api.CancelRunRequest(run_id=run_id)))
    assert_error(error, Status.FAILED_PRECONDITION, run_id, "succeeded")
    error = rpc_error(daemon, lambda rt: rt.cancel_run(api.CancelRunRequest(run_id="run_nope")))
    assert_error(error, Status.NOT_FOUND, "run_id", "run_nope")
    error = rpc_error(daemon, lambda rt: rt.cancel_run(api.CancelRunRequest()))
    assert_error(error, Status.INVALID_ARGUMENT, "run_id")
    done = cli(daemon, "run", "cancel", "run_nope")
    assert done.returncode == 1
    assert "NOT_FOUND" in done.stderr

    paused = submit(daemon, dag({"id": "a", "type": "after"}), breakpoints=["a"])
    wait_status(daemon, paused, api.RunStatus.PAUSED_AT_STEP)
    reply = daemon.call(lambda _, rt: rt.cancel_run(api.CancelRunRequest(run_id=paused)))
    assert reply.status == api.RunStatus.CANCELED
    assert list(reply.canceled_steps) == []


# --- run wait and submit --wait ------------------------------------------------------------------


def test_run_wait_exits_3_with_a_resume_hint_at_a_breakpoint_then_0_once_done(
    make_daemon, tmp_path
):
    daemon = start(make_daemon, tmp_path)
    dag_file = tmp_path / "dag.json"
    dag_file.write_text(dag({"id": "a", "type": "after"}, {"id": "b", "type": "after",
                                                            "depends_on": ["a"]}))  # fmt: skip

    waited = cli(daemon, "run", "submit", str(dag_file), "--breakpoint", "b", "--wait")
    assert waited.returncode == 3, waited.stdout + waited.stderr
    run_id = waited.stdout.splitlines()[0].split()[1]
    assert f"foundry run resume {run_id}" in waited.stdout
    assert "paused before step b" in waited.stdout

    again = cli(daemon, "run", "wait", run_id, "--json")
    assert again.returncode == 3
    assert json.loads(again.stdout)["paused_step"] == "b"

    assert cli(daemon, "run", "resume", run_id).returncode == 0
    finished_run = cli(daemon, "run", "wait", run_id)
    assert finished_run.returncode == 0, finished_run.stdout + finished_run.stderr
    assert f"run {run_id} SUCCEEDED" in finished_run.stdout

    failing = submit(daemon, dag({"id": "x", "type": "broken"}))
    failed = cli(daemon, "run", "wait", failing)
    assert failed.returncode == 1
    assert "FAILED" in failed.stdout
    assert cli(daemon, "run", "wait", "run_nope").returncode == 1


# --- ListRuns ------------------------------------------------------------------------------------


def test_64_label_filters_over_runs_of_many_labels_answer(make_daemon, tmp_path):
    """Each filter parsed a run's labels again: 64 of them over two runs of 50,000 labels ran
    out of [store] memory_limit, and every such ListRuns after was RESOURCE_EXHAUSTED. (Labels
    are at most 16,384 characters a run now: 2,000 of them here.)"""
    daemon = start(make_daemon, tmp_path)
    many = {f"k{i}": "v" for i in range(2_000)}
    runs = [submit(daemon, dag({"id": "a", "type": "after"}), labels=many) for _ in range(2)]
    other = submit(daemon, dag({"id": "a", "type": "after"}), labels={"k1": "v", "x": "y"})
    wanted = {f"k{i}": "v" for i in range(64)}
    found = list_runs(daemon, labels=wanted)
    assert [r.run_id for r in found.runs] == runs[::-1]
    both = list_runs(daemon, labels={"k1": "v", "x": "y"})  # every filter must match
    assert [r.run_id for r in both.runs] == [other]
    assert list_runs(daemon, labels={"k1": "v", "x": "no"}).runs == []
    assert list_runs(daemon, labels={"nope": ""}).runs == []  # absent is not ""


def test_a_runs_labels_are_bounded_so_filtered_lists_of_many_runs_answer(make_daemon, tmp_path):
    """24 runs of a 4 MB label (each within the request limit) made every filtered ListRuns —
    one matching nothing too — run out of [store] memory_limit, for good, and past 50 runs the
    unfiltered list as well (a hunt). A run's labels are at most 16,384 characters now."""
    daemon = start(make_daemon, tmp_path)
    one = dag({"id": "a", "type": "after"})
    for labels in ({"blob": "L" * 4_000_000}, {"a": "x" * 16_383, "b": ""}):
        request = api.SubmitRunRequest(spec=spec(one, labels=labels))
        error = rpc_error(daemon, lambda rt, r=request: rt.submit_run(r))
        assert_error(error, Status.INVALID_ARGUMENT, "spec.labels", "at most 16,384 characters")
    at_most = {"grp": "g", "blob": "L" * (16_384 - 8)}
    runs = [submit(daemon, one, labels=at_most) for _ in range(24)]
    assert [r.run_id for r in list_runs(daemon, labels={"grp": "g"}, page_size=100).runs] == (
        runs[::-1]
    )
    assert list_runs(daemon, labels={"nosuch": "x"}).runs == []
    assert len(list_runs(daemon, page_size=100).runs) == 24
    branch = api.CreateBranchRunRequest(  # a branch's labels, once patched, are bounded alike
        run_id=runs[0], from_step="a", labels_patch=Struct.from_dict({"more": "m"})
    )
    error = rpc_error(daemon, lambda rt: rt.create_branch_run(branch))
    assert_error(error, Status.INVALID_ARGUMENT, "labels_patch", "at most 16,384 characters")


def test_list_runs_filters_newest_first_and_pages(make_daemon, tmp_path):
    daemon = start(make_daemon, tmp_path)
    before = datetime.now(UTC) - timedelta(seconds=1)
    ids = [
        submit(daemon, dag({"id": "a", "type": "after"}), labels={"team": team, "n": str(n)})
        for n, team in enumerate(["red", "blue", "red", "blue", "red"])
    ]
    failing = submit(daemon, dag({"id": "x", "type": "broken"}), labels={"team": "green"})
    for run_id in [*ids, failing]:
        wait_done(daemon, run_id)
    paused = submit(daemon, dag({"id": "a", "type": "after"}), breakpoints=["a"])
    wait_status(daemon, paused, api.RunStatus.PAUSED_AT_STEP)
    branch = daemon.call(lambda _, rt: rt.create_branch_run(
        api.CreateBranchRunRequest(run_id=ids[0], from_step="a")))  # fmt: skip
    wait_done(daemon, branch.run_id)
    newest_first = [branch.run_id, paused, failing, *reversed(ids)]

    every = list_runs(daemon)
    assert [r.run_id for r in every.runs] == newest_first
    assert every.next_page_token == ""
    by_id = {r.run_id: r for r in every.runs}
    assert by_id[paused].status == api.RunStatus.PAUSED_AT_STEP
    assert by_id[paused].paused_step == "a"
    assert by_id[failing].status == api.RunStatus.FAILED
    assert "x" in by_id[failing].error
    assert by_id[ids[0]].labels == {"team": "red", "n": "0"}
    assert by_id[ids[0]].step_count == 1

    red = list_runs(daemon, labels={"team": "red"})
    assert [r.run_id for r in red.runs] == [branch.run_id, ids[4], ids[2], ids[0]]
    assert [r.run_id for r in list_runs(daemon, labels={"team": "red", "n": "2"}).runs] == [ids[2]]
    failed = list_runs(daemon, statuses=[api.RunStatus.FAILED, api.RunStatus.PAUSED_AT_STEP])
    assert [r.run_id for r in failed.runs] == [paused, failing]
    repeated = [api.RunStatus.FAILED] * 1000 + [api.RunStatus.PAUSED_AT_STEP] * 1000
    assert list_runs(daemon, statuses=repeated).runs == failed.runs
    children = list_runs(daemon, parent_run_id=ids[0])
    assert [r.run_id for r in children.runs] == [branch.run_id]
    assert children.runs[0].branch_step == "a"

    middle = by_id[ids[2]].created_at
    newer = list_runs(daemon, created_after=middle, labels={"team": "red"})
    assert [r.run_id for r in newer.runs] == [branch.run_id, ids[4], ids[2]]
    older = list_runs(daemon, created_before=middle, created_after=before)
    assert [r.run_id for r in older.runs] == [ids[1], ids[0]]

    seen, token, pages = [], "", 0
    while True:
        page = list_runs(daemon, page_size=3, page_token=token)
        seen += [r.run_id for r in page.runs]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert seen == newest_first
    assert pages == 3

    listed = cli(daemon, "run", "list", "--label", "team=blue", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [r["run_id"] for r in json.loads(listed.stdout)["runs"]] == [ids[3], ids[1]]
    table = cli(daemon, "run", "list", "--status", "paused_at_step", "--status", "failed")
    assert table.returncode == 0, table.stderr
    assert table.stdout.index(paused) < table.stdout.index(failing)
    assert "PAUSED at a" in table.stdout
    assert ids[0] not in table.stdout
    paged = cli(daemon, "run", "list", "--limit", "2")
    assert "--page-token" in paged.stdout


def test_list_runs_refuses_bad_filters_by_name(make_daemon, tmp_path):
    daemon = start(make_daemon, tmp_path)
    cases = [
        (api.ListRunsRequest(page_size=5000), "page_size"),
        (api.ListRunsRequest(page_size=-1), "page_size"),
        (api.ListRunsRequest(page_token="not-a-token"), "page_token"),
        # a forged token whose run id is a lone surrogate (a JSON escape): the store failed to
        # bind it, UNAVAILABLE and a 31-line traceback a request (found by a hostile-input hunt)
        (api.ListRunsRequest(page_token=_forged_token("\\ud800")), "page_token"),
        # an object of two keys, not the pair the daemon gives: unpacked to its keys (a hunt)
        (
            api.ListRunsRequest(
                page_token=base64.urlsafe_b64encode(
                    b'{"2099-01-01T00:00:00+00:00": 0, "run_zzz": 0}'
                ).decode()
            ),
            "page_token",
        ),
        (api.ListRunsRequest(statuses=[api.RunStatus.UNSPECIFIED]), "statuses[0]"),
        (api.ListRunsRequest(statuses=[api.RunStatus.FAILED] * 3 + [99]), "statuses[3]: unknown"),
        (api.ListRunsRequest(labels={"": "x"}), "labels"),
        # each a condition of one query: 50,000 held a store query slot for a minute
        (api.ListRunsRequest(labels={f"k{i}": "" for i in range(65)}), "labels: at most 64"),
    ]
    for request, field in cases:
        error = rpc_error(daemon, lambda rt, request=request: rt.list_runs(request))
        assert_error(error, Status.INVALID_ARGUMENT, field)
    assert list_runs(daemon).runs == []  # and the daemon is fine
    assert "Traceback" not in daemon.stderr()


def _forged_token(run_id_json: str) -> str:
    raw = f'["2026-01-01T00:00:00+00:00", "{run_id_json}"]'.encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


# --- status filters ------------------------------------------------------------------------------


def statuses(daemon: Daemon, **fields: Any) -> list[fapi.WorkflowStatus]:
    request = fapi.StatusRequest(**fields)
    return list(daemon.call(lambda f, _: f.status(request)).workflows)


def test_status_filters_newest_first_and_lists_finished_workflows_after_a_restart(
    make_daemon, tmp_path
):
    daemon = start(make_daemon, tmp_path)
    emitted = [emit(daemon, "ping", project=p).workflow_id for p in ["one", "two", "one", "one"]]
    for workflow_id in emitted:
        finished(daemon, workflow_id)
    ones = [emitted[3], emitted[2], emitted[0]]

    assert [w.workflow_id for w in statuses(daemon, project="one")] == ones
    assert [w.workflow_id for w in statuses(daemon, project="one", limit=2)] == ones[:2]
    assert statuses(daemon, state="running") == []
    assert len(statuses(daemon, state="completed")) == 4

    daemon.restart()
    assert [w.workflow_id for w in statuses(daemon, project="one")] == ones  # from the database
    after = statuses(daemon, project="two", state="completed")
    assert [w.workflow_id for w in after] == [emitted[1]]
    assert [b.name for b in after[0].task_blocks] == ["quick"]

    shown = cli(daemon, "status", "--project", "one", "--state", "completed", "--limit", "2",
                "--json")  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert [w["workflow_id"] for w in json.loads(shown.stdout)["workflows"]] == ones[:2]

    for fields, name in (({"state": "done"}, "state"), ({"limit": 5000}, "limit")):
        error = rpc_error_foundry(daemon, fapi.StatusRequest(**fields))
        assert_error(error, Status.INVALID_ARGUMENT, name)


def rpc_error_foundry(daemon: Daemon, request: fapi.StatusRequest) -> Any:
    from tests.helpers import grpc_error

    return grpc_error(daemon, lambda foundry, _: foundry.status(request))
