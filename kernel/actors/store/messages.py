"""Messages the store actor accepts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from foundry.kernel.actors.mailbox import Reply


@dataclass(frozen=True, slots=True)
class Append:
    """Records to commit in the next group commit (events, executions, finished chains, ...).

    ``publish`` items go to the tap broker once the commit is durable; ``ack`` is answered then,
    and so is each ``(reply, value)`` of ``answers`` — say, an Emit's reply, which the root's
    commit answers without the engine waiting for it. A failed commit fails them all.
    """

    records: tuple[Any, ...]
    publish: tuple[Any, ...] = ()
    ack: Reply[None] | None = None
    answers: tuple[tuple[Reply[Any], Any], ...] = ()


@dataclass(frozen=True, slots=True)
class Read:
    """Run ``query(connection, *args)`` on the store's thread, between commits."""

    query: Callable[..., Any]
    args: tuple[Any, ...]
    reply: Reply[Any]


StoreMessage = Append | Read
