"""The attestor: signs attestations of what the kernel recorded (README.md, "Attestations").

The scheduler and the gate actor send it notices (``messages.py``) once the facts are in the
store's mailbox: a completed step (and its tool call and artifacts), a capability token granted
to a tool step's attempt, a finished run, a gate decision, an eval result. The attestor takes
what is waiting in one go (lingering ``LINGER`` for more, unless a query or a run's own notice
is among them), turns each notice into a job of plain facts (``statements.job_of``: on the trio
thread, ``CHUNK`` at a time between the other tasks' turns; an artifact's, which reads its file,
and a run's, which walks the whole run, on a worker thread), has its signing process draft and
sign the batch (``signer.py``, ``drafting.py``: one pipe write a batch, the statements and
signatures made on the other core, off this process's interpreter lock; without one — it could
not start, died or answered a bad signature — the same function on a worker thread), and appends
the rows in one group commit — after their facts, which were queued in the store first; a run's
attestations as rows DuckDB alone gets (a start makes them again from the journaled facts),
written by the signing process to a file of the spool that DuckDB reads itself
(``SpooledAttestationRows``: their statements never come back through the daemon), or sent back
and appended (``DerivedAttestationRows``: without a signing process); a gate decision's or an
eval result's journaled. The trio thread never drafts, signs or verifies: the last signature of
each batch the process answers is checked on the attestor's checker thread (``_checked``).

A run's step attestations are chained (``core/attest.py``): the attestor keeps each live run's
chain head. Only a run unfinished when the attestor started (listed once, before the daemon's
start goes on: up to ``OPEN_RUNS_SECONDS``, else every run is looked up) can have a chain an
earlier daemon began: for those it loads the head from the store on their first notice; every
other run's chain starts empty, without a query.

A daemon stopped between a fact's commit and its attestation's leaves an announcement (a
``step_completed``'s ``attestation_id``, an ``attested`` run event) without its attestation; on
start the attestor re-attests those from the stored run log: the same id, the same envelope (a
notice of this daemon's for one of them, already waiting, is skipped). ``GetAttestations`` is
answered after every notice sent before it has been committed, so an id seen on TapRun is always
found.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import logging
import math
import os
from base64 import b64decode
from importlib.metadata import PackageNotFoundError, version
from operator import add
from pathlib import Path
from typing import Any

import trio
from foundry.kernel.actors.attestor.drafting import Heads, Job, Result, Spool, draft_batch
from foundry.kernel.actors.attestor.keys import KeyPair
from foundry.kernel.actors.attestor.messages import (
    Attest,
    AttestCustom,
    AttestorMessage,
    GetAttestations,
)
from foundry.kernel.actors.attestor.signer import SignerFailed, SignerProcess
from foundry.kernel.actors.attestor.statements import (
    ROW_HEAD,
    ROW_TAIL,
    Chain,
    Meta,
    Signer,
    job_of,
    step_job,
)
from foundry.kernel.actors.mailbox import Pending, ask, post, refuse, take_batch
from foundry.kernel.actors.store.messages import (
    Append,
    LoadAttestations,
    LoadRunAttestations,
    LoadRunEvents,
    LoadRunSummaries,
    LoadUnattested,
    LoadUnattestedGovernance,
    StoreMessage,
)
from foundry.kernel.actors.threads import JobThread, in_thread
from foundry.kernel.core.attest import PAYLOAD_TYPE, attestation_digest, key_id, pae
from foundry.kernel.core.attest_records import (
    GATE_DECISION,
    AttestationRecord,
    AttestationRows,
    DerivedAttestationRows,
    SpooledAttestationRows,
    announced,
    custom_attestation_id,
)
from foundry.kernel.core.governance import record_claims
from foundry.kernel.core.json_input import json_values_past, quoted
from foundry.kernel.core.run_control import MAX_PAGE_SIZE, RunListQuery, RunSummary
from foundry.kernel.core.runs import RunEventRecord
from foundry.kernel.errors import InvalidArgument, NotFound, ResourceExhausted, Unavailable
from nacl.bindings import crypto_sign_open
from nacl.exceptions import BadSignatureError

log = logging.getLogger("foundry.attestor")

BATCH = 512  # notices signed per request to the signing process and committed per append
MAX_IDS = 1_000  # per GetAttestations
LINGER = 0.05  # seconds a batch of notices waits for more before it is signed
FIRST_LOOK = 0.005  # seconds before its first look for more (a lone notice waits this long)
POLL = 0.02  # seconds between its later looks, while notices keep coming
CHUNK = 32  # notices made jobs (or rows) on the trio thread between its other tasks' turns
SPOOL_ROWS = 128  # a batch's rows go to a spool file from this many on (``_to_spool``)
OPEN = ("PENDING", "RUNNING", "PAUSED_AT_STEP")  # the statuses of a run not finished
OPEN_RUNS_SECONDS = 1.0  # the daemon's start waits this long at most for their list
SIGNATURE = 64  # bytes of an Ed25519 signature
RETRY_FIRST, RETRY_LAST = 0.1, 5.0  # seconds between tries of a batch the store held up
RETRY_FOR = 30.0  # seconds of such tries, at most
_CHAINED = frozenset(("step", "run"))  # the kinds of a run's hash chain


def daemon_version() -> str:
    try:
        return version("foundry")
    except PackageNotFoundError:  # pragma: no cover - a source tree without its metadata
        return "0+unknown"


class Attestor:
    def __init__(
        self,
        keys: KeyPair,
        inbox: trio.MemoryReceiveChannel[AttestorMessage],
        store: trio.MemorySendChannel[StoreMessage],
        *,
        spool: Path | None = None,
    ) -> None:
        """``spool``: the folder where the signing process writes a batch's rows for DuckDB to
        read (``SpooledAttestationRows``); None: the rows come back through the pipe."""
        self._inbox, self._store = inbox, store
        self._spool, self._spooled = spool, 0  # the folder, the files named in it so far
        self.keyid = key_id(keys.public_raw)
        self._signer = Signer(keys.private.sign, self.keyid, daemon_version())
        self._key_file, self._public_raw = keys.path, keys.public_raw
        self._process: SignerProcess | None = None
        self._checker: JobThread | None = None  # checks the process's signatures (``_good``)
        self._chains: dict[str, Chain] = {}  # live runs' chain heads
        # Runs unfinished when the attestor started: only these (and runs re-attested at start)
        # can have step attestations stored by an earlier daemon; any other run's chain starts
        # empty, without a store query. None: not known (their query failed): ask for each run.
        self._resumed: set[str] | None = None
        self._recovered: set[str] = set()  # re-attested at start: their notices are skipped
        self._committed: Pending[None] | None = None  # the last append of attestations
        self.signed = 0  # attestations signed since start (for benchmarks)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with self._inbox, self._store, trio.open_nursery() as nursery:
            try:
                await self._start_signer()
                # Before the scheduler starts: a run it resumes may end before a later look.
                with trio.move_on_after(OPEN_RUNS_SECONDS):  # else: a query per run, as ever
                    self._resumed = await self._open_runs()
                task_status.started()
                await self._recover()
                await self._serve(nursery)
            finally:
                if self._process is not None:
                    await self._process.close()
                if self._checker is not None:
                    with trio.CancelScope(shield=True):
                        await trio.to_thread.run_sync(self._checker.stop)

    async def _start_signer(self) -> None:
        if self._key_file is None:  # a key pair made in memory (tests): sign in the daemon
            return
        if self._spool is not None:
            try:
                await in_thread(functools.partial(_cleared, self._spool))
            except OSError as exc:
                log.error("could not prepare the attestation spool %s (%s): a batch's rows come "
                          "back from the signing process instead", self._spool, exc)  # fmt: skip
                self._spool = None
        try:
            self._process = await SignerProcess.start(self._key_file, self._public_raw)
        except OSError as exc:
            log.error("could not start the signing process (%s): signing in the daemon", exc)
            return
        self._checker = JobThread("foundry-attest-check")
        self._checker.start()

    async def _serve(self, nursery: trio.Nursery) -> None:
        while batch := await self._take():
            notices: list[Attest | AttestCustom] = []
            for message in batch:
                if isinstance(message, Attest | AttestCustom):
                    notices.append(message)
                elif isinstance(message, GetAttestations):
                    await self._attest(notices)  # earlier notices first
                    notices = []
                    nursery.start_soon(self._get, message, self._committed)
                else:
                    refuse(message, KeyError(type(message)), log)
            await self._attest(notices)

    async def _attest(self, notices: list[Attest | AttestCustom]) -> None:
        """:meth:`_sign_and_append`, again while the store cannot answer the chain heads it
        needs (DuckDB reopening after a failed checkpoint: it took the daemon down) — for up to
        ``RETRY_FOR`` seconds, and not once the daemon is stopping. A batch that fails for good
        is logged and left to the next start, which re-attests from the log what was announced
        and not stored."""
        delay, deadline = RETRY_FIRST, trio.current_time() + RETRY_FOR
        while True:
            try:
                await self._sign_and_append(notices)
                return
            except (Unavailable, ResourceExhausted) as exc:
                if trio.current_time() + delay > deadline or self._stopping():
                    log.error("could not attest %d fact(s) (%s); the next start re-attests "
                              "them", len(notices), exc)  # fmt: skip
                    return
                log.warning("could not attest %d fact(s) yet (%s); again in %g s",
                            len(notices), exc, delay)  # fmt: skip
            except Exception:
                log.exception("could not attest %d fact(s); the next start re-attests them",
                              len(notices))  # fmt: skip
                return
            await trio.sleep(delay)
            delay = min(delay * 2, RETRY_LAST)

    def _stopping(self) -> bool:
        """The scheduler and the gate actor closed their ends of the inbox: the daemon stops."""
        return self._inbox.statistics().open_send_channels == 0

    async def _take(self) -> list[AttestorMessage]:
        """The next batch: what is waiting, plus what comes within ``LINGER`` seconds (up to
        ``BATCH``) — one pipe write to the signing process signs many, and one append stores
        them. It looks for more after ``FIRST_LOOK`` seconds, then every ``POLL`` seconds
        while more keep coming (looks every 5 ms cost the trio thread ~7 µs a step more than
        every 20 ms, in A/B pairs of the attest benchmark), not at each notice (a wake-up of this
        task per step cost more than the rest of its work on it), and stops at a look that
        finds nothing new: notices that trickle (a gate decision, slow steps) are not worth ten
        wake-ups each. A query does not linger, nor a run's own notice (the last of its run:
        whoever waits for the run waits for it)."""
        batch = await take_batch(self._inbox, BATCH)
        if not batch or any(_urgent(m) for m in batch):
            return batch
        deadline = trio.current_time() + LINGER
        wait = FIRST_LOOK
        while len(batch) < BATCH and (left := deadline - trio.current_time()) > 0:
            await trio.sleep(min(wait, left))
            wait = POLL
            before = len(batch)
            for _ in range(BATCH - len(batch)):
                try:
                    message = self._inbox.receive_nowait()
                except trio.WouldBlock:
                    break
                except trio.EndOfChannel:
                    return batch
                batch.append(message)
                if _urgent(message):
                    return batch
            if len(batch) == before:
                break
        return batch

    # --- attesting ------------------------------------------------------------------------------

    async def _sign_and_append(self, notices: list[Attest | AttestCustom]) -> None:
        if self._recovered:
            notices = [n for n in notices if not self._seen(n)]
        if not notices:
            return
        jobs, metas = await self._jobs(notices)
        if not jobs:
            return
        # The chain heads of the runs in the batch; the process advances them, a run closes its.
        heads: Heads = {}
        for meta in metas:
            if meta.kind in _CHAINED and meta.run_id not in heads:
                chain = self._chains.get(meta.run_id) or await self._chain(meta.run_id)
                heads[meta.run_id] = (chain.index, chain.previous)
        to_spool = self._to_spool(metas)
        results, after, spooled = await self._draft(heads, jobs, to_spool)
        for run_id in heads:
            if run_id in after:
                self._chains[run_id] = Chain(*after[run_id])
            else:
                self._chains.pop(run_id, None)  # its run attestation closed it
        if str in set(map(type, results)):  # a job whose facts could not be attested (rare)
            kept = []
            for meta, result in zip(metas, results, strict=True):
                if isinstance(result, str):
                    log.error("could not attest %s: %s", _describe(meta), result)
                else:
                    kept.append((meta, result))
            metas, results = [m for m, _ in kept], [r for _, r in kept]
        if spooled:
            assert to_spool is not None
            if results:  # the rows are in the file: the store has DuckDB read it
                spool = SpooledAttestationRows(to_spool[0], len(results))
                self._committed = await post(self._store, lambda r: Append((spool,), ack=r))
                self.signed += len(results)
        elif results:
            # Each row is its meta's head + the result + its meta's tail, joined in C (a batch of
            # hundreds without a Python call per row), and the batch is one record.
            rows = tuple(map(add, map(add, map(ROW_HEAD, metas), results), map(ROW_TAIL, metas)))
            batch = _records_of(rows, metas)
            self._committed = await post(self._store, lambda r: Append(batch, ack=r))
            self.signed += len(rows)

    def _to_spool(self, metas: list[Meta]) -> Spool | None:
        """The spool file for a batch's rows and each row's meta, if the signing process is to
        write them (``signer.py``): a batch of a run's attestations of ``SPOOL_ROWS`` or more (a
        gate decision's or eval result's rows are journaled: they come back). A smaller batch's
        rows come back too: a file costs its creation and deletion and DuckDB's ``read_csv``
        ~1 ms however few its rows, while the rows that come back join the materializer's batch
        (~10 µs a row) — a run paused and patched step by step attests one step at a time."""
        if self._spool is None or self._process is None or len(metas) < SPOOL_ROWS:
            return None
        # a step job carries its row's meta (``statements.step_job``); the others' go along
        others = [m for m in metas if m.kind != "step"]
        if any(m.kind == "custom" for m in others):
            return None
        self._spooled += 1
        path = f"{self._spool}/{self._spooled:012d}.csv"
        return path, [(*m[:4], m.issued_at.isoformat(), m.seq) for m in others]

    async def _chain(self, run_id: str) -> Chain:
        """The chain of a run first seen in this daemon's notices: empty for a run it started,
        else (a run unfinished at start) the head of its stored step attestations."""
        if self._resumed is None or run_id in self._resumed:
            chain = await self._stored_chain(run_id)
        else:
            chain = Chain()  # a run this daemon started
        self._chains[run_id] = chain
        return chain

    def _seen(self, notice: Attest | AttestCustom) -> bool:
        """A notice of an announcement re-attested from the log at start (once), or of a
        governance record attested at start."""
        if isinstance(notice, AttestCustom):
            attestation_id = custom_attestation_id(notice.label, notice.record_id)
        else:
            attestation_id = notice.attested.payload["attestation_id"]
        if attestation_id not in self._recovered:
            return False
        self._recovered.discard(attestation_id)
        return True

    async def _jobs(self, notices: list[Attest | AttestCustom]) -> tuple[list[Job], list[Meta]]:
        """Each notice's job (``drafting.py``) and meta, in order: on the trio thread (``CHUNK``
        at a time, then the others' turn) — except two kinds, made on a worker thread after: an
        artifact's (it reads the file) and a run's (it walks the whole run)."""
        made: list[tuple[Job, Meta] | Attest | AttestCustom | None] = []
        later = False
        for start in range(0, len(notices), CHUNK):
            if start:
                await trio.lowlevel.checkpoint()
            for notice in notices[start : start + CHUNK]:
                try:
                    found = step_job(notice)  # most notices: a step's, made without a lookup
                except Exception:
                    found = None  # ``_job`` makes it again, and logs why it cannot
                if found is not None:
                    made.append(found)
                elif _made_later(notice):
                    made.append(notice)
                    later = True
                else:
                    made.append(self._job(notice))
        if later:
            made = await in_thread(  # GetAttestations may wait for them
                lambda: [self._job(m) if isinstance(m, Attest | AttestCustom) else m for m in made]
            )
        pairs = [m for m in made if type(m) is tuple]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    def _job(self, notice: Attest | AttestCustom) -> tuple[Job, Meta] | None:
        try:
            return job_of(notice, self._signer.daemon_version)
        except Exception:
            log.exception("could not attest %s", _describe(notice))
            return None

    async def _draft(
        self, heads: Heads, jobs: list[Job], to_spool: Spool | None = None
    ) -> tuple[list[Result | None], Heads, bool]:
        """``drafting.draft_batch`` of the jobs: by the signing process (which writes the rows to
        ``to_spool``'s file if it can: then the third value is True), or — without one, or for a
        batch it cannot take — on a worker thread. The trio thread never signs."""
        if self._process is not None:
            try:
                drafted = await self._process.draft(heads, jobs, to_spool)
                if drafted is not None and not await self._checked(drafted[0]):
                    raise SignerFailed("the signing process answered a bad signature")
                if drafted is not None:
                    return drafted
            except SignerFailed as exc:
                log.error("%s: signing in the daemon from now on", exc)
                process, self._process = self._process, None
                await process.close()
        sign, keyid = self._signer.sign, self.keyid
        results, after = await in_thread(lambda: draft_batch(heads, jobs, sign, keyid))
        return list(results), after, False

    async def _checked(self, results: list[Result | None]) -> bool:
        """:meth:`_good`, on the checker thread: ~190 µs a batch (~650,000 instructions, 4,300
        a step attestation of a 150-step batch) the trio thread spent on it, and a gate
        decision is a batch of its own. libsodium lets go of the interpreter lock meanwhile."""
        assert self._checker is not None
        check = functools.partial(self._good, results)
        good: bool = await self._checker.run(check, waited=False)  # hurried only if starved
        return good

    def _good(self, results: list[Result | None]) -> bool:
        """The last signature of a batch verifies with the daemon's key — by libsodium, in
        ~120 µs where OpenSSL's (``cryptography``) took ~270."""
        for result in reversed(results):
            if isinstance(result, tuple):
                try:
                    signature = b64decode(result[2], validate=True)
                    if len(signature) != SIGNATURE:
                        return False
                    crypto_sign_open(
                        signature + pae(PAYLOAD_TYPE, result[0].encode()), self._public_raw
                    )
                except (BadSignatureError, ValueError):
                    return False
                return True
        return True

    async def _stored_chain(self, run_id: str) -> Chain:
        """The chain head of a run's stored step attestations (empty for a new run)."""
        stored: list[AttestationRecord] = await ask(
            self._store, lambda r: LoadRunAttestations(run_id, r)
        )
        steps = [a for a in stored if a.kind == "step"]
        if not steps:
            return Chain()
        return Chain(len(steps), attestation_digest(steps[-1].envelope))

    async def _open_runs(self) -> set[str] | None:
        """The runs unfinished now (None if they cannot be listed): the only runs whose chains
        an earlier daemon may have begun. One query at start, not one per run."""
        found: set[str] = set()
        after = None
        try:
            while True:
                query = RunListQuery(OPEN, page_size=MAX_PAGE_SIZE, after=after)
                page: list[RunSummary] = await ask(
                    self._store, functools.partial(LoadRunSummaries, query)
                )
                found.update(s.run_id for s in page[:MAX_PAGE_SIZE])
                if len(page) <= MAX_PAGE_SIZE:
                    return found
                after = (page[MAX_PAGE_SIZE - 1].created_at, page[MAX_PAGE_SIZE - 1].run_id)
        except Exception:
            log.exception("could not list the unfinished runs: chains are looked up per run")
            return None

    async def _recover(self) -> None:
        """Re-attest what a stopped daemon announced (``core.attest_records.announced``) but
        never stored. The log may already hold this daemon's first announcements too, whose
        notices wait in the mailbox: those are re-attested here from the log (the same
        envelopes), and their notices skipped (``_recovered``)."""
        try:
            runs: list[str] = await ask(self._store, LoadUnattested)
            for run_id in runs:
                await self._recover_run(run_id)
        except Exception:
            log.exception("could not re-attest what the last daemon left unattested")
        try:
            await self._recover_governance()
        except Exception:
            log.exception("could not re-attest the gate decisions and eval results left")

    async def _recover_governance(self) -> None:
        """Attest the gate decisions and eval results a stopped daemon committed but never
        attested (nothing announces them in a run log: they were lost for good)."""
        found: list[tuple[str, Any]] = await ask(self._store, LoadUnattestedGovernance)
        customs = [governance_notice(label, record) for label, record in found]
        if not customs:
            return
        notices: list[Attest | AttestCustom] = list(customs)
        await self._sign_and_append(notices)
        # one of this daemon's, committed before the look, may wait in the mailbox: skipped
        self._recovered.update(custom_attestation_id(n.label, n.record_id) for n in customs)
        log.warning("attested %d gate decision(s) and eval result(s) the last daemon left "
                    "unattested", len(customs))  # fmt: skip

    async def _recover_run(self, run_id: str) -> None:
        events: list[RunEventRecord] = await ask(self._store, lambda r: LoadRunEvents(run_id, r))
        stored: list[AttestationRecord] = await ask(
            self._store, lambda r: LoadRunAttestations(run_id, r)
        )
        have = {a.attestation_id for a in stored}
        by_seq = {e.seq: e for e in events}
        chained: list[Attest] = []  # a run's step attestations and its run attestation
        others: list[Attest | AttestCustom] = []
        for event in events:
            found = announced(event.kind, event.payload)
            if found is None or found[0] in have:
                continue
            if found[1] == "run":
                facts = tuple(e for e in events if e.seq < event.seq)
            elif event.kind == "step_completed":
                facts = (_lease_of(event, events), event)
            else:
                facts = tuple(by_seq[s] for s in event.payload.get("of", ()))
            (chained if found[1] in _CHAINED else others).append(Attest(event, facts))
        # Each gap in the chain from the head just before it: a lost row in the middle of a run
        # was made again from the chain's last head (index 799 for step 248), so the same id
        # got other bytes and the whole chain failed verification.
        for gap in _gaps(chained, stored):
            self._chains[run_id] = _chain_before(gap[0].attested.seq, stored)
            await self._sign_and_append(list(gap))
            if self._committed is not None:
                await self._committed.wait()
            stored = await ask(self._store, lambda r: LoadRunAttestations(run_id, r))
        # An unfinished run goes on from the head of its whole chain, not of the last gap mended
        # (its next step got an index and a previous digest a stored row has already).
        if any(a.kind == "run" for a in stored):
            self._chains.pop(run_id, None)  # closed
        else:
            self._chains[run_id] = _chain_before(math.inf, stored)
        await self._sign_and_append(others)
        notices = [*chained, *others]
        self._recovered.update(
            n.attested.payload["attestation_id"] for n in notices if isinstance(n, Attest)
        )
        if notices:
            log.warning("re-attested %d fact(s) of run %s", len(notices), run_id)

    # --- GetAttestations ------------------------------------------------------------------------

    async def _get(self, message: GetAttestations, committed: Pending[None] | None) -> None:
        try:
            ids = message.attestation_ids
            if not ids:
                raise InvalidArgument("attestation_ids: give at least one id")
            if len(ids) > MAX_IDS:
                raise InvalidArgument(f"attestation_ids: at most {MAX_IDS} per request")
            if committed is not None:
                with contextlib.suppress(Exception):  # a failed commit: what is stored is all
                    await committed.wait()
            found: list[AttestationRecord] = await ask(
                self._store, lambda r: LoadAttestations(ids, r)
            )
            known = {a.attestation_id: a for a in found}
            missing = [i for i in dict.fromkeys(ids) if i not in known]
            if missing:
                names = ", ".join(quoted(i) for i in missing[:10])
                more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
                raise NotFound(f"attestation_ids: no attestation {names}{more}")
        except Exception as exc:
            refuse(message, exc, log)
        else:
            message.reply.send([known[i] for i in ids])


def _gaps(missing: list[Attest], stored: list[AttestationRecord]) -> list[list[Attest]]:
    """``missing`` (in order) cut where a stored attestation of the chain comes between two."""
    kept = sorted(a.seq for a in stored if a.kind in _CHAINED)
    gaps: list[list[Attest]] = []
    for notice in missing:
        seq = notice.attested.seq
        if gaps and bisect.bisect_left(kept, seq) == bisect.bisect_left(
            kept, gaps[-1][-1].attested.seq
        ):
            gaps[-1].append(notice)
        else:
            gaps.append([notice])
    return gaps


def governance_notice(label: str, record: Any) -> AttestCustom:
    """The notice the gate actor sent for a gate decision or an eval result (``label``), made
    again from the stored record (issued when the record was made)."""
    if label == GATE_DECISION:
        return AttestCustom(label, record.gate_id, "", record_claims(record), record.decided_at)
    return AttestCustom(
        label, record.result_id, record.run_id, record_claims(record), record.executed_at
    )


def _chain_before(seq: float, stored: list[AttestationRecord]) -> Chain:
    """The chain's head just before the attestation announced at ``seq``: the stored step
    attestations before it, the digest of the last (signing is deterministic: one made again
    has the bytes, so the digest, of the one lost)."""
    steps = sorted((a for a in stored if a.kind == "step" and a.seq < seq), key=lambda a: a.seq)
    if not steps:
        return Chain()
    return Chain(len(steps), attestation_digest(steps[-1].envelope))


def _records_of(rows: tuple[Any, ...], metas: list[Meta]) -> tuple[Any, ...]:
    """A batch's rows as the store takes them: a run's attestations as rows DuckDB alone gets
    (a start re-attests them from the journaled facts: ``DerivedAttestationRows``), a gate
    decision's or an eval result's journaled (nothing would re-attest them)."""
    custom = [m.kind == "custom" for m in metas]
    if not any(custom):
        return (DerivedAttestationRows(rows),)
    if all(custom):
        return (AttestationRows(rows),)
    journaled = tuple(row for row, c in zip(rows, custom, strict=True) if c)
    derived = tuple(row for row, c in zip(rows, custom, strict=True) if not c)
    return (AttestationRows(journaled), DerivedAttestationRows(derived))


def _cleared(spool: Path) -> None:
    """An empty spool folder, owner-only: the files a stopped daemon left are of rows DuckDB has
    (their commit came before their deletion) or that this start makes again (``_recover``)."""
    spool.mkdir(mode=0o700, parents=True, exist_ok=True)
    spool.chmod(0o700)  # made by an older daemon, or by hand: its files are owner-only too
    for entry in os.scandir(spool):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry.path)


