"""The scheduler's decisions (``kernel/core/planner.py``) as plain functions over a RunState."""

import json
from datetime import UTC, datetime

import pytest
from foundry.kernel.core.dag import (
    StepTooLarge,
    UnresolvedReference,
    parse_dag,
    resolve_bounded,
    step_seed,
)
from foundry.kernel.core.planner import (
    Ending,
    Next,
    attempt_limit,
    crash_looped,
    ending,
    forgotten,
    input_total,
    lease,
    may_start,
    next_wait,
    note_inputs,
    note_output,
    output_refused,
    recover,
    reference_bound,
    retry_delay,
    starts,
    step_error,
)
from foundry.kernel.core.runs import RunState, RunSubmission, spec_difference

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def make_run(steps, *, breakpoints=(), inputs=None, seed=7):
    dag_json = json.dumps({"steps": steps})
    submission = RunSubmission(
        run_id="run_1", dag_json=dag_json, inputs=inputs or {}, seed=seed, labels={},
        breakpoints=tuple(breakpoints), idempotency_key="", created_at=T0,
    )  # fmt: skip
    return RunState.new(submission, parse_dag(dag_json, None))


def step(step_id, *, after=(), **extra):
    return {"id": step_id, "type": "noop", "depends_on": list(after), **extra}


def started(run):
    run.make_event("run_started", T0)
    return run


def lease_event(run, step_id, attempt=1):
    run.make_event("step_leased", T0, step_id, attempt=attempt, inputs={}, seed=1, model="",
                   env={})  # fmt: skip


def complete(run, step_id, output=None):
    lease_event(run, step_id)
    run.make_event("step_completed", T0, step_id, output=output, usage={})


def ids(plan):
    return [s.spec.id for s in plan.steps]


# --- which steps are ready to lease ---------------------------------------------------------


def test_every_step_without_dependencies_is_ready_in_dag_order():
    run = started(make_run([step("a"), step("b"), step("c", after=["a"])]))
    plan = starts(run, set())
    assert ids(plan) == ["a", "b"]
    assert plan.pause_at == ""


def test_a_step_is_ready_once_all_its_dependencies_succeeded():
    run = started(make_run([step("a"), step("b"), step("c", after=["a", "b"])]))
    complete(run, "a")
    assert ids(starts(run, {"b"})) == []
    complete(run, "b")
    assert ids(starts(run, set(), ["c"])) == ["c"]


def test_busy_steps_and_steps_outside_the_candidates_are_not_offered():
    run = started(make_run([step("a"), step("b"), step("c")]))
    assert ids(starts(run, {"a"})) == ["b", "c"]
    assert ids(starts(run, set(), ["c", "a"])) == ["a", "c"]  # sorted back into DAG order


def test_a_breakpoint_holds_back_its_step_and_every_ready_step_after_it():
    run = started(make_run([step("a"), step("b"), step("c")], breakpoints=["b"]))
    plan = starts(run, set())
    assert ids(plan) == ["a"]
    assert plan.pause_at == "b"
    assert plan.held == ("b", "c")


def test_after_a_resume_the_held_steps_are_all_the_candidates_needed():
    run = started(make_run([step("a"), step("b"), step("c"), step("d", after=["a"])],
                           breakpoints=["b"]))  # fmt: skip
    plan = starts(run, set())
    run.make_event("run_paused", T0, "b")
    complete(run, "a")  # finished while paused: its dependents join the candidates
    run.make_event("run_resumed", T0, "b")
    candidates = {*plan.held, *run.dag.dependents["a"]}
    assert ids(starts(run, set(), candidates)) == ids(starts(run, set())) == ["b", "c", "d"]


def test_a_released_breakpoint_no_longer_holds():
    run = started(make_run([step("a"), step("b")], breakpoints=["b"]))
    run.make_event("run_paused", T0, "b")
    run.make_event("run_resumed", T0, "b")
    assert ids(starts(run, set())) == ["a", "b"]


@pytest.mark.parametrize(
    ("status", "failed", "stopping", "expected"),
    [
        ("RUNNING", False, False, True),
        ("RUNNING", True, False, False),
        ("RUNNING", False, True, False),
        ("PAUSED_AT_STEP", False, False, False),
        ("PENDING", False, False, False),
    ],
)
def test_new_steps_start_only_in_a_running_healthy_run(status, failed, stopping, expected):
    run = make_run([step("a")])
    run.status = status
    if failed:
        run.failed.append("a")
    assert may_start(run, stopping) is expected


