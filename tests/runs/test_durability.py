"""Durable runs: kill -9 the daemon mid-run; the next start carries on where the log stops."""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import UTC, datetime

import pytest
from foundry.proto import runtime_api as api
from foundry.proto.generated.google.protobuf import Struct
from grpclib.const import Status

from tests.runs.helpers import (
    assert_error,
    dag,
    get_run,
    history,
    kinds,
    of_kind,
    rpc_error,
    run_and_wait,
    steps,
    submit,
    tap,
    value,
    wait_done,
    wait_for,
    wait_status,
)

STEPS = 100

# Appends its step id to $LOG (a side effect, so a mutator), then answers with JSON.
APPEND = (
    'echo $FOUNDRY_STEP_ID >> "$LOG"; sleep 0.02; '
    """printf '{"ok":true,"step":"%s","n":%s}' $FOUNDRY_STEP_ID $FOUNDRY_INPUT_N"""
)
CHAIN_BLOCK = f"""
[[blocks]]
name = "append"
type = "shell"
kind = "mutator"
command = ["sh", "-c", {json.dumps(APPEND)}]
env = {{ LOG = "LOGFILE" }}
"""


def chain(count: int) -> str:
    return dag(
        {"id": "s000", "type": "append", "inputs": {"n": 0}},
        *(
            {
                "id": f"s{i:03d}",
                "type": "append",
                "inputs": {"n": i, "prev": f"${{steps.s{i - 1:03d}.output.step}}"},
            }
            for i in range(1, count)
        ),
    )


def test_kill_9_mid_run_then_the_run_finishes_without_redoing_steps(make_daemon, tmp_path):
    log = tmp_path / "steps.log"
    daemon = make_daemon(CHAIN_BLOCK.replace("LOGFILE", str(log)))
    run_id = submit(daemon, chain(STEPS), inputs={"why": "durability"}, seed=5)

    def completed(run):
        return sum(s.status == "succeeded" for s in run.steps)

    wait_for(daemon, run_id, lambda r: completed(r) >= 30, timeout=60, what="30 steps done")
    daemon.kill()  # SIGKILL: no shutdown, no flush beyond what was committed
    lines_at_kill = log.read_text().split()
    assert 30 <= len(lines_at_kill) < STEPS, "the kill came too late to test anything"

    daemon.start()  # nobody resumes the run: the daemon picks it up by itself
    run = wait_done(daemon, run_id, timeout=60)
    assert run.status == api.RunStatus.SUCCEEDED

    # completed steps were not executed again; only the one interrupted may have run twice
    written = Counter(log.read_text().split())
    assert set(written) == {f"s{i:03d}" for i in range(STEPS)}
    twice = [step_id for step_id, n in written.items() if n > 1]
    assert len(twice) <= 1
    assert all(written[s] == 2 for s in twice)

    events = tap(daemon, run_id)
    leases = Counter(e["step_id"] for e in of_kind(events, "step_leased"))
    relased = [step_id for step_id, n in leases.items() if n > 1]
    assert len(relased) <= 1
    by_id = steps(run)
    for step_id in relased:  # the interrupted step: leased again with attempt + 1
        assert by_id[step_id].attempt == 2
        assert [e["payload"]["attempt"] for e in of_kind(events, "step_leased", step_id)] == [1, 2]
        assert step_id in lines_at_kill[-1:] or step_id not in lines_at_kill
    assert set(twice) <= set(relased)
    for i, step in enumerate(run.steps):
        assert step.status == "succeeded"
        assert step.attempt == (2 if step.step_id in relased else 1)
        assert value(step.output) == {"ok": True, "step": step.step_id, "n": i}
    # the log is one unbroken sequence: each step once, in order, events numbered 1..N
    assert [e["payload"]["seq"] for e in events] == list(range(1, len(events) + 1))
    assert kinds(events).count("run_submitted") == 1
    assert kinds(events).count("run_started") == 1
    assert kinds(events).count("step_completed") == STEPS
    assert events[-1]["kind"] == "run_succeeded"
    assert run.spec.inputs.to_dict() == {"why": "durability"}
    assert run.spec.seed == 5


