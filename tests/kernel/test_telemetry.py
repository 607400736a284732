"""OpenTelemetry export, the parts that need no daemon: spans made of what the engine and the
scheduler recorded (kernel/actors/telemetry/spans.py), the frames the exporter process reads,
the OTLP spans made of them (kernel/edge/otel.py; the same as the SDK would encode), the
exporter's bounded and counted queue, and the outbox that never makes a sender wait.

End to end (a daemon, a receiver): tests/e2e/test_otel_export.py.
"""

from __future__ import annotations

import contextlib
import io
import logging
import random
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest
import requests
import trio
from foundry.kernel.actors.telemetry.messages import (
    CHAIN_FIELDS,
    ROWS_BYTES,
    ROWS_FIELDS,
    ChainEnded,
    RunEnded,
    SpanEnded,
    SpanOutbox,
    SpanRecord,
    StepAttemptEnded,
    TelemetryMessage,
    TracesStored,
    frame,
    read_frames,
    span_record,
    span_records,
    stamp_ns,
)
from foundry.kernel.actors.telemetry.spans import records_of, unix_ns, wire_items
from foundry.kernel.config import Config
from foundry.kernel.core.ids import occurred_stamp, rfc3339
from foundry.kernel.core.records import Event, ExecutionRecord, trace_rows
from foundry.kernel.core.throttle import Throttle
from foundry.kernel.core.trace_format import frame as frame_file
from foundry.kernel.edge import otel
from foundry.kernel.edge.otel import Batch, Export, add_span, open_transport, resource
from foundry.kernel.errors import ConfigError
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, SpanFlags, Status
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, StatusCode, TraceFlags
from opentelemetry.trace import Status as Status_

from tests.helpers import wait_until

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER, ROOT, BLOCK_A, CHILD, BLOCK_B = (f"{n:016x}" for n in (0xCA11E5, 1, 2, 3, 4))
T0 = datetime(2026, 12, 1, 12, 0, 0, 123456, tzinfo=UTC)


def at(ms: int) -> datetime:
    return T0 + timedelta(milliseconds=ms)


def event(span: str, parent: str, event_type: str, **extra: object) -> Event:
    return Event(
        id=f"evt_{span[-4:]}", event_type=event_type, project="acme", occurred_at=at(0),
        recorded_at=at(0), throttle=Throttle.AUDIT_ONLY, workflow_id="evt_0001", payload={},
        payload_json="{}", trace_id=TRACE, span_id=span, parent_span_id=parent, **extra,
    )  # type: ignore[arg-type]  # fmt: skip


def execution(name: str, span: str, trigger: Event, emitted: tuple[Event, ...] = (),
              **extra: object) -> ExecutionRecord:  # fmt: skip
    fields: dict[str, object] = dict(
        workflow_id="evt_0001", block_name=name, trigger=trigger, state="completed",
        success=True, summary="ok", emitted=emitted, started_at=at(1), completed_at=at(5),
        duration_ms=4, raw_output="", exit_code=0, audit_artifacts=(), attempts=1,
        throttled=False, span_id=span, ran_command=False,
    )  # fmt: skip
    fields.update(extra)
    return ExecutionRecord(**fields)  # type: ignore[arg-type]


def chain(**extra: object) -> ChainEnded:
    root = event(ROOT, CALLER, "greet_requested")
    child = event(CHILD, BLOCK_A, "greeting_composed", depth=1, parent_id=root.id,
                  emitted_by="Compose", throttled=True)  # fmt: skip
    fields: dict[str, object] = dict(
        events=(root, child),
        executions=(
            execution("Compose", BLOCK_A, root, (child,)),
            execution("Deliver", BLOCK_B, child, success=False, state="failed", summary="boom",
                      exit_code=3, ran_command=True, throttled=True, attempts=2),
        ),
        is_workflow=True, state="failed", error="block 'Deliver' failed: boom",
        completed_at=at(9),
    )  # fmt: skip
    fields.update(extra)
    return ChainEnded(**fields)  # type: ignore[arg-type]


def spans_of(message: TelemetryMessage) -> Iterator[SpanEnded]:
    """What the actor writes for ``message``, read back as spans (attributes as pairs)."""
    for record in records_of(message):
        *head, error, names, values, _remote_parent = record
        yield SpanEnded(*head, attributes=tuple(zip(names, values, strict=True)), error=error)


def by_name(message: TelemetryMessage) -> dict[str, SpanEnded]:
    return {s.name: s for s in spans_of(message)}


# --- spans of a chain -------------------------------------------------------------------------


def test_a_chain_is_a_tree_workflow_block_event_block():
    spans = by_name(chain())
    assert list(spans) == [
        "workflow greet_requested", "event greeting_composed", "block Compose", "block Deliver",
    ]  # fmt: skip
    top, child = spans["workflow greet_requested"], spans["event greeting_composed"]
    compose, deliver = spans["block Compose"], spans["block Deliver"]
    assert {s.trace_id for s in spans.values()} == {TRACE}
    assert (top.span_id, top.parent_span_id) == (ROOT, CALLER)  # the caller's span above
    assert (compose.span_id, compose.parent_span_id) == (BLOCK_A, ROOT)
    assert (child.span_id, child.parent_span_id) == (CHILD, BLOCK_A)
    assert (deliver.span_id, deliver.parent_span_id) == (BLOCK_B, CHILD)
    assert (top.start_ns, top.end_ns) == (unix_ns(at(0)), unix_ns(at(9)))
    assert (compose.start_ns, compose.end_ns) == (unix_ns(at(1)), unix_ns(at(5)))
    assert child.start_ns == child.end_ns == unix_ns(at(0))  # an event is a point in time


