"""Child processes of blocks and of the daemon: each in a session (and process group) of its own.

A terminal's Ctrl-C goes to its foreground process group. Were a block's command in the daemon's
group, it would die of the SIGINT meant for the daemon (``sh exited with -2``) before the daemon
could drain. In a session of its own, only the daemon is signalled, and the daemon decides: a
child is cancelled (step cancelled, timeout, shutdown past its grace) by signalling its whole
group, so what the command started dies with it.
"""

from __future__ import annotations

import contextlib
import os
import signal

import trio

__all__ = ["KILL_AFTER", "end_process_group", "stop_process_group"]

KILL_AFTER = 5.0  # seconds between SIGTERM and SIGKILL to a cancelled child's group


async def stop_process_group(process: trio.Process) -> None:
    """``trio.run_process``'s ``deliver_cancel`` for a child started with
    ``start_new_session=True`` (its pid is its group's id): SIGTERM to the group, then SIGKILL to
    what is left of it after :data:`KILL_AFTER` seconds."""
    _signal_group(process.pid, signal.SIGTERM)
    with trio.move_on_after(KILL_AFTER):
        await process.wait()
    _signal_group(process.pid, signal.SIGKILL)  # the child's own children, too


def end_process_group(pid: int) -> None:
    """SIGKILL what is left of the group of a child started with ``start_new_session=True``
    whose call was cancelled after the child itself had exited: ``trio.run_process`` delivers a
    cancel only while it waits for the child, not while it reads the output a grandchild still
    holds open (``sh -c "sleep 300 & echo started"`` past its timeout left the sleep running)."""
    _signal_group(pid, signal.SIGKILL)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone already
        os.killpg(pgid, sig)
