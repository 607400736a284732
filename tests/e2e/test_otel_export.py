"""OpenTelemetry export end to end: a real daemon with ``[otel] endpoint`` set exports spans to an
OTLP/HTTP receiver served here (the OpenTelemetry protocol's own messages decode what arrives).

Chains (the workflow span, event spans and block execution spans, linked parent to child), runs
(the run span, step attempt spans with the GenAI conventions on ``llm`` steps), the trace a
caller hands ``foundry emit`` in ``TRACEPARENT``, and a dead collector, which costs the daemon
nothing but one warning.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from foundry.proto import foundry_api as api
from foundry.proto import runtime_api
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from tests.daemon import Daemon, Daemons
from tests.e2e.helpers import emit, finished, traced
from tests.helpers import process_gone, wait_until
from tests.runs.helpers import dag, run_and_wait, steps, submit, value, wait_for

Span = dict[str, Any]


class Collector:
    """An OTLP trace receiver: the spans it got, decoded. Serves OTLP/HTTP on 127.0.0.1:0 from a
    thread of its own unless ``http`` is false (the gRPC test serves it instead)."""

    def __init__(self, http: bool = True) -> None:
        self.spans: list[Span] = []
        self.paths: list[str] = []
        self._lock = threading.Lock()
        if http:
            self._serve_http()

    def _serve_http(self) -> None:
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                collector.receive(self.path, self.headers["Content-Type"], body)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def receive(self, path: str, content_type: str, body: bytes) -> None:
        assert content_type == "application/x-protobuf"
        request = ExportTraceServiceRequest.FromString(body)
        found = [
            {**_span(span), "resource": _attributes(rs.resource.attributes),
             "scope": scope.scope.name}
            for rs in request.resource_spans
            for scope in rs.scope_spans
            for span in scope.spans
        ]  # fmt: skip
        with self._lock:
            self.paths.append(path)
            self.spans.extend(found)

    def in_trace(self, trace_id: str) -> list[Span]:
        with self._lock:
            return [s for s in self.spans if s["trace_id"] == trace_id]

    def wait_for(self, trace_id: str, count: int) -> dict[str, Span]:
        """The trace's spans by name, once ``count`` of them arrived."""
        spans = wait_until(
            lambda: (found := self.in_trace(trace_id)) and len(found) >= count and found,
            what=lambda: f"{count} spans of trace {trace_id}, got {self.in_trace(trace_id)}",
        )
        return {s["name"]: s for s in spans}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def _value(value: AnyValue) -> Any:
    return getattr(value, value.WhichOneof("value"))


def _attributes(pairs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in pairs}


def _span(span: Any) -> Span:
    return {
        "trace_id": span.trace_id.hex(),
        "span_id": span.span_id.hex(),
        "parent_span_id": span.parent_span_id.hex(),
        "name": span.name,
        "kind": span.kind,
        "start": span.start_time_unix_nano,
        "end": span.end_time_unix_nano,
        "status": span.status.code,
        "status_message": span.status.message,
        "attributes": _attributes(span.attributes),
    }


@pytest.fixture
def collector() -> Iterator[Collector]:
    found = Collector()
    try:
        yield found
    finally:
        found.close()


def otel_config(endpoint: str, **extra: Any) -> str:
    lines = [f'endpoint = "{endpoint}"', *(f"{k} = {json.dumps(v)}" for k, v in extra.items())]
    return "[otel]\n" + "\n".join(lines) + "\n"


@pytest.fixture
def exporting(make_daemon: Daemons, collector: Collector) -> Daemon:
    return make_daemon(otel_config(collector.endpoint))


SPAN_KIND_INTERNAL, SPAN_KIND_CLIENT = 1, 3
STATUS_UNSET, STATUS_ERROR = 0, 2