# --- what the driver waits for --------------------------------------------------------------


def test_the_driver_waits_for_running_steps_first():
    run = started(make_run([step("a")]))
    assert next_wait(run, True, False) is Next.STEP
    assert next_wait(run, True, True) is Next.STEP


def test_a_paused_run_waits_for_resume_unless_a_step_failed():
    run = started(make_run([step("a"), step("b")]))
    run.make_event("run_paused", T0, "b")
    assert next_wait(run, False, False) is Next.RESUME
    run.failed.append("a")
    assert next_wait(run, False, False) is Next.END


def test_a_stopping_daemon_leaves_an_unfinished_run_for_the_next_start():
    run = started(make_run([step("a")]))
    assert next_wait(run, False, True) is Next.STOP
    complete(run, "a")
    assert next_wait(run, False, True) is Next.END


# --- leases, timeouts, retries --------------------------------------------------------------


def test_a_lease_resolves_inputs_once_with_the_next_attempt_and_the_step_seed():
    run = started(make_run([
        step("a"), step("b", after=["a"], inputs={"x": "${steps.a.output.v}", "t": "${inputs.t}"},
                        model="m", env={"K": "v"}),
    ], inputs={"t": "topic"}, seed=11))  # fmt: skip
    complete(run, "a", {"v": [1, 2]})
    got = lease(run, run.steps["b"])
    assert got.attempt == 1
    assert json.loads(got.inputs_json) == {"x": [1, 2], "t": "topic"}
    assert got.seed == step_seed(11, "b")
    assert got.payload(run.steps["b"].spec) == {
        "attempt": 1, "inputs": {"x": [1, 2], "t": "topic"}, "seed": got.seed, "model": "m",
        "env": {"K": "v"},
    }  # fmt: skip


def test_a_lease_with_an_unresolvable_reference_raises():
    run = started(make_run([step("a", inputs={"x": "${inputs.missing}"})]))
    with pytest.raises(UnresolvedReference):
        lease(run, run.steps["a"])


@pytest.mark.parametrize("index", ["\u0661", "\u00b2", "9" * 5_000, "-1", "1e0"])
def test_a_list_index_is_ascii_digits_and_anything_else_is_named_unresolved(index):
    """``str.isdigit`` took ``\u0661`` (Arabic-Indic one) for 1; ``\u00b2`` and 5,000 digits
    reached int() and came back as Python's own error text. Found by a hostile-input hunt."""
    run = started(make_run([step("a", inputs={"v": "${inputs.x." + index + "}"})],
                           inputs={"x": [10, 20]}))  # fmt: skip
    with pytest.raises(UnresolvedReference, match="no .* there"):
        lease(run, run.steps["a"])


def _doubling(steps: int) -> list[dict]:
    """Each step's input names the step before's whole output twice: sizes double."""
    chain = [step("s0", inputs={"v": "${inputs.x}"})]
    for i in range(1, steps):
        refs = [f"${{steps.s{i - 1}.output}}"] * 2
        chain.append(step(f"s{i}", after=[f"s{i - 1}"], inputs={"v": refs}))
    return chain


def test_inputs_that_would_resolve_past_the_step_limit_fail_before_they_are_made():
    run = started(make_run(_doubling(4), inputs={"x": "A" * 1_000}))
    complete(run, "s0", {"v": "A" * 1_000})
    assert reference_bound(run, run.steps["s1"].spec) == 2 * len('{"v":"' + "A" * 1_000 + '"}')
    assert len(lease(run, run.steps["s1"], max_bytes=5_000).inputs_json) < 5_000  # fits
    with pytest.raises(StepTooLarge, match=r"inputs: .* over 1,500 bytes .*max_step_bytes"):
        lease(run, run.steps["s1"], max_bytes=1_500)  # refused by the running count
    # A reference to a small part of a large output is counted as what it substitutes.
    big = started(make_run([step("a"), step("b", after=["a"], inputs={
        "x": ["${steps.a.output.small}"] * 3})]))  # fmt: skip
    complete(big, "a", {"small": 1, "large": "L" * 10_000})
    assert reference_bound(big, big.steps["b"].spec) > 30_000  # the bound: whole outputs
    assert json.loads(lease(big, big.steps["b"], max_bytes=100).inputs_json) == {"x": [1, 1, 1]}


