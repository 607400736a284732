"""Spans from what the engine and the scheduler recorded: pure functions, no I/O.

A chain is one trace (``core.tracecontext``): the workflow span is the root event's span (from
the root's occurrence to the chain's end), each event a span (zero length, child of the block
execution that emitted it), each block execution a span (child of its trigger event's span). A
FleetForge run is a trace: its span, and a span per step attempt under it. ``llm`` step attempts
carry the OpenTelemetry GenAI semantic conventions.

Attribute names: ``foundry.*`` for ours, ``gen_ai.*`` as the conventions spell them. (A
throttle's text is ``str(throttle)``: a third of the cost of ``.value``, per span.)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from foundry.kernel.actors.telemetry.messages import (
    AttributeValue,
    ChainEnded,
    RunEnded,
    SpanEnded,
    SpanRecord,
    StepAttemptEnded,
    TelemetryMessage,
    span_record,
)
from foundry.kernel.core.records import Event, ExecutionRecord, storable

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
ERROR_CHARS = 1_024  # of an error text a span's status carries
LLM_STEP = "llm"


def unix_ns(moment: datetime) -> int:
    """Nanoseconds since the Unix epoch of an aware datetime (exact to the microsecond)."""
    return (moment - EPOCH) // _MICROSECOND * 1_000


# The attributes of a chain's spans, by kind: one tuple of names each, shared by all its spans.
WORKFLOW_ATTRIBUTES = (
    "foundry.workflow.id", "foundry.workflow.type", "foundry.workflow.state", "foundry.project",
    "foundry.throttle", "foundry.workflow.events", "foundry.workflow.block_executions",
)  # fmt: skip
EVENT_ATTRIBUTES = (
    "foundry.event.id", "foundry.event.type", "foundry.project", "foundry.throttle",
    "foundry.workflow.id", "foundry.event.depth",
)  # fmt: skip
EMITTED_ATTRIBUTES = (*EVENT_ATTRIBUTES, "foundry.event.emitted_by", "foundry.event.throttled")
EXECUTION_ATTRIBUTES = (
    "foundry.block.name", "foundry.block.state", "foundry.block.attempts",
    "foundry.block.throttled", "foundry.throttle", "foundry.event.id", "foundry.event.type",
    "foundry.workflow.id", "foundry.block.emitted",
)  # fmt: skip
COMMAND_ATTRIBUTES = (*EXECUTION_ATTRIBUTES, "foundry.block.exit_code")


def chain_records(chain: ChainEnded) -> Iterator[SpanRecord]:
    """The spans of a finished chain: its workflow (or, for an event no block sinks, that
    event), then every other event and every block execution. Made straight into records (no
    ``SpanEnded`` between): a chain's spans are most of what is exported, on the trio thread."""
    root, *emitted = chain.events
    yield workflow_record(root, chain) if chain.is_workflow else event_record(root)
    yield from map(event_record, emitted)
    yield from map(execution_record, chain.executions)


def workflow_record(root: Event, chain: ChainEnded) -> SpanRecord:
    failed = chain.state == "failed"
    values = (
        root.id, root.event_type, chain.state, root.project, str(root.throttle),
        len(chain.events), len(chain.executions),
    )  # fmt: skip
    return (
        root.trace_id, root.span_id, root.parent_span_id, f"workflow {root.event_type}",
        "internal", unix_ns(root.occurred_at), unix_ns(chain.completed_at), not failed,
        chain.error[:ERROR_CHARS] if failed else "", WORKFLOW_ATTRIBUTES, values,
    )  # fmt: skip


def event_record(event: Event) -> SpanRecord:
    """An event: a point in time, child of the block execution that emitted it."""
    at = unix_ns(event.occurred_at)
    values: tuple[AttributeValue, ...] = (
        event.id, event.event_type, event.project, str(event.throttle), event.workflow_id,
        event.depth,
    )  # fmt: skip
    names: tuple[str, ...] = EVENT_ATTRIBUTES
    if event.emitted_by:
        names, values = EMITTED_ATTRIBUTES, (*values, event.emitted_by, event.throttled)
    return (
        event.trace_id, event.span_id, event.parent_span_id, f"event {event.event_type}",
        "internal", at, at, True, "", names, values,
    )  # fmt: skip