def test_a_chain_exports_its_workflow_events_and_block_executions_linked(
    exporting: Daemon, collector: Collector
):
    reply = emit(exporting, "greet_requested", payload={"name": "Ada"},
                 throttle=api.Throttle.AUDIT_ONLY)  # fmt: skip
    workflow = finished(exporting, reply.workflow_id)
    assert workflow.state == "completed"
    root_trace = traced(exporting, reply.event_id)
    [root_event] = [e for e in root_trace.events if e.event_id == reply.event_id]
    trace_id = root_event.trace_id
    assert len(trace_id) == 32
    assert workflow.trace_id == trace_id

    # workflow, 2 events emitted, 2 block executions
    spans = collector.wait_for(trace_id, 5)
    assert set(spans) == {
        "workflow greet_requested", "event greeting_composed", "event greeting_delivered",
        "block Compose Greeting", "block Deliver Greeting",
    }  # fmt: skip
    top = spans["workflow greet_requested"]
    compose, deliver = spans["block Compose Greeting"], spans["block Deliver Greeting"]
    composed = spans["event greeting_composed"]
    delivered = spans["event greeting_delivered"]
    # The tree, as Trace shows it: root event (the workflow) → block → event → block → event.
    assert top["span_id"] == root_event.span_id
    assert top["parent_span_id"] == ""
    assert compose["parent_span_id"] == top["span_id"]
    assert composed["parent_span_id"] == compose["span_id"]
    assert deliver["parent_span_id"] == composed["span_id"]
    assert delivered["parent_span_id"] == deliver["span_id"]
    executions = {x.block_name: x for x in root_trace.block_executions}
    assert compose["span_id"] == executions["Compose Greeting"].span_id
    assert deliver["span_id"] == executions["Deliver Greeting"].span_id

    assert top["attributes"] == {
        "foundry.workflow.id": reply.workflow_id, "foundry.workflow.type": "greet_requested",
        "foundry.workflow.state": "completed", "foundry.project": "p",
        "foundry.throttle": "audit_only", "foundry.workflow.events": 3,
        "foundry.workflow.block_executions": 2,
    }  # fmt: skip
    assert top["start"] <= compose["start"] <= compose["end"] <= deliver["end"] <= top["end"]
    assert compose["attributes"]["foundry.block.state"] == "completed"
    assert compose["attributes"]["foundry.block.throttled"] is False
    assert deliver["attributes"]["foundry.throttle"] == "audit_only"
    assert deliver["attributes"]["foundry.block.throttled"] is True  # the mutator only audited
    assert deliver["attributes"]["foundry.block.attempts"] >= 0
    assert "foundry.block.exit_code" not in deliver["attributes"]  # it ran no command
    assert delivered["attributes"]["foundry.event.throttled"] is True
    assert {s["kind"] for s in spans.values()} == {SPAN_KIND_INTERNAL}
    assert {s["status"] for s in spans.values()} == {STATUS_UNSET}
    assert top["resource"]["service.name"] == "foundry"
    assert top["scope"] == "foundry"
    assert set(collector.paths) == {"/v1/traces"}


def test_a_failed_block_is_an_error_span(make_daemon: Daemons, collector: Collector):
    daemon = make_daemon(otel_config(collector.endpoint) + """
[[blocks]]
name = "Exits Three"
type = "shell"
kind = "observer"
sinks = ["fail_requested"]
command = ["sh", "-c", "echo about to fail; exit 3"]
""")  # fmt: skip
    reply = emit(daemon, "fail_requested", payload={})
    assert finished(daemon, reply.workflow_id).state == "failed"
    [root] = traced(daemon, reply.event_id).events
    spans = collector.wait_for(root.trace_id, 2)
    failed = spans["block Exits Three"]
    assert failed["status"] == STATUS_ERROR
    assert failed["status_message"]
    assert failed["attributes"]["foundry.block.exit_code"] == 3
    assert failed["attributes"]["foundry.block.state"] == "failed"
    assert spans["workflow fail_requested"]["status"] == STATUS_ERROR
    assert "Exits Three" in spans["workflow fail_requested"]["status_message"]


def test_a_run_exports_its_span_and_step_attempts_with_genai_attributes(
    exporting: Daemon, collector: Collector
):
    run = run_and_wait(exporting, dag(
        {"id": "ask", "type": "llm", "model": "mock:small", "inputs": {"prompt": "why otters"}},
        {"id": "shout", "type": "transform", "depends_on": ["ask"],
         "inputs": {"value": "${steps.ask.output.text}"}},
    ), labels={"team": "otters"})  # fmt: skip
    ask = steps(run)["ask"]
    tokens_out = len(value(ask.output)["text"].split())  # the mock provider's count
    cost = (2 * 0.0005 + tokens_out * 0.0015) / 1000  # [llm] default prices per 1k tokens
    [top] = wait_until(
        lambda: [s for s in collector.spans
                 if s["name"] == "run" and s["attributes"]["foundry.run.id"] == run.run_id],
        what="the run's span",
    )  # fmt: skip
    spans = collector.wait_for(top["trace_id"], 3)
    assert set(spans) == {"run", "chat small", "step shout"}
    chat, shout = spans["chat small"], spans["step shout"]
    assert top["parent_span_id"] == ""
    assert chat["parent_span_id"] == top["span_id"] == shout["parent_span_id"]
    assert top["attributes"]["foundry.run.status"] == "SUCCEEDED"
    assert top["attributes"]["foundry.run.label.team"] == "otters"
    assert chat["kind"] == SPAN_KIND_CLIENT
    assert chat["attributes"] == {
        "foundry.run.id": run.run_id, "foundry.step.id": "ask", "foundry.step.type": "llm",
        "foundry.step.attempt": 1, "foundry.step.state": "succeeded",
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "mock",
        "gen_ai.system": "mock", "gen_ai.request.model": "small",
        "gen_ai.response.model": "small",
        "gen_ai.usage.input_tokens": 2, "gen_ai.usage.output_tokens": tokens_out,
        "foundry.usage.cost": pytest.approx(cost),
    }  # fmt: skip
    assert tokens_out > 0
    assert chat["span_id"] == ask.span_id
    assert chat["parent_span_id"] == ask.parent_span_id
    assert shout["attributes"]["foundry.step.type"] == "transform"
    assert not any(k.startswith("gen_ai.") for k in shout["attributes"])
    assert top["start"] <= chat["start"] <= chat["end"] <= shout["start"] <= top["end"]