PAUSABLE = dag(
    {"id": "first", "type": "transform", "inputs": {"value": "${inputs.x}"}},
    {"id": "held", "type": "transform", "inputs": {"got": "${steps.first.output}"}},
    {"id": "last", "type": "transform", "inputs": {"got": "${steps.held.output.got}"}},
)


@pytest.mark.parametrize("how", ["kill", "stop"])
def test_a_paused_run_survives_a_restart_and_resumes_after_it(make_daemon, how):
    daemon = make_daemon("[daemon]\nshutdown_grace = 30\n")
    run_id = submit(daemon, PAUSABLE, inputs={"x": 41}, breakpoints=["held", "last"])
    wait_status(daemon, run_id, api.RunStatus.PAUSED_AT_STEP)
    request = api.UpdateBreakpointsRequest(run_id=run_id, remove=["last"])
    assert list(daemon.call(lambda _, rt: rt.update_breakpoints(request)).breakpoints) == ["held"]
    patch = api.PatchStepRequest(
        run_id=run_id,
        step_id="held",
        note="before the restart",
        inputs_patch=Struct.from_dict({"extra": "${inputs.x}"}),
    )
    assert daemon.call(lambda _, rt: rt.patch_step(patch)).step_id == "held"
    if how == "kill":
        daemon.kill()
        daemon.start()
    else:
        started = time.monotonic()
        assert daemon.stop() == 0
        # nothing is in flight: the stop does not sit out the shutdown grace
        assert time.monotonic() - started < 10
        daemon.start()
    time.sleep(0.2)  # give a (wrong) restart the chance to run past the breakpoint
    run = get_run(daemon, run_id)
    assert run.status == api.RunStatus.PAUSED_AT_STEP
    assert list(run.spec.breakpoints) == ["held"]  # as updated, not as submitted
    assert [s.status for s in run.steps] == ["succeeded", "pending", "pending"]
    reply = daemon.call(lambda _, rt: rt.resume_run(api.ResumeRunRequest(run_id=run_id)))
    assert reply.resumed_step_id == "held"
    assert reply.status == api.RunStatus.RUNNING
    run = wait_done(daemon, run_id)
    assert run.status == api.RunStatus.SUCCEEDED
    assert value(run.steps[1].output) == {"got": 41, "extra": 41}  # the patch survived too
    assert value(run.steps[2].output) == {"got": 41}
    events = tap(daemon, run_id)
    assert kinds(events).count("run_paused") == 1
    assert [e["payload"]["seq"] for e in events] == list(range(1, len(events) + 1))
    assert json.loads(run.spec.dag_json) == json.loads(PAUSABLE)


def test_a_restart_does_not_reset_a_runs_output_budget(make_daemon):
    """[scheduler] max_run_bytes counts every input and output the run recorded: those a
    daemon made before its restart too (they were forgotten: the budget began again at zero)."""
    daemon = make_daemon("[scheduler]\nmax_run_bytes = 7000\n")
    big = "B" * 1200
    spec = dag(
        {"id": "first", "type": "transform", "inputs": {"v": "${inputs.big}"}},
        {"id": "second", "type": "transform", "depends_on": ["first"],
         "inputs": {"v": "${inputs.big}"}},
        {"id": "third", "type": "transform", "depends_on": ["second"],
         "inputs": {"v": "${inputs.big}"}},
    )  # fmt: skip
    run_id = submit(daemon, spec, inputs={"big": big}, breakpoints=["third"])
    wait_status(daemon, run_id, api.RunStatus.PAUSED_AT_STEP)
    daemon.kill()
    daemon.start()
    daemon.call(lambda _, rt: rt.resume_run(api.ResumeRunRequest(run_id=run_id)))
    run = wait_done(daemon, run_id)
    assert run.status == api.RunStatus.FAILED  # 3 × ~1,210 bytes in, 3 out: past 7,000
    assert [s.status for s in run.steps] == ["succeeded", "succeeded", "failed"]
    assert "max_run_bytes" in value(run.steps[2].error)["message"]


