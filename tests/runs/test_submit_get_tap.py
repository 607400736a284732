"""SubmitRun, GetRun and TapRun end to end: a real daemon over a real socket."""

from __future__ import annotations

import asyncio
import json
import select
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import duckdb
import h2.config
import h2.connection
import h2.events
import h2.settings
import httpx
import pytest
from foundry.kernel import BlockError
from foundry.kernel.core.dag import step_seed
from foundry.kernel.core.json_input import STRUCT_DEPTH
from foundry.proto import foundry_api
from foundry.proto import runtime_api as api
from grpclib import GRPCError
from grpclib.const import Cardinality, Status

from tests.e2e.helpers import emit, finished, trace
from tests.helpers import grpc_error, rss_mb, slow_channel, wait_until
from tests.runs.conftest import DEEP_JSON
from tests.runs.helpers import (
    RESEARCH,
    assert_error,
    dag,
    event_dict,
    get_run,
    kinds,
    of_kind,
    outputs,
    rpc_error,
    run_and_wait,
    spec,
    steps,
    submit,
    tap,
    value,
    wait_done,
    wait_for,
)

MAX_CONCURRENT = 2


@pytest.fixture(scope="module")
def daemon(shared_daemon):
    return shared_daemon(f"[scheduler]\nmax_concurrent_steps = {MAX_CONCURRENT}\n")


def test_submit_then_get_fills_every_step_field(daemon):
    before = time.time()
    run_id = submit(daemon, RESEARCH, inputs={"topic": "trio"}, seed=7, labels={"team": "qa"})
    assert run_id.startswith("run_")
    run = wait_done(daemon, run_id)
    assert run.run_id == run_id
    assert run.status == api.RunStatus.SUCCEEDED
    assert run.spec.dag_json == RESEARCH
    assert run.spec.inputs.to_dict() == {"topic": "trio"}
    assert run.spec.seed == 7
    assert run.spec.labels == {"team": "qa"}
    assert before - 1 <= run.created_at.timestamp() <= run.updated_at.timestamp() <= time.time() + 1
    assert [s.step_id for s in run.steps] == ["outline", "count", "report"]
    for idx, step in enumerate(run.steps):
        assert step.idx == idx
        assert step.status == "succeeded"
        assert step.attempt == 1
        assert step.leased_at is not None
        assert step.completed_at is not None
        assert run.created_at <= step.leased_at <= step.completed_at <= run.updated_at
        assert step.output is not None
    by_id = steps(run)
    assert [by_id[s].type for s in ("outline", "count", "report")] == ["llm", "tool", "transform"]
    text = value(by_id["outline"].output)["text"]
    assert value(by_id["count"].output) == {"words": len(text.split())}
    assert value(by_id["report"].output) == {"topic": "trio", "words": len(text.split())}
    # dependencies ran in order
    assert by_id["outline"].completed_at <= by_id["count"].leased_at
    assert by_id["count"].completed_at <= by_id["report"].leased_at


def test_failing_step_fills_error_fails_run_and_skips_dependents(daemon):
    run = run_and_wait(
        daemon,
        dag(
            {"id": "ok", "type": "transform", "inputs": {"value": 1}},
            {"id": "bad", "type": "fail", "depends_on": ["ok"]},
            {"id": "after", "type": "transform", "depends_on": ["bad"], "inputs": {"value": 2}},
            {"id": "later", "type": "transform", "inputs": {"x": "${steps.after.output}"}},
        ),
    )
    assert run.status == api.RunStatus.FAILED
    by_id = steps(run)
    assert by_id["ok"].status == "succeeded"
    bad = by_id["bad"]
    assert bad.status == "failed"
    assert bad.attempt == 1
    assert bad.leased_at is not None
    assert bad.completed_at is not None
    error = value(bad.error)
    assert "exited with 3" in error["message"]
    assert "boom from bad" in error["message"]
    assert error["timed_out"] is False
    assert error["attempt"] == 1
    for skipped in ("after", "later"):
        assert by_id[skipped].status == "skipped"
        assert by_id[skipped].attempt == 0
        assert by_id[skipped].leased_at is None
    events = tap(daemon, run.run_id)
    assert not of_kind(events, "step_leased", "after")
    (failed,) = of_kind(events, "run_failed")
    assert failed["step_id"] == "bad"
    assert "'bad'" in failed["payload"]["error"]
    assert events[-1]["kind"] == "run_failed"


def _reused_key(daemon, key, dag_json, **options):
    request = api.SubmitRunRequest(spec=spec(dag_json, **options), idempotency_key=key)
    return rpc_error(daemon, lambda rt: rt.submit_run(request))


def test_idempotency_key_returns_the_same_run_and_runs_it_once(daemon):
    key = "idem-live-1"
    options = {"inputs": {"topic": "once"}, "seed": 3, "labels": {"a": "1"}}
    first = submit(daemon, RESEARCH, key=key, **options)
    assert submit(daemon, RESEARCH, key=key, **options) == first
    # the key with another spec: refused, naming the run and the field that differs
    for field, other in [
        ("dag_json", {"dag_json": RESEARCH + " "}),
        ("inputs", {"inputs": {"topic": "different inputs, same key"}}),
        ("inputs", {"inputs": {"topic": "once", "extra": None}}),
        ("seed", {"seed": 4}),
        ("labels", {"labels": {}}),
        ("breakpoints", {"breakpoints": ["count"]}),
    ]:
        changed = {"dag_json": RESEARCH, **options, **other}
        error = _reused_key(daemon, key, changed.pop("dag_json"), **changed)
        assert_error(error, Status.FAILED_PRECONDITION, "idempotency_key", first, f"its {field} ")
    run = wait_done(daemon, first)
    assert run.spec.inputs.to_dict() == {"topic": "once"}
    assert submit(daemon, RESEARCH, key=key, **options) == first
    events = tap(daemon, first)
    assert kinds(events).count("run_submitted") == 1
    assert kinds(events).count("step_leased") == 3
    assert submit(daemon, RESEARCH, key="idem-live-2") != first


def test_an_idempotency_keys_breakpoints_are_a_set(daemon):
    topic = {"topic": "sets"}
    paused = submit(
        daemon, RESEARCH, key="idem-breaks", inputs=topic, breakpoints=["report", "count"]
    )
    again = ["count", "report", "count"]
    assert submit(daemon, RESEARCH, key="idem-breaks", inputs=topic, breakpoints=again) == paused
    daemon.call(lambda _, rt: rt.cancel_run(api.CancelRunRequest(run_id=paused)))
    assert wait_done(daemon, paused).status == api.RunStatus.CANCELED


def test_concurrent_submits_with_one_key_make_one_run(daemon):
    request = api.SubmitRunRequest(
        spec=spec(RESEARCH, inputs={"topic": "race"}), idempotency_key="idem-race"
    )

    async def many(_, runtime):
        replies = await asyncio.gather(*(runtime.submit_run(request) for _ in range(10)))
        return {r.run_id for r in replies}

    (run_id,) = daemon.call(many)
    events = tap(daemon, run_id)
    assert kinds(events).count("run_submitted") == 1
    assert events[-1]["kind"] == "run_succeeded"


def test_invalid_dag_is_invalid_argument_naming_the_step(daemon):
    cases = [
        ('{"steps": [', "dag_json"),
        (dag({"id": "a", "type": "nope"}), "'a'"),
        (dag({"id": "a", "type": "transform", "depends_on": ["zz"]}), "'zz'"),
        (dag({"id": "a", "type": "transform", "inputs": {"x": "${foo}"}}), "'a'"),
        (dag({"id": "a", "type": "transform", "retry": {"max_attempts": 0}}), "retry.max_attempts"),
        (dag({"id": "a", "type": "transform", "timeout": -1}), "timeout"),
        ("", "dag_json"),
    ]
    for dag_json, needle in cases:
        request = api.SubmitRunRequest(spec=spec(dag_json))
        assert_error(
            rpc_error(daemon, lambda rt, r=request: rt.submit_run(r)),
            Status.INVALID_ARGUMENT,
            needle,
        )
    no_spec = rpc_error(daemon, lambda rt: rt.submit_run(api.SubmitRunRequest()))
    assert_error(no_spec, Status.INVALID_ARGUMENT, "dag_json")
    empty_key = api.SubmitRunRequest(spec=api.RunSpec(dag_json=RESEARCH, labels={"": "v"}))
    assert_error(  # ListRuns could not ask for it
        rpc_error(daemon, lambda rt: rt.submit_run(empty_key)),
        Status.INVALID_ARGUMENT,
        "spec.labels: a label needs a key",
    )
    bad_breakpoint = api.SubmitRunRequest(spec=spec(RESEARCH, breakpoints=["ghost"]))
    assert_error(
        rpc_error(daemon, lambda rt: rt.submit_run(bad_breakpoint)),
        Status.INVALID_ARGUMENT,
        "breakpoints",
        "'ghost'",
    )
    # the daemon is fine afterwards
    assert run_and_wait(daemon, RESEARCH, inputs={"topic": "x"}).status == api.RunStatus.SUCCEEDED


