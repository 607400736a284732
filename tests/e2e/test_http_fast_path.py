"""The short road for unary Connect calls of Emit (``kernel/edge/http/unary.py``) against
connectrpc's own path on the same daemon: the same replies, the same errors byte for byte, the
cases it leaves to connectrpc, keep-alive framing, and clients that leave mid-call."""

from __future__ import annotations

import gzip
import http.client
import json
import socket

import httpx
import pytest
from foundry.proto import foundry_api

from tests.e2e.http_helpers import url

EMIT = "/foundry.Foundry/Emit"
LIMIT = 64 * 1024
JSON = {"content-type": "application/json"}
PROTO = {"content-type": "application/proto"}
# A deadline header is one of the things the short road leaves to connectrpc.
BY_CONNECTRPC = {"connect-timeout-ms": "30000"}


@pytest.fixture(scope="module")
def daemon(shared_daemon):
    return shared_daemon(f"[daemon]\nmax_message_bytes = {LIMIT}\n")


def post(daemon, body, headers, **extra):
    return httpx.post(url(daemon, EMIT), content=body, headers={**headers, **extra}, timeout=30)


def test_emit_replies_alike_by_either_road(daemon):
    body = json.dumps({"eventType": "nobody_listens", "project": "fast"}).encode()
    gzip_ok = {"accept-encoding": "gzip"}
    fast = post(daemon, body, JSON, **gzip_ok)
    generic = post(daemon, body, JSON, **gzip_ok, **BY_CONNECTRPC)
    for response in (fast, generic):
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        assert response.json()["eventId"].startswith("evt_")
    assert sorted(fast.json()) == sorted(generic.json())
    # the roads differ only where Connect leaves the server a choice: compressing the reply
    assert generic.headers["content-encoding"] == "gzip"
    assert "content-encoding" not in fast.headers
    assert fast.headers["content-length"] == str(len(fast.content))
    assert "transfer-encoding" not in fast.headers
    assert fast.json()["eventId"] != generic.json()["eventId"]  # two events, both stored

    binary = bytes(foundry_api.EmitRequest(event_type="nobody_listens", project="fast"))
    reply = post(daemon, binary, PROTO)
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "application/proto"
    assert foundry_api.EmitResponse().parse(reply.content).event_id.startswith("evt_")


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b'{"eventType": 5}', JSON),
        (b'{"eventType": "x", "throttle": "THROTTLE_NOPE"}', JSON),
        (b'{"eventType": "x", "payloadJson": "[1, 2]"}', JSON),
        (b'{"project": "no event type"}', JSON),
        (b"{not json", JSON),
        (b"[1, 2]", JSON),
        (b"{" * 5000, JSON),
        (b"\x08\x05", PROTO),
        (b"\xff\xff\xff", PROTO),
    ],
    ids=["wrong type", "unknown enum", "payload not an object", "no event type", "bad JSON",
         "not an object", "deep nesting", "varint for string", "garbage"],
)  # fmt: skip
def test_errors_are_the_same_bytes_by_either_road(daemon, body, headers):
    fast = post(daemon, body, headers)
    generic = post(daemon, body, headers, **BY_CONNECTRPC)
    assert fast.status_code == generic.status_code == 400
    assert fast.headers["content-type"] == generic.headers["content-type"] == "application/json"
    assert fast.content == generic.content
    assert fast.json()["code"] == "invalid_argument"


def test_chunked_oversize_is_refused_alike_by_either_road(daemon):
    payload = json.dumps({"eventType": "x", "payloadJson": "x" * (LIMIT + 10)}).encode()

    def chunked():  # no content-length: refused while reading
        yield payload

    fast = post(daemon, chunked(), JSON)
    generic = post(daemon, chunked(), JSON, **BY_CONNECTRPC)
    assert fast.status_code == generic.status_code == 429
    assert fast.json()["code"] == generic.json()["code"] == "resource_exhausted"
    assert "max_message_bytes" in fast.json()["message"]


def test_what_the_short_road_leaves_to_connectrpc_still_works(daemon):
    body = json.dumps({"eventType": "nobody_listens"}).encode()
    compressed = post(daemon, gzip.compress(body), JSON, **{"content-encoding": "gzip"})
    assert compressed.status_code == 200, compressed.text
    assert compressed.json()["eventId"].startswith("evt_")
    future = post(daemon, body, JSON, **{"connect-protocol-version": "2"})
    assert (future.status_code, future.json()["code"]) == (400, "invalid_argument")
    assert "connect-protocol-version" in future.json()["message"]
    bad_deadline = post(daemon, body, JSON, **{"connect-timeout-ms": "soon"})
    assert bad_deadline.json()["code"] == "invalid_argument"


def test_many_calls_on_one_keep_alive_connection(daemon):
    host, _, port = daemon.http_address.rpartition(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        for n in range(20):
            body = json.dumps({"eventType": "nobody_listens", "payloadJson": f'{{"n": {n}}}'})
            connection.request("POST", EMIT, body=body, headers=JSON)
            response = connection.getresponse()
            assert response.status == 200
            assert json.loads(response.read())["eventId"].startswith("evt_")
        assert connection.sock is not None  # never closed and reopened
    finally:
        connection.close()


def test_clients_that_leave_mid_call_do_not_hurt_the_daemon(daemon):
    host, _, port = daemon.http_address.rpartition(":")
    head = (f"POST {EMIT} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
            "content-length: {}\r\n\r\n")  # fmt: skip
    whole = b'{"eventType": "nobody_listens"}'
    for request in (
        head.format(100).encode() + whole,  # the body never completes
        head.format(len(whole)).encode() + whole,  # gone before the reply
    ):
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(request)
    after = post(daemon, whole, JSON)
    assert after.status_code == 200
    assert "Traceback" not in daemon.stderr()
