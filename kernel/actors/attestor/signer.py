"""The signing process, the daemon's side: attestations drafted and signed off its interpreter
lock.

The attestor starts it (``python -I signing_process.py KEY_FILE``: that file imports only the
standard library, ``cryptography``, PyNaCl and our three modules that draft statements) and
hands it a batch of jobs — plain facts (``drafting.py``), one frame per batch, in one write to a
pipe widened to hold a batch — on its stdin; it answers with each job's canonical statement and its
signature, in order, on its stdout. Drafting a step attestation (two JSON hashes, the claims,
the statement, its digest) cost the trio thread ~25 µs and its signature ~35 µs more; here a
batch costs the daemon a pickle, a pipe write and a read, and the work is done on the other
core. (A worker thread signing in the daemon took the interpreter lock back after each
signature, and behind a busy trio thread each take waited out a switch interval: 43 signatures
once took 147 ms.)

The private key never crosses the pipe: the process reads it from its file, refusing it (exit 2)
if others may read it, as the daemon does at start. Its first answer is the raw public key, which
must be the daemon's before any signature is trusted (the attestor also verifies each batch's
last signature). Frames, both ways:
``length`` (4 bytes, big-endian), then that many bytes of ``drafting.dumps`` — ``(heads, jobs,
to_spool)`` one way, ``(results, heads, spooled)`` (or None: a batch it could not read) the
other. Neither side unpickles anything but JSON values, bytes and tuples.

A batch of a run's attestations (no gate decision's or eval result's: those are journaled)
names a file of the daemon's spool (``to_spool``: its path and each job's row meta): the process
writes the rows there itself, and answers only a None for each (but the last, whose signature the
attestor checks) — the ~1 KB a row of statement and signature no longer comes back through the
pipe, is not unpickled, nor made a row on the trio thread (~3 µs a step attestation there): DuckDB
reads the file (``store/tables.py``, ``insert_spooled``).

stdin's end (the daemon stopping, or dying) ends it.
"""

from __future__ import annotations

import pickle
import struct
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import trio
from foundry.kernel.actors.attestor.drafting import Heads, Job, Result, Spool, dumps, loads
from foundry.kernel.actors.pipes import PIPE_BYTES, widen
from foundry.kernel.actors.threads import in_thread
from foundry.kernel.core.json_input import json_values_past

PUBLIC = 32  # bytes of a raw Ed25519 public key
START_SECONDS = 30.0  # for the process to show its public key
SIGN_SECONDS = 30.0  # for a batch's drafts and signatures (512 steps take ~30 ms)
EXIT_SECONDS = 5.0  # a signer that does not end this long after its stdin closed is killed
_HEAD = struct.Struct(">I")


def _framed(batch: tuple[Heads, list[Job], Spool | None]) -> bytes:
    """A batch as the signing process reads it: its length, then its pickle."""
    body = dumps(batch)
    return _HEAD.pack(len(body)) + body


PROGRAM = Path(__file__).with_name("signing_process.py")


class SignerFailed(Exception):
    """The signing process is gone or answered nonsense: sign in the daemon instead."""


class SignerProcess:
    """The daemon's side: start, :meth:`draft` batches, :meth:`close`."""

    def __init__(self, process: trio.Process, public_raw: bytes) -> None:
        assert process.stdin is not None
        assert process.stdout is not None
        self._process, self._stdin, self._stdout = process, process.stdin, process.stdout
        self._pending = b""  # read past the last frame
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
        for pipe in (process.stdin, process.stdout):  # a batch, and its answer, in one go
            widen(pipe)
        return cls(process, public_raw)

    @property
    def pid(self) -> int:
        return self._process.pid

    async def draft(
        self, heads: Heads, jobs: Sequence[Job], to_spool: Spool | None = None
    ) -> tuple[list[Result | None], Heads, bool] | None:
        """``drafting.draft_batch(heads, jobs, sign)``, made by the process (SignerFailed when it
        is gone), and whether its rows went to ``to_spool``'s file (``drafting.spool``: then
        its results are as that leaves them); None when it could not read the batch."""
        batch = (heads, list(jobs), to_spool)
        try:  # (a batch of MB outputs: ~10 ms each to pickle and frame, then their turn)
            request = await in_thread(_framed, batch) if json_values_past(jobs) else _framed(batch)
        except pickle.PicklingError:
            return None  # a value that is not JSON: the caller drafts this batch itself
        try:
            if self._public_raw is not None:
                with trio.fail_after(START_SECONDS):
                    found = await self._read(PUBLIC)
                if found != self._public_raw:
                    raise SignerFailed("the signing process holds another key")
                self._public_raw = None
            with trio.fail_after(SIGN_SECONDS):
                await self._stdin.send_all(request)
                (length,) = _HEAD.unpack(await self._read(_HEAD.size))
                answer = await self._read(length)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise SignerFailed(f"the signing process is gone ({exc})") from None
        except trio.TooSlowError:
            raise SignerFailed("the signing process does not answer") from None
        try:
            value = loads(answer)
            if value is None:
                return None
            results, after, spooled = value
        except Exception as exc:
            raise SignerFailed(f"the signing process answered nonsense ({exc})") from None
        if not isinstance(results, list) or len(results) != len(jobs):
            raise SignerFailed("the signing process answered another number of results")
        return results, after, spooled is True

    async def _read(self, size: int) -> bytes:
        """The next ``size`` bytes of its stdout. An answer (~1.2 KB a step attestation) is
        copied once at most: it usually comes in one chunk, with its length in front."""
        chunks: list[bytes | bytearray] = [self._pending]
        have = len(chunks[0])
        while have < size:
            chunk = await self._stdout.receive_some(max(size - have, PIPE_BYTES))
            if not chunk:
                code = self._process.poll()
                raise SignerFailed(f"the signing process ended (exit status {code})")
            chunks.append(chunk)
            have += len(chunk)
        parts = [chunk for chunk in chunks if chunk]
        data = bytes(parts[0]) if len(parts) == 1 else b"".join(parts)  # bytes: not copied
        if have == size:
            self._pending = b""
            return data
        self._pending = data[size:]
        return data[:size]

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
