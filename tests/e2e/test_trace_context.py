"""W3C trace context end to end, on a real daemon: an Emit's trace id carried by the whole chain,
bad ids refused, ``TRACEPARENT`` for the CLI and for a shell block's child, a run as a trace with
a span per step attempt (GetRun, TapRun), and the ``traceparent`` header of the ``http`` and
OpenAI-compatible ``llm`` steps (a local HTTP server records what arrives)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from foundry.proto import foundry_api as api
from foundry.proto import runtime_api as rt
from grpclib.const import Status

from tests.e2e.helpers import emit, finished, traced
from tests.e2e.http_helpers import envelope, grpc_web_call, url
from tests.helpers import grpc_error
from tests.runs.helpers import dag, run_and_wait, steps

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
CALLER = "b7ad6b7169203331"
TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-01")
HEX16 = re.compile(r"[0-9a-f]{16}")


class Recorder(BaseHTTPRequestHandler):
    """Answers every request with JSON (an OpenAI chat completion under ``/chat/completions``)
    and records its path and headers."""

    seen: list[tuple[str, dict[str, str]]] = []

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
        document: dict[str, Any] = {"ok": True}
        if self.path.endswith("/chat/completions"):
            document = {
                "choices": [{"message": {"role": "assistant", "content": "hi"},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1},
            }  # fmt: skip
        body = json.dumps(document).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer


@pytest.fixture(scope="module")
def recorder() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def config(url: str) -> str:
    return f"""
[http]
allow = ["127.0.0.1"]

[llm]
base_url = "{url}/v1"

