"""The attestor: signs attestations of what the kernel recorded (README.md, "Attestations").

The scheduler and the gate actor send it notices (``messages.py``) once the facts are in the
store's mailbox: a completed step (and its tool call and artifacts), a capability token granted
to a tool step's attempt, a finished run, a gate decision, an eval result. The attestor takes
what is waiting in one go, builds those statements on the trio thread and signs them in one
worker-thread call (``trio.to_thread.run_sync``: the trio thread never signs, and the worker
holds the interpreter lock only between signatures, so the two run side by side; an artifact's
statement, which reads its file, is built there too), and appends the records in one group
commit — after their facts, which were queued in the store first. A run's step
attestations are chained (``core/attest.py``): the attestor keeps each live run's chain head,
and loads it from the store for a run it has not seen since it started.

A daemon stopped between a fact's commit and its attestation's leaves an ``attested`` run event
without its attestation; on start the attestor re-attests those from the stored run log — the
same id, the same envelope. ``GetAttestations`` is answered after every notice sent before it
has been committed, so an id seen on TapRun is always found.
"""

from __future__ import annotations

import contextlib
import logging
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import trio
from foundry.kernel.actors.attestor.keys import KeyPair
from foundry.kernel.actors.attestor.messages import (
    Attest,
    AttestCustom,
    AttestorMessage,
    GetAttestations,
)
from foundry.kernel.actors.attestor.statements import Chain, Draft, Signer
from foundry.kernel.actors.mailbox import Pending, ask, post, refuse, take_batch
from foundry.kernel.actors.store.messages import (
    Append,
    LoadAttestations,
    LoadRunAttestations,
    LoadRunEvents,
    LoadUnattested,
    StoreMessage,
)
from foundry.kernel.core.attest import attestation_digest, key_id
from foundry.kernel.core.attest_records import AttestationRecord
from foundry.kernel.core.json_input import quoted
from foundry.kernel.core.runs import RunEventRecord
from foundry.kernel.errors import InvalidArgument, NotFound

log = logging.getLogger("foundry.attestor")

