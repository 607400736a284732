"""The signing process, the daemon's side: Ed25519 signatures off its interpreter lock.

The attestor starts it (``python -I signing_process.py KEY_FILE``: that file, which imports only
the standard library and ``cryptography``) and hands it the bytes to sign — the DSSE PAE of each
statement, a batch per frame, in one write to a pipe widened to hold a batch — on its stdin; it
answers with their signatures on its stdout, in order. In the daemon a worker thread signing one
statement at a time took the interpreter lock back after each signature, and behind a busy trio
thread each take waited out a switch interval (5 ms): 43 signatures once took 147 ms. Here a
batch costs the daemon a pipe write and a read, and the signatures are made on the other core.

The private key never crosses the pipe: the process reads it from its file, refusing it (exit 2)
if others may read it, as the daemon does at start. Its first answer is the raw public key, which
must be the daemon's before any signature is trusted (the attestor also verifies each batch's
last signature). Frames:

- request: ``count`` (4 bytes, big-endian), then per message ``length`` (4 bytes) and the bytes;
- answer: ``count`` signatures of 64 bytes each, nothing else.

stdin's end (the daemon stopping, or dying) ends it.
"""

from __future__ import annotations

import contextlib
import fcntl
import struct
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

SIGNATURE = 64  # bytes of an Ed25519 signature
PUBLIC = 32  # bytes of a raw Ed25519 public key
PIPE_BYTES = 1 << 20  # its stdin: a batch goes in one write (Linux's default maximum)
START_SECONDS = 30.0  # for the process to show its public key
SIGN_SECONDS = 30.0  # for a batch's signatures (512 take ~20 ms)
EXIT_SECONDS = 5.0  # a signer that does not end this long after its stdin closed is killed
_HEAD = struct.Struct(">I")
PROGRAM = Path(__file__).with_name("signing_process.py")


class SignerFailed(Exception):
    """The signing process is gone or answered nonsense: sign in the daemon instead."""


def frame(messages: Sequence[bytes]) -> bytes:
    """One request: ``count``, then each message with its length."""
    parts = [_HEAD.pack(len(messages))]
    for message in messages:
        parts += (_HEAD.pack(len(message)), message)
    return b"".join(parts)


class SignerProcess:
    """The daemon's side: start, :meth:`sign` batches, :meth:`close`."""

    def __init__(self, process: trio.Process, public_raw: bytes) -> None:
        assert process.stdin is not None
        assert process.stdout is not None
        self._process, self._stdin, self._stdout = process, process.stdin, process.stdout
        self._buffer = bytearray()
        self._public_raw: bytes | None = public_raw  # None once the process has shown it

    @classmethod
    async def start(cls, key_file: Path, public_raw: bytes) -> SignerProcess:
        """Start the process; before its first signatures are trusted, its first answer must be
        ``public_raw`` (it starts meanwhile: the daemon's start does not wait for it)."""
        process = await trio.lowlevel.open_process(
            [sys.executable, "-I", str(PROGRAM), str(key_file)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,  # its stop is ours: closing stdin, not a terminal's Ctrl-C
        )
        assert process.stdin is not None
        if isinstance(process.stdin, trio.lowlevel.FdStream):
            with contextlib.suppress(AttributeError, OSError):  # not Linux, or a lower limit
                fcntl.fcntl(process.stdin.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        return cls(process, public_raw)

    @property
    def pid(self) -> int:
        return self._process.pid

    async def sign(self, messages: Sequence[bytes]) -> list[bytes]:
        """The signatures of ``messages``, in order (SignerFailed when the process is gone)."""
        if not messages:
            return []
        try:
            if self._public_raw is not None:
                with trio.fail_after(START_SECONDS):
                    found = await self._read(PUBLIC)
                if found != self._public_raw:
                    raise SignerFailed("the signing process holds another key")
                self._public_raw = None
            with trio.fail_after(SIGN_SECONDS):
                await self._stdin.send_all(frame(messages))
                data = await self._read(SIGNATURE * len(messages))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise SignerFailed(f"the signing process is gone ({exc})") from None
        except trio.TooSlowError:
            raise SignerFailed("the signing process does not answer") from None
        return [data[i : i + SIGNATURE] for i in range(0, len(data), SIGNATURE)]

    async def _read(self, size: int) -> bytes:
        while len(self._buffer) < size:
            chunk = await self._stdout.receive_some(max(size - len(self._buffer), 1 << 16))
            if not chunk:
                code = self._process.poll()
                raise SignerFailed(f"the signing process ended (exit status {code})")
            self._buffer += chunk
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    async def close(self) -> None:
        """Close its stdin (it ends), wait for it (killed after ``EXIT_SECONDS``)."""
        with trio.CancelScope(shield=True):
            await self._stdin.aclose()
            with trio.move_on_after(EXIT_SECONDS):
                await self._process.wait()
                await self._stdout.aclose()
                return
            self._process.kill()
            await self._process.wait()
            await self._stdout.aclose()
