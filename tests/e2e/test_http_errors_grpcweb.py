"""gRPC-Web (binary) end to end, and bad input over each protocol of the HTTP listener: the
right Connect code or gRPC status naming the field, never a 500 — and the daemon lives on."""

from __future__ import annotations

import gzip
import json
import socket
import time
from urllib.parse import unquote

import grpc
import h2.config
import h2.connection
import httpx
import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.protocol import ProtocolType
from foundry.proto import foundry_api, runtime_api

from tests.e2e.http_helpers import (
    connect_client,
    envelope,
    envelopes,
    grpc_web_call,
    method_info,
    url,
)
from tests.grpcio_client import raw_call, raw_channel

EMIT = "/foundry.Foundry/Emit"
STATUS = "/foundry.Foundry/Status"
TAP = "/fleetforge.runtime.v1.RuntimeService/TapRun"
SUBMIT = "/fleetforge.runtime.v1.RuntimeService/SubmitRun"
LIMIT = 64 * 1024
DAG = json.dumps({"steps": [{"id": "a", "type": "transform", "inputs": {"value": 1}}]})
STRING_AS_VARINT = b"\x08\x05"  # EmitRequest.event_type (field 1, a string) sent as a varint


@pytest.fixture(scope="module")
def daemon(shared_daemon):
    return shared_daemon(f"[daemon]\nmax_message_bytes = {LIMIT}\n")


def connect_error(response):
    assert response.headers["content-type"] == "application/json", response.text
    return response.status_code, response.json()["code"], response.json().get("message", "")


# --- gRPC-Web -----------------------------------------------------------------------------------


def test_grpc_web_unary_and_stream_with_the_connectrpc_client(daemon):
    with connect_client(daemon, ProtocolType.GRPC_WEB) as client:
        emitted = client.execute_unary(
            request=foundry_api.EmitRequest(event_type="nobody_listens", project="gw"),
            method=method_info(EMIT),
        )
        assert emitted.event_id.startswith("evt_")
        run_id = client.execute_unary(
            request=runtime_api.SubmitRunRequest(spec=runtime_api.RunSpec(dag_json=DAG)),
            method=method_info(SUBMIT),
        ).run_id
        events = list(client.execute_server_stream(
            request=runtime_api.TapRunRequest(run_id=run_id), method=method_info(TAP)
        ))  # fmt: skip
        assert events[-1].kind == "run_succeeded"
        with pytest.raises(ConnectError) as refused:
            client.execute_unary(
                request=foundry_api.EmitRequest(project="gw"), method=method_info(EMIT)
            )
    assert refused.value.code is Code.INVALID_ARGUMENT
    assert "event_type" in refused.value.message


def test_grpc_web_raw_frames_carry_the_reply_then_trailers(daemon):
    request = bytes(foundry_api.EmitRequest(event_type="nobody_listens", project="raw"))
    messages, trailers = grpc_web_call(daemon, EMIT, envelope(request))
    assert trailers["grpc-status"] == "0"
    assert foundry_api.EmitResponse().parse(messages[0]).event_id.startswith("evt_")


def test_grpc_web_bad_input_names_the_field(daemon):
    _, trailers = grpc_web_call(daemon, EMIT, envelope(STRING_AS_VARINT))
    assert trailers["grpc-status"] == "3"  # INVALID_ARGUMENT
    assert "event_type" in trailers["grpc-message"]


def test_grpc_web_unknown_method_is_unimplemented(daemon):
    _, trailers = grpc_web_call(daemon, "/foundry.Foundry/Nope", envelope(b""))
    assert trailers["grpc-status"] == "12"


def test_grpc_web_oversize_message_is_resource_exhausted(daemon):
    big = bytes(foundry_api.EmitRequest(event_type="x", payload_json="x" * (LIMIT + 10)))
    _, trailers = grpc_web_call(daemon, EMIT, envelope(big))
    assert trailers["grpc-status"] == "8"


