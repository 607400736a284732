"""The OTLP exporter: a small process of its own that the telemetry actor starts
(``python -m foundry.kernel.edge.otel SETTINGS``) when ``[otel] endpoint`` is set.

Why a process: encoding spans is Python work, which in the daemon would take the GIL from the
engine. Here it costs the daemon only the records it writes to this process's stdin (frames, see
``actors.telemetry.messages``: a workflow goes as the rows of its trace file, and its spans are
made here), and it runs at the lowest CPU priority (``lowest_priority``: ``SCHED_IDLE``, else
nice 19). It also keeps the exporters' wire libraries (requests; grpcio, which brings asyncio) out
of the daemon.

Each record becomes an OTLP ``Span`` (the OpenTelemetry protocol's own protobuf classes, built in
place in the request that will carry it, each attribute encoded once and reused: ~5-7 µs a span
alone, ~10-12 µs with the HTTP export, where the SDK's ``ReadableSpan`` and its encoder took
~150 µs; ~18-21 µs a span beside a busy daemon). Batches of up to ``BATCH_SIZE`` spans, at least
every ``SCHEDULE_DELAY`` seconds, go to the SDK's OTLP/HTTP or OTLP/gRPC exporter, which sends
them (headers, TLS, compression, retries, as its ``OTEL_EXPORTER_OTLP_*`` variables say). At most
``queue_size`` spans wait for export: more are dropped and counted (text cut to ``TEXT_CHARS``,
and a span's attributes to ``SPAN_TEXT_CHARS`` of it, keep that a bound in bytes). A failed
export (a dead collector: each one gives up after ``timeout`` seconds) loses its batch. The
first loss of either kind is logged once, as a warning; the totals when the daemon stops.
stdin's end (the daemon stopping, or dying) flushes what is queued for up to ``FLUSH_SECONDS``,
then exits.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from itertools import islice
from typing import Any, Protocol

import requests
import requests.adapters
import urllib3
import urllib3.connection
from foundry.kernel.actors.telemetry.messages import (
    AttributeValue,
    SpanRecord,
    read_frames,
    span_records,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource as ResourceProto
from opentelemetry.proto.trace.v1.trace_pb2 import Span, SpanFlags, Status
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export import SpanExportResult

log = logging.getLogger("foundry.otel")

FLUSH_SECONDS = 2.0  # what is queued when the daemon stops gets this long to go out
SCHEDULE_DELAY = 0.5  # a batch goes out at least this often (seconds)
BATCH_SIZE = 512  # spans a request at most
NICENESS = 19  # the lowest CPU priority: below the daemon and its archivist
HTTP_PATH = "/v1/traces"
SCOPE = InstrumentationScope(name="foundry")
KINDS = {
    "internal": Span.SPAN_KIND_INTERNAL, "server": Span.SPAN_KIND_SERVER,
    "client": Span.SPAN_KIND_CLIENT, "producer": Span.SPAN_KIND_PRODUCER,
    "consumer": Span.SPAN_KIND_CONSUMER,
}  # fmt: skip
# W3C "sampled", and whether the parent is remote is known: our spans' parents are ours, but a
# chain root's may be the caller's (its Emit's traceparent), which is marked remote, as the SDK
# marks a span whose parent context a propagator extracted.
FLAGS = 0x01 | SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
REMOTE_PARENT_FLAGS = FLAGS | SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK
STATUS_ERROR = Status.STATUS_CODE_ERROR
# The AnyValue field of each attribute type (by exact type: a bool is no int here).
VALUE_FIELDS = {str: "string_value", bool: "bool_value", int: "int_value", float: "double_value"}
LOCKED_SPANS = 32  # spans added under one taking of the queue's lock (each taking costs)
ENCODED_ATTRIBUTES = 4_096  # attributes kept encoded for reuse (``_add_attributes``)
_ENCODED: dict[tuple[str, type, AttributeValue], bytes] = {}
HOLDERS = 256  # attribute names with a holder kept for encoding their values (``_encoded``)
# A span's name and each text attribute (its name and its value) are cut to this many characters:
# what waits for export is bounded in bytes, not only in spans (an event type or a label may be
# megabytes long; ``queue_size`` of them waiting took gigabytes).
TEXT_CHARS = 1_024
# And a span's attributes, past the first FEW_ATTRIBUTES (only a run's labels go past), stop
# at the first whose text goes past SPAN_TEXT_CHARS: the rest are counted as dropped, as OTLP
# has it.
FEW_ATTRIBUTES = 16
SPAN_TEXT_CHARS = 16_384
_HOLDERS: dict[str, tuple[Span, AnyValue]] = {}


# --- spans --------------------------------------------------------------------------------------


def resource(service_name: str) -> ResourceProto:
    """``service.name`` plus what ``OTEL_RESOURCE_ATTRIBUTES`` and the SDK add."""
    found = Resource.create({"service.name": service_name})
    pairs = found.attributes.items()
    return ResourceProto(attributes=[KeyValue(key=k, value=any_value(v)) for k, v in pairs])


def any_value(value: object) -> AnyValue:
    """An attribute's value; one of another type (a resource's list) as its text."""
    found = AnyValue()
    field = VALUE_FIELDS.get(type(value))
    if field is None:
        field, value = "string_value", str(value)
    setattr(found, field, value)
    return found


def add_span(spans: Any, record: SpanRecord) -> None:
    """A span record (``SpanEnded``) as an OTLP span appended to ``spans`` (a request's repeated
    field: built in place, never copied), keeping our ids. ``ValueError`` if the record has no
    valid ids (a span recorded before trace context), and then nothing is appended. Text that is
    no UTF-8 (a lone surrogate, in an error or a name) goes with U+FFFD in its place."""
    count = len(spans)
    try:
        _add_span(spans, record)
    except UnicodeEncodeError:
        del spans[count:]  # the half-made span
        _add_span(spans, _utf8(record))


def _add_span(spans: Any, record: SpanRecord) -> None:
    trace_id, span_id, parent_id, name, kind, start, end, ok, error, names, values, remote = record
    try:
        trace, own, parent = map(bytes.fromhex, (trace_id, span_id, parent_id))
    except ValueError:  # not hex
        trace = own = parent = b""
    if len(trace) != 16 or len(own) != 8 or len(parent) not in (0, 8):
        raise ValueError(f"span {name!r} has no valid trace context")
    span = spans.add(
        trace_id=trace, span_id=own, parent_span_id=parent, name=name[:TEXT_CHARS],
        kind=KINDS.get(kind, Span.SPAN_KIND_INTERNAL), start_time_unix_nano=start,
        end_time_unix_nano=end, flags=REMOTE_PARENT_FLAGS if remote and parent else FLAGS,
    )  # fmt: skip
    if not ok:
        span.status.code = STATUS_ERROR
        span.status.message = error
    if len(names) > FEW_ATTRIBUTES:
        kept = _attributes_within_budget(names, values)
        span.dropped_attributes_count = len(names) - kept
        names, values = names[:kept], values[:kept]
    _add_attributes(span, names, values)


def _attributes_within_budget(names: tuple[str, ...], values: tuple[AttributeValue, ...]) -> int:
    """How many of the attributes, from the first, fit in ``SPAN_TEXT_CHARS`` (as cut)."""
    used = 0
    for count, (name, value) in enumerate(zip(names, values, strict=True)):
        text = len(value) if isinstance(value, str) else 8
        used += min(len(name), TEXT_CHARS) + min(text, TEXT_CHARS)
        if count >= FEW_ATTRIBUTES and used > SPAN_TEXT_CHARS:
            return count
    return len(names)


def _utf8(record: SpanRecord) -> SpanRecord:
    def text(value: Any) -> Any:
        if isinstance(value, str):
            return value.encode("utf-8", "replace").decode("utf-8")
        return tuple(map(text, value)) if isinstance(value, tuple) else value

    fixed: SpanRecord = text(record)
    return fixed


def _add_attributes(span: Any, names: tuple[str, ...], values: tuple[AttributeValue, ...]) -> None:
    """A span's attributes in one ``MergeFromString``: each attribute is encoded once by the
    protobuf library (as a ``Span`` holding just it) and reused — most repeat from span to span
    (project, throttle, types, states; an id for its chain's few spans). Encoded messages
    concatenated merge, and a repeated field appends, in order. The keys are made and looked up
    in C (``zip``, ``map``); only the attributes not seen lately take Python's time."""
    keys = list(zip(names, map(type, values), values, strict=True))
    pieces = list(map(_ENCODED.get, keys))
    if None in pieces:
        for index, piece in enumerate(pieces):
            if piece is None:
                pieces[index] = _encoded_once(*keys[index])
    span.MergeFromString(b"".join(pieces))  # type: ignore[arg-type]  # no None is left


def _encoded_once(name: str, kind: type, value: AttributeValue) -> bytes:
    text = isinstance(value, str)
    if len(name) > TEXT_CHARS or (text and len(value) > TEXT_CHARS):  # type: ignore[arg-type]
        # Cut, and not kept for reuse: as a key, the long text would be kept whole. (Rare:
        # the common attributes never come here, so the check costs them nothing.)
        return _encoded(name[:TEXT_CHARS], value[:TEXT_CHARS] if text else value)  # type: ignore[index]
    piece = _encoded(name, value)
    if kind is not float:  # -0.0 == 0.0; and NaN would never be found
        if len(_ENCODED) >= ENCODED_ATTRIBUTES:
            _ENCODED.clear()  # ids come and go: start over, the common ones come back
        _ENCODED[(name, kind, value)] = piece
    return piece


def _encoded(name: str, value: AttributeValue) -> bytes:
    """One attribute as the protobuf library encodes it in a ``Span``: the value set in a holder
    kept for its name (a new message each time took 3 times as long; ids are new every chain)."""
    field = VALUE_FIELDS.get(type(value))
    if field is None:
        field, value = "string_value", str(value)
    found = _HOLDERS.get(name)
    if found is None:
        if len(_HOLDERS) >= HOLDERS:
            _HOLDERS.clear()  # names come from labels too: a few are kept, not all
        holder = Span()
        found = _HOLDERS[name] = holder, holder.attributes.add(key=name).value
    setattr(found[1], field, value)  # and the value's other field is cleared (a oneof)
    encoded: bytes = found[0].SerializeToString()
    return encoded


class Batch:
    """One export request being filled: our resource, our scope, and spans added in place."""

    __slots__ = ("request", "spans")

    def __init__(self, found: ResourceProto) -> None:
        self.request = ExportTraceServiceRequest()
        resource_spans = self.request.resource_spans.add(resource=found)
        self.spans = resource_spans.scope_spans.add(scope=SCOPE).spans

    def __len__(self) -> int:
        return len(self.spans)


# --- sending ------------------------------------------------------------------------------------


class Transport(Protocol):
    """Sends one request to the collector: True once it took it."""

    def send(self, request: ExportTraceServiceRequest) -> bool: ...

    def shutdown(self) -> None: ...


class HttpTransport(OTLPSpanExporter):
    """The SDK's OTLP/HTTP exporter, handed requests we built instead of the SDK's spans: its
    client does the rest (``OTEL_EXPORTER_OTLP_*`` headers, TLS and compression; retries). Its
    ``export`` would encode SDK spans first, so this sends through the client it holds (private,
    there since 1.45: pyproject.toml asks for that)."""

    def send(self, request: ExportTraceServiceRequest) -> bool:
        return bool(self._client.export(request.SerializeToString()).success)


REPLY_BYTES = 64 * 1024  # of a collector's answer, at most: only its status counts
CREDENTIAL_PROVIDER = "OTEL_PYTHON_EXPORTER_OTLP_HTTP_TRACES_CREDENTIAL_PROVIDER"


_REQUEST = threading.local()  # the sending thread's request: its ``deadline`` (monotonic)


class _Deadline:
    """Ends a connection's blocked read at the deadline: its socket shut down (from a timer's
    thread), and says whether it did."""

    def __init__(self, connection: Any) -> None:
        self.connection, self.fired = connection, False

    def fire(self) -> None:
        self.fired = True
        with contextlib.suppress(AttributeError, OSError):
            self.connection.sock.shutdown(socket.SHUT_RDWR)


class _Deadlined:
    """A urllib3 connection whose status line and headers are read within the request's
    deadline: urllib3 gives its timeout to each read, and an answer whose headers came a byte
    a second never ended (the sender thread waited for good, every later span lost)."""

    def getresponse(self, *args: Any, **kwargs: Any) -> Any:
        connection: Any = super()
        deadline = getattr(_REQUEST, "deadline", None)
        if deadline is None:
            return connection.getresponse(*args, **kwargs)
        watch = _Deadline(self)
        timer = threading.Timer(max(deadline - time.monotonic(), 0.0), watch.fire)
        timer.daemon = True
        timer.start()
        try:
            response = connection.getresponse(*args, **kwargs)
        finally:
            timer.cancel()
        if watch.fired:  # http.client took the headers cut short for whole ones: a 200
            response.close()
            connection.close()
            raise TimeoutError("the collector's answer did not come within the timeout")
        return response


class _DeadlinedHTTP(_Deadlined, urllib3.connection.HTTPConnection):
    pass


class _DeadlinedHTTPS(_Deadlined, urllib3.connection.HTTPSConnection):
    pass


class _DeadlinedPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _DeadlinedHTTP


class _DeadlinedHTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _DeadlinedHTTPS


_DEFAULT_POOLS = {"http": urllib3.HTTPConnectionPool, "https": urllib3.HTTPSConnectionPool}
_DEADLINED_POOLS = {"http": _DeadlinedPool, "https": _DeadlinedHTTPSPool}


class _DeadlinedAdapter(requests.adapters.HTTPAdapter):
    """Deadlined connections, direct and through an HTTP proxy (``HTTPS_PROXY``: requests makes
    a manager of its own for each proxy). A SOCKS proxy's pools are its own: left as they are."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        _deadlined(self.poolmanager)

    def proxy_manager_for(self, proxy: Any, **proxy_kwargs: Any) -> Any:
        return _deadlined(super().proxy_manager_for(proxy, **proxy_kwargs))


def _deadlined(manager: Any) -> Any:
    if manager.pool_classes_by_scheme == _DEFAULT_POOLS:  # urllib3's hook for its pools' classes
        manager.pool_classes_by_scheme = _DEADLINED_POOLS
    return manager


class BoundedSession(requests.Session):
    """A collector's answer read at most ``REPLY_BYTES``, and only within the request's
    ``timeout`` in all, its headers (``_Deadlined``) and its body: requests read it whole (a
    200 MB answer took this process to 450 MB) and gave ``timeout`` to each read alone (an
    answer trickled a byte a second held the export, and every span after it, for good)."""

    def __init__(self) -> None:
        super().__init__()
        for prefix in ("http://", "https://"):
            self.mount(prefix, _DeadlinedAdapter())

    def request(self, method: str, url: Any, *args: Any, **kwargs: Any) -> Any:
        started, limit = time.monotonic(), float(kwargs.get("timeout") or 10.0)
        kwargs["stream"] = True
        _REQUEST.deadline = started + limit
        try:
            response = super().request(method, url, *args, **kwargs)
        finally:
            _REQUEST.deadline = None
        kept = bytearray()
        try:
            while len(kept) < REPLY_BYTES and time.monotonic() - started < limit:
                chunk = response.raw.read1(REPLY_BYTES - len(kept), decode_content=False)
                if not chunk:
                    break
                kept += chunk
        except Exception:  # noqa: BLE001, S110 (a reset or a read timeout: the status stands)
            pass
        finally:
            response.close()
        response._content = bytes(kept)  # what ``.content``/``.text`` read (requests' own)
        return response


def open_transport(settings: Mapping[str, Any]) -> Transport:
    """The OTLP exporter of ``[otel]``: HTTP/protobuf (``/v1/traces`` under the endpoint, as
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` is read), or gRPC. Headers come from the standard
    ``OTEL_EXPORTER_OTLP_HEADERS`` variable, which the exporters read themselves."""
    endpoint, timeout = settings["endpoint"], float(settings["timeout"])
    if settings["protocol"] == "grpc":
        return _grpc_transport(endpoint, timeout)
    if not endpoint.rstrip("/").endswith(HTTP_PATH):
        endpoint = endpoint.rstrip("/") + HTTP_PATH
    # (a credential provider the operator names brings its own session: the SDK's way)
    session = None if os.environ.get(CREDENTIAL_PROVIDER) else BoundedSession()
    return HttpTransport(endpoint=endpoint, timeout=timeout, session=session)


def _grpc_transport(endpoint: str, timeout: float) -> Transport:
    """The SDK's OTLP/gRPC exporter (the ``otel-grpc`` extra), its request being ours."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
        OTLPSpanExporter as GrpcExporter,
    )

    class GrpcTransport(GrpcExporter):
        def _translate_data(self, data: Any) -> Any:  # the request, made already
            return data

        def _count_data(self, data: Any) -> int:
            return sum(len(s.spans) for rs in data.resource_spans for s in rs.scope_spans)

        def send(self, request: ExportTraceServiceRequest) -> bool:
            return self._export(request) is SpanExportResult.SUCCESS

    return GrpcTransport(endpoint=endpoint, insecure=endpoint.lower().startswith("http:"),
                         timeout=timeout)  # fmt: skip


class _LastError(logging.Handler):
    """Keeps the exporter's last complaint for our one warning, instead of a line per batch."""

    def __init__(self) -> None:
        super().__init__()
        self.text = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.text = record.getMessage()[:300]


class Export:
    """A bounded, counted queue of spans and the thread that sends them a batch at a time."""

    def __init__(
        self, transport: Transport, endpoint: str, queue_size: int, found: ResourceProto
    ) -> None:
        self._transport, self._endpoint, self._limit = transport, endpoint, queue_size
        self._resource, self._batch_size = found, min(BATCH_SIZE, queue_size)
        self._ready: deque[Batch] = deque()
        self._filling = Batch(found)
        self._changed = threading.Condition()
        self._closing = False
        self.waiting = self.sending = self.exported = self.dropped = self.failed = 0
        self.invalid = 0  # records without trace context, skipped
        self._warned = False
        self.last_error = _LastError()
        self._worker = threading.Thread(target=self._send_batches, name="otlp", daemon=True)
        self._worker.start()

    def add(self, records: Iterable[SpanRecord]) -> None:
        """Queue the records' spans; those beyond ``queue_size`` waiting are dropped."""
        before = self.dropped
        pending = iter(records)
        while chunk := list(islice(pending, LOCKED_SPANS)):
            with self._changed:  # a few spans at a time: the sender takes its batch meanwhile
                for record in chunk:  # (one span each: inline, it is this process's hot loop)
                    if self.waiting >= self._limit:
                        self.dropped += 1
                        continue
                    spans = self._filling.spans
                    try:
                        add_span(spans, record)
                    except ValueError:
                        self.invalid += 1
                        continue
                    self.waiting += 1
                    if len(spans) >= self._batch_size:
                        self._cut()
        if self.dropped > before:
            self.warn_once(f"{self._limit} spans wait already: the collector is slow or away")

    def _cut(self) -> None:
        """The batch being filled is ready to go (the caller holds the lock)."""
        self._ready.append(self._filling)
        self._filling = Batch(self._resource)
        self._changed.notify()

    def _send_batches(self) -> None:
        while batch := self._next_batch():
            try:
                sent = self._transport.send(batch.request)
            except Exception as error:  # a bug or a surprise in the exporter: lose the batch
                self.last_error.text = f"{type(error).__name__}: {error}"[:300]
                sent = False
            self._sent(len(batch), sent)

    def _next_batch(self) -> Batch | None:
        """The next batch to send: a full one, else what came in the last ``SCHEDULE_DELAY``;
        None once closed and empty."""
        with self._changed:
            while not self._ready:
                if self._closing:
                    if not len(self._filling):
                        return None
                    self._cut()
                elif not self._changed.wait(SCHEDULE_DELAY) and len(self._filling):
                    self._cut()  # its time is up, full or not
            batch = self._ready.popleft()
            self.waiting -= len(batch)
            self.sending = len(batch)
            return batch

    def _sent(self, count: int, sent: bool) -> None:
        with self._changed:
            self.sending = 0
            if sent:
                self.exported += count
            else:
                self.failed += count
        if not sent and count:
            self.warn_once(self.last_error.text or "the collector refused a batch")

    def warn_once(self, reason: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning(
                "OpenTelemetry export to %s is losing spans (%s); losses are counted and "
                "reported when the daemon stops",
                self._endpoint, reason,
            )  # fmt: skip

    def close(self, seconds: float) -> None:
        """Send what is queued for up to ``seconds``, then stop the transport."""
        with self._changed:
            self._closing = True
            self._changed.notify()
        self._worker.join(seconds)
        stopping = threading.Thread(target=self._transport.shutdown, daemon=True)
        stopping.start()
        stopping.join(1.0)
        lost = self.dropped + self.failed + self.waiting + self.sending
        log.info("OpenTelemetry export: %d span(s) exported, %d lost", self.exported, lost)


class _HeaderTextHidden(logging.Filter):
    """The SDK logs an ``OTEL_EXPORTER_OTLP_HEADERS`` entry it cannot parse whole — a token
    with it: said without its text."""

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("Header format invalid"):
            record.msg = ("OTEL_EXPORTER_OTLP_HEADERS has an entry that is not name=value: it "
                          "is not sent (its text is not logged: it may hold a secret)")  # fmt: skip
            record.args = ()
        return True


def serve(settings: Mapping[str, Any]) -> None:
    """Export the spans on stdin until it ends."""
    logging.getLogger("opentelemetry.util.re").addFilter(_HeaderTextHidden())
    transport = open_transport(settings)
    found = resource(settings["service_name"])
    export = Export(transport, settings["endpoint"], int(settings["queue_size"]), found)
    sdk_log = logging.getLogger("opentelemetry")
    sdk_log.propagate = False  # its per-batch errors feed our one warning instead
    sdk_log.addHandler(export.last_error)
    for items in read_frames(sys.stdin.buffer):
        export.add(span_records(items))  # a chain's spans are made here, off the daemon
    if export.invalid:
        log.info("OpenTelemetry export: %d span(s) without trace ids skipped", export.invalid)
    export.close(FLUSH_SECONDS)


class ToDaemon(logging.Handler):
    """Log records as JSON lines on stdout: the telemetry actor logs them in the daemon's log,
    in its format (text or JSON). A crash's traceback still goes to stderr, the daemon's."""

    def emit(self, record: logging.LogRecord) -> None:
        line = json.dumps({"level": record.levelno, "message": record.getMessage()})
        try:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        except BrokenPipeError:
            # The daemon is gone (killed -9): nobody reads this log any more, and a traceback
            # would land in the daemon's own log (our stderr). Later lines go nowhere.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def lowest_priority() -> None:
    """Spans are worth less than the work they describe: on a busy machine the daemon's CPU comes
    first, and this process falls behind and drops (counted) rather than slowing the engine.
    ``SCHED_IDLE`` (Linux) more than nice 19: a daemon thread that wakes (a commit answered, a
    block's child done) takes the CPU from this process at once, where a nice one could wait
    for the end of this one's time slice, on the engine's path."""
    os.nice(NICENESS)
    with contextlib.suppress(AttributeError, OSError):  # not Linux: nice 19 it is
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def main(argv: Sequence[str]) -> int:
    # The daemon ends this process by closing stdin; a terminal's Ctrl-C is the daemon's.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    lowest_priority()
    logging.basicConfig(level=logging.INFO, handlers=[ToDaemon()])
    serve(json.loads(argv[1]))
    logging.shutdown()
    os._exit(0)  # the exporter's threads (a stuck export) must not hold the daemon's stop


if __name__ == "__main__":
    sys.exit(main(sys.argv))