def test_span_attributes_name_throttle_state_attempts_and_exit_code():
    spans = by_name(chain())
    top = dict(spans["workflow greet_requested"].attributes)
    assert top == {
        "foundry.workflow.id": "evt_0001", "foundry.workflow.type": "greet_requested",
        "foundry.workflow.state": "failed", "foundry.project": "acme",
        "foundry.throttle": "audit_only", "foundry.workflow.events": 2,
        "foundry.workflow.block_executions": 2,
    }  # fmt: skip
    deliver = dict(spans["block Deliver"].attributes)
    assert deliver["foundry.block.name"] == "Deliver"
    assert deliver["foundry.block.state"] == "failed"
    assert deliver["foundry.block.attempts"] == 2
    assert deliver["foundry.block.exit_code"] == 3
    assert deliver["foundry.block.throttled"] is True
    assert deliver["foundry.throttle"] == "audit_only"
    assert deliver["foundry.event.id"] == "evt_0003"
    compose = dict(spans["block Compose"].attributes)
    assert "foundry.block.exit_code" not in compose  # it ran no command: no exit code to show
    assert compose["foundry.block.emitted"] == 1
    child = dict(spans["event greeting_composed"].attributes)
    assert child["foundry.event.emitted_by"] == "Compose"
    assert child["foundry.event.throttled"] is True
    assert child["foundry.event.depth"] == 1


def test_failures_are_error_spans_with_their_reason():
    spans = by_name(chain())
    assert not spans["workflow greet_requested"].status_ok
    assert spans["workflow greet_requested"].error == "block 'Deliver' failed: boom"
    assert not spans["block Deliver"].status_ok
    assert spans["block Deliver"].error == "boom"
    assert spans["block Compose"].status_ok
    assert spans["block Compose"].error == ""
    ok = by_name(chain(state="completed", error=""))["workflow greet_requested"]
    assert ok.status_ok
    assert ok.error == ""
    long = by_name(chain(error="x" * 5000))["workflow greet_requested"]
    assert len(long.error) == 1024


def test_an_event_no_block_sinks_is_one_event_span():
    root = event(ROOT, "", "nobody_listens")
    [span] = spans_of(ChainEnded((root,), (), False, "completed", "", at(0)))
    assert span.name == "event nobody_listens"
    assert (span.trace_id, span.span_id, span.parent_span_id) == (TRACE, ROOT, "")


def test_unix_ns_is_exact_to_the_microsecond():
    assert unix_ns(datetime(1970, 1, 1, tzinfo=UTC)) == 0
    assert unix_ns(T0) == 1_796_126_400_123_456_000  # date -d 2026-12-01T12:00Z +%s
    elsewhere = T0.astimezone(timezone(timedelta(hours=-5)))  # the same instant
    assert unix_ns(elsewhere) == unix_ns(T0)


# --- spans of runs and step attempts ------------------------------------------------------------


def attempt(step_type: str = "llm", **extra: object) -> StepAttemptEnded:
    fields: dict[str, object] = dict(
        trace_id=TRACE, span_id=BLOCK_A, parent_span_id=ROOT, run_id="run_1", step_id="ask",
        step_type=step_type, attempt=1, error="", started_at=at(0), completed_at=at(20),
        model="mock:small", output={"text": "hi", "provider": "mock", "model": "small"},
        usage=(12, 34, 0.0021),
    )  # fmt: skip
    fields.update(extra)
    return StepAttemptEnded(**fields)  # type: ignore[arg-type]


def test_an_llm_step_attempt_carries_the_genai_conventions():
    [span] = spans_of(attempt())
    assert span.name == "chat small"
    assert span.kind == "client"
    assert (span.span_id, span.parent_span_id) == (BLOCK_A, ROOT)
    assert dict(span.attributes) == {
        "foundry.run.id": "run_1", "foundry.step.id": "ask", "foundry.step.type": "llm",
        "foundry.step.attempt": 1, "foundry.step.state": "succeeded",
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "mock", "gen_ai.system": "mock",
        "gen_ai.request.model": "small", "gen_ai.response.model": "small",
        "gen_ai.usage.input_tokens": 12, "gen_ai.usage.output_tokens": 34,
        "foundry.usage.cost": 0.0021,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("model", "provider", "name"),
    [("openai:gpt-4o-mini", "openai", "gpt-4o-mini"), ("gpt-4o", "", "gpt-4o"), ("", "", "")],
)
def test_a_failed_llm_attempt_names_what_it_asked_for(model, provider, name):
    [span] = spans_of(attempt(model=model, output=None, error="timed out", usage=(0, 0, 0.0)))
    attributes = dict(span.attributes)
    assert not span.status_ok
    assert span.error == "timed out"
    assert attributes["foundry.step.state"] == "failed"
    assert attributes.get("gen_ai.provider.name", "") == provider
    assert attributes.get("gen_ai.request.model", "") == name
    assert span.name == (f"chat {name}" if name else "chat")