# --- Connect JSON -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b'{"eventType": 5}', "event_type"),
        (b'{"eventType": "x", "throttle": "THROTTLE_NOPE"}', "THROTTLE_NOPE"),
        (b'{"eventType": "x", "payloadJson": "[1, 2]"}', "payload_json"),
        (b"{not json", "not a valid EmitRequest"),
        (b"[1, 2]", "JSON object"),
        (b'{"eventType": ["x"]}', "event_type"),
        (b"{" * 5000, "not a valid EmitRequest"),
    ],
    ids=["wrong type", "unknown enum", "payload not an object", "bad JSON", "not an object",
         "list for string", "deep nesting"],
)  # fmt: skip
def test_bad_json_is_invalid_argument_naming_the_field(daemon, body, needle):
    response = httpx.post(url(daemon, EMIT), content=body,
                          headers={"content-type": "application/json"})  # fmt: skip
    status, code, message = connect_error(response)
    assert (status, code) == (400, "invalid_argument")
    assert needle in message


def test_unknown_method_and_service_are_404_unimplemented(daemon):
    for path, what in (("/foundry.Foundry/Nope", "method"), ("/no.Such/Thing", "service")):
        response = httpx.post(url(daemon, path), json={})
        assert connect_error(response)[:2] == (404, "unimplemented")
        assert what in connect_error(response)[2]


def test_oversize_bodies_are_resource_exhausted(daemon):
    payload = {"eventType": "x", "payloadJson": "x" * (LIMIT + 10)}
    response = httpx.post(url(daemon, EMIT), json=payload)
    status, code, message = connect_error(response)
    # Connect's HTTP status for the code, with a length or without (it was 413, then 429)
    assert (status, code) == (429, "resource_exhausted")
    assert f"{len(json.dumps(payload).replace(' ', ''))} bytes is over" in message
    assert "max_message_bytes" in message

    def chunked():  # no content-length: refused while reading
        yield json.dumps(payload).encode()

    response = httpx.post(url(daemon, EMIT), content=chunked(),
                          headers={"content-type": "application/json"})  # fmt: skip
    status, code, message = connect_error(response)
    assert (status, code) == (429, "resource_exhausted")
    assert "more than" in message  # not its size
    assert "(the rest was not read)" in message


def padded_status_request(size: int) -> bytes:
    """A StatusRequest of exactly ``size`` bytes: an unknown field's bytes (skipped) pad it."""
    tag = b"\xc2\x3e"  # field 999, length-delimited
    for width in (1, 2, 3):  # the length's varint width
        body = size - len(tag) - width
        data = tag + varint(body) + b"p" * body
        if len(data) == size:
            return data
    raise AssertionError(size)


def varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes(out + bytes((value,)))


def test_an_enveloped_message_of_exactly_the_limit_is_read(daemon):
    """A gRPC-Web or Connect stream's body is its message behind a 5-byte prefix: a message of
    exactly max_message_bytes was refused by its Content-Length (a hunt), as Connect unary and
    the gRPC port read it."""
    _, trailers = grpc_web_call(daemon, STATUS, envelope(padded_status_request(LIMIT)))
    assert trailers["grpc-status"] == "0", trailers
    _, trailers = grpc_web_call(daemon, STATUS, envelope(padded_status_request(LIMIT + 1)))
    assert trailers["grpc-status"] == "8", trailers
    assert f"{LIMIT + 1} bytes is over the {LIMIT}-byte message limit" in unquote(
        trailers["grpc-message"]
    )


