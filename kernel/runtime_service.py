"""The ``fleetforge.runtime.v1.RuntimeService``: translate the request, ask the scheduler,
translate the answer. RPCs not built yet answer UNIMPLEMENTED (the generated base does that)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from grpclib import GRPCError
from grpclib.const import Status

from foundry.proto import runtime_api as api
from foundry.proto.generated.google.protobuf import Struct, Value

from .foundry_service import Mailboxes
from .grpc_server import on_trio
from .mailbox import ask
from .runs import TERMINAL_KINDS, RunEventRecord
from .replay import Replay, ReplayResult
from .scheduler_messages import (
    BranchRun,
    GetRun,
    OpenTap,
    PatchStep,
    ResumeRun,
    RunView,
    StepView,
    SubmitRun,
    TapOpened,
    UpdateBreakpoints,
)
from .tap import receive_batch
from .tap_messages import Overflow

RUN_STATUS = {name: api.RunStatus[name] for name in
              ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELED", "PAUSED_AT_STEP")}  # fmt: skip
SEED_MODES = {
    api.BranchSeedMode.UNSPECIFIED: "same",
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
            while batch := await on_trio(receive_batch, opened.live):
                for item in batch:
                    if isinstance(item, Overflow):
                        raise GRPCError(
                            Status.RESOURCE_EXHAUSTED,
                            f"tapper fell behind by more than {item.buffered} events and was "
                            "cut off; tap again to resume from the run's first event",
                        )
                    if item.seq <= last:
                        continue
                    last = item.seq
                    yield run_event(item)
                    if item.kind in TERMINAL_KINDS:
                        return
        finally:
            opened.live.close()

    async def update_breakpoints(
        self, message: api.UpdateBreakpointsRequest
    ) -> api.UpdateBreakpointsResponse:
        _require(message.run_id, "run_id")
        points = await on_trio(
            self._ask,
            lambda r: UpdateBreakpoints(
                message.run_id, tuple(message.add), tuple(message.remove), message.clear_all, r
            ),
        )
        return api.UpdateBreakpointsResponse(breakpoints=points)

    async def patch_step(self, message: api.PatchStepRequest) -> api.PatchStepResponse:
        _require(message.run_id, "run_id")
        _require(message.step_id, "step_id")
        inputs = message.inputs_patch.to_dict() if message.inputs_patch is not None else None
        env = message.env.to_dict() if message.env is not None else None
        step_id = await on_trio(
            self._ask,
            lambda r: PatchStep(
                message.run_id, message.step_id, inputs, env, message.model, message.note, r
            ),
        )
        return api.PatchStepResponse(step_id=step_id)

    async def resume_run(self, message: api.ResumeRunRequest) -> api.ResumeRunResponse:
        _require(message.run_id, "run_id")
        status, step_id = await on_trio(self._ask, lambda r: ResumeRun(message.run_id, r))
        return api.ResumeRunResponse(status=RUN_STATUS[status], resumed_step_id=step_id)

    async def create_branch_run(
        self, message: api.CreateBranchRunRequest
    ) -> api.CreateBranchRunResponse:
        _require(message.run_id, "run_id")
        _require(message.from_step, "from_step")
        mode = SEED_MODES.get(message.seed_mode)
        if mode is None:
            raise GRPCError(Status.INVALID_ARGUMENT, f"seed_mode: unknown value {message.seed_mode}")
        run_id = await on_trio(
            self._ask,
            lambda r: BranchRun(
                message.run_id, message.from_step, mode, message.seed,
                message.inputs_patch.to_dict() if message.inputs_patch is not None else {},
                message.labels_patch.to_dict() if message.labels_patch is not None else {},
                message.note, r,
            ),
        )  # fmt: skip
        return api.CreateBranchRunResponse(run_id=run_id)

    async def replay_run(self, message: api.ReplayRunRequest) -> api.ReplayRunResponse:
        _require(message.run_id, "run_id")
        mode = REPLAY_MODES.get(message.mode)
        if mode is None:
            raise GRPCError(Status.INVALID_ARGUMENT, f"mode: unknown value {message.mode}")
        result: ReplayResult = await on_trio(
            self._ask_replay, lambda r: Replay(message.run_id, mode, r)
        )
        return replay_response(result)

    async def _ask(self, build: Any) -> Any:
        return await ask(self._mail.scheduler, build)

    async def _ask_replay(self, build: Any) -> Any:
        return await ask(self._mail.replay, build)


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


def replay_response(result: ReplayResult) -> api.ReplayRunResponse:
    return api.ReplayRunResponse(
        run_id=result.run_id,
        all_within_tolerance=result.all_within_tolerance,
        strategy=api.ReplayStrategy.LIVE if result.strategy == "live" else api.ReplayStrategy.MOCKED,
        steps=[
            api.ReplayStep(
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
            for step in result.steps
        ],
    )


def _struct(mapping: Any) -> Struct:
    return Struct.from_dict(dict(mapping))