def test_foundry_emit_joins_the_trace_in_traceparent(exporting: Daemon, collector: Collector):
    trace_id, caller_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    env = {**os.environ, "FOUNDRY_ADDR": exporting.address,
           "TRACEPARENT": f"00-{trace_id}-{caller_span}-01"}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "foundry.kernel.cli", "emit", "greet_requested", "--json",
         "--project", "p", "--payload", '{"name": "Grace"}'],
        capture_output=True, text=True, env=env, timeout=60, check=True,
    )  # fmt: skip
    workflow_id = json.loads(done.stdout)["workflow_id"]
    finished(exporting, workflow_id)
    spans = collector.wait_for(trace_id, 5)
    top = spans["workflow greet_requested"]
    assert top["parent_span_id"] == caller_span  # the caller's span is the root's parent
    assert top["attributes"]["foundry.workflow.id"] == workflow_id
    assert {s["trace_id"] for s in spans.values()} == {trace_id}


@pytest.mark.parametrize("scheme", ["http", "HTTP"])
def test_otlp_over_grpc_exports_the_same_spans(make_daemon: Daemons, scheme: str):
    """(``HTTP://``, which the config check takes as ``http://``, made the exporter speak TLS
    to a plain-text collector: every span was lost.)"""
    from concurrent.futures import ThreadPoolExecutor

    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

    collector = Collector(http=False)

    class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):  # noqa: N802 (the generated method name)
            collector.receive("grpc", "application/x-protobuf", request.SerializeToString())
            return ExportTraceServiceResponse()

    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        daemon = make_daemon(otel_config(f"{scheme}://127.0.0.1:{port}", protocol="grpc"))
        reply = emit(daemon, "greet_requested", payload={"name": "Ada"})
        finished(daemon, reply.workflow_id)
        [root, *_] = traced(daemon, reply.event_id).events
        spans = collector.wait_for(root.trace_id, 5)
        assert spans["block Compose Greeting"]["parent_span_id"] == root.span_id
        assert spans["workflow greet_requested"]["resource"]["service.name"] == "foundry"
    finally:
        server.stop(grace=None)


