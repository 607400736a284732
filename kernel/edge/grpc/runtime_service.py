"""The ``fleetforge.runtime.v1.RuntimeService``: translate the request, ask the scheduler (runs),
the replay actor or the gate actor (eval packs, change gates), translate the answer. RPCs not
built yet answer UNIMPLEMENTED (the generated base does that)."""

from __future__ import annotations

import asyncio
import itertools
from collections import OrderedDict
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Hashable,
    Mapping,
    Sequence,
    Sized,
)
from contextlib import aclosing
from functools import partial
from typing import Any, Generic, TypeVar

import trio
from foundry.kernel.actors.attestor.messages import GetAttestations
from foundry.kernel.actors.gate.messages import (
    CheckChangeGate,
    ListChangeGates,
    ListEvalScenarios,
    RecordEvalResult,
    RecordGateFollowup,
    SyncEvalPack,
)
from foundry.kernel.actors.messages import Mailboxes
from foundry.kernel.actors.replay.messages import Replay, ReplayedStep, ReplayResult
from foundry.kernel.actors.scheduler.messages import (
    BranchRun,
    CancelRun,
    GetRun,
    ListRuns,
    OpenTap,
    PatchStep,
    ResumeRun,
    RunView,
    StepView,
    SubmitRun,
    TapOpened,
    UpdateBreakpoints,
)
from foundry.kernel.actors.tap.messages import Overflow
from foundry.kernel.core.governance import ScenarioInput
from foundry.kernel.core.json_input import STRUCT_DEPTH, check_json_value, json_values_past
from foundry.kernel.core.numbers import restore_ints
from foundry.kernel.core.run_control import RunSummary, check_labels, run_list_query
from foundry.kernel.core.runs import TERMINAL_KINDS, RunEventRecord
from foundry.kernel.edge.grpc import attestations, fastproto, governance, upb_encode
from foundry.kernel.edge.grpc.bridge import (
    StreamSink,
    in_worker_thread,
    let_others_run,
)
from foundry.kernel.edge.grpc.internals import send_frames
from foundry.kernel.edge.grpc.off_loop import reply_off_loop
from foundry.kernel.edge.grpc.run_replies import SharedRunReplies, ended_key
from foundry.kernel.edge.grpc.server import ask, served_by
from foundry.kernel.edge.shared_replies import SHARED_REPLIES, STREAM_FORMS
from foundry.kernel.edge.worker_threads import OffLoopReply, made_once
from foundry.kernel.errors import InvalidArgument
from foundry.proto import runtime_api as api
from foundry.proto.generated.google.protobuf import Struct, Value
from grpclib import GRPCError
from grpclib.const import Handler, Status
from grpclib.server import Stream

T = TypeVar("T")

RUN_STATUS = {
    name: api.RunStatus[name]
    for name in ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELED", "PAUSED_AT_STEP")
}
SEED_MODES = {
    api.BranchSeedMode.UNSPECIFIED: "unspecified",
    api.BranchSeedMode.SAME: "same",
    api.BranchSeedMode.NEW: "new",
    api.BranchSeedMode.CUSTOM: "custom",
}
REPLAY_MODES = {
    api.ReplayMode.UNSPECIFIED: "full",
    api.ReplayMode.FULL: "full",
    api.ReplayMode.STEP_ONLY: "step_only",
    api.ReplayMode.DIFF: "diff",
}