def test_patches_are_held_to_the_step_limit_and_count_toward_the_runs(make_daemon):
    """Each ``step_patched`` records the patch and the step's inputs before it: patches merged
    into one paused step grew a run past max_run_bytes (313 MB), refused only at resume."""
    daemon = make_daemon("[scheduler]\nmax_step_bytes = 2000\nmax_run_bytes = 8000\n")
    spec = dag(
        {"id": "a", "type": "transform", "inputs": {"n": 1}},
        {"id": "b", "type": "transform", "depends_on": ["a"], "inputs": {"n": 2}},
    )
    run_id = submit(daemon, spec, breakpoints=["b"])
    wait_status(daemon, run_id, api.RunStatus.PAUSED_AT_STEP)

    def patched(inputs):
        request = api.PatchStepRequest(run_id=run_id, step_id="b",
                                       inputs_patch=Struct.from_dict(inputs))  # fmt: skip
        return lambda rt: rt.patch_step(request)

    daemon.call(lambda _, rt: patched({"x": "P" * 1500})(rt))  # ~1,520 bytes recorded
    too_big = rpc_error(daemon, patched({"y": "Q" * 1500}))  # merged: ~3,020 bytes of inputs
    assert_error(too_big, Status.INVALID_ARGUMENT, "inputs_patch", "max_step_bytes")
    daemon.call(lambda _, rt: patched({"x": "R" * 1800})(rt))  # + 1,810 and the 1,510 before
    for _ in range(2):  # + 3,620 more: past 8,000 — counted again from the log after a kill
        over_run = rpc_error(daemon, patched({"x": "S" * 1800}))
        assert_error(over_run, Status.INVALID_ARGUMENT, "inputs_patch", "max_run_bytes")
        daemon.kill()
        daemon.start()
    events = history(daemon, run_id, lambda events: bool(of_kind(events, "run_paused")))
    assert [len(e["payload"]["inputs_patch"]["x"]) for e in of_kind(events, "step_patched")] == [
        1500,
        1800,
    ]


def test_a_branchs_inputs_are_held_to_the_step_limit(make_daemon):
    """A branch's inputs (its source's, ``inputs_patch`` merged in) were not held to any limit:
    branch after branch of 3.5 MB patches made a run of 17.7 MB of inputs, which no default
    client could read back (a run-steps hunt)."""
    daemon = make_daemon("[scheduler]\nmax_step_bytes = 2000\n")
    run_id = run_and_wait(daemon, dag({"id": "a", "type": "transform", "inputs": {"n": 1}}),
                          inputs={"x": "P" * 1500}).run_id  # fmt: skip

    def branched(inputs):
        request = api.CreateBranchRunRequest(run_id=run_id, from_step="a",
                                             inputs_patch=Struct.from_dict(inputs))  # fmt: skip
        return lambda rt: rt.create_branch_run(request)

    too_big = rpc_error(daemon, branched({"y": "Q" * 1500}))  # merged: ~3,020 bytes of inputs
    assert_error(too_big, Status.INVALID_ARGUMENT, "inputs_patch", "max_step_bytes")
    within = daemon.call(lambda _, rt: branched({"x": "R" * 1800})(rt)).run_id  # replaces x
    assert wait_done(daemon, within).status == api.RunStatus.SUCCEEDED
    labels = Struct.from_dict({"l": "L" * 2500})
    labelled = api.CreateBranchRunRequest(run_id=within, from_step="a", labels_patch=labels)
    too_many = rpc_error(daemon, lambda rt: rt.create_branch_run(labelled))
    assert_error(too_many, Status.INVALID_ARGUMENT, "labels_patch", "max_step_bytes")


