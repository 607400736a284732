"""The ``foundry.Foundry`` service: translate the request, ask an actor, translate the answer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Mapping, Sequence
from contextlib import aclosing
from functools import partial
from typing import Any

from foundry.kernel.actors.engine.messages import (
    Emit,
    Emitted,
    GetStatus,
    GetTrace,
    WorkflowView,
)
from foundry.kernel.actors.messages import Mailboxes
from foundry.kernel.actors.tap.messages import Overflow, Subscribe
from foundry.kernel.core.ids import payload_json_of, rfc3339
from foundry.kernel.core.json_input import json_values_past, parse_json_object
from foundry.kernel.core.status_query import status_query
from foundry.kernel.core.throttle import Throttle
from foundry.kernel.core.trace_format import readable
from foundry.kernel.core.tracecontext import (
    TraceContextError,
    caller_traceparent,
    given_context,
    is_span_id,
    is_trace_id,
)
from foundry.kernel.edge.grpc.bridge import QueueSink, in_worker_thread, payload_bytes
from foundry.kernel.edge.grpc.internals import send_frames
from foundry.kernel.edge.grpc.off_loop import reply_off_loop
from foundry.kernel.edge.grpc.server import ask, served_by
from foundry.kernel.edge.grpc.upb_encode import encode
from foundry.kernel.edge.shared_replies import PROTO, SHARED_REPLIES
from foundry.proto import foundry_api as api
from grpclib import GRPCError
from grpclib.const import Handler, Status
from grpclib.server import Stream

THROTTLE_FROM_WIRE = {
    api.Throttle.FULL: Throttle.FULL,
    api.Throttle.AUDIT_ONLY: Throttle.AUDIT_ONLY,
    api.Throttle.DRY_RUN: Throttle.DRY_RUN,
}
THROTTLE_TO_WIRE = {v.value: k for k, v in THROTTLE_FROM_WIRE.items()}


class FoundryService(api.FoundryBase):
    def __init__(self, mailboxes: Mailboxes) -> None:
        self._mail = mailboxes

    async def emit(
        self, message: api.EmitRequest, traceparents: Sequence[str] = ()
    ) -> api.EmitResponse:
        """``traceparents``: the call's ``traceparent`` headers (``adopt_caller_context``)."""
        if traceparents:
            adopt_caller_context(message, traceparents)
        if len(message.payload_json) < PAYLOAD_PARSED_ON_LOOP:
            request = parse_emit(message)
        else:  # (parsed, checked and written as stored: ~0.4 µs a byte, 4 MB held the loop 1.5 s)
            request = await in_worker_thread(parse_emit, message, True, heavy=True)
        emitted: Emitted = await self._ask_engine(request)
        return api.EmitResponse(event_id=emitted.event_id, workflow_id=emitted.workflow_id)

    async def status(self, message: api.StatusRequest) -> api.StatusResponse:
        query = status_query(message.project, message.state, message.limit)
        views = await self._ask_engine(lambda r: GetStatus(message.workflow_id, r, query))
        return api.StatusResponse(workflows=[_workflow_status(v) for v in views])

    async def trace(self, message: api.TraceRequest) -> api.TraceResponse:
        if not message.event_id:
            raise GRPCError(Status.INVALID_ARGUMENT, "event_id: the root event id is required")
        document = await self._ask_engine(lambda r: GetTrace(message.event_id, r))
        if document is None:
            return api.TraceResponse(found=False)
        document = readable(document)  # nulls of a block that ran no command: "" and 0
        if _trace_is_large(document):
            return await reply_off_loop(partial(_trace_reply, document))
        return _trace_reply(document)

    async def watch(self, message: api.WatchRequest) -> AsyncGenerator[api.WatchResponse, None]:
        """The object-API form, for the HTTP edge (Connect, gRPC-Web, WebSocket): the stream of
        :meth:`watch_batches`, as messages. grpclib's route is :meth:`_serve_watch`."""
        async with aclosing(self.watch_batches(message)) as batches:
            async for batch in batches:
                for response in batch:
                    yield response

    async def watch_batches(
        self, message: api.WatchRequest
    ) -> AsyncGenerator[list[api.WatchResponse], None]:
        """The events of the watched project as they are recorded, a batch of replies (each
        made once for all its watchers) for what the subscription had waiting."""
        project = message.project or None
        sink = QueueSink()
        try:  # (a Watch cancelled while it subscribed left its subscription taking events)
            await ask(self._mail.tap, lambda r: Subscribe("events", project, r, sink))
            while batch := await sink.batch():
                replies: list[api.WatchResponse] = []
                for item in batch:
                    if isinstance(item, Overflow):
                        if replies:  # what came before it is still sent
                            yield replies
                        raise _cut_off(item)
                    # (an event's id names it: its text, time and project are hashed)
                    key, make = (item.id, item.workflow_id), partial(watch_response, item)
                    replies.append(SHARED_REPLIES.reply(key, payload_bytes(item), make))
                yield replies
            # The broker closed the subscription: the daemon is stopping. A stream that ended OK
            # could not be told from one its client meant to end.
            raise GRPCError(Status.UNAVAILABLE, STOPPING)
        finally:
            sink.close()

    async def _serve_watch(self, stream: Stream[api.WatchRequest, api.WatchResponse]) -> None:
        """grpclib's route for Watch: :meth:`watch_batches`, each batch in one HTTP/2 write
        (an event's encoding shared by its watchers), closed however the call ends.

        The generated route iterates a generator without closing it: a watcher that stopped
        reading and then went away left it suspended at a ``yield``, its subscription taking
        events until 10,000 were buffered, held for good (~1 GB a watcher of 1 MB events).
        After each batch the watcher lets the loop's other work run: 40 watchers of a chain of
        9,000 events, each sending its whole backlog an event at a time, held every other
        client (a Status took 12 s)."""
        request = await stream.recv_message()
        assert request is not None
        await stream.send_initial_metadata()
        async with aclosing(self.watch_batches(request)) as batches:
            async for batch in batches:
                await send_frames(stream, [SHARED_REPLIES.encoded(r, PROTO, encode) for r in batch])
                await asyncio.sleep(0)

    async def _serve_emit(self, stream: Stream[api.EmitRequest, api.EmitResponse]) -> None:
        """grpclib's route for Emit: the generated one, with the call's ``traceparent``
        metadata (the generated route hands the handler the message alone)."""
        request = await stream.recv_message()
        assert request is not None
        await stream.send_message(await self.emit(request, _traceparents(stream)))

    def __mapping__(self) -> dict[str, Handler]:
        mapping = served_by(super().__mapping__(), WATCH, self._serve_watch)
        return served_by(mapping, EMIT, self._serve_emit)

    async def _ask_engine(self, build: Any) -> Any:
        return await ask(self._mail.engine, build)


