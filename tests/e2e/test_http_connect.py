"""The HTTP listener end to end, over Connect: every RPC of the three services answers over
Connect JSON exactly as over gRPC (the same handlers and error table), real calls in JSON
(``httpx``) and in binary (the ``connectrpc`` client), unary and server-streaming, HTTP/1.1
keep-alive and h2c."""

from __future__ import annotations

import http.client
import json
import threading
import uuid

import httpx
import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from foundry.proto import foundry_api, runtime_api
from grpclib.const import Cardinality

from tests.e2e.http_helpers import (
    connect_client,
    connect_stream_json,
    envelope,
    envelopes,
    grpc_outcome,
    method_info,
    rpc_table,
    url,
)
from tests.helpers import wait_until

EMIT = "/foundry.Foundry/Emit"
STATUS = "/foundry.Foundry/Status"
WATCH = "/foundry.Foundry/Watch"
TRACE = "/foundry.Foundry/Trace"
SUBMIT = "/fleetforge.runtime.v1.RuntimeService/SubmitRun"
GET_RUN = "/fleetforge.runtime.v1.RuntimeService/GetRun"
TAP = "/fleetforge.runtime.v1.RuntimeService/TapRun"
LIST_RUNS = "/fleetforge.runtime.v1.RuntimeService/ListRuns"
QUERY = "/foundry.analytics.v1.Analytics/Query"
DAG = json.dumps({"steps": [
    {"id": "a", "type": "transform", "inputs": {"value": 1}},
    {"id": "b", "type": "transform", "depends_on": ["a"], "inputs": {"value": 2}},
]})  # fmt: skip


@pytest.fixture(scope="module")
def daemon(shared_daemon):
    return shared_daemon()


def post_json(daemon, path, body, **options):
    return httpx.post(url(daemon, path), json=body, timeout=30, **options)


def http_outcome(daemon, path, request):
    """("ok", reply JSON or list of replies) or (the Connect code, message), over Connect JSON."""
    if rpc_table()[path].cardinality is Cardinality.UNARY_STREAM:
        messages, end = connect_stream_json(daemon, path, request)
        if "error" in end:
            return end["error"]["code"], end["error"].get("message", "")
        return "ok", messages
    response = post_json(daemon, path, request)
    if response.status_code == 200:
        return "ok", response.json()
    assert response.headers["content-type"] == "application/json", response.text
    return response.json()["code"], response.json().get("message", "")


@pytest.mark.parametrize("path", [p for p in rpc_table() if p != WATCH])
def test_every_rpc_answers_an_empty_request_over_connect_json_as_over_grpc(daemon, path):
    """The same request (empty) to both ports: the same outcome, the same error code and text —
    one code path. (Watch never ends by itself: tested below.)"""
    request_type = rpc_table()[path].request_type
    over_grpc = grpc_outcome(daemon, path, request_type())
    over_http = http_outcome(daemon, path, {})
    assert over_http[0] == over_grpc[0], (over_http, over_grpc)
    assert over_http[0] not in ("unknown", "internal")
    if over_http[0] != "ok":
        assert over_http[1] == over_grpc[1]


def test_emit_status_and_trace_in_json(daemon):
    project = f"http-{uuid.uuid4().hex[:8]}"
    reply = post_json(daemon, EMIT, {"eventType": "greet_requested", "project": project,
                                     "payloadJson": json.dumps({"name": "Web"})})  # fmt: skip
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "application/json"
    assert "chunked" not in reply.headers.get("transfer-encoding", "")  # one piece, with a length
    assert int(reply.headers["content-length"]) > 0
    emitted = reply.json()
    assert emitted["eventId"].startswith("evt_")

    def completed():
        workflows = post_json(daemon, STATUS, {"workflowId": emitted["workflowId"]}).json()
        states = [w["state"] for w in workflows.get("workflows", [])]
        return states == ["completed"]

    wait_until(completed, what="the workflow completes", interval=0.1)
    trace = post_json(daemon, TRACE, {"eventId": emitted["eventId"]}).json()
    assert trace["found"] is True
    assert trace["events"][0]["eventId"] == emitted["eventId"]
    assert trace["events"][0]["project"] == project


def test_submit_get_and_tap_a_run_in_json(daemon):
    run_id = post_json(daemon, SUBMIT, {"spec": {"dagJson": DAG}}).json()["runId"]
    messages, end = connect_stream_json(daemon, TAP, {"runId": run_id})
    assert end == {}
    kinds = [m["kind"] for m in messages]
    assert kinds[-1] == "run_succeeded", kinds
    assert all(m["runId"] == run_id for m in messages)
    assert [m["payload"]["seq"] for m in messages] == list(range(1, len(messages) + 1))
    run = post_json(daemon, GET_RUN, {"runId": run_id}).json()["run"]
    assert run["status"] == "RUN_STATUS_SUCCEEDED"
    assert [s["stepId"] for s in run["steps"]] == ["a", "b"]


