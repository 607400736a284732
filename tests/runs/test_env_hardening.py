"""A run cannot change how an operator's command runs, and children never see daemon secrets."""

from __future__ import annotations

import json

import pytest
from foundry.proto import runtime_api as api
from foundry.proto.generated.google.protobuf import Struct
from grpclib.const import Status

from tests.daemon import Daemon, Daemons
from tests.runs.helpers import (
    assert_error,
    dag,
    outputs,
    rpc_error,
    run_and_wait,
    submit,
    wait_status,
)

SHOW_ENV = "import json, os; print(json.dumps(dict(os.environ)))"


@pytest.fixture
def daemon(make_daemon: Daemons) -> Daemon:
    config = f"""
        [[blocks]]
        name = "showenv"
        type = "shell"
        kind = "observer"
        command = ["python3", "-c", {json.dumps(SHOW_ENV)}]
        pass_env = ["PASSED_TO_CHILD"]
        allow_env = ["TONE"]

        [[blocks]]
        name = "echo"
        type = "shell"
        command = ["sh", "-c", "echo hi"]
        """
    secrets = {"OPENAI_API_KEY": "sk-daemon-secret", "AWS_SECRET_ACCESS_KEY": "aws-secret",
               "PASSED_TO_CHILD": "passed"}  # fmt: skip
    return make_daemon(config, secrets)


def submit_error(daemon: Daemon, step: dict):
    request = api.SubmitRunRequest(spec=api.RunSpec(dag_json=dag(step)))
    return rpc_error(daemon, lambda rt: rt.submit_run(request))


@pytest.mark.parametrize(
    ("key", "value"),
    [("PATH", "/tmp/evil"), ("BASH_ENV", "/tmp/evil.sh"),
     ("BASH_FUNC_echo%%", "() { id > pwned.txt; }"), ("LD_PRELOAD", "/tmp/x.so")],
)  # fmt: skip
def test_code_execution_through_a_step_env_is_refused_at_submit(daemon, tmp_path, key, value):
    for step in (
        {"id": "s", "type": "shell", "inputs": {"command": "echo"}, "env": {key: value}},
        {"id": "s", "type": "showenv", "env": {key: value}},
    ):
        error = submit_error(daemon, step)
        assert_error(error, Status.INVALID_ARGUMENT, "step 's'", f"env.{key}")
    assert not (tmp_path / "pwned.txt").exists()


def test_a_step_env_name_the_block_does_not_allow_is_refused(daemon):
    error = submit_error(daemon, {"id": "s", "type": "showenv", "env": {"COLOR": "red"}})
    assert_error(error, Status.INVALID_ARGUMENT, "env.COLOR", "allow_env: TONE")


def test_a_child_sees_only_the_base_what_is_passed_and_what_is_allowed(daemon):
    run = run_and_wait(daemon, dag({"id": "s", "type": "showenv", "env": {"TONE": "calm"}}))
    assert run.status == api.RunStatus.SUCCEEDED
    env = outputs(run)["s"]
    assert "OPENAI_API_KEY" not in env
    assert "AWS_SECRET_ACCESS_KEY" not in env
    assert env["PASSED_TO_CHILD"] == "passed"
    assert env["TONE"] == "calm"
    assert env["PATH"] == "/usr/local/bin:/usr/bin:/bin"
    assert env["FOUNDRY_STEP_ID"] == "s"


def test_patching_a_forbidden_or_unallowed_env_name_is_refused(daemon):
    run_id = submit(daemon, dag({"id": "s", "type": "showenv"}), breakpoints=["s"])
    wait_status(daemon, run_id, api.RunStatus.PAUSED_AT_STEP)
    for env, needle in (({"PATH": "/tmp"}, "env.PATH"), ({"COLOR": "x"}, "allow_env: TONE")):
        request = api.PatchStepRequest(run_id=run_id, step_id="s", env=Struct.from_dict(env))
        error = rpc_error(daemon, lambda rt, r=request: rt.patch_step(r))
        assert_error(error, Status.INVALID_ARGUMENT, "step 's'", needle)


def test_a_patch_that_picks_another_block_keeps_no_env_the_new_one_refuses(daemon):
    """A shell step's ``command`` names its block, so a patch of its inputs can pick another:
    the step's env, whole, must then be what the new block allows (it ran with it before)."""
    step = {"id": "s", "type": "shell", "inputs": {"command": "showenv"}, "env": {"TONE": "x"}}
    run_id = submit(daemon, dag(step), breakpoints=["s"])
    wait_status(daemon, run_id, api.RunStatus.PAUSED_AT_STEP)
    swap = api.PatchStepRequest(
        run_id=run_id, step_id="s", inputs_patch=Struct.from_dict({"command": "echo"})
    )
    error = rpc_error(daemon, lambda rt: rt.patch_step(swap))
    assert_error(error, Status.INVALID_ARGUMENT, "step 's'", "env.TONE")
    # a patch within the block's allowance is fine
    back = api.PatchStepRequest(run_id=run_id, step_id="s",
                                inputs_patch=Struct.from_dict({"command": "showenv"}),
                                env=Struct.from_dict({"TONE": "calm"}))  # fmt: skip
    assert daemon.call(lambda _, rt: rt.patch_step(back)).step_id == "s"
