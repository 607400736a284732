"""CheckChangeGate and Emit through upb, the C-backed ``protobuf``: CheckChangeGate's request and
reply are too big for betterproto2's pure-Python codec (a request of 1,000 diffs, ~49 KB, takes
~50 ms to parse and ~5 ms to type-check there; upb parses it in well under 1 ms), and Emit is the
hot path (its request decodes and checks in ~3 µs, against ~20).

The message classes come from the committed descriptor set (``reflection.py``'s pool), so there
are no generated ``_pb2`` files. The guarantees of ``server.RequestCodec`` hold:

- upb refuses invalid UTF-8 (DecodeError) and sets a field sent with the wrong wire type aside
  as an unknown field — the kernel never sees a wrong-typed value. Either case (and a field this
  daemon does not know) takes the betterproto2 path, whose parse and ``check_request`` name the
  field exactly as for every other RPC; a plain request never does;
- ids stay under ``core.ids.MAX_ID_LENGTH``; the Structs (telemetry, metadata) go through
  betterproto2 and ``check_request`` (they are small), so their limits and numbers are the same.

The handler takes either kind (:func:`gate_request`): gRPC hands it a :class:`UpbRequest`, the
HTTP edge (Connect JSON or binary) a betterproto2 one; the reply follows in kind (:func:`reply`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import betterproto2
from foundry.kernel.core.gate_policy import (
    Budget,
    Coverage,
    CoverageComponent,
    GateRequest,
)
from foundry.kernel.core.governance import StoredGate, thawed
from foundry.kernel.core.ids import MAX_ID_LENGTH
from foundry.kernel.edge.grpc import gate_columns, governance
from foundry.kernel.edge.grpc.framing import canonical as canonical_bytes
from foundry.kernel.edge.grpc.internals import Encoded
from foundry.kernel.edge.grpc.message_check import WrongField, check_request
from foundry.kernel.edge.grpc.reflection import descriptor_pool_of_protos
from foundry.proto import foundry_api
from foundry.proto import runtime_api as api
from foundry.proto.generated.google.protobuf import Struct
from google.protobuf import message_factory
from google.protobuf.message import DecodeError, Message

PACKAGE = "fleetforge.runtime.v1"
JsonObject = Callable[[Struct | None, str], dict[str, Any] | None]


@cache
def upb_class(name: str, package: str = PACKAGE) -> Any:
    """The upb message class of ``<package>.<name>`` (of the committed descriptor set)."""
    descriptor = descriptor_pool_of_protos().FindMessageTypeByName(f"{package}.{name}")
    return message_factory.GetMessageClass(descriptor)


def _plain(name: str, package: str, data: bytes) -> Any:
    """``data`` decoded by upb, or None when upb refuses it (invalid UTF-8) or sets something
    aside (a field of the wrong wire type, or one this daemon does not know): the caller then
    takes betterproto2's path, whose checks name the field."""
    try:
        message = upb_class(name, package).FromString(data)
    except DecodeError:
        return None
    return None if _has_unknown_fields(message) else message


# --- the request --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UpbRequest:
    """A CheckChangeGateRequest decoded by upb and checked, with its Structs (telemetry,
    metadata) as betterproto2 decodes them, checked as in every other request."""

    message: Any
    structs: api.CheckChangeGateRequest
    canonical: bytes  # ``message`` serialized (``gate_columns`` reads its diffs from these)


def decode_request(data: bytes) -> UpbRequest | api.CheckChangeGateRequest:
    """The request: upb's when the bytes are plain, else betterproto2's (unchecked: the codec
    checks it, and names the wrong field). Raises :class:`WrongField` for a bad id or Struct.
    The canonical bytes come with the check of :func:`_plain` (see :func:`_canonical`)."""
    try:
        message = upb_class("CheckChangeGateRequest").FromString(data)
    except DecodeError:
        message = None
    canonical = None if message is None else _canonical(message)
    if canonical is None:  # (canonical bytes: of unknown fields, betterproto2's parse is N²)
        return api.CheckChangeGateRequest().parse(canonical_bytes(data, api.CheckChangeGateRequest))
    _check_ids(message)
    return UpbRequest(message, _structs(message), canonical)


