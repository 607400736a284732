"""The floor under the pause → patch → resume cycle: what the wire and the disk cost alone.

``python -m bench.time_travel_floor JOURNAL_DIR`` serves, with plain grpclib on asyncio (the
library DESIGN.md has the daemon serve gRPC with, without trio-asyncio between), the four
RuntimeService RPCs the cycle uses and nothing else: SubmitRun, TapRun, PatchStep, ResumeRun.
It keeps each run in a dict and does, per cycle, the least a durable runtime must:

- PatchStep: append a record, ``fdatasync``, answer; the ``step_patched`` event on the stream;
- ResumeRun: the same with ``run_resumed``; then the step "runs" (its value merged with the
  patch) and its lease and completion are appended and synced together (``fdatasync``) before
  ``step_leased``, ``step_completed`` (announcing the step's attestation, as the daemon's does)
  and ``run_paused`` (or ``run_succeeded``) go on the stream.

So three syncs (``fdatasync``) and the five events the daemon sends per cycle, with payloads of the
daemon's shape (a client decodes as much), encoded by upb as the daemon encodes them. No DAG,
no scheduler, no store, no signature: nothing is checked. ``time_travel`` runs the same client
against it and the daemon in one session, so the cycle's ratio to this floor is the daemon's own
share, whatever the host's speed that minute.

:func:`pause_patch_resume_grpcio` is the cycle's client on grpcio's C core (requests and events
by upb), for a figure without the Python client's CPU in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import scratch_dir
from .fleet_daemon import plain_server, run_spec, serve_until_stopped

RUNTIME = "/fleetforge.runtime.v1.RuntimeService/"
TIMEOUT = 60.0


@dataclass
class _Run:
    steps: list[str]
    events: asyncio.Queue[bytes] = field(default_factory=asyncio.Queue)
    index: int = 0
    seq: int = 0
    patch: dict[str, Any] = field(default_factory=dict)
    last_output: dict[str, Any] = field(default_factory=dict)


def _event_encoder() -> Any:
    from foundry.kernel.edge.grpc.fastproto import upb_class

    run_event = upb_class("RunEvent")

    def encode(run_id: str, kind: str, step_id: str, payload: dict[str, Any]) -> bytes:
        message = run_event(run_id=run_id, step_id=step_id, kind=kind)
        message.payload.struct_value.update(payload)
        message.occurred_at.FromDatetime(datetime.datetime.now(datetime.UTC))
        data: bytes = message.SerializeToString()
        return data

    return encode


def _service(journal: int) -> Any:
    from foundry.proto import runtime_api as api

    encode = _event_encoder()

    class FloorRuntime(api.RuntimeServiceBase):  # type: ignore[misc]
        def __init__(self) -> None:
            self.runs: dict[str, _Run] = {}

        def durable(self, record: dict[str, Any]) -> None:
            os.write(journal, json.dumps(record).encode() + b"\n")
            os.fdatasync(journal)

        def tell(self, run_id: str, kind: str, step_id: str = "", /, **payload: Any) -> None:
            run = self.runs[run_id]
            run.seq += 1
            run.events.put_nowait(encode(run_id, kind, step_id, {**payload, "seq": run.seq}))

        async def submit_run(self, message: Any) -> Any:
            run_id = f"run_{len(self.runs):08d}"
            dag = json.loads(message.spec.dag_json)
            self.runs[run_id] = _Run([step["id"] for step in dag["steps"]])
            self.durable({"submitted": run_id})
            self.tell(run_id, "run_submitted", steps=len(dag["steps"]), seed=message.spec.seed)
            self.tell(run_id, "run_started")
            self.tell(run_id, "run_paused", self.runs[run_id].steps[0])
            return api.SubmitRunResponse(run_id=run_id)

        async def tap_run(self, message: Any) -> AsyncIterator[bytes]:
            events = self.runs[message.run_id].events
            while True:
                data = await events.get()
                yield data
                if b"run_succeeded" in data:
                    return

        async def patch_step(self, message: Any) -> Any:
            run = self.runs[message.run_id]
            run.patch = message.inputs_patch.to_dict().get("value", {})
            self.durable({"patched": message.step_id, "patch": run.patch, "note": message.note})
            self.tell(
                message.run_id, "step_patched", message.step_id,
                inputs_patch={"value": run.patch}, note=message.note, source="PatchStep",
                previous={"inputs": {"value": {}}, "model": "", "env": {}}, model=None, env={},
            )  # fmt: skip
            return api.PatchStepResponse(step_id=message.step_id)

        async def resume_run(self, message: Any) -> Any:
            run = self.runs[message.run_id]
            step_id = run.steps[run.index]
            self.durable({"resumed": step_id})
            self.tell(message.run_id, "run_resumed", step_id)
            asyncio.get_running_loop().call_soon(self.run_step, message.run_id)
            return api.ResumeRunResponse(status=api.RunStatus.RUNNING, resumed_step_id=step_id)

        def run_step(self, run_id: str) -> None:
            run = self.runs[run_id]
            step_id = run.steps[run.index]
            value = {"n": run.index, **({"prev": run.last_output["n"]} if run.index else {})}
            output = run.last_output = {**value, **run.patch}
            run.patch = {}
            self.durable({"leased": step_id, "completed": step_id, "output": output})
            span = f"{run.seq:016x}"
            self.tell(
                run_id, "step_leased", step_id, attempt=1, seed=run.seq, env={}, span_id=span,
                inputs={"value": output}, model="",
            )  # fmt: skip
            self.tell(
                run_id, "step_completed", step_id, attempt=1, exit_code=0, artifacts=[],
                raw_output="", duration_ms=0.05, span_id=span, output=output,
                usage={"cost": 0.0, "tokens_out": 0, "tokens_in": 0},
                attestation_id=f"att_{run.seq:024x}", block="transform",
            )  # fmt: skip
            run.index += 1
            if run.index < len(run.steps):
                self.tell(run_id, "run_paused", run.steps[run.index])
            else:
                self.tell(run_id, "run_succeeded")

    return FloorRuntime()


async def serve(journal_dir: Path) -> None:
    """Serve on 127.0.0.1:0, print the address, stop at SIGINT/SIGTERM (the journal in
    ``journal_dir``)."""
    from grpclib.encoding.proto import ProtoCodec
    from grpclib.server import Server

    class EncodedEvents(ProtoCodec):
        """Events go out as upb encoded them; replies are betterproto2 messages."""

        def encode(self, message: Any, message_type: Any) -> bytes:
            if isinstance(message, bytes):
                return message
            data: bytes = super().encode(message, message_type)
            return data

    journal = os.open(journal_dir / "journal", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        await serve_until_stopped(Server([_service(journal)], codec=EncodedEvents()))
    finally:
        os.close(journal)


def floor_server() -> contextlib.AbstractContextManager[str]:
    """This module's server in a subprocess, its journal in a :func:`scratch_dir`; its address."""
    return plain_server("bench.time_travel_floor", str(scratch_dir()))


