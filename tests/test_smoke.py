from foundry.proto import foundry_api as api


def test_emit_then_trace_over_a_real_socket(daemon):
    reply = daemon.call(
        lambda f, _: f.emit(
            api.EmitRequest(
                event_type="greet_requested", project="p", payload_json='{"name":"Ada"}'
            )
        )
    )
    assert reply.workflow_id == reply.event_id