class RuntimeService(api.RuntimeServiceBase):
    def __init__(self, mailboxes: Mailboxes) -> None:
        self._mail = mailboxes

    async def submit_run(self, message: api.SubmitRunRequest) -> api.SubmitRunResponse:
        spec = message.spec
        if spec is None or not spec.dag_json:
            raise GRPCError(Status.INVALID_ARGUMENT, "spec.dag_json: a DAG is required")
        inputs = await _json_of(spec.inputs, "spec.inputs") or {}
        check_labels(spec.labels, "spec.labels")
        run_id = await self._ask(
            lambda r: SubmitRun(
                spec.dag_json, inputs, spec.seed, dict(spec.labels), tuple(spec.breakpoints),
                message.idempotency_key, r,
            ),
        )  # fmt: skip
        return api.SubmitRunResponse(run_id=run_id)

    async def get_run(self, message: api.GetRunRequest) -> api.GetRunResponse:
        """The object-API form, for the HTTP edge, whose codec writes JSON or binary from the
        message (an ended run's JSON is written once: ``http.routes.json_reply``). grpclib's
        route is :meth:`_serve_get_run`."""
        _require(message.run_id, "run_id")
        view: RunView = await self._ask(lambda r: GetRun(message.run_id, r))
        if not run_is_large(view):
            return api.GetRunResponse(run=run_detail(view))
        reply = OffLoopReply(partial(_run_reply, view), ended_key(view))
        return reply  # type: ignore[return-value]

    async def tap_run(self, message: api.TapRunRequest) -> AsyncIterator[api.RunEvent]:
        """The object-API form, for the HTTP edge (Connect, gRPC-Web, WebSocket): the same
        stream as :meth:`_serve_tap`, as messages. grpclib's route is :meth:`_serve_tap`."""
        batches = self.tap_batches(message.run_id, shared_run_event, shared_ahead)
        async with aclosing(batches):
            async for batch in batches:
                for event in batch:
                    yield event

    async def _serve_tap(self, stream: Stream[api.TapRunRequest, api.RunEvent]) -> None:
        """The run's events from the first, then live; ends after the terminal event.

        Each event is encoded once for every tapper (:func:`encoded_run_event`); each batch of
        :meth:`tap_batches` goes out in one HTTP/2 write.
        """
        request = await stream.recv_message()
        assert request is not None
        await stream.send_initial_metadata()
        batches = self.tap_batches(request.run_id, encoded_run_event, encoded_ahead)
        async with aclosing(batches):
            async for messages in batches:
                await send_frames(stream, messages)

    async def tap_batches(
        self,
        run_id: str,
        frame: Callable[[RunEventRecord], T],
        ahead: Callable[[list[RunEventRecord]], Awaitable[None]] | None = None,
    ) -> AsyncGenerator[list[T], None]:
        """A run's events, each made once by ``frame``, in batches: the history in batches of
        :data:`HISTORY_BATCH` with the loop's other work between them (in one go, the history
        of a 5,000-step run held the loop ~200 ms: Emit's p99 while it was tapped again and
        again, 230 ms against 40 ms in batches), then, live, whatever the tap broker offered
        this tapper's sink (``bridge.StreamSink``) since the last batch. The broker only wakes
        the reading task, it never writes to the connection. Ends after the terminal event; a
        tapper that falls behind gets RESOURCE_EXHAUSTED. ``ahead`` makes the frames of events
        of many values (a step's large output) on a worker thread first, where ``frame`` finds
        them: made by ``frame`` on the loop, an output of 300,000 keys held it 3 s a tapper."""
        _require(run_id, "run_id")
        framer = TapFramer(frame)

        async def prepare(events: list[RunEventRecord]) -> None:
            if ahead is not None and (large := _large_events(events, framer.last)):
                await ahead(large)

        sink = StreamSink(framer, prepare)
        try:
            opened: TapOpened = await self._ask(lambda r: OpenTap(run_id, sink, r))
            for start in range(0, len(opened.history), HISTORY_BATCH):
                if start:  # a long history: the loop's other work between batches (~3 ms each)
                    await let_others_run()
                history = list(opened.history[start : start + HISTORY_BATCH])
                await prepare(history)
                messages, ended = framer(history)
                yield messages
                if ended:
                    return
            while True:
                messages, state = await sink.take()
                if isinstance(state, Overflow):
                    raise GRPCError(
                        Status.RESOURCE_EXHAUSTED,
                        f"tapper fell behind by more than {state.buffered} events and was "
                        "cut off; tap again to resume from the run's first event",
                    )
                if state == "closed":  # before the run's end: a stream ended OK would say it ended
                    raise GRPCError(
                        Status.UNAVAILABLE,
                        "the daemon is shutting down; tap the run again once it is back",
                    )
                yield messages
                if state == "end":
                    return
        finally:
            sink.close()

    async def _serve_get_run(self, stream: Stream[api.GetRunRequest, api.GetRunResponse]) -> None:
        """grpclib's route for GetRun: an ended run's reply is encoded once for all its callers
        (``run_replies``) and sent without a copy behind its prefix (``send_frames``)."""
        request = await stream.recv_message()
        assert request is not None
        _require(request.run_id, "run_id")
        view: RunView = await self._ask(lambda r: GetRun(request.run_id, r))
        reply = await RUN_REPLIES.reply(view, encoded_run)
        await stream.send_initial_metadata()
        await send_frames(stream, [reply.data])

    def __mapping__(self) -> dict[str, Handler]:
        mapping = served_by(super().__mapping__(), TAP_RUN, self._serve_tap)
        return served_by(mapping, GET_RUN, self._serve_get_run)

    async def update_breakpoints(
        self, message: api.UpdateBreakpointsRequest
    ) -> api.UpdateBreakpointsResponse:
        _require(message.run_id, "run_id")
        points = await self._ask(
            lambda r: UpdateBreakpoints(
                message.run_id, tuple(message.add), tuple(message.remove), message.clear_all, r
            ),
        )
        return api.UpdateBreakpointsResponse(breakpoints=points)

    async def patch_step(self, message: api.PatchStepRequest) -> api.PatchStepResponse:
        _require(message.run_id, "run_id")
        _require(message.step_id, "step_id")
        inputs = await _json_of(message.inputs_patch, "inputs_patch")
        env = await _json_of(message.env, "env")
        step_id = await self._ask(
            lambda r: PatchStep(
                message.run_id, message.step_id, inputs, env, message.model, message.note, r
            ),
        )
        return api.PatchStepResponse(step_id=step_id)

    async def resume_run(self, message: api.ResumeRunRequest) -> api.ResumeRunResponse:
        _require(message.run_id, "run_id")
        status, step_id = await self._ask(lambda r: ResumeRun(message.run_id, r))
        return api.ResumeRunResponse(status=RUN_STATUS[status], resumed_step_id=step_id)

    async def cancel_run(self, message: api.CancelRunRequest) -> api.CancelRunResponse:
        _require(message.run_id, "run_id")
        status, steps = await self._ask(lambda r: CancelRun(message.run_id, message.reason, r))
        return api.CancelRunResponse(status=RUN_STATUS[status], canceled_steps=list(steps))

    async def list_runs(self, message: api.ListRunsRequest) -> api.ListRunsResponse:
        query = run_list_query(
            statuses=_status_names(message.statuses),
            labels=dict(message.labels),
            parent_run_id=message.parent_run_id,
            created_after=message.created_after,
            created_before=message.created_before,
            page_size=message.page_size,
            page_token=message.page_token,
        )
        runs, token = await self._ask(lambda r: ListRuns(query, r))
        make = partial(_runs_reply, runs, token)
        if sum(len(s.labels) for s in runs) <= LABELS_ON_LOOP:
            return make()
        # (a page of five runs of 150,000 labels each held the loop 1.7 s)
        return await reply_off_loop(make)

    async def create_branch_run(
        self, message: api.CreateBranchRunRequest
    ) -> api.CreateBranchRunResponse:
        _require(message.run_id, "run_id")
        _require(message.from_step, "from_step")
        mode = SEED_MODES.get(message.seed_mode)
        if mode is None:
            raise GRPCError(
                Status.INVALID_ARGUMENT, f"seed_mode: unknown value {message.seed_mode}"
            )
        inputs_patch = await _json_of(message.inputs_patch, "inputs_patch") or {}
        labels_patch = await _json_of(message.labels_patch, "labels_patch") or {}
        run_id = await self._ask(
            lambda r: BranchRun(
                message.run_id, message.from_step, mode, message.seed, inputs_patch, labels_patch,
                message.note, r,
            ),
        )  # fmt: skip
        return api.CreateBranchRunResponse(run_id=run_id)

    async def replay_run(self, message: api.ReplayRunRequest) -> api.ReplayRunResponse:
        _require(message.run_id, "run_id")
        mode = REPLAY_MODES.get(message.mode)
        if mode is None:
            raise GRPCError(Status.INVALID_ARGUMENT, f"mode: unknown value {message.mode}")
        result: ReplayResult = await self._ask_replay(lambda r: Replay(message.run_id, mode, r))
        if not replay_is_large(result):
            return replay_response(result)
        # (a replay of outputs of 300,000 keys held the loop 10 s)
        return await reply_off_loop(partial(replay_response, result))

    # --- governance: eval packs and change gates (the gate actor) -------------------------------

    async def sync_eval_pack(self, message: api.SyncEvalPackRequest) -> api.SyncEvalPackResponse:
        structs = [s for d in message.scenarios for s in (d.run_spec, d.expected) if s is not None]
        if _values_past(structs, STRUCT_VALUES_ON_LOOP):
            scenarios = await in_worker_thread(_scenario_inputs, message, heavy=True)
        else:
            scenarios = _scenario_inputs(message)
        ids = await self._ask_gate(lambda r: SyncEvalPack(message.pack, scenarios, r))
        return api.SyncEvalPackResponse(scenario_ids=ids)

    async def list_eval_scenarios(
        self, message: api.ListEvalScenariosRequest
    ) -> api.ListEvalScenariosResponse:
        found = await self._ask_gate(ListEvalScenarios)
        return await reply_off_loop(
            lambda: api.ListEvalScenariosResponse(
                scenarios=[governance.eval_scenario(s) for s in found]
            )
        )

    async def record_eval_result(
        self, message: api.RecordEvalResultRequest
    ) -> api.RecordEvalResultResponse:
        result = await self._ask_gate(
            lambda r: RecordEvalResult(
                message.pack, message.slug, message.run_id, message.commit, r
            )
        )
        return api.RecordEvalResultResponse(result=governance.eval_result(result))

    async def check_change_gate(
        self, message: api.CheckChangeGateRequest | fastproto.UpbRequest
    ) -> api.CheckChangeGateResponse:
        """gRPC decodes the request with upb and gets the reply serialized by upb; the HTTP edge
        uses betterproto2 both ways (``fastproto``: 1,000 diffs are too slow in pure Python)."""
        # (on a worker thread, both ways: its telemetry and metadata are Structs of any size)
        request = await in_worker_thread(fastproto.gate_request, message, _json_object)
        stored = await self._ask_gate(lambda r: CheckChangeGate(request, r))
        reply: api.CheckChangeGateResponse
        reply = await in_worker_thread(fastproto.reply, message, stored)
        return reply

    async def record_gate_followup(
        self, message: api.RecordGateFollowupRequest
    ) -> api.RecordGateFollowupResponse:
        _require(message.gate_id, "gate_id")
        outcome = governance.followup_outcome(message.outcome)
        details = await _json_of(message.details, "details") or {}
        record = await self._ask_gate(
            lambda r: RecordGateFollowup(
                message.gate_id, message.actor, outcome, message.note, details, r
            )
        )
        return api.RecordGateFollowupResponse(followup=governance.gate_followup(record))

    async def list_change_gates(
        self, message: api.ListChangeGatesRequest
    ) -> api.ListChangeGatesResponse:
        found = await self._ask_gate(lambda r: ListChangeGates(message.change_id, message.limit, r))
        # (up to 4 MiB of metadata and telemetry made Structs, and its reply serialized: a
        # decision of 130,000 evals was 17.7 MB, 0.4 s of the loop)
        return await reply_off_loop(
            lambda: api.ListChangeGatesResponse(
                decisions=[governance.gate_decision(g) for g in found]
            )
        )

    # --- attestations (the attestor) ------------------------------------------------------------

    async def get_attestations(
        self, message: api.GetAttestationsRequest
    ) -> api.GetAttestationsResponse:
        ids = tuple(message.attestation_ids)
        if not ids:
            raise GRPCError(Status.INVALID_ARGUMENT, "attestation_ids: give at least one id")
        for index, attestation_id in enumerate(ids):
            _require(attestation_id, f"attestation_ids[{index}]")
        found = await ask(self._mail.attestor, lambda r: GetAttestations(ids, r))
        attestations.check_reply_size(found)
        if not json_values_past(a.claims for a in found):
            return attestations.reply(found)
        # (one gate decision's attestation of 130,000 evals is a 55 MB reply: ~4 s of the loop)
        return await reply_off_loop(partial(attestations.reply, found))

    async def _ask_gate(self, build: Any) -> Any:
        return await ask(self._mail.gate, build)

    async def _ask(self, build: Any) -> Any:
        return await ask(self._mail.scheduler, build)

    async def _ask_replay(self, build: Any) -> Any:
        return await ask(self._mail.replay, build)