def _traceparents(stream: Stream[Any, Any]) -> tuple[str, ...]:
    """The call's ``traceparent`` metadata values (a text key: no bytes among them)."""
    if stream.metadata is None:
        return ()
    return tuple(v for v in stream.metadata.getall("traceparent", ()) if isinstance(v, str))


def _cut_off(overflow: Overflow) -> GRPCError:
    """RESOURCE_EXHAUSTED for a watcher that fell too far behind."""
    behind = (f"{overflow.payload_bytes >> 20} MB of payloads waiting"
              if overflow.payload_bytes
              else f"{overflow.buffered} events")  # fmt: skip
    return GRPCError(
        Status.RESOURCE_EXHAUSTED,
        f"watcher fell behind by more than {behind} and was cut off; "
        "reconnect, and use Trace to fill the gap",
    )


def watch_response(item: Any) -> api.WatchResponse:
    """An event as Watch sends it."""
    return api.WatchResponse(
        event_id=item.id,
        event_type=item.event_type,
        project=item.project,
        payload_json=item.payload_json,
        trace_id=item.trace_id,
        span_id=item.span_id,
        parent_span_id=item.parent_span_id,
        throttle=api.Throttle(THROTTLE_TO_WIRE[item.throttle.value]),
        throttled=item.throttled,
        workflow_id=item.workflow_id,
        occurred_at=item.stamp or rfc3339(item.occurred_at),
    )


