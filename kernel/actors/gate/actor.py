"""The gate actor: eval packs and change gates (README.md, "Governance").

Every write goes through the store's group commit and is answered only once durable. Reads come
from the store's typed queries (``LoadEvalScenarios``, ``LoadGateDecisions``) and, for a run
being judged, from the scheduler (``GetRun``). Pack syncs are serialized here — the actor is the
only writer of ``eval_scenarios`` — so two syncs of one pack cannot give a slug two ids. The
decisions themselves are pure: ``core.governance`` (validation, records), ``core.gate_policy``
(``decide``) and ``core.evals`` (``judge``).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime
from functools import partial
from typing import Any

import trio
from foundry.kernel.actors.attestor.messages import AttestCustom, AttestorMessage
from foundry.kernel.actors.gate.messages import (
    CheckChangeGate,
    GateMessage,
    ListChangeGates,
    ListEvalScenarios,
    RecordEvalResult,
    RecordGateFollowup,
    SyncEvalPack,
)
from foundry.kernel.actors.gate.patterns import re2_search
from foundry.kernel.actors.gate.watched import Watch, watched_assertions, watched_rules
from foundry.kernel.actors.mailbox import ask, refuse
from foundry.kernel.actors.scheduler.messages import GetRun, RunView, SchedulerMessage
from foundry.kernel.actors.store.messages import (
    Append,
    LoadEvalScenarios,
    LoadGateDecisions,
    StoreMessage,
)
from foundry.kernel.actors.threads import in_thread
from foundry.kernel.blocks.execution import step_model_refusal
from foundry.kernel.blocks.registry import BlockRegistry
from foundry.kernel.core.attest_records import EVAL_RESULT, GATE_DECISION
from foundry.kernel.core.dag import StepSpec
from foundry.kernel.core.evals import Judgement, RunFacts, StepFacts, judge, names_any, unfinished
from foundry.kernel.core.gate_policy import Decision, GatePolicy, GateRequest, decide, unanswered
from foundry.kernel.core.governance import (
    ACKNOWLEDGEMENT_BYTES,
    FOLLOWUP_OUTCOMES,
    HISTORY_LIMIT,
    MAX_TEXT,
    TERMINAL_RUN_STATUSES,
    EvalResultRecord,
    GateDecisionRecord,
    GateFollowupRecord,
    StoredGate,
    StoredScenario,
    acknowledgement_size,
    check_name,
    checked_request,
    decision_record,
    gate_limit,
    parse_pack,
    record_claims,
    synced_records,
    thawed,
)
from foundry.kernel.core.ids import Clock
from foundry.kernel.core.json_input import STRUCT_DEPTH, check_json_value, quoted
from foundry.kernel.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)

log = logging.getLogger("foundry.gate")
JUDGING_THREADS = 4  # eval results judged at once
HELD_GATES = 4_096  # gates whose follow-ups' bytes are kept known (the most recent)


def new_id(prefix: str) -> str:
    """``prefix_`` + milliseconds (hex, so ids sort by time) + random hex."""
    return f"{prefix}_{int(time.time() * 1000):012x}{secrets.token_hex(6)}"


def run_facts(view: RunView, *, copied: bool = False) -> RunFacts:
    """What ``judge`` looks at of a run: its status, and per step status, output, usage and
    lease/completion times (``finished_at`` is the run's last update once it is terminal).
    ``copied``: each output a copy (for a plugin's assertions: the scheduler's own, changed in
    place by one, was what a branch of the run then reused)."""
    steps = tuple(
        StepFacts(
            step_id=s.step_id,
            status=s.status,
            output=thawed(s.output) if copied else s.output,
            tokens_in=int(s.usage.get("tokens_in", 0) or 0),
            tokens_out=int(s.usage.get("tokens_out", 0) or 0),
            cost=float(s.usage.get("cost", 0.0) or 0.0),
            started_at=s.leased_at,
            completed_at=s.completed_at,
        )
        for s in view.steps
    )
    finished = view.updated_at if view.status in TERMINAL_RUN_STATUSES else None
    return RunFacts(view.run_id, view.status, steps, view.created_at, finished)


def _recorded(
    request: GateRequest, decision: Decision, now: datetime
) -> tuple[GateDecisionRecord, dict[str, Any]]:
    record = decision_record(new_id("gate"), request, decision, now)
    return record, record_claims(record)


class Gate:
    def __init__(
        self,
        registry: BlockRegistry,
        policy: GatePolicy,
        inbox: trio.MemoryReceiveChannel[GateMessage],
        store: trio.MemorySendChannel[StoreMessage],
        scheduler: trio.MemorySendChannel[SchedulerMessage],
        attestor: trio.MemorySendChannel[AttestorMessage] | None = None,
        *,
        assertion_timeout: float = 30.0,
        shutdown_grace: float = 10.0,
    ) -> None:
        """``attestor``: where decisions and eval results are announced once durable (None:
        they are not attested); ``assertion_timeout``: seconds an eval result's judging may
        take (``[evals]``); ``shutdown_grace``: seconds the calls in flight get to finish once
        the mailbox closes (a plugin's rule or assertion may never end)."""
        self._registry, self._policy = registry, policy
        self._attestor = attestor
        self._inbox, self._store, self._scheduler = inbox, store, scheduler
        self._clock = Clock()
        # Plugins' code runs on worker threads: a gate's rules one decision at a time (a rule
        # may keep state), judging a few runs at once, each within its time limit (the wait for
        # a turn not counted). A rule or assertion past its limit is left to its thread: while
        # it runs on, the gate denies at once, and judging errs at once when as many as judge
        # at once are such ones. Their threads are of limiters of their own, with room for the
        # ones left running and the ones running (so no timed wait is for a thread): left ones
        # held the daemon's shared limiter, and every other thread job waited (a review).
        self._deciding = trio.Lock()
        self._stuck_rule: Watch | None = None
        self._rule_threads = trio.CapacityLimiter(2)
        self._judging = trio.Semaphore(JUDGING_THREADS)
        self._stuck_judging: list[Watch] = []
        self._judge_threads = trio.CapacityLimiter(2 * JUDGING_THREADS)
        self._assertion_timeout = assertion_timeout
        self._grace = shutdown_grace
        self._sync_lock = trio.Lock()
        # A gate's follow-ups one at a time (check, then write: two at once both passed the
        # bound), and the bytes each gate's hold, known once read: each follow-up read and
        # measured every earlier one of its gate, so filling one took quadratic time (70 ms a
        # call at 2,000).
        self._followup_locks: dict[str, trio.Lock] = {}
        self._held: OrderedDict[str, int] = OrderedDict()
        self._handlers: dict[type, Callable[[Any], Any]] = {
            SyncEvalPack: self._sync,
            ListEvalScenarios: self._list_scenarios,
            RecordEvalResult: self._record_result,
            CheckChangeGate: self._check,
            RecordGateFollowup: self._followup,
            ListChangeGates: self._list_gates,
        }

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with self._inbox, self._store, self._scheduler, trio.open_nursery() as nursery:
                task_status.started()
                async for message in self._inbox:
                    nursery.start_soon(self._answer, message)
                    # Not held until the next message comes: a request of a thousand diffs is
                    # freed with its answer, not on the path of the next one (~0.2 ms, cold).
                    del message
                # Stopping: what is in flight gets the grace, then is cancelled (a rule left
                # running on its thread held a graceful stop for its whole time limit).
                nursery.cancel_scope.deadline = trio.current_time() + self._grace
        finally:
            if self._attestor is not None:
                self._attestor.close()

    async def _attest(
        self,
        label: str,
        record: Any,
        record_id: str,
        run_id: str = "",
        *,
        claims: dict[str, Any] | None = None,
    ) -> None:
        """Announce a durable decision or result to the attestor (subject custom ``label``);
        ``claims``: the record's, made already."""
        if self._attestor is None:
            return
        claims = claims if claims is not None else record_claims(record)
        notice = AttestCustom(label, record_id, run_id, claims, self._clock.now())
        try:
            await self._attestor.send(notice)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            log.warning("the attestor has stopped: %s %s is not attested", label, record_id)

    async def _answer(self, message: Any) -> None:
        try:
            result = await self._handlers[type(message)](message)
        except Exception as exc:
            refuse(message, exc, log)
        else:
            message.reply.send(result)

    async def _append(self, records: list[Any]) -> None:
        await ask(self._store, lambda r: Append(tuple(records), ack=r))

    async def _scenarios(self, pack: str = "", slug: str = "", history: int = 0) -> list[Any]:
        found: list[StoredScenario] = await ask(
            self._store, lambda r: LoadEvalScenarios(pack, slug, history, r)
        )
        return found

    # --- eval packs -----------------------------------------------------------------------------

    def _env_allowed(self, step: StepSpec) -> frozenset[str]:
        block = self._registry.by_name.get(step.type)
        return block.env_allowed(step.inputs) if block is not None else frozenset()

    async def _sync(self, message: SyncEvalPack) -> list[str]:
        # On worker threads: a pack's DAGs are parsed and its records made there (on the loop,
        # 100 scenarios of 600 steps each held every other client 1.7-3 s: a hunt).
        await in_thread(self._checked_pack, message)
        async with self._sync_lock:  # read, then write: one sync at a time
            existing = {s.scenario.slug: s.scenario for s in await self._scenarios(message.pack)}
            ids, rows = await in_thread(
                synced_records, message.pack, message.scenarios, existing, self._clock.now(),
                lambda: new_id("scn"),
            )  # fmt: skip
            if rows:
                await self._append(rows)  # one commit: all or nothing
        return ids

    def _checked_pack(self, message: SyncEvalPack) -> None:
        parse_pack(message.pack, message.scenarios, self._registry.by_name.keys(),
                   self._env_allowed, self._registry.assertion_types, re2_search,
                   partial(step_model_refusal, self._registry))  # fmt: skip

    async def _list_scenarios(self, message: ListEvalScenarios) -> list[StoredScenario]:
        return await self._scenarios(history=HISTORY_LIMIT)

    async def _record_result(self, message: RecordEvalResult) -> EvalResultRecord:
        check_name(message.pack, "pack")
        check_name(message.slug, "slug")
        check_name(message.run_id, "run_id")
        check_name(message.commit, "commit", required=False)
        found = await self._scenarios(message.pack, message.slug)
        if not found:
            raise NotFound(
                f"no eval scenario {quoted(message.slug)} in pack {quoted(message.pack)}"
            )
        scenario = found[0].scenario
        view: RunView = await ask(self._scheduler, lambda r: GetRun(message.run_id, r))
        if view.status not in TERMINAL_RUN_STATUSES:
            raise FailedPrecondition(
                f"run {message.run_id} is {view.status.lower()}; record the result of a "
                "finished run"
            )
        judgement = await self._judged(view, scenario.expected)
        result = EvalResultRecord(
            result_id=new_id("evr"),
            scenario_id=scenario.scenario_id,
            run_id=message.run_id,
            commit=message.commit,
            outcome=judgement.outcome,
            metrics=judgement.metrics,
            executed_at=self._clock.now(),
        )
        await self._append([result])
        await self._attest(EVAL_RESULT, result, result.result_id, result.run_id)
        return result

    async def _judged(self, view: RunView, expected: Any) -> Judgement:
        """The run judged on a worker thread (a plugin's assertion may be slow, or call the
        daemon: on the loop, it held every client), within ``assertion_timeout``."""
        async with self._judging:
            # (looked at once this result's turn came: results queued behind the first stuck
            # ones each went on to be stuck too)
            self._stuck_judging = [w for w in self._stuck_judging if not w.finished]
            if len(self._stuck_judging) >= JUDGING_THREADS:
                running = ", ".join(sorted({w.running or "?" for w in self._stuck_judging}))
                return await self._unjudged(view, (
                    f"judging did not start: assertions of earlier results ({running}) are "
                    "past their time limit and still hold every judging thread"))  # fmt: skip
            return await self._judged_in_time(view, expected)

    async def _judged_in_time(self, view: RunView, expected: Any) -> Judgement:
        watch = Watch()
        with trio.move_on_after(self._assertion_timeout):
            return await in_thread(self._judge, view, expected, watch,
                                   limiter=self._judge_threads, abandon_on_cancel=True)  # fmt: skip
        if watch.left_running():
            self._stuck_judging.append(watch)
        seconds = f"{self._assertion_timeout:g} s"
        if watch.running:
            return await self._unjudged(
                view, f"assertion {watch.running} did not answer within {seconds}"
            )
        return await self._unjudged(view, f"judging did not finish within {seconds}")

    async def _unjudged(self, view: RunView, reason: str) -> Judgement:
        log.warning("eval of run %s: %s", view.run_id, reason)
        return await in_thread(unfinished, run_facts(view), reason)

    def _judge(self, view: RunView, expected: Any, watch: Watch) -> Judgement:
        try:
            watch.begin()
            kinds = self._registry.assertion_types
            # a plugin's assertions get copies of the outputs, made once, the built-ins the
            # outputs themselves (one changed in place was what a branch of the run reused)
            copied = run_facts(view, copied=True) if names_any(expected, kinds.keys()) else None
            watched = watched_assertions(kinds, watch, copied)
            return judge(run_facts(view), expected, watched, search=re2_search)
        finally:
            watch.finished = True

    # --- change gates ---------------------------------------------------------------------------

    async def _check(self, message: CheckChangeGate) -> StoredGate:
        # On worker threads: a request's telemetry and metadata are of any size (4 MB of it,
        # checked and made a record here, held the loop ~2 s); its claims made there too.
        request = await in_thread(checked_request, message.request)
        now = self._clock.now()
        async with self._deciding:  # (one at a time: a rule may keep state)
            record, claims = await self._decided(request, now)
        await self._append([record])
        await self._attest(GATE_DECISION, record, record.gate_id, claims=claims)
        return StoredGate(record)

    async def _decided(
        self, request: GateRequest, now: datetime
    ) -> tuple[GateDecisionRecord, dict[str, Any]]:
        """The rules' decision and its record, made on a worker thread within
        ``rule_timeout`` (its record too: one hop the less, ~1 ms a call); a denial naming the
        rule when one has not answered in time, or is still running past it since an earlier
        decision."""
        seconds = f"{self._policy.rule_timeout:g} s"
        stuck = self._stuck_rule
        if stuck is not None and not stuck.finished:
            return await self._unanswered(request, now, stuck.running, (
                f"rule {stuck.running or '(none running)'} has not answered an earlier "
                f"decision within {seconds} and still runs (a gate decides one change at a "
                "time), so the gate denies"))  # fmt: skip
        watch = Watch()
        with trio.move_on_after(self._policy.rule_timeout):
            return await in_thread(self._decide, request, now, watch, limiter=self._rule_threads,
                                   abandon_on_cancel=True)  # fmt: skip
        if watch.left_running():
            self._stuck_rule = watch
        if watch.running:
            reason = f"rule {watch.running} did not answer within {seconds}, so the gate denies"
        else:
            reason = f"the gate's rules did not finish within {seconds}, so the gate denies"
        return await self._unanswered(request, now, watch.running, reason)

    def _decide(
        self, request: GateRequest, now: datetime, watch: Watch
    ) -> tuple[GateDecisionRecord, dict[str, Any]]:
        try:
            watch.begin()
            rules = watched_rules(self._registry.gate_rules, watch)
            return _recorded(request, decide(request, self._policy, rules), now)
        finally:
            watch.finished = True

    async def _unanswered(
        self, request: GateRequest, now: datetime, rule: str, reason: str
    ) -> tuple[GateDecisionRecord, dict[str, Any]]:
        log.warning("gate of change %s: %s", quoted(request.change_id), reason)
        return await in_thread(_recorded, request, unanswered(request, rule, reason), now)

    async def _followup(self, message: RecordGateFollowup) -> GateFollowupRecord:
        check_name(message.gate_id, "gate_id")
        check_name(message.actor, "actor", required=False)
        if message.outcome not in FOLLOWUP_OUTCOMES:
            raise InvalidArgument(
                f"outcome: expected one of {', '.join(FOLLOWUP_OUTCOMES)}, "
                f"got {quoted(message.outcome)}"
            )
        if message.note is not None:
            check_name(message.note, "note", required=False, limit=MAX_TEXT)
        details = dict(message.details)
        check_json_value(details, "details", depth=STRUCT_DEPTH)
        size = acknowledgement_size(message.note, details)
        lock = self._followup_locks.setdefault(message.gate_id, trio.Lock())
        try:
            async with lock:
                held = await self._held_by(message.gate_id)
                record = self._followup_record(message, details, held, size)
                await self._append([record])
                self._held[message.gate_id] = held + size
        finally:
            if not lock.locked() and not lock.statistics().tasks_waiting:
                self._followup_locks.pop(message.gate_id, None)
        return record

    async def _held_by(self, gate_id: str) -> int:
        """The bytes of follow-ups gate ``gate_id`` holds (NotFound: no such gate)."""
        held = self._held.get(gate_id)
        if held is not None:
            self._held.move_to_end(gate_id)
            return held
        found: list[StoredGate] = await ask(
            self._store, lambda r: LoadGateDecisions(gate_id, "", 1, r)
        )
        if not found:
            raise NotFound(f"gate_id: no gate decision {quoted(gate_id)}")
        held = sum(acknowledgement_size(a.note, a.details) for a in found[0].acknowledgements)
        self._held[gate_id] = held
        if len(self._held) > HELD_GATES:
            self._held.popitem(last=False)
        return held

    def _followup_record(
        self, message: RecordGateFollowup, details: dict[str, Any], held: int, size: int
    ) -> GateFollowupRecord:
        if held + size > ACKNOWLEDGEMENT_BYTES:
            # each comes back with the decision, in every ListChangeGates that lists it
            raise ResourceExhausted(
                f"gate_id: decision {quoted(message.gate_id)} holds {held:,} bytes of "
                f"follow-ups; this one's {size:,} would pass the {ACKNOWLEDGEMENT_BYTES:,} a "
                "decision keeps"
            )
        return GateFollowupRecord(
            followup_id=new_id("fup"),
            gate_id=message.gate_id,
            actor=message.actor,
            outcome=message.outcome,
            note=message.note,
            details=details,
            recorded_at=self._clock.now(),
        )

    async def _list_gates(self, message: ListChangeGates) -> list[StoredGate]:
        check_name(message.change_id, "change_id", required=False)
        limit = gate_limit(message.limit)
        found: list[StoredGate] = await ask(
            self._store, lambda r: LoadGateDecisions("", message.change_id, limit, r)
        )
        return found
