"""``h2_guard``: header blocks are bounded before HPACK reads them (h2's internals, touched
there alone: the first test is the canary that says when h2 changed)."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.errors
import h2.events
import hpack
import pytest
from foundry.kernel.edge.h2_guard import header_blocks_are_boundable, limit_header_blocks
from h2.exceptions import DenialOfServiceError

REQUEST = [(":method", "POST"), (":scheme", "http"), (":path", "/p"), (":authority", "a")]


def test_h2_is_as_the_guard_expects():
    assert header_blocks_are_boundable() is None
    assert limit_header_blocks()
    assert limit_header_blocks()  # idempotent


def _server() -> h2.connection.H2Connection:
    limit_header_blocks()
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    server.initiate_connection()
    server.receive_data(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(0x04, 0, 0, b""))
    return server


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    head = len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big")
    return head + payload


def _block(block: bytes, size: int = 16_384) -> bytes:
    parts = [block[at : at + size] for at in range(0, len(block), size)]
    return b"".join(
        _frame(0x01 if i == 0 else 0x09, (0x04 if i == len(parts) - 1 else 0), 1, part)
        for i, part in enumerate(parts)
    )


def test_a_request_of_large_headers_is_read():
    """The header list's own cap decides (the gRPC port refuses a call's metadata past 64 KiB
    call by call, its other calls going on): a block is not refused for its size."""
    block = hpack.Encoder().encode([*REQUEST, ("x-big", "v" * 40_000)], huffman=False)
    events = _server().receive_data(_block(bytes([0x20, 0x20]) + block))  # two updates: fine
    (request,) = [e for e in events if isinstance(e, h2.events.RequestReceived)]
    assert dict(request.headers)[b"x-big"] == b"v" * 40_000


@pytest.mark.parametrize(
    "block",
    [
        bytes([0x20] * 3) + hpack.Encoder().encode(REQUEST),
        bytes([0x3F, 0xE1, 0x1F] * 3) + hpack.Encoder().encode(REQUEST),  # sizes of 4,096
        b"\x20" * 1_000_000,
    ],
    ids=["three size updates", "three long size updates", "a million"],
)
def test_a_block_past_the_bounds_closes_the_connection_calmly(block):
    server = _server()
    with pytest.raises(DenialOfServiceError):
        server.receive_data(_block(block))
    goaway = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    goaway.initiate_connection()
    events = goaway.receive_data(server.data_to_send())
    (ended,) = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
    assert ended.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