def _has_unknown_fields(message: Message) -> bool:
    """Whether upb set anything aside, at any depth: the canonical size drops when they are
    discarded (cheaper than walking a thousand diffs' unknown-field sets)."""
    size = message.ByteSize()
    message.DiscardUnknownFields()
    return bool(message.ByteSize() != size)


def _canonical(message: Message) -> bytes | None:
    """``message`` serialized without what upb set aside, or None when it set anything aside
    (as :func:`_has_unknown_fields`, from two serializations rather than two sizes: the second
    is the bytes ``gate_columns`` reads the diffs from)."""
    size = len(message.SerializeToString())
    message.DiscardUnknownFields()
    canonical: bytes = message.SerializeToString()
    return canonical if len(canonical) == size else None


def _check_ids(message: Any) -> None:
    """``message_check``'s bound on ids, for the id fields of this request."""
    if len(message.change_id) > MAX_ID_LENGTH:
        raise WrongField(f"change_id: longer than {MAX_ID_LENGTH} characters")
    for index, metric in enumerate(message.evals):
        if len(metric.slug) > MAX_ID_LENGTH:
            raise WrongField(f"evals[{index}].slug: longer than {MAX_ID_LENGTH} characters")


def gate_request(message: Any, json_object: JsonObject) -> GateRequest:
    """The gate actor's input from either kind of message; ``json_object`` turns a Struct into a
    checked JSON object (the service's, shared with every RPC carrying a Struct)."""
    if isinstance(message, betterproto2.Message):
        telemetry, metadata = message.telemetry, message.metadata  # type: ignore[attr-defined]
        return governance.gate_request(
            message,  # type: ignore[arg-type]
            telemetry=json_object(telemetry, "telemetry") or {},
            metadata=json_object(metadata, "metadata") or {},
        )
    if not isinstance(message, UpbRequest):
        raise TypeError(f"not a CheckChangeGateRequest: {type(message).__name__}")
    structs = message.structs
    return _from_upb(
        message,
        telemetry=json_object(structs.telemetry, "telemetry") or {},
        metadata=json_object(structs.metadata, "metadata") or {},
    )


def _structs(message: Any) -> api.CheckChangeGateRequest:
    """The request's Structs as betterproto2 sees them, checked as in every other request."""
    only = upb_class("CheckChangeGateRequest")()
    for name in ("telemetry", "metadata"):
        if message.HasField(name):
            getattr(only, name).CopyFrom(getattr(message, name))
    structs = api.CheckChangeGateRequest().parse(only.SerializeToString())
    check_request(structs)
    return structs


def _wrapped(message: Any, name: str) -> Any:
    """A wrapper field (DoubleValue) as ``float | None``."""
    return getattr(message, name).value if message.HasField(name) else None


def _from_upb(
    request: UpbRequest, telemetry: Mapping[str, Any], metadata: Mapping[str, Any]
) -> GateRequest:
    message = request.message
    coverage = None
    if message.HasField("coverage"):
        c = message.coverage
        coverage = Coverage(
            overall_ratio=_wrapped(c, "overall_ratio"),
            minimum_ratio=_wrapped(c, "minimum_ratio"),
            components=tuple(
                CoverageComponent(
                    x.name, _wrapped(x, "coverage_ratio"), _wrapped(x, "required_ratio")
                )
                for x in c.components
            ),
        )
    diffs, evals = gate_columns.columns_of(message, request.canonical)
    return GateRequest(
        change_id=message.change_id,
        revision=message.revision,
        diffs=diffs,
        coverage=coverage,
        evals=evals,
        budgets=tuple(Budget(b.name, b.actual, _wrapped(b, "limit")) for b in message.budgets),
        telemetry=telemetry,
        metadata=metadata,
        actor=message.actor,
    )


# --- Emit, on the hot path -------------------------------------------------------------------

EMIT_IDS = ("event_type", "project", "trace_id", "span_id", "parent_span_id")


def decode_emit_request(data: bytes) -> Any:
    """An EmitRequest by upb (~3 µs with its checks; betterproto2's parse and ``check_request``
    take ~20): the handler reads the same fields of either kind. Bytes upb will not take as they
    are go betterproto2's way (:func:`_plain`); ids are bounded here as ``check_request`` bounds
    them."""
    message = _plain("EmitRequest", "foundry", data)
    if message is None:  # (canonical bytes: of unknown fields, betterproto2's parse is N²)
        return foundry_api.EmitRequest.parse(canonical_bytes(data, foundry_api.EmitRequest))
    for name in EMIT_IDS:
        if len(getattr(message, name)) > MAX_ID_LENGTH:
            raise WrongField(f"{name}: longer than {MAX_ID_LENGTH} characters")
    return message


