"""``foundry run …`` against a real daemon: exit codes, readable text and ``--json``.

A few tests run the real ``foundry`` process; the rest call the same entry point
(``foundry.kernel.cli.main``) in this process, which is much cheaper than a Python start per call.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys

import pytest
from foundry.kernel.cli.main import main
from foundry.proto import runtime_api as api

from tests.runs.helpers import (
    RESEARCH,
    dag,
    get_run,
    outputs,
    steps,
    submit,
    wait_done,
    wait_for,
    wait_status,
)

PAUSED = api.RunStatus.PAUSED_AT_STEP


@pytest.fixture(scope="module")
def daemon(shared_daemon):
    return shared_daemon()


@pytest.fixture
def research(tmp_path):
    path = tmp_path / "research.dag.json"
    path.write_text(RESEARCH)
    return path


def cli(daemon, *args: str) -> subprocess.CompletedProcess[str]:
    """``foundry ARGS --addr DAEMON`` in this process: exit code, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([*args, "--addr", daemon.address])
        except SystemExit as exc:  # argparse refusing the arguments
            code = exc.code if isinstance(exc.code, int) else 2
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def ok(done):
    assert done.returncode == 0, (done.stdout, done.stderr)
    return done.stdout


def test_submit_wait_follows_the_run_and_exits_zero(daemon, research):
    done = daemon.cli(
        "run",
        "submit",
        str(research),
        "--inputs",
        '{"topic": "cli"}',
        "--seed",
        "42",
        "--label",
        "team=qa",
        "--label",
        "kind=demo",
        "--idempotency-key",
        "cli-key-1",
        "--wait",
    )
    out = ok(done)
    lines = out.splitlines()
    assert lines[0].startswith("run run_")
    run_id = lines[0].split()[1]
    assert "run_submitted" in lines[1]
    assert "run_succeeded" in lines[-1]
    assert any("step_completed" in line and "outline" in line for line in lines)
    run = get_run(daemon, run_id)
    assert run.status == api.RunStatus.SUCCEEDED
    assert run.spec.seed == 42
    assert run.spec.labels == {"team": "qa", "kind": "demo"}
    assert run.spec.inputs.to_dict() == {"topic": "cli"}
    # the same key and spec: the same run, nothing new runs; another spec: one line, exit 1
    same = ("--inputs", '{"topic": "cli"}', "--seed", "42", "--label", "kind=demo",
            "--label", "team=qa", "--idempotency-key", "cli-key-1")  # fmt: skip
    again = ok(daemon.cli("run", "submit", str(research), *same, "--json"))
    assert json.loads(again) == {"run_id": run_id}
    other = daemon.cli("run", "submit", str(research), *same[2:], "--json")
    assert other.returncode == 1, (other.stdout, other.stderr)
    assert other.stderr.count("\n") == 1, other.stderr
    assert "FAILED_PRECONDITION" in other.stderr
    assert f"run {run_id} was submitted with this key and another spec (its inputs" in other.stderr


def test_submit_json_wait_prints_events_as_json_lines(daemon, research):
    out = ok(
        cli(
            daemon, "run", "submit", str(research), "--inputs", '{"topic": "j"}', "--wait", "--json"
        )
    )
    events = [json.loads(line) for line in out.splitlines()]
    assert events[0]["kind"] == "run_submitted"
    assert events[-1]["kind"] == "run_succeeded"
    assert [e["payload"]["seq"] for e in events] == list(range(1, len(events) + 1))
    assert len({e["run_id"] for e in events}) == 1


def test_submit_failing_run_exits_non_zero(daemon, tmp_path):
    path = tmp_path / "bad.dag.json"
    path.write_text(dag({"id": "boom", "type": "fail"}))
    done = daemon.cli("run", "submit", str(path), "--wait")
    assert done.returncode != 0
    assert "step_failed" in done.stdout
    assert "boom" in done.stdout
    assert "run_failed" in done.stdout


def test_submit_errors(daemon, tmp_path, research):
    path = tmp_path / "invalid.dag.json"
    path.write_text(dag({"id": "x", "type": "nope"}))
    done = cli(daemon, "run", "submit", str(path))
    assert done.returncode == 1
    assert "INVALID_ARGUMENT" in done.stderr
    assert "'x'" in done.stderr
    done = cli(daemon, "run", "submit", str(research), "--inputs", "[1]")
    assert done.returncode != 0
    assert "--inputs" in done.stderr
    done = cli(daemon, "run", "submit", str(tmp_path / "missing.json"))
    assert done.returncode != 0
    assert "missing.json" in done.stderr


