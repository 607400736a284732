"""What the engine records: events and block executions, immutable once made, and their trace form
(the file layout of the public Foundry daemon, plus a few extra keys)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from json.encoder import encode_basestring_ascii
from typing import Any

from .ids import rfc3339
from .throttle import Throttle


@dataclass(frozen=True, slots=True)
class Event:
    id: str
    event_type: str
    project: str
    occurred_at: datetime
    recorded_at: datetime
    throttle: Throttle
    trace_id: str  # the root event's id: the chain, and the workflow when blocks sink it
    payload: Mapping[str, Any]
    payload_json: str
    depth: int = 0
    parent_id: str = ""
    emitted_by: str = ""
    throttled: bool = False  # recorded but withheld from downstream blocks
    stamp: str = ""  # occurred_at in RFC 3339, when already computed

    tap_topic = "events"

    @property
    def tap_key(self) -> str:
        return self.project

    def trace_json(self) -> str:
        """This event in the trace file, as JSON text (the payload is already JSON)."""
        stamp = self.stamp or rfc3339(self.occurred_at)
        recorded = stamp if self.recorded_at == self.occurred_at else rfc3339(self.recorded_at)
        return (
            f'{{"id":"{self.id}","event_type":{_text(self.event_type)},'
            f'"project":{_text(self.project)},"occurred_at":"{stamp}","recorded_at":"{recorded}",'
            f'"throttle":"{self.throttle.value}","trace_id":"{self.trace_id}",'
            f'"payload":{self.payload_json},"parent_id":{_optional(self.parent_id)},'
            f'"emitted_by":{_optional(self.emitted_by)},"depth":{self.depth},'
            f'"throttled":{_TRUTH[self.throttled]}}}'
        )


@dataclass(frozen=True, slots=True)
class ExecutionRecord:
    """One block's execution on one event, across all its attempts."""

    trace_id: str
    block_name: str
    trigger: Event
    state: str  # completed, skipped or failed
    success: bool
    summary: str
    emitted: tuple[Event, ...]
    started_at: datetime
    completed_at: datetime
    duration_ms: int
    raw_output: str
    exit_code: int
    audit_artifacts: tuple[str, ...]
    attempts: int
    throttled: bool

    def trace_json(self) -> str:
        """This execution in the trace file, as JSON text."""
        emitted_ids = ",".join(f'"{e.id}"' for e in self.emitted)
        emitted_payloads = ",".join(e.payload_json for e in self.emitted)
        artifacts = ",".join(map(_text, self.audit_artifacts))
        return (
            f'{{"block_name":{_text(self.block_name)},"trigger_event_id":"{self.trigger.id}",'
            f'"success":{_TRUTH[self.success]},"summary":{_text(self.summary)},'
            f'"emitted_event_ids":[{emitted_ids}],"duration_ms":{self.duration_ms},'
            f'"raw_output":{_text(self.raw_output)},"exit_code":{self.exit_code},'
            f'"trigger_payload":{self.trigger.payload_json},'
            f'"emitted_payloads":[{emitted_payloads}],"audit_artifacts":[{artifacts}],'
            f'"state":"{self.state}","throttled":{_TRUTH[self.throttled]},'
            f'"attempts":{self.attempts},"started_at":"{rfc3339(self.started_at)}",'
            f'"completed_at":"{rfc3339(self.completed_at)}"}}'
        )


@dataclass(frozen=True, slots=True)
class FinishedChain:
    """A chain that ended: its workflow row and the trace document written to disk."""

    workflow_id: str
    workflow_type: str
    project: str
    throttle: Throttle
    state: str  # completed or failed
    error: str
    started_at: datetime
    completed_at: datetime
    event_count: int
    block_count: int
    trace_json: str  # the trace file's text; "" for an event no block sinks (no file)


def trace_json(
    events: Iterable[Event],
    executions: Iterable[ExecutionRecord],
    total_ms: int,
    *,
    workflow_id: str,
    state: str,
    error: str,
) -> str:
    """A chain's trace file, built from each record's JSON text: no intermediate dicts, and
    payloads, already JSON, are not encoded again."""
    return (
        f'{{"events":[{",".join(e.trace_json() for e in events)}],'
        f'"block_executions":[{",".join(x.trace_json() for x in executions)}],'
        f'"total_duration_ms":{total_ms},"workflow_id":"{workflow_id}","state":"{state}",'
        f'"error":{_text(error)}}}'
    )


def storable(text: str) -> str:
    """Text the store can write. UTF-8 has no lone surrogates (how ``os.listdir`` and
    ``surrogateescape`` carry undecodable bytes), so a block's summary or file name with one would
    fail its chain's commit — the root's with it. They are kept as ``\\udcff`` escapes instead."""
    if text.isascii():
        return text
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()
    return text


_TRUTH = {True: "true", False: "false"}
_text: Callable[[str], str] = encode_basestring_ascii  # a JSON string literal, as json.dumps writes


def _optional(text: str) -> str:
    return _text(text) if text else "null"
