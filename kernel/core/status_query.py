"""Which workflows ``Status`` lists when it is not asked for one: filters, newest first, a limit.

In-flight and recently finished workflows come from the engine's memory; older finished ones (and
every finished one after a restart) from the database. Pure: the engine gathers, this picks.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from foundry.kernel.core.chain import Workflow, WorkflowView
from foundry.kernel.core.json_input import quoted
from foundry.kernel.errors import InvalidArgument

STATES = ("pending", "running", "completed", "failed")
FINISHED = ("completed", "failed")
DEFAULT_LIMIT = 100  # finished workflows listed when the request gives no limit
MAX_LIMIT = 1_000


@dataclass(frozen=True, slots=True)
class StatusQuery:
    """``limit`` 0 (a request without one, as clients of the public daemon send): every
    in-flight workflow, which such clients poll to see work finish, and the newest
    :data:`DEFAULT_LIMIT` finished ones. Otherwise at most ``limit`` in all."""

    project: str = ""  # "" = every project
    state: str = ""  # "" = every state
    limit: int = 0

    @property
    def wants_finished(self) -> bool:
        """Can finished workflows (the database's) match?"""
        return self.state in ("", *FINISHED)

    @property
    def finished_limit(self) -> int:
        return self.limit or DEFAULT_LIMIT


def status_query(project: str = "", state: str = "", limit: int = 0) -> StatusQuery:
    """Check a StatusRequest's filters (InvalidArgument naming the field)."""
    if state and state not in STATES:
        raise InvalidArgument(f"state: {quoted(state)} is not one of {', '.join(STATES)}")
    if limit < 0 or limit > MAX_LIMIT:
        raise InvalidArgument(
            f"limit: must be from 0 (the default, {DEFAULT_LIMIT}) to {MAX_LIMIT}, got {limit}"
        )
    return StatusQuery(project, state, limit)


def pick_workflows(
    live: Iterable[WorkflowView], stored: Iterable[WorkflowView], query: StatusQuery
) -> list[WorkflowView]:
    """The workflows that match, newest first, at most ``query.limit``; a workflow the engine
    still holds is shown as it holds it (its stored row may lag or be the same)."""
    found = {view.workflow_id: view for view in stored}
    found.update((view.workflow_id, view) for view in live)
    matching = [view for view in found.values() if _matches(view, query)]
    matching.sort(key=lambda v: (_instant(v.started_at), v.workflow_id), reverse=True)
    if query.limit:
        return matching[: query.limit]
    picked, finished = [], 0
    for view in matching:  # every in-flight one, the newest DEFAULT_LIMIT finished ones
        if view.state in FINISHED:
            finished += 1
            if finished > DEFAULT_LIMIT:
                continue
        picked.append(view)
    return picked


# Not known yet what the database holds that the engine does not: ask it.
UNKNOWN = datetime.max.replace(tzinfo=UTC)


def status_candidates(
    inflight: Iterable[Workflow],
    recent: Iterable[Workflow],
    query: StatusQuery,
    unheld_newest: datetime | None,
) -> tuple[list[Workflow], bool]:
    """The workflows the engine holds that :func:`pick_workflows` can pick — those that match,
    and of them the newest ``query.limit``; without a limit, every in-flight one and the newest
    :data:`DEFAULT_LIMIT` finished ones — and whether the database's newest finished workflows
    can add nothing to them, so Status need not ask it. Status makes views of these alone, not
    of the thousand finished workflows the engine keeps.

    ``unheld_newest``: the latest start of a finished workflow stored and not held (stored
    before the engine started, or dropped from its recent ones) — None when there is none,
    :data:`UNKNOWN` before that is known. When the newest ``query.finished_limit`` matching
    finished ones the engine holds all started after it, every one it does not hold is older
    than those: none of them can be picked."""
    running, finished = _matching(inflight, query), _matching(recent, query)
    newest = _newest(finished, query.finished_limit)
    nothing_more = unheld_newest is None or (
        len(newest) == query.finished_limit
        and all(w.root.occurred_at > unheld_newest for w in newest)
    )
    if query.limit:
        return _newest(running + newest, query.limit), nothing_more
    return running + newest, nothing_more


def later(first: datetime | None, second: datetime | None) -> datetime | None:
    """The later of two optional instants (None: neither is)."""
    if first is None or second is None:
        return first or second
    return max(first, second)


def _matching(workflows: Iterable[Workflow], query: StatusQuery) -> list[Workflow]:
    project, state = query.project, query.state
    if not project and not state:
        return list(workflows)
    return [
        w
        for w in workflows
        if (not project or w.root.project == project) and (not state or w.state == state)
    ]


def _newest(workflows: list[Workflow], count: int) -> list[Workflow]:
    """The newest ``count`` by start (the root's time), as :func:`pick_workflows` orders them."""
    if len(workflows) <= count:
        return workflows
    return heapq.nlargest(count, workflows, key=lambda w: (w.root.occurred_at, w.id))


def _matches(view: WorkflowView, query: StatusQuery) -> bool:
    return (not query.project or view.project == query.project) and (
        not query.state or view.state == query.state
    )


def _instant(stamp: str) -> datetime:
    try:
        when = datetime.fromisoformat(stamp)
    except ValueError:  # not expected: every stamp is RFC 3339
        return datetime.min.replace(tzinfo=UTC)
    return when if when.tzinfo else when.replace(tzinfo=UTC)
