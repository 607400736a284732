"""The engine: routes Foundry events to the blocks that sink them.

One Emit is one chain. Within a chain processing is deterministic and depth-first, like the
public Foundry daemon: the blocks an event reaches run one after another in registration order,
and each event a block emits is processed completely before the next block runs. Separate chains
run concurrently.

Durability: the root is committed before Emit answers; an emitted event is committed before a
mutator acts on it and before Watch sees it. Observers run ahead of the commit (pipelined).

Most chains never wait: while the next block is synchronous and free of side effects (an
observer, or a throttled mutator's audit or simulation), the engine runs it inline, in its own
loop. A chain that runs to its end that way is one Append — root, events, executions, trace —
whose commit answers the Emit and sends the engine a notice to retire the workflow. A chain that
reaches a block that must be awaited (an async block, a mutator acting, a retry) goes on in a
task of its own from that block on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import trio
from foundry.kernel.actors.engine.messages import (
    BlockView,
    Emit,
    Emitted,
    EngineMessage,
    GetStatus,
    GetTrace,
    WorkflowView,
)
from foundry.kernel.actors.mailbox import (
    NoticeSlot,
    Reply,
    ask,
    refuse,
    reply_pair,
    take_batch,
    unwrap,
)
from foundry.kernel.actors.store.messages import (
    Append,
    LoadNewestWorkflowStart,
    LoadRecentWorkflows,
    LoadTrace,
    LoadWorkflow,
    Pruned,
    StoreMessage,
)
from foundry.kernel.actors.telemetry.messages import ChainEnded, SpanOutbox
from foundry.kernel.actors.threads import in_thread
from foundry.kernel.blocks.api import Block, BlockContext, Usage
from foundry.kernel.blocks.execution import Outcome, execute, execute_now
from foundry.kernel.blocks.registry import BlockRegistry
from foundry.kernel.config import EngineConfig
from foundry.kernel.core.chain import (
    Turn,
    Visit,
    Walk,
    Workflow,
    check_limits,
    descend,
    next_turn,
)
from foundry.kernel.core.emissions import (
    RawEmission,
    StoredEmission,
    oversized,
    stored_emissions,
)
from foundry.kernel.core.ids import (
    Clock,
    block_slug,
    event_id_of_json,
    is_event_id,
    occurred_stamp,
    payload_json_of,
    rfc3339,
)
from foundry.kernel.core.json_input import quoted
from foundry.kernel.core.records import (
    RAW_OUTPUT_CHARS,
    Event,
    new_event,
    new_execution,
    own_copy,
    storable,
)
from foundry.kernel.core.status_query import (
    UNKNOWN,
    later,
    pick_workflows,
    status_candidates,
)
from foundry.kernel.core.throttle import Action
from foundry.kernel.core.trace_format import (
    MAX_TRACE_BYTES,
    TraceRows,
    check_trace_size,
    parse,
    render,
)
from foundry.kernel.core.tracecontext import new_root, new_span_id
from foundry.kernel.errors import ChainLimitExceeded, InvalidArgument, NotFound, Unavailable

log = logging.getLogger("foundry.engine")


FLUSH_AT = 256  # records a chain buffers before it sends them without waiting
INLINE_TURNS = 64  # blocks a chain runs inline before other work gets a turn
MAILBOX_BATCH = 32  # messages handled per scheduling pass
# A recent workflow keeps its trace rows for Trace unless their payloads and texts are larger.
RECENT_TRACE_BYTES = 16 * 1024

Answer = tuple[Reply[Any], Any]


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
        spans: SpanOutbox | None = None,
    ) -> None:
        """``spans``: where finished chains go for OpenTelemetry export (None: nowhere)."""
        self._registry, self._inbox, self._store = registry, inbox, store
        self._home, self._config, self._grace = home, config, shutdown_grace
        self._artifacts = f"{home}/artifacts"  # each execution's folder is under it
        self._with_folders: set[str] = set()  # workflows an execution made a folder for
        self._spans = spans or SpanOutbox()
        self._clock = Clock()
        self._inflight: dict[str, Workflow] = {}
        self._recent: OrderedDict[str, Workflow] = OrderedDict()
        # The latest start of a finished workflow stored and not in _recent: stored before this
        # engine started (asked once, at start) or dropped from _recent (core.status_query).
        self._stored_before: datetime | None = UNKNOWN
        self._dropped: datetime | None = None
        self._nursery: trio.Nursery | None = None
        # The store's answers to a chain's last Append: (workflow, whether it held the root).
        self._notify, self._notices = trio.open_memory_channel[Any](math.inf)
        self._closing = False

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with self._inbox, self._store, self._spans, trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._take_notices)
            nursery.start_soon(self._learn_stored_before)
            task_status.started()
            while batch := await take_batch(self._inbox, MAILBOX_BATCH):
                for message in batch:
                    try:
                        await self._handle(message)
                    except Exception as exc:  # one bad request never stops the engine
                        refuse(message, exc, log)
                del batch, message  # not held while waiting: a large payload would stay resident
            # Mailbox closed: chains in flight get the grace period, then are cancelled (the
            # next start marks them failed).
            self._closing = True
            self._stop_notices_when_idle()
            nursery.cancel_scope.deadline = trio.current_time() + self._grace
        if nursery.cancel_scope.cancelled_caught:  # (a stop said nothing of what it cut short)
            log.warning("chains still running after the %g s shutdown grace were cancelled: the "
                        "next start marks them failed", self._grace)  # fmt: skip

    async def _handle(self, message: EngineMessage) -> None:
        if isinstance(message, Emit):
            await self._on_emit(message)
        elif isinstance(message, GetStatus):
            self._on_status(message)
        elif isinstance(message, GetTrace):
            self._on_trace(message)
        elif isinstance(message, Pruned):
            self._forget_pruned(message.workflow_ids)
        else:
            raise KeyError(type(message))

    def _forget_pruned(self, workflow_ids: tuple[str, ...]) -> None:
        """Retention archived them: Trace and Status by id answered from memory as if they were
        still live (the README: Trace then answers not found)."""
        for workflow_id in workflow_ids:
            dropped = self._recent.pop(workflow_id, None)
            if dropped is not None:  # Status lists read the store from its time on
                self._dropped = later(self._dropped, dropped.root.occurred_at)

    # --- Emit ---------------------------------------------------------------------------------

    async def _on_emit(self, message: Emit) -> None:
        now = self._clock.now()
        payload_json = message.payload_json  # the bytes upstream hashes, stored as is
        if payload_json is None:
            payload_json = payload_json_of(message.payload)
        if (size := oversized(payload_json, self._config.max_event_bytes)) is not None:
            message.reply.fail(InvalidArgument(
                f"payload_json: {size:,} bytes of JSON as stored (numbers in serde_json's form: "
                f"1e15 is 1000000000000000.0), past [engine] max_event_bytes "
                f"({self._config.max_event_bytes:,})"
            ))  # fmt: skip
            return
        stamp = occurred_stamp(now)
        root_id = event_id_of_json(message.event_type, message.project, stamp, payload_json)
        span = message.span or new_root()  # a root starts a trace unless the Emit brought one
        root = new_event(
            root_id, message.event_type, message.project, now, now, message.throttle,
            root_id, message.payload, payload_json, stamp=stamp, trace_id=span.trace_id,
            span_id=span.span_id, parent_span_id=span.parent_span_id,
        )  # fmt: skip
        workflow = Workflow(root, is_workflow=self._registry.sinks(message.event_type))
        workflow.events.append(root)
        answer: Answer = (message.reply, Emitted(root_id, root_id if workflow.is_workflow else ""))
        try:
            if not workflow.is_workflow:
                finished = workflow.finished(now)
                # Watch shows it in no workflow, as Emit answered (its chain id stays stored)
                shown = dataclasses.replace(root, workflow_id="")
                await self._send(Append((root, finished), (shown,), answers=(answer,)))
                if self._spans.on:  # (no notice comes back for an event no block sinks)
                    self._spans.offer(_chain_ended(workflow))
                return
            self._inflight[root_id] = workflow
            workflow.unsent.append(root)
            workflow.unpublished.append(root)
            workflow.agenda.append(Visit(root))
            if self._run_inline(workflow) is Walk.END:
                await self._send(self._ending(workflow, answer, with_root=True))
                return
            await self._flush(workflow, answer)
        except Unavailable as exc:
            self._inflight.pop(root_id, None)
            message.reply.fail(exc)
            return
        assert self._nursery is not None
        self._nursery.start_soon(self._run_rest, workflow)

    async def _run_rest(self, workflow: Workflow) -> None:
        """The chain from its first block that must be awaited on, in a task of its own."""
        try:
            await self._committed(workflow)  # as before any await: the root is durable
        except Exception:
            self._forget(workflow)  # nothing of it was stored; the Emit got the error
            return
        workflow.state = "running"
        acted = False  # a mutator acted since the last flush
        try:
            while (turn := self._run_inline(workflow)) is not Walk.END:
                if turn is Walk.YIELD:  # inline turns used up: let others run
                    await trio.lowlevel.checkpoint()
                    continue
                if acted:  # its record goes before the chain waits on another block: a
                    await self._flush(workflow)  # mutator is not redone, a crash lost it
                await self._take_turn(workflow, turn)
                acted = turn[4].acts and not turn[2]  # its plan acts, it was not refused
                if len(workflow.unsent) >= FLUSH_AT:
                    await self._flush(workflow)
            await self._committed(workflow)  # a send the store refused fails the chain
        except ChainLimitExceeded as exc:
            workflow.fail(str(exc))
        except Exception as exc:  # e.g. the store refused a record: the chain fails, not the engine
            log.exception("workflow %s stopped", workflow.id)
            workflow.fail(f"stopped: {type(exc).__name__}: {exc}")
        try:
            await self._send(self._ending(workflow, with_root=False))
        except Unavailable:
            log.error("could not store the end of workflow %s: the store is gone", workflow.id)

    def _ending(self, workflow: Workflow, *answers: Answer, with_root: bool) -> Append:
        """The chain's last Append: what it has not sent yet, and its end (workflow row, trace).
        Its commit answers ``answers`` and notifies the engine."""
        self._skip_the_rest(workflow)
        workflow.agenda.clear()
        finished = workflow.finished(self._clock.now())
        if finished.state == "failed":  # one line per failed workflow (README, "The daemon log")
            _log_failure(workflow, finished.error)
        notice: Reply[None] = Reply(NoticeSlot(self._notify, (workflow, with_root)))
        records, publish = (*workflow.unsent, finished), tuple(workflow.unpublished)
        workflow.unsent, workflow.unpublished = [], []
        return Append(records, publish, answers=(*answers, (notice, None)))

    def _skip_the_rest(self, workflow: Workflow) -> None:
        """Record, as skipped, each block the chain stopped before (a limit, a failure): Status
        showed them, but Trace, the trace file and the stored executions did not, so Status
        lost them once it read the chain from the store."""
        now = self._clock.now()
        for visit in workflow.agenda:
            for slot in visit.slots:
                if slot.state != "pending":
                    continue
                slot.state, slot.completed_at = "skipped", now
                record = new_execution(
                    workflow_id=workflow.id, block_name=slot.name, trigger=visit.event,
                    state="skipped", success=False,
                    summary="not run: the chain stopped before this block's turn",
                    emitted=(), started_at=now, completed_at=now, duration_ms=0, raw_output="",
                    exit_code=0, audit_artifacts=(), attempts=0, throttled=False,
                    ran_command=False, span_id=new_span_id(),
                )  # fmt: skip
                workflow.executions.append(record)
                workflow.unsent.append(record)
        for slot in workflow.slots:  # (one whose visit is gone: none expected)
            if slot.state == "pending":
                slot.state = "skipped"

    async def _take_notices(self) -> None:
        async with self._notices:
            while batch := await take_batch(self._notices, MAILBOX_BATCH):
                for (workflow, with_root), answer in batch:
                    self._settle(workflow, with_root, answer)

    def _settle(self, workflow: Workflow, with_root: bool, answer: Any) -> None:
        """The store answered a chain's last Append."""
        try:
            unwrap(answer)
        except Exception as exc:
            if with_root:  # nothing of the chain was stored; the Emit got this error
                self._forget(workflow)
                return
            log.error("could not store the end of workflow %s: %s", workflow.id, exc)
            if self._spans.on:  # else the store sent its trace file's rows (TracesStored)
                self._spans.offer(_chain_ended(workflow))
        workflow.state = workflow.final_state()
        self._retire(workflow)

    def _forget(self, workflow: Workflow) -> None:
        """Drop a workflow whose root was never stored: as far as anyone knows, it never was."""
        self._inflight.pop(workflow.id, None)
        self._stop_notices_when_idle()

    def _retire(self, workflow: Workflow) -> None:
        if workflow.id in self._with_folders:
            self._with_folders.discard(workflow.id)
            with contextlib.suppress(OSError):  # a command that wrote nothing: no empty folder
                os.rmdir(f"{self._artifacts}/{workflow.id}")
        self._inflight.pop(workflow.id, None)
        workflow.retire(RECENT_TRACE_BYTES)  # what is stored need not be held here too
        self._recent[workflow.id] = workflow
        while len(self._recent) > self._config.recent_workflows:
            _, dropped = self._recent.popitem(last=False)
            self._dropped = later(self._dropped, dropped.root.occurred_at)
        self._stop_notices_when_idle()

    def _stop_notices_when_idle(self) -> None:
        if self._closing and not self._inflight:
            self._notify.close()

    # --- the depth-first walk -------------------------------------------------------------------

    def _run_inline(self, workflow: Workflow) -> Turn | Walk:
        """Take the chain's turns inline while their plans allow it. Returns the turn that must
        be awaited, else where the walk stopped (END, or YIELD when its inline turns ran out)."""
        try:
            for _ in range(INLINE_TURNS):
                turn = next_turn(workflow, self._registry.by_sink)
                if turn is None:
                    return Walk.END
                visit, block, refusal, slot, plan = turn
                if not plan.inline:
                    return turn
                slot.state, slot.started_at = "running", self._clock.now()
                span = new_span_id()  # the execution's, a child of its trigger event's span
                if refusal:
                    outcome: Outcome | None = _refused(refusal)
                else:
                    artifacts = self._artifact_dir(workflow, visit.event, block)
                    ctx = _context(visit.event, artifacts, 1, span)
                    outcome = execute_now(block, plan.decision.action, ctx)
                if outcome is None:  # it needs awaiting after all: the task takes this turn
                    slot.state = "pending"
                    return turn
                visit.taken += 1
                self._record(workflow, turn, outcome, span)
            return Walk.END if next_turn(workflow, self._registry.by_sink) is None else Walk.YIELD
        except ChainLimitExceeded as exc:
            workflow.fail(str(exc))
            return Walk.END
        except Exception as exc:  # a bug that got this far fails its chain, never the engine
            log.exception("workflow %s stopped", workflow.id)
            workflow.fail(f"stopped: {type(exc).__name__}: {exc}")
            return Walk.END

    async def _take_turn(self, workflow: Workflow, turn: Turn) -> None:
        visit, block, refusal, slot, plan = turn
        visit.taken += 1
        event = visit.event
        if plan.acts:
            await self._durable(workflow)  # no side effect before what caused it is stored
        slot.state, slot.started_at = "running", self._clock.now()
        span = new_span_id()  # one span for the execution, all its attempts
        if refusal:
            outcome = _refused(refusal)
        else:
            artifact_dir = self._artifact_dir(workflow, event, block)
            outcome = await execute(
                block,
                plan.decision.action,
                lambda attempt: _context(event, artifact_dir, attempt, span),
            )
        self._record(workflow, turn, outcome, span)

    def _artifact_dir(self, workflow: Workflow, event: Event, block: Block) -> str:
        """``artifacts/WORKFLOW/EVENT.BLOCK``: an execution's folder one level under its
        workflow's, not two — each new folder is a ``mkdir`` of ~100-250 µs of CPU here, and
        the greeting chain made three a chain."""
        return f"{self._artifacts}/{workflow.id}/{event.id}.{block_slug(block.name)}"

    def _record(self, workflow: Workflow, turn: Turn, outcome: Outcome, span: str) -> None:
        """Record a block's execution (span ``span``) and the events it emitted, which the walk
        visits next."""
        visit, block, _, slot, plan = turn
        event, decision = visit.event, plan.decision
        if outcome.context is not None and outcome.context.artifacts_touched:
            self._with_folders.add(workflow.id)  # (its folder goes at its end if left empty)
        children, error = self._children(
            event, block, outcome, throttled=not decision.deliver, span=span,
            room=self._config.max_chain_events - len(workflow.events),
        )  # fmt: skip
        completed = self._clock.now()
        error = error or outcome.error
        record = new_execution(
            workflow_id=workflow.id,
            block_name=block.name,
            trigger=event,
            state=decision.state if not error else "failed",
            success=not error,
            summary=storable(
                (outcome.summary or decision.summary_of(bool(children)))
                if not error or outcome.error
                else error
            ),
            emitted=children,
            started_at=slot.started_at or completed,
            completed_at=completed,
            duration_ms=outcome.duration_ms,
            raw_output=storable(outcome.raw_output[-RAW_OUTPUT_CHARS:]),
            exit_code=outcome.exit_code if -(2**31) <= outcome.exit_code < 2**31 else -1,
            audit_artifacts=tuple(map(storable, outcome.artifacts)),
            attempts=outcome.attempts,
            throttled=decision.action is not Action.RUN,
            ran_command=outcome.ran_command,
            span_id=span,
        )
        workflow.executions.append(record)
        workflow.events.extend(children)
        slot.state, slot.completed_at, slot.throttled = record.state, completed, record.throttled
        if error:
            workflow.fail(f"block {block.name!r} failed on {event.event_type} {event.id}: {error}")
        workflow.unsent += [*children, record]
        workflow.unpublished += children
        check_limits(
            workflow, event, block.name, children,
            max_depth=self._config.max_chain_depth, max_events=self._config.max_chain_events,
        )  # fmt: skip
        descend(workflow, children)

    def _children(
        self,
        parent: Event,
        block: Block,
        outcome: Outcome,
        *,
        throttled: bool,
        span: str,
        room: int,
    ) -> tuple[tuple[Event, ...], str]:
        """The events a block emitted, or none and why (``room``: what is left of the chain's
        event budget; the rule is ``core.emissions``, which ``testing.run_block`` applies too)."""
        emitted = [RawEmission(e.event_type, e.payload, e.taken_json()) for e in outcome.emissions]
        stored, error = stored_emissions(
            emitted, room=room, chain_limit=self._config.max_chain_events,
            max_event_bytes=self._config.max_event_bytes,
        )  # fmt: skip
        return tuple(self._child(parent, block, e, throttled, span) for e in stored), error

    def _child(
        self, parent: Event, block: Block, emission: StoredEmission, throttled: bool, span: str
    ) -> Event:
        """An event a block emitted: in its trigger's trace, a child of the execution's span."""
        now = self._clock.now()
        stamp = occurred_stamp(now)
        return new_event(
            id=event_id_of_json(emission.event_type, parent.project, stamp, emission.payload_json),
            event_type=emission.event_type,
            project=parent.project,
            occurred_at=now,
            recorded_at=now,
            throttle=parent.throttle,
            workflow_id=parent.workflow_id,
            payload=emission.payload,
            payload_json=emission.payload_json,
            depth=parent.depth + 1,
            parent_id=parent.id,
            emitted_by=block.name,
            throttled=throttled,
            stamp=stamp,
            trace_id=parent.trace_id,
            span_id=new_span_id(),
            parent_span_id=span,
        )

    async def _flush(self, workflow: Workflow, *answers: Answer) -> None:
        """Send what the chain recorded since the last flush (observers run ahead of commits)."""
        ack, pending = reply_pair()
        records, publish = tuple(workflow.unsent), tuple(workflow.unpublished)
        workflow.unsent, workflow.unpublished = [], []
        await self._send(Append(records, publish, ack, answers))
        workflow.commits.append(pending)

    async def _durable(self, workflow: Workflow) -> None:
        """Wait until everything the chain recorded so far is committed."""
        if workflow.unsent:
            await self._flush(workflow)
        await self._committed(workflow)

    async def _committed(self, workflow: Workflow) -> None:
        """Wait for each send of the chain not waited on yet; raise if the store refused one.
        Each: the store commits a failed group's appends one by one, so a later one can be
        stored when an earlier one was not (a mutator then acted on an event never stored)."""
        while workflow.commits:
            await workflow.commits[0].wait()
            del workflow.commits[0]

    async def _send(self, append: Append) -> None:
        try:
            self._store.send_nowait(append)
        except trio.WouldBlock:  # the store is behind: wait for room (backpressure)
            await self._store.send(append)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise Unavailable("the daemon is shutting down") from None

    # --- Status and Trace -----------------------------------------------------------------------

    def _on_status(self, message: GetStatus) -> None:
        if not message.workflow_id:
            query, unheld = message.query, later(self._stored_before, self._dropped)
            held, complete = status_candidates(
                self._inflight.values(), self._recent.values(), query, unheld
            )
            live = [w.view() for w in held]
            if complete or not query.wants_finished:
                message.reply.send(pick_workflows(live, (), query))
                return
            assert self._nursery is not None
            self._nursery.start_soon(self._status_list, message, live)
            return
        workflow = self._inflight.get(message.workflow_id) or self._recent.get(message.workflow_id)
        if workflow is not None:
            message.reply.send([workflow.view()])
            return
        assert self._nursery is not None
        self._nursery.start_soon(self._status_from_store, message)

    async def _status_list(self, message: GetStatus, live: list[WorkflowView]) -> None:
        """What the engine holds, and the finished workflows the database holds (all of them
        after a restart), filtered, newest first (``core.status_query``)."""
        query = message.query
        try:
            rows: list[Any] = await ask(
                self._store,
                lambda r: LoadRecentWorkflows(query.project, query.state, query.finished_limit, r),
            )
            stored = [_stored_view(*row) for row in rows]
        except Exception as exc:
            message.reply.fail(exc)
            return
        message.reply.send(pick_workflows(live, stored, query))

    async def _learn_stored_before(self) -> None:
        """What the database held when the engine started (until known, Status asks it)."""
        try:
            found = await ask(self._store, LoadNewestWorkflowStart)
        except Exception as exc:  # the store is stopping, or failed: Status keeps asking it
            log.warning("could not read the newest stored workflow: %s", exc)
            return
        self._stored_before = found

    async def _status_from_store(self, message: GetStatus) -> None:
        try:
            found: Any = await ask(self._store, lambda r: LoadWorkflow(message.workflow_id, r))
        except Exception as exc:
            message.reply.fail(exc)
            return
        if found is None:
            message.reply.fail(NotFound(f"workflow_id: no workflow {quoted(message.workflow_id)}"))
        else:
            message.reply.send([_stored_view(*found)])

    def _on_trace(self, message: GetTrace) -> None:
        assert self._nursery is not None
        workflow = self._recent.get(message.event_id)
        if workflow is not None and workflow.trace is not None:  # else too large to keep
            self._nursery.start_soon(self._trace_in_memory, message, workflow.trace)
        elif message.event_id in self._inflight or not is_event_id(message.event_id):
            message.reply.send(None)
        else:
            self._nursery.start_soon(self._trace_from_disk, message)

    async def _trace_in_memory(self, message: GetTrace, rows: TraceRows) -> None:
        """A recent chain's trace, made on a worker thread (a large one held the loop)."""
        try:
            document = await in_thread(_rendered_trace, rows, message.event_id)
        except Exception as exc:
            message.reply.fail(exc)
        else:
            message.reply.send(document)

    async def _trace_from_disk(self, message: GetTrace) -> None:
        """The trace file; else (the daemon died before the archivist wrote it) the database."""
        try:
            document = await in_thread(read_trace_file, self._home, message.event_id)
            if document is None:
                document = await ask(self._store, lambda r: LoadTrace(message.event_id, r))
        except Exception as exc:
            message.reply.fail(exc)
        else:
            message.reply.send(document)


