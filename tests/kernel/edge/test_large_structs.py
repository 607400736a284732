"""A request's Structs of many values are made JSON, checked and stored off the trio thread:
a 4 MB CheckChangeGate (720,000 values) held the daemon's loop for seconds, every other client
waiting (an HTTP edge hunt). Small ones stay on the loop (a thread costs a hop)."""

from __future__ import annotations

import threading

from foundry.kernel.actors.gate.messages import CheckChangeGate
from foundry.kernel.actors.mailbox import ask
from foundry.kernel.edge.grpc import fastproto, runtime_service
from foundry.proto import runtime_api as api
from foundry.proto.generated.google.protobuf import Struct

from tests.kernel.harness import running_kernel


def big(values: int) -> Struct:
    return Struct.from_dict({f"k{i}": [0.5, 1.5] for i in range(values // 2)})


async def test_a_struct_of_many_values_is_made_json_on_a_worker_thread(monkeypatch):
    threads: list[str] = []
    real = runtime_service._json_object

    def spied(struct, field):
        threads.append(threading.current_thread().name)
        return real(struct, field)

    monkeypatch.setattr(runtime_service, "_json_object", spied)
    trio_thread = threading.current_thread().name
    small = await runtime_service._json_of(big(100), "spec.inputs")
    large = await runtime_service._json_of(big(10_000), "spec.inputs")
    assert small is not None
    assert large is not None
    assert len(large) == 5_000
    assert threads[0] == trio_thread
    assert threads[1] != trio_thread


async def test_a_gate_request_is_checked_and_decided_on_a_worker_thread(tmp_path, monkeypatch):
    from foundry.kernel.actors.gate import actor as gate_actor

    threads: list[str] = []
    real = gate_actor.checked_request

    def spied(request):
        threads.append(threading.current_thread().name)
        return real(request)

    monkeypatch.setattr(gate_actor, "checked_request", spied)
    message = api.CheckChangeGateRequest(change_id="c", telemetry=big(10_000))
    request = fastproto.gate_request(message, runtime_service._json_object)
    async with running_kernel(tmp_path, []) as k:
        assert k.gate is not None
        stored = await ask(k.gate, lambda r: CheckChangeGate(request, r))
    assert len(stored.decision.telemetry) == 5_000
    assert threads
    assert threading.current_thread().name not in threads
