"""A block's command: its output kept within a bound, its failures as they were."""

from __future__ import annotations

import sys

import pytest
import trio
import trio.testing
from foundry.kernel.blocks.children import OUTPUT_TAIL, read_kept, run_capturing


async def _kept(data: bytes, limit: int) -> bytes:
    send, receive = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:

        async def write() -> None:
            for start in range(0, len(data), 10_000):
                await send.send_all(data[start : start + 10_000])
            await send.aclose()

        nursery.start_soon(write)
        return await read_kept(receive, limit)


async def test_output_within_the_limit_is_kept_whole():
    data = bytes(range(256)) * 1_000
    assert await _kept(data, len(data)) == data


async def test_past_the_limit_the_head_a_note_and_the_tail_are_kept():
    data = b"h" * 200_000 + b"m" * 500_000 + b"t" * OUTPUT_TAIL
    kept = await _kept(data, 300_000)
    head = 300_000 - OUTPUT_TAIL
    assert kept.startswith(b"h" * 200_000 + b"m" * (head - 200_000) + b"\n[foundry: ")
    assert kept.endswith(b" bytes of output dropped: kept 300,000 at most]\n" + b"t" * OUTPUT_TAIL)
    dropped = len(data) - head - OUTPUT_TAIL
    assert f"[foundry: {dropped:,} bytes of output dropped".encode() in kept


async def test_a_command_writing_past_the_limit_runs_to_its_end_within_it():
    script = "import sys; [sys.stdout.write('x' * 65536) for _ in range(400)]; print('done')"
    code, output = await run_capturing(
        [sys.executable, "-c", script], stdin=b"", limit=1_000_000
    )  # 26 MB written, ~1 MB kept
    assert code == 0
    assert len(output) < 1_100_000
    assert output.endswith(b"x" * 100 + b"done\n")


async def test_a_program_that_does_not_exist_raises_as_itself():
    # (the nursery's group of one is not what callers describe: "FileNotFoundError: ...")
    with pytest.raises(FileNotFoundError):
        await run_capturing(["/no/such/program"], stdin=b"")


async def test_stdin_larger_than_a_pipe_is_fed_while_the_output_is_read():
    data = b"y" * 3_000_000
    code, output = await run_capturing(["cat"], stdin=data)
    assert code == 0
    assert output == data
