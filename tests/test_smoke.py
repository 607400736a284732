from tests.e2e.helpers import block, emit, traced


def test_emit_then_trace_over_a_real_socket(daemon):
    reply = emit(daemon, "greet_requested", payload={"name": "Ada"})
    assert reply.workflow_id == reply.event_id

    trace = traced(daemon, reply.event_id)

    assert trace.found
    assert [e.event_type for e in trace.events] == [
        "greet_requested", "greeting_composed", "greeting_delivered",
    ]  # fmt: skip
    assert block(trace, "Compose Greeting").success
    assert block(trace, "Deliver Greeting").success