def test_a_tls_mismatch_over_grpc_is_one_warning_not_a_line_per_handshake(make_daemon: Daemons):
    """gRPC's C core wrote each failed handshake to the daemon's stderr, unformatted (ten lines
    in 12 s), beside the one warning."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(
        trace_service_pb2_grpc.TraceServiceServicer(), server
    )
    port = server.add_insecure_port("127.0.0.1:0")  # plain text; the daemon speaks TLS to it
    server.start()
    try:
        config = otel_config(f"https://127.0.0.1:{port}", protocol="grpc", timeout=1.0)
        daemon = make_daemon(config, env={"GRPC_VERBOSITY": ""})  # as a shell without it
        for _ in range(3):
            reply = emit(daemon, "greet_requested", payload={"name": "Ada"})
            finished(daemon, reply.workflow_id)
        wait_until(lambda: "is losing spans" in daemon.stderr(), what="the export warning")
        assert daemon.stop() == 0
    finally:
        server.stop(grace=None)
    assert "ssl_transport_security" not in daemon.stderr()
    assert "Handshake failed" not in daemon.stderr()


def test_a_dead_collector_never_slows_the_daemon_and_is_warned_about_once(
    make_daemon: Daemons,
):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    daemon = make_daemon(otel_config(dead, queue_size=8, timeout=1.0))
    replies = [emit(daemon, "greet_requested", payload={"name": f"n{i}"}) for i in range(60)]
    for reply in replies:
        assert finished(daemon, reply.workflow_id).state == "completed"
    wait_until(lambda: "is losing spans" in daemon.stderr(), what="the export warning")
    assert emit(daemon, "greet_requested", payload={"name": "after"}).workflow_id
    assert daemon.stop() == 0  # and the stop does not wait on the dead collector for long
    warnings = [line for line in daemon.stderr().splitlines()
                if " WARNING " in line and "OpenTelemetry" in line]  # fmt: skip
    assert len(warnings) == 1, warnings
    assert dead in warnings[0]
    assert "span(s) exported, " in daemon.stderr()  # the totals, when it stopped


def test_a_headers_variable_it_cannot_parse_is_said_without_its_secret(
    make_daemon: Daemons, collector: Collector
):
    """The SDK logged the entry it could not parse whole, into the daemon's log — the token in
    it too."""
    secret = "s3cr3t-TOKEN"
    headers = {"OTEL_EXPORTER_OTLP_HEADERS": f"authorization=Bearer {secret};x"}
    daemon = make_daemon(otel_config(collector.endpoint), env=headers)
    reply = emit(daemon, "greet_requested", payload={"name": "Ada"})
    finished(daemon, reply.workflow_id)
    assert daemon.stop() == 0
    assert "OTEL_EXPORTER_OTLP_HEADERS has an entry that is not name=value: it is not sent" in (
        daemon.stderr()
    )
    assert secret not in daemon.stderr()


def test_a_stop_flushes_what_is_queued(exporting: Daemon, collector: Collector):
    reply = emit(exporting, "greet_requested", payload={"name": "Ada"})
    finished(exporting, reply.workflow_id)
    [root, *_] = traced(exporting, reply.event_id).events
    assert exporting.stop() == 0  # at once: the spans are still queued (a batch per 0.5 s)
    assert len(collector.in_trace(root.trace_id)) == 5  # exported before the daemon exited
    assert "OpenTelemetry export: 5 span(s) exported, 0 lost" in exporting.stderr()


def _children(pid: int) -> list[int]:
    return [int(child) for listing in Path(f"/proc/{pid}/task").glob("*/children")
            for child in listing.read_text().split()]  # fmt: skip


def test_a_killed_daemon_leaves_no_exporter_behind(exporting: Daemon, collector: Collector):
    assert exporting.process is not None
    exporters = [
        pid for pid in _children(exporting.process.pid)
        if "foundry.kernel.edge.otel" in Path(f"/proc/{pid}/cmdline").read_text()
    ]  # fmt: skip
    assert len(exporters) == 1
    exporting.kill()  # SIGKILL: the exporter's stdin ends, and so does the exporter
    wait_until(lambda: process_gone(exporters[0]), what="the exporter process to exit")
    # its last log line found no reader: dropped, not a traceback in the daemon's log
    assert "Traceback" not in exporting.stderr()


def _exporter_of(daemon: Daemon) -> int:
    assert daemon.process is not None
    [exporter] = [
        pid for pid in _children(daemon.process.pid)
        if "foundry.kernel.edge.otel" in Path(f"/proc/{pid}/cmdline").read_text()
    ]  # fmt: skip
    return exporter


def _trace_id_of(daemon: Daemon, name: str) -> str:
    reply = emit(daemon, "greet_requested", payload={"name": name})
    finished(daemon, reply.workflow_id)
    [root] = [e for e in traced(daemon, reply.event_id).events if e.event_id == reply.event_id]
    return root.trace_id


def test_an_exporter_that_dies_is_started_again(exporting: Daemon, collector: Collector):
    """An exporter killed (a crash, the OOM killer) stopped the export for the rest of the
    daemon's life, with one line in its log: it is started again a second later."""
    first = _exporter_of(exporting)
    collector.wait_for(_trace_id_of(exporting, "before"), 3)
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: process_gone(first), what="the killed exporter to exit")
    # noticed as it exits, not at the next write (no chain runs meanwhile): another a second
    # later
    wait_until(lambda: _children_exporting(exporting, first), what="a new exporter process")
    collector.wait_for(_trace_id_of(exporting, "after"), 3)
    assert "the OpenTelemetry exporter stopped (exit code -9): started again in 1 s" in (
        exporting.stderr()
    )
    assert exporting.stop() == 0
    assert "Traceback" not in exporting.stderr()


