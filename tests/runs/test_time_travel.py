"""Breakpoints, PatchStep, ResumeRun, CreateBranchRun and ReplayRun end to end."""

from __future__ import annotations

from pathlib import Path

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
    outputs,
    paused_at,
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

PAUSED = api.RunStatus.PAUSED_AT_STEP


@pytest.fixture(scope="module")
def daemon(shared_daemon):
    return shared_daemon()


def breakpoints(daemon, run_id, add=(), remove=(), clear_all=False):
    request = api.UpdateBreakpointsRequest(
        run_id=run_id, add=list(add), remove=list(remove), clear_all=clear_all
    )
    return list(daemon.call(lambda _, rt: rt.update_breakpoints(request)).breakpoints)


def resume(daemon, run_id):
    return daemon.call(lambda _, rt: rt.resume_run(api.ResumeRunRequest(run_id=run_id)))


def patch_request(run_id, step_id, *, inputs=None, env=None, model=None, note=""):
    return api.PatchStepRequest(
        run_id=run_id,
        step_id=step_id,
        note=note,
        model=model,
        inputs_patch=Struct.from_dict(inputs) if inputs is not None else None,
        env=Struct.from_dict(env) if env is not None else None,
    )


def patch(daemon, run_id, step_id, **changes):
    request = patch_request(run_id, step_id, **changes)
    return daemon.call(lambda _, rt: rt.patch_step(request)).step_id


def branch(
    daemon,
    run_id,
    from_step,
    *,
    seed_mode=api.BranchSeedMode.SAME,
    seed=None,
    inputs=None,
    labels=None,
    note="",
):
    request = api.CreateBranchRunRequest(
        run_id=run_id,
        from_step=from_step,
        seed_mode=seed_mode,
        seed=seed,
        note=note,
        inputs_patch=Struct.from_dict(inputs) if inputs is not None else None,
        labels_patch=Struct.from_dict(labels) if labels is not None else None,
    )
    return daemon.call(lambda _, rt: rt.create_branch_run(request)).run_id


def replay(daemon, run_id, mode):
    return daemon.call(lambda _, rt: rt.replay_run(api.ReplayRunRequest(run_id=run_id, mode=mode)))


# --- breakpoints ---------------------------------------------------------------------------------


def test_breakpoint_from_the_spec_pauses_before_the_step(daemon):
    run_id = submit(
        daemon,
        dag(
            {"id": "a", "type": "transform", "inputs": {"value": 1}},
            {"id": "slow", "type": "sleeper", "inputs": {"seconds": 0.6}},
            {"id": "b", "type": "transform", "inputs": {"got": "${steps.a.output}"}},
        ),
        breakpoints=["b"],
    )
    run = wait_status(daemon, run_id, PAUSED)
    by_id = steps(run)
    assert by_id["a"].status == "succeeded"
    assert by_id["b"].status == "pending"
    assert by_id["b"].attempt == 0
    assert by_id["b"].leased_at is None
    assert list(run.spec.breakpoints) == ["b"]
    # the branch already running finishes while the run stays paused
    run = wait_for(
        daemon, run_id, lambda r: steps(r)["slow"].status == "succeeded", what="slow done"
    )
    assert run.status == PAUSED
    assert steps(run)["b"].status == "pending"
    events = history(daemon, run_id, paused_at("b"))
    (paused,) = of_kind(events, "run_paused")
    assert paused["step_id"] == "b"
    assert not of_kind(events, "step_leased", "b")
    reply = resume(daemon, run_id)
    assert reply.status == api.RunStatus.RUNNING
    assert reply.resumed_step_id == "b"
    run = wait_done(daemon, run_id)
    assert run.status == api.RunStatus.SUCCEEDED
    assert value(steps(run)["b"].output) == {"got": 1}
    events = tap(daemon, run_id)
    order = kinds(events)
    assert order.index("run_paused") < order.index("run_resumed") < len(order) - 1
    assert kinds(events, "b") == [
        "run_paused",
        "run_resumed",
        "step_leased",
        "step_completed",
    ]


def test_breakpoint_on_the_first_step_pauses_before_anything_runs(daemon):
    run_id = submit(
        daemon,
        dag({"id": "first", "type": "transform", "inputs": {"value": 1}}),
        breakpoints=["first"],
    )
    run = wait_status(daemon, run_id, PAUSED)
    assert run.steps[0].status == "pending"
    assert resume(daemon, run_id).resumed_step_id == "first"
    assert wait_done(daemon, run_id).status == api.RunStatus.SUCCEEDED


