"""A real ``foundry serve`` process on 127.0.0.1:0 for end-to-end tests: :class:`Daemon` (start,
stop, kill, restart; :meth:`Daemon.call` is the one grpclib client helper) and :class:`Daemons`,
the factory behind the ``make_daemon`` and ``shared_daemon`` fixtures (``tests/conftest.py``)."""

from __future__ import annotations

import asyncio
import os
import selectors
import signal
import subprocess
import sys
import textwrap
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from foundry.kernel.blocks.children import stop_left_behind
from foundry.kernel.edge.grpc.client import connect

T = TypeVar("T")

REPO = Path(__file__).resolve().parent.parent


class Daemon:
    """Start, stop, kill and restart a daemon with one FOUNDRY_HOME and config."""

    def __init__(self, home: Path, config: Path, env: dict[str, str] | None = None) -> None:
        self.home, self.config = home, config
        self.extra_env = env or {}
        self.process: subprocess.Popen[str] | None = None
        self.address = ""  # the gRPC listener's HOST:PORT
        self.http_address = ""  # the HTTP listener's (Connect, gRPC-Web, WebSocket)
        self.stderr_path = home.parent / f"{home.name}-stderr.log"

    def start(self, timeout: float = 30.0, *, same_ports: bool = False) -> Daemon:
        """Start it (``same_ports``: on the addresses it had, as clients that reconnect need)."""
        env = {**os.environ, "FOUNDRY_HOME": str(self.home), **self.extra_env}
        env.pop("FOUNDRY_ADDR", None)
        self.stderr_file = self.stderr_path.open("a")
        grpc, http = (self.address, self.http_address) if same_ports else ("127.0.0.1:0",) * 2
        self.process = subprocess.Popen(
            [sys.executable, "-m", "foundry.kernel.cli", "serve", "--config", str(self.config),
             "--listen", grpc, "--http-listen", http],
            stdout=subprocess.PIPE, stderr=self.stderr_file, text=True, env=env,
            cwd=self.home.parent,
        )  # fmt: skip
        assert self.process.stdout is not None
        line = _first_line(self.process.stdout, timeout)
        if not line:
            self.process.kill()
            self.process.wait(10)
            self._closed()
            raise RuntimeError(f"daemon did not start within {timeout}s: {self.stderr()}")
        self.address, _, self.http_address = line.partition(" ")
        return self

    def stderr(self) -> str:
        return self.stderr_path.read_text() if self.stderr_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Graceful stop; returns the exit code."""
        assert self.process is not None
        self.process.send_signal(sig)
        code = self.process.wait(timeout)
        self._closed()
        return code

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)
        self._closed()

    def _closed(self) -> None:
        if self.process and self.process.stdout:
            self.process.stdout.close()
        self.stderr_file.close()
        self.process = None

    def restart(self, *, same_ports: bool = False) -> Daemon:
        if self.process is not None:
            self.stop()
        return self.start(same_ports=same_ports)

    def call(self, fn: Callable[[Any, Any], Awaitable[T]]) -> T:
        """Run ``fn(foundry_stub, runtime_stub)`` with a grpclib client (asyncio)."""

        async def go() -> T:
            async with connect(self.address) as (foundry, runtime):
                return await fn(foundry, runtime)

        return asyncio.run(go())

    def cli(
        self, *args: str, check: bool = False, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "FOUNDRY_ADDR": self.address, "FOUNDRY_HOME": str(self.home)}
        done = subprocess.run(
            [sys.executable, "-m", "foundry.kernel.cli", *args],
            capture_output=True, text=True, env=env, timeout=timeout, check=False,
        )  # fmt: skip
        if check and done.returncode != 0:
            raise AssertionError(f"foundry {' '.join(args)} failed: {done.stderr}")
        return done

    def close(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self._closed()
        commands = self.home / "commands"  # what its blocks ran, which a kill leaves running
        if commands.is_dir():
            stop_left_behind(commands)


def _first_line(stream: Any, timeout: float) -> str:
    """The first line the daemon prints (its gRPC address, then its HTTP address), or "" if
    none comes in time."""
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        if not selector.select(timeout):
            return ""
    return str(stream.readline()).strip()


def write_config(path: Path, body: str = "") -> Path:
    path.write_text(textwrap.dedent(body))
    return path


class Daemons:
    """``make(config_text="", env=None, name="d", config_file=None)`` starts a real daemon.

    Its config (``<folder>/<name>.toml``, the text passed through ``compose``, unless
    ``config_file`` names one) and home (``<folder>/<name>-home``) live in ``folder(name)``.
    Every daemon started is killed by :meth:`close`.
    """

    def __init__(self, folder: Callable[[str], Path], compose: Callable[[str], str]) -> None:
        self.folder, self.compose = folder, compose
        self.started: list[Daemon] = []

    def __call__(
        self,
        config_text: str = "",
        env: dict[str, str] | None = None,
        name: str = "d",
        config_file: Path | None = None,
    ) -> Daemon:
        base = self.folder(name)
        config = config_file or write_config(
            base / f"{name}.toml", self.compose(textwrap.dedent(config_text))
        )
        daemon = Daemon(base / f"{name}-home", config, env)
        self.started.append(daemon)
        return daemon.start()

    def close(self) -> None:
        for daemon in self.started:
            daemon.close()


@contextmanager
def daemons(folder: Callable[[str], Path], compose: Callable[[str], str]) -> Iterator[Daemons]:
    factory = Daemons(folder, compose)
    try:
        yield factory
    finally:
        factory.close()
