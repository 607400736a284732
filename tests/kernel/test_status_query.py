"""Status's picking (``core.status_query``): the engine makes views of the candidates of
``status_candidates`` only, and asks the database nothing when it says the database can add
nothing — and what ``pick_workflows`` picks is what it picked from views of every workflow the
engine holds and every one the database holds, for any filters, limit and mix of in-flight,
recent and stored workflows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from foundry.kernel.core.chain import Workflow
from foundry.kernel.core.records import Event
from foundry.kernel.core.status_query import (
    DEFAULT_LIMIT,
    UNKNOWN,
    StatusQuery,
    later,
    pick_workflows,
    status_candidates,
)
from foundry.kernel.core.throttle import Throttle
from hypothesis import given, settings
from hypothesis import strategies as st

START = datetime(2026, 12, 3, tzinfo=UTC)
PROJECTS = ("a", "b")


def _workflow(n: int, second: int, project: str, state: str) -> Workflow:
    at = START + timedelta(seconds=second)
    workflow_id = f"evt_{n:024x}"
    root = Event(workflow_id, "t", project, at, at, Throttle.FULL, workflow_id, {}, "{}")
    workflow = Workflow(root, is_workflow=True, state=state)
    if state in ("completed", "failed"):
        workflow.completed_at = at + timedelta(seconds=1)
    return workflow


# (second, project, state): seconds collide often, so the id must break ties as pick_workflows does
_HELD = st.tuples(st.integers(0, 30), st.sampled_from(PROJECTS))
_INFLIGHT = st.lists(st.tuples(_HELD, st.sampled_from(("pending", "running"))), max_size=40)
_RECENT = st.lists(st.tuples(_HELD, st.sampled_from(("completed", "failed"))), max_size=250)
_QUERY = st.builds(
    StatusQuery,
    project=st.sampled_from(("", *PROJECTS)),
    state=st.sampled_from(("", "pending", "running", "completed", "failed")),
    limit=st.sampled_from((0, 1, 5, 50, 1_000)),
)


@settings(max_examples=400, deadline=None)
@given(
    inflight=_INFLIGHT,
    recent=_RECENT,
    unheld=st.lists(st.integers(-60, 30), max_size=120),
    query=_QUERY,
)
def test_views_of_the_candidates_pick_what_views_of_everything_picked(
    inflight, recent, unheld, query
):
    held = [
        _workflow(n, second, project, state)
        for n, ((second, project), state) in enumerate(inflight + recent)
    ]
    running, finished = held[: len(inflight)], held[len(inflight) :]
    # The database: the recent ones (stored before they were held) and ones not held (stored
    # before the engine started, or dropped from its recent ones) at any time.
    not_held = [
        _workflow(10_000 + n, s, PROJECTS[n % 2], "completed") for n, s in enumerate(unheld)
    ]
    stored = [w.view() for w in finished + not_held]
    everything = pick_workflows([w.view() for w in held], stored, query)
    unheld_newest = max((w.root.occurred_at for w in not_held), default=None)
    held, complete = status_candidates(running, finished, query, unheld_newest)
    candidates = [w.view() for w in held]
    assert pick_workflows(candidates, stored, query) == everything
    if complete:
        assert pick_workflows(candidates, (), query) == everything
    assert not status_candidates(running, finished, query, UNKNOWN)[1]


def _complete(finished, query, unheld_newest):
    return status_candidates((), finished, query, unheld_newest)[1]


def test_the_store_is_skipped_when_the_engine_holds_the_newest_finished():
    finished = [_workflow(n, n, "a", "completed") for n in range(DEFAULT_LIMIT)]
    before = START - timedelta(seconds=1)
    assert _complete([], StatusQuery(), None)  # nothing stored that is not held
    assert _complete(finished, StatusQuery(), before)
    assert not _complete(finished[1:], StatusQuery(), before)  # one short
    assert not _complete(finished, StatusQuery(), START)  # as old as the oldest held
    assert _complete(finished, StatusQuery(limit=5), START + timedelta(seconds=94))
    assert later(None, before) == before
    assert later(START, before) == START
    assert later(None, None) is None


def test_without_a_limit_every_in_flight_workflow_and_the_newest_finished_are_candidates():
    running = [_workflow(n, n, "a", "running") for n in range(300)]
    finished = [_workflow(1_000 + n, n, "a", "completed") for n in range(1_000)]
    candidates, _ = status_candidates(running, finished, StatusQuery(), None)
    assert candidates[:300] == running
    assert sorted(w.id for w in candidates[300:]) == sorted(w.id for w in finished[-DEFAULT_LIMIT:])
    limited, _ = status_candidates(running, finished, StatusQuery(limit=10), None)
    assert {w.id for w in limited} == {w.id for w in finished[-10:]}  # the newest ten