WATCH = "/foundry.Foundry/Watch"
EMIT = "/foundry.Foundry/Emit"
STOPPING = "the daemon is shutting down; watch again once it is back"


# An Emit whose payload_json is this long or longer is parsed on a worker thread.
PAYLOAD_PARSED_ON_LOOP = 64 * 1024


def parse_emit(message: api.EmitRequest, stored_form: bool = False) -> Any:
    """Validate an EmitRequest — betterproto2's (the HTTP edge) or upb's (gRPC:
    ``fastproto.decode_emit_request``), read by the same field names; returns a builder of the
    engine's Emit message (plain values: no message object goes to the engine), with the
    payload as stored if ``stored_form``."""
    if not message.event_type:
        raise GRPCError(Status.INVALID_ARGUMENT, "event_type: must not be empty")
    for name, text in (("event_type", message.event_type), ("project", message.project)):
        if "\0" in text:  # a shell block gets both in its environment, which cannot hold one
            raise GRPCError(Status.INVALID_ARGUMENT, f"{name}: holds a NUL character")
    try:
        throttle = THROTTLE_FROM_WIRE[api.Throttle(message.throttle)]
    except (ValueError, KeyError):
        raise GRPCError(
            Status.INVALID_ARGUMENT, f"throttle: unknown value {int(message.throttle)}"
        ) from None
    payload = parse_payload(message.payload_json)
    try:
        span = given_context(message.trace_id, message.span_id, message.parent_span_id)
    except TraceContextError as exc:
        raise GRPCError(Status.INVALID_ARGUMENT, str(exc)) from None
    event_type, project = message.event_type, message.project
    stored = payload_json_of(payload) if stored_form else None
    return lambda reply: Emit(event_type, project, throttle, payload, reply, span, stored)


def adopt_caller_context(message: api.EmitRequest, traceparents: Sequence[str]) -> None:
    """An Emit that names no trace context of its own (``trace_id``, ``span_id``,
    ``parent_span_id``: they win) takes its caller's ``traceparent`` header's: the chain joins
    the caller's trace, under the caller's span, as an OpenTelemetry-instrumented client sends
    its context (DESIGN.md: W3C end to end). A header that is not valid is ignored."""
    if message.trace_id or message.span_id or message.parent_span_id:
        return
    caller = caller_traceparent(traceparents)
    if caller is not None:
        message.trace_id, message.parent_span_id = caller


def parse_payload(payload_json: str) -> Mapping[str, Any]:
    """The payload: ``{}`` when none is given (the field is optional), else a JSON object. Text
    of only spaces is not JSON (serde_json refuses it, as upstream would), nor are the Unicode
    spaces ``str.strip`` would have taken."""
    if not payload_json:
        return {}
    # Numbers read as upstream's serde_json reads them, so the event id is the one it computes.
    return parse_json_object(payload_json, "payload_json", upstream_numbers=True)


def _workflow_status(view: WorkflowView) -> api.WorkflowStatus:
    return api.WorkflowStatus(
        workflow_id=view.workflow_id,
        workflow_type=view.workflow_type,
        project=view.project,
        state=view.state,
        started_at=view.started_at,
        completed_at=view.completed_at,
        error=view.error,
        trace_id=view.trace_id,
        task_blocks=[
            api.TaskBlockStatus(
                name=b.name,
                state=b.state,
                started_at=b.started_at,
                completed_at=b.completed_at,
                throttled=b.throttled,
            )
            for b in view.task_blocks
        ],
    )


TRACE_ITEMS_ON_LOOP = 128  # (~20 µs each)