# A Struct of more values than this is made JSON on a worker thread (``_json_of``): ~3.6 µs a
# value on the loop, and a 4 MB one of 720,000 held every other client ~2.6 s.
STRUCT_VALUES_ON_LOOP = 2_000


async def _json_of(struct: Struct | None, field: str) -> dict[str, Any] | None:
    """:func:`_json_object`, on a worker thread for a Struct of many values."""
    if struct is None or not _values_past([struct], STRUCT_VALUES_ON_LOOP):
        return _json_object(struct, field)
    return await in_worker_thread(_json_object, struct, field, heavy=True)


def _values_past(structs: list[Struct], limit: int) -> bool:
    """Whether ``structs`` hold more than ``limit`` values, nested ones too (stops counting
    there: a bounded look)."""
    stack: list[Any] = list(structs)
    seen = 0
    while stack:
        node = stack.pop()
        values = node.fields.values() if isinstance(node, Struct) else node.values
        seen += len(values)
        if seen > limit:
            return True
        for value in values:
            inner = value.struct_value if value.struct_value is not None else value.list_value
            if inner is not None:
                stack.append(inner)
    return False


def _scenario_inputs(message: api.SyncEvalPackRequest) -> tuple[ScenarioInput, ...]:
    return tuple(
        ScenarioInput(
            slug=d.slug,
            title=d.title,
            description=d.description,
            run_spec=_json_object(d.run_spec, f"scenarios[{i}].run_spec"),
            expected=_json_object(d.expected, f"scenarios[{i}].expected"),
        )
        for i, d in enumerate(message.scenarios)
    )