CHAIN = dag(
    {"id": "a", "type": "transform", "inputs": {"value": "A"}},
    {"id": "b", "type": "transform", "inputs": {"prev": "${steps.a.output}"}},
    {"id": "c", "type": "transform", "inputs": {"prev": "${steps.b.output}"}},
    {"id": "d", "type": "transform", "inputs": {"prev": "${steps.c.output}"}},
)


def test_update_breakpoints_add_remove_clear_and_transitions(daemon):
    run_id = submit(daemon, CHAIN, breakpoints=["b"])
    wait_status(daemon, run_id, PAUSED)
    assert breakpoints(daemon, run_id, add=["d", "c"]) == ["b", "c", "d"]  # DAG order
    assert breakpoints(daemon, run_id, remove=["d"]) == ["b", "c"]
    assert breakpoints(daemon, run_id, add=["a"], remove=["a"]) == ["b", "c"]
    assert breakpoints(daemon, run_id) == ["b", "c"]
    assert list(get_run(daemon, run_id).spec.breakpoints) == ["b", "c"]
    # unknown steps are refused and change nothing
    error = rpc_error(
        daemon,
        lambda rt: rt.update_breakpoints(
            api.UpdateBreakpointsRequest(run_id=run_id, add=["ghost"])
        ),
    )
    assert_error(error, Status.INVALID_ARGUMENT, "'ghost'")
    error = rpc_error(
        daemon,
        lambda rt: rt.update_breakpoints(
            api.UpdateBreakpointsRequest(run_id=run_id, remove=["nope"])
        ),
    )
    assert_error(error, Status.INVALID_ARGUMENT, "'nope'")
    assert breakpoints(daemon, run_id) == ["b", "c"]
    # resume at b → pauses again at the added breakpoint c
    assert resume(daemon, run_id).resumed_step_id == "b"
    run = wait_for(
        daemon,
        run_id,
        lambda r: r.status == PAUSED and steps(r)["b"].status == "succeeded",
        what="paused at c",
    )
    assert steps(run)["c"].status == "pending"
    assert of_kind(history(daemon, run_id, paused_at("c")), "run_paused")[-1]["step_id"] == "c"
    # clear_all (with an add) replaces the set; then d will pause
    assert breakpoints(daemon, run_id, clear_all=True, add=["d"]) == ["d"]
    assert resume(daemon, run_id).resumed_step_id == "c"
    run = wait_for(
        daemon,
        run_id,
        lambda r: r.status == PAUSED and steps(r)["c"].status == "succeeded",
        what="paused at d",
    )
    assert breakpoints(daemon, run_id, clear_all=True) == []
    assert resume(daemon, run_id).resumed_step_id == "d"
    run = wait_done(daemon, run_id)
    assert value(steps(run)["d"].output) == {"prev": {"prev": {"prev": "A"}}}
    # a finished run takes no breakpoints
    error = rpc_error(
        daemon,
        lambda rt: rt.update_breakpoints(api.UpdateBreakpointsRequest(run_id=run_id, add=["a"])),
    )
    assert_error(error, Status.FAILED_PRECONDITION, run_id)
    error = rpc_error(
        daemon, lambda rt: rt.update_breakpoints(api.UpdateBreakpointsRequest(run_id="run_x"))
    )
    assert_error(error, Status.NOT_FOUND, "run_x")
    updates = of_kind(tap(daemon, run_id), "breakpoints_updated")
    assert [u["payload"]["breakpoints"] for u in updates] == [
        ["b", "c", "d"],
        ["b", "c"],
        ["b", "c"],
        ["b", "c"],
        ["b", "c"],
        ["d"],
        [],
    ]


def test_a_breakpoint_added_to_a_running_run_pauses_it(daemon):
    run_id = submit(
        daemon,
        dag(
            {"id": "nap", "type": "sleeper", "inputs": {"seconds": 0.5}},
            {"id": "next", "type": "transform", "inputs": {"after": "${steps.nap.output.slept}"}},
        ),
    )
    wait_for(daemon, run_id, lambda r: r.steps[0].status == "running", what="nap running")
    assert breakpoints(daemon, run_id, add=["next"]) == ["next"]
    run = wait_status(daemon, run_id, PAUSED)
    assert steps(run)["nap"].status == "succeeded"
    assert steps(run)["next"].status == "pending"
    resume(daemon, run_id)
    assert wait_done(daemon, run_id).status == api.RunStatus.SUCCEEDED