def test_other_step_types_carry_no_genai_attributes():
    [span] = spans_of(attempt("transform", attempt=3))
    assert span.name == "step ask"
    assert span.kind == "internal"
    assert dict(span.attributes)["foundry.step.attempt"] == 3
    assert not [k for k, _ in span.attributes if k.startswith("gen_ai.")]


def test_a_run_is_the_root_span_of_its_trace():
    run = RunEnded(TRACE, ROOT, "", "run_1", "FAILED", "step ask failed", at(0), at(50), 2,
                   (("team", "otters"),))  # fmt: skip
    [span] = spans_of(run)
    assert (span.name, span.parent_span_id, span.status_ok) == ("run", "", False)
    assert span.error == "step ask failed"
    assert dict(span.attributes) == {
        "foundry.run.id": "run_1", "foundry.run.status": "FAILED", "foundry.run.steps": 2,
        "foundry.run.label.team": "otters",
    }  # fmt: skip
    [canceled] = spans_of(RunEnded(TRACE, ROOT, "", "run_1", "CANCELED", "", at(0), at(1), 1))
    assert canceled.error == "canceled"


# --- frames and the OTLP spans made of them ------------------------------------------------------


def test_frames_carry_span_records_and_stop_at_a_cut_frame():
    records = [span_record(s) for s in spans_of(chain())]
    stream = io.BytesIO(frame(records) + frame(records[:1]) + frame(records)[:-3])
    assert list(read_frames(stream)) == [records, records[:1]]


def test_a_chain_goes_as_one_record_of_fields_and_the_exporter_makes_its_spans():
    """The trio thread writes a chain as one chain record (no names, no attribute lists); read
    back in the exporter process, it is the same spans, next to plain span records."""
    step = next(spans_of(attempt()))
    items = [*wire_items(chain()), *wire_items(step)]
    assert len(items) == 2
    assert len(items[0]) == CHAIN_FIELDS
    assert all(type(v) in (str, int, float, bool) for e in items[0][0] for v in e)  # plain fields
    [read] = read_frames(io.BytesIO(frame(items)))
    assert list(span_records(read)) == [*records_of(chain()), span_record(step)]


def with_rows(ended: ChainEnded) -> ChainEnded:
    """The chain as the engine sends it: with the trace rows it made for the chain's file."""
    rows = trace_rows(ended.events, ended.executions, 9, workflow_id=ended.events[0].workflow_id,
                      state=ended.state, error=ended.error)  # fmt: skip
    return replace(ended, trace=rows)


def stamped() -> ChainEnded:
    """A root whose row carries the stamp its id hashes: 3 fraction digits on a millisecond."""
    moment = T0.replace(microsecond=250_000)
    root = replace(event(ROOT, CALLER, "greet_requested"), occurred_at=moment,
                   stamp=occurred_stamp(moment))  # fmt: skip
    assert root.stamp.endswith(":00.250+00:00")
    return chain(events=(root,), executions=())


def mixed() -> ChainEnded:
    """Events of other throttles and a block that ran a command that exited 0."""
    root = replace(event(ROOT, CALLER, "greet_requested"), throttle=Throttle.FULL)
    child = replace(event(CHILD, BLOCK_A, "greeting_composed", depth=1, parent_id=root.id,
                          emitted_by="Compose"), throttle=Throttle.DRY_RUN)  # fmt: skip
    return chain(
        events=(root, child),
        executions=(
            execution("Compose", BLOCK_A, root, (child,), ran_command=True, exit_code=0),
            execution("Deliver", BLOCK_B, child, started_at=at(6), completed_at=at(8)),
        ),
    )


@pytest.mark.parametrize(
    "ended",
    [
        chain(),
        mixed(),
        chain(state="completed", error=""),
        chain(error="x" * 5000),
        chain(events=(event(ROOT, "", "greet_requested"),), executions=()),
        stamped(),
    ],
    ids=["failed", "mixed", "completed", "long-error", "no-caller", "stamped"],
)
def test_a_workflow_goes_as_its_trace_rows_and_makes_the_same_spans(ended):
    """What the engine sends of a workflow (the trace rows of its file, sent as they are) is read
    back in the exporter process as the very spans its fields make: names, ids and parents,
    times to the nanosecond, attributes in order and type, statuses."""
    rowed = with_rows(ended)
    [item] = wire_items(rowed)
    assert len(item) == ROWS_FIELDS
    assert item[0] is rowed.trace  # as they are: nothing built on the trio thread
    [read] = read_frames(io.BytesIO(frame([item])))
    assert list(span_records(read)) == list(records_of(ended)) == list(records_of(rowed))
    assert list(records_of(ended)) == list(span_records(wire_items(ended)))  # the fields' path