def test_resolve_bounded_stops_once_the_substitutions_pass_the_limit():
    outputs = {"a": {"v": "x" * 1_000}}
    with pytest.raises(StepTooLarge):  # 10 substitutions in: the 990 others are never made
        resolve_bounded(["${steps.a.output}"] * 1_000, {}, outputs, 10_000)
    with pytest.raises(StepTooLarge):  # embedded in one string, the same
        resolve_bounded("${steps.a.output} " * 1_000, {}, outputs, 10_000)
    assert resolve_bounded(["${steps.a.output.v}"] * 3, {}, outputs, 10_000) == ["x" * 1_000] * 3


def test_a_patched_steps_references_are_counted_anew():
    run = started(make_run([step("a"), step("b", after=["a"], inputs={"x": 1})]))
    complete(run, "a", {"v": "x" * 100})
    assert reference_bound(run, run.steps["b"].spec) == 0
    run.make_event("step_patched", T0, "b", inputs_patch={"x": "${steps.a.output}"}, env={},
                   model=None)  # fmt: skip
    assert reference_bound(run, run.steps["b"].spec) == len('{"v":"' + "x" * 100 + '"}')


def test_an_output_past_the_step_or_the_run_limit_is_refused():
    run = started(make_run([step("a"), step("b")]))
    assert output_refused(run, 10, max_step=10, max_run=25) == ""
    assert "over the step limit of 10" in output_refused(run, 11, max_step=10, max_run=25)
    note_output(run, "a", 10)
    note_output(run, "b", 10)
    assert run.output_total == 20
    assert "max_run_bytes" in output_refused(run, 6, max_step=10, max_run=25)


def test_a_rebuilt_runs_outputs_so_far_count_toward_its_limit():
    """A run rebuilt from its log (a restart) or a branch's reused steps: their outputs count
    once a completion asks, so a restart does not reset the run's budget."""
    run = started(make_run([step("a"), step("b"), step("c")]))
    complete(run, "a", {"v": "x" * 10})  # 18 bytes of JSON
    run.make_event("step_reused", T0, "b", output="yy", attempt=1, usage={}, inputs={}, seed=1,
                   model="")  # fmt: skip
    run.output_total = None  # as the scheduler's rebuild leaves it
    assert output_refused(run, 6, max_step=100, max_run=28) == ""  # 18 + 4 + 6
    assert "max_run_bytes" in output_refused(run, 7, max_step=100, max_run=28)
    note_output(run, "c", 6)
    assert run.output_total == 28


def test_leased_inputs_count_toward_the_runs_limit():
    """Every lease is recorded (each attempt's inputs, resolved): a 124 KB request whose 300
    steps each named a 90 KB input wrote 62 MB, with max_run_bytes counting outputs only."""
    run = started(make_run([step(f"s{i}", inputs={"v": "${inputs.big}"}) for i in range(3)],
                           inputs={"big": "B" * 1_000}))  # fmt: skip
    size = len(lease(run, run.steps["s0"], max_run=5_000).inputs_json)  # {"v":"BB…"}: 1,008
    note_inputs(run, size)
    note_inputs(run, size)
    assert input_total(run) == 2 * size
    note_output(run, "s0", 2_000)
    with pytest.raises(StepTooLarge, match=r"inputs: 1,008 bytes .* past 5,000 .*max_run_bytes"):
        lease(run, run.steps["s2"], max_run=5_000)  # 2,016 + 2,000 + 1,008 > 5,000
    assert lease(run, run.steps["s2"], max_run=5_024).inputs_json  # exactly at the limit
    assert "inputs and outputs" in output_refused(run, 1_000, max_step=10_000, max_run=5_000)


def test_a_rebuilt_runs_leases_so_far_count_toward_its_limit():
    """A run rebuilt from its log (a restart): its recorded leases count, so a restart (or a
    daemon killed at each step) does not reset the run's budget."""
    run = started(make_run([step("a"), step("b")]))
    run.make_event("step_leased", T0, "a", attempt=1, inputs={"x": "y" * 20}, seed=1, model="",
                   env={})  # fmt: skip
    run.make_event("step_leased", T0, "a", attempt=2, inputs={"x": "y" * 20}, seed=1, model="",
                   env={})  # fmt: skip
    run.input_total = None  # as the scheduler's rebuild leaves it
    assert input_total(run) == 2 * len('{"x":"' + "y" * 20 + '"}')
    assert "max_run_bytes" in output_refused(run, 1, max_step=100, max_run=input_total(run))