def test_a_large_runs_reply_made_in_chunks_reads_the_same_in_json(daemon):
    """GetRun of more than 128 steps is serialized a chunk at a time (``encoded_run``): over
    Connect JSON every step is there, in order, with its output."""
    steps = [{"id": f"s{i:03d}", "type": "transform", "inputs": {"value": {"n": i}}}
             for i in range(300)]  # fmt: skip
    dag = json.dumps({"steps": steps})
    run_id = post_json(daemon, SUBMIT, {"spec": {"dagJson": dag}}).json()["runId"]
    messages, _ = connect_stream_json(daemon, TAP, {"runId": run_id})
    assert messages[-1]["kind"] == "run_succeeded"
    run = post_json(daemon, GET_RUN, {"runId": run_id}).json()["run"]
    assert [s["stepId"] for s in run["steps"]] == [s["id"] for s in steps]
    assert [s["output"] for s in run["steps"]] == [{"n": i} for i in range(300)]
    assert len(run["attestationIds"]) == 301  # a step attestation each, and the run's


def test_a_deadline_ending_as_the_reply_goes_out_is_the_reply_or_a_504_never_half(daemon):
    """An ended run's GetRun is ready at once (its encoding kept): a deadline landing between
    the response's head and its body sent a 200 with a length and no body, and a traceback in
    the log (a check of the GetRun route)."""
    steps = [{"id": f"s{i:03d}", "type": "transform", "inputs": {"value": {"n": i}}}
             for i in range(300)]  # fmt: skip
    run_id = post_json(daemon, SUBMIT, {"spec": {"dagJson": json.dumps({"steps": steps})}})
    run_id = run_id.json()["runId"]
    messages, _ = connect_stream_json(daemon, TAP, {"runId": run_id})
    assert messages[-1]["kind"] == "run_succeeded"
    answers = set()
    for content_type, body in (("application/json", json.dumps({"runId": run_id}).encode()),
                               ("application/proto", bytes(runtime_api.GetRunRequest(
                                   run_id=run_id)))):  # fmt: skip
        for _ in range(10):
            with httpx.Client(timeout=30) as client:  # a connection each: HTTP/1.1
                reply = client.post(url(daemon, GET_RUN), content=body, headers={
                    "content-type": content_type, "connect-timeout-ms": "3"})  # fmt: skip
            answers.add(reply.status_code)
            if reply.status_code == 200 and content_type == "application/json":
                assert reply.json()["run"]["runId"] == run_id
            elif reply.status_code == 200:
                assert runtime_api.GetRunResponse().parse(reply.content).run.run_id == run_id
            else:
                assert reply.json()["code"] == "deadline_exceeded"
    assert answers <= {200, 504}
    assert "Error in ASGI" not in daemon.stderr()


def test_whole_numbers_and_int64_strings_are_proto3_json(daemon):
    """JSON writes a whole double as 5 and may send a 64-bit integer as "42": both are taken,
    as proto3 JSON says; a string that is not a number is still refused, naming the field."""
    body = {"spec": {"dagJson": DAG, "inputs": {"n": 5, "nested": [1, {"m": 2}]}}}
    submitted = post_json(daemon, SUBMIT, body)
    assert submitted.status_code == 200, submitted.text
    run_id = submitted.json()["runId"]
    assert post_json(daemon, GET_RUN, {"runId": run_id}).status_code == 200
    listed = post_json(daemon, LIST_RUNS, {"pageSize": "3"})
    assert listed.status_code == 200, listed.text
    refused = post_json(daemon, LIST_RUNS, {"pageSize": "3x"})
    assert refused.status_code == 400
    assert "page_size: '3x' is not an integer" in refused.json()["message"]


def test_analytics_query_in_json_and_binary(daemon):
    reply = post_json(daemon, QUERY, {"sql": "SELECT 41 + 1 AS answer"})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["columns"][0]["name"] == "answer"
    assert [json.loads(r) for r in body["rowsJson"]] in ([[42]], [{"answer": 42}])
    from foundry.proto import analytics_api

    with connect_client(daemon) as client:
        binary = client.execute_unary(
            request=analytics_api.QueryRequest(sql="SELECT 41 + 1 AS answer"),
            method=method_info(QUERY),
        )
    assert binary.rows_json == body["rowsJson"]


