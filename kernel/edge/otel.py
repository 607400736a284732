"""The OTLP exporter: a small process of its own that the telemetry actor starts
(``python -m foundry.kernel.edge.otel SETTINGS``) when ``[otel] endpoint`` is set.

Why a process: the OpenTelemetry SDK encodes each span in Python (~60 µs), which in the daemon
would take the GIL from the engine — at a few thousand spans a second, a third of its throughput.
Here it costs the daemon only the span records it writes to this process's stdin (frames, see
``actors.telemetry.messages``), and it runs at a lower CPU priority (``NICENESS``). It also keeps
the exporters' wire libraries (requests; grpcio, which brings asyncio) out of the daemon.

The SDK does the rest: each record becomes a ``ReadableSpan`` with our own trace and span ids
and parent (sampled, not remote), handed to a ``BatchSpanProcessor`` (its own thread) around the
OTLP/HTTP or OTLP/gRPC exporter. At most ``queue_size`` spans wait for export: more are dropped
and counted here, before the processor (whose own overflow silently evicts the oldest). A failed
export (a dead collector: each one gives up after ``timeout`` seconds) loses its batch. The first
loss of either kind is logged once, as a warning; the totals when the daemon stops. stdin's end
(the daemon stopping, or dying) flushes what is queued for up to ``FLUSH_SECONDS``, then exits.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from foundry.kernel.actors.telemetry.messages import SpanRecord, read_frames
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

log = logging.getLogger("foundry.otel")

FLUSH_SECONDS = 2.0  # what is queued when the daemon stops gets this long to go out
SCHEDULE_DELAY_MS = 500  # a batch goes out at least this often
BATCH_SIZE = 512
NICENESS = 19  # the lowest CPU priority: below the daemon and its archivist
HTTP_PATH = "/v1/traces"
SAMPLED = TraceFlags(TraceFlags.SAMPLED)
KINDS = {kind.name.lower(): kind for kind in SpanKind}
_UNSET = Status(StatusCode.UNSET)
SCOPE = InstrumentationScope("foundry")


class _Resource(Resource):
    """A Resource whose hash is computed once: the OTLP encoder groups spans by resource, and
    Resource hashes by JSON-encoding its attributes each time (a quarter of the encoding cost)."""

    def __init__(self, attributes: Mapping[str, Any], schema_url: str | None = None) -> None:
        super().__init__(dict(attributes), schema_url)
        self._hash = super().__hash__()

    def __hash__(self) -> int:
        return self._hash


def resource(service_name: str) -> Resource:
    """``service.name`` plus what ``OTEL_RESOURCE_ATTRIBUTES`` and the SDK add."""
    found = Resource.create({"service.name": service_name})
    return _Resource(found.attributes, found.schema_url)


def readable_span(record: SpanRecord, resource: Resource) -> ReadableSpan:
    """A span record (``SpanEnded``) as the SDK's finished span, keeping our ids."""
    trace_id, span_id, parent_id, name, kind, start, end, ok, error, names, values = record
    trace = int(trace_id, 16)
    parent = SpanContext(trace, int(parent_id, 16), False, SAMPLED) if parent_id else None
    return ReadableSpan(
        name=name,
        context=SpanContext(trace, int(span_id, 16), False, SAMPLED),
        parent=parent,
        resource=resource,
        attributes=dict(zip(names, values, strict=True)),
        kind=KINDS.get(kind, SpanKind.INTERNAL),
        status=_UNSET if ok else Status(StatusCode.ERROR, error or None),
        start_time=start,
        end_time=end,
        instrumentation_scope=SCOPE,
    )


def open_exporter(settings: Mapping[str, Any]) -> SpanExporter:
    """The OTLP exporter of ``[otel]``: HTTP/protobuf (``/v1/traces`` under the endpoint, as
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` is read), or gRPC. Headers come from the standard
    ``OTEL_EXPORTER_OTLP_HEADERS`` variable, which the exporters read themselves."""
    endpoint, timeout = settings["endpoint"], float(settings["timeout"])
    if settings["protocol"] == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        return GrpcExporter(endpoint=endpoint, insecure=endpoint.startswith("http:"),
                            timeout=timeout)  # fmt: skip
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    if not endpoint.rstrip("/").endswith(HTTP_PATH):
        endpoint = endpoint.rstrip("/") + HTTP_PATH
    return OTLPSpanExporter(endpoint=endpoint, timeout=timeout)


