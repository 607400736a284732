"""The ``foundry.Foundry`` RPCs against a real daemon over a real socket (grpclib client)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from foundry.proto import foundry_api as api
from grpclib.const import Status

from tests.e2e.helpers import (
    EVENT_ID,
    Watcher,
    block,
    emit,
    finished,
    kill_pid_file,
    status,
    trace,
    traced,
)
from tests.helpers import grpc_error, wait_until

GREETING_BLOCKS = ["Compose Greeting", "Deliver Greeting"]

# Shell blocks declared in config. The payload reaches a command as FOUNDRY_INPUT_<KEY> env vars.
SHELL_BLOCKS = """
[[blocks]]
name = "Slow Echo"
type = "shell"
kind = "observer"
sinks = ["echo_requested"]
command = ["sh", "-c", "sleep 0.1; echo out; echo err >&2"]
emits = "echoed"

[[blocks]]
name = "Always Fails"
type = "shell"
kind = "observer"
sinks = ["fail_requested"]
command = ["sh", "-c", "echo about to fail; exit 3"]

[[blocks]]
name = "Fails Once"
type = "shell"
kind = "observer"
sinks = ["flaky_requested"]
command = ["sh", "-c", 'if [ -e "$FOUNDRY_INPUT_FLAG" ]; then echo second; else touch "$FOUNDRY_INPUT_FLAG"; echo first; exit 1; fi']
retries = 1
backoff = 0.2

[[blocks]]
name = "Touch Marker"
type = "shell"
kind = "mutator"
sinks = ["touch_requested"]
command = ["sh", "-c", 'touch "$FOUNDRY_INPUT_MARKER"; echo touched']
emits = "marker_touched"
simulate = true

[[blocks]]
name = "Wait For Gate"
type = "shell"
kind = "observer"
sinks = ["gated_requested"]
command = ["sh", "-c", 'echo $$ > "$FOUNDRY_INPUT_PIDFILE"; while [ ! -e "$FOUNDRY_INPUT_GATE" ]; do sleep 0.02; done; echo released']

# fan_requested reaches Fan A, then Fan B (registration order); Fan A's event reaches After A.
[[blocks]]
name = "Fan A"
type = "relay"
sinks = ["fan_requested"]
emits = "fanned_a"

[[blocks]]
name = "Fan B"
type = "relay"
sinks = ["fan_requested"]
emits = "fanned_b"