BATCH = 512  # notices signed per worker-thread call and committed per append
MAX_IDS = 1_000  # per GetAttestations
LINGER = 0.02  # seconds a batch of notices waits for more before it is signed


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
    ) -> None:
        self._inbox, self._store = inbox, store
        self.keyid = key_id(keys.public_raw)
        self._signer = Signer(keys.private.sign, self.keyid, daemon_version())
        self._chains: dict[str, Chain] = {}  # live runs' chain heads
        self._committed: Pending[None] | None = None  # the last append of attestations
        self.signed = 0  # attestations signed since start (for benchmarks)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with self._inbox, self._store, trio.open_nursery() as nursery:
            task_status.started()
            await self._recover()
            while batch := await self._take():
                notices: list[Attest | AttestCustom] = []
                for message in batch:
                    if isinstance(message, Attest | AttestCustom):
                        notices.append(message)
                    elif isinstance(message, GetAttestations):
                        await self._sign_and_append(notices)  # earlier notices first
                        notices = []
                        nursery.start_soon(self._get, message, self._committed)
                    else:
                        refuse(message, KeyError(type(message)), log)
                await self._sign_and_append(notices)

    async def _take(self) -> list[AttestorMessage]:
        """The next batch: what is waiting, plus what comes within ``LINGER`` seconds (up to
        ``BATCH``) — one worker-thread hop signs many, and the trio thread is not asked to hand
        the interpreter lock to a signing thread once per step. A query does not linger."""
        batch = await take_batch(self._inbox, BATCH)
        if not batch or any(isinstance(m, GetAttestations) for m in batch):
            return batch
        with trio.move_on_after(LINGER):
            while len(batch) < BATCH:
                try:
                    message = await self._inbox.receive()
                except trio.EndOfChannel:
                    break
                batch.append(message)
                if isinstance(message, GetAttestations):
                    break
        return batch

    # --- attesting ------------------------------------------------------------------------------

    async def _sign_and_append(self, notices: list[Attest | AttestCustom]) -> None:
        if not notices:
            return
        for run_id in {n.attested.run_id for n in notices if isinstance(n, Attest)}:
            if run_id not in self._chains:
                self._chains[run_id] = await self._stored_chain(run_id)
        jobs = self._draft_all(notices)
        signed = await trio.to_thread.run_sync(self._sign_all, jobs)
        records = self._finish_all(signed)
        if records:
            self._committed = await post(self._store, lambda r: Append(tuple(records), ack=r))
            self.signed += len(records)

    def _draft_all(self, notices: list[Attest | AttestCustom]) -> list[Draft | Attest]:
        """On the trio thread, in order: each notice's statement, unsigned — the chain heads
        are only touched here. An artifact's notice is left for the worker thread: its draft
        reads the file."""
        jobs: list[Draft | Attest] = []
        for notice in notices:
            if isinstance(notice, Attest) and notice.attested.payload.get("kind") == "artifact":
                jobs.append(notice)
                continue
            chain = self._chains.get(notice.attested.run_id) if isinstance(notice, Attest) else None
            try:
                jobs.append(self._signer.draft(notice, chain))
            except Exception:
                log.exception("could not attest %s", _describe(notice))
            if isinstance(notice, Attest) and notice.attested.payload.get("kind") == "run":
                self._chains.pop(notice.attested.run_id, None)  # the run attestation closes it
        return jobs

    def _sign_all(self, jobs: list[Draft | Attest]) -> list[tuple[Draft, bytes]]:
        """On a worker thread: sign each draft (Ed25519 releases the interpreter lock, so the
        trio thread runs meanwhile), drafting an artifact's first."""
        signed = []
        for job in jobs:
            try:
                draft = job if isinstance(job, Draft) else self._signer.draft(job, Chain())
                signed.append((draft, self._signer.sign(draft.statement.pae)))
            except Exception:
                log.exception("could not attest %s", _describe(job))
        return signed

    def _finish_all(self, signed: list[tuple[Draft, bytes]]) -> list[AttestationRecord]:
        records = []
        for draft, signature in signed:
            try:
                records.append(self._signer.finish(draft, signature))
            except Exception:  # never expected: one record must not stop the actor
                log.exception("could not attest %s", _describe(draft))
        return records

    async def _stored_chain(self, run_id: str) -> Chain:
        """The chain head of a run's stored step attestations (empty for a new run)."""
        stored: list[AttestationRecord] = await ask(
            self._store, lambda r: LoadRunAttestations(run_id, r)
        )
        steps = [a for a in stored if a.kind == "step"]
        if not steps:
            return Chain()
        return Chain(len(steps), attestation_digest(steps[-1].envelope))

    async def _recover(self) -> None:
        """Re-attest what a stopped daemon announced (``attested`` events) but never stored."""
        try:
            runs: list[str] = await ask(self._store, LoadUnattested)
            for run_id in runs:
                await self._recover_run(run_id)
        except Exception:
            log.exception("could not re-attest what the last daemon left unattested")

    async def _recover_run(self, run_id: str) -> None:
        events: list[RunEventRecord] = await ask(self._store, lambda r: LoadRunEvents(run_id, r))
        stored: list[AttestationRecord] = await ask(
            self._store, lambda r: LoadRunAttestations(run_id, r)
        )
        have = {a.attestation_id for a in stored}
        by_seq = {e.seq: e for e in events}
        notices: list[Attest | AttestCustom] = []
        for event in events:
            if event.kind != "attested" or event.payload["attestation_id"] in have:
                continue
            if event.payload["kind"] == "run":
                facts = tuple(e for e in events if e.seq < event.seq)
            else:
                facts = tuple(by_seq[s] for s in event.payload.get("of", ()))
            notices.append(Attest(event, facts))
        self._chains.pop(run_id, None)
        await self._sign_and_append(notices)
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


def _describe(notice: Any) -> str:
    if isinstance(notice, Draft):
        return f"the {notice.kind} of run {notice.run_id or '-'} ({notice.attestation_id})"
    if isinstance(notice, AttestCustom):
        return f"{notice.label} {notice.record_id}"
    a = notice.attested
    return f"the {a.payload.get('kind')} of run {a.run_id} step {a.step_id or '-'} (seq {a.seq})"
