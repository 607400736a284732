"""Bad input gets INVALID_ARGUMENT naming the field, and never harms the daemon or its data."""

from __future__ import annotations

import grpc
import pytest
from foundry.proto import foundry_api as api
from grpclib.const import Status

from tests.e2e.helpers import emit, finished, status, trace, traced
from tests.grpcio_client import raw_call, raw_channel
from tests.helpers import DEADLINE, grpc_error

DEEP = 100_000  # nesting deeper than any JSON parser recurses


@pytest.fixture(scope="module")
def daemon(shared_daemon):
    return shared_daemon()


@pytest.fixture(scope="module")
def earlier(daemon):
    """A workflow completed before any bad input arrives."""
    reply = emit(daemon, "greet_requested", payload={"name": "Kept"})
    finished(daemon, reply.workflow_id)
    traced(daemon, reply.event_id)
    return reply


def assert_unharmed(daemon, earlier):
    """The daemon still serves, and what it stored earlier is intact."""
    chain = trace(daemon, earlier.event_id)
    assert chain.found
    assert len(chain.events) == 3
    [workflow] = status(daemon, earlier.workflow_id)
    assert workflow.state == "completed"
    reply = emit(daemon, "greet_requested", payload={"name": "After"})
    assert finished(daemon, reply.workflow_id).state == "completed"


def bad(payload_json: str, event_type: str = "x") -> api.EmitRequest:
    return api.EmitRequest(event_type=event_type, project="p", payload_json=payload_json)


BAD_EMITS = {
    "empty event_type": (bad("", event_type=""), "event_type"),
    "invalid JSON": (bad("{"), "payload_json"),
    "JSON array": (bad("[1, 2]"), "payload_json"),
    "JSON string": (bad('"hi"'), "payload_json"),
    "JSON null": (bad("null"), "payload_json"),
    "NaN": (bad('{"a": NaN}'), "payload_json"),
    "Infinity": (bad('{"a": -Infinity}'), "payload_json"),
    "overflowing number": (bad('{"a": 1e999}'), "payload_json"),
    "lone surrogate": (bad('{"a": "\\ud800"}'), "payload_json"),
    "nested too deep": (bad('{"a":' * DEEP + "1" + "}" * DEEP), "payload_json"),
    "nested past serde_json's limit": (bad('{"a":' * 128 + "1" + "}" * 128), "payload_json"),
    "only spaces": (bad("   "), "payload_json"),  # not empty, so not absent: and not JSON
    "a Unicode space": (bad("\u00a0"), "payload_json"),  # no JSON whitespace at all
    # A shell block gets both in its environment, which cannot hold a NUL.
    "NUL in event_type": (bad("{}", event_type="greet\0requested"), "event_type"),
    "NUL in project": (
        api.EmitRequest(event_type="x", project="a\0b", payload_json="{}"),
        "project",
    ),
}


@pytest.mark.parametrize(("request_", "field"), BAD_EMITS.values(), ids=BAD_EMITS.keys())
def test_bad_emit_is_invalid_argument_naming_the_field(daemon, earlier, request_, field):
    error = grpc_error(daemon, lambda f, _: f.emit(request_))
    assert error.status is Status.INVALID_ARGUMENT, error
    assert error.message.startswith(f"{field}:"), error.message
    assert_unharmed(daemon, earlier)


def test_unknown_throttle_number_is_invalid_argument(daemon, earlier, grpcio_client):
    pb = grpcio_client.foundry_pb2
    with grpcio_client.connect(daemon.address) as (foundry, _):
        request = pb.EmitRequest(event_type="greet_requested", project="p")
        request.throttle = 7  # proto3 enums are open: any number goes on the wire
        with pytest.raises(grpc.RpcError) as caught:
            foundry.Emit(request, timeout=DEADLINE)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("throttle:")
    assert "7" in caught.value.details()
    assert_unharmed(daemon, earlier)


def test_trace_without_an_event_id_is_invalid_argument(daemon, earlier):
    error = grpc_error(daemon, lambda f, _: f.trace(api.TraceRequest(event_id="")))
    assert error.status is Status.INVALID_ARGUMENT
    assert error.message.startswith("event_id:")
    assert_unharmed(daemon, earlier)


def test_status_of_a_hostile_workflow_id_is_not_found(daemon, earlier):
    hostile = "evt_x' OR 1=1; DROP TABLE workflows; --"
    error = grpc_error(daemon, lambda f, _: f.status(api.StatusRequest(workflow_id=hostile)))
    assert error.status is Status.NOT_FOUND
    assert_unharmed(daemon, earlier)


def test_a_request_that_does_not_parse_is_invalid_argument(daemon, earlier):
    with raw_channel(daemon.address) as channel:
        # event_type: invalid UTF-8
        code, details = raw_call(channel, "/foundry.Foundry/Emit", b"\x0a\x03\xff\xfe\xfd")
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("request: event_type: not valid UTF-8")
    assert_unharmed(daemon, earlier)


def test_odd_but_valid_names_and_payloads_are_accepted(daemon, earlier):
    odd = api.EmitRequest(
        event_type="../../etc/passwd\n",
        project="a/../../b ü",
        payload_json='{"ü": "\\u00fc", "big": 123456789012345678901234567890, "deep": [[[[]]]]}',
    )
    reply = daemon.call(lambda f, _: f.emit(odd))
    assert reply.workflow_id == ""
    [event] = traced(daemon, reply.event_id).events
    assert (event.event_type, event.project) == (odd.event_type, odd.project)
    assert_unharmed(daemon, earlier)