def _children_exporting(daemon: Daemon, not_pid: int) -> bool:
    assert daemon.process is not None
    return any(
        pid != not_pid and "foundry.kernel.edge.otel" in Path(f"/proc/{pid}/cmdline").read_text()
        for pid in _children(daemon.process.pid)
    )


def test_a_stop_is_not_held_by_an_exporter_that_reads_nothing(exporting: Daemon):
    """An exporter that takes nothing in (stopped here; starved of CPU or stuck elsewhere) held
    the daemon's write of a full pipe, and so its stop, for good: it is given 2 s from the
    stop, then killed, and the spans left are counted in one line."""
    assert exporting.process is not None
    [exporter] = [
        pid for pid in _children(exporting.process.pid)
        if "foundry.kernel.edge.otel" in Path(f"/proc/{pid}/cmdline").read_text()
    ]  # fmt: skip
    os.kill(exporter, signal.SIGSTOP)
    try:
        big = {"name": "n", "pad": "z" * 100_000}  # the trace frames carry it: 6 MB in all
        for reply in [emit(exporting, "greet_requested", payload=big) for _ in range(60)]:
            finished(exporting, reply.workflow_id)
        started = time.monotonic()
        assert exporting.stop(timeout=30) == 0
        assert time.monotonic() - started < 10  # [daemon] shutdown_grace, at most
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(exporter, signal.SIGKILL)
    assert "took nothing for 2 s after the stop began: killed" in exporting.stderr()
    wait_until(lambda: process_gone(exporter), what="the exporter process to exit")


def test_without_an_endpoint_nothing_is_exported(daemon: Daemon):
    reply = emit(daemon, "greet_requested", payload={"name": "Ada"})
    finished(daemon, reply.workflow_id)
    assert daemon.stop() == 0
    assert "exporting spans" not in daemon.stderr()
    assert "OpenTelemetry" not in daemon.stderr()


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ('endpoint = "ftp://collector:4318"', "[otel].endpoint"),
        ('endpoint = "http://127.0.0.1:4318"\nprotocol = "thrift"', "[otel].protocol"),
        ("queue_size = 0", "[otel].queue_size"),
        ("timeout = 0", "[otel].timeout"),
        ('headers = "x"', "[otel].headers"),
    ],
)
def test_a_bad_otel_table_is_refused_naming_the_key(tmp_path, table, key):
    config = tmp_path / "foundry.toml"
    config.write_text(f"[otel]\n{table}\n")
    done = subprocess.run(
        [sys.executable, "-m", "foundry.kernel.cli", "serve", "--config", str(config),
         "--listen", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "FOUNDRY_HOME": str(tmp_path / "home")},
    )  # fmt: skip
    assert done.returncode == 2
    assert key in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_step_attempt_ended_by_cancel_run_has_its_span(
    make_daemon: Daemons, collector: Collector
):
    # the span went out only once an attempt returned: a cancelled one left the run's trace
    # with nothing in it but the canceled run
    daemon = make_daemon(otel_config(collector.endpoint) + """
[[blocks]]
name = "sleeper"
type = "shell"
kind = "observer"
command = ["sleep", "30"]
""")  # fmt: skip
    run_id = submit(daemon, dag({"id": "s", "type": "sleeper"}))
    wait_for(daemon, run_id, lambda r: steps(r)["s"].status == "running", what="s to run")
    reply = daemon.call(lambda _, rt: rt.cancel_run(runtime_api.CancelRunRequest(run_id=run_id)))
    assert reply.status == runtime_api.RunStatus.CANCELED
    [top] = wait_until(
        lambda: [s for s in collector.spans
                 if s["name"] == "run" and s["attributes"]["foundry.run.id"] == run_id],
        what="the run's span",
    )  # fmt: skip
    spans = collector.wait_for(top["trace_id"], 2)
    step = spans["step s"]
    assert step["attributes"]["foundry.step.state"] == "canceled"
    assert step["status"] == STATUS_ERROR
    assert step["parent_span_id"] == top["span_id"]


def test_an_event_no_block_sinks_names_no_workflow(exporting: Daemon, collector: Collector):
    # its span said foundry.workflow.id = its own id, a workflow Status does not know
    reply = emit(exporting, "nobody_sinks_this", payload={})
    assert reply.workflow_id == ""
    [span] = wait_until(
        lambda: [s for s in collector.spans if s["name"] == "event nobody_sinks_this"],
        what="the event's span",
    )  # fmt: skip
    assert span["attributes"].get("foundry.workflow.id", "") == ""
    assert span["attributes"]["foundry.event.id"] == reply.event_id