@pytest.mark.parametrize(
    ("header", "said"),
    [
        ("connect-timeout-ms: abc", "connect-timeout-ms: expected a number of at most 10 digits"),
        ("connect-timeout-ms: 12345678901", "got '12345678901'"),
        ("connect-protocol-version: 2", "connect-protocol-version must be '1': got '2'"),
    ],
)
def test_a_connect_streams_bad_header_is_its_end_of_stream_error(daemon, header, said):
    """A stream's client reads a 200 and its end-of-stream message (Connect protocol,
    Streaming-Response): these came as a unary call's 400 with a JSON body (a hunt), which a
    client reads as INTERNAL."""
    name, value = header.split(": ")
    response = httpx.post(
        url(daemon, TAP), content=envelope(b'{"runId": "run_nope"}'),
        headers={"content-type": "application/connect+json", name: value},
    )  # fmt: skip
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/connect+json"
    [(flags, end)] = envelopes(response.content)
    assert flags == 0x02
    error = json.loads(end)["error"]
    assert error["code"] == "invalid_argument"
    assert said in error["message"]


def test_an_unknown_grpc_encoding_is_unimplemented_naming_the_accepted_ones(daemon):
    """gRPC's compression rule: UNIMPLEMENTED, with a grpc-accept-encoding header (gRPC-Web
    named them only in its message: a hunt)."""
    response = httpx.post(
        url(daemon, STATUS), content=envelope(bytes(foundry_api.StatusRequest())),
        headers={"content-type": "application/grpc-web+proto", "grpc-encoding": "br"},
    )  # fmt: skip
    assert response.headers["grpc-status"] == "12"
    assert "unknown compression: 'br'" in unquote(response.headers["grpc-message"])
    accepted = {e.strip() for e in response.headers["grpc-accept-encoding"].split(",")}
    assert "gzip" in accepted
    _, trailers = grpc_web_call(daemon, STATUS, envelope(bytes(foundry_api.StatusRequest())))
    assert trailers["grpc-status"] == "0"
    empty = httpx.post(
        url(daemon, STATUS), content=envelope(bytes(foundry_api.StatusRequest())),
        headers={"content-type": "application/grpc-web+proto", "grpc-encoding": ""},
    )  # fmt: skip
    assert empty.headers.get("grpc-status") != "12", empty.headers  # no encoding named: identity


def test_unsupported_content_type_and_get_are_refused(daemon):
    response = httpx.post(url(daemon, EMIT), content=b"x", headers={"content-type": "text/plain"})
    assert response.status_code == 415
    response = httpx.get(url(daemon, EMIT), params={"encoding": "json", "message": "{}"})
    assert connect_error(response)[:2] == (405, "unimplemented")


# --- Connect binary -----------------------------------------------------------------------------


def test_bad_binary_is_invalid_argument_naming_the_field(daemon):
    response = httpx.post(url(daemon, EMIT), content=STRING_AS_VARINT,
                          headers={"content-type": "application/proto"})  # fmt: skip
    status, code, message = connect_error(response)
    assert (status, code) == (400, "invalid_argument")
    assert "event_type" in message
    garbage = httpx.post(url(daemon, EMIT), content=b"\xff\xff\xff",
                         headers={"content-type": "application/proto"})  # fmt: skip
    assert connect_error(garbage)[1] == "invalid_argument"


def test_binary_cut_short_is_invalid_argument_over_connect_and_grpc_web(daemon):
    whole = bytes(foundry_api.StatusRequest(workflow_id="evt_" + "0" * 24))
    cut = whole[:-3]  # the id's length says 28 bytes; 25 come
    response = httpx.post(url(daemon, STATUS), content=cut,
                          headers={"content-type": "application/proto"})  # fmt: skip
    status, code, message = connect_error(response)
    assert (status, code) == (400, "invalid_argument")
    assert "not a whole protobuf message" in message
    _, trailers = grpc_web_call(daemon, STATUS, envelope(cut))
    assert trailers["grpc-status"] == "3", trailers  # INVALID_ARGUMENT
    assert "not a whole protobuf message" in unquote(trailers["grpc-message"])  # percent-encoded
    found = httpx.post(url(daemon, STATUS), content=whole,
                       headers={"content-type": "application/proto"})  # fmt: skip
    assert found.status_code == 404  # the whole request is read and answered: no such workflow