def _log_failure(workflow: Workflow, error: str) -> None:
    failed = [f"{x.block_name}: {x.summary}" for x in workflow.executions if x.state == "failed"]
    reason = error or "; ".join(failed) or "failed"
    log.warning("workflow %s (%s, project %s) failed: %s", workflow.id,
                workflow.root.event_type, workflow.root.project, reason,
                extra={"workflow_id": workflow.id, "workflow_type": workflow.root.event_type,
                       "project": workflow.root.project, "error": reason})  # fmt: skip


def _chain_ended(workflow: Workflow) -> ChainEnded:
    return ChainEnded(
        tuple(workflow.events), tuple(workflow.executions), workflow.is_workflow,
        workflow.final_state(), workflow.error, workflow.completed_at or workflow.root.recorded_at,
        workflow.trace,  # its trace file's rows, made already: the exporter reads spans of them
    )  # fmt: skip


def _context(event: Event, artifact_dir: str, attempt: int, span: str) -> BlockContext:
    return BlockContext(
        payload=own_copy(event.payload, event.payload_json),  # recorded facts never change
        artifact_dir=artifact_dir,
        throttle=event.throttle,
        event_type=event.event_type,
        event_id=event.id,
        project=event.project,
        attempt=attempt,
        trace_id=event.trace_id,
        span_id=span,
    )


