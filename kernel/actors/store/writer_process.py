"""The journal's writer process: writes a record where the store says, then ``fdatasync``.

Run by its path (``python -I THIS_FILE SOCKET_FD``: the standard library only, no import of
``foundry``), by ``journal_writer.py``, which says why. It reads messages from a ``SOCK_SEQPACKET``
socket (one message, one request; :data:`HEAD`, little-endian):

- ``SEGMENT``, with one file descriptor attached (``SCM_RIGHTS``): the journal segment the
  appends that follow go to (a descriptor it held before is closed);
- ``APPEND offset`` then the bytes: write them at ``offset`` of the segment and ``fdatasync``;
  answer one :data:`REPLY` — 0, or the ``errno`` that failed it, after writing zeros back over
  the bytes (a failed append must not leave half a record before the next one).

The end of the socket (the daemon stopped, or died) ends it. It never reads a file, never opens
one and never decides where anything goes: the daemon's journal does.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import struct
import sys

HEAD = struct.Struct("<BQ")  # operation, offset
REPLY = struct.Struct("<i")  # 0 or an errno
SEGMENT, APPEND = 1, 2
MAX_MESSAGE = 1 << 20  # larger than any append the daemon sends this way


def serve(channel: socket.socket) -> None:
    segment = -1
    while True:
        data, fds, flags, _ = socket.recv_fds(channel, MAX_MESSAGE, 1)
        if not data:
            return  # the daemon is gone
        operation, offset = HEAD.unpack_from(data)
        if operation == SEGMENT and fds:
            if segment >= 0:
                os.close(segment)
            segment = fds[0]
            continue
        for extra in fds:
            os.close(extra)
        if operation != APPEND or flags & socket.MSG_TRUNC or segment < 0:
            channel.send(REPLY.pack(errno.EINVAL))
            continue
        channel.send(REPLY.pack(append(segment, memoryview(data)[HEAD.size :], offset)))


def append(segment: int, record: memoryview, offset: int) -> int:
    """Write ``record`` at ``offset`` and make it durable: 0, or the errno that failed it."""
    try:
        _write_all(segment, record, offset)
        os.fdatasync(segment)
    except OSError as exc:
        with contextlib.suppress(OSError):
            _write_all(segment, memoryview(bytes(len(record))), offset)
        return exc.errno or errno.EIO
    return 0


def _write_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon ends it by closing the socket
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the daemon died
        serve(socket.socket(fileno=int(sys.argv[1])))
