"""Where the loop watcher says the trio thread is held (``actors/loop_watch.py``)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import FrameType

import foundry.kernel
import trio
from foundry.kernel.actors.loop_watch import where


async def test_a_blocks_line_is_named_not_the_kernels_nor_the_standard_librarys():
    import json

    seen: list[FrameType] = []

    class Spy(json.JSONEncoder):  # a stack: this test, then the standard library's json
        def default(self, o: object) -> object:
            seen.append(sys._getframe())
            return None

    json.dumps({"x": object()}, cls=Spy)  # (held here, as by a block encoding a huge value)
    said = where(seen[0])  # (a frame of a call that has returned: its callers are kept)
    assert said.startswith(f"{__file__}:")
    assert said.endswith("(default)")


async def test_a_stall_in_the_kernel_alone_is_named_there_not_at_what_called_trio_run():
    """A stall in the kernel's own code was blamed on the console script's ``<module>`` line,
    the outermost frame of the trio thread (a review)."""
    kernel_file = str(Path(foundry.kernel.__file__).parent / "actors" / "stalling.py")
    namespace: dict[str, object] = {}
    code = "import sys\nasync def held(seen, where):\n    seen.append(where(sys._getframe()))\n"
    exec(compile(code, kernel_file, "exec"), namespace)  # a coroutine "of the kernel"
    seen: list[str] = []
    async with trio.open_nursery() as nursery:  # (where, while it runs: its stack is whole)
        nursery.start_soon(namespace["held"], seen, where)  # type: ignore[arg-type]
    assert seen == [f"{kernel_file}:3 (held)"]