def test_streaming_errors_end_the_stream_with_the_code(daemon):
    response = httpx.post(url(daemon, TAP), content=envelope(b'{"runId": 7}'),
                          headers={"content-type": "application/connect+json"})  # fmt: skip
    ((flags, end),) = envelopes(response.content)
    assert flags == 2
    assert json.loads(end)["error"]["code"] == "invalid_argument"
    assert "run_id" in json.loads(end)["error"]["message"]
    unknown = httpx.post(url(daemon, TAP), content=envelope(b'{"runId": "run_nope"}'),
                         headers={"content-type": "application/connect+json"})  # fmt: skip
    ((flags, end),) = envelopes(unknown.content)
    assert json.loads(end)["error"]["code"] == "not_found"


@pytest.mark.parametrize("kind", ["application/connect+json", "Application/Connect+JSON"])
def test_a_media_type_in_any_case_gets_its_protocols_answers(daemon, kind):
    """Media types are case-insensitive (connectrpc takes either): the edge's own checks took
    the upper-case one for no Connect stream — a compressed flag without an encoding got
    connectrpc's INTERNAL, an unknown method a unary JSON 404 instead of the stream's end."""
    compressed = httpx.post(url(daemon, TAP), content=envelope(b'{"runId": "r"}', flags=1),
                            headers={"content-type": kind})  # fmt: skip
    ((flags, end),) = envelopes(compressed.content)
    assert (compressed.status_code, flags) == (200, 2)
    assert json.loads(end)["error"]["code"] == "unimplemented"
    assert "declared encoding" in json.loads(end)["error"]["message"]
    unknown = httpx.post(url(daemon, "/fleetforge.runtime.v1.RuntimeService/Nope"),
                         content=envelope(b"{}"), headers={"content-type": kind})  # fmt: skip
    ((flags, end),) = envelopes(unknown.content)
    assert json.loads(end)["error"]["code"] == "unimplemented"


@pytest.mark.parametrize("kind", ["application/proto; charset=json", "application/proto;x-json=1"])
def test_a_replys_codec_is_the_media_types_not_a_parameters(daemon, kind):
    """connectrpc decodes ``application/proto; charset=json`` as proto and labels its reply so:
    the edge read "json" anywhere in the header and sent its large replies as JSON text under
    that label (a client decoding by content type could not read them)."""
    request = bytes(foundry_api.StatusRequest(limit=5))
    workflows = (
        foundry_api.StatusResponse()
        .parse(
            httpx.post(
                url(daemon, STATUS), content=request, headers={"content-type": "application/proto"}
            ).content  # fmt: skip
        )
        .workflows
    )
    reply = httpx.post(url(daemon, STATUS), content=request, headers={"content-type": kind})
    assert reply.status_code == 200, reply.text[:300]
    assert reply.headers["content-type"] == "application/proto"
    assert not reply.content.startswith(b"{")
    assert foundry_api.StatusResponse().parse(reply.content).workflows == workflows


@pytest.mark.parametrize("kind", ["Application/Grpc-Web+Proto", "APPLICATION/GRPC-WEB"])
def test_a_grpc_web_media_type_in_any_case_is_answered(daemon, kind):
    """(connectrpc compares gRPC-Web's case-sensitively: a bare 415, found by a review.)"""
    messages, trailers = grpc_web_call(daemon, STATUS,
                                       envelope(bytes(foundry_api.StatusRequest(limit=1))),
                                       content_type=kind)  # fmt: skip
    assert trailers["grpc-status"] == "0", trailers
    assert len(messages) == 1


@pytest.mark.parametrize("coding", ["gzip", "GZIP", "Gzip"])
def test_a_content_coding_in_any_case_is_inflated(daemon, coding):
    """Content codings are case-insensitive (RFC 9110): connectrpc compares them as written,
    and answered ``Content-Encoding: GZIP`` unimplemented."""
    body = gzip.compress(json.dumps({"limit": 1}).encode())
    reply = httpx.post(
        url(daemon, STATUS),
        content=body,
        headers={"content-type": "application/json", "content-encoding": coding},
    )
    assert reply.status_code == 200, reply.text[:300]
    assert "workflows" in reply.json() or reply.json() == {}