def test_a_commits_trace_frames_go_as_they_are_and_make_each_workflows_spans():
    """What the store frames for its archivist when it commits workflows goes to the exporter as
    it is (one item for the commit), and makes the spans each workflow's fields make; a file
    framed as text (a chain a restart ended) makes none."""
    chains = [with_rows(chain()), with_rows(mixed()), with_rows(stamped())]
    blob = b"".join(
        [frame_file(f"/home/traces/{i}.json", c.trace) for i, c in enumerate(chains[:2])]
        + [frame_file("/home/traces/restarted.json", '{"events": []}')]
        + [frame_file("/home/traces/2.json", chains[2].trace)]
    )
    ends = (
        *(c.completed_at.timestamp() for c in chains[:2]),
        0.0,
        chains[2].completed_at.timestamp(),
    )
    stored = TracesStored(blob, ends)
    [item] = wire_items(stored)
    assert item[0] is blob  # as it is: nothing built on the trio thread
    [read] = read_frames(io.BytesIO(frame([item])))
    expected = [span for c in chains for span in records_of(replace(c, trace=None))]
    assert list(span_records(read)) == list(records_of(stored)) == expected
    assert len(expected) == sum(1 + len(c.events) - 1 + len(c.executions) for c in chains)


def test_a_chain_with_large_payloads_goes_as_its_fields_without_them():
    big = "x" * ROWS_BYTES
    root = replace(event(ROOT, CALLER, "greet_requested"), payload_json=f'{{"a":"{big}"}}')
    ended = with_rows(chain(events=(root,), executions=()))
    [item] = wire_items(ended)
    assert len(item) == CHAIN_FIELDS  # its fields, no payload
    assert len(frame([item])) < 1_000
    assert list(records_of(ended)) == list(records_of(replace(ended, trace=None)))
    loud = execution("Compose", BLOCK_A, root, raw_output=big, ran_command=True)
    [item] = wire_items(with_rows(chain(executions=(loud,))))  # a block's output counts too
    assert len(item) == CHAIN_FIELDS


def test_trace_row_times_come_back_exact_to_the_microsecond():
    rng = random.Random(14)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    moments = [T0, epoch, T0.replace(microsecond=0), T0.replace(microsecond=123_000)]
    moments += [epoch + timedelta(microseconds=rng.randrange(4 * 10**15)) for _ in range(5_000)]
    for moment in moments:
        assert stamp_ns(rfc3339(moment)) == stamp_ns(occurred_stamp(moment)) == unix_ns(moment)
    assert stamp_ns("2026-12-01T07:00:00.123456-05:00") == unix_ns(T0)  # another offset


def test_times_go_as_float_seconds_and_come_back_exact_to_the_microsecond():
    rng = random.Random(14)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    moments = [T0, epoch, datetime(2105, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)]
    moments += [epoch + timedelta(microseconds=rng.randrange(4 * 10**15)) for _ in range(20_000)]
    for moment in moments:
        root = replace(event(ROOT, CALLER, "t"), occurred_at=moment)
        ended = ChainEnded((root,), (), False, "completed", "", moment)
        [record] = records_of(ended)
        assert record[5] == record[6] == unix_ns(moment), moment


def test_the_exporter_runs_at_the_lowest_cpu_priority():
    """``SCHED_IDLE`` where there is one: a daemon thread that wakes takes the CPU at once."""
    code = (
        "import os; from foundry.kernel.edge.otel import lowest_priority; lowest_priority(); "
        "print(os.sched_getscheduler(0) == os.SCHED_IDLE, os.getpriority(os.PRIO_PROCESS, 0))"
    )
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, timeout=60)  # fmt: skip
    assert found.stdout.split() == ["True", "19"]


def encoded(*messages: TelemetryMessage, service: str = "foundry") -> ExportTraceServiceRequest:
    """The request the exporter sends for these messages' spans, as a collector decodes it."""
    batch = Batch(resource(service))
    for message in messages:
        for record in records_of(message):
            add_span(batch.spans, record)
    return ExportTraceServiceRequest.FromString(batch.request.SerializeToString())


def otlp_spans(request: ExportTraceServiceRequest) -> dict[str, Span]:
    [resource_spans] = request.resource_spans
    [scope_spans] = resource_spans.scope_spans
    return {s.name: s for s in scope_spans.spans}


def otlp_attributes(span: Span) -> dict[str, object]:
    return {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in span.attributes}


def test_a_record_becomes_an_otlp_span_with_our_ids_and_parent():
    request = encoded(chain(), attempt(), service="foundry-test")
    [resource_spans] = request.resource_spans
    found = {kv.key: kv.value.string_value for kv in resource_spans.resource.attributes}
    assert found["service.name"] == "foundry-test"
    assert resource_spans.scope_spans[0].scope.name == "foundry"
    spans = otlp_spans(request)
    deliver = spans["block Deliver"]
    assert (deliver.trace_id.hex(), deliver.span_id.hex()) == (TRACE, BLOCK_B)
    assert deliver.parent_span_id.hex() == CHILD
    assert deliver.flags & 0xFF == 0x01  # sampled
    assert deliver.flags & SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK  # and not remote
    assert not deliver.flags & SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK
    assert (deliver.status.code, deliver.status.message) == (Status.STATUS_CODE_ERROR, "boom")
    assert deliver.kind == Span.SPAN_KIND_INTERNAL
    assert (deliver.start_time_unix_nano, deliver.end_time_unix_nano) == (
        unix_ns(at(1)), unix_ns(at(5)),
    )  # fmt: skip
    assert spans["block Compose"].status.code == Status.STATUS_CODE_UNSET
    assert spans["workflow greet_requested"].parent_span_id.hex() == CALLER
    assert spans["workflow greet_requested"].flags & SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK
    assert spans["chat small"].kind == Span.SPAN_KIND_CLIENT
    no_parent = chain(events=(event(ROOT, "", "greet_requested"),), executions=())
    assert otlp_spans(encoded(no_parent))["workflow greet_requested"].parent_span_id == b""


