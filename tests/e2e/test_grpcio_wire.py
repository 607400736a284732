"""Wire compatibility: the official grpcio client, generated from ``proto/*.proto`` alone, talks to
the daemon (betterproto2 + grpclib)."""

from __future__ import annotations

import json
import re
import time

import grpc
import pytest
from foundry.kernel.edge.grpc.foundry_service import FoundryService
from foundry.kernel.edge.grpc.runtime_service import RuntimeService
from foundry.proto import runtime_api

from tests.e2e.helpers import EVENT_ID
from tests.grpcio_client import StreamReader, raw_call, raw_channel
from tests.helpers import DEADLINE, wait_until

FOUNDRY = "/foundry.Foundry/"
RUNTIME = "/fleetforge.runtime.v1.RuntimeService/"
RUNTIME_RPCS = [
    "SubmitRun", "GetRun", "TapRun", "ReplayRun", "UpdateBreakpoints", "ResumeRun", "PatchStep",
    "CreateBranchRun", "SyncEvalPack", "ListEvalScenarios", "RecordEvalResult", "CheckChangeGate",
    "RecordGateFollowup", "ListChangeGates", "GetAttestations", "ListRuns", "CancelRun",
]  # fmt: skip

# Field numbers the design fixes for clients of the public Foundry daemon.
FIELD_NUMBERS = {
    "EmitRequest": {"event_type": 1, "project": 2, "throttle": 3, "payload_json": 4},
    "EmitResponse": {"event_id": 1, "workflow_id": 2},
    "StatusRequest": {"workflow_id": 1},
    "StatusResponse": {"workflows": 1},
    "WorkflowStatus": {"workflow_id": 1, "workflow_type": 2, "project": 3, "state": 4,
                       "started_at": 5, "completed_at": 6, "task_blocks": 7},
    "TaskBlockStatus": {"name": 1, "state": 2, "started_at": 3, "completed_at": 4,
                        "throttled": 5},
    "WatchRequest": {"project": 1},
    "WatchResponse": {"event_id": 1, "event_type": 2, "project": 3, "payload_json": 4},
    "TraceRequest": {"event_id": 1},
    "TraceResponse": {"found": 1, "events": 2, "block_executions": 3},
    "TraceEvent": {"event_id": 1, "event_type": 2, "project": 3, "occurred_at": 4,
                   "throttle": 5},
    "TraceBlockExecution": {"block_name": 1, "trigger_event_id": 2, "success": 3, "summary": 4,
                            "emitted_event_ids": 5, "duration_ms": 7, "raw_output": 8,
                            "exit_code": 9, "trigger_payload_json": 10,
                            "emitted_payload_jsons": 11, "audit_artifacts": 12},
}  # fmt: skip

NEVER_FOR_A_BUILT_RPC = {
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}

SHELL = """
[[blocks]]
name = "Shout"
type = "shell"
kind = "observer"
sinks = ["shout_requested"]
command = ["sh", "-c", "echo LOUD; exit 4"]
"""


@pytest.fixture(scope="module")
def daemon(shared_daemon):
    return shared_daemon(SHELL)


@pytest.fixture
def stubs(daemon, grpcio_client):
    with grpcio_client.connect(daemon.address) as pair:
        yield pair


# --- the generated code and the server agree on what exists ---------------------------------------


def test_the_proto_keeps_the_documented_field_numbers(grpcio_client):
    pb = grpcio_client.foundry_pb2
    for message, fields in FIELD_NUMBERS.items():
        descriptor = pb.DESCRIPTOR.message_types_by_name[message]
        assert {f: descriptor.fields_by_name[f].number for f in fields} == fields, message
    assert 6 not in {f.number for f in pb.TraceBlockExecution.DESCRIPTOR.fields}  # reserved
    throttle = pb.DESCRIPTOR.enum_types_by_name["Throttle"]
    assert {v.name: v.number for v in throttle.values} == {
        "THROTTLE_FULL": 0, "THROTTLE_AUDIT_ONLY": 1, "THROTTLE_DRY_RUN": 2,
    }  # fmt: skip


def test_the_server_registers_every_rpc_of_both_services(grpcio_client):
    foundry = grpcio_client.foundry_pb2.DESCRIPTOR.services_by_name["Foundry"]
    runtime = grpcio_client.runtime_pb2.DESCRIPTOR.services_by_name["RuntimeService"]
    assert [m.name for m in runtime.methods] == RUNTIME_RPCS
    assert set(FoundryService(None).__mapping__()) == {FOUNDRY + m.name for m in foundry.methods}
    mapping = RuntimeService(None).__mapping__()
    assert len(mapping) == len(RUNTIME_RPCS) == 17
    assert set(mapping) == {RUNTIME + name for name in RUNTIME_RPCS}


