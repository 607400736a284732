"""Spans from what the engine and the scheduler recorded: pure functions, no I/O.

A chain is one trace (``core.tracecontext``): the workflow span is the root event's span (from
the root's occurrence to the chain's end), each event a span (zero length, child of the block
execution that emitted it), each block execution a span (child of its trigger event's span); the
exporter process makes them of a chain's trace rows or fields (``messages.rows_spans``,
``chain_spans``). A FleetForge run is a trace: its span, and a span per step attempt under it.
``llm`` step attempts carry the OpenTelemetry GenAI semantic conventions.

Attribute names: ``foundry.*`` for ours, ``gen_ai.*`` as the conventions spell them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from foundry.kernel.actors.telemetry.messages import (
    ERROR_CHARS,
    AttributeValue,
    ChainEnded,
    RunEnded,
    SpanEnded,
    SpanRecord,
    StepAttemptEnded,
    TelemetryMessage,
    TracesStored,
    WireItem,
    chain_item,
    span_record,
    span_records,
)
from foundry.kernel.core.records import storable

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
LLM_STEP = "llm"


def unix_ns(moment: datetime) -> int:
    """Nanoseconds since the Unix epoch of an aware datetime (exact to the microsecond)."""
    return (moment - EPOCH) // _MICROSECOND * 1_000


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
        ("foundry.step.state", _step_state(step)),
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


def _step_state(step: StepAttemptEnded) -> str:
    if step.canceled:
        return "canceled"
    return "failed" if step.error else "succeeded"


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


def wire_items(message: TelemetryMessage) -> Iterator[WireItem]:
    """What the actor writes of a message for the exporter process: a chain as one item, its
    trace rows or its fields (the exporter makes its spans), any other span as its record."""
    if isinstance(message, ChainEnded):
        yield chain_item(message)
    elif isinstance(message, TracesStored):
        yield message.frames, message.completed
    else:
        yield from records_of(message)


def records_of(message: TelemetryMessage) -> Iterator[SpanRecord]:
    """Whatever a sender told the actor, as the span records the exporter process exports."""
    if isinstance(message, ChainEnded):
        yield from span_records((chain_item(message),))
    elif isinstance(message, TracesStored):
        yield from span_records(((message.frames, message.completed),))
    elif isinstance(message, SpanEnded):
        yield span_record(message)
    elif isinstance(message, StepAttemptEnded):
        yield span_record(step_attempt_span(message))
    else:
        yield span_record(run_span(message))