def test_attributes_keep_their_types():
    spans = otlp_spans(encoded(chain(), attempt()))
    deliver = otlp_attributes(spans["block Deliver"])
    assert deliver["foundry.block.exit_code"] == 3
    assert deliver["foundry.block.throttled"] is True
    assert deliver["foundry.block.name"] == "Deliver"
    kinds = {kv.key: kv.value.WhichOneof("value") for kv in spans["chat small"].attributes}
    assert kinds["foundry.usage.cost"] == "double_value"
    assert kinds["gen_ai.usage.input_tokens"] == "int_value"
    assert kinds["foundry.step.type"] == "string_value"
    assert otlp_attributes(spans["chat small"])["foundry.usage.cost"] == 0.0021
    for name, span in spans.items():  # every record's attributes, none lost or renamed
        assert otlp_attributes(span) == dict(by_name_all(chain(), attempt())[name].attributes)


def test_equal_values_of_other_types_keep_their_types():
    values = (True, 1, 1.0, "1", False, 0, 0.0, "0")
    batch = Batch(resource("foundry"))
    for value in values:
        record = (TRACE, ROOT, "", "s", "internal", 1, 2, True, "", ("v",), (value,), False)
        add_span(batch.spans, record)
    found = [otlp_attributes(span)["v"] for span in batch.spans]
    assert [(type(v), v) for v in found] == [(type(v), v) for v in values]


def test_attributes_stay_right_as_their_encodings_come_and_go(monkeypatch):
    """Each new value is encoded in the holder kept for its name, and the encodings kept are
    dropped when too many: every span still carries its own values, of their own types."""
    monkeypatch.setattr(otel, "ENCODED_ATTRIBUTES", 3)
    monkeypatch.setattr(otel, "HOLDERS", 2)
    batch = Batch(resource("foundry"))
    values: list[tuple[object, ...]] = [(f"evt_{n}", n, n % 2 == 0, n / 4) for n in range(40)]
    for value in values:
        add_span(batch.spans, (TRACE, ROOT, "", "s", "internal", 1, 2, True, "",
                               ("id", "n", "even", "x"), value, False))  # fmt: skip
    request = ExportTraceServiceRequest.FromString(batch.request.SerializeToString())
    found = [tuple(otlp_attributes(span).values()) for span in otlp_spans_all(request)]
    assert found == values
    assert [type(v) for v in found[3]] == [str, int, bool, float]


def otlp_spans_all(request: ExportTraceServiceRequest) -> list[Span]:
    return [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]


def by_name_all(*messages: TelemetryMessage) -> dict[str, SpanEnded]:
    return {s.name: s for message in messages for s in spans_of(message)}


def test_the_spans_are_the_ones_the_sdk_would_encode():
    """Built straight from records, the spans match the SDK encoder's for the same span (but for
    the trace flags in ``flags``, which the SDK leaves out, and its empty unset status) — the
    workflow's parent, the caller's span, marked remote as the SDK marks a parent a propagator
    extracted (it was marked not remote)."""
    found = Resource.create({"service.name": "foundry"})
    remote = []
    for record in records_of(chain()):
        (trace_id, span_id, parent_id, name, kind, start, end, ok, error, names, values,
         remote_parent) = record  # fmt: skip
        remote.append(remote_parent)
        context = SpanContext(int(trace_id, 16), int(span_id, 16), False, TraceFlags(1))
        parent = SpanContext(int(trace_id, 16), int(parent_id, 16), remote_parent, TraceFlags(1))
        sdk_span = ReadableSpan(
            name=name, context=context, resource=found, kind=SpanKind.INTERNAL, parent=parent,
            attributes=dict(zip(names, values, strict=True)), start_time=start, end_time=end,
            status=Status_(StatusCode.UNSET if ok else StatusCode.ERROR, error or None),
            instrumentation_scope=InstrumentationScope("foundry"),
        )  # fmt: skip
        [[theirs]] = [s.spans for rs in encode_spans([sdk_span]).resource_spans
                      for s in rs.scope_spans]  # fmt: skip
        batch = Batch(resource("foundry"))
        add_span(batch.spans, record)
        [ours] = batch.spans
        ours.flags &= ~0xFF
        if theirs.status.code == Status.STATUS_CODE_UNSET:
            theirs.ClearField("status")  # the SDK sends an empty status: the same to a decoder
        assert ours == theirs, name
    assert remote == [True] + [False] * (len(remote) - 1)  # the workflow's, first