def test_the_daemon_still_answers_after_all_that(daemon):
    with connect_client(daemon) as client:
        reply = client.execute_unary(
            request=foundry_api.EmitRequest(event_type="nobody_listens", project="alive"),
            method=method_info(EMIT),
        )
    assert reply.event_id.startswith("evt_")
    assert "Traceback" not in daemon.stderr()


QUERY = "/foundry.analytics.v1.Analytics/Query"
EXPORT = "/foundry.analytics.v1.Analytics/ExportParquet"
GET_RUN = "/fleetforge.runtime.v1.RuntimeService/GetRun"
LIST_RUNS = "/fleetforge.runtime.v1.RuntimeService/ListRuns"
LIST_EVENTS = "/foundry.admin.v1.Admin/ListEvents"


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        # proto3 JSON puts any integer in any integer field: each stopped or wronged the daemon
        (QUERY, '{"sql": "select 1", "timeoutMs": -1}', "timeout_ms: -1 is out of the uint32"),
        (SUBMIT, '{"spec": {"dagJson": "{}", "seed": "99999999999999999999"}}', "spec.seed"),
        (QUERY, '{"sql": "select 1", "maxRows": 99999999999999999999}', "max_rows"),
        (EMIT, '{"eventType": "x", "throttle": true}', "throttle"),
        # a lone surrogate (only an escape makes one): an id's hash or a store query failed on it
        (EMIT, '{"eventType": "\\ud800"}', "eventType: text must be valid Unicode"),
        (GET_RUN, '{"runId": "run_\\udc00"}', "runId: text must be valid Unicode"),
        (QUERY, '{"sql": "select \'\\ud800\'"}', "sql: text must be valid Unicode"),
        (SUBMIT, '{"spec": {"dagJson": "{}", "inputs": [1]}}', "spec.inputs: a value of the wrong"),
        (EXPORT, '{"directory": "/tmp/a\\u0000b"}', "directory: a path cannot hold a NUL"),
        (
            LIST_EVENTS,
            '{"since": "9999-12-31T23:59:59-14:00"}',
            "since: '9999-12-31T23:59:59-14:00' is out",
        ),
        # a value Python cannot hold (DuckDB's INTERVAL goes further than timedelta): was 500
        (QUERY, '{"sql": "SELECT INTERVAL 100000000 YEAR AS i, [1] AS l"}', "cannot be read"),
        # forms date.fromisoformat takes and DuckDB refuses: 503 and a traceback
        (EXPORT, '{"directory": "/tmp/x", "since": "20260105"}', "since: expected YYYY-MM-DD"),
        (EXPORT, '{"directory": "/tmp/x", "since": "2026-W01-1"}', "since: expected YYYY-MM-DD"),
        # a fraction in an integer field: betterproto2 made it the integer below, acted on
        (SUBMIT, '{"spec": {"dagJson": "{}", "seed": 7.5}}', "spec.seed: 7.5 is not an integer"),
        (
            "/fleetforge.runtime.v1.RuntimeService/CheckChangeGate",
            '{"changeId": "c", "diffs": [{"path": "a", "linesAdded": 2}, '
            '{"path": "b", "linesDeleted": 0.5}]}',
            "diffs[1].lines_deleted: 0.5 is not an integer",
        ),
        # a key given twice, or a field in both spellings: the last one was acted on, so a
        # proxy or a reviewer reading the first saw another request
        (GET_RUN, '{"runId": "run_a", "runId": "run_b"}', "'runId': a key given twice"),
        (QUERY, '{"sql": "select 1", "sql": "select 2"}', "'sql': a key given twice"),
        (GET_RUN, '{"runId": "run_a", "run_id": "run_b"}', "run_id: given twice"),
        (SUBMIT, '{"spec": {"dagJson": "{}", "dag_json": "{}"}}', "spec.dag_json: given twice"),
        (EMIT, '{"eventType": "x", "payload": {"k": 1, "k": 2}}', "'k': a key given twice"),
        # in JSON's words: these said "got a varint", "a fixed-width number", Python's errors
        (EMIT, '{"eventType": 5}', "event_type: expected string, got a number"),
        (STATUS, '{"limit": "5x"}', "limit: '5x' is not an integer"),
        (STATUS, '{"limit": 1.5}', "limit: 1.5 is not an integer"),
        (STATUS, '{"limit": true}', "limit: true is not an integer"),
        (LIST_RUNS, '{"createdAfter": 12}', "created_after: a value of the wrong JSON type"),
        (QUERY, '{"sql": "select 1", "maxRows": []}', "max_rows: a value of the wrong JSON type"),
        (EMIT, '{"\\ud800": "a", "eventType": "a"}', "request: '\\ud800': text must be valid"),
        (
            SUBMIT,
            '{"spec": {"dagJson": "{}", "inputs": ' + '{"a": ' * 900 + "1" + "}" * 902,
            "request: JSON nested too deep to read",
        ),
    ],
)
def test_json_a_client_got_wrong_is_invalid_argument_naming_it(daemon, path, body, field):
    response = httpx.post(url(daemon, path), content=body,
                          headers={"content-type": "application/json"})  # fmt: skip
    status, code, message = connect_error(response)
    assert (status, code) == (400, "invalid_argument"), message
    assert field in message
    assert daemon.process.poll() is None, daemon.stderr()[-2000:]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32"])