def test_a_step_a_kill_interrupted_in_a_paused_run_is_leased_again_at_once(make_daemon):
    """A pause lets steps already running finish: after kill -9, one that was running stayed
    pending until a ResumeRun, and PatchStep refused it as "leased again as it was"."""
    daemon = make_daemon()
    spec = dag(
        {"id": "a", "type": "transform", "inputs": {"value": 1}},
        {"id": "long", "type": "sleeper", "depends_on": ["a"], "inputs": {"seconds": 1.5}},
        {"id": "held", "type": "transform", "depends_on": ["a"], "inputs": {"value": 2}},
    )
    run_id = submit(daemon, spec, breakpoints=["held"])
    wait_for(daemon, run_id, lambda r: steps(r)["long"].status == "running", what="long running")
    daemon.kill()
    daemon.start()
    run = wait_for(daemon, run_id, lambda r: steps(r)["long"].status == "succeeded",
                   what="long finished, still paused", timeout=30)  # fmt: skip
    assert run.status == api.RunStatus.PAUSED_AT_STEP
    assert (steps(run)["long"].attempt, steps(run)["held"].status) == (2, "pending")
    daemon.call(lambda _, rt: rt.resume_run(api.ResumeRunRequest(run_id=run_id)))
    assert wait_done(daemon, run_id).status == api.RunStatus.SUCCEEDED


def test_a_graceful_stop_starts_no_new_steps_and_the_next_start_goes_on(make_daemon):
    daemon = make_daemon("[daemon]\nshutdown_grace = 30\n")
    count = 8
    run_id = submit(
        daemon,
        dag(
            {"id": "s0", "type": "sleeper", "inputs": {"seconds": 0.4}},
            *(
                {
                    "id": f"s{i}",
                    "type": "sleeper",
                    "depends_on": [f"s{i - 1}"],
                    "inputs": {"seconds": 0.4},
                }
                for i in range(1, count)
            ),
        ),
    )
    wait_for(daemon, run_id, lambda r: r.steps[1].status == "running", what="s1 running")
    stopping = datetime.now(UTC)
    assert daemon.stop() == 0
    restarting = datetime.now(UTC)
    daemon.start()
    run = wait_done(daemon, run_id)
    assert run.status == api.RunStatus.SUCCEEDED
    events = tap(daemon, run_id)
    leases = of_kind(events, "step_leased")
    # the step in flight finished within the grace; no new step started while stopping
    assert not [e["step_id"] for e in leases if stopping < e["occurred_at"] < restarting]
    assert any(e["occurred_at"] > restarting for e in leases)  # the next start went on
    assert [e["step_id"] for e in leases] == [f"s{i}" for i in range(count)]  # each once
    assert all(s.attempt == 1 for s in run.steps)
    assert kinds(events).count("run_started") == 1
    assert kinds(events).count("run_succeeded") == 1


def test_a_stop_that_cuts_a_step_short_says_so(make_daemon):
    """A step still running when the shutdown grace ran out was cancelled without a word (an
    operator hunt): the next start leases it again, and the stop says it in one warning."""
    daemon = make_daemon("[daemon]\nshutdown_grace = 0.5\n")
    run_id = submit(daemon, dag({"id": "long", "type": "sleeper", "inputs": {"seconds": 30}}))
    wait_for(daemon, run_id, lambda r: r.steps[0].status == "running", what="the step running")
    assert daemon.stop() == 0
    assert "leases them again" in daemon.stderr()
    assert "steps still running after the 0.5 s shutdown grace were cancelled" in daemon.stderr()


def test_a_mutator_backing_off_is_cancelled_at_once(make_daemon, tmp_path):
    """CancelRun gave a mutator waiting to retry the grace of a running one (a hunt): it runs
    nothing, yet the cancel waited the grace (or the backoff) out."""
    daemon = make_daemon("[daemon]\nshutdown_grace = 30\n")
    flaky = {"id": "flaky", "type": "flaky", "retry": {"max_attempts": 3, "backoff": 20},
             "inputs": {"counter": str(tmp_path / "calls"), "until": 3}}  # fmt: skip
    run_id = submit(daemon, dag(flaky))
    wait_for(daemon, run_id, lambda r: r.steps[0].status == "retrying", what="backing off")
    started = time.monotonic()
    request = api.CancelRunRequest(run_id=run_id, reason="no more")
    answer = daemon.call(lambda _, rt: rt.cancel_run(request))
    assert time.monotonic() - started < 5  # neither the 20 s backoff nor the 30 s grace
    assert answer.status == api.RunStatus.CANCELED
    run = get_run(daemon, run_id)
    assert (run.steps[0].status, run.steps[0].attempt) == ("canceled", 1)
    assert kinds(tap(daemon, run_id), "flaky") == ["step_leased", "step_retrying", "step_canceled"]


