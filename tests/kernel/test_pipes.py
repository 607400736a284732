"""``actors/pipes.py``: the pipes to the helper processes take a batch in one write."""

from __future__ import annotations

import fcntl
import subprocess

import trio
from foundry.kernel.actors.pipes import PIPE_BYTES, widen


async def test_a_helpers_pipe_takes_a_batch_in_one_write():
    process = await trio.lowlevel.open_process(["cat"], stdin=subprocess.PIPE,
                                               stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        assert isinstance(process.stdin, trio.lowlevel.FdStream)
        before = fcntl.fcntl(process.stdin.fileno(), fcntl.F_GETPIPE_SZ)
        widen(process.stdin)
        assert before < PIPE_BYTES == fcntl.fcntl(process.stdin.fileno(), fcntl.F_GETPIPE_SZ)
        await process.stdin.aclose()
    finally:
        with trio.CancelScope(shield=True):
            process.kill()
            await process.wait()


def test_what_is_not_a_pipe_is_left_alone():
    widen(None)
    widen(object())