def test_a_long_step_error_keeps_its_ends_and_loses_its_middle():
    error = step_error("head " + "x" * 100_000 + " tail", attempt=2)
    message = error["message"]
    assert len(message) < 2_100
    assert message.startswith("head xxx")
    assert message.endswith("xxx tail")
    assert "(98,010 characters cut)" in message
    assert step_error("short")["message"] == "short"


def test_the_step_timeout_wins_over_the_blocks():
    run = make_run([step("a", timeout=3), step("b")])
    assert attempt_limit(run.steps["a"].spec, 60.0) == 3
    assert attempt_limit(run.steps["b"].spec, 60.0) == 60.0
    assert attempt_limit(run.steps["b"].spec, None) is None


def test_the_steps_retry_policy_wins_over_the_blocks_and_doubles_per_failure():
    spec = make_run([step("a", retry={"max_attempts": 3, "backoff": 0.5})]).steps["a"].spec
    assert [retry_delay(spec, n, 9, 10.0) for n in range(4)] == [0.5, 1.0, None, None]


def test_without_a_retry_policy_the_blocks_retries_and_backoff_apply():
    spec = make_run([step("a")]).steps["a"].spec
    assert [retry_delay(spec, n, 2, 0.25) for n in range(3)] == [0.25, 0.5, None]
    assert retry_delay(spec, 0, 0, 0.25) is None  # no retries: the first failure fails the step


def test_a_step_error_says_which_attempt_and_whether_it_timed_out():
    assert step_error("boom", 2, True) == {"message": "boom", "attempt": 2, "timed_out": True}


# --- recovery and the run's end -------------------------------------------------------------


def test_recovery_re_leases_interrupted_steps_with_the_next_attempt():
    run = started(make_run([step("a"), step("b"), step("c")]))
    complete(run, "a")
    lease_event(run, "b", attempt=2)
    lease_event(run, "c")
    run.make_event("step_retrying", T0, "c", error=step_error("x", 1), delay=1.0)
    assert recover(run) == ["b", "c"]
    assert [run.steps[i].status for i in "abc"] == ["succeeded", "pending", "pending"]
    assert lease(run, run.steps["b"]).attempt == 3
    assert run.steps["c"].failures == 1  # a retrying step keeps the failures it had
    assert recover(run) == []


def interrupted(run, step_id, attempt, crashed):
    run.make_event("step_interrupted", T0, step_id, attempt=attempt, crashed=crashed)


def test_only_crashes_in_a_row_make_a_step_crash_looped():
    run = started(make_run([step("a")]))
    a = run.steps["a"]
    for attempt, crashed in ((1, True), (2, True), (3, False), (4, True), (5, True)):
        lease_event(run, "a", attempt=attempt)
        interrupted(run, "a", attempt, crashed)
        assert a.status == "pending"  # to be leased again
        assert not crash_looped(a)  # a clean stop between them starts the count again
    assert a.crashes == 2
    lease_event(run, "a", attempt=6)
    interrupted(run, "a", 6, True)
    assert crash_looped(a)


@pytest.mark.parametrize("outcome", ["step_retrying", "step_completed", "step_failed"])
def test_an_attempt_that_ended_starts_the_count_of_crashes_again(outcome):
    run = started(make_run([step("a")]))
    for attempt in (1, 2):
        lease_event(run, "a", attempt=attempt)
        interrupted(run, "a", attempt, True)
    lease_event(run, "a", attempt=3)
    payload = {"output": {}, "usage": {}} if outcome == "step_completed" else {}
    run.make_event(outcome, T0, "a", error=step_error("x", 3), delay=1.0, **payload)
    assert run.steps["a"].crashes == 0


def test_a_run_ends_succeeded_or_failed_at_its_first_failed_step():
    run = started(make_run([step("a"), step("b")]))
    assert ending(run) == Ending("run_succeeded")
    assert ending(run).payload() == {}
    for step_id, message in (("b", "late"), ("a", "later")):
        lease_event(run, step_id)
        run.make_event("step_failed", T0, step_id, error=step_error(message, 1))
    end = ending(run)
    assert (end.kind, end.step_id) == ("run_failed", "b")
    assert end.payload() == {"error": "step 'b' failed: late"}


