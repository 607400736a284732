"""A tapper that cannot keep up is cut off with RESOURCE_EXHAUSTED; the run does not wait for it.

As in the Watch overflow test, the slow tapper's channel advertises the smallest HTTP/2 windows
(64 KiB) and reads nothing while the run goes on, so the server cannot send to it and the
broker's buffer (4 here) fills. The run must still finish; the tapper then reads an unbroken
prefix of the run's events and the stream ends with RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import asyncio

import pytest
from foundry.proto import runtime_api as api
from grpclib.client import Channel
from grpclib.config import Configuration
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from tests.runs.helpers import dag, spec

BUFFER = 4
STEPS = 80
PAD = "x" * 2000  # each lease and completion carries it: the 64 KiB window fills quickly
SMALLEST_WINDOW = 2**16 - 1


@pytest.fixture
def daemon(make_daemon):
    return make_daemon(f"[tap]\nsubscriber_buffer = {BUFFER}\n")


def _chain() -> str:
    steps = [{"id": "s0", "type": "transform", "inputs": {"value": PAD}}]
    steps += [
        {"id": f"s{i}", "type": "transform", "inputs": {"value": f"${{steps.s{i - 1}.output}}"}}
        for i in range(1, STEPS)
    ]
    return dag(*steps)


def test_a_tapper_that_falls_behind_is_cut_off_and_the_run_finishes(daemon):
    async def scenario(_, runtime):
        request = api.SubmitRunRequest(spec=spec(_chain(), breakpoints=["s0"]))
        run_id = (await runtime.submit_run(request)).run_id
        host, port = daemon.address.rsplit(":", 1)
        config = Configuration(
            http2_connection_window_size=SMALLEST_WINDOW, http2_stream_window_size=SMALLEST_WINDOW
        )
        slow_channel = Channel(host, int(port), config=config)
        try:
            stream = api.RuntimeServiceStub(slow_channel).tap_run(api.TapRunRequest(run_id=run_id))
            seen = []
            async with asyncio.timeout(30):
                async for event in stream:  # the history, up to the pause: now subscribed
                    seen.append(event)
                    if event.kind == "run_paused":
                        break
            await runtime.resume_run(api.ResumeRunRequest(run_id=run_id))

            async with asyncio.timeout(60):  # the slow tapper reads nothing meanwhile
                while True:
                    run = (await runtime.get_run(api.GetRunRequest(run_id=run_id))).run
                    if run.status == api.RunStatus.SUCCEEDED:
                        break
                    await asyncio.sleep(0.05)

            async def read_to_the_end():
                async with asyncio.timeout(30):
                    async for event in stream:
                        seen.append(event)

            with pytest.raises(GRPCError) as caught:
                await read_to_the_end()
            final = (await runtime.get_run(api.GetRunRequest(run_id=run_id))).run
            return seen, caught.value, final
        finally:
            slow_channel.close()

    seen, error, run = daemon.call(scenario)

    assert error.status is Status.RESOURCE_EXHAUSTED
    assert "fell behind" in error.message
    seqs = [int(event.payload.to_dict()["seq"]) for event in seen]
    assert seqs == list(range(1, len(seqs) + 1)), "what arrived is an unbroken prefix"
    assert seen[-1].kind != "run_succeeded"  # cut off before the end ...
    assert run.status == api.RunStatus.SUCCEEDED  # ... while the run itself finished
    assert all(step.status == "succeeded" for step in run.steps)