def test_a_json_body_not_in_utf8_is_refused(daemon, encoding):
    """JSON between systems is UTF-8 (RFC 8259), Connect's too: json.loads of bytes read
    UTF-16 and UTF-32 as well, so another reader of the same body saw other text."""
    body = '{"eventType": "x", "project": "p"}'.encode(encoding)
    response = httpx.post(url(daemon, EMIT), content=body,
                          headers={"content-type": "application/json"})  # fmt: skip
    status, code, message = connect_error(response)
    assert (status, code) == (400, "invalid_argument")
    assert "not UTF-8" in message


@pytest.mark.parametrize(
    ("name", "stream"),
    [("content-encoding", False), ("connect-protocol-version", False),
     ("connect-timeout-ms", False), ("connect-content-encoding", True)],
)  # fmt: skip
def test_a_huge_protocol_header_is_refused_without_being_quoted(daemon, name, stream):
    """connectrpc's errors quoted these headers whole: a 60 KB answer to a 60 KB header."""
    headers = {name: "9" * 60_000}
    if stream:
        headers["content-type"] = "application/connect+json"
        response = httpx.post(url(daemon, TAP), content=envelope(b'{"runId": "run_nope"}'),
                              headers=headers)  # fmt: skip
        [(_, end)] = envelopes(response.content)
        error = json.loads(end)["error"]
        code, message = error["code"], error["message"]
    else:
        response = httpx.post(url(daemon, STATUS), content=b"{}",
                              headers={"content-type": "application/json", **headers})  # fmt: skip
        _, code, message = connect_error(response)
    assert code == "invalid_argument"
    assert message == f"header {name}: longer than 256 characters"
    assert len(response.content) < 300


def test_a_since_further_back_than_time_goes_lists_everything(daemon):
    response = httpx.post(url(daemon, LIST_EVENTS), json={"since": "99999999d"})
    assert response.status_code == 200, response.text  # an OverflowError answered 500


def test_grpc_over_http_1_1_is_refused_in_one_answer_and_over_h2c_is_served(daemon):
    """gRPC needs trailers, which HTTP/1.1 lacks: connectrpc answered UNKNOWN and logged a
    traceback of 17 lines for each such call. h2c on the same port serves gRPC as ever."""
    before = daemon.stderr().count("Traceback")
    response = httpx.post(url(daemon, "/foundry.Foundry/Status"), content=b"\x00" * 5,
                          headers={"content-type": "application/grpc"})  # fmt: skip
    assert response.headers["grpc-status"] == "12", response.headers
    assert "needs HTTP/2" in unquote(response.headers["grpc-message"])
    with raw_channel(daemon.http_address) as channel:  # grpcio: h2c, prior knowledge
        code, _ = raw_call(channel, "/foundry.Foundry/Status", b"", 10)
    assert code == grpc.StatusCode.OK
    assert daemon.stderr().count("Traceback") == before