def _json_object(struct: Struct | None, field: str) -> dict[str, Any] | None:
    """A Struct as a JSON object under the limits of every client JSON (``json_input``), its
    integral numbers ints again (``core.numbers``: a Struct carries every number as a double)."""
    if struct is None:
        return None
    try:
        value: dict[str, Any] = struct.to_dict()
    except RecursionError:
        raise InvalidArgument(f"{field}: nested too deeply") from None
    except ValueError as exc:  # a value no JSON has (``check_request`` looks for them first)
        raise InvalidArgument(f"{field}: not a JSON object ({exc})") from None
    check_json_value(value, field, depth=STRUCT_DEPTH)
    restored: dict[str, Any] = restore_ints(value)
    return restored


TAP_RUN = "/fleetforge.runtime.v1.RuntimeService/TapRun"
GET_RUN = "/fleetforge.runtime.v1.RuntimeService/GetRun"
RUN_REPLIES = SharedRunReplies()
HISTORY_BATCH = 256
_ENCODED: OrderedDict[tuple[str, int], bytes] = OrderedDict()
_ENCODED_KEPT = 8_192
_ENCODED_BYTES = 64 << 20  # and at most this many bytes of them (2 MB outputs: 16 GB else)
_encoded_bytes = [0]


def _through_terminal(batch: list[RunEventRecord]) -> list[RunEventRecord]:
    """The batch cut after its terminal event, or [] when it has none."""
    for index, event in enumerate(batch):
        if event.kind in TERMINAL_KINDS:
            return batch[: index + 1]
    return []


