"""Ctrl-C in a terminal: the daemon runs as its own process group's leader (as a shell starts a
foreground job) and SIGINT goes to the whole group. Block commands and the trace archivist run in
sessions of their own (kernel/blocks/children.py), so only the daemon is signalled: the first
Ctrl-C drains like SIGTERM, a second stops at once, and neither prints a traceback
(kernel/daemon.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from foundry.kernel.edge.grpc.client import connect
from foundry.proto import foundry_api as api

from tests.daemon import Daemon, _first_line
from tests.helpers import wait_until

CONFIG = """
[daemon]
shutdown_grace = 30.0

[[blocks]]
name = "slow"
type = "shell"
kind = "observer"
sinks = ["build"]
command = ["sh", "-c", '''echo "started $$" >> "$MARKER"; sleep {seconds}
  echo finished >> "$MARKER"; echo "{{}}"''']
pass_env = ["MARKER"]
timeout = 120
"""


class TerminalDaemon(Daemon):
    """A daemon started the way a shell starts a foreground job: a new session, its own process
    group (pgid = its pid), which a terminal's Ctrl-C signals as a whole."""

    def start(self, timeout: float = 30.0) -> Daemon:
        env = {**os.environ, "FOUNDRY_HOME": str(self.home), **self.extra_env}
        env.pop("FOUNDRY_ADDR", None)
        self.stderr_file = self.stderr_path.open("a")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "foundry.kernel.cli", "serve", "--config", str(self.config),
             "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE, stderr=self.stderr_file, text=True, env=env,
            cwd=self.home.parent, start_new_session=True,
        )  # fmt: skip
        assert self.process.stdout is not None
        line = _first_line(self.process.stdout, timeout)
        assert line, f"the daemon did not start: {self.stderr()}"
        self.address, _, self.http_address = line.partition(" ")  # as Daemon.start reads it
        return self

    def ctrl_c(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGINT)  # the terminal signals the whole group

    def close(self) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        super().close()


def start(tmp_path: Path, seconds: float) -> tuple[TerminalDaemon, Path]:
    marker = tmp_path / "marker"
    config = tmp_path / "foundry.toml"
    config.write_text(CONFIG.format(seconds=seconds))
    daemon = TerminalDaemon(tmp_path / "home", config, env={"MARKER": str(marker)})
    daemon.start()
    return daemon, marker


def emit(daemon: Daemon) -> str:
    async def go() -> str:
        async with connect(daemon.address) as (foundry, _):
            reply = await foundry.emit(api.EmitRequest(event_type="build", project="p"))
            return str(reply.workflow_id)

    return asyncio.run(go())


def status(daemon: Daemon, workflow_id: str) -> Any:
    reply = daemon.call(lambda foundry, _: foundry.status(api.StatusRequest(workflow_id)))
    return reply.workflows[0]


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_ctrl_c_drains_the_workflow_and_exits_0_without_a_traceback(tmp_path):
    daemon, marker = start(tmp_path, seconds=1.5)
    try:
        workflow_id = emit(daemon)
        wait_until(lambda: any(x.startswith("started") for x in lines(marker)),
                   what="the shell block to start")  # fmt: skip
        daemon.ctrl_c()
        assert daemon.process is not None
        code = daemon.process.wait(30)
        stderr = daemon.stderr()
        assert code == 0, stderr[-2000:]
        assert "Traceback" not in stderr, stderr[-3000:]
        assert "KeyboardInterrupt" not in stderr
        assert lines(marker)[-1] == "finished"  # the command did not die of the SIGINT
        daemon._closed()
        restarted = Daemon(daemon.home, daemon.config, daemon.extra_env).start()
        try:
            assert status(restarted, workflow_id).state == "completed"
        finally:
            restarted.stop()
    finally:
        daemon.close()


def test_a_second_ctrl_c_stops_at_once_and_kills_the_commands_group(tmp_path):
    daemon, marker = start(tmp_path, seconds=60)
    try:
        emit(daemon)
        started = wait_until(lambda: [x for x in lines(marker) if x.startswith("started")],
                             what="the shell block to start")  # fmt: skip
        shell_pid = int(started[0].split()[1])
        daemon.ctrl_c()
        wait_until(lambda: "stopping" in daemon.stderr(), what="the daemon to start draining")
        began = time.monotonic()
        daemon.ctrl_c()
        assert daemon.process is not None
        code = daemon.process.wait(20)
        took = time.monotonic() - began
        stderr = daemon.stderr()
        assert code == 0, stderr[-2000:]
        assert took < 15, f"took {took:.1f}s after the second Ctrl-C"  # not the 30 s grace
        assert "Traceback" not in stderr, stderr[-3000:]
        assert "finished" not in lines(marker)
        wait_until(lambda: not _alive(shell_pid), what="the block's shell to be killed")
    finally:
        daemon.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