@pytest.mark.parametrize(
    ("trace_id", "span_id", "parent_id"),
    [("", ROOT, ""), (TRACE, "", ""), (TRACE[:-2], ROOT, ""), (TRACE, ROOT, "abc"),
     ("x" * 32, ROOT, "")],
)  # fmt: skip
def test_a_record_without_valid_ids_is_refused_and_adds_nothing(trace_id, span_id, parent_id):
    record = span_record(next(spans_of(attempt(trace_id=trace_id, span_id=span_id,
                                               parent_span_id=parent_id))))  # fmt: skip
    batch = Batch(resource("foundry"))
    with pytest.raises(ValueError, match="no valid trace context"):
        add_span(batch.spans, record)
    assert len(batch) == 0


def test_text_that_is_no_utf8_goes_replaced_and_the_span_is_whole():
    bad = "boom \udcff"  # a lone surrogate: what a badly decoded output may hold
    attributes = (("foundry.block.name", bad), ("foundry.block.attempts", 2))
    ended = SpanEnded(TRACE, ROOT, "", f"block {bad}", "internal", 1, 2, False, attributes, bad)
    batch = Batch(resource("foundry"))
    add_span(batch.spans, span_record(ended))
    request = ExportTraceServiceRequest.FromString(batch.request.SerializeToString())
    [span] = otlp_spans(request).values()
    assert span.name == "block boom ?"
    assert span.status.message == "boom ?"
    assert otlp_attributes(span) == {"foundry.block.name": "boom ?", "foundry.block.attempts": 2}


def test_an_http_endpoint_gets_the_traces_path_once():
    for endpoint in ("http://127.0.0.1:4318", "http://127.0.0.1:4318/",
                     "http://127.0.0.1:4318/v1/traces"):  # fmt: skip
        transport = open_transport({"endpoint": endpoint, "protocol": "http/protobuf",
                                    "timeout": 1.0})  # fmt: skip
        try:
            assert transport._endpoint == "http://127.0.0.1:4318/v1/traces"  # type: ignore[attr-defined]
        finally:
            transport.shutdown()


# --- the exporter's queue ------------------------------------------------------------------------


class Collecting:
    """A fake collector: keeps the requests it gets, or refuses them, or fails; ``gate`` holds
    each send."""

    def __init__(self, result: bool = True, error: Exception | None = None) -> None:
        self.result, self.error = result, error
        self.requests: list[ExportTraceServiceRequest] = []
        self.gate = threading.Event()
        self.gate.set()

    def send(self, request: ExportTraceServiceRequest) -> bool:
        self.gate.wait(10)
        self.requests.append(ExportTraceServiceRequest.FromString(request.SerializeToString()))
        if self.error:
            raise self.error
        return self.result

    def shutdown(self) -> None:
        pass

    @property
    def got(self) -> list[Span]:
        return [s for r in self.requests for rs in r.resource_spans for ss in rs.scope_spans
                for s in ss.spans]  # fmt: skip


def records(count: int) -> list[SpanRecord]:
    one = span_record(by_name(chain())["block Compose"])
    return [one] * count


def exporting(collector: Collecting, queue_size: int = 100) -> Export:
    return Export(collector, "http://collector", queue_size, resource("foundry"))


def test_every_span_is_exported_and_counted():
    collector = Collecting()
    export = exporting(collector)
    export.add(records(50))
    export.close(5.0)
    assert (len(collector.got), export.exported, export.dropped, export.failed) == (50, 50, 0, 0)
    assert export.waiting == export.sending == 0


def test_spans_go_out_in_batches_and_without_waiting_for_the_close(monkeypatch):
    monkeypatch.setattr(otel, "BATCH_SIZE", 16)
    collector = Collecting()
    export = exporting(collector)
    export.add(records(40))  # two full batches and a part, which goes when its time is up
    wait_until(lambda: len(collector.got) == 40, what=lambda: f"{len(collector.got)} spans",
               timeout=5 * otel.SCHEDULE_DELAY + 5)  # fmt: skip
    assert sorted(len(r.resource_spans[0].scope_spans[0].spans) for r in collector.requests) == [
        8, 16, 16,
    ]  # fmt: skip
    export.close(5.0)
    assert export.exported == 40


def test_batches_go_out_while_a_long_frame_is_still_being_read(monkeypatch):
    """The sender does not wait for the reader to finish a frame (of thousands of spans): halfway
    through the frame, the reader waits until a batch has gone out (it would wait in vain if
    the sender could not send meanwhile)."""
    monkeypatch.setattr(otel, "BATCH_SIZE", 64)
    collector = Collecting()
    export = exporting(collector, queue_size=20_000)

    def frame() -> Iterator[SpanRecord]:
        yield from records(10_000)
        wait_until(lambda: collector.requests, what="a batch sent while the frame is read")
        yield from records(10_000)

    export.add(frame())
    export.close(10.0)
    assert export.exported == 20_000