class TapFramer(Generic[T]):
    """A tapper's events as messages (``frame`` makes each: serialized for gRPC, a RunEvent for
    the HTTP edge): each once (the history and the live events overlap), in order, through the
    terminal event (see ``bridge.Framer``)."""

    __slots__ = ("last", "frame")

    def __init__(self, frame: Callable[[RunEventRecord], T]) -> None:
        self.last = 0  # the seq of the last event framed
        self.frame = frame

    def __call__(self, events: list[RunEventRecord]) -> tuple[list[T], bool]:
        last = self.last
        batch = [e for e in events if e.seq > last]
        if not batch:
            return [], False
        ended = _through_terminal(batch)
        batch = ended or batch
        self.last = batch[-1].seq
        frame = self.frame
        return [frame(e) for e in batch], bool(ended)


def _large_events(events: list[RunEventRecord], after: int) -> list[RunEventRecord]:
    """The events past ``after`` whose payloads hold more than JSON_VALUES_ON_LOOP values."""
    return [
        e for e in events
        if e.seq > after and json_values_past((e.payload,))
    ]  # fmt: skip


async def shared_ahead(events: list[RunEventRecord]) -> None:
    """:func:`shared_run_event`'s messages for ``events``, and their encodings in the forms the
    stream's edge says (``shared_replies.STREAM_FORMS``), made on a worker thread — once for
    all the tappers that want them at once (each made its own: 12 tappers, 6x the wait)."""
    forms = STREAM_FORMS.get()
    names = tuple(form for form, _ in forms)
    for event in events:
        key = ("run", event.run_id, event.seq)

        async def make(event: RunEventRecord = event, key: Hashable = key) -> None:
            message, encodings = await in_worker_thread(_made_ahead, event, forms, heavy=True)
            SHARED_REPLIES.prime(key, message, encodings)

        held = partial(SHARED_REPLIES.holds, key, names)
        await made_once(_MAKING, (key, names), held, make, trio.Event)