def test_spec_difference_names_the_first_field_a_resent_spec_changes():
    first = RunSubmission(
        run_id="run_1", dag_json='{"steps": []}', inputs={"n": 1, "s": "x"}, seed=7,
        labels={"team": "qa"}, breakpoints=("a", "b"), idempotency_key="k", created_at=T0,
    )  # fmt: skip
    same = ('{"steps": []}', {"s": "x", "n": 1}, 7, {"team": "qa"}, ["b", "a", "b"])
    assert spec_difference(first, *same) == ""
    changes = {
        "dag_json": (0, '{"steps":[]}'),
        "inputs": (1, {"n": True, "s": "x"}),  # equal in Python, not in JSON
        "seed": (2, 8),
        "labels": (3, {}),
        "breakpoints": (4, ["a"]),
    }
    for field, (index, value) in changes.items():
        resent = list(same)
        resent[index] = value
        assert spec_difference(first, *resent) == field
    assert spec_difference(first, '{"x": 1}', {}, 0, {}, []) == "dag_json"  # the first wins


class _CountedSteps(dict):
    looked_up = 0

    def __getitem__(self, key):
        type(self).looked_up += 1
        return super().__getitem__(key)


def test_ready_looks_at_each_dependency_about_once_however_dense_the_dag():
    """Each step depending on every earlier one: ``ready`` walked every dependency of every
    dependent on each completion — cubic (900 steps took 19 s of the loop); a step's count of
    dependencies known to have succeeded makes it about linear in the edges."""
    n = 120
    run = make_run([step(f"s{i}", after=[f"s{j}" for j in range(i)]) for i in range(n)])
    run.steps = _CountedSteps(run.steps)
    order = []
    candidates = None
    for _ in range(n):
        plan = starts(run, set(), candidates)
        assert len(plan.steps) == 1
        done = plan.steps[0]
        done.status = "succeeded"
        order.append(done.spec.id)
        candidates = run.dag.dependents.get(done.spec.id, ())
    assert order == [f"s{i}" for i in range(n)]
    edges = n * (n - 1) // 2
    assert _CountedSteps.looked_up <= 3 * edges  # cubic: ~n**3 / 6 = 288,000 here


def test_finished_runs_are_forgotten_oldest_first_by_count_and_by_bytes_never_the_newest():
    runs = [("a", 10), ("b", 50), ("c", 5), ("d", 20)]
    assert forgotten(runs, keep_runs=10, keep_bytes=1_000) == []
    assert forgotten(runs, keep_runs=2, keep_bytes=1_000) == ["a", "b"]
    assert forgotten(runs, keep_runs=10, keep_bytes=30) == ["a", "b"]  # c + d: 25 bytes
    assert forgotten(runs, keep_runs=10, keep_bytes=24) == ["a", "b", "c"]
    assert forgotten(runs, keep_runs=10, keep_bytes=1) == ["a", "b", "c"]  # d stays
    assert forgotten([], keep_runs=1, keep_bytes=1) == []


def test_a_step_that_fails_before_its_lease_has_the_attempt_its_failure_names():
    """Inputs that cannot be resolved fail the first attempt before any lease: GetRun said
    attempt 0 beside its error's attempt 1 (and the steps view's 1)."""
    run = started(make_run([step("a")]))
    run.make_event("step_failed", T0, "a", attempt=1, error=step_error("unresolved", 1))
    assert run.steps["a"].attempt == run.steps["a"].error["attempt"] == 1


def test_a_step_a_stopped_daemon_interrupted_cannot_be_patched():
    """Pending again after ``step_interrupted``, but it ran (a mutator's side effect may be
    done): a patch let its next attempt repeat it with other inputs than the recorded ones
    (found by a time-travel hunt). A step that never ran can be."""
    from foundry.kernel.core.run_control import finished_patch, made_patch, patchable_step
    from foundry.kernel.errors import FailedPrecondition

    run = started(make_run([step("a"), step("b")], breakpoints=["b"]))
    lease_event(run, "a")
    interrupted(run, "a", 1, True)
    run.status = "PAUSED_AT_STEP"  # as a breakpoint leaves it
    with pytest.raises(FailedPrecondition, match="step 'a' ran: attempt 1 was interrupted"):
        patchable_step(run, "a")
    spec = patchable_step(run, "b").spec
    made = made_patch(run.dag, spec, {"x": 1}, None, None, "")
    assert finished_patch(run, "b", made)["inputs_patch"] == {"x": 1}
