"""Gzip request bodies read in time proportional to their size.

connectrpc's ``GzipCompression.decompress`` starts each gzip member over on the decompressor's
``unused_data``: a copy of the whole rest of the body, per member. A body of 210,000 empty
members (4 MiB, under the message limit) took minutes of the daemon's one thread — every call
on both ports waited, SIGTERM too. Here the body is fed in slices of ``SLICE`` bytes, so what
is left over after a member is at most a slice, and a body may hold at most ``MAX_MEMBERS``
members (a client writes one; the format allows several, concatenated).
"""

from __future__ import annotations

import zlib

from connectrpc.code import Code
from connectrpc.compression.gzip import GzipCompression
from connectrpc.errors import ConnectError

SLICE = 64 << 10
MAX_MEMBERS = 16


class BoundedGzip(GzipCompression):
    """connectrpc's gzip, its reading linear in the body and its members bounded."""

    def decompress(
        self, data: bytes | bytearray | memoryview, read_max_bytes: int | None = None
    ) -> bytes:
        body = memoryview(data)
        parts: list[bytes] = []
        total, offset, members = 0, 0, 0
        reader, started = zlib.decompressobj(wbits=31), False
        pending: bytes | memoryview = b""
        while True:
            if not pending:
                if offset >= len(body):
                    break
                pending = body[offset : offset + SLICE]
                offset += len(pending)
            room = 0 if read_max_bytes is None else read_max_bytes + 1 - total
            out = reader.decompress(pending, room)
            started = True
            total += len(out)
            parts.append(out)
            if read_max_bytes is not None and total > read_max_bytes:
                raise ConnectError(
                    Code.RESOURCE_EXHAUSTED,
                    f"message is larger than configured max {read_max_bytes}",
                )
            if reader.eof:
                members += 1
                pending = reader.unused_data  # (at most a slice)
                if (pending or offset < len(body)) and members >= MAX_MEMBERS:
                    raise ConnectError(
                        Code.INVALID_ARGUMENT,
                        f"gzip body of more than {MAX_MEMBERS} members (a client writes one)",
                    )
                reader, started = zlib.decompressobj(wbits=31), False
            else:
                tail = reader.unconsumed_tail
                if not out and len(tail) == len(pending):
                    raise zlib.error("decompressor made no progress")
                pending = tail
        if started:
            raise EOFError("Compressed file ended before the end-of-stream marker was reached")
        return b"".join(parts)