def encode_emit_response(reply: foundry_api.EmitResponse) -> bytes:
    """The EmitResponse's bytes by upb (~1 µs; betterproto2 ~7), the same bytes."""
    message = upb_class("EmitResponse", "foundry")(
        event_id=reply.event_id, workflow_id=reply.workflow_id
    )
    data: bytes = message.SerializeToString()
    return data


# --- the reply ----------------------------------------------------------------------------------


def reply(message: Any, stored: StoredGate) -> Any:
    """The reply to ``message``, in kind: serialized by upb (``internals.Encoded``) for a
    :class:`UpbRequest` (gRPC), a betterproto2 message otherwise (the HTTP edge, whose JSON codec
    would have to parse bytes back)."""
    if isinstance(message, UpbRequest):
        return Encoded(encode_response(stored))
    return api.CheckChangeGateResponse(decision=governance.gate_decision(stored))


def encode_response(stored: StoredGate) -> bytes:
    """CheckChangeGateResponse, serialized: the message betterproto2 would write for
    ``governance.gate_decision`` (the tests compare them; a Struct's entries may come in another
    order, which protobuf leaves open)."""
    response = upb_class("CheckChangeGateResponse")()
    _fill_decision(response.decision, stored)
    data: bytes = response.SerializeToString()
    return data


def _fill_decision(out: Any, stored: StoredGate) -> None:
    d = stored.decision
    out.gate_id, out.change_id, out.revision = d.gate_id, d.change_id, d.revision
    out.effect = governance.effect_number(d.effect)
    out.reasons.extend(d.reasons)
    for f in d.followups:
        out.followups.add(
            slug=f["slug"], description=f["description"], recommended=f["recommended"]
        )
    _fill_scorecard(out.scorecard, d.scorecard)
    out.decided_at.FromDatetime(d.decided_at)
    _struct(out.metadata, d.metadata)
    _struct(out.telemetry, d.telemetry)
    for ack in stored.acknowledgements:
        _merge(out.acknowledgements.add(), governance.gate_followup(ack))


def _merge(out: Any, message: betterproto2.Message) -> None:
    """A small part (a Struct, an acknowledgement) as betterproto2 builds it: the same values."""
    out.SetInParent()
    out.MergeFromString(bytes(message))


def _struct(out: Any, value: Mapping[str, Any]) -> None:
    """A stored JSON object (``governance.struct``'s input) into a upb Struct, present even
    when empty. ``Struct.update`` writes the Value kinds ``Struct.from_dict`` does (None → null,
    bool, number, string, object, list) without a trip through betterproto2's encoder."""
    out.SetInParent()
    out.update(thawed(value))


def _fill_scorecard(out: Any, card: Mapping[str, Any]) -> None:
    """``governance._scorecard``'s fields, set on the upb message (a summary present even when
    empty, as there)."""
    out.SetInParent()
    novelty, coverage = card.get("novelty"), card.get("coverage")
    evals, budgets = card.get("evals"), card.get("budgets")
    if novelty is not None:
        out.novelty.SetInParent()
        out.novelty.max_novelty = novelty["max_novelty"] or 0.0
        out.novelty.avg_novelty = novelty["avg_novelty"] or 0.0
        out.novelty.high_risk_paths.extend(novelty["high_risk_paths"])
    if coverage is not None:
        out.coverage.SetInParent()
        if coverage["overall_ratio"] is not None:
            out.coverage.overall_ratio.value = coverage["overall_ratio"]
        out.coverage.components_below_threshold.extend(coverage["components_below_threshold"])
    if evals is not None:
        out.evals.SetInParent()
        out.evals.failing_metrics.extend(evals["failing_metrics"])
        out.evals.attention_metrics.extend(evals["attention_metrics"])
        if evals["score_per_token"] is not None:
            out.evals.score_per_token.value = evals["score_per_token"]
    if budgets is not None:
        out.budgets.SetInParent()
        out.budgets.breaches.extend(budgets["breaches"])
        out.budgets.near_limits.extend(budgets["near_limits"])
    _struct(out.telemetry, card.get("telemetry") or {})