# --- the cycle on grpcio -------------------------------------------------------------------------


async def pause_patch_resume_grpcio(address: str, steps: int, chain_json: str) -> Any:
    """``time_travel``'s cycle (same run, same checks, same timing points) with grpcio."""
    import grpc
    from foundry.kernel.edge.grpc.fastproto import upb_class

    from .time_travel import CycleSample

    ids = [f"s{i:02d}" for i in range(steps)]
    sample = CycleSample([], [], [])
    run_event, message = upb_class("RunEvent"), upb_class
    async with grpc.aio.insecure_channel(address) as channel:
        submit = channel.unary_unary(RUNTIME + "SubmitRun")
        patch = channel.unary_unary(RUNTIME + "PatchStep")
        resume = channel.unary_unary(RUNTIME + "ResumeRun")
        request = message("SubmitRunRequest")()
        request.spec.ParseFromString(bytes(run_spec(chain_json, breakpoints=ids)))
        reply = await submit(request.SerializeToString(), timeout=30)
        run_id = message("SubmitRunResponse").FromString(reply).run_id
        tap = message("TapRunRequest")(run_id=run_id).SerializeToString()
        stream = channel.unary_stream(RUNTIME + "TapRun")(tap, timeout=TIMEOUT * 2)

        async def next_event(kind: str) -> tuple[float, Any]:
            while True:
                data = await asyncio.wait_for(stream.read(), timeout=TIMEOUT)
                if data is grpc.aio.EOF:
                    raise RuntimeError(f"the TapRun stream ended before {kind}")
                event = run_event.FromString(data)
                if event.kind == "run_failed":
                    raise RuntimeError(f"the run failed: {event.payload}")
                if event.kind == kind:
                    return time.perf_counter(), event

        try:
            for index, step_id in enumerate(ids):
                _, paused = await next_event("run_paused")
                if paused.step_id != step_id:
                    raise AssertionError(f"paused at {paused.step_id!r}, expected {step_id!r}")
                change = {"n": 1000 + index, "patched": True}
                patched = {**change, **({"prev": 1000 + index - 1} if index else {})}
                request = message("PatchStepRequest")(
                    run_id=run_id, step_id=step_id, note=f"bench patch {index}"
                )
                request.inputs_patch.update({"value": change})
                started = time.perf_counter()
                await patch(request.SerializeToString(), timeout=30)
                patched_at = time.perf_counter()
                resume_request = message("ResumeRunRequest")(run_id=run_id).SerializeToString()
                resumed = message("ResumeRunResponse").FromString(
                    await resume(resume_request, timeout=30)
                )
                resumed_at = time.perf_counter()
                if resumed.resumed_step_id != step_id:
                    raise AssertionError(f"resumed {resumed.resumed_step_id!r}, not {step_id!r}")
                arrived, completed = await next_event("step_completed")
                output = dict(completed.payload.struct_value["output"].items())
                if completed.step_id != step_id or output != patched:
                    raise AssertionError(f"{completed.step_id}: output {output!r}, not {patched!r}")
                sample.cycles_ms.append((arrived - started) * 1000)
                sample.patch_ms.append((patched_at - started) * 1000)
                sample.resume_ms.append((resumed_at - patched_at) * 1000)
            await next_event("run_succeeded")
        finally:
            stream.cancel()
    return sample


if __name__ == "__main__":
    asyncio.run(serve(Path(sys.argv[1])))
