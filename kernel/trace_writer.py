"""The trace archivist's child process: writes the framed files it reads from stdin until EOF.

Standard library only, run as a script (not ``-m``), so it starts in milliseconds.
"""

from __future__ import annotations

import os
import struct
import sys
from collections.abc import Iterable
from typing import BinaryIO

_HEADER = struct.Struct(">II")  # path length, data length


def frame(path: str, text: str) -> bytes:
    """One file for the archivist: its path and its (JSON) text."""
    encoded_path = path.encode()
    data = text.encode()
    return _HEADER.pack(len(encoded_path), len(data)) + encoded_path + data


def frames(blob: bytes) -> Iterable[tuple[str, bytes]]:
    offset = 0
    while offset < len(blob):
        path_length, data_length = _HEADER.unpack_from(blob, offset)
        offset += _HEADER.size
        path = blob[offset : offset + path_length].decode()
        offset += path_length
        yield path, blob[offset : offset + data_length]
        offset += data_length


class FileWriter:
    """Writes each file in place, making each folder once.

    Not through a temporary file and a rename: on ext4 that rename costs 6x the write (280 vs
    47 µs measured), and nobody reads a file while it is written — Trace answers from memory
    while a workflow is recent. A file torn by a crash is read as missing (the database has it).
    """

    def __init__(self) -> None:
        self._folders: set[str] = set()

    def write(self, path: str, data: bytes) -> None:
        folder = os.path.dirname(path)
        if folder not in self._folders:
            os.makedirs(folder, exist_ok=True)
            self._folders.add(folder)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)

    def write_all(self, blob: bytes) -> None:
        for path, data in frames(blob):
            self.write(path, data)


def _serve(stream: BinaryIO) -> None:
    writer = FileWriter()
    while header := stream.read(_HEADER.size):
        path_length, data_length = _HEADER.unpack(header)
        path = stream.read(path_length).decode()
        writer.write(path, stream.read(data_length))


if __name__ == "__main__":
    _serve(sys.stdin.buffer)
