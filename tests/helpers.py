"""Helpers of the whole suite: the one polling helper (a deadline, never a fixed sleep) and the
one way to expect a gRPC error from the grpclib client (:meth:`tests.daemon.Daemon.call`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from grpclib import GRPCError
from grpclib.client import Channel
from grpclib.config import Configuration
from hypothesis import strategies as st

if TYPE_CHECKING:
    from tests.daemon import Daemon

T = TypeVar("T")

DEADLINE = 15.0  # seconds any single wait may take before the test fails
SMALLEST_WINDOW = 2**16 - 1  # HTTP/2's smallest window: a reader of nothing stalls a send there


def slow_channel(address: str, *, connection_window: int = SMALLEST_WINDOW) -> Channel:
    """A grpclib channel to ``address`` whose streams' windows are the smallest HTTP/2 allows:
    the daemon's sends to a stream its client does not read wait there."""
    host, port = address.rsplit(":", 1)
    config = Configuration(
        http2_connection_window_size=connection_window, http2_stream_window_size=SMALLEST_WINDOW
    )
    return Channel(host, int(port), config=config)


def wait_until(
    check: Callable[[], T],
    *,
    what: str | Callable[[], str],
    timeout: float = DEADLINE,
    interval: float = 0.01,
) -> T:
    """Poll ``check`` until it returns something truthy and return that; fail after ``timeout``
    seconds with ``what`` (a text, or a function giving one from the last state)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            described = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout:g}s waiting for {described}")
        time.sleep(interval)
        interval = min(interval * 2, 0.1)


def grpc_error(daemon: Daemon, fn: Callable[[Any, Any], Any]) -> GRPCError:
    """The GRPCError ``fn(foundry_stub, runtime_stub)`` fails with, a unary call or a stream read
    to its end (the test fails if it succeeds)."""

    async def go(foundry: Any, runtime: Any) -> GRPCError:
        try:
            result = fn(foundry, runtime)
            if hasattr(result, "__aiter__"):
                async for _ in result:
                    pass
            else:
                await result
        except GRPCError as exc:
            return exc
        raise AssertionError("the call succeeded; expected a gRPC error")

    return daemon.call(go)


# Any JSON value (finite numbers), small: for property tests of JSON encodings.
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children,
                                                                       max_size=4),
    max_leaves=20,
)  # fmt: skip


def process_gone(pid: int) -> bool:
    """Whether process ``pid`` has exited (a zombie not yet reaped by its new parent counts)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return True
    return state == "Z"


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """A process's resident memory now (``VmHWM``: its peak so far), in MB (``/proc``)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} for process {pid}")


def cli_with_reader_gone(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run ``foundry ARGS`` whose stdout's reader is gone before its first line (``| head -0``):
    its exit code and stderr."""
    import subprocess
    import sys

    process = subprocess.Popen(
        [sys.executable, "-m", "foundry.kernel.cli", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert process.stdout is not None
    assert process.stderr is not None
    process.stdout.close()
    try:
        code = process.wait(60)
        err = process.stderr.read()
    finally:
        process.stderr.close()
    return code, err