def _made_ahead(
    event: RunEventRecord, forms: tuple[tuple[str, Callable[[Any], Sized]], ...]
) -> tuple[api.RunEvent, dict[str, Sized]]:
    message = run_event(event)
    return message, {form: encode(message) for form, encode in forms}


async def encoded_ahead(events: list[RunEventRecord]) -> None:
    """:func:`encoded_run_event`'s bytes for ``events``, made on a worker thread (once for all
    the tappers that want them at once)."""
    for event in events:
        key = (event.run_id, event.seq)

        async def make(event: RunEventRecord = event, key: tuple[str, int] = key) -> None:
            _keep_encoded(key, await in_worker_thread(serialized_run_event, event, heavy=True))

        await made_once(_MAKING, key, partial(_ENCODED.__contains__, key), make, asyncio.Event)


# What tappers' ``ahead`` is making now, by key: those that want the same wait for its maker.
_MAKING: dict[Hashable, asyncio.Event | trio.Event] = {}


def shared_run_event(event: RunEventRecord) -> api.RunEvent:
    """:func:`run_event`, one message for every tapper of the HTTP edge: its JSON or protobuf
    is made once (``edge/shared_replies``), not once a tapper."""
    return SHARED_REPLIES.reply(("run", event.run_id, event.seq), 0, partial(run_event, event))