class _LastError(logging.Handler):
    """Keeps the exporter's last complaint for our one warning, instead of a line per batch."""

    def __init__(self) -> None:
        super().__init__()
        self.text = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.text = record.getMessage()[:300]


class Export:
    """The queue in front of the SDK's batch processor: bounded, counted, warned about once."""

    def __init__(self, exporter: SpanExporter, endpoint: str, queue_size: int) -> None:
        self._exporter, self._endpoint, self._limit = exporter, endpoint, queue_size
        self._lock = threading.Lock()
        self.waiting = self.exported = self.dropped = self.failed = 0
        self._warned = False
        self.last_error = _LastError()
        self.processor = BatchSpanProcessor(
            _Counted(self, exporter),
            max_queue_size=queue_size,
            schedule_delay_millis=SCHEDULE_DELAY_MS,
            max_export_batch_size=min(BATCH_SIZE, queue_size),
        )

    def add(self, span: ReadableSpan) -> None:
        with self._lock:
            if self.waiting >= self._limit:  # before the processor, which would evict the oldest
                self.dropped += 1
                full = True
            else:
                self.waiting += 1
                full = False
        if full:
            self.warn_once(f"{self._limit} spans wait already: the collector is slow or away")
        else:
            self.processor.on_end(span)

    def exporting(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self._lock:
            self.waiting -= len(spans)
        result = self._exporter.export(spans)
        if result is SpanExportResult.SUCCESS:
            self.exported += len(spans)
        else:
            self.failed += len(spans)
            self.warn_once(self.last_error.text or "the collector refused a batch")
        return result

    def warn_once(self, reason: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning(
                "OpenTelemetry export to %s is losing spans (%s); losses are counted and "
                "reported when the daemon stops",
                self._endpoint, reason,
            )  # fmt: skip

    def close(self, seconds: float) -> None:
        """Flush for up to ``seconds`` (the SDK's own flush ignores its timeout), then stop."""
        for step in (self.processor.force_flush, self.processor.shutdown):
            worker = threading.Thread(target=step, daemon=True)
            worker.start()
            worker.join(seconds)
        lost = self.dropped + self.failed + self.waiting
        log.info("OpenTelemetry export: %d span(s) exported, %d lost", self.exported, lost)


class _Counted(SpanExporter):
    """The OTLP exporter as the batch processor sees it: each batch passes through the count."""

    def __init__(self, export: Export, exporter: SpanExporter) -> None:
        self._export, self._exporter = export, exporter

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self._export.exporting(spans)

    def shutdown(self) -> None:
        self._exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._exporter.force_flush(timeout_millis)


def serve(settings: Mapping[str, Any]) -> None:
    """Export the spans on stdin until it ends."""
    exporter = open_exporter(settings)
    export = Export(exporter, settings["endpoint"], int(settings["queue_size"]))
    sdk_log = logging.getLogger("opentelemetry")
    sdk_log.propagate = False  # its per-batch errors feed our one warning instead
    sdk_log.addHandler(export.last_error)
    found = resource(settings["service_name"])
    invalid = 0
    for records in read_frames(sys.stdin.buffer):
        for record in records:
            try:
                span = readable_span(record, found)
            except ValueError:  # a span without ids (recorded before trace context)
                invalid += 1
                continue
            export.add(span)
    if invalid:
        log.info("OpenTelemetry export: %d span(s) without trace ids skipped", invalid)
    export.close(FLUSH_SECONDS)


class ToDaemon(logging.Handler):
    """Log records as JSON lines on stdout: the telemetry actor logs them in the daemon's log,
    in its format (text or JSON). A crash's traceback still goes to stderr, the daemon's."""

    def emit(self, record: logging.LogRecord) -> None:
        line = json.dumps({"level": record.levelno, "message": record.getMessage()})
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def main(argv: Sequence[str]) -> int:
    # The daemon ends this process by closing stdin; a terminal's Ctrl-C is the daemon's.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Spans are worth less than the work they describe: on a busy machine the daemon's CPU comes
    # first, and this process falls behind and drops (counted) rather than slowing the engine.
    os.nice(NICENESS)
    logging.basicConfig(level=logging.INFO, handlers=[ToDaemon()])
    serve(json.loads(argv[1]))
    logging.shutdown()
    os._exit(0)  # the exporter's threads (a stuck export) must not hold the daemon's stop


if __name__ == "__main__":
    sys.exit(main(sys.argv))