def test_a_full_queue_drops_new_spans_counts_them_and_warns_once(caplog):
    collector = Collecting()
    collector.gate.clear()  # the collector hangs: nothing leaves the queue
    export = exporting(collector, queue_size=8)
    with caplog.at_level(logging.WARNING, logger="foundry.otel"):
        for _ in range(30):
            export.add(records(1))
    assert export.dropped >= 30 - 8 - 8  # at most a batch (8) in the collector's hands
    assert export.waiting <= 8
    warnings = [r.getMessage() for r in caplog.records if r.name == "foundry.otel"]
    assert len(warnings) == 1
    assert "http://collector" in warnings[0]
    collector.gate.set()
    export.close(5.0)
    assert export.exported + export.dropped == 30


@pytest.mark.parametrize("collector", [Collecting(False), Collecting(error=OSError("refused"))],
                         ids=["refused", "raised"])  # fmt: skip
def test_a_failing_collector_loses_batches_counted_and_warned_about_once(caplog, collector):
    export = exporting(collector)
    with caplog.at_level(logging.WARNING, logger="foundry.otel"):
        for sent in (10, 20, 30):
            export.add(records(10))
            wait_until(lambda n=sent: export.failed == n, what=lambda: f"{export.failed} failed")
    export.close(5.0)
    assert (export.exported, export.failed) == (0, 30)
    warnings = [r.getMessage() for r in caplog.records if r.name == "foundry.otel"]
    assert len(warnings) == 1
    if collector.error:
        assert "OSError: refused" in warnings[0]


def test_records_without_trace_ids_are_skipped_and_counted():
    collector = Collecting()
    export = exporting(collector)
    no_ids = span_record(next(spans_of(attempt(trace_id="", span_id="", parent_span_id=""))))
    export.add([no_ids, *records(2), no_ids])
    export.close(5.0)
    assert (export.exported, export.invalid, len(collector.got)) == (2, 2, 2)


# --- the senders' side ---------------------------------------------------------------------------


def test_an_outbox_never_waits_it_drops_and_counts(caplog):
    send, receive = trio.open_memory_channel[TelemetryMessage](2)
    outbox = SpanOutbox(send)
    message = next(spans_of(attempt()))
    with caplog.at_level(logging.WARNING, logger="foundry.telemetry"):
        for _ in range(5):
            outbox.offer(message)
    assert outbox.dropped == 3
    assert len([r for r in caplog.records if "dropping spans" in r.getMessage()]) == 1
    assert receive.receive_nowait() is message
    outbox.close()
    outbox.offer(message)  # after the close: quietly nothing
    assert outbox.dropped == 3
    receive.close()


def test_an_outbox_without_a_channel_is_off():
    outbox = SpanOutbox()
    assert not outbox.on
    outbox.offer(next(spans_of(attempt())))
    outbox.close()
    assert outbox.dropped == 0


# --- configuration -------------------------------------------------------------------------------


def test_otel_is_off_by_default_and_reads_its_table():
    assert Config().otel.endpoint == ""
    otel = Config.from_mapping(
        {"otel": {"endpoint": "https://collector.example:4318", "protocol": "grpc",
                  "service_name": "foundry-eu", "queue_size": 100, "timeout": 2}}
    ).otel  # fmt: skip
    assert (otel.endpoint, otel.protocol, otel.service_name) == (
        "https://collector.example:4318", "grpc", "foundry-eu",
    )  # fmt: skip
    assert (otel.queue_size, otel.timeout) == (100, 2.0)


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"endpoint": "collector:4318"}, "[otel].endpoint"),
        ({"endpoint": "http://"}, "[otel].endpoint"),
        ({"endpoint": "http://c:4318/?token=x"}, "[otel].endpoint"),
        ({"endpoint": "http://c:70000"}, "[otel].endpoint"),
        ({"endpoint": "https://user:secret@c:4318"}, "[otel].endpoint"),
        ({"endpoint": 4318}, "[otel].endpoint"),
        ({"protocol": "http/json"}, "[otel].protocol"),
        ({"service_name": ""}, "[otel].service_name"),
        ({"queue_size": -1}, "[otel].queue_size"),
        ({"timeout": 0}, "[otel].timeout"),
        ({"headers": {"a": "b"}}, "[otel].headers"),
    ],
)
def test_a_bad_otel_table_names_its_key(table, key):
    with pytest.raises(ConfigError, match=f"^<mapping>: {key.replace('[', '.').replace(']', '.')}"):
        Config.from_mapping({"otel": table})


@pytest.mark.parametrize("endpoint", ["http://c:4318?token=SECRETQ", "https://c:4318/#SECRETQ"])
def test_an_otel_endpoint_with_a_query_is_refused_for_that_and_not_quoted(endpoint):
    with pytest.raises(ConfigError) as refused:
        Config.from_mapping({"otel": {"endpoint": endpoint}})
    assert "no query or fragment in the URL" in str(refused.value)
    assert "SECRETQ" not in str(refused.value)  # the log is no place for a token