def test_get_and_tap(daemon):
    run_id = submit(daemon, RESEARCH, inputs={"topic": "get"})
    run = wait_done(daemon, run_id)
    text = ok(cli(daemon, "run", "get", run_id))
    assert run_id in text
    assert "SUCCEEDED" in text
    for step_id in ("outline", "count", "report"):
        assert step_id in text
    words = int(outputs(run)["report"]["words"])
    # numbers shown as integers, the JSON compact as every summary's (a hunt: it was spaced)
    assert f'output {{"topic":"get","words":{words}}}' in text
    document = json.loads(ok(cli(daemon, "run", "get", run_id, "--json")))
    assert document["run_id"] == run_id
    assert document["status"] == "RUN_STATUS_SUCCEEDED"
    assert [s["step_id"] for s in document["steps"]] == ["outline", "count", "report"]
    assert document["steps"][2]["output"] == outputs(run)["report"]
    assert document["spec"]["inputs"] == {"topic": "get"}
    assert type(document["spec"]["seed"]) is int  # an int64: proto3 JSON's string was printed

    tapped = ok(cli(daemon, "run", "tap", run_id)).splitlines()
    assert "run_submitted" in tapped[0]
    assert "run_succeeded" in tapped[-1]
    assert sum("step_leased" in line for line in tapped) == 3
    events = [
        json.loads(line) for line in ok(cli(daemon, "run", "tap", run_id, "--json")).splitlines()
    ]
    assert len(events) == len(tapped)
    assert events[-1]["kind"] == "run_succeeded"

    missing = cli(daemon, "run", "get", "run_nope")
    assert missing.returncode == 1
    assert "NOT_FOUND" in missing.stderr
    assert "run_nope" in missing.stderr
    assert cli(daemon, "run", "tap", "run_nope").returncode == 1


def test_breakpoints_patch_resume(daemon):
    run_id = submit(
        daemon,
        dag(
            {"id": "ask", "type": "llm", "model": "mock:small", "inputs": {"prompt": "hi"}},
            {"id": "shout", "type": "envecho", "env": {"TONE": "calm"}, "depends_on": ["ask"]},
            {"id": "end", "type": "transform", "depends_on": ["shout"], "inputs": {"value": 1}},
        ),
        breakpoints=["ask"],
    )
    wait_status(daemon, run_id, PAUSED)
    assert (
        ok(cli(daemon, "run", "breakpoints", run_id, "--add", "shout", "--add", "end")).strip()
        == "ask shout end"
    )
    assert json.loads(
        ok(cli(daemon, "run", "breakpoints", run_id, "--remove", "end", "--json"))
    ) == {"breakpoints": ["ask", "shout"]}
    bad = cli(daemon, "run", "breakpoints", run_id, "--add", "ghost")
    assert bad.returncode == 1
    assert "INVALID_ARGUMENT" in bad.stderr
    assert "ghost" in bad.stderr

    out = ok(
        cli(
            daemon,
            "run",
            "patch",
            run_id,
            "ask",
            "--inputs",
            '{"prompt": "hello"}',
            "--model",
            "mock:large",
            "--note",
            "bigger",
        )
    )
    assert out.strip() == "patched ask"
    out = ok(cli(daemon, "run", "patch", run_id, "shout", "--env", '{"TONE": "loud"}', "--json"))
    assert json.loads(out) == {"step_id": "shout"}
    refused = cli(daemon, "run", "patch", run_id, "nope", "--inputs", "{}")
    assert refused.returncode == 1
    assert "NOT_FOUND" in refused.stderr

    assert ok(cli(daemon, "run", "resume", run_id)).strip() == "RUNNING: resumed at ask"
    run = wait_for(
        daemon,
        run_id,
        lambda r: r.status == PAUSED and steps(r)["ask"].status == "succeeded",
        what="paused at shout",
    )
    assert ok(cli(daemon, "run", "breakpoints", run_id, "--clear")).strip() == "(none)"
    resumed = json.loads(ok(cli(daemon, "run", "resume", run_id, "--json")))
    assert resumed == {"status": "RUN_STATUS_RUNNING", "resumed_step_id": "shout"}
    run = wait_done(daemon, run_id)
    assert outputs(run)["ask"]["model"] == "large"
    assert outputs(run)["shout"] == {"tone": "loud"}
    again = cli(daemon, "run", "resume", run_id)
    assert again.returncode == 1
    assert "FAILED_PRECONDITION" in again.stderr