def encoded_run_event(event: RunEventRecord) -> bytes:
    """A RunEvent serialized once, however many tappers receive it (a small LRU, bounded by
    count and bytes)."""
    key = (event.run_id, event.seq)
    data = _ENCODED.get(key)
    if data is None:
        data = _keep_encoded(key, serialized_run_event(event))
    return data


def _keep_encoded(key: tuple[str, int], data: bytes) -> bytes:
    if key not in _ENCODED:
        _ENCODED[key] = data
        _encoded_bytes[0] += len(data)
        while len(_ENCODED) > 1 and (
            len(_ENCODED) > _ENCODED_KEPT or _encoded_bytes[0] > _ENCODED_BYTES
        ):
            _encoded_bytes[0] -= len(_ENCODED.popitem(last=False)[1])
    return data


def serialized_run_event(event: RunEventRecord) -> bytes:
    """:func:`run_event` serialized by upb: ~13 µs an event against betterproto2's ~150-250 µs,
    on the trio thread, before a TapRun client hears of it. The same message (a Struct's entries
    may come in another order, which protobuf leaves open); a payload upb's ``Struct.update``
    refuses (a value that is not a dict, list, tuple, str, number, bool or None, an int beyond a
    double) goes the betterproto2 way, which is the definition (and refuses it too)."""
    if event.occurred_at.tzinfo is None:  # betterproto2 refuses it; upb would take it as UTC
        return bytes(run_event(event))
    message = fastproto.upb_class("RunEvent")(
        run_id=event.run_id, step_id=event.step_id, kind=event.kind, span_id=_span_of(event.payload)
    )
    try:
        message.payload.struct_value.update({**event.payload, "seq": event.seq})
    except (TypeError, ValueError, OverflowError):
        return bytes(run_event(event))
    message.occurred_at.FromDatetime(event.occurred_at)
    data: bytes = message.SerializeToString()
    return data


def _status_names(statuses: list[Any]) -> list[str]:
    """Each status asked for named once: 3 million of one, each named, held the loop 1 s."""
    return [_status_name(s, statuses) for s in dict.fromkeys(statuses)]


def _status_name(status: Any, statuses: list[Any]) -> str:
    for name, value in RUN_STATUS.items():
        if status == value:
            return name
    field = f"statuses[{statuses.index(status)}]"
    raise InvalidArgument(f"{field}: unknown run status {int(status)}")


def run_summary(summary: RunSummary) -> api.RunSummary:
    return api.RunSummary(
        run_id=summary.run_id,
        status=RUN_STATUS[summary.status],
        created_at=summary.created_at,
        updated_at=summary.updated_at,
        labels=dict(summary.labels),
        parent_run_id=summary.parent_run_id,
        branch_step=summary.branch_step,
        step_count=summary.step_count,
        paused_step=summary.paused_step,
        error=summary.error,
    )


def _require(value: str, field: str) -> None:
    if not value:
        raise GRPCError(Status.INVALID_ARGUMENT, f"{field}: must not be empty")


def _span_of(payload: Any) -> str:
    span = payload.get("span_id", "") if isinstance(payload, Mapping) else ""
    return span if isinstance(span, str) else ""


def json_value(value: Any) -> Value:
    return Value.from_dict(value)


async def encoded_run(view: RunView) -> bytes:
    """GetRun's reply, serialized — made on a worker thread for a run of many values (steps,
    their outputs, its inputs: :func:`run_is_large`). On the loop, a reply cost ~25 µs a step
    (250 ms for a run of 10,000 steps), and ~12 µs a value of an output: one of 900,000 nulls
    held every other client 11 s. ``view`` is a snapshot: nothing in it changes meanwhile."""
    if run_is_large(view):
        return await in_worker_thread(_run_bytes, view, heavy=True)
    return _run_bytes(view)