def test_a_step_waiting_for_a_slot_has_not_started_for_breakpoints(shared_daemon, tmp_path):
    """Found by a time-travel hunt: with every concurrency slot taken, a ready step waited for
    one in its task — and then ran, past a breakpoint put on it meanwhile, and while the run
    was paused before another step. It had not started: it pauses the run, or waits."""
    single = shared_daemon("[scheduler]\nmax_concurrent_steps = 1\n")
    nap = {"id": "a", "type": "sleeper", "inputs": {"seconds": 1.0}}
    run_id = submit(single, dag(nap, {"id": "b", "type": "transform", "inputs": {"v": 1}}))
    wait_for(single, run_id, lambda r: steps(r)["a"].status == "running", what="a running")
    assert breakpoints(single, run_id, add=["b"]) == ["b"]
    run = wait_status(single, run_id, PAUSED)
    assert run.paused_step == "b"
    assert steps(run)["b"].status == "pending"
    resume(single, run_id)
    assert wait_done(single, run_id).status == api.RunStatus.SUCCEEDED

    # paused before c while b waits for the slot: b does not start until the resume
    run_id = submit(single, dag(nap, {"id": "b", "type": "transform", "inputs": {"v": 1}},
                                {"id": "c", "type": "transform", "inputs": {"v": 2}}),
                    breakpoints=["c"])  # fmt: skip
    run = wait_status(single, run_id, PAUSED)
    assert run.paused_step == "c"
    wait_for(single, run_id, lambda r: steps(r)["a"].status == "succeeded", what="a's end")
    assert steps(get_run(single, run_id))["b"].status == "pending"
    resume(single, run_id)
    done = wait_done(single, run_id)
    assert done.status == api.RunStatus.SUCCEEDED
    assert {s.status for s in done.steps} == {"succeeded"}

    # (a review) the run failed while the mutator waited for the slot: it does not start
    log = tmp_path / "log"
    run_id = submit(single, dag({"id": "x", "type": "tool", "inputs": {"tool": "nope"}},
                                {"id": "b", "type": "logger",
                                 "inputs": {"log": str(log), "value": 1}}))  # fmt: skip
    done = wait_done(single, run_id)
    assert done.status == api.RunStatus.FAILED
    assert steps(done)["b"].status == "skipped"
    assert not log.exists()


# --- PatchStep and ResumeRun ---------------------------------------------------------------------

PATCHABLE = dag(
    {"id": "ask", "type": "llm", "model": "mock:small", "inputs": {"prompt": "why ${inputs.q}"}},
    {"id": "shout", "type": "envecho", "env": {"TONE": "calm"}, "depends_on": ["ask"]},
)


def test_patch_merges_inputs_sets_env_overrides_model_and_records_the_note(daemon):
    baseline = outputs(run_and_wait(daemon, PATCHABLE, inputs={"q": "sky"}, seed=9))
    assert baseline["shout"] == {"tone": "calm"}
    assert baseline["ask"]["model"] == "small"

    run_id = submit(daemon, PATCHABLE, inputs={"q": "sky"}, seed=9, breakpoints=["ask", "shout"])
    wait_status(daemon, run_id, PAUSED)
    assert (
        patch(
            daemon,
            run_id,
            "ask",
            inputs={"prompt": "patched ${inputs.q}", "temperature": 0.5},
            model="mock:large",
            note="try the large model",
        )
        == "ask"
    )
    # a pending step further on may be patched too while the run is paused
    assert patch(daemon, run_id, "shout", env={"TONE": "loud"}, note="louder") == "shout"
    assert resume(daemon, run_id).resumed_step_id == "ask"
    run = wait_for(
        daemon,
        run_id,
        lambda r: r.status == PAUSED and steps(r)["ask"].status == "succeeded",
        what="paused at shout",
    )
    ask = value(steps(run)["ask"].output)
    assert ask["model"] == "large"
    assert ask["text"] != baseline["ask"]["text"]
    assert resume(daemon, run_id).resumed_step_id == "shout"
    run = wait_done(daemon, run_id)
    assert run.status == api.RunStatus.SUCCEEDED
    assert value(steps(run)["shout"].output) == {"tone": "loud"}

    events = tap(daemon, run_id)
    patched = of_kind(events, "step_patched")
    assert [(p["step_id"], p["payload"]["note"]) for p in patched] == [
        ("ask", "try the large model"),
        ("shout", "louder"),
    ]
    first = patched[0]["payload"]
    assert first["inputs_patch"] == {"prompt": "patched ${inputs.q}", "temperature": 0.5}
    assert first["model"] == "mock:large"
    assert first["previous"] == {
        "inputs": {"prompt": "why ${inputs.q}"},
        "env": {},
        "model": "mock:small",
    }
    (leased,) = of_kind(events, "step_leased", "ask")
    assert leased["payload"]["inputs"] == {"prompt": "patched sky", "temperature": 0.5}
    assert leased["payload"]["model"] == "mock:large"
    (leased,) = of_kind(events, "step_leased", "shout")
    assert leased["payload"]["env"] == {"TONE": "loud"}
    assert patched[0]["payload"]["seq"] < leased["payload"]["seq"]