def test_a_refusal_reaches_grpcio_over_h2c_as_its_status(daemon):
    """A call refused before connectrpc sees it (here: a foreign origin) answers gRPC with its
    status in trailers: grpcio read the headers-then-empty-DATA answer as UNKNOWN ("Stream
    removed")."""
    with raw_channel(daemon.http_address) as channel:
        method = channel.unary_unary(STATUS, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as refused:
            method(b"", timeout=10, metadata=[("origin", "https://evil.example")])
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "https://evil.example" in refused.value.details()


def test_a_client_gone_mid_call_leaves_no_traceback(daemon):
    """connectrpc raises what it could not answer; hypercorn logged each such call with a
    60-line traceback ("Error in ASGI Framework"): HTTP/2 resets made ~100,000 lines."""
    host, port = daemon.http_address.rsplit(":", 1)
    body = b'{"eventId": "evt_gone"}'
    request = (b"POST /foundry.Foundry/Trace HTTP/1.1\r\nHost: x\r\n"
               b"Content-Type: application/json\r\n"
               + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)  # fmt: skip
    for _ in range(20):
        with socket.create_connection((host, int(port)), timeout=5) as gone:
            gone.sendall(request)
    for _ in range(20):  # over h2c: the stream reset as soon as it is sent
        with socket.create_connection((host, int(port)), timeout=5) as gone:
            client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
            client.initiate_connection()
            client.send_headers(1, [(":method", "POST"), (":path", "/foundry.Foundry/Trace"),
                                    (":scheme", "http"), (":authority", "x"),
                                    ("content-type", "application/json")])  # fmt: skip
            client.send_data(1, body, end_stream=True)
            client.reset_stream(1)
            gone.sendall(client.data_to_send())
            time.sleep(0.02)
    time.sleep(0.5)
    assert "Error in ASGI Framework" not in daemon.stderr()
    assert daemon.process.poll() is None


@pytest.mark.parametrize("inner", ["archive", "spool/attestations", "."])
def test_an_export_into_the_daemons_home_is_refused(daemon, inner):
    """Into ``archive/`` the next start read the exported rows as archived ones (counted twice);
    into the attestation spool, every later start could not prepare its spool."""
    target = daemon.home / inner / "export"
    response = httpx.post(url(daemon, EXPORT), json={"directory": str(target)})
    status, code, message = connect_error(response)
    assert (status, code) == (400, "invalid_argument"), message
    assert "is inside the daemon's home" in message
    assert not target.exists()


def _raw_post(daemon, path: str, content_type: str, body: bytes, extra: bytes) -> bytes:
    """One HTTP/1.1 request as bytes (``extra``: header lines a client library would refuse)."""
    host, port = daemon.http_address.rsplit(":", 1)
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: "
            f"{content_type}\r\nContent-Length: {len(body)}\r\n").encode()  # fmt: skip
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head + extra + b"\r\n" + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


@pytest.mark.parametrize(
    ("path", "content_type", "body", "answer"),
    [
        (STATUS, "application/json", b'{"project": "latin1"}', b"content-type: application/json"),
        (STATUS, "application/grpc-web+proto", envelope(b""), b"grpc-status: 0"),
        (EMIT, "application/json", b'{"eventType": "x", "project": "latin1"}', b'"eventId"'),
    ],
)
def test_a_header_value_that_is_not_utf8_is_read_as_latin1_by_every_road(
    daemon, path, content_type, body, answer
):
    # HTTP allows such bytes (obs-text) and a browser's fetch() sends them: connectrpc decoded
    # values as strict UTF-8 and answered 500 "unknown", logging a traceback a request.
    reply = _raw_post(daemon, path, content_type, body, b"X-Note: caf\xe9\r\n")
    assert reply.startswith(b"HTTP/1.1 200"), reply[:300]
    assert answer in reply, reply[:600]
    assert "Error in ASGI" not in daemon.stderr()