def execution_record(record: ExecutionRecord) -> SpanRecord:
    """A block's execution on one event, all its attempts; child of the trigger's span. The
    exit code is there when the block ran a command (as the trace file's is not null)."""
    trigger = record.trigger
    values: tuple[AttributeValue, ...] = (
        record.block_name, record.state, record.attempts, record.throttled,
        str(trigger.throttle), trigger.id, trigger.event_type, record.workflow_id,
        len(record.emitted),
    )  # fmt: skip
    names: tuple[str, ...] = EXECUTION_ATTRIBUTES
    if record.ran_command:
        names, values = COMMAND_ATTRIBUTES, (*values, record.exit_code)
    return (
        trigger.trace_id, record.span_id, trigger.span_id, f"block {record.block_name}",
        "internal", unix_ns(record.started_at), unix_ns(record.completed_at), record.success,
        "" if record.success else record.summary[:ERROR_CHARS], names, values,
    )  # fmt: skip


def run_span(run: RunEnded) -> SpanEnded:
    failed = run.status != "SUCCEEDED"
    return SpanEnded(
        trace_id=run.trace_id,
        span_id=run.span_id,
        parent_span_id=run.parent_span_id,
        name="run",
        kind="internal",
        start_ns=unix_ns(run.created_at),
        end_ns=unix_ns(run.completed_at),
        status_ok=not failed,
        attributes=(
            ("foundry.run.id", run.run_id),
            ("foundry.run.status", run.status),
            ("foundry.run.steps", run.steps),
            *((f"foundry.run.label.{key}", value) for key, value in run.labels),
        ),
        error=storable((run.error or run.status.lower())[:ERROR_CHARS]) if failed else "",
    )


def step_attempt_span(step: StepAttemptEnded) -> SpanEnded:
    """A step attempt; an ``llm`` step's is named and attributed as the GenAI conventions ask
    (``chat <model>``, a client span)."""
    attributes: list[tuple[str, AttributeValue]] = [
        ("foundry.run.id", step.run_id),
        ("foundry.step.id", step.step_id),
        ("foundry.step.type", step.step_type),
        ("foundry.step.attempt", step.attempt),
        ("foundry.step.state", "failed" if step.error else "succeeded"),
    ]
    name, kind = f"step {step.step_id}", "internal"
    if step.step_type == LLM_STEP:
        provider, model = llm_names(step.model, step.output)
        attributes += genai_attributes(provider, model, step.usage)
        name, kind = f"chat {model}" if model else "chat", "client"
    return SpanEnded(
        trace_id=step.trace_id,
        span_id=step.span_id,
        parent_span_id=step.parent_span_id,
        name=name,
        kind=kind,
        start_ns=unix_ns(step.started_at),
        end_ns=unix_ns(step.completed_at),
        status_ok=not step.error,
        attributes=tuple(attributes),
        error=storable(step.error[:ERROR_CHARS]),  # an exception's text: UTF-8 for OTLP
    )


def llm_names(requested: str, output: Any) -> tuple[str, str]:
    """(provider, model) of an llm step: what its output says it used, else what it asked for
    (``provider:model`` or a bare model name; "" where unknown)."""
    if isinstance(output, Mapping):
        provider, model = output.get("provider"), output.get("model")
        if isinstance(provider, str) and isinstance(model, str):
            return provider, model
    provider, sep, model = requested.partition(":")
    return (provider, model) if sep else ("", requested)


def genai_attributes(
    provider: str, model: str, usage: tuple[int, int, float]
) -> list[tuple[str, AttributeValue]]:
    """The OpenTelemetry GenAI semantic conventions of one chat completion. Both the current
    ``gen_ai.provider.name`` and the older ``gen_ai.system`` name the provider; the cost is ours
    (the conventions define none)."""
    tokens_in, tokens_out, cost = usage
    found: list[tuple[str, AttributeValue]] = [("gen_ai.operation.name", "chat")]
    if provider:
        found += [("gen_ai.provider.name", provider), ("gen_ai.system", provider)]
    if model:
        found += [("gen_ai.request.model", model), ("gen_ai.response.model", model)]
    found += [
        ("gen_ai.usage.input_tokens", tokens_in),
        ("gen_ai.usage.output_tokens", tokens_out),
        ("foundry.usage.cost", float(cost)),
    ]
    return found


def records_of(message: TelemetryMessage) -> Iterator[SpanRecord]:
    """Whatever a sender told the actor, as span records for the exporter process."""
    if isinstance(message, ChainEnded):
        yield from chain_records(message)
    elif isinstance(message, SpanEnded):
        yield span_record(message)
    elif isinstance(message, StepAttemptEnded):
        yield span_record(step_attempt_span(message))
    else:
        yield span_record(run_span(message))