def _merge_patched_run(daemon, **options):
    """A transform paused at its breakpoint, patched with null removals and a reference, resumed."""
    run_id = submit(
        daemon,
        dag(
            {
                "id": "t",
                "type": "transform",
                "inputs": {"keep": 1, "drop": 2, "deep": {"x": 1, "y": 2}},
            },
        ),
        breakpoints=["t"],
        **options,
    )
    wait_status(daemon, run_id, PAUSED)
    patch(
        daemon,
        run_id,
        "t",
        inputs={"drop": None, "deep": {"y": None, "z": 3}, "new": "${inputs.k}"},
    )
    resume(daemon, run_id)
    return wait_done(daemon, run_id)


def test_patch_removes_input_keys_with_null(daemon):
    run = _merge_patched_run(daemon)
    assert run.status == api.RunStatus.FAILED  # ${inputs.k} does not exist in the run's inputs
    assert "'k'" in value(run.steps[0].error)["message"]

    assert value(_merge_patched_run(daemon, inputs={"k": "kay"}).steps[0].output) == {
        "keep": 1,
        "deep": {"x": 1, "z": 3},
        "new": "kay",
    }


def test_a_patch_to_a_model_no_provider_serves_is_refused(daemon):
    run_id = submit(
        daemon,
        dag({"id": "ask", "type": "llm", "model": "mock:one", "inputs": {"prompt": "x"}}),
        breakpoints=["ask"],
    )
    wait_status(daemon, run_id, PAUSED)
    request = patch_request(run_id, "ask", model="nosuch:two")
    error = rpc_error(daemon, lambda rt: rt.patch_step(request))
    assert_error(error, Status.INVALID_ARGUMENT, "step 'ask'", "model: unknown provider 'nosuch'")
    assert patch(daemon, run_id, "ask", model="mock:two") == "ask"
    daemon.call(lambda _, rt: rt.resume_run(api.ResumeRunRequest(run_id=run_id)))
    run = wait_done(daemon, run_id)
    assert run.status == api.RunStatus.SUCCEEDED
    assert value(run.steps[0].output)["model"] == "two"


def test_patch_and_resume_errors(daemon):
    # paused at b: a has completed, b and c are pending
    run_id = submit(
        daemon,
        dag(
            {"id": "a", "type": "transform", "inputs": {"value": 1}},
            {"id": "b", "type": "transform", "inputs": {"x": "${steps.a.output}"}},
            {"id": "c", "type": "transform", "inputs": {"x": "${steps.b.output}"}},
            {"id": "other", "type": "transform", "depends_on": ["c"]},
        ),
        breakpoints=["b"],
    )
    wait_status(daemon, run_id, PAUSED)

    def patch_error(step_id, **changes):
        request = patch_request(run_id, step_id, **changes)
        return rpc_error(daemon, lambda rt: rt.patch_step(request))

    assert_error(
        patch_error("a", inputs={"value": 2}), Status.FAILED_PRECONDITION, "'a'", "succeeded"
    )
    assert_error(patch_error("ghost", inputs={}), Status.NOT_FOUND, "'ghost'")
    assert_error(patch_error("b", env={"N": 1}), Status.INVALID_ARGUMENT, "env")
    assert_error(
        patch_error("b", inputs={"x": "${steps.c.output}"}), Status.INVALID_ARGUMENT, "inputs_patch"
    )
    assert_error(
        patch_error("b", inputs={"x": "${bogus}"}), Status.INVALID_ARGUMENT, "inputs_patch"
    )
    # refused as SubmitRun refuses them (a time-travel hunt: accepted, then the step failed)
    for empty in ("${steps.a.output..x}", "${steps.a.output.}"):
        assert_error(patch_error("b", inputs={"x": empty}), Status.INVALID_ARGUMENT, "inputs_patch")
    assert_error(patch_error("b", inputs={"x": float("nan")}), Status.INVALID_ARGUMENT, "finite")
    missing_run = rpc_error(daemon, lambda rt: rt.patch_step(patch_request("run_nope", "b")))
    assert_error(missing_run, Status.NOT_FOUND, "run_nope")
    empty_step = rpc_error(daemon, lambda rt: rt.patch_step(patch_request(run_id, "")))
    assert_error(empty_step, Status.INVALID_ARGUMENT, "step_id")
    # none of the refused patches were recorded
    assert not of_kind(history(daemon, run_id, paused_at("b")), "step_patched")
    # an upstream reference is fine
    patch(daemon, run_id, "c", inputs={"x": "${steps.a.output}"})
    resume(daemon, run_id)
    run = wait_done(daemon, run_id)
    assert value(steps(run)["c"].output) == {"x": 1}

    # not paused: finished
    assert_error(patch_error("other", inputs={}), Status.FAILED_PRECONDITION, "not paused")
    resumed = rpc_error(daemon, lambda rt: rt.resume_run(api.ResumeRunRequest(run_id=run_id)))
    assert_error(resumed, Status.FAILED_PRECONDITION, "not paused")
    missing = rpc_error(daemon, lambda rt: rt.resume_run(api.ResumeRunRequest(run_id="run_gone")))
    assert_error(missing, Status.NOT_FOUND, "run_gone")