@pytest.mark.parametrize(
    "header", [b"Content-Encoding: gzip\xe9", b"Content-Type: applicatioN/json\xe9"]
)
def test_a_content_coding_or_type_that_is_not_utf8_is_answered_not_a_500(daemon, header):
    """(Their values, lowercased, skipped the Latin-1 reading: a 500 and a traceback a request,
    a review found.)"""
    request = b"POST " + STATUS.encode() + b" HTTP/1.1\r\nHost: x\r\n" + header + b"\r\n"
    request += b"Content-Length: 2\r\nConnection: close\r\n\r\n{}"
    host, port = daemon.http_address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status_line = answer.split(b"\r\n", 1)[0]
    assert not status_line.startswith(b"HTTP/1.1 5"), answer[:300]
    assert "Error in ASGI" not in daemon.stderr()


RUNTIME = "/fleetforge.runtime.v1.RuntimeService/"


@pytest.mark.parametrize(
    ("path", "content_type", "body", "said"),
    [
        # not protobuf at all: a field was named ("workflow_id: expected string, got a NoneType")
        (STATUS, "application/proto", b"\x0f", "not a whole protobuf message"),
        (STATUS, "application/proto", b"\x0b", "not a whole protobuf message"),
        # a field under another wire type: "KeyError: 'int64'"
        (RUNTIME + "SubmitRun", "application/proto", b"\x0a\x09\x19" + b"\xff" * 8,
         "spec.seed: expected int64, got a 64-bit value"),
        # past Python's dates: "OverflowError: ..."
        (RUNTIME + "ListRuns", "application/proto", b"\x22\x0a\x08" + b"\xff" * 8 + b"\x7f",
         "created_after: seconds 9223372036854775807 is out of range (0001-01-01 to 9999-12-31)"),
        (RUNTIME + "ListRuns", "application/json",
         b'{"createdAfter": {"seconds": "99999999999999"}}', "created_after: out of range"),
        # once, and the number cut short (it was written twice, then 301 digits)
        (RUNTIME + "SubmitRun", "application/json", b'{"spec": {"dagJson": "{}", "seed": 1e300}}',
         "request: spec.seed: 10000000000000000525… (301 digits) is out of the int64 range"),
        # a wrapped int64 (Int64Value) was not held to its range: the branch was acknowledged,
        # its rows refused by the store, and other runs' rows of the same commit with them
        (RUNTIME + "CreateBranchRun", "application/json",
         b'{"runId": "run_x", "fromStep": "a", "seedMode": "BRANCH_SEED_MODE_CUSTOM", '
         b'"seed": "9223372036854775808"}',
         "request: seed: 9223372036854775808 is out of the Int64Value range"),
        # and its object form, {"value": …}, went unchecked: 1.5 was the seed 1
        (RUNTIME + "CreateBranchRun", "application/json",
         b'{"runId": "run_x", "fromStep": "a", "seedMode": "BRANCH_SEED_MODE_CUSTOM", '
         b'"seed": {"value": 1.5}}',
         "request: seed: expected a number, got an object"),
    ],
    ids=["wire-type-7", "open-group", "fixed64-int64", "timestamp-binary", "timestamp-json",
         "huge-number", "wrapped-int64", "wrapper-object"],
)  # fmt: skip
def test_a_malformed_request_is_refused_naming_what_is_wrong(
    daemon, path, content_type, body, said
):
    reply = _raw_post(daemon, path, content_type, body, b"")
    assert reply.startswith(b"HTTP/1.1 400"), reply[:300]
    message = json.loads(reply.partition(b"\r\n\r\n")[2])["message"]
    assert said in message
    assert "Error" not in message  # no Python exception's name