# The labels of a ListRuns page past which its reply is made and serialized on a worker thread.
LABELS_ON_LOOP = 2_000


def _runs_reply(runs: Sequence[RunSummary], token: str) -> api.ListRunsResponse:
    return api.ListRunsResponse(runs=[run_summary(s) for s in runs], next_page_token=token)


def _run_reply(view: RunView) -> api.GetRunResponse:
    return api.GetRunResponse(run=run_detail(view))


def _run_bytes(view: RunView) -> bytes:
    return upb_encode.encode(_run_reply(view))


def run_is_large(view: RunView) -> bool:
    """Whether a run holds more than ``json_input.JSON_VALUES_ON_LOOP`` values, its steps'
    outputs and errors and its inputs (a bounded look)."""
    values = (v for s in view.steps for v in (s.output, s.error))
    return json_values_past(itertools.chain((view.inputs,), values))


def replay_is_large(result: ReplayResult) -> bool:
    """Whether a replay's snapshots and drifts hold more than ``JSON_VALUES_ON_LOOP`` values."""
    steps = result.steps
    return json_values_past(v for s in steps for v in (s.snapshot, s.drift.recorded,
                                                       s.drift.current))  # fmt: skip


def run_detail(view: RunView) -> api.RunDetail:
    return api.RunDetail(
        run_id=view.run_id,
        status=RUN_STATUS[view.status],
        spec=api.RunSpec(
            dag_json=view.dag_json,
            inputs=_struct(view.inputs),
            seed=view.seed,
            labels=dict(view.labels),
            breakpoints=list(view.breakpoints),
        ),
        created_at=view.created_at,
        updated_at=view.updated_at,
        steps=[step_summary(s, view.span_id) for s in view.steps],
        paused_step=view.paused_step,
        error=view.error,
        parent_run_id=view.parent_run_id,
        branch_step=view.branch_step,
        trace_id=view.trace_id,
        span_id=view.span_id,
        attestation_ids=list(view.attestation_ids),
    )


def step_summary(step: StepView, run_span_id: str = "") -> api.StepSummary:
    return api.StepSummary(
        step_id=step.step_id,
        idx=step.idx,
        type=step.type,
        status=step.status,
        attempt=step.attempt,
        leased_at=step.leased_at,
        completed_at=step.completed_at,
        output=json_value(step.output),
        error=json_value(step.error),
        span_id=step.span_id,
        parent_span_id=run_span_id if step.span_id else "",
    )


def run_event(event: RunEventRecord) -> api.RunEvent:
    return api.RunEvent(
        run_id=event.run_id,
        step_id=event.step_id,
        kind=event.kind,
        span_id=_span_of(event.payload),
        payload=json_value({**event.payload, "seq": event.seq}),
        occurred_at=event.occurred_at,
    )


def replay_response(result: ReplayResult) -> api.ReplayRunResponse:
    return api.ReplayRunResponse(
        run_id=result.run_id,
        all_within_tolerance=result.all_within_tolerance,
        strategy=api.ReplayStrategy.LIVE
        if result.strategy == "live"
        else api.ReplayStrategy.MOCKED,
        steps=[replay_step(step) for step in result.steps],
    )


def replay_step(step: ReplayedStep) -> api.ReplayStep:
    return api.ReplayStep(
        step_id=step.step_id,
        snapshot=json_value(step.snapshot),
        drift=api.ReplayStepDrift(
            recorded=json_value(step.drift.recorded),
            current=json_value(step.drift.current),
            token_delta=step.drift.token_delta,
            cost_delta=step.drift.cost_delta,
            within_tolerance=step.drift.within_tolerance,
        ),
    )


def _struct(mapping: Any) -> Struct:
    return Struct.from_dict(dict(mapping))