def test_unary_rpcs_in_binary_with_the_connectrpc_client(daemon):
    project = f"bin-{uuid.uuid4().hex[:8]}"
    with connect_client(daemon) as client:
        emitted = client.execute_unary(
            request=foundry_api.EmitRequest(event_type="greet_requested", project=project),
            method=method_info(EMIT),
        )
        assert emitted.event_id.startswith("evt_")
        status = client.execute_unary(
            request=foundry_api.StatusRequest(workflow_id=emitted.workflow_id),
            method=method_info(STATUS),
        )
        assert [w.workflow_id for w in status.workflows] == [emitted.workflow_id]
        with pytest.raises(ConnectError) as refused:
            client.execute_unary(request=runtime_api.GetRunRequest(), method=method_info(GET_RUN))
    assert refused.value.code is Code.INVALID_ARGUMENT
    assert "run_id" in refused.value.message


def test_tap_run_streams_in_binary_with_the_connectrpc_client(daemon):
    with connect_client(daemon) as client:
        run_id = client.execute_unary(
            request=runtime_api.SubmitRunRequest(spec=runtime_api.RunSpec(dag_json=DAG)),
            method=method_info(SUBMIT),
        ).run_id
        events = list(client.execute_server_stream(
            request=runtime_api.TapRunRequest(run_id=run_id), method=method_info(TAP)
        ))  # fmt: skip
    assert events[-1].kind == "run_succeeded"
    assert {e.step_id for e in events} >= {"a", "b"}


def test_watch_streams_live_events_in_binary(daemon):
    """A Watch held open by the connectrpc client sees an event emitted after it started."""
    project = f"watch-{uuid.uuid4().hex[:8]}"
    seen: list[foundry_api.WatchResponse] = []
    done = threading.Event()

    def watch():
        with connect_client(daemon) as client:
            stream = client.execute_server_stream(
                request=foundry_api.WatchRequest(project=project), method=method_info(WATCH)
            )
            for message in stream:
                seen.append(message)
                break
        done.set()

    reader = threading.Thread(target=watch, daemon=True)
    reader.start()

    def delivered():
        post_json(daemon, EMIT, {"eventType": "nobody_listens", "project": project})
        return done.wait(0.5)

    wait_until(delivered, what="the watcher receives an event")
    reader.join(10)
    assert seen[0].project == project
    assert seen[0].event_type == "nobody_listens"


def test_watch_streams_in_json(daemon):
    """A Connect JSON Watch (raw ``httpx``): its headers come with its first message, so events
    are emitted from another thread until one arrives."""
    project = f"jwatch-{uuid.uuid4().hex[:8]}"
    received = threading.Event()

    def emit_until_received():
        while not received.wait(0.2):
            post_json(daemon, EMIT, {"eventType": "nobody_listens", "project": project})

    emitter = threading.Thread(target=emit_until_received, daemon=True)
    emitter.start()
    try:
        with httpx.Client(timeout=30) as client, client.stream(
            "POST", url(daemon, WATCH), content=envelope(json.dumps({"project": project}).encode()),
            headers={"content-type": "application/connect+json"},
        ) as response:  # fmt: skip
            assert response.status_code == 200
            assert response.headers["content-type"] == "application/connect+json"
            chunk = b""
            for data in response.iter_raw():
                chunk += data
                if len(chunk) >= 5 and len(chunk) >= 5 + int.from_bytes(chunk[1:5], "big"):
                    break
    finally:
        received.set()
        emitter.join(10)
    flags, message = envelopes(chunk)[0]
    assert flags == 0
    assert json.loads(message)["project"] == project


def test_http11_keep_alive_serves_many_calls_on_one_connection(daemon):
    host, _, port = daemon.http_address.rpartition(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        for _ in range(5):
            connection.request("POST", STATUS, body=b"{}",
                               headers={"content-type": "application/json"})  # fmt: skip
            response = connection.getresponse()
            assert response.status == 200
            assert "workflows" in json.loads(response.read()) or True
            assert response.getheader("connection", "").lower() != "close"
        sock = connection.sock
        assert sock is not None  # the same socket served all five
    finally:
        connection.close()


def test_h2c_with_prior_knowledge(daemon):
    with httpx.Client(http1=False, http2=True, timeout=30) as client:
        replies = [client.post(url(daemon, STATUS), json={}) for _ in range(3)]
        stream_reply = client.post(
            url(daemon, TAP),
            content=b"\x00\x00\x00\x00\x02{}",
            headers={"content-type": "application/connect+json"},
        )
    assert {r.http_version for r in replies} == {"HTTP/2"}
    assert all(r.status_code == 200 for r in replies)
    assert stream_reply.http_version == "HTTP/2"
    assert b"invalid_argument" in stream_reply.content