def test_branch_and_replay(daemon):
    source = wait_done(daemon, submit(daemon, RESEARCH, inputs={"topic": "br"}, seed=3))
    branch_id = ok(cli(daemon, "run", "branch", source.run_id, "--from", "count")).strip()
    assert branch_id.startswith("run_")
    assert branch_id != source.run_id
    branch = wait_done(daemon, branch_id)
    assert [s.status for s in branch.steps] == ["reused", "succeeded", "succeeded"]
    assert outputs(branch) == outputs(source)
    shown = ok(cli(daemon, "run", "get", branch_id))
    assert shown.count("output ") == 3  # the reused step's output too

    out = ok(
        cli(
            daemon,
            "run",
            "branch",
            source.run_id,
            "--from",
            "outline",
            "--seed-mode",
            "custom",
            "--seed",
            "99",
            "--inputs",
            '{"topic": "new"}',
            "--labels",
            '{"v": "2"}',
            "--note",
            "n",
            "--json",
        )
    )
    custom = wait_done(daemon, json.loads(out)["run_id"])
    assert custom.spec.seed == 99
    assert custom.spec.labels == {"v": "2"}
    assert custom.spec.inputs.to_dict() == {"topic": "new"}
    no_seed = cli(
        daemon, "run", "branch", source.run_id, "--from", "outline", "--seed-mode", "custom"
    )
    assert no_seed.returncode == 1
    assert "INVALID_ARGUMENT" in no_seed.stderr
    # found by a CLI hunt: a --seed without --seed-mode was sent with mode SAME, and dropped
    implied = ok(cli(daemon, "run", "branch", source.run_id, "--from", "outline", "--seed", "7"))
    assert wait_done(daemon, implied.strip()).spec.seed == 7
    mixed = cli(daemon, "run", "branch", source.run_id, "--from", "outline", "--seed", "7",
                "--seed-mode", "same")  # fmt: skip
    assert mixed.returncode == 2
    assert "--seed: a seed of its own is --seed-mode custom, not same" in mixed.stderr
    nowhere = cli(daemon, "run", "branch", source.run_id, "--from", "nowhere")
    assert nowhere.returncode == 1
    assert "NOT_FOUND" in nowhere.stderr

    table = ok(cli(daemon, "run", "replay", source.run_id, "--mode", "diff"))
    assert f"replay of {source.run_id}: live, all within tolerance" in table
    assert "step" in table
    assert "Δtokens" in table
    full = ok(cli(daemon, "run", "replay", source.run_id))
    rows = [line.split() for line in full.splitlines()[2:]]
    assert [r[0] for r in rows] == ["outline", "count", "report"]
    assert all(r[1] == "yes" and "(same)" in r for r in rows)
    document = json.loads(
        ok(cli(daemon, "run", "replay", source.run_id, "--mode", "step_only", "--json"))
    )
    assert document["strategy"] == "REPLAY_STRATEGY_MOCKED"
    assert document["all_within_tolerance"] is True
    assert [s["step_id"] for s in document["steps"]] == ["outline", "count", "report"]
    assert document["steps"][0]["snapshot"]["output"] == outputs(source)["outline"]


def test_replay_with_drift_exits_non_zero_and_shows_the_step(daemon, fake_http):
    fake_http.answer("cli-drift", "first", prompt_tokens=3, completion_tokens=1)
    run = wait_done(
        daemon,
        submit(
            daemon,
            dag(
                {
                    "id": "ask",
                    "type": "llm",
                    "model": "openai:cli-drift",
                    "inputs": {"prompt": "p"},
                },
                {"id": "t", "type": "transform", "inputs": {"value": 1}},
            ),
        ),
    )
    fake_http.answer("cli-drift", "second", prompt_tokens=5, completion_tokens=1)
    done = cli(daemon, "run", "replay", run.run_id, "--mode", "diff")
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert "DRIFT outside tolerance" in lines[0]
    (row,) = lines[2:]
    cells = row.split()
    assert cells[:3] == ["ask", "NO", "2"]
    # the cells show what changed, not a truncated prefix the two outputs share
    assert row.endswith('{"text":"first"} → {"text":"second"}')
    # --json exits as the table does (it exited 0: a script never saw the drift)
    as_json = cli(daemon, "run", "replay", run.run_id, "--mode", "diff", "--json")
    assert as_json.returncode == 1
    assert json.loads(as_json.stdout)["all_within_tolerance"] is False


@pytest.mark.parametrize(
    "when",
    ["99999999999999999999d", "0001-01-01T00:00:00+23:59", "9999-12-31T23:59:59-23:59"],
)
@pytest.mark.parametrize("flag", ["--since", "--until"])
def test_run_list_refuses_a_time_out_of_range_in_one_line(tmp_path, flag, when):
    """These reached the request's timestamp and came back as a 56-line OverflowError
    traceback (found by a hostile-input hunt); argparse's own error and exit 2 now."""
    done = subprocess.run(
        [sys.executable, "-m", "foundry.kernel.cli", "run", "list", flag, when,
         "--addr", "127.0.0.1:1"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "FOUNDRY_HOME": str(tmp_path)},
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "out of the range of times" in done.stderr
    assert "Traceback" not in done.stderr