[[blocks]]
name = "Show Trace"
type = "shell"
kind = "observer"
sinks = ["show_requested"]
command = ["sh", "-c", "printf '{{\\"traceparent\\":\\"%s\\"}}' \\"$TRACEPARENT\\""]
"""


@pytest.fixture(scope="module")
def daemon(shared_daemon, recorder):
    return shared_daemon(config(recorder))


# --- Emit ---------------------------------------------------------------------------------------


def test_an_emitted_trace_id_is_carried_by_the_whole_chain(daemon):
    request = api.EmitRequest(
        event_type="greet_requested", project="tc", payload_json='{"name": "Ada"}',
        trace_id=TRACE, span_id=SPAN, parent_span_id=CALLER,
    )  # fmt: skip
    reply = daemon.call(lambda f, _: f.emit(request))
    workflow = finished(daemon, reply.workflow_id)
    chain = traced(daemon, reply.event_id)

    assert workflow.trace_id == TRACE
    root, composed, delivered = chain.events
    assert (root.trace_id, root.span_id, root.parent_span_id) == (TRACE, SPAN, CALLER)
    assert {e.trace_id for e in chain.events} == {TRACE}
    compose, deliver = chain.block_executions
    # event -> its block execution -> the events that execution emitted -> ...
    assert compose.parent_span_id == root.span_id
    assert composed.parent_span_id == compose.span_id
    assert deliver.parent_span_id == composed.span_id
    assert delivered.parent_span_id == deliver.span_id
    spans = [root.span_id, compose.span_id, composed.span_id, deliver.span_id, delivered.span_id]
    assert len(set(spans)) == 5
    assert all(HEX16.fullmatch(s) for s in spans)


def test_trace_context_is_stored_with_the_rows(daemon):
    request = api.EmitRequest(
        event_type="greet_requested", project="tc-sql", payload_json='{"name": "Bo"}',
        trace_id=TRACE, parent_span_id=CALLER,
    )  # fmt: skip
    reply = daemon.call(lambda f, _: f.emit(request))
    chain = traced(daemon, reply.event_id)
    finished(daemon, reply.workflow_id)

    def rows(sql: str) -> list[list[Any]]:
        done = daemon.cli("sql", sql.replace("?", f"'{reply.workflow_id}'"), "--json", check=True)
        return sorted(json.loads(done.stdout)["rows"])

    assert rows(
        "SELECT event_id, trace_id, span_id, parent_span_id FROM events WHERE workflow_id = ?"
    ) == sorted([e.event_id, TRACE, e.span_id, e.parent_span_id or None] for e in chain.events)
    assert rows(
        "SELECT block_name, trace_id, span_id, parent_span_id FROM block_executions "
        "WHERE workflow_id = ?"
    ) == sorted([x.block_name, TRACE, x.span_id, x.parent_span_id] for x in chain.block_executions)
    assert rows("SELECT trace_id FROM workflows WHERE workflow_id = ?") == [[TRACE]]


def test_an_emit_without_trace_context_starts_a_new_trace(daemon):
    first = emit(daemon, "greet_requested", project="tc", payload={"name": "A"})
    second = emit(daemon, "greet_requested", project="tc", payload={"name": "B"})
    one, two = traced(daemon, first.event_id), traced(daemon, second.event_id)
    assert re.fullmatch(r"[0-9a-f]{32}", one.events[0].trace_id)
    assert one.events[0].trace_id != two.events[0].trace_id
    assert one.events[0].parent_span_id == ""


@pytest.mark.parametrize(
    ("ids", "field"),
    [
        ({"trace_id": "xyz"}, "trace_id"),
        ({"trace_id": TRACE.upper()}, "trace_id"),
        ({"trace_id": "0" * 32}, "trace_id"),
        ({"trace_id": TRACE, "span_id": SPAN + "0"}, "span_id"),
        ({"trace_id": TRACE, "parent_span_id": "0" * 16}, "parent_span_id"),
        ({"span_id": SPAN}, "span_id"),
    ],
)
def test_bad_trace_context_is_invalid_argument_naming_the_field(daemon, ids, field):
    request = api.EmitRequest(event_type="greet_requested", project="tc", **ids)
    error = grpc_error(daemon, lambda f, _: f.emit(request))
    assert error.status is Status.INVALID_ARGUMENT
    assert error.message.startswith(f"{field}:")
    assert emit(daemon, "after_bad_trace", project="tc").event_id  # the daemon is unharmed


# --- the caller's traceparent header ------------------------------------------------------------

HEADER = f"00-{TRACE}-{CALLER}-01"


def _root_of(daemon, event_id: str) -> api.TraceEvent:
    return traced(daemon, event_id).events[0]


def test_an_emit_over_grpc_joins_the_trace_in_its_traceparent_metadata(daemon, grpcio_client):
    request = api.EmitRequest(event_type="tc_header_grpclib", project="tc-h")
    reply = daemon.call(lambda f, _: f.emit(request, metadata={"traceparent": HEADER}))
    root = _root_of(daemon, reply.event_id)
    assert (root.trace_id, root.parent_span_id) == (TRACE, CALLER)
    assert HEX16.fullmatch(root.span_id)
    assert root.span_id != CALLER

    pb2 = grpcio_client.foundry_pb2
    with grpcio_client.connect(daemon.address) as (foundry, _):  # not sampled: the ids still
        answer = foundry.Emit(pb2.EmitRequest(event_type="tc_header_grpcio", project="tc-h"),
                              metadata=(("traceparent", f"00-{TRACE}-{SPAN}-00"),))  # fmt: skip
    root = _root_of(daemon, answer.event_id)
    assert (root.trace_id, root.parent_span_id) == (TRACE, SPAN)


@pytest.mark.parametrize("road", ["short", "connectrpc", "grpc-web"])
def test_an_emit_over_http_joins_the_trace_in_its_traceparent_header(daemon, road):
    headers = {"traceparent": HEADER, "content-type": "application/json"}
    if road == "grpc-web":
        body = envelope(bytes(api.EmitRequest(event_type="tc_header_web", project="tc-h")))
        [message], trailers = grpc_web_call(daemon, "/foundry.Foundry/Emit", body,
                                            headers={"traceparent": HEADER})  # fmt: skip
        assert trailers["grpc-status"] == "0"
        event_id = api.EmitResponse().parse(message).event_id
    else:
        if road == "connectrpc":  # a deadline header: connectrpc's own path, not the short one
            headers["connect-timeout-ms"] = "30000"
        body = json.dumps({"eventType": f"tc_header_{road}", "project": "tc-h"})
        reply = httpx.post(url(daemon, "/foundry.Foundry/Emit"), content=body, headers=headers)
        assert reply.status_code == 200, reply.text
        event_id = reply.json()["eventId"]
    root = _root_of(daemon, event_id)
    assert (root.trace_id, root.parent_span_id) == (TRACE, CALLER)


def test_an_emits_own_trace_context_wins_over_its_header(daemon):
    request = api.EmitRequest(event_type="tc_header_both", project="tc-h", trace_id=TRACE)
    other = f"00-{'a' * 32}-{CALLER}-01"
    reply = daemon.call(lambda f, _: f.emit(request, metadata={"traceparent": other}))
    root = _root_of(daemon, reply.event_id)
    assert (root.trace_id, root.parent_span_id) == (TRACE, "")


@pytest.mark.parametrize(
    "values",
    [
        [f"00-{TRACE.upper()}-{CALLER}-01"],  # upper-case hex
        [f"00-{'0' * 32}-{CALLER}-01"],  # an all-zero trace id
        [f"00-{TRACE}-{'0' * 16}-01"],  # an all-zero parent id
        [f"ff-{TRACE}-{CALLER}-01"],  # version ff
        [f"00-{TRACE}-{CALLER}-01-extra"],  # version 00 with more parts
        ["x" * 10_000],
        [HEADER, f"00-{'b' * 32}-{SPAN}-01"],  # given twice
    ],
)
def test_a_traceparent_header_that_is_not_valid_is_ignored(daemon, values):
    """W3C: a receiver that cannot use the header starts a new trace (no error)."""
    metadata = [("traceparent", v) for v in values]
    request = api.EmitRequest(event_type="tc_header_bad", project="tc-h")
    reply = daemon.call(lambda f, _: f.emit(request, metadata=metadata))
    root = _root_of(daemon, reply.event_id)
    assert re.fullmatch(r"[0-9a-f]{32}", root.trace_id)
    assert root.trace_id not in (TRACE, "b" * 32)
    assert root.parent_span_id == ""


# --- children and the CLI -----------------------------------------------------------------------


def test_a_shell_blocks_child_gets_traceparent_with_the_blocks_span(daemon):
    request = api.EmitRequest(event_type="show_requested", project="tc", trace_id=TRACE)
    reply = daemon.call(lambda f, _: f.emit(request))
    [execution] = traced(daemon, reply.event_id).block_executions
    shown = json.loads(execution.raw_output)["traceparent"]
    assert shown == f"00-{TRACE}-{execution.span_id}-01"


def _cli_emit(daemon, traceparent: str | None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FOUNDRY_ADDR": daemon.address}
    env.pop("TRACEPARENT", None)
    if traceparent is not None:
        env["TRACEPARENT"] = traceparent
    return subprocess.run(
        [sys.executable, "-m", "foundry.kernel.cli", "emit", "greet_requested", "--project",
         "tc", "--json"],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip


def test_the_cli_joins_the_trace_in_its_traceparent(daemon):
    done = _cli_emit(daemon, f"00-{TRACE}-{CALLER}-01")
    assert done.returncode == 0, done.stderr
    root = traced(daemon, json.loads(done.stdout)["event_id"]).events[0]
    assert (root.trace_id, root.parent_span_id) == (TRACE, CALLER)
    assert HEX16.fullmatch(root.span_id)
    assert root.span_id != CALLER


def test_the_cli_refuses_a_bad_traceparent_in_one_line(daemon):
    done = _cli_emit(daemon, "00-nothex-00f067aa0ba902b7-01")
    assert done.returncode == 1
    assert done.stdout == ""
    [line] = done.stderr.strip().splitlines()
    assert "TRACEPARENT" in line


# --- runs ---------------------------------------------------------------------------------------


def test_a_run_is_a_trace_and_each_step_attempt_a_span(daemon, recorder):
    Recorder.seen.clear()
    run = run_and_wait(daemon, dag(
        {"id": "get", "type": "http", "inputs": {"url": f"{recorder}/ping",
                                                  "headers": {"traceparent": "forged"}}},
        {"id": "ask", "type": "llm", "model": "openai:trace-model", "inputs": {"prompt": "hi"}},
        {"id": "show", "type": "shell", "inputs": {"command": "Show Trace"}},
    ))  # fmt: skip
    assert run.status is rt.RunStatus.SUCCEEDED, run
    assert re.fullmatch(r"[0-9a-f]{32}", run.trace_id)
    assert HEX16.fullmatch(run.span_id)
    by_id = steps(run)
    for step in by_id.values():
        assert HEX16.fullmatch(step.span_id), step
        assert step.parent_span_id == run.span_id
    assert len({s.span_id for s in by_id.values()}) == 3

    headers = {path: h for path, h in Recorder.seen}
    assert headers["/ping"]["traceparent"] == f"00-{run.trace_id}-{by_id['get'].span_id}-01"
    assert headers["/v1/chat/completions"]["traceparent"] == (
        f"00-{run.trace_id}-{by_id['ask'].span_id}-01"
    )
    shown = by_id["show"].output.to_dict()["traceparent"]
    assert shown == f"00-{run.trace_id}-{by_id['show'].span_id}-01"


def test_taprun_events_carry_the_attempts_span(daemon):
    run = run_and_wait(daemon, dag({"id": "t", "type": "transform", "inputs": {"value": 1}}))

    async def tap(_: Any, runtime: Any) -> list[rt.RunEvent]:
        events = []
        async for event in runtime.tap_run(rt.TapRunRequest(run_id=run.run_id)):
            events.append(event)
            if event.kind in ("run_succeeded", "run_failed"):
                break
        return events

    events = daemon.call(tap)
    step_events = [e for e in events if e.step_id == "t" and e.kind.startswith("step_")]
    assert {e.kind for e in step_events} == {"step_leased", "step_completed"}
    assert {e.span_id for e in step_events} == {steps(run)["t"].span_id}
    assert all(e.span_id == "" for e in events if not e.step_id)