def _trace_is_large(document: Mapping[str, Any]) -> bool:
    """Whether a trace's reply is made on a worker thread: a chain of more than
    ``TRACE_ITEMS_ON_LOOP`` events and executions, or payloads of more than
    ``JSON_VALUES_ON_LOOP`` values, long strings by their characters (each payload is written
    again as the bytes its id hashed: a chain carrying one 3.5 MB string held the loop
    0.25-0.6 s a Trace, a hunt)."""
    events, executions = document["events"], document["block_executions"]
    if len(events) + len(executions) > TRACE_ITEMS_ON_LOOP:
        return True
    payloads = [e["payload"] for e in events]
    for x in executions:
        payloads.append(x["trigger_payload"])
        payloads.extend(x["emitted_payloads"])
    return json_values_past(payloads)


def _trace_reply(document: Mapping[str, Any]) -> api.TraceResponse:
    reply = api.TraceResponse(
        found=True, total_duration_ms=_whole_ms(document.get("total_duration_ms"))
    )
    reply.events = [_trace_event(e) for e in document["events"]]
    traced = {e.event_id for e in reply.events if e.trace_id}
    reply.block_executions = [_trace_execution(x, x["trigger_event_id"] in traced)
                              for x in document["block_executions"]]  # fmt: skip
    return reply


def _trace_event(e: Mapping[str, Any]) -> api.TraceEvent:
    trace_id = _trace_id(e.get("trace_id"))
    span_id, parent_span_id = _spans(e, bool(trace_id))
    return api.TraceEvent(
        event_id=e["id"],
        event_type=e["event_type"],
        project=e["project"],
        occurred_at=e["occurred_at"],
        throttle=api.Throttle(THROTTLE_TO_WIRE[e["throttle"]]),
        trace_id=trace_id,
        span_id=span_id,
        parent_span_id=parent_span_id,
        payload_json=payload_json_of(e["payload"]),  # the bytes its id hashed
        recorded_at=e.get("recorded_at", ""),
        throttled=bool(e.get("throttled", False)),
    )


def _trace_execution(x: Mapping[str, Any], traced: bool) -> api.TraceBlockExecution:
    """``traced``: its trigger event has a trace id (a span of no trace is shown empty)."""
    span_id, parent_span_id = _spans(x, traced)
    return api.TraceBlockExecution(
        block_name=x["block_name"],
        trigger_event_id=x["trigger_event_id"],
        success=x["success"],
        summary=x["summary"],
        emitted_event_ids=list(x["emitted_event_ids"]),
        duration_ms=int(x["duration_ms"]),
        raw_output=x["raw_output"],
        exit_code=int(x["exit_code"]),
        trigger_payload_json=payload_json_of(x["trigger_payload"]),
        emitted_payload_jsons=[payload_json_of(p) for p in x["emitted_payloads"]],
        audit_artifacts=list(x["audit_artifacts"]),
        span_id=span_id,
        parent_span_id=parent_span_id,
        state=x.get("state", ""),
        throttled=bool(x.get("throttled", False)),
        attempts=int(x.get("attempts", 1)),
    )


def _trace_id(value: Any) -> str:
    """A trace file's W3C trace id, "" when it has none (a file written before trace context
    kept the root event id under ``trace_id``)."""
    return value if isinstance(value, str) and is_trace_id(value) else ""


def _span_id(value: Any) -> str:
    return value if isinstance(value, str) and is_span_id(value) else ""


def _spans(record: Mapping[str, Any], traced: bool) -> tuple[str, str]:
    """A trace file's span and parent span ids, held to Emit's rules (a file the daemon did
    not write, say the public daemon's, may break them): none without a trace id, and no span
    its own parent."""
    if not traced:
        return "", ""
    span_id = _span_id(record.get("span_id"))
    parent_span_id = _span_id(record.get("parent_span_id"))
    return span_id, "" if parent_span_id == span_id else parent_span_id


def _whole_ms(value: Any) -> int:
    """A trace file's ``total_duration_ms`` (upstream's or ours), 0 when missing or not a
    whole number of milliseconds that fits the field."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        return 0
    return int(value) if 0 <= value < 2**63 else 0


__all__ = ["FoundryService", "Mailboxes", "THROTTLE_TO_WIRE"]