def test_patch_and_resume_while_running_are_refused(daemon):
    run_id = submit(
        daemon,
        dag(
            {"id": "nap", "type": "sleeper", "inputs": {"seconds": 0.6}},
            {"id": "next", "type": "transform", "depends_on": ["nap"]},
        ),
    )
    wait_status(daemon, run_id, api.RunStatus.RUNNING)
    request = patch_request(run_id, "next", inputs={"x": 1})
    assert_error(
        rpc_error(daemon, lambda rt: rt.patch_step(request)), Status.FAILED_PRECONDITION, "running"
    )
    resumed = rpc_error(daemon, lambda rt: rt.resume_run(api.ResumeRunRequest(run_id=run_id)))
    assert_error(resumed, Status.FAILED_PRECONDITION, "running", "not paused")
    assert wait_done(daemon, run_id).status == api.RunStatus.SUCCEEDED


# --- CreateBranchRun -----------------------------------------------------------------------------


def pipeline(log: Path) -> str:
    return dag(
        {"id": "fetch", "type": "logger", "inputs": {"log": str(log), "value": 1}},
        {
            "id": "think",
            "type": "llm",
            "inputs": {"prompt": "about ${inputs.topic} / ${steps.fetch.output.logged}"},
        },
        {
            "id": "write",
            "type": "logger",
            "inputs": {"log": str(log), "value": 2, "text": "${steps.think.output.text}"},
        },
        {"id": "side", "type": "transform", "inputs": {"topic": "${inputs.topic}"}},
    )


def log_lines(log: Path) -> list[tuple[str, str]]:
    return [tuple(line.split()) for line in log.read_text().splitlines()]  # type: ignore[misc]


@pytest.fixture
def source(daemon, tmp_path):
    log = tmp_path / "side-effects.log"
    run = run_and_wait(
        daemon,
        pipeline(log),
        inputs={"topic": "owls"},
        seed=21,
        labels={"team": "qa", "stage": "one"},
    )
    assert run.status == api.RunStatus.SUCCEEDED
    assert log_lines(log) == [(run.run_id, "fetch"), (run.run_id, "write")]
    return run, log


def test_branch_reuses_steps_outside_the_branch_and_reruns_the_rest(daemon, source):
    src, log = source
    branch_id = branch(daemon, src.run_id, "think", note="again")
    run = wait_done(daemon, branch_id)
    assert run.status == api.RunStatus.SUCCEEDED
    assert branch_id != src.run_id
    by_id, src_steps = steps(run), steps(src)
    assert by_id["fetch"].status == "reused"
    assert by_id["side"].status == "reused"
    assert by_id["think"].status == "succeeded"
    assert by_id["write"].status == "succeeded"
    for step_id in ("fetch", "side"):
        assert value(by_id[step_id].output) == value(src_steps[step_id].output)
        assert by_id[step_id].attempt == src_steps[step_id].attempt
    # SAME seed, same inputs: the re-executed steps reproduce the source
    assert outputs(run) == outputs(src)
    assert run.spec.seed == src.spec.seed
    assert run.spec.dag_json == src.spec.dag_json
    # the reused mutator did not run again; the re-run one did
    assert log_lines(log) == [(src.run_id, "fetch"), (src.run_id, "write"), (branch_id, "write")]
    events = tap(daemon, branch_id)
    submitted = events[0]
    assert submitted["kind"] == "run_submitted"
    assert submitted["payload"]["parent_run_id"] == src.run_id
    assert submitted["payload"]["branch_step"] == "think"
    assert submitted["payload"]["note"] == "again"
    assert sorted(e["step_id"] for e in of_kind(events, "step_reused")) == ["fetch", "side"]
    assert sorted(e["step_id"] for e in of_kind(events, "step_leased")) == ["think", "write"]
    reused = of_kind(events, "step_reused", "fetch")[0]["payload"]
    assert reused["source_run_id"] == src.run_id
    # the source is untouched
    assert get_run(daemon, src.run_id).to_dict() == src.to_dict()