def test_canary_the_private_exporter_parts_otel_py_relies_on_are_there():
    """kernel/edge/otel.py hands the SDK's exporters requests it built: through the HTTP
    exporter's ``_client`` and the gRPC one's ``_translate_data``/``_count_data``/``_export``.
    If an SDK upgrade moves them, this names what moved."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
        OTLPSpanExporter as GrpcExporter,
    )
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    http = OTLPSpanExporter(endpoint="http://127.0.0.1:9/v1/traces")
    assert callable(getattr(http, "_client").export)  # noqa: B009 - named for the canary
    for name in ("_translate_data", "_count_data", "_export"):
        assert callable(getattr(GrpcExporter, name, None)), name


def test_long_names_and_texts_are_cut_so_waiting_spans_stay_small():
    huge = "e" * 3_000_000  # an event type or a label: megabytes, as a client may send
    attributes = ((f"foundry.run.label.{huge}", huge), ("foundry.event.type", huge),
                  ("foundry.block.attempts", 2))  # fmt: skip
    ended = SpanEnded(TRACE, ROOT, "", f"block {huge}", "internal", 1, 2, True, attributes, "")
    batch = Batch(resource("foundry"))
    add_span(batch.spans, span_record(ended))
    [span] = batch.spans
    assert span.ByteSize() < 5 * otel.TEXT_CHARS
    assert span.name == f"block {huge}"[: otel.TEXT_CHARS]
    found = otlp_attributes(span)
    assert found[f"foundry.run.label.{huge}"[: otel.TEXT_CHARS]] == huge[: otel.TEXT_CHARS]
    assert found["foundry.event.type"] == huge[: otel.TEXT_CHARS]
    assert found["foundry.block.attempts"] == 2
    assert not any(huge in name or huge == value for name, _, value in otel._ENCODED)  # not kept


def test_a_span_of_many_long_labels_keeps_those_that_fit_and_counts_the_rest():
    labels = tuple((f"foundry.run.label.{n:04}", "v" * 1_024) for n in range(3_500))
    attributes = (("foundry.run.id", "r1"), *labels)  # 3,500 labels fit in one CreateRun
    ended = SpanEnded(TRACE, ROOT, "", "run", "internal", 1, 2, True, attributes, "")
    batch = Batch(resource("foundry"))
    add_span(batch.spans, span_record(ended))
    [span] = batch.spans
    kept = len(span.attributes)
    assert kept == otel.FEW_ATTRIBUTES  # the first always go; past them, the budget is spent
    assert span.dropped_attributes_count == len(attributes) - kept
    assert span.ByteSize() < 2 * otel.SPAN_TEXT_CHARS
    assert otlp_attributes(span)["foundry.run.id"] == "r1"  # the first ones are kept


def test_many_short_labels_go_until_their_text_reaches_the_spans_budget():
    attributes = tuple((f"foundry.run.label.{n:04}", "v" * 100) for n in range(2_000))
    ended = SpanEnded(TRACE, ROOT, "", "run", "internal", 1, 2, True, attributes, "")
    batch = Batch(resource("foundry"))
    add_span(batch.spans, span_record(ended))
    [span] = batch.spans
    per_label = len(attributes[0][0]) + 100
    assert len(span.attributes) == otel.SPAN_TEXT_CHARS // per_label
    assert span.dropped_attributes_count == 2_000 - len(span.attributes)


def test_a_collectors_answer_is_read_bounded_in_bytes_and_in_time(monkeypatch):
    """requests read a collector's answer whole (200 MB: the exporter at 450 MB) and gave the
    timeout to each read alone (an answer trickled a byte a second held the export for good:
    its body, then — a hunt — its headers)."""
    import time as clock
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Answering(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            self.rfile.read(int(self.headers["Content-Length"]))
            huge = self.path == "/huge"
            if self.path.endswith("/slow-headers"):  # a status line, then a header bytewise
                self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                with contextlib.suppress(OSError):
                    for _ in range(1_000):
                        self.wfile.write(b"z")
                        self.wfile.flush()
                        clock.sleep(0.1)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(200 << 20 if huge else 1_000))
            self.end_headers()
            try:
                if huge:
                    for _ in range(200):
                        self.wfile.write(b"x" * (1 << 20))
                else:
                    for _ in range(1_000):  # a byte every 0.1 s: 100 s in all
                        self.wfile.write(b"y")
                        self.wfile.flush()
                        clock.sleep(0.1)
            except OSError:  # the exporter went on without the rest: as it should
                pass

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Answering)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with otel.BoundedSession() as session:
            started = clock.monotonic()
            big = session.post(f"{base}/huge", data=b"spans", timeout=5.0)
            assert (big.status_code, len(big.content)) == (200, otel.REPLY_BYTES)
            slow = session.post(f"{base}/slow", data=b"spans", timeout=1.0)
            assert slow.status_code == 200
            assert 0 < len(slow.content) < 30
            assert clock.monotonic() - started < 4
            started = clock.monotonic()  # the headers too: urllib3 read them for good
            with pytest.raises(requests.RequestException):  # not the 200 it began
                session.post(f"{base}/slow-headers", data=b"spans", timeout=1.0)
            assert clock.monotonic() - started < 3
        for name in ("NO_PROXY", "no_proxy", "http_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", base)  # requests makes a proxy's connections apart
        with otel.BoundedSession() as session:
            started = clock.monotonic()
            with pytest.raises(requests.RequestException):
                session.post("http://collector.invalid/slow-headers", data=b"s", timeout=1.0)
            assert clock.monotonic() - started < 3
    finally:
        server.shutdown()
        server.server_close()