def _made_later(notice: Attest | AttestCustom) -> bool:
    """A notice whose job is made on a worker thread: a run's (its job walks the whole run), an
    artifact's (it reads the file) — an ``attested`` event's (a step's completion is neither) —
    and a custom one of many values (its canonical JSON: a gate decision of 130,000 evals held
    the loop ~0.5 s)."""
    if isinstance(notice, AttestCustom):
        return json_values_past((notice.claims,))
    attested = notice.attested
    if attested.kind != "attested":
        return False
    found = announced(attested.kind, attested.payload)
    return found is not None and found[1] in ("artifact", "run")


def _lease_of(completed: RunEventRecord, events: list[RunEventRecord]) -> RunEventRecord:
    """The ``step_leased`` of a completed attempt: its step's last lease before it."""
    step_id = completed.step_id
    for event in reversed(events):
        if event.seq < completed.seq and event.kind == "step_leased" and event.step_id == step_id:
            return event
    raise LookupError(f"no lease of step {step_id!r} before seq {completed.seq}")


def _urgent(message: AttestorMessage) -> bool:
    """A query, or a run's own notice: signed at once."""
    if isinstance(message, GetAttestations):
        return True
    return (
        isinstance(message, Attest)
        and message.attested.kind == "attested"
        and message.attested.payload["kind"] == "run"
    )


def _describe(notice: Any) -> str:
    if isinstance(notice, Meta):
        return f"the {notice.kind} of run {notice.run_id or '-'} ({notice.attestation_id})"
    if isinstance(notice, AttestCustom):
        return f"{notice.label} {notice.record_id}"
    a = notice.attested
    kind = (announced(a.kind, a.payload) or ("", a.kind))[1]
    return f"the {kind} of run {a.run_id} step {a.step_id or '-'} (seq {a.seq})"