def test_branch_seed_modes(daemon, source):
    src, _ = source
    new = wait_done(daemon, branch(daemon, src.run_id, "think", seed_mode=api.BranchSeedMode.NEW))
    assert new.spec.seed != src.spec.seed
    assert outputs(new)["think"]["text"] != outputs(src)["think"]["text"]
    assert outputs(new)["fetch"] == outputs(src)["fetch"]  # reused whatever the seed

    custom = wait_done(
        daemon, branch(daemon, src.run_id, "think", seed_mode=api.BranchSeedMode.CUSTOM, seed=77)
    )
    assert custom.spec.seed == 77
    # the same as a fresh run with seed 77 (the reused step is deterministic too)
    fresh = run_and_wait(daemon, src.spec.dag_json, inputs={"topic": "owls"}, seed=77)
    assert outputs(custom)["think"] == outputs(fresh)["think"]
    assert outputs(custom)["think"] != outputs(src)["think"]

    unspecified = wait_done(
        daemon, branch(daemon, src.run_id, "think", seed_mode=api.BranchSeedMode.UNSPECIFIED)
    )
    assert unspecified.spec.seed == src.spec.seed
    assert outputs(unspecified) == outputs(src)

    def branch_error(**fields):
        request = api.CreateBranchRunRequest(
            **{"run_id": src.run_id, "from_step": "think", **fields}
        )
        return rpc_error(daemon, lambda rt: rt.create_branch_run(request))

    assert_error(branch_error(seed_mode=api.BranchSeedMode.CUSTOM), Status.INVALID_ARGUMENT, "seed")
    # a seed with SAME or NEW was dropped without a word; with no mode it is a custom one
    for mode in (api.BranchSeedMode.SAME, api.BranchSeedMode.NEW):
        error = branch_error(seed_mode=mode, seed=5)
        assert_error(error, Status.INVALID_ARGUMENT, "seed: seed_mode", "takes no seed")
    seeded = branch(daemon, src.run_id, "think", seed_mode=api.BranchSeedMode.UNSPECIFIED, seed=77)
    assert wait_done(daemon, seeded).spec.seed == 77
    assert_error(branch_error(run_id="run_unknown"), Status.NOT_FOUND, "run_unknown")
    assert_error(branch_error(from_step="nowhere"), Status.NOT_FOUND, "'nowhere'")
    assert_error(branch_error(from_step=""), Status.INVALID_ARGUMENT, "from_step")
    for field in ("inputs_patch", "labels_patch"):
        error = branch_error(**{field: Struct.from_dict({"x": float("inf")})})
        assert_error(error, Status.INVALID_ARGUMENT, field, "finite")
    # A label is text (null removes it), as SubmitRun's and an eval pack's: not a number made text.
    error = branch_error(labels_patch=Struct.from_dict({"stage": 5}))
    assert_error(error, Status.INVALID_ARGUMENT, "labels_patch['stage']", "a string, got int")
    error = branch_error(labels_patch=Struct.from_dict({"": "x"}))
    assert_error(error, Status.INVALID_ARGUMENT, "labels_patch", "needs a key")


def test_branch_patches_inputs_and_labels(daemon, source):
    src, log = source
    branch_id = branch(
        daemon,
        src.run_id,
        "think",
        inputs={"topic": "bats", "extra": {"n": 1}},
        labels={"stage": "two", "team": None, "new": "yes"},
    )
    run = wait_done(daemon, branch_id)
    assert run.spec.inputs.to_dict() == {"topic": "bats", "extra": {"n": 1}}
    assert run.spec.labels == {"stage": "two", "new": "yes"}
    (leased,) = of_kind(tap(daemon, branch_id), "step_leased", "think")
    assert leased["payload"]["inputs"]["prompt"] == "about bats / fetch"
    assert outputs(run)["think"] != outputs(src)["think"]


def test_branch_from_the_first_step_reruns_everything_downstream(daemon, source):
    src, log = source
    branch_id = branch(daemon, src.run_id, "fetch")
    run = wait_done(daemon, branch_id)
    assert [s.status for s in run.steps] == ["succeeded", "succeeded", "succeeded", "reused"]
    assert log_lines(log)[2:] == [(branch_id, "fetch"), (branch_id, "write")]
    assert outputs(run) == outputs(src)


