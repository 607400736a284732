"""An Emit's payload parsed on a worker thread (64 KiB or more) is the one parsed on the loop."""

from __future__ import annotations

from foundry.kernel.core.ids import payload_json_of
from foundry.kernel.edge.grpc.foundry_service import PAYLOAD_PARSED_ON_LOOP, parse_emit
from foundry.proto import foundry_api as api


def test_a_large_payload_is_stored_and_hashed_as_a_small_one():
    """(Its stored form, which its event id hashes, is made on a worker thread from 64 KiB.)"""
    text = '{"b": [' + ",".join(["1e15", "-0.0", "12345678901234567890", '"\u00e9"'] * 4_000)
    text += '], "a": {"z": 1, "y": 2.50}}'
    assert len(text) >= PAYLOAD_PARSED_ON_LOOP
    request = api.EmitRequest(event_type="numbers", payload_json=text)
    on_loop, ahead = parse_emit(request)(None), parse_emit(request, True)(None)
    assert ahead.payload == on_loop.payload
    assert on_loop.payload_json is None
    assert ahead.payload_json == payload_json_of(on_loop.payload)
    assert ahead.payload_json.startswith('{"a":{"y":2.5,"z":1},"b":[1000000000000000.0,-0.0,')