def _snake(name):
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


@pytest.mark.parametrize("rpc", RUNTIME_RPCS)
def test_every_runtime_rpc_answers_over_grpcio(daemon, grpcio_client, stubs, rpc):
    """A registered RPC not built yet answers UNIMPLEMENTED (not grpclib's "Method not found");
    a built one answers an empty request with a proper status, never INTERNAL."""
    _, runtime = stubs
    method = _runtime_method(grpcio_client, rpc)
    request = getattr(grpcio_client.runtime_pb2, method.input_type.name)()
    call = getattr(runtime, rpc)
    built = getattr(RuntimeService, _snake(rpc)) is not getattr(
        runtime_api.RuntimeServiceBase, _snake(rpc)
    )
    try:
        if method.server_streaming:
            for _ in call(request, timeout=DEADLINE):
                pass
        else:
            call(request, timeout=DEADLINE)
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details() or ""
    else:
        code, details = grpc.StatusCode.OK, ""
    assert details != "Method not found"
    if not built:
        assert code is grpc.StatusCode.UNIMPLEMENTED
    else:
        assert code not in NEVER_FOR_A_BUILT_RPC
    # The daemon is unharmed.
    foundry, _ = stubs
    pb = grpcio_client.foundry_pb2
    assert foundry.Emit(pb.EmitRequest(event_type="after_" + rpc, project="p")).event_id


def _runtime_method(grpcio_client, rpc):
    service = grpcio_client.runtime_pb2.DESCRIPTOR.services_by_name["RuntimeService"]
    return service.methods_by_name[rpc]


def test_an_unknown_method_is_unimplemented_naming_it(daemon):
    with raw_channel(daemon.address) as channel:
        code, details = raw_call(channel, RUNTIME + "NoSuchRpc", b"")
    assert code is grpc.StatusCode.UNIMPLEMENTED
    assert details == f"unknown method '{RUNTIME}NoSuchRpc'"  # internals.answer_unknown_methods


# --- the Foundry RPCs through grpcio ------------------------------------------------------------


def _finished(foundry, pb, workflow_id):
    def check():
        [workflow] = foundry.Status(pb.StatusRequest(workflow_id=workflow_id)).workflows
        return workflow if workflow.state in ("completed", "failed") else None

    return wait_until(check, what=f"workflow {workflow_id} to finish")


def _traced(foundry, pb, event_id):
    def check():
        reply = foundry.Trace(pb.TraceRequest(event_id=event_id))
        return reply if reply.found else None

    return wait_until(check, what=f"the trace of {event_id}")


def test_emit_status_trace_round_trip_the_audit_only_throttle(grpcio_client, stubs):
    foundry, _ = stubs
    pb = grpcio_client.foundry_pb2
    reply = foundry.Emit(
        pb.EmitRequest(
            event_type="greet_requested",
            project="wire",
            throttle=pb.THROTTLE_AUDIT_ONLY,
            payload_json='{"name": "Grace"}',
        )
    )
    assert pb.THROTTLE_AUDIT_ONLY == 1
    assert re.match(EVENT_ID, reply.event_id)
    assert reply.workflow_id == reply.event_id

    workflow = _finished(foundry, pb, reply.workflow_id)
    assert (workflow.workflow_type, workflow.project, workflow.state) == (
        "greet_requested", "wire", "completed",
    )  # fmt: skip
    assert workflow.started_at
    assert workflow.completed_at
    assert [(b.name, b.state, b.throttled) for b in workflow.task_blocks] == [
        ("Compose Greeting", "completed", False),
        ("Deliver Greeting", "completed", True),
    ]
    assert all(b.started_at and b.completed_at for b in workflow.task_blocks)

    chain = _traced(foundry, pb, reply.event_id)
    assert [e.event_type for e in chain.events] == [
        "greet_requested", "greeting_composed", "greeting_delivered",
    ]  # fmt: skip
    assert [e.throttle for e in chain.events] == [pb.THROTTLE_AUDIT_ONLY] * 3
    assert [e.throttled for e in chain.events] == [False, False, True]
    assert all(e.occurred_at and e.project == "wire" for e in chain.events)