def test_a_branch_waits_for_no_running_step_it_would_reuse(daemon):
    # Branching from y while its upstream m was still running ran m again in the branch
    # (a mutator's side effect twice) instead of reusing its output
    source = submit(daemon, dag(
        {"id": "m", "type": "sleeper", "inputs": {"seconds": 1.5}},
        {"id": "y", "type": "transform", "depends_on": ["m"], "inputs": {"v": 1}},
    ))  # fmt: skip
    wait_for(daemon, source, lambda r: steps(r)["m"].status == "running", what="m running")

    request = api.CreateBranchRunRequest(run_id=source, from_step="y")
    error = rpc_error(daemon, lambda rt: rt.create_branch_run(request))
    assert_error(error, Status.FAILED_PRECONDITION, f"step 'm' of run {source} is still running")

    assert wait_done(daemon, source).status == api.RunStatus.SUCCEEDED
    run = wait_done(daemon, branch(daemon, source, "y"))  # once m has finished: reused
    assert steps(run)["m"].status == "reused"


def test_branch_of_a_failed_run_reuses_only_succeeded_steps(daemon, tmp_path):
    counter = tmp_path / "n"
    src = run_and_wait(
        daemon,
        dag(
            {"id": "ok", "type": "transform", "inputs": {"value": 1}},
            {
                "id": "flaky",
                "type": "flaky",
                "depends_on": ["ok"],
                "inputs": {"counter": str(counter), "until": 2},
            },
        ),
    )
    assert src.status == api.RunStatus.FAILED
    run = wait_done(daemon, branch(daemon, src.run_id, "flaky"))  # the second call succeeds
    assert run.status == api.RunStatus.SUCCEEDED
    assert [s.status for s in run.steps] == ["reused", "succeeded"]
    assert value(run.steps[1].output) == {"calls": 2}


# --- ReplayRun -----------------------------------------------------------------------------------


def mixed(log: Path, model: str) -> str:
    return dag(
        {
            "id": "ask",
            "type": "llm",
            "model": f"openai:{model}",
            "inputs": {"prompt": "q ${inputs.q}"},
        },
        {"id": "mock", "type": "llm", "inputs": {"prompt": "${steps.ask.output.text}"}},
        {"id": "log", "type": "logger", "inputs": {"log": str(log), "value": 5}},
        {
            "id": "t",
            "type": "transform",
            "inputs": {"merge": ["${steps.log.output}", {"q": "${inputs.q}"}]},
        },
    )


def test_replay_modes_and_drift(daemon, fake_http, tmp_path):
    log, model = tmp_path / "log", "replay-model"
    fake_http.answer(model, "stable answer", prompt_tokens=10, completion_tokens=5)
    run = run_and_wait(daemon, mixed(log, model), inputs={"q": "x"}, seed=4)
    assert run.status == api.RunStatus.SUCCEEDED
    before, tapped = run.to_dict(), tap(daemon, run.run_id)
    calls = len(fake_http.chat_requests(model))
    assert calls == 1
    assert len(log_lines(log)) == 1

    full = replay(daemon, run.run_id, api.ReplayMode.FULL)
    assert full.run_id == run.run_id
    assert full.strategy == api.ReplayStrategy.LIVE
    assert full.all_within_tolerance
    assert [s.step_id for s in full.steps] == ["ask", "mock", "log", "t"]
    for step in full.steps:
        assert step.drift.within_tolerance
        assert value(step.drift.recorded) == value(step.drift.current) == outputs(run)[step.step_id]
        assert step.drift.token_delta == 0
        assert step.drift.cost_delta == 0
    assert len(fake_http.chat_requests(model)) == calls + 1  # the observer ran live
    (request,) = fake_http.chat_requests(model)[calls:]
    assert request["seed"] == fake_http.chat_requests(model)[0]["seed"]  # with its recorded seed
    assert len(log_lines(log)) == 1  # the mutator's recorded output stood in

    only = replay(daemon, run.run_id, api.ReplayMode.STEP_ONLY)
    assert only.strategy == api.ReplayStrategy.MOCKED
    assert only.all_within_tolerance
    assert len(fake_http.chat_requests(model)) == calls + 1
    snapshots = {s.step_id: value(s.snapshot) for s in only.steps}
    assert set(snapshots) == {"ask", "mock", "log", "t"}
    ask = snapshots["ask"]
    assert ask["type"] == "llm"
    assert ask["status"] == "succeeded"
    assert ask["attempt"] == 1
    assert ask["inputs"] == {"prompt": "q x"}
    assert ask["model"] == f"openai:{model}"
    assert ask["output"] == outputs(run)["ask"]
    assert ask["usage"]["tokens_in"] == 10
    assert ask["usage"]["tokens_out"] == 5
    assert snapshots["log"]["output"] == {"logged": "log", "value": 5}

    diff = replay(daemon, run.run_id, api.ReplayMode.DIFF)
    assert diff.all_within_tolerance
    assert list(diff.steps) == []

    # the endpoint now answers differently: drift outside tolerance, on that step only
    fake_http.answer(model, "a changed answer", prompt_tokens=14, completion_tokens=5)
    drifted = replay(daemon, run.run_id, api.ReplayMode.FULL)
    assert not drifted.all_within_tolerance
    assert drifted.strategy == api.ReplayStrategy.LIVE
    by_id = {s.step_id: s.drift for s in drifted.steps}
    ask = by_id["ask"]
    assert not ask.within_tolerance
    assert value(ask.recorded)["text"] == "stable answer"
    assert value(ask.current)["text"] == "a changed answer"
    assert ask.token_delta == 4
    assert ask.cost_delta == pytest.approx(4 * 0.0005 / 1000)
    # mock is replayed with its recorded inputs, so it does not drift
    assert all(by_id[s].within_tolerance for s in ("mock", "log", "t"))
    diff = replay(daemon, run.run_id, api.ReplayMode.DIFF)
    assert not diff.all_within_tolerance
    assert [s.step_id for s in diff.steps] == ["ask"]
    assert diff.steps[0].drift.token_delta == 4
    assert value(diff.steps[0].snapshot)["step_id"] == "ask"

    # replays never change the recorded run
    assert get_run(daemon, run.run_id).to_dict() == before
    assert tap(daemon, run.run_id) == tapped


