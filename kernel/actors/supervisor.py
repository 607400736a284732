"""The kernel's actors, wired once: :func:`open_kernel` is what the daemon, the tests and the
benchmarks run.

The attestor's signing key is loaded (or created) first: a key others may read refuses the start.
Actors start in dependency order (tap broker, telemetry when ``[otel] endpoint`` is set, store,
attestor, engine, scheduler, replay, gate), each through
``nursery.start`` so it is ready before the next; leaving the context closes the mailboxes the
edge holds, each actor finishes or checkpoints its work in flight within its grace period, and
the store, whose mailbox the others hold, flushes and closes last. ``$FOUNDRY_HOME`` is locked
for the daemon's lifetime: a second daemon on it is refused with the pid that holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import trio
from foundry.kernel.actors.attestor import keys
from foundry.kernel.actors.attestor.actor import Attestor
from foundry.kernel.actors.attestor.messages import AttestorMessage
from foundry.kernel.actors.engine.actor import Engine
from foundry.kernel.actors.engine.messages import EngineMessage
from foundry.kernel.actors.gate.actor import Gate
from foundry.kernel.actors.gate.messages import GateMessage
from foundry.kernel.actors.messages import Mailboxes
from foundry.kernel.actors.replay.actor import Replayer
from foundry.kernel.actors.replay.messages import ReplayMessage
from foundry.kernel.actors.scheduler.actor import Scheduler
from foundry.kernel.actors.scheduler.messages import SchedulerMessage
from foundry.kernel.actors.store.actor import Store
from foundry.kernel.actors.store.messages import StoreMessage
from foundry.kernel.actors.tap.actor import TapBroker
from foundry.kernel.actors.tap.messages import CloseAll, TapMessage
from foundry.kernel.actors.telemetry.actor import Telemetry
from foundry.kernel.actors.telemetry.messages import SpanOutbox, TelemetryMessage
from foundry.kernel.blocks.children import commands_recorded_in
from foundry.kernel.blocks.registry import BlockRegistry
from foundry.kernel.config import Config
from foundry.kernel.core.attest_records import SPOOL
from foundry.kernel.core.drift import Tolerance
from foundry.kernel.errors import ConfigError

log = logging.getLogger("foundry.kernel")

MAILBOX_SIZE = 1_024
LOCK_FILE = "daemon.lock"


def home_holder(home: Path) -> str | None:
    """The pid of the daemon serving ``home`` now ("unknown" if it has not written it yet),
    or None when none does (its lock is free)."""
    try:
        fd = os.open(home / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return None  # no lock file: never served, or not ours to read
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return holder if holder.isdigit() else "unknown"
        return None  # (closing releases the shared lock)
    finally:
        os.close(fd)


@contextlib.asynccontextmanager
async def open_kernel(
    config: Config,
    registry: BlockRegistry,
    *,
    recovered: list[str] | None = None,
    hold_store: Callable[[str], None] | None = None,
) -> AsyncIterator[Mailboxes]:
    """Run every actor for the duration of the ``async with``; yields their mailboxes.

    ``recovered``, when given, receives the ids of the workflows the store marked failed at
    start (a killed daemon left them unfinished); ``hold_store`` is the store's test hook
    (``Store.hold_for_test``), for tests that hold a commit or a read.
    """
    # (the last daemon's commands still running are killed before any step is leased again)
    home = config.home
    archives = config.store.retain_days > 0
    with (
        home_lock(home, config.home_from, archives=archives) as stops,
        commands_recorded_in(home / COMMANDS),
    ):
        key_pair = keys.load_or_create(config.home)  # refuses a signing key others may read
        async with trio.open_nursery() as nursery:
            mailboxes = await _start_actors(
                config, registry, nursery, key_pair, recovered=recovered, hold_store=hold_store,
                after_crash=stops.crashed,
            )  # fmt: skip
            try:
                yield mailboxes
            finally:
                # a second signal cancels everything: the broker may be gone already
                gone = (trio.BrokenResourceError, trio.ClosedResourceError)
                with trio.CancelScope(shield=True), contextlib.suppress(*gone):
                    await mailboxes.tap.send(CloseAll())
                for mailbox in (
                    mailboxes.engine, mailboxes.gate, mailboxes.scheduler, mailboxes.replay,
                    mailboxes.tap, mailboxes.attestor, mailboxes.store,
                ):  # fmt: skip
                    mailbox.close()  # each finishes its work in flight; the store closes last
                if mailboxes.telemetry is not None:
                    mailboxes.telemetry.close()  # it ends once its senders' outboxes close


# Folders of the home that only a later write creates: the trace files of finished chains, and
# what blocks and steps write.
COMMANDS = "commands"  # the running commands' process groups (``blocks/children.py``)
WRITTEN_LATER = ("traces", "artifacts", COMMANDS, "journal")
# Folders that must be folders, which the daemon may only read: the attestor's keys (a secret
# volume mounted read-only holds a key pair it need not write) and retention's archive (written
# only with [store] retain_days: then it must be writable too). A file at either passed
# ``config check``; the start then failed on "File exists", or every retention pass logged a
# traceback.
ARCHIVE = "archive"
FOLDERS = ("keys", ARCHIVE)


STOPPED = b"stopped\n"  # daemon.lock's text once its daemon stopped cleanly (else: its pid)


@dataclass(frozen=True)
class Stops:
    """How the last daemon on the home ended: ``crashed`` unless it wrote ``STOPPED`` (a new
    home: not crashed) — killed (``kill -9``, the OOM killer) or dead of a signal, it ran none
    of its exit path."""

    crashed: bool


def check_home(home: Path, named: str = "FOUNDRY_HOME", *, archives: bool = False) -> None:
    """Refuse, in one line, a home the daemon could not make or use: a file, one under a file,
    one holding a file where the daemon makes a folder (``config check`` said OK to those)."""
    # (lexists: a link to nothing is there, and no folder: exists() said nothing was)
    if os.path.lexists(home) and not home.is_dir():
        raise ConfigError(f"{named} {home} is not a folder")
    above = next((p for p in home.parents if os.path.lexists(p)), None)
    if above is not None and not above.is_dir():
        raise ConfigError(f"{named} {home} cannot be used: {above} is not a folder")
    # The folder the daemon writes in first (the home, or where it makes it): ``config check``
    # said OK to a home on a read-only file system, which ``serve`` then refused.
    made_in = home if os.path.lexists(home) else above
    if made_in is not None and not os.access(made_in, os.W_OK | os.X_OK):
        raise ConfigError(f"{named} {home} cannot be used: {made_in} is not writable")
    written = (*WRITTEN_LATER, ARCHIVE) if archives else WRITTEN_LATER
    for name in (*WRITTEN_LATER, *FOLDERS):  # else the start succeeds, and every trace, step
        folder = home / name  # or write fails
        if os.path.lexists(folder) and not folder.is_dir():
            raise ConfigError(f"{folder}: not a folder (the daemon writes there); move it aside")
        if name in written and folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
            raise ConfigError(f"{folder}: not writable (the daemon writes there)")


@contextlib.contextmanager
def home_lock(
    home: Path, named: str = "FOUNDRY_HOME", *, archives: bool = False
) -> Iterator[Stops]:
    """Hold ``$FOUNDRY_HOME/daemon.lock`` (an advisory lock with our pid in it) or refuse; a
    home that cannot be made or written (a file, under one, read-only) is one line naming it.
    Once the block ends, however (a stop, a second Ctrl-C, an error), the file says so: the
    next start tells a daemon killed outright from one that stopped by it (``Stops``)."""
    path = home / LOCK_FILE
    check_home(home, named, archives=archives)
    try:
        home.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except (OSError, ValueError) as exc:  # (ValueError: a NUL in FOUNDRY_HOME)
        reason = getattr(exc, "strerror", None) or exc
        where = getattr(exc, "filename", None) or home
        raise ConfigError(f"{named} {home} cannot be used: {reason} ({where})") from None
    try:
        check_home(home, named, archives=archives)  # (again: made meanwhile)
    except ConfigError:
        os.close(fd)
        raise
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            holder = holder if holder.isdigit() else "unknown"  # (not written yet, or "stopped")
            raise ConfigError(f"{home} is in use by pid {holder}") from None
        last = os.pread(fd, 64, 0)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield Stops(crashed=last not in (b"", STOPPED))
        finally:
            os.ftruncate(fd, 0)
            os.pwrite(fd, STOPPED, 0)
    finally:
        os.close(fd)  # closing releases the lock


async def _start_actors(
    config: Config,
    registry: BlockRegistry,
    nursery: trio.Nursery,
    key_pair: keys.KeyPair,
    *,
    recovered: list[str] | None,
    hold_store: Callable[[str], None] | None,
    after_crash: bool = False,
) -> Mailboxes:
    tap_send, tap_receive = trio.open_memory_channel[TapMessage](MAILBOX_SIZE)
    store_send, store_receive = trio.open_memory_channel[StoreMessage](MAILBOX_SIZE)
    engine_send, engine_receive = trio.open_memory_channel[EngineMessage](MAILBOX_SIZE)
    scheduler_send, scheduler_receive = trio.open_memory_channel[SchedulerMessage](MAILBOX_SIZE)
    replay_send, replay_receive = trio.open_memory_channel[ReplayMessage](MAILBOX_SIZE)
    gate_send, gate_receive = trio.open_memory_channel[GateMessage](MAILBOX_SIZE)
    attest_send, attest_receive = trio.open_memory_channel[AttestorMessage](MAILBOX_SIZE)
    home, grace = config.home, config.shutdown_grace

    await nursery.start(TapBroker(tap_receive, buffer=config.tap.subscriber_buffer).run)
    telemetry = await _start_telemetry(config, nursery)  # None unless [otel] endpoint is set

    def spans() -> SpanOutbox:
        return SpanOutbox(telemetry.clone() if telemetry is not None else None)

    store = Store(home, store_receive, tap_send.clone(), max_batch=config.store.max_batch_rows,
                  retain_days=config.store.retain_days,
                  retention_interval=config.store.retention_interval,
                  memory_limit=config.store.memory_limit,
                  materialize_delay=config.store.materialize_delay,
                  segment_bytes=config.store.journal_segment_bytes,
                  hold_for_test=hold_store, spans=spans(),
                  pruned_to=(engine_send, scheduler_send))  # fmt: skip
    failed = await nursery.start(store.run)
    if failed:
        log.warning("marked %d unfinished workflow(s) failed: daemon restarted", len(failed))
    if recovered is not None:
        recovered.extend(failed or ())
    attestor = Attestor(key_pair, attest_receive, store_send.clone(), spool=home / SPOOL)
    await nursery.start(attestor.run)
    # Notices go to the attestor only when [attest] enabled; it serves GetAttestations either way.
    notices = attest_send.clone if config.attest.enabled else lambda: None
    engine = Engine(registry, engine_receive, store_send.clone(), home=home,
                    config=config.engine, shutdown_grace=grace, spans=spans())  # fmt: skip
    await nursery.start(engine.run)
    scheduler = Scheduler(registry, scheduler_receive, store_send.clone(), tap_send.clone(),
                          home=home, config=config.scheduler, shutdown_grace=grace,
                          attestor=notices(), spans=spans(), after_crash=after_crash)  # fmt: skip
    resumed = await nursery.start(scheduler.run)
    if resumed:
        log.warning("picked up %d unfinished run(s) where they stopped", resumed)
    replayer = Replayer(registry, replay_receive, store_send.clone(), home=home,
                        tolerance=Tolerance(**vars(config.replay)), shutdown_grace=grace,
                        max_step_bytes=config.scheduler.max_step_bytes)  # fmt: skip
    await nursery.start(replayer.run)
    gate = Gate(registry, config.gate_policy(), gate_receive, store_send.clone(),
                scheduler_send.clone(), attestor=notices(),
                assertion_timeout=config.evals.assertion_timeout,
                shutdown_grace=grace)  # fmt: skip
    await nursery.start(gate.run)
    user_queries = store_send.clone()
    store_send.close()
    return Mailboxes(
        engine=engine_send, tap=tap_send, scheduler=scheduler_send, replay=replay_send,
        gate=gate_send, attestor=attest_send, store=user_queries, telemetry=telemetry,
    )  # fmt: skip


async def _start_telemetry(
    config: Config, nursery: trio.Nursery
) -> trio.MemorySendChannel[TelemetryMessage] | None:
    """The telemetry actor's mailbox, when spans are exported (``[otel] endpoint``)."""
    if not config.otel.endpoint:
        return None
    send, receive = trio.open_memory_channel[TelemetryMessage](MAILBOX_SIZE)
    await nursery.start(Telemetry(receive, config.otel).run)
    return send
