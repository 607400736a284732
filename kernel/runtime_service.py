"""The ``fleetforge.runtime.v1.RuntimeService``: translate the request, ask the scheduler,
translate the answer. RPCs not built yet answer UNIMPLEMENTED (the generated base does that)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import trio
from grpclib import GRPCError
from grpclib.const import Status

from foundry.proto import runtime_api as api
from foundry.proto.generated.google.protobuf import Struct, Value

from .foundry_service import Mailboxes
from .grpc_server import on_trio
from .mailbox import ask
from .runs import TERMINAL_KINDS, RunEventRecord
from .scheduler_messages import GetRun, OpenTap, RunView, StepView, SubmitRun, TapOpened
from .tap_messages import Overflow

RUN_STATUS = {name: api.RunStatus[name] for name in
              ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELED", "PAUSED_AT_STEP")}  # fmt: skip


class RuntimeService(api.RuntimeServiceBase):
    def __init__(self, mailboxes: Mailboxes) -> None:
        self._mail = mailboxes

    async def submit_run(self, message: api.SubmitRunRequest) -> api.SubmitRunResponse:
        spec = message.spec
        if spec is None or not spec.dag_json:
            raise GRPCError(Status.INVALID_ARGUMENT, "spec.dag_json: a DAG is required")
        inputs = spec.inputs.to_dict() if spec.inputs is not None else {}
        run_id = await on_trio(
            self._ask,
            lambda r: SubmitRun(
                spec.dag_json, inputs, spec.seed, dict(spec.labels), tuple(spec.breakpoints),
                message.idempotency_key, r,
            ),
        )  # fmt: skip
        return api.SubmitRunResponse(run_id=run_id)

    async def get_run(self, message: api.GetRunRequest) -> api.GetRunResponse:
        _require(message.run_id, "run_id")
        view: RunView = await on_trio(self._ask, lambda r: GetRun(message.run_id, r))
        return api.GetRunResponse(run=run_detail(view))

    async def tap_run(self, message: api.TapRunRequest) -> AsyncIterator[api.RunEvent]:
        _require(message.run_id, "run_id")
        opened: TapOpened = await on_trio(self._ask, lambda r: OpenTap(message.run_id, r))
        try:
            last = 0
            for event in opened.history:
                last = event.seq
                yield run_event(event)
                if event.kind in TERMINAL_KINDS:
                    return
            while (item := await on_trio(_next, opened.live)) is not None:
                if isinstance(item, Overflow):
                    raise GRPCError(
                        Status.RESOURCE_EXHAUSTED,
                        f"tapper fell behind by more than {item.buffered} events and was cut "
                        "off; tap again to resume from the run's first event",
                    )
                if item.seq <= last:
                    continue
                last = item.seq
                yield run_event(item)
                if item.kind in TERMINAL_KINDS:
                    return
        finally:
            opened.live.close()

    async def _ask(self, build: Any) -> Any:
        return await ask(self._mail.scheduler, build)


async def _next(receive: trio.MemoryReceiveChannel[Any]) -> Any:
    try:
        return await receive.receive()
    except (trio.EndOfChannel, trio.ClosedResourceError):
        return None


def _require(value: str, field: str) -> None:
    if not value:
        raise GRPCError(Status.INVALID_ARGUMENT, f"{field}: must not be empty")


def json_value(value: Any) -> Value:
    return Value.from_dict(value)


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
        steps=[step_summary(s) for s in view.steps],
    )


def step_summary(step: StepView) -> api.StepSummary:
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
    )


def run_event(event: RunEventRecord) -> api.RunEvent:
    return api.RunEvent(
        run_id=event.run_id,
        step_id=event.step_id,
        kind=event.kind,
        payload=json_value({**event.payload, "seq": event.seq}),
        occurred_at=event.occurred_at,
    )


def _struct(mapping: Any) -> Struct:
    return Struct.from_dict(dict(mapping))