def test_replay_of_a_failed_run_compares_the_error(daemon):
    run = run_and_wait(daemon, dag({"id": "bad", "type": "tool", "inputs": {"tool": "nope"}}))
    assert run.status == api.RunStatus.FAILED
    result = replay(daemon, run.run_id, api.ReplayMode.STEP_ONLY)
    (step,) = result.steps
    assert value(step.snapshot)["status"] == "failed"
    assert "'nope'" in value(step.drift.recorded)["error"]


def test_replay_errors(daemon):
    run_id = submit(daemon, dag({"id": "t", "type": "transform"}), breakpoints=["t"])
    wait_status(daemon, run_id, PAUSED)
    for mode in (api.ReplayMode.FULL, api.ReplayMode.STEP_ONLY, api.ReplayMode.DIFF):
        error = rpc_error(
            daemon, lambda rt, m=mode: rt.replay_run(api.ReplayRunRequest(run_id=run_id, mode=m))
        )
        assert_error(error, Status.FAILED_PRECONDITION, run_id)
    error = rpc_error(daemon, lambda rt: rt.replay_run(api.ReplayRunRequest(run_id="run_void")))
    assert_error(error, Status.NOT_FOUND, "run_void")
    error = rpc_error(daemon, lambda rt: rt.replay_run(api.ReplayRunRequest()))
    assert_error(error, Status.INVALID_ARGUMENT, "run_id")
    resume(daemon, run_id)
    wait_done(daemon, run_id)
    assert replay(
        daemon, run_id, api.ReplayMode.UNSPECIFIED
    ).all_within_tolerance  # FULL by default


def test_replay_tolerances_come_from_the_config(shared_daemon, daemon, fake_http, tmp_path):
    tolerant = shared_daemon(
        "[replay]\ntoken_tolerance = 5\ncost_tolerance = 0.001\noutput_similarity = 0.9\n"
    )
    results = {}
    for name, d in (("strict", daemon), ("tolerant", tolerant)):
        model = f"tol-{name}"
        fake_http.answer(model, "the answer is 42", prompt_tokens=10, completion_tokens=5)
        run = run_and_wait(d, mixed(tmp_path / f"{name}.log", model), inputs={"q": "x"})
        assert run.status == api.RunStatus.SUCCEEDED
        # a small difference: 2 more tokens, nearly the same text
        fake_http.answer(model, "the answer is 43", prompt_tokens=12, completion_tokens=5)
        small = replay(d, run.run_id, api.ReplayMode.FULL)
        # a big one
        fake_http.answer(
            model, "something else entirely, at length", prompt_tokens=30, completion_tokens=9
        )
        big = replay(d, run.run_id, api.ReplayMode.DIFF)
        results[name] = (small, big)
    small, big = results["strict"]
    assert not small.all_within_tolerance
    assert [s.step_id for s in big.steps] == ["ask"]
    small, big = results["tolerant"]
    (ask,) = [s for s in small.steps if s.step_id == "ask"]
    assert ask.drift.token_delta == 2
    assert ask.drift.within_tolerance
    assert small.all_within_tolerance
    assert [s.step_id for s in big.steps] == ["ask"]
    assert not big.all_within_tolerance
