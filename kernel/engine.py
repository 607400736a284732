"""The engine: routes Foundry events to the blocks that sink them.

One Emit is one chain. Within a chain processing is deterministic and depth-first, like the
public Foundry daemon: the blocks an event reaches run one after another in registration order,
and each event a block emits is processed completely before the next block runs. Separate chains
run concurrently.

Durability: the root is committed before Emit answers; an emitted event is committed before a
mutator acts on it and before Watch sees it. Observers run ahead of the commit (pipelined).
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import trio

from .blocks import Block, BlockContext, BlockKind, Emission, Usage
from .config import EngineConfig
from .engine_messages import BlockView, Emit, Emitted, GetStatus, GetTrace, WorkflowView
from .errors import ChainLimitExceeded, NotFound
from .execution import Outcome, execute
from .ids import Clock, compact_json, event_id_of_json, is_event_id, rfc3339
from .mailbox import Pending, ask, post
from .plugins import BlockRegistry
from .records import Event, ExecutionRecord
from .store import StoreMessage
from .store_messages import Append, Read
from .store_reads import load_trace, load_workflow
from .throttle import Action, decide
from .workflow import Workflow

log = logging.getLogger("foundry.engine")

EngineMessage = Emit | GetStatus | GetTrace

FLUSH_AT = 256  # records a chain buffers before it sends them without waiting


class Engine:
    def __init__(
        self,
        registry: BlockRegistry,
        inbox: trio.MemoryReceiveChannel[EngineMessage],
        store: trio.MemorySendChannel[StoreMessage],
        *,
        home: Path,
        config: EngineConfig,
        shutdown_grace: float,
    ) -> None:
        self._registry, self._inbox, self._store = registry, inbox, store
        self._home, self._config, self._grace = home, config, shutdown_grace
        self._clock = Clock()
        self._inflight: dict[str, Workflow] = {}
        self._recent: OrderedDict[str, Workflow] = OrderedDict()
        self._nursery: trio.Nursery | None = None
        self._handlers: dict[type, Callable[[Any], None]] = {
            Emit: self._on_emit,
            GetStatus: self._on_status,
            GetTrace: self._on_trace,
        }

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with self._inbox, self._store, trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            async for message in self._inbox:
                self._handlers[type(message)](message)
            # Mailbox closed: chains in flight get the grace period, then are cancelled (the
            # next start marks them failed).
            nursery.cancel_scope.deadline = trio.current_time() + self._grace

    # --- Emit ---------------------------------------------------------------------------------

    def _on_emit(self, message: Emit) -> None:
        now = self._clock.now()
        payload_json = compact_json(message.payload)
        stamp = rfc3339(now)
        root_id = event_id_of_json(message.event_type, message.project, stamp, payload_json)
        root = Event(
            root_id, message.event_type, message.project, now, now, message.throttle,
            root_id, message.payload, payload_json, stamp=stamp,
        )  # fmt: skip
        workflow = Workflow(root, is_workflow=self._registry.sinks(message.event_type))
        workflow.events.append(root)
        if workflow.is_workflow:
            self._inflight[root_id] = workflow
        assert self._nursery is not None
        self._nursery.start_soon(self._run_chain, workflow, message)

    async def _run_chain(self, workflow: Workflow, message: Emit) -> None:
        root = workflow.root
        records: list[Any] = [root]
        if not workflow.is_workflow:
            records.append(workflow.finished(root.occurred_at))
        try:
            workflow.last_commit = await self._append(records, publish=(root,))
            await workflow.last_commit.wait()
        except Exception as exc:
            self._inflight.pop(root.id, None)
            message.reply.fail(exc)
            return
        message.reply.send(Emitted(root.id, root.id if workflow.is_workflow else ""))
        if workflow.is_workflow:
            await self._run_workflow(workflow)

    async def _run_workflow(self, workflow: Workflow) -> None:
        workflow.state = "running"
        try:
            await self._deliver(workflow, workflow.root)
        except ChainLimitExceeded as exc:
            workflow.fail(str(exc))
        except Exception as exc:  # e.g. the store refused a record: the chain fails, not the engine
            log.exception("workflow %s stopped", workflow.id)
            workflow.fail(f"stopped: a record of the chain could not be stored: {exc}")
        for slot in workflow.slots:
            if slot.state == "pending":
                slot.state = "skipped"  # the chain stopped before this block's turn
        finished = workflow.finished(self._clock.now())
        try:
            await (await self._flush(workflow, finished)).wait()
        except Exception:
            log.exception("could not store the end of workflow %s", workflow.id)
        workflow.state = finished.state
        self._retire(workflow)

    def _retire(self, workflow: Workflow) -> None:
        self._inflight.pop(workflow.id, None)
        self._recent[workflow.id] = workflow
        while len(self._recent) > self._config.recent_workflows:
            self._recent.popitem(last=False)

    # --- one event, its blocks, depth first ----------------------------------------------------

    async def _deliver(self, workflow: Workflow, event: Event) -> None:
        reached = self._reached(event)
        slots = [workflow.add_slot(b.name) for b, _ in reached]
        for (block, refusal), slot in zip(reached, slots, strict=True):
            children = await self._execute(workflow, block, slot, event, refusal)
            for child in children:
                if not child.throttled:
                    await self._deliver(workflow, child)

    def _reached(self, event: Event) -> list[tuple[Block, str]]:
        """The blocks an event reaches, in registration order, each with "" or, when its payload
        filter raised, that error: a plugin's bug fails its execution, never the engine."""
        reached: list[tuple[Block, str]] = []
        for block in self._registry.by_sink.get(event.event_type, ()):
            try:
                if block.accepts(event.payload):
                    reached.append((block, ""))
            except Exception as exc:
                reached.append((block, f"accepts() raised {type(exc).__name__}: {exc}"))
        return reached

    async def _execute(
        self,
        workflow: Workflow,
        block: Block,
        slot: Any,
        event: Event,
        refusal: str = "",
    ) -> tuple[Event, ...]:
        decision = decide(event.throttle, block.kind is BlockKind.MUTATOR)
        if decision.action is Action.RUN and block.kind is BlockKind.MUTATOR:
            await self._durable(workflow)  # no side effect before what caused it is stored
        slot.state, slot.started_at = "running", self._clock.now()
        artifact_dir = Path(f"{self._home}/artifacts/{workflow.id}/{event.id}/{_slug(block.name)}")
        if refusal:
            outcome = _refused(refusal)
        else:
            outcome = await execute(
                block, decision.action, lambda attempt: _context(event, artifact_dir, attempt)
            )
        children, error = self._children(event, block, outcome, throttled=not decision.deliver)
        completed = self._clock.now()
        error = error or outcome.error
        record = ExecutionRecord(
            trace_id=workflow.id,
            block_name=block.name,
            trigger=event,
            state=decision.state if not error else "failed",
            success=not error,
            summary=outcome.summary if not error or outcome.error else error,
            emitted=children,
            started_at=slot.started_at,
            completed_at=completed,
            duration_ms=outcome.duration_ms,
            raw_output=outcome.raw_output,
            exit_code=outcome.exit_code,
            audit_artifacts=outcome.artifacts,
            attempts=outcome.attempts,
            throttled=decision.action is not Action.RUN,
        )
        workflow.executions.append(record)
        workflow.events.extend(children)
        slot.state, slot.completed_at, slot.throttled = record.state, completed, record.throttled
        if error:
            workflow.fail(f"block {block.name!r} failed on {event.event_type} {event.id}: {error}")
        workflow.unsent += [*children, record]
        workflow.unpublished += children
        if len(workflow.unsent) >= FLUSH_AT:
            await self._flush(workflow)
        self._check_limits(workflow, event, block, children)
        return children

    def _children(
        self, parent: Event, block: Block, outcome: Outcome, *, throttled: bool
    ) -> tuple[tuple[Event, ...], str]:
        try:
            return tuple(self._child(parent, block, e, throttled) for e in outcome.emissions), ""
        except (TypeError, ValueError) as exc:
            return (), f"emitted a payload that is not JSON: {exc}"

    def _child(self, parent: Event, block: Block, emission: Emission, throttled: bool) -> Event:
        now = self._clock.now()
        stamp = rfc3339(now)
        payload_json = compact_json(emission.payload)  # NaN and infinities raise ValueError
        if "\\ud" in payload_json:
            # A lone surrogate is escaped into valid-looking text the store would refuse.
            json.dumps(emission.payload, ensure_ascii=False).encode()
        return Event(
            id=event_id_of_json(emission.event_type, parent.project, stamp, payload_json),
            event_type=emission.event_type,
            project=parent.project,
            occurred_at=now,
            recorded_at=now,
            throttle=parent.throttle,
            trace_id=parent.trace_id,
            payload=json.loads(payload_json),  # a copy the block can no longer change
            payload_json=payload_json,
            depth=parent.depth + 1,
            parent_id=parent.id,
            emitted_by=block.name,
            throttled=throttled,
            stamp=stamp,
        )

    def _check_limits(
        self, workflow: Workflow, event: Event, block: Block, children: Sequence[Event]
    ) -> None:
        if children and event.depth + 1 > self._config.max_chain_depth:
            raise ChainLimitExceeded(
                f"chain depth limit {self._config.max_chain_depth} exceeded: block {block.name!r} "
                f"emitted {children[0].event_type} at depth {event.depth + 1} (a loop?)"
            )
        if len(workflow.events) > self._config.max_chain_events:
            raise ChainLimitExceeded(
                f"chain event limit {self._config.max_chain_events} exceeded after block "
                f"{block.name!r} on {event.event_type}"
            )

    async def _flush(self, workflow: Workflow, *extra: Any) -> Pending[None]:
        """Send what the chain recorded since the last flush (observers run ahead of commits)."""
        records, publish = [*workflow.unsent, *extra], workflow.unpublished
        workflow.unsent, workflow.unpublished = [], []
        workflow.last_commit = await self._append(records, publish)
        return workflow.last_commit

    async def _durable(self, workflow: Workflow) -> None:
        """Wait until everything the chain recorded so far is committed (commits are in order)."""
        if workflow.unsent:
            await self._flush(workflow)
        if workflow.last_commit is not None:
            await workflow.last_commit.wait()

    async def _append(self, records: Sequence[Any], publish: Sequence[Any] = ()) -> Pending[None]:
        return await post(self._store, lambda r: Append(tuple(records), tuple(publish), r))

    # --- Status and Trace -----------------------------------------------------------------------

    def _on_status(self, message: GetStatus) -> None:
        if not message.workflow_id:
            workflows = [*self._inflight.values(), *self._recent.values()]
            message.reply.send(sorted((w.view() for w in workflows), key=lambda v: v.started_at))
            return
        workflow = self._inflight.get(message.workflow_id) or self._recent.get(message.workflow_id)
        if workflow is not None:
            message.reply.send([workflow.view()])
            return
        assert self._nursery is not None
        self._nursery.start_soon(self._status_from_store, message)

    async def _status_from_store(self, message: GetStatus) -> None:
        try:
            found: Any = await ask(
                self._store, lambda r: Read(load_workflow, (message.workflow_id,), r)
            )
        except Exception as exc:
            message.reply.fail(exc)
            return
        if found is None:
            message.reply.fail(NotFound(f"workflow_id: no workflow {message.workflow_id!r}"))
        else:
            message.reply.send([_stored_view(*found)])

    def _on_trace(self, message: GetTrace) -> None:
        workflow = self._recent.get(message.event_id)
        if workflow is not None:
            message.reply.send(workflow.trace(workflow.state))
        elif message.event_id in self._inflight or not is_event_id(message.event_id):
            message.reply.send(None)
        else:
            assert self._nursery is not None
            self._nursery.start_soon(self._trace_from_disk, message)

    async def _trace_from_disk(self, message: GetTrace) -> None:
        """The trace file; else (the daemon died before the archivist wrote it) the database."""
        try:
            document = await trio.to_thread.run_sync(_read_trace, self._home, message.event_id)
            if document is None:
                document = await ask(
                    self._store, lambda r: Read(load_trace, (message.event_id,), r)
                )
        except Exception as exc:
            message.reply.fail(exc)
        else:
            message.reply.send(document)