[[blocks]]
name = "After A"
type = "relay"
sinks = ["fanned_a"]
emits = "after_a"
"""  # noqa: E501


@pytest.fixture(scope="module")
def daemon(shared_daemon):
    """One daemon (with the shell blocks above) serves every test here: each keys by its ids."""
    return shared_daemon(SHELL_BLOCKS)


def greet(daemon, name="Ada", **options):
    return emit(daemon, "greet_requested", payload={"name": name}, **options)


# --- Emit ---------------------------------------------------------------------------------------


def test_emit_answers_with_event_id_and_workflow_id(daemon):
    reply = greet(daemon)
    assert re.match(EVENT_ID, reply.event_id)
    assert reply.workflow_id == reply.event_id


def test_emit_of_a_type_no_block_sinks_has_no_workflow(daemon):
    reply = emit(daemon, "nobody_listens", payload={"x": 1})
    assert re.match(EVENT_ID, reply.event_id)
    assert reply.workflow_id == ""
    # Still a fact: its one-event chain is traced, but it is not a workflow.
    assert [e.event_id for e in traced(daemon, reply.event_id).events] == [reply.event_id]
    error = grpc_error(daemon, lambda f, _: f.status(api.StatusRequest(workflow_id=reply.event_id)))
    assert error.status is Status.NOT_FOUND


def test_event_id_is_the_documented_hash_and_differs_for_identical_emits(daemon):
    first = emit(daemon, "nobody_listens", project="proj", payload={"b": 2, "a": [1, "x"]})
    second = emit(daemon, "nobody_listens", project="proj", payload={"b": 2, "a": [1, "x"]})
    assert first.event_id != second.event_id
    [event] = traced(daemon, first.event_id).events
    material = "nobody_listens" + "proj" + event.occurred_at + '{"a":[1,"x"],"b":2}'
    assert event.occurred_at.endswith("+00:00")
    assert first.event_id == "evt_" + hashlib.sha256(material.encode()).digest()[:12].hex()


def test_emit_returns_before_the_workflow_runs(daemon, tmp_path):
    gate, pid_file = tmp_path / "gate", tmp_path / "pid"
    try:
        reply = emit(
            daemon, "gated_requested", payload={"gate": str(gate), "pidfile": str(pid_file)}
        )
        assert reply.workflow_id == reply.event_id

        def running():
            [workflow] = status(daemon, reply.workflow_id)
            return workflow if workflow.task_blocks[0].state == "running" else None

        workflow = wait_until(running, what="the gated block to run")
        assert workflow.state == "running"
        assert workflow.completed_at == ""
        assert workflow.task_blocks[0].started_at
        assert not workflow.task_blocks[0].completed_at
        assert not trace(daemon, reply.event_id).found  # only completed chains are traced
        # Status without an id lists it among the workflows in flight.
        assert reply.workflow_id in {w.workflow_id for w in status(daemon)}
        # Separate chains run concurrently: another one completes while this one waits.
        other = greet(daemon)
        assert finished(daemon, other.workflow_id).state == "completed"
        assert status(daemon, reply.workflow_id)[0].state == "running"
        gate.touch()
        done = finished(daemon, reply.workflow_id)
        assert done.state == "completed"
        assert block(traced(daemon, reply.event_id), "Wait For Gate").raw_output == "released\n"
    finally:
        gate.touch()
        kill_pid_file(pid_file)


def test_a_chain_is_processed_depth_first_in_registration_order(daemon):
    reply = emit(daemon, "fan_requested", payload={"k": 1})
    workflow = finished(daemon, reply.workflow_id)
    assert {b.name for b in workflow.task_blocks} == {"Fan A", "Fan B", "After A"}
    chain = traced(daemon, reply.event_id)
    assert [x.block_name for x in chain.block_executions] == ["Fan A", "After A", "Fan B"]
    assert [e.event_type for e in chain.events] == [
        "fan_requested", "fanned_a", "after_a", "fanned_b",
    ]  # fmt: skip


# --- Status -------------------------------------------------------------------------------------


def test_status_shows_per_block_states_and_completed_at(daemon):
    reply = greet(daemon)
    workflow = finished(daemon, reply.workflow_id)
    assert workflow.workflow_id == reply.workflow_id
    assert workflow.workflow_type == "greet_requested"
    assert workflow.project == "p"
    assert workflow.state == "completed"
    assert workflow.error == ""
    assert workflow.started_at
    assert workflow.completed_at
    assert _instant(workflow.started_at) <= _instant(workflow.completed_at)
    assert [b.name for b in workflow.task_blocks] == GREETING_BLOCKS
    for task in workflow.task_blocks:
        assert task.state == "completed"
        assert not task.throttled
        assert _instant(workflow.started_at) <= _instant(task.started_at)
        assert _instant(task.started_at) <= _instant(task.completed_at)
        assert _instant(task.completed_at) <= _instant(workflow.completed_at)
    # Status without an id lists it among the recently finished ones.
    assert reply.workflow_id in {w.workflow_id for w in status(daemon)}


def test_status_of_an_unknown_workflow_is_not_found(daemon):
    unknown = "evt_" + "0" * 24
    error = grpc_error(daemon, lambda f, _: f.status(api.StatusRequest(workflow_id=unknown)))
    assert error.status is Status.NOT_FOUND
    assert "workflow_id" in error.message
    assert unknown in error.message


# --- Trace --------------------------------------------------------------------------------------


def test_trace_of_the_greeting_chain_fills_every_field(daemon):
    reply = greet(daemon, throttle=api.Throttle.FULL)
    finished(daemon, reply.workflow_id)
    chain = traced(daemon, reply.event_id)

    assert [e.event_type for e in chain.events] == [
        "greet_requested", "greeting_composed", "greeting_delivered",
    ]  # fmt: skip
    root, composed, delivered = chain.events
    assert root.event_id == reply.event_id
    for event in chain.events:
        assert re.match(EVENT_ID, event.event_id)
        assert event.project == "p"
        assert event.throttle is api.Throttle.FULL
        assert event.occurred_at.endswith("+00:00")
        assert event.recorded_at
        assert not event.throttled
    assert json.loads(root.payload_json) == {"name": "Ada"}

    compose, deliver = chain.block_executions
    assert compose.block_name == "Compose Greeting"
    assert compose.trigger_event_id == root.event_id
    assert compose.success
    assert compose.state == "completed"
    assert compose.attempts == 1
    assert "Hello, Ada!" in compose.summary
    assert list(compose.emitted_event_ids) == [composed.event_id]
    assert json.loads(compose.trigger_payload_json) == {"name": "Ada"}
    assert [json.loads(p) for p in compose.emitted_payload_jsons] == [
        {"name": "Ada", "greeting": "Hello, Ada!"}
    ]

    assert deliver.block_name == "Deliver Greeting"
    assert deliver.trigger_event_id == composed.event_id
    assert deliver.success
    assert deliver.state == "completed"
    assert not deliver.throttled
    assert list(deliver.emitted_event_ids) == [delivered.event_id]
    assert json.loads(deliver.trigger_payload_json) == json.loads(composed.payload_json)
    assert [json.loads(p) for p in deliver.emitted_payload_jsons] == [
        json.loads(delivered.payload_json)
    ]
    [artifact] = deliver.audit_artifacts
    assert Path(artifact).name == "greeting.txt"
    # the execution's folder: artifacts/WORKFLOW/TRIGGER_EVENT.BLOCK-SLUG
    execution_folder = f"{deliver.trigger_event_id}.deliver-greeting"
    assert Path(artifact).parent == daemon.home / "artifacts" / reply.workflow_id / execution_folder
    assert Path(artifact).read_text() == "Hello, Ada!\n"
    assert json.loads(delivered.payload_json)["delivered_to"] == artifact


def test_trace_of_a_shell_block_has_raw_output_exit_code_and_duration(daemon):
    reply = emit(daemon, "echo_requested", payload={"say": "hi"})
    assert finished(daemon, reply.workflow_id).state == "completed"
    echo = block(traced(daemon, reply.event_id), "Slow Echo")
    assert echo.success
    assert echo.exit_code == 0
    # stdout and stderr combined, each piece as it was read (written together: either order)
    assert sorted(echo.raw_output.splitlines()) == ["err", "out"]
    assert echo.duration_ms >= 100  # the command sleeps 0.1 s
    assert json.loads(echo.trigger_payload_json) == {"say": "hi"}
    assert [json.loads(p) for p in echo.emitted_payload_jsons] == [{"output": "out"}]  # stdout
    assert len(echo.emitted_event_ids) == 1


def test_trace_of_a_failing_shell_block_has_its_exit_code(daemon):
    reply = emit(daemon, "fail_requested")
    workflow = finished(daemon, reply.workflow_id)
    assert workflow.state == "failed"
    assert "Always Fails" in workflow.error
    assert [(b.name, b.state) for b in workflow.task_blocks] == [("Always Fails", "failed")]
    failed = block(traced(daemon, reply.event_id), "Always Fails")
    assert not failed.success
    assert failed.state == "failed"
    assert failed.exit_code == 3
    assert failed.raw_output == "about to fail\n"
    assert "exited with 3" in failed.summary
    assert list(failed.emitted_event_ids) == []


def test_trace_duration_includes_retries(daemon, tmp_path):
    reply = emit(daemon, "flaky_requested", payload={"flag": str(tmp_path / "flag")})
    assert finished(daemon, reply.workflow_id).state == "completed"
    flaky = block(traced(daemon, reply.event_id), "Fails Once")
    assert flaky.success
    assert flaky.attempts == 2
    assert flaky.raw_output == "second\n"
    assert flaky.exit_code == 0
    assert flaky.duration_ms >= 200  # the backoff before the second attempt


def test_trace_of_an_unknown_event_is_not_found(daemon):
    assert trace(daemon, "evt_" + "0" * 24).found is False
    assert trace(daemon, "not-an-event-id").found is False
    assert trace(daemon, "../../etc/passwd").found is False


def test_completed_trace_is_written_to_the_dated_trace_folder(daemon):
    reply = greet(daemon)
    finished(daemon, reply.workflow_id)
    chain = traced(daemon, reply.event_id)
    day = _instant(chain.events[0].occurred_at).astimezone(UTC).strftime("%Y-%m-%d")
    path = daemon.home / "traces" / day / f"{reply.event_id}.json"
    document = json.loads(wait_until(path.is_file, what=str(path)) and path.read_text())
    assert {"events", "block_executions", "total_duration_ms"} <= set(document)
    assert [e["id"] for e in document["events"]] == [e.event_id for e in chain.events]
    for event in document["events"]:
        assert {"id", "event_type", "project", "occurred_at", "recorded_at", "throttle",
                "trace_id", "span_id", "payload"} <= set(event)  # fmt: skip
        assert event["trace_id"] == chain.events[0].trace_id  # W3C: one trace per chain
        assert event["throttle"] == "full"
    assert [x["block_name"] for x in document["block_executions"]] == GREETING_BLOCKS
    for execution in document["block_executions"]:
        assert {"block_name", "trigger_event_id", "success", "summary", "emitted_event_ids",
                "duration_ms", "raw_output", "exit_code", "trigger_payload", "emitted_payloads",
                "audit_artifacts"} <= set(execution)  # fmt: skip
    assert isinstance(document["total_duration_ms"], int)
    assert document["total_duration_ms"] >= 0


# --- throttles over the wire --------------------------------------------------------------------


def test_throttles_decide_whether_a_mutator_touches_the_world(daemon, tmp_path):
    markers = {t: tmp_path / f"marker-{t.name}" for t in api.Throttle}
    replies = {
        t: emit(daemon, "touch_requested", payload={"marker": str(m)}, throttle=t)
        for t, m in markers.items()
    }
    workflows = {t: finished(daemon, r.workflow_id) for t, r in replies.items()}
    chains = {t: traced(daemon, r.event_id) for t, r in replies.items()}

    # FULL: the mutator ran, and its event was delivered.
    assert markers[api.Throttle.FULL].exists()
    [task] = workflows[api.Throttle.FULL].task_blocks
    assert (task.state, task.throttled) == ("completed", False)
    full = block(chains[api.Throttle.FULL], "Touch Marker")
    assert full.raw_output == "touched\n"
    assert len(full.emitted_event_ids) == 1

    # AUDIT_ONLY: never asked to act; only its (default, empty) audit step ran.
    assert not markers[api.Throttle.AUDIT_ONLY].exists()
    [task] = workflows[api.Throttle.AUDIT_ONLY].task_blocks
    assert (task.state, task.throttled) == ("completed", True)
    audit = block(chains[api.Throttle.AUDIT_ONLY], "Touch Marker")
    assert audit.throttled
    assert audit.raw_output == ""
    assert list(audit.emitted_event_ids) == []
    assert audit.summary.startswith("audited under AUDIT_ONLY")  # its audit said nothing itself

    # DRY_RUN: skipped; the simulated event it offers is delivered.
    assert not markers[api.Throttle.DRY_RUN].exists()
    [task] = workflows[api.Throttle.DRY_RUN].task_blocks
    assert (task.state, task.throttled) == ("skipped", True)
    dry = block(chains[api.Throttle.DRY_RUN], "Touch Marker")
    assert dry.state == "skipped"
    assert dry.raw_output == ""
    assert dry.summary.startswith("skipped under DRY_RUN")
    [simulated] = [json.loads(p) for p in dry.emitted_payload_jsons]
    assert simulated["simulated"] is True
    assert all(e.throttle is api.Throttle.DRY_RUN for e in chains[api.Throttle.DRY_RUN].events)


def test_audit_only_records_what_a_mutator_would_emit_without_delivering_it(daemon):
    reply = greet(daemon, throttle=api.Throttle.AUDIT_ONLY)
    workflow = finished(daemon, reply.workflow_id)
    assert [(b.name, b.state, b.throttled) for b in workflow.task_blocks] == [
        ("Compose Greeting", "completed", False),
        ("Deliver Greeting", "completed", True),
    ]
    chain = traced(daemon, reply.event_id)
    assert all(e.throttle is api.Throttle.AUDIT_ONLY for e in chain.events)
    *_, delivered = chain.events
    assert delivered.event_type == "greeting_delivered"
    assert delivered.throttled
    assert json.loads(delivered.payload_json)["delivered_to"] is None
    deliver = block(chain, "Deliver Greeting")
    assert deliver.throttled
    assert list(deliver.audit_artifacts) == []
    assert not (daemon.home / "artifacts" / reply.workflow_id).exists()


# --- Watch --------------------------------------------------------------------------------------


def test_watch_streams_roots_and_emitted_events_filtered_by_project(daemon):
    async def scenario(foundry, _):
        async with Watcher(foundry, "alpha") as alpha, Watcher(foundry) as everyone:
            await alpha.sync()
            await everyone.sync()
            # beta's chain is committed in full before alpha's starts, so a leak would show.
            beta = await foundry.emit(
                api.EmitRequest(event_type="greet_requested", project="beta", payload_json="{}")
            )
            seen_all = await everyone.collect(_chain_of(beta.event_id, 3))
            root = await foundry.emit(
                api.EmitRequest(
                    event_type="greet_requested",
                    project="alpha",
                    throttle=api.Throttle.AUDIT_ONLY,
                    payload_json='{"name": "Bo"}',
                )
            )
            seen_alpha = await alpha.collect(_chain_of(root.event_id, 3))
            seen_all += await everyone.collect(_chain_of(root.event_id, 3))
            lone = await foundry.emit(  # no block sinks it: no workflow
                api.EmitRequest(event_type="nobody_sinks", project="alpha", payload_json="{}")
            )
            [seen_lone] = await alpha.collect(
                lambda seen: any(e.event_id == lone.event_id for e in seen)
            )
            return beta, root, seen_alpha, seen_all, lone, seen_lone

    beta, root, seen_alpha, seen_all, lone, seen_lone = daemon.call(scenario)
    # An event no block sinks is in no workflow on Watch, as Emit answered (Status has none).
    assert (lone.workflow_id, seen_lone.workflow_id) == ("", "")

    assert {e.project for e in seen_alpha} == {"alpha"}
    assert [e.event_type for e in seen_alpha] == [
        "greet_requested", "greeting_composed", "greeting_delivered",
    ]  # fmt: skip
    assert seen_alpha[0].event_id == root.event_id
    assert json.loads(seen_alpha[0].payload_json) == {"name": "Bo"}
    assert {e.workflow_id for e in seen_alpha} == {root.workflow_id}
    assert {e.throttle for e in seen_alpha} == {api.Throttle.AUDIT_ONLY}
    # The AUDIT_ONLY mutator's would-be event is on Watch, marked as not delivered.
    assert [e.throttled for e in seen_alpha] == [False, False, True]
    # The unfiltered watcher saw both projects' chains, in order.
    seen_all = [e for e in seen_all if e.project in ("alpha", "beta")]
    assert [e.project for e in seen_all] == ["beta"] * 3 + ["alpha"] * 3
    assert [e.event_id for e in seen_all[3:]] == [e.event_id for e in seen_alpha]
    assert seen_all[0].event_id == beta.event_id


def _chain_of(root_id, count):
    """``collect`` stop condition: ``count`` events of the chain rooted at ``root_id`` seen."""
    return lambda seen: sum(e.workflow_id == root_id for e in seen) >= count


def test_watch_sees_events_of_concurrent_chains_live(daemon):
    async def scenario(foundry, _):
        async with Watcher(foundry, "p") as watcher:
            await watcher.sync()
            replies = await asyncio.gather(
                *(
                    foundry.emit(
                        api.EmitRequest(
                            event_type="greet_requested", project="p", payload_json=f'{{"n": {i}}}'
                        )
                    )
                    for i in range(5)
                )
            )
            roots = {r.event_id for r in replies}
            seen = await watcher.collect(
                lambda s: all(sum(e.workflow_id == r for e in s) == 3 for r in roots)
            )
            return roots, seen

    roots, seen = daemon.call(scenario)
    assert len(seen) == 15
    for root in roots:
        types = [e.event_type for e in seen if e.workflow_id == root]
        assert types == ["greet_requested", "greeting_composed", "greeting_delivered"]


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text)