def test_trace_block_execution_fields_arrive_over_grpcio(grpcio_client, stubs, daemon):
    foundry, _ = stubs
    pb = grpcio_client.foundry_pb2
    greet = foundry.Emit(
        pb.EmitRequest(event_type="greet_requested", project="wire", payload_json='{"name":"Al"}')
    )
    shout = foundry.Emit(pb.EmitRequest(event_type="shout_requested", project="wire"))
    assert _finished(foundry, pb, greet.workflow_id).state == "completed"
    assert _finished(foundry, pb, shout.workflow_id).state == "failed"

    chain = _traced(foundry, pb, greet.event_id)
    root, composed, delivered = chain.events
    assert root.throttle == pb.THROTTLE_FULL
    compose, deliver = chain.block_executions
    assert compose.block_name == "Compose Greeting"
    assert compose.success
    assert compose.trigger_event_id == root.event_id
    assert list(compose.emitted_event_ids) == [composed.event_id]
    assert "Hello, Al!" in compose.summary
    assert json.loads(compose.trigger_payload_json) == {"name": "Al"}
    assert json.loads(compose.emitted_payload_jsons[0])["greeting"] == "Hello, Al!"
    assert deliver.block_name == "Deliver Greeting"
    assert deliver.success
    assert deliver.trigger_event_id == composed.event_id
    assert list(deliver.emitted_event_ids) == [delivered.event_id]
    [artifact] = deliver.audit_artifacts
    assert artifact.startswith(str(daemon.home))
    assert artifact.endswith("greeting.txt")
    assert json.loads(deliver.emitted_payload_jsons[0])["delivered_to"] == artifact

    [failed] = _traced(foundry, pb, shout.event_id).block_executions
    assert (failed.block_name, failed.success) == ("Shout", False)
    assert failed.exit_code == 4
    assert failed.raw_output == "LOUD\n"
    assert failed.duration_ms > 0  # spawning a process takes more than a millisecond
    assert "exited with 4" in failed.summary

    assert foundry.Trace(pb.TraceRequest(event_id="evt_" + "f" * 24)).found is False


def test_watch_over_grpcio(grpcio_client, stubs):
    foundry, _ = stubs
    pb = grpcio_client.foundry_pb2
    reader = StreamReader(foundry.Watch(pb.WatchRequest(project="wire-watch")))
    try:
        reader.sync(foundry, pb, "wire-watch")
        reply = foundry.Emit(
            pb.EmitRequest(
                event_type="greet_requested",
                project="wire-watch",
                throttle=pb.THROTTLE_AUDIT_ONLY,
                payload_json='{"name": "Lin"}',
            )
        )
        seen = []
        deadline = time.monotonic() + DEADLINE
        while len(seen) < 3:
            item = reader.get(timeout=max(0.0, deadline - time.monotonic()))
            assert not isinstance(item, grpc.RpcError | None), item
            if item.event_type != "watch_probe":
                seen.append(item)
    finally:
        reader.close()
    assert [e.event_type for e in seen] == [
        "greet_requested", "greeting_composed", "greeting_delivered",
    ]  # fmt: skip
    assert seen[0].event_id == reply.event_id
    assert json.loads(seen[0].payload_json) == {"name": "Lin"}
    assert {e.project for e in seen} == {"wire-watch"}
    assert {e.workflow_id for e in seen} == {reply.workflow_id}
    assert [e.throttle for e in seen] == [pb.THROTTLE_AUDIT_ONLY] * 3
    assert [e.throttled for e in seen] == [False, False, True]


def test_a_call_with_too_much_metadata_is_refused_alone(grpcio_client, stubs):
    """h2 refused a header list past 64 KiB by closing the connection: the call got UNAVAILABLE
    "Socket closed", and so did a Watch open beside it on the same channel."""
    foundry, _ = stubs
    pb = grpcio_client.foundry_pb2
    reader = StreamReader(foundry.Watch(pb.WatchRequest(project="wire-metadata")))
    try:
        reader.sync(foundry, pb, "wire-metadata")
        for metadata in (
            [("x-big", "a" * 70_000)],
            [(f"x-{i}", "v" * 20) for i in range(2_000)],
            [("x-big-bin", bytes(60_000))],
        ):  # 80,000 bytes as sent (base64)
            with pytest.raises(grpc.RpcError) as refused:
                foundry.Status(pb.StatusRequest(limit=1), metadata=metadata, timeout=DEADLINE)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "request metadata:" in refused.value.details()
            assert "65,536-byte limit" in refused.value.details()
        reply = foundry.Emit(pb.EmitRequest(event_type="after_metadata", project="wire-metadata"))
        deadline = time.monotonic() + DEADLINE
        while True:  # the Watch on the same connection lives on
            item = reader.get(timeout=max(0.0, deadline - time.monotonic()))
            assert not isinstance(item, grpc.RpcError | None), item
            if item.event_id == reply.event_id:
                break
    finally:
        reader.close()