def _context(event: Event, artifact_dir: Path, attempt: int) -> BlockContext:
    return BlockContext(
        payload=event.payload,
        artifact_dir=artifact_dir,
        throttle=event.throttle,
        event_type=event.event_type,
        event_id=event.id,
        project=event.project,
        attempt=attempt,
    )


def _refused(error: str) -> Outcome:
    """The outcome of a block that could not even be asked (its payload filter raised)."""
    return Outcome(
        success=False, output=None, summary=error, error=error, emissions=(), usage=Usage(),
        raw_output="", exit_code=0, artifacts=(), attempts=0, duration_ms=0,
    )  # fmt: skip


@functools.lru_cache(maxsize=1024)
def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "block"


def _read_trace(home: Path, event_id: str) -> Mapping[str, Any] | None:
    for path in sorted((home / "traces").glob(f"*/{event_id}.json"), reverse=True):
        document: Mapping[str, Any] = json.loads(path.read_text())
        return document
    return None


def _stored_view(row: Mapping[str, Any], blocks: Sequence[Mapping[str, Any]]) -> WorkflowView:
    return WorkflowView(
        workflow_id=row["workflow_id"],
        workflow_type=row["workflow_type"],
        project=row["project"],
        state=row["state"],
        started_at=rfc3339(row["started_at"]),
        completed_at=rfc3339(row["completed_at"]),
        error=row["error"],
        task_blocks=tuple(
            BlockView(
                b["block_name"],
                b["state"],
                rfc3339(b["started_at"]),
                rfc3339(b["completed_at"]),
                b["throttled"],
            )  # fmt: skip
            for b in blocks
        ),
    )