def test_non_finite_numbers_in_inputs_are_invalid_argument(daemon):
    for number in (float("nan"), float("inf"), -float("inf")):
        request = api.SubmitRunRequest(spec=spec(RESEARCH, inputs={"topic": "x", "n": [number]}))
        error = rpc_error(daemon, lambda rt, r=request: rt.submit_run(r))
        assert_error(error, Status.INVALID_ARGUMENT, "spec.inputs", "finite")


def test_unknown_run_is_not_found(daemon):
    for call in (
        lambda rt: rt.get_run(api.GetRunRequest(run_id="run_nope")),
        lambda rt: rt.tap_run(api.TapRunRequest(run_id="run_nope")),
    ):
        assert_error(rpc_error(daemon, call), Status.NOT_FOUND, "run_nope")
    for call in (
        lambda rt: rt.get_run(api.GetRunRequest()),
        lambda rt: rt.tap_run(api.TapRunRequest()),
    ):
        assert_error(rpc_error(daemon, call), Status.INVALID_ARGUMENT, "run_id")


def _overlaps(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant."""
    points = sorted(
        [(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals], key=lambda p: (p[0], p[1])
    )
    most = current = 0
    for _, delta in points:
        current += delta
        most = max(most, current)
    return most


def test_independent_steps_run_concurrently_up_to_the_limit(daemon):
    count, seconds = 5, 0.4
    started = time.monotonic()
    run = run_and_wait(
        daemon,
        dag(
            *(
                {"id": f"s{i}", "type": "sleeper", "inputs": {"seconds": seconds}}
                for i in range(count)
            )
        ),
    )
    wall = time.monotonic() - started
    assert run.status == api.RunStatus.SUCCEEDED
    intervals = [(s.leased_at.timestamp(), s.completed_at.timestamp()) for s in run.steps]
    assert _overlaps(intervals) == MAX_CONCURRENT
    for s in run.steps:
        assert value(s.output) == {"slept": s.step_id}
        assert s.completed_at.timestamp() - s.leased_at.timestamp() >= seconds - 0.01
    waves = -(-count // MAX_CONCURRENT)  # 3 waves of at most 2
    span = max(b for _, b in intervals) - min(a for a, _ in intervals)
    assert wall >= span >= waves * seconds - 0.01
    assert span < sum(b - a for a, b in intervals)  # not one after another


def test_a_run_is_pending_while_other_runs_hold_every_slot(daemon):
    """RUN_STATUS_PENDING: submitted, waiting for a concurrency slot; it starts at its turn. A
    pending run can be cancelled at once, without waiting for a slot."""
    holder = submit(daemon, dag(*(
        {"id": f"h{i}", "type": "sleeper", "inputs": {"seconds": 1.5}}
        for i in range(MAX_CONCURRENT)
    )))  # fmt: skip
    wait_for(daemon, holder, lambda r: all(s.status == "running" for s in r.steps))
    waiting = submit(daemon, dag({"id": "a", "type": "transform", "inputs": {"value": 1}}))
    canceled = submit(daemon, dag({"id": "a", "type": "transform", "inputs": {"value": 2}}))
    assert get_run(daemon, waiting).status == api.RunStatus.PENDING
    listed = daemon.call(
        lambda _, rt: rt.list_runs(api.ListRunsRequest(statuses=[api.RunStatus.PENDING]))
    )
    assert {waiting, canceled} <= {r.run_id for r in listed.runs}

    started = time.monotonic()
    daemon.call(lambda _, rt: rt.cancel_run(api.CancelRunRequest(run_id=canceled)))
    assert time.monotonic() - started < 1.0  # not after the holder's steps
    assert get_run(daemon, canceled).status == api.RunStatus.CANCELED
    assert "run_started" not in kinds(tap(daemon, canceled))

    assert wait_done(daemon, waiting).status == api.RunStatus.SUCCEEDED
    assert kinds(tap(daemon, waiting))[:2] == ["run_submitted", "run_started"]
    assert wait_done(daemon, holder).status == api.RunStatus.SUCCEEDED


def test_a_megabyte_reference_path_fails_its_step_with_a_short_error(daemon):
    """The unresolved path went whole into the step's error: a 1 MB error, three times in
    GetRun (step, run, event) and once in the log."""
    path = "x." * 500_000 + "y"
    spec_json = dag(
        {"id": "a", "type": "transform", "inputs": {"v": 1}},
        {"id": "b", "type": "transform", "depends_on": ["a"],
         "inputs": {"v": "${steps.a.output." + path + "}"}},
    )  # fmt: skip
    run = run_and_wait(daemon, spec_json)
    assert run.status == api.RunStatus.FAILED
    message = value(run.steps[1].error)["message"]
    assert "no 'x' there" in message
    assert len(message) < 2_100
    assert len(run.error) < 4_200
    assert len(bytes(run)) < len(spec_json) + 20_000  # the spec itself, and little more


def test_inputs_that_double_step_after_step_fail_the_run_at_the_step_limit(daemon):
    """A 12 KB DAG whose steps each name the step before's output twice made a 160 MB input by
    its ninth step: the daemon used 3.4 GB and could not start again on its journal. Each step's
    inputs and output are now at most ``[scheduler] max_step_bytes`` (4 MiB) of JSON."""
    steps = [{"id": "s0", "type": "transform", "inputs": {"value": "${inputs.x}" * 64}}]
    steps += [
        {"id": f"s{i}", "type": "transform",
         "inputs": {"value": f"${{steps.s{i - 1}.output}}" * 2}}
        for i in range(1, 9)
    ]  # fmt: skip
    run = run_and_wait(daemon, json.dumps({"steps": steps}), inputs={"x": "A" * 10_000})
    assert run.status == api.RunStatus.FAILED
    failed = [s for s in run.steps if s.status == "failed"]
    assert [s.step_id for s in failed] == ["s3"]  # 640 KB, 1.3 MB, 2.6 MB, then 5.1 MB: refused
    assert "max_step_bytes" in value(failed[0].error)["message"]
    assert {s.status for s in run.steps[4:]} == {"skipped"}
    # The daemon serves on, its database caught up with the run (nothing too large to apply).
    assert run_and_wait(daemon, RESEARCH, inputs={"topic": "x"}).status == api.RunStatus.SUCCEEDED


def test_two_independent_steps_overlap(daemon):
    run = run_and_wait(
        daemon,
        dag(
            {"id": "left", "type": "sleeper", "inputs": {"seconds": 0.5}},
            {"id": "right", "type": "sleeper", "inputs": {"seconds": 0.5}},
            {
                "id": "join",
                "type": "transform",
                "depends_on": ["left", "right"],
                "inputs": {
                    "merge": ["${steps.left.output}", {"right": "${steps.right.output.slept}"}]
                },
            },
        ),
    )
    left, right, join = run.steps
    assert left.leased_at < right.completed_at
    assert right.leased_at < left.completed_at
    span = max(left.completed_at, right.completed_at) - min(left.leased_at, right.leased_at)
    assert span < (left.completed_at - left.leased_at) + (right.completed_at - right.leased_at)
    assert join.leased_at >= max(left.completed_at, right.completed_at)
    assert value(join.output) == {"slept": "left", "right": "right"}


def test_retries_with_backoff(daemon, tmp_path):
    counter = tmp_path / "counter"
    run = run_and_wait(
        daemon,
        dag(
            {
                "id": "flaky",
                "type": "flaky",
                "retry": {"max_attempts": 3, "backoff": 0.1},
                "inputs": {"counter": str(counter), "until": 3},
            },
        ),
    )
    assert run.status == api.RunStatus.SUCCEEDED
    (step,) = run.steps
    assert step.attempt == 3
    assert step.status == "succeeded"
    assert value(step.output) == {"calls": 3}
    events = tap(daemon, run.run_id)
    leases = of_kind(events, "step_leased")
    assert [e["payload"]["attempt"] for e in leases] == [1, 2, 3]
    retrying = of_kind(events, "step_retrying")
    assert [e["payload"]["attempt"] for e in retrying] == [1, 2]
    assert [e["payload"]["delay"] for e in retrying] == [0.1, 0.2]  # exponential backoff
    assert "not yet (1)" in retrying[0]["payload"]["error"]["message"]
    # the backoff was waited out
    gap = leases[2]["occurred_at"] - retrying[1]["occurred_at"]
    assert gap.total_seconds() >= 0.19
    assert kinds(events, "flaky") == [
        "step_leased",
        "step_retrying",
        "step_leased",
        "step_retrying",
        "step_leased",
        "step_completed",
    ]


def test_a_step_backing_off_holds_no_concurrency_slot(daemon, tmp_path):
    sleep = {"seconds": 0.4}
    run = run_and_wait(
        daemon,
        dag(
            {
                "id": "flaky",
                "type": "flaky",
                "retry": {"max_attempts": 2, "backoff": 1.0},
                "inputs": {"counter": str(tmp_path / "n"), "until": 2},
            },
            {"id": "gate", "type": "sleeper", "inputs": {"seconds": 0.2}},
            {"id": "s1", "type": "sleeper", "depends_on": ["gate"], "inputs": sleep},
            {"id": "s2", "type": "sleeper", "depends_on": ["gate"], "inputs": sleep},
        ),
    )
    assert run.status == api.RunStatus.SUCCEEDED
    by_id = steps(run)
    assert by_id["flaky"].attempt == 2
    # flaky and gate take both slots; flaky fails at once and backs off for a second. Meanwhile
    # gate is done and s1, s2 run side by side: the step backing off holds no slot.
    s1, s2 = by_id["s1"], by_id["s2"]
    assert s1.leased_at < s2.completed_at
    assert s2.leased_at < s1.completed_at


def test_retries_exhausted_fail_the_run(daemon, tmp_path):
    run = run_and_wait(
        daemon,
        dag(
            {
                "id": "flaky",
                "type": "flaky",
                "retry": {"max_attempts": 2, "backoff": 0},
                "inputs": {"counter": str(tmp_path / "c"), "until": 5},
            },
        ),
    )
    assert run.status == api.RunStatus.FAILED
    (step,) = run.steps
    assert step.attempt == 2
    assert step.status == "failed"
    assert "not yet (2)" in value(step.error)["message"]


def test_timeout_fails_the_step_with_timed_out(daemon):
    started = time.monotonic()
    run = run_and_wait(
        daemon,
        dag(
            {"id": "slow", "type": "sleeper", "timeout": 0.3, "inputs": {"seconds": 5}},
            {"id": "after", "type": "transform", "depends_on": ["slow"]},
        ),
    )
    assert time.monotonic() - started < 4.5  # the 5 s sleep was cut short
    assert run.status == api.RunStatus.FAILED
    slow, after = run.steps
    error = value(slow.error)
    assert slow.status == "failed"
    assert error["timed_out"] is True
    assert "timed out" in error["message"]
    assert after.status == "skipped"
    (failed,) = of_kind(tap(daemon, run.run_id), "step_failed")
    assert failed["payload"]["error"]["timed_out"] is True


def test_a_shell_step_runs_under_its_commands_timeout_retries_and_backoff(make_daemon, tmp_path):
    """The step's block is the declared command its ``command`` names: a command's timeout let
    a step run on past it, its retries were never made (every shell step ran under the generic
    shell step's settings)."""
    calls = tmp_path / "calls"
    daemon = make_daemon(f"""
        [[blocks]]
        name = "hangs"
        type = "shell"
        command = ["sleep", "30"]
        timeout = 0.5
        retries = 1
        backoff = 0.05

        [[blocks]]
        name = "fails"
        type = "shell"
        command = ["sh", "-c", "echo x >> '{calls}'; exit 3"]
        retries = 2
        backoff = 0.1
        """)  # fmt: skip
    started = time.monotonic()
    run = run_and_wait(daemon, dag({"id": "s", "type": "shell", "inputs": {"command": "hangs"}}))
    assert time.monotonic() - started < 20  # each 30 s sleep was cut at its command's 0.5 s
    assert run.status == api.RunStatus.FAILED
    events = tap(daemon, run.run_id)
    retried = of_kind(events, "step_retrying")
    assert [e["payload"]["error"]["timed_out"] for e in retried] == [True]
    (failed,) = of_kind(events, "step_failed")
    assert failed["payload"]["error"]["message"].startswith("timed out after 0.5s")
    run = run_and_wait(daemon, dag({"id": "s", "type": "shell", "inputs": {"command": "fails"}}))
    assert run.status == api.RunStatus.FAILED
    retrying = of_kind(tap(daemon, run.run_id), "step_retrying")
    assert [e["payload"]["delay"] for e in retrying] == [0.1, 0.2]
    assert calls.read_text() == "x\nx\nx\n"  # three attempts: its retries, then the failure
    # a command named by a reference: its settings by the resolved name (a review: it ran
    # with no time limit at all, and without its retries)
    by_reference = dag({"id": "s", "type": "shell", "inputs": {"command": "${inputs.cmd}"}})
    run = run_and_wait(daemon, by_reference, inputs={"cmd": "hangs"})
    assert of_kind(tap(daemon, run.run_id), "step_failed")[0]["payload"]["error"]["timed_out"]
    run = run_and_wait(daemon, by_reference, inputs={"cmd": "fails"})
    assert len(of_kind(tap(daemon, run.run_id), "step_retrying")) == 2
    # a step's own settings still win over its command's
    run = run_and_wait(
        daemon,
        dag({"id": "fails", "type": "shell", "inputs": {"command": "fails"},
             "retry": {"max_attempts": 1}}),
    )  # fmt: skip
    assert of_kind(tap(daemon, run.run_id), "step_retrying") == []


def test_seed_makes_llm_outputs_deterministic(daemon):
    two_llms = dag(
        {"id": "a", "type": "llm", "inputs": {"prompt": "hello ${inputs.who}"}},
        {
            "id": "b",
            "type": "llm",
            "model": "mock:large",
            "inputs": {"prompt": "${steps.a.output.text}"},
        },
    )
    first = outputs(run_and_wait(daemon, two_llms, inputs={"who": "ada"}, seed=11))
    second = outputs(run_and_wait(daemon, two_llms, inputs={"who": "ada"}, seed=11))
    other = outputs(run_and_wait(daemon, two_llms, inputs={"who": "ada"}, seed=12))
    assert first == second
    assert first["a"]["text"] != other["a"]["text"]
    assert first["a"]["text"] != first["b"]["text"]  # each step has its own seed
    assert first["a"]["provider"] == "mock"
    assert first["b"]["model"] == "large"


def test_usage_is_recorded_in_step_completed(daemon):
    run = run_and_wait(
        daemon,
        dag(
            {"id": "a", "type": "llm", "inputs": {"prompt": "one two three four"}},
            {"id": "t", "type": "transform", "inputs": {"value": 1}},
        ),
    )
    events = tap(daemon, run.run_id)
    (llm,) = of_kind(events, "step_completed", "a")
    usage = llm["payload"]["usage"]
    assert usage["tokens_in"] == 4
    assert usage["tokens_out"] == len(value(steps(run)["a"].output)["text"].split())
    expected = (usage["tokens_in"] * 0.0005 + usage["tokens_out"] * 0.0015) / 1000
    assert usage["cost"] == pytest.approx(expected)
    (plain,) = of_kind(events, "step_completed", "t")
    assert plain["payload"]["usage"] == {"tokens_in": 0, "tokens_out": 0, "cost": 0}
    assert llm["payload"]["duration_ms"] >= 0


def test_tap_streams_every_event_in_order_ending_at_the_terminal_one(daemon):
    run_id = submit(
        daemon,
        dag(
            {"id": "nap", "type": "sleeper", "inputs": {"seconds": 0.3}},
            {"id": "t", "type": "transform", "inputs": {"v": "${steps.nap.output.slept}"}},
        ),
    )
    events = tap(daemon, run_id)  # attached while the run is live
    assert [e["payload"]["seq"] for e in events] == list(range(1, len(events) + 1))
    assert all(e["run_id"] == run_id for e in events)
    assert kinds(events) == [
        "run_submitted",
        "run_started",
        "step_leased",
        "step_completed",
        "step_leased",
        "step_completed",
        "run_succeeded",
    ]
    times = [e["occurred_at"] for e in events]
    assert times == sorted(times)
    leased = of_kind(events, "step_leased", "t")[0]["payload"]
    assert leased["inputs"] == {"v": "nap"}
    assert leased["attempt"] == 1
    # a finished run's tap replays the whole history, then ends
    assert tap(daemon, run_id) == events


def test_twenty_concurrent_tappers_see_the_identical_sequence(daemon):
    run_id = submit(
        daemon,
        dag(
            {"id": "nap", "type": "sleeper", "inputs": {"seconds": 0.6}},
            *(
                {
                    "id": f"t{i}",
                    "type": "transform",
                    "inputs": {"i": i, "after": "${steps.nap.output}"},
                }
                for i in range(5)
            ),
        ),
    )

    async def tap_all(_, runtime):
        async def one():
            return [event_dict(e) async for e in runtime.tap_run(api.TapRunRequest(run_id=run_id))]

        return await asyncio.wait_for(asyncio.gather(*(one() for _ in range(20))), 30)

    results = daemon.call(tap_all)
    assert get_run(daemon, run_id).status == api.RunStatus.SUCCEEDED
    first = results[0]
    assert all(r == first for r in results)
    assert [e["payload"]["seq"] for e in first] == list(range(1, len(first) + 1))
    assert first[0]["kind"] == "run_submitted"
    assert first[-1]["kind"] == "run_succeeded"
    assert kinds(first).count("step_completed") == 6


def test_an_output_holding_a_lone_surrogate_fails_its_step_and_survives_a_restart(
    make_daemon, fake_http
):
    """An LLM answer with an emoji cut in two (a lone surrogate): the store refused the step's
    completion after the run was told SUCCEEDED, and a restart found the step running. Now the
    attempt fails with the reason, and the stored run says the same after a restart."""
    fake_http.answer("half-emoji", "cut \ud83e", prompt_tokens=2, completion_tokens=1)
    daemon = make_daemon()
    spec = dag({"id": "ask", "type": "llm", "model": "openai:half-emoji",
                "inputs": {"messages": [{"role": "user", "content": "hi"}]}})  # fmt: skip
    run = run_and_wait(daemon, spec)
    assert run.status == api.RunStatus.FAILED
    assert "lone surrogate" in value(run.steps[0].error)["message"]
    assert "Unstorable" not in daemon.stderr()
    daemon.stop()
    daemon.start()
    again = get_run(daemon, run.run_id)
    assert (again.status, again.steps[0].status) == (api.RunStatus.FAILED, "failed")


def test_llm_openai_provider_against_a_fake_endpoint(daemon, fake_http):
    fake_http.answer("fake-model", "a fake answer", prompt_tokens=12, completion_tokens=4)
    run = run_and_wait(
        daemon,
        dag(
            {
                "id": "ask",
                "type": "llm",
                "model": "openai:fake-model",
                "inputs": {
                    "messages": [
                        {"role": "system", "content": "be brief"},
                        {"role": "user", "content": "about ${inputs.topic}"},
                    ],
                    "temperature": 0.25,
                },
            },
        ),
        inputs={"topic": "ducks"},
        seed=5,
    )
    assert run.status == api.RunStatus.SUCCEEDED, value(run.steps[0].error)
    (step,) = run.steps
    assert value(step.output) == {
        "text": "a fake answer",
        "model": "fake-model",
        "provider": "openai",
        "finish_reason": "stop",
    }
    (body,) = fake_http.chat_requests("fake-model")
    assert body["model"] == "fake-model"
    assert body["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "about ducks"},
    ]
    leased = of_kind(tap(daemon, run.run_id), "step_leased")[0]["payload"]
    assert body["seed"] == step_seed(5, "ask")  # the step's seed, derived from the run seed
    # (a google.protobuf.Value carries numbers as doubles: the tap payload's seed is rounded)
    assert leased["seed"] == body["seed"]  # 53-bit seeds are exact as doubles
    assert body["temperature"] == 0.25
    (done,) = of_kind(tap(daemon, run.run_id), "step_completed")
    usage = done["payload"]["usage"]
    assert usage["tokens_in"] == 12
    assert usage["tokens_out"] == 4
    assert usage["cost"] == pytest.approx((12 * 0.0005 + 4 * 0.0015) / 1000)


@pytest.mark.parametrize(
    ("document", "said"),
    [
        # a negative count left the step and its run unattested (the attestor refused it)
        ({"choices": [{"message": {"content": "hi"}}], "usage": {"prompt_tokens": -5}},
         "usage token counts must be whole numbers from 0"),
        ({"choices": [{"message": {"content": "hi"}}], "usage": {"prompt_tokens": 10**30}},
         "usage token counts must be whole numbers from 0"),
        ({"oops": True}, "not a chat completion (KeyError('choices'))"),
        ({"choices": []}, "not a chat completion (IndexError"),
        ({"choices": [{"message": {"content": {"a": 1}}}]}, "content and finish_reason must be"),
        # json.loads raises RecursionError (not a ValueError): it escaped as itself
        (b"[" * 5_000 + b"]" * 5_000, "not a chat completion (RecursionError"),
        # a usage without both counts was counted 0, the run's totals understated (a hunt)
        ({"choices": [{"message": {"content": "hi"}}], "usage": {"total_tokens": 99}},
         "usage token counts must be whole numbers from 0"),
        ({"choices": [{"message": {"content": "hi"}}], "usage": {"prompt_tokens": 7}},
         "usage token counts must be whole numbers from 0"),
        ({"choices": [{"message": {"content": "hi"}, "finish_reason": False}]},
         "content and finish_reason must be text"),  # it was "stop"
        ({"error": {"message": "Rate limit reached"}},
         "the LLM endpoint answered an error: Rate limit reached"),  # KeyError('choices')
        (b"data: {}\n\n", "streamed its answer (text/event-stream)"),  # JSONDecodeError
        # a lone surrogate in the error's text: the run's end was not stored (a review)
        (b'{"error": {"message": "bad \\ud83e half"}}', "answered an error: bad \\ud83e half"),
    ],
    ids=["negative-tokens", "huge-tokens", "no-choices", "empty-choices", "content-object",
         "too-deep", "total-only", "prompt-only", "false-reason", "error-body", "streamed",
         "lone-surrogate"],
)  # fmt: skip
def test_an_llm_answer_that_is_no_chat_completion_fails_the_step_naming_why(
    daemon, fake_http, document, said
):
    model = f"odd-{uuid.uuid4().hex[:6]}"
    streamed = isinstance(document, bytes) and document.startswith(b"data:")
    kind = "text/event-stream" if streamed else "application/json"
    fake_http.answer(model, "", document=document, content_type=kind)
    run = run_and_wait(daemon, dag({"id": "ask", "type": "llm", "model": f"openai:{model}",
                                    "inputs": {"prompt": "hi"}}))  # fmt: skip
    assert run.status == api.RunStatus.FAILED
    assert said in value(run.steps[0].error)["message"]


SECRET = "sk-test-secret-0123456789abcdef"
ODD_SECRET = 'sk-ab"cd\\12/0123456789'  # quoted JSON-escaped: sk-ab\"cd\\12\/…


@pytest.mark.parametrize(
    ("key", "status"),
    [(SECRET + "\n", 401), (SECRET, 401), (SECRET, 200), (ODD_SECRET, 401), (ODD_SECRET, 200)],
    ids=["a-secret-files-newline", "quoted-in-a-401", "quoted-in-an-error-body",
         "escaped-in-a-401", "escaped-in-an-error-body"],
)  # fmt: skip
def test_the_llm_api_key_never_reaches_the_run_record(make_daemon, fake_http, key, status):
    """A key ending in a newline (a secret file's) was quoted whole in the step's error, by
    httpx refusing the header; an endpoint quoting the key in its error ("Incorrect API key
    provided: …") had it copied into the run's events, GetRun and the log (a hunt), JSON-escaped
    or not (a review)."""
    model = f"keyed-{uuid.uuid4().hex[:6]}"
    secret = key.strip()
    said = {"error": {"message": f"Incorrect API key provided: Bearer {secret}"}}
    fake_http.answer(model, "", document=said, status=status)
    daemon = make_daemon("", {"OPENAI_API_KEY": key})
    run = run_and_wait(daemon, dag({"id": "ask", "type": "llm", "model": f"openai:{model}",
                                    "inputs": {"prompt": "hi"}}))  # fmt: skip
    assert run.status == api.RunStatus.FAILED
    message = value(run.steps[0].error)["message"]
    assert "Incorrect API key provided: Bearer [the API key]" in message
    record = str(bytes(run)) + json.dumps(tap(daemon, run.run_id), default=str)
    for form in (secret, json.dumps(secret)[1:-1], "0123456789"):
        assert form not in record
        assert form not in daemon.stderr()


@pytest.mark.parametrize(
    "document",
    [{"error": {"message": "x" * 170 + SECRET}}, {"error": "x" * 169 + SECRET},
     {"choices": [{"message": {"content": "hi"}}],
      "usage": {"prompt_tokens": "x" * 68 + SECRET, "completion_tokens": 1}},
     b"\xff" + b"x" * 36 + SECRET.encode()],
    ids=["message", "error-text", "usage", "not-utf-8"],
)  # fmt: skip
def test_an_error_cut_where_the_key_is_quoted_keeps_none_of_it(document):
    """Cut before it was redacted, a 2xx error quoting the key at the cut kept all of it but
    its last character (a review)."""
    from foundry.plugins.llm import completion_of

    content = document if isinstance(document, bytes) else json.dumps(document).encode()
    with pytest.raises(BlockError) as failed:
        completion_of(content, SECRET)
    assert SECRET[:12] not in str(failed.value)


def test_a_completion_holding_a_short_placeholder_key_is_not_rewritten(make_daemon, fake_http):
    """Local servers take placeholder keys ("EMPTY", "ollama"): replaced in every answer, a key
    "e" rewrote the JSON's names (every call failed), "key" the model's text (a review)."""
    model = f"plain-{uuid.uuid4().hex[:6]}"
    fake_http.answer(model, "an EMPTY room, the key", prompt_tokens=1, completion_tokens=5)
    daemon = make_daemon("", {"OPENAI_API_KEY": "EMPTY"})
    run = run_and_wait(daemon, dag({"id": "ask", "type": "llm", "model": f"openai:{model}",
                                    "inputs": {"prompt": "hi"}}))  # fmt: skip
    assert run.status == api.RunStatus.SUCCEEDED, value(run.steps[0].error)
    assert value(run.steps[0].output)["text"] == "an EMPTY room, the key"


def test_an_llm_api_key_no_header_can_carry_fails_the_step_without_quoting_it(
    make_daemon, fake_http
):
    daemon = make_daemon("", {"OPENAI_API_KEY": "sk-half\x01" + SECRET})
    run = run_and_wait(daemon, dag({"id": "ask", "type": "llm", "model": "openai:any",
                                    "inputs": {"prompt": "hi"}}))  # fmt: skip
    message = value(run.steps[0].error)["message"]
    assert "$OPENAI_API_KEY: the API key holds a character a header cannot carry" in message
    assert SECRET not in message
    assert fake_http.chat_requests("any") == []  # nothing sent


def test_an_llm_endpoints_redirect_is_named_not_read_as_a_completion(daemon, fake_http):
    # not followed, as ever, but its body was read as a completion: a JSONDecodeError said,
    # and a redirect with a completion's body was taken as the answer
    model = f"moved-{uuid.uuid4().hex[:6]}"
    completion = {"choices": [{"message": {"content": "from a redirect"}}]}
    fake_http.answer(model, "", document=completion, status=307)
    run = run_and_wait(daemon, dag({"id": "ask", "type": "llm", "model": f"openai:{model}",
                                    "inputs": {"prompt": "hi"}}))  # fmt: skip
    assert run.status == api.RunStatus.FAILED
    assert (
        "LLM endpoint answered 307: a redirect, which is not followed"
        in value(run.steps[0].error)["message"]
    )


def test_an_http_answer_too_deep_for_json_is_its_text(daemon, fake_http):
    """json.loads raises RecursionError on JSON nested ~1,000 levels: it failed the step,
    where JSON that does not parse is the answer's text."""
    run = run_and_wait(daemon, dag({"id": "get", "type": "http", "inputs": {
        "url": f"{fake_http.url}/deep"}}))  # fmt: skip
    assert run.status == api.RunStatus.SUCCEEDED, value(run.steps[0].error)
    assert value(run.steps[0].output)["body"] == DEEP_JSON.decode()


def test_an_http_steps_timeout_bounds_the_whole_request(daemon, fake_http):
    # httpx bounds each read: a server sending a byte a second held the step for the block's
    # own 60 s
    started = time.monotonic()
    run = run_and_wait(daemon, dag({"id": "get", "type": "http", "inputs": {
        "url": f"{fake_http.url}/drip", "timeout": 1}}))  # fmt: skip
    assert run.status == api.RunStatus.FAILED
    assert "took more than inputs.timeout (1 s)" in value(run.steps[0].error)["message"]
    assert time.monotonic() - started < 30


@pytest.mark.parametrize(
    ("name", "given"),
    [("follow_redirects", "false"), ("allow_error_status", "no"), ("timeout", "nan")],
)
def test_an_http_steps_options_are_read_strictly(daemon, fake_http, name, given):
    # "false" was read as true (bool() of a string); "nan" failed with Python's words
    run = run_and_wait(daemon, dag({"id": "get", "type": "http", "inputs": {
        "url": f"{fake_http.url}/status/404", name: given}}))  # fmt: skip
    assert run.status == api.RunStatus.FAILED
    assert f"inputs.{name}: expected" in value(run.steps[0].error)["message"]


@pytest.mark.parametrize(
    ("model", "needle"),
    [
        ("nosuch:model", "model: unknown provider 'nosuch' before its ':'"),
        ("llama3:8b", "written PROVIDER:NAME, e.g. mock:llama3:8b"),
    ],
)
def test_a_step_model_no_provider_serves_is_refused_at_submit(daemon, model, needle):
    step = {"id": "ask", "type": "llm", "model": model, "inputs": {"prompt": "x"}}
    request = api.SubmitRunRequest(spec=spec(dag({"id": "first", "type": "transform"}, step)))
    error = rpc_error(daemon, lambda rt: rt.submit_run(request))
    assert_error(error, Status.INVALID_ARGUMENT, "step 'ask'", needle)
    # a block that reads no model takes any: it is recorded context
    run = run_and_wait(daemon, dag({"id": "t", "type": "transform", "model": "nosuch:model"}))
    assert run.status == api.RunStatus.SUCCEEDED


def test_an_llm_model_named_in_the_inputs_is_checked_when_the_step_runs(daemon):
    run = run_and_wait(
        daemon,
        dag({"id": "ask", "type": "llm", "inputs": {"prompt": "x", "model": "nosuch:model"}}),
    )
    assert run.status == api.RunStatus.FAILED
    assert "unknown provider 'nosuch'" in value(run.steps[0].error)["message"]


def test_tool_step_with_unknown_tool_fails_naming_it(daemon):
    run = run_and_wait(
        daemon,
        dag(
            {"id": "use", "type": "tool", "inputs": {"tool": "hammer", "args": {}}},
        ),
    )
    assert run.status == api.RunStatus.FAILED
    message = value(run.steps[0].error)["message"]
    assert "'hammer'" in message
    assert "echo" in message


def test_tool_echo(daemon):
    run = run_and_wait(
        daemon,
        dag(
            {"id": "use", "type": "tool", "inputs": {"tool": "echo", "args": {"n": "${inputs.n}"}}},
        ),
        inputs={"n": [1, 2]},
    )
    assert value(run.steps[0].output) == {"n": [1, 2]}


def test_http_step_against_a_local_server(daemon, fake_http):
    run = run_and_wait(
        daemon,
        dag(
            {"id": "get", "type": "http", "inputs": {"url": f"{fake_http.url}/json/get?x=1"}},
            {
                "id": "post",
                "type": "http",
                "inputs": {
                    "url": f"{fake_http.url}/json/post",
                    "method": "POST",
                    "json": {"got": "${steps.get.output.body.hello}"},
                },
            },
        ),
    )
    assert run.status == api.RunStatus.SUCCEEDED
    by_id = steps(run)
    got = value(by_id["get"].output)
    assert got["status"] == 200
    assert got["body"] == {"hello": "world", "path": "/json/get?x=1"}
    posted = value(by_id["post"].output)
    assert posted["body"] == {"echo": {"got": "world"}, "path": "/json/post"}
    assert any(
        r["path"] == "/json/post" and r["body"] == {"got": "world"} for r in fake_http.requests
    )
    missing = run_and_wait(
        daemon,
        dag(
            {"id": "missing", "type": "http", "inputs": {"url": f"{fake_http.url}/status/404"}},
        ),
    )
    assert missing.status == api.RunStatus.FAILED
    assert "404" in value(missing.steps[0].error)["message"]
    tolerated = run_and_wait(
        daemon,
        dag(
            {
                "id": "missing",
                "type": "http",
                "inputs": {"url": f"{fake_http.url}/status/404", "allow_error_status": True},
            },
        ),
    )
    assert value(tolerated.steps[0].output)["status"] == 404


def test_grpcio_client_submit_get_tap(daemon, grpcio_client):
    import grpc
    from google.protobuf import json_format, struct_pb2

    pb2 = grpcio_client.runtime_pb2
    inputs = struct_pb2.Struct()
    inputs.update({"topic": "grpcio"})
    with grpcio_client.connect(daemon.address) as (_, stub):
        request = pb2.SubmitRunRequest(
            spec=pb2.RunSpec(dag_json=RESEARCH, inputs=inputs, seed=3, labels={"via": "grpcio"}),
            idempotency_key="grpcio-key",
        )
        run_id = stub.SubmitRun(request, timeout=10).run_id
        assert stub.SubmitRun(request, timeout=10).run_id == run_id
        events = list(stub.TapRun(pb2.TapRunRequest(run_id=run_id), timeout=30))
        assert events[0].kind == "run_submitted"
        assert events[-1].kind == "run_succeeded"
        seqs = [json_format.MessageToDict(e.payload)["seq"] for e in events]
        assert seqs == list(range(1, len(events) + 1))
        run = stub.GetRun(pb2.GetRunRequest(run_id=run_id), timeout=10).run
        assert run.status == pb2.RUN_STATUS_SUCCEEDED
        assert run.spec.labels["via"] == "grpcio"
        assert run.spec.seed == 3
        assert [s.step_id for s in run.steps] == ["outline", "count", "report"]
        assert all(s.HasField("leased_at") and s.HasField("completed_at") for s in run.steps)
        report = json_format.MessageToDict(run.steps[2].output)
        assert report["topic"] == "grpcio"
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetRun(pb2.GetRunRequest(run_id="run_missing"), timeout=10)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as caught:
            stub.SubmitRun(pb2.SubmitRunRequest(spec=pb2.RunSpec(dag_json="{")), timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # the same run through grpclib
    assert outputs(get_run(daemon, run_id))["report"]["topic"] == "grpcio"


# --- with a daemon of its own: restart, and what is stored ---------------------------------------


def test_idempotency_survives_restart_and_invalid_submits_store_nothing(make_daemon):
    daemon = make_daemon()
    key = "idem-restart"
    broken = api.SubmitRunRequest(spec=spec(dag({"id": "a", "type": "bogus"})), idempotency_key=key)
    assert_error(
        rpc_error(daemon, lambda rt: rt.submit_run(broken)), Status.INVALID_ARGUMENT, "'a'"
    )
    run_id = submit(daemon, RESEARCH, key=key, inputs={"topic": "kept"})  # the key is still free
    finished = wait_done(daemon, run_id)
    # a run is durable once SubmitRun answers: kill -9 right away, it still runs after the restart
    napping = submit(daemon, dag({"id": "nap", "type": "sleeper", "inputs": {"seconds": 0.3}}))
    daemon.kill()
    daemon.start()
    assert submit(daemon, RESEARCH, key=key, inputs={"topic": "kept"}) == run_id
    # the first spec is read back from the store: another one is still refused
    error = _reused_key(daemon, key, RESEARCH, inputs={"topic": "other"})
    assert_error(error, Status.FAILED_PRECONDITION, run_id, "its inputs differs")
    broken.idempotency_key = "another-key"
    assert_error(rpc_error(daemon, lambda rt: rt.submit_run(broken)), Status.INVALID_ARGUMENT)
    assert get_run(daemon, run_id).to_dict() == finished.to_dict()  # read back from the store
    nap = wait_done(daemon, napping)
    assert nap.status == api.RunStatus.SUCCEEDED
    assert value(nap.steps[0].output) == {"slept": "nap"}
    events = tap(daemon, run_id)
    assert kinds(events).count("run_submitted") == 1
    assert kinds(events).count("run_succeeded") == 1
    assert daemon.stop() == 0
    with duckdb.connect(str(Path(daemon.home) / "foundry.duckdb"), read_only=True) as con:
        runs = con.execute(
            "SELECT run_id, idempotency_key FROM runs ORDER BY created_at"
        ).fetchall()
        assert runs == [(run_id, key), (napping, "")]
        stored = con.execute(
            "SELECT seq, kind FROM run_events WHERE run_id = ? ORDER BY seq", [run_id]
        ).fetchall()
    assert [k for _, k in stored] == [e["kind"] for e in events]
    assert [s for s, _ in stored] == list(range(1, len(stored) + 1))


def test_a_missing_reference_at_run_time_fails_the_step_naming_the_key(daemon):
    run = run_and_wait(
        daemon,
        dag(
            {"id": "a", "type": "transform", "inputs": {"value": {"present": 1}}},
            {"id": "b", "type": "transform", "inputs": {"x": "${steps.a.output.absent}"}},
            {"id": "c", "type": "transform", "inputs": {"y": "${inputs.nothing}"}},
        ),
    )
    assert run.status == api.RunStatus.FAILED
    by_id = steps(run)
    failed = [s for s in ("b", "c") if by_id[s].status == "failed"]
    assert failed
    for step_id in failed:
        message = value(by_id[step_id].error)["message"]
        assert ("'absent'" in message) if step_id == "b" else ("'nothing'" in message)


def test_get_during_a_run_shows_the_running_step(daemon):
    run_id = submit(
        daemon,
        dag(
            {"id": "nap", "type": "sleeper", "inputs": {"seconds": 0.5}},
            {"id": "then", "type": "transform", "depends_on": ["nap"]},
        ),
    )
    run = wait_for(daemon, run_id, lambda r: r.steps[0].status == "running", what="nap running")
    assert run.status == api.RunStatus.RUNNING
    nap, then = run.steps
    assert nap.attempt == 1
    assert nap.leased_at is not None
    assert nap.completed_at is None
    assert value(nap.output) is None
    assert then.status == "pending"
    assert then.attempt == 0
    assert json.loads(run.spec.dag_json)["steps"][0]["id"] == "nap"
    assert wait_done(daemon, run_id).status == api.RunStatus.SUCCEEDED


def test_list_runs_reads_no_step_outputs_and_restarts_beside_them(make_daemon):
    # ~19 MB of step outputs a run: ListRuns aggregated every event's payload and ran out of
    # DuckDB's memory ([store] memory_limit, 256 MB) for good, where only run-level events say
    # anything; after a restart, so did the attestor's start-up look at step payloads.
    daemon = make_daemon("")
    fan = [{"id": f"f{i}", "type": "transform", "inputs": {"value": "${steps.s1.output}"}}
           for i in range(5)]  # fmt: skip
    big = dag(
        {"id": "s0", "type": "transform", "inputs": {"value": "${inputs.big}"}},
        {"id": "s1", "type": "transform",
         "inputs": {"value": "${steps.s0.output}${steps.s0.output}${steps.s0.output}"}},
        *fan,
    )  # fmt: skip
    run_ids = [submit(daemon, big, inputs={"big": str(n) * 1_000_000}) for n in range(2)]
    for run_id in run_ids:
        assert wait_done(daemon, run_id).status == api.RunStatus.SUCCEEDED
    for restart in range(3):
        if restart:
            daemon = daemon.restart()
        listed = daemon.call(lambda _, rt: rt.list_runs(api.ListRunsRequest()))
        assert [(r.run_id, r.status, r.step_count) for r in listed.runs] == [
            (run_id, api.RunStatus.SUCCEEDED, 7) for run_id in reversed(run_ids)
        ]
    assert "Traceback" not in daemon.stderr(), daemon.stderr()


def _nested(levels: int) -> dict:
    value: dict = {"leaf": 1}
    for _ in range(levels - 1):
        value = {"k": value}
    return value


def test_json_nested_as_deep_as_protobuf_clients_read_and_no_deeper(daemon, grpcio_client):
    # grpcio (upb) reads at most 100 nested messages, and a JSON level costs up to three: 40
    # levels of inputs made GetRun and TapRun of an accepted run unreadable to it
    deepest = submit(daemon, dag({"id": "a", "type": "transform", "inputs": {"value": 1}}),
                     inputs=_nested(STRUCT_DEPTH))  # fmt: skip
    wait_done(daemon, deepest)
    pb = grpcio_client.runtime_pb2
    with grpcio_client.connect(daemon.address) as (_, runtime):
        run = runtime.GetRun(pb.GetRunRequest(run_id=deepest), timeout=10).run
        assert run.status == pb.RUN_STATUS_SUCCEEDED
        events = list(runtime.TapRun(pb.TapRunRequest(run_id=deepest), timeout=10))
        assert events[-1].kind == "run_succeeded"
    error = _reused_key(daemon, "", RESEARCH, inputs=_nested(STRUCT_DEPTH + 1))
    assert_error(error, Status.INVALID_ARGUMENT, f"spec.inputs: nested deeper than {STRUCT_DEPTH}")
    # inputs once references are resolved too deep: the step fails, saying why
    resolved = dag(
        {"id": "a", "type": "transform", "inputs": {"value": _nested(STRUCT_DEPTH - 1)}},
        {"id": "b", "type": "transform",
         "inputs": {"value": {"wrapped": {"more": "${steps.a.output}"}}}},
    )  # fmt: skip
    run = wait_done(daemon, submit(daemon, resolved))
    assert run.status == api.RunStatus.FAILED
    assert [s.status for s in run.steps] == ["succeeded", "failed"]
    assert "inputs (once resolved): nested deeper than" in json.dumps(value(run.steps[1].error))


def test_a_step_output_nested_too_deeply_fails_the_step(make_daemon):
    deep = '{"k":' * (STRUCT_DEPTH + 1) + "1" + "}" * (STRUCT_DEPTH + 1)
    daemon = make_daemon(f"""
[[blocks]]
name = "deep"
type = "shell"
kind = "observer"
command = ["printf", '{deep}']
""")
    run = wait_done(daemon, submit(daemon, dag({"id": "a", "type": "deep"})))
    assert run.status == api.RunStatus.FAILED
    assert f"output: nested deeper than {STRUCT_DEPTH}" in json.dumps(value(run.steps[0].error))


def test_cancel_leases_nothing_more_and_names_only_the_steps_that_were_running(daemon):
    """12 independent steps, 2 slots: the tasks waiting for a slot were counted as running
    (canceled_steps listed them, each got a step_canceled without ever having a lease), and a
    slot freed while the cancel was being made durable leased one more step."""
    sleepers = [{"id": f"s{i}", "type": "sleeper", "inputs": {"seconds": 1}} for i in range(12)]
    run_id = submit(daemon, dag(*sleepers))
    wait_for(daemon, run_id, lambda run: sum(s.status == "running" for s in run.steps) == 2)
    reply = daemon.call(lambda _, rt: rt.cancel_run(api.CancelRunRequest(run_id=run_id)))
    run = wait_done(daemon, run_id)
    assert run.status == api.RunStatus.CANCELED
    events = tap(daemon, run_id)
    leased = [e["step_id"] for e in events if e["kind"] == "step_leased"]
    asked = kinds(events).index("cancel_requested")
    assert "step_leased" not in kinds(events)[asked:]
    assert sorted(reply.canceled_steps) == sorted(leased)
    assert sorted(e["step_id"] for e in events if e["kind"] == "step_canceled") == sorted(leased)
    statuses = {s.step_id: s.status for s in run.steps}
    assert {statuses[i] for i in leased} == {"canceled"}
    assert {v for k, v in statuses.items() if k not in leased} == {"skipped"}


def test_a_key_whose_run_retention_deleted_starts_a_new_run(make_daemon):
    """The key stayed in the scheduler's table after retention deleted its run: every resend
    was UNAVAILABLE "retry", for good (a restart, which loads no such key, made a new run)."""
    daemon = make_daemon(
        "[store]\nretain_days = 0.00001\nretention_interval = 1\n[scheduler]\nrecent_runs = 1\n"
    )
    one = dag({"id": "a", "type": "transform", "inputs": {"value": 1}})
    first = submit(daemon, one, key="kept-a-moment")
    wait_done(daemon, first)
    wait_done(daemon, submit(daemon, one, key="another"))  # pushes the first out of memory

    _wait_archived(daemon, first)
    again = submit(daemon, one, key="kept-a-moment")
    assert again != first
    assert wait_done(daemon, again).status == api.RunStatus.SUCCEEDED
    assert submit(daemon, one, key="kept-a-moment") == again


def _wait_archived(daemon: Any, run_id: str) -> None:
    """Until GetRun of ``run_id`` is NOT_FOUND: retention archived it."""

    def archived() -> bool:
        try:
            get_run(daemon, run_id)
        except GRPCError as exc:
            return exc.status == Status.NOT_FOUND
        return False

    wait_until(archived, what=f"retention to archive {run_id}", timeout=20)


def test_a_run_retention_archived_is_forgotten_though_it_was_in_memory(make_daemon):
    """Retention told no one what it archived: a run still among the recent ones in memory
    kept answering GetRun and its idempotency key (nothing new ran) until a restart, and a
    recent chain kept answering Trace and Status."""
    daemon = make_daemon("[store]\nretain_days = 0.00001\nretention_interval = 1\n")
    one = dag({"id": "a", "type": "transform", "inputs": {"value": 1}})
    first = submit(daemon, one, key="kept-a-moment")
    wait_done(daemon, first)
    chain = emit(daemon, "greet_requested")
    assert finished(daemon, chain.workflow_id).state == "completed"

    _wait_archived(daemon, first)
    again = submit(daemon, one, key="kept-a-moment")
    assert again != first
    assert wait_done(daemon, again).status == api.RunStatus.SUCCEEDED
    # the README: Trace then answers not found (the chain ended after the run: a retention pass
    # may archive the run while the chain is still younger than the age it keeps)
    wait_until(lambda: not trace(daemon, chain.event_id).found,
               what="retention to archive the chain", timeout=20)  # fmt: skip
    error = grpc_error(daemon, lambda f, _: f.status(
        foundry_api.StatusRequest(workflow_id=chain.workflow_id)))  # fmt: skip
    assert error.status == Status.NOT_FOUND


def test_trace_files_are_written_after_retention_removed_their_days_folder(make_daemon):
    """The trace writer made each day's folder once: once retention had emptied and removed it,
    the writer's process died on the next file and the daemon's own writer failed each after it
    (no trace files for the rest of the day; a hunt)."""
    daemon = make_daemon("[store]\nretain_days = 0.00005\nretention_interval = 1\n")  # 4.3 s
    first = emit(daemon, "greet_requested")
    assert finished(daemon, first.workflow_id).state == "completed"
    days = daemon.home / "traces"
    wait_until(lambda: days.is_dir() and any(days.iterdir()), what="a day's folder")
    wait_until(lambda: not any(days.iterdir()), what="retention to remove it", timeout=30)
    later = emit(daemon, "greet_requested")
    assert finished(daemon, later.workflow_id).state == "completed"
    wait_until(lambda: any(days.glob(f"*/{later.workflow_id}.json")), what="its trace file")
    assert "could not write trace files" not in daemon.stderr()
    assert "Traceback" not in daemon.stderr()


def test_runs_ending_together_past_recent_runs_leave_memory_without_stopping_the_daemon(
    make_daemon,
):
    """A run whose end was on its way to the store counted as finished already: another run's
    retirement forgot it (the oldest), and its own then raised KeyError, which stopped the
    daemon (30 one-step runs at once with ``recent_runs = 1``, 2 times in 2)."""
    daemon = make_daemon("[scheduler]\nrecent_runs = 1\n")
    one = dag({"id": "t", "type": "transform", "inputs": {"value": 1}})

    async def submit_all(_: Any, runtime: Any) -> list[str]:
        requests = [api.SubmitRunRequest(spec=spec(one, seed=seed)) for seed in range(30)]
        replies = await asyncio.gather(*(runtime.submit_run(r) for r in requests))
        return [reply.run_id for reply in replies]

    for _ in range(3):
        for run_id in daemon.call(submit_all):
            assert wait_done(daemon, run_id).status == api.RunStatus.SUCCEEDED
        assert daemon.process is not None
        assert daemon.process.poll() is None, daemon.stderr()[-2000:]
    assert "KeyError" not in daemon.stderr()


def test_a_reply_larger_than_a_connections_budget_of_waiting_replies_is_read_whole(daemon):
    """A reply that must wait for its client's window counts against the connection's budget
    of unread replies: a 24 MB ReplayRun its client was reading was refused RESOURCE_EXHAUSTED
    (one reply always may wait, however large)."""
    big = "x" * 3_000_000
    spec = dag(*({"id": step, "type": "transform", "inputs": {"value": "${inputs.big}"}}
                 for step in ("a", "b")))  # fmt: skip
    run = run_and_wait(daemon, spec, inputs={"big": big})
    assert run.status == api.RunStatus.SUCCEEDED
    request = api.ReplayRunRequest(run_id=run.run_id, mode=api.ReplayMode.FULL)
    reply = daemon.call(lambda _, rt: rt.replay_run(request))
    assert [s.step_id for s in reply.steps] == ["a", "b"]  # 4 × 3 MB each: snapshot, drift
    assert reply.all_within_tolerance


@pytest.mark.parametrize(
    ("step", "said"),
    [
        ({"type": "transform", "inputs": {"pick": {"from": {"a": 1}, "keys": "ab"}}},
         "inputs.pick: expected {from: object, keys: [strings]}"),
        ({"type": "transform", "inputs": {"pick": {"from": {"a": 1}, "keys": 5}}},
         "inputs.pick: expected {from: object, keys: [strings]}"),
        ({"type": "llm", "model": "mock:small", "inputs": {"prompt": "x", "temperature": "hot"}},
         "inputs.temperature: expected a finite number"),
        ({"type": "llm", "model": "mock:small", "inputs": {"messages": ["hello"]}},
         "inputs.messages: expected a list of objects with a role"),
        ({"type": "llm", "model": "mock:small", "inputs": {"messages": "hi", "prompt": "x"}},
         "inputs.messages: expected a list of objects with a role"),
        ({"type": "llm", "model": "mock:small", "inputs": {"messages": []}},
         "inputs.messages: expected a list of objects with a role"),
    ],
    ids=["pick keys a string", "pick keys a number", "temperature a word", "messages strings",
         "messages a string", "messages empty"],
)  # fmt: skip
def test_step_inputs_of_the_wrong_shape_fail_naming_them(daemon, step, said):
    """ "ab" picked a and b; 5 was "'int' object is not iterable"; "hot" was "could not convert
    string to float"; ["hello"] was "dictionary update sequence element #0" (a hunt)."""
    run = run_and_wait(daemon, dag({"id": "s", **step}))
    assert run.status == api.RunStatus.FAILED
    assert said in value(run.steps[0].error)["message"]


TAPPERS = 30


def ended_run_of_large_outputs(daemon: Any) -> str:
    """A succeeded run of 5 steps of 2 MB outputs each (its events ~20 MB, GetRun ~10 MB)."""
    steps = [{"id": f"s{i}", "type": "transform", "inputs": {"value": "${inputs.big}"}}
             for i in range(5)]  # fmt: skip
    run_id = submit(daemon, dag(*steps), inputs={"big": "x" * 2_000_000})
    assert wait_done(daemon, run_id).status == api.RunStatus.SUCCEEDED
    return run_id


async def calls_reading_nothing(
    channels: list[Any],
    count: int,
    method: str,
    cardinality: Any,
    request_type: Any,
    reply_type: Any,
    request: Any,
) -> list[Any]:
    """``count`` calls of a RuntimeService method over ``channels`` (smallest windows) whose
    clients read nothing: the daemon's sends wait at each window."""
    streams = []
    for i in range(count):
        call = channels[i % len(channels)].request(
            f"/fleetforge.runtime.v1.RuntimeService/{method}",
            cardinality,
            request_type,
            reply_type,
        )
        stream = await call.__aenter__()
        await stream.send_message(request, end=True)
        streams.append(stream)
    return streams


@pytest.mark.parametrize("stored", [False, True], ids=["in-memory", "read-back"])
def test_tappers_that_read_nothing_share_each_large_event(make_daemon, stored):
    """A tap's history went out in batches joined into one copy for each tapper: 50 tappers
    reading nothing of a run of 2 MB outputs held 2 GB (~40 MB each) until they closed. And
    each tap of a run read back from the store (``stored``: let go by ``recent_run_bytes``)
    parsed and held its own copy of the log: 40 tappers of a run of 20 steps of 0.5 MB took
    800 MB, 200 of a 60 MB run 16 GB (a hunt). The tappers of an ended run share one read."""
    daemon = make_daemon("[scheduler]\nrecent_run_bytes = 1000\n" if stored else "")
    run_id = ended_run_of_large_outputs(daemon)  # ~20 MB of events
    if stored:  # the newest ended run stays in memory: another one ends after it
        newer = run_and_wait(daemon, dag({"id": "t", "type": "transform"}))
        assert newer.status == api.RunStatus.SUCCEEDED

    async def scenario(_, runtime):
        channels = [slow_channel(daemon.address) for _ in range(3)]
        try:
            await runtime.get_run(api.GetRunRequest(run_id=run_id))  # warm: store, allocator
            await asyncio.sleep(1.0)
            before = rss_mb(daemon.process.pid)
            tap = ("TapRun", Cardinality.UNARY_STREAM, api.TapRunRequest, api.RunEvent)
            held = await calls_reading_nothing(channels, TAPPERS, *tap,
                                               api.TapRunRequest(run_id=run_id))  # fmt: skip
            await asyncio.sleep(2.0)
            assert len(held) == TAPPERS
            return rss_mb(daemon.process.pid) - before
        finally:
            for channel in channels:
                channel.close()

    grown = daemon.call(scenario)
    assert grown < 150, f"the daemon grew {grown:.0f} MB for {TAPPERS} tappers of ~20 MB"
    seen = kinds(tap(daemon, run_id))  # a tap of the shared copy: whole
    assert (seen[:2], seen[-1]) == (["run_submitted", "run_started"], "run_succeeded")
    assert sorted(seen[2:-1]) == ["step_completed"] * 5 + ["step_leased"] * 5


def test_getrun_callers_of_a_run_no_longer_in_memory_share_one_load_of_it(make_daemon):
    """Each GetRun of a run read back from the store loaded and rebuilt its own copy: 30 at
    once of a run of 60 MB of outputs took 3.5 GB (a hunt); here 580 MB for a run of 20 MB of
    events. Callers at once share one load now, and one encoding of its reply."""
    daemon = make_daemon("[scheduler]\nrecent_run_bytes = 1000\n")
    run_id = ended_run_of_large_outputs(daemon)  # ~20 MB of events
    newer = run_and_wait(daemon, dag({"id": "t", "type": "transform"}))
    assert newer.status == api.RunStatus.SUCCEEDED  # the newest ended run stays in memory
    request = api.GetRunRequest(run_id=run_id)

    async def scenario(_, runtime):
        await runtime.get_run(request)  # warm: the store's and the allocator's steady state
        await asyncio.sleep(1.0)
        before = rss_mb(daemon.process.pid)
        peak = [before]

        async def sample() -> None:
            while True:
                peak.append(rss_mb(daemon.process.pid))
                await asyncio.sleep(0.05)

        sampler = asyncio.ensure_future(sample())
        try:
            replies = await asyncio.gather(*(runtime.get_run(request) for _ in range(CALLERS)))
        finally:
            sampler.cancel()
        assert {len(r.run.steps) for r in replies} == {5}
        return max(peak) - before

    grown = daemon.call(scenario)
    assert grown < 200, f"the daemon grew {grown:.0f} MB for {CALLERS} callers of GetRun"


CALLERS = 30


def test_getrun_callers_that_read_nothing_share_an_ended_runs_reply(make_daemon):
    """Each GetRun of an ended run encoded its reply again: 50 callers reading nothing of a run
    of 40 MB held 2 GB until their connections gave up. They share one encoding now, and a
    caller that reads gets the same run whole."""
    daemon = make_daemon()
    run_id = ended_run_of_large_outputs(daemon)  # a ~10 MB reply

    async def scenario(_, runtime):
        channels = [slow_channel(daemon.address) for _ in range(3)]
        try:
            first = (await runtime.get_run(api.GetRunRequest(run_id=run_id))).run
            await asyncio.sleep(1.0)
            before = rss_mb(daemon.process.pid)
            get = ("GetRun", Cardinality.UNARY_UNARY, api.GetRunRequest, api.GetRunResponse)
            await calls_reading_nothing(channels, CALLERS, *get, api.GetRunRequest(run_id=run_id))
            await asyncio.sleep(2.0)
            grown = rss_mb(daemon.process.pid) - before
            again = (await runtime.get_run(api.GetRunRequest(run_id=run_id))).run
            return first, again, grown
        finally:
            for channel in channels:
                channel.close()

    first, again, grown = daemon.call(scenario)
    assert grown < 100, f"the daemon grew {grown:.0f} MB for {CALLERS} callers of ~10 MB"
    assert again == first
    assert [value(s.output) for s in again.steps] == ["x" * 2_000_000] * 5


def test_connect_getrun_callers_that_read_nothing_share_an_ended_runs_json(make_daemon):
    """Over Connect JSON, each GetRun of an ended run wrote its own JSON text (on a worker
    thread): 30 callers reading nothing of a 10 MB run held 30 texts (344 MB). One now, shared;
    a caller that reads gets it whole."""
    daemon = make_daemon()
    run_id = ended_run_of_large_outputs(daemon)
    url = f"http://{daemon.http_address}/fleetforge.runtime.v1.RuntimeService/GetRun"
    first = httpx.post(url, json={"runId": run_id}, timeout=60).json()
    time.sleep(1.0)
    before = rss_mb(daemon.process.pid)
    body = json.dumps({"runId": run_id}).encode()
    host, port = daemon.http_address.rsplit(":", 1)
    callers = []
    try:
        for _ in range(CALLERS):  # each reads nothing of its answer
            caller = socket.create_connection((host, int(port)))
            caller.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            caller.sendall(b"POST /fleetforge.runtime.v1.RuntimeService/GetRun HTTP/1.1\r\n"
                           b"Host: x\r\nContent-Type: application/json\r\n"
                           b"Content-Length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip
            callers.append(caller)
        time.sleep(3.0)
        grown = rss_mb(daemon.process.pid) - before
        again = httpx.post(url, json={"runId": run_id}, timeout=60).json()
    finally:
        for caller in callers:
            caller.close()
    assert grown < 100, f"the daemon grew {grown:.0f} MB for {CALLERS} callers of ~10 MB"
    assert again == first
    assert [s["output"] for s in again["run"]["steps"]] == ["x" * 2_000_000] * 5


def _h2_tap_connection(address: str, stream_window: int) -> tuple[socket.socket, Any]:
    """A raw HTTP/2 client: its streams' windows ``stream_window``, the connection's the most."""
    host, port = address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)))
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: stream_window})
    client.increment_flow_control_window(2**31 - 1 - 65_535)
    sock.sendall(client.data_to_send())
    return sock, client


