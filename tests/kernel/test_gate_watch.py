"""The gate actor's watch over a plugin's worker thread: a job the loop left past its time limit
is counted as left running only if its thread began it, and a thread that begins after that
runs no plugin code (a review: one that began just after the limit ran on, counted nowhere)."""

from __future__ import annotations

import pytest
from foundry.kernel.actors.gate.watched import Abandoned, Watch


def test_a_job_left_before_its_thread_began_is_not_running_and_never_begins():
    watch = Watch()
    assert watch.left_running() is False
    with pytest.raises(Abandoned):
        watch.begin()


def test_a_job_left_after_its_thread_began_runs_on_until_it_finishes():
    watch = Watch()
    watch.begin()
    assert watch.left_running() is True
    watch.finished = True
    assert watch.left_running() is False