def test_a_step_backing_off_does_not_hold_up_a_stop(make_daemon, tmp_path):
    daemon = make_daemon("[daemon]\nshutdown_grace = 30\n")
    counter = tmp_path / "calls"
    run_id = submit(
        daemon,
        dag(
            {
                "id": "flaky",
                "type": "flaky",
                "retry": {"max_attempts": 3, "backoff": 20},
                "inputs": {"counter": str(counter), "until": 2},
            }
        ),
    )
    wait_for(daemon, run_id, lambda r: r.steps[0].status == "retrying", what="backing off")
    started = time.monotonic()
    assert daemon.stop() == 0
    assert time.monotonic() - started < 10  # neither the 20 s backoff nor the 30 s grace
    daemon.start()
    run = wait_done(daemon, run_id)
    assert run.status == api.RunStatus.SUCCEEDED
    assert run.steps[0].attempt == 2
    assert value(run.steps[0].output) == {"calls": 2}
    events = tap(daemon, run_id)
    assert kinds(events, "flaky") == [
        "step_leased",
        "step_retrying",
        "step_leased",
        "step_completed",
    ]


def test_steps_running_at_once_keep_to_the_runs_output_budget(make_daemon):
    """Outputs of 64 KiB or more are walked on a worker thread: steps finishing together each
    passed the budget check before any counted its output (5 × 90 KB past a 300 KB limit)."""
    # 5 leases of ~90 KB (450 KB) fit; then 3 outputs of ~90 KB do, a fourth does not
    daemon = make_daemon("[scheduler]\nmax_step_bytes = 100000\nmax_run_bytes = 750000\n")
    big = "B" * 90_000
    spec = dag(*({"id": f"r{i}", "type": "transform", "inputs": {"v": "${inputs.big}"}}
                 for i in range(5)))  # fmt: skip
    run = run_and_wait(daemon, spec, inputs={"big": big})
    assert run.status == api.RunStatus.FAILED
    succeeded = [s for s in run.steps if s.status == "succeeded"]
    assert len(succeeded) <= 3
    failed = [value(s.error)["message"] for s in run.steps if s.status == "failed"]
    assert failed
    assert all("max_run_bytes" in message for message in failed)


def test_leases_that_name_a_large_input_keep_to_the_runs_budget(make_daemon):
    """Each lease records its resolved inputs: a 124 KB request whose 300 steps each named a
    90 KB input wrote 62 MB to the home when max_run_bytes counted outputs only."""
    daemon = make_daemon("[scheduler]\nmax_run_bytes = 1000000\n")
    big = "B" * 90_000
    spec = dag(*({"id": f"r{i:03d}", "type": "transform", "inputs": {"v": "${inputs.big}"},
                  "depends_on": [f"r{i - 1:03d}"] if i else []}
                 for i in range(300)))  # fmt: skip
    run_id = submit(daemon, spec, inputs={"big": big})
    run = wait_done(daemon, run_id)
    assert run.status == api.RunStatus.FAILED
    statuses = [s.status for s in run.steps]
    # each step: ~90 KB in, ~90 KB out (5 × 180 KB); the sixth's output passes 1,000,000
    assert statuses[:5] == ["succeeded"] * 5
    assert statuses[5] == "failed"
    assert "max_run_bytes" in value(run.steps[5].error)["message"]
    assert set(statuses[6:]) <= {"skipped", "pending"}
    leases = of_kind(tap(daemon, run_id), "step_leased")
    assert len(leases) == 6  # not 300: the seventh would have been refused