def _pump_h2(sock: socket.socket, client: Any, seconds: float, data: dict, ended: dict) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not select.select([sock], [], [], 0.1)[0]:
            continue
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        for event in client.receive_data(chunk):
            if isinstance(event, h2.events.DataReceived):
                data.setdefault(event.stream_id, bytearray()).extend(event.data)
            elif isinstance(event, h2.events.TrailersReceived):
                ended[event.stream_id] = dict(event.headers)
        sock.sendall(client.data_to_send())


def test_a_tap_refused_over_the_stalled_budget_is_refused_between_whole_messages(make_daemon):
    """A batch's small messages and a large one's prefix went out in one write that used the
    window the check had counted for the large one: the budget then refused its body after its
    prefix — the client read a prefix promising 2 MB, then trailers (r22)."""
    daemon = make_daemon()
    run_id = ended_run_of_large_outputs(daemon)
    body = bytes(api.TapRunRequest(run_id=run_id))
    request = b"\x00" + len(body).to_bytes(4, "big") + body
    headers = [(":method", "POST"), (":scheme", "http"), (":authority", daemon.address),
               (":path", "/fleetforge.runtime.v1.RuntimeService/TapRun"),
               ("content-type", "application/grpc"), ("te", "trailers")]  # fmt: skip
    sock, client = _h2_tap_connection(daemon.address, 1_000)
    try:
        for _ in range(9):  # read nothing: ~18 MB waits, stalled after 5 s (> 16 MB a connection)
            stream_id = client.get_next_available_stream_id()
            client.send_headers(stream_id, headers)
            client.send_data(stream_id, request, end_stream=True)
        sock.sendall(client.data_to_send())
        data: dict = {}
        ended: dict = {}
        _pump_h2(sock, client, 7.0, data, ended)
        late = client.get_next_available_stream_id()  # its window: the first large message's
        client.send_headers(late, headers)
        client.increment_flow_control_window(2_000_241 - 1_000, stream_id=late)
        client.send_data(late, request, end_stream=True)
        sock.sendall(client.data_to_send())
        _pump_h2(sock, client, 5.0, data, ended)
    finally:
        sock.close()
    got, at = bytes(data.get(late, b"")), 0
    while at + 5 <= len(got):  # whole messages only
        at += 5 + int.from_bytes(got[at + 1 : at + 5], "big")
    assert at == len(got), f"a message cut short: {len(got)} bytes, the last one's end at {at}"
    assert ended[late][b"grpc-status"] == b"8"