def _refused(error: str) -> Outcome:
    """The outcome of a block that could not even be asked (its payload filter raised)."""
    return Outcome(
        success=False, output=None, summary=error, error=error, emissions=(), usage=Usage(),
        raw_output="", exit_code=0, artifacts=(), attempts=0, duration_ms=0,
    )  # fmt: skip


def _rendered_trace(rows: TraceRows, event_id: str) -> Any:
    text = render(rows)
    check_trace_size(len(text.encode()), event_id)  # bytes, as a trace file's size is
    return json.loads(text)


def read_trace_file(home: Path, event_id: str) -> Mapping[str, Any] | None:
    """The chain's trace file; None when there is none, or only one a crash cut short."""
    for path in sorted((home / "traces").glob(f"*/{event_id}.json"), reverse=True):
        try:
            with path.open("rb") as file:
                check_trace_size(os.fstat(file.fileno()).st_size, event_id)
                # A large trace is written after its chain retired: the file may grow while
                # it is read, past the size it had when it was measured.
                data = file.read(MAX_TRACE_BYTES + 1)
                if len(data) > MAX_TRACE_BYTES:
                    check_trace_size(max(len(data), os.fstat(file.fileno()).st_size), event_id)
        except OSError:  # unreadable (say, a folder by that name): the database has the chain
            return None
        # Ours or the public daemon's; torn (the archivist died writing it) or corrupt is None.
        return parse(data)
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
        trace_id=row.get("trace_id") or "",
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
