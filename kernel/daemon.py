"""The daemon: the kernel's actors (``actors.supervisor.open_kernel``) with the gRPC edge in front,
and an orderly stop.

Start order: bind the ports, gRPC then HTTP (fail fast), lock the home, tap broker, store
(recovers what a killed daemon left), engine, scheduler (picks up unfinished runs), replay, then
the gRPC server and the HTTP listener (``edge/http``: Connect, gRPC-Web, WebSocket; the same
service objects). Stop order on SIGINT/SIGTERM: both listeners stop listening and refuse new calls
(UNAVAILABLE), the live Watch/TapRun streams end, the calls in flight get ``shutdown_grace``
seconds to finish before the servers cancel the rest; then the engine's, scheduler's and
replay's mailboxes close (their work in flight gets ``shutdown_grace`` seconds), and the store
flushes and closes the database.
A second signal at any point of that cancels the work still in flight and stops at once (what
was committed stays; unfinished runs go on at the next start); work that does not end when
cancelled is left: the process exits ``HARD_STOP_SECONDS`` after that signal.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio
from foundry.kernel.actors.loop_watch import watch_the_loop
from foundry.kernel.actors.mailbox import ask
from foundry.kernel.actors.messages import Mailboxes
from foundry.kernel.actors.store.actor import release_free_heap
from foundry.kernel.actors.store.messages import STORE_HEALTH, CommitHealth
from foundry.kernel.actors.supervisor import open_kernel
from foundry.kernel.actors.tap.messages import CloseAll, Subscribe
from foundry.kernel.blocks.registry import BlockRegistry, load_config_blocks
from foundry.kernel.config import Config, check_listener_ports, parse_listen
from foundry.kernel.edge.connections import connection_budget
from foundry.kernel.edge.grpc.admin_service import AdminService
from foundry.kernel.edge.grpc.analytics_service import AnalyticsService
from foundry.kernel.edge.grpc.foundry_service import FoundryService
from foundry.kernel.edge.grpc.health import ServingHealth
from foundry.kernel.edge.grpc.loop import open_grpc_loop
from foundry.kernel.edge.grpc.runtime_service import RuntimeService
from foundry.kernel.edge.grpc.server import GrpcServer, bind, start_server
from foundry.kernel.edge.security import EdgeSecurity, edge_security, refuse_open_bind
from foundry.kernel.errors import ConfigError

if TYPE_CHECKING:
    from foundry.kernel.edge.http.server import HttpServer

log = logging.getLogger("foundry.daemon")
HELD_STOP_SLACK = 5.0  # seconds past the two graces before a held stop is said

# The daemon allocates many short-lived objects per event and keeps many (recent workflows,
# runs): Python's default thresholds (700, 10, 10) run a collection every 700 allocations and
# rescan the old generation often (+5-8% engine events/s with (10_000, 50, 100), measured).
# A young collection scans every young object alive, and its count is allocations *minus
# deallocations*, old objects' included: with old chains retiring as fast as new ones come, it
# met 10,000 with ~50,000 young objects alive (a 15-40 ms pass, ~7 per 6,000 chains). At 50,000
# the pass is as long (the same objects are alive) and ~5x rarer: 5 against 10-20 µs of
# collection per engine chain. The middle threshold keeps the old generation's pass as often as
# before (every 500,000 allocations).
GC_THRESHOLDS = (50_000, 10, 100)


def tune_collector() -> None:
    gc.set_threshold(*GC_THRESHOLDS)


# With those thresholds the old generation is scanned every ~500,000 net allocations: an idle
# daemon never gets there, and garbage in reference cycles stays. Some holds large buffers — a
# request abandoned mid-body leaves its body in an exception's traceback, itself in a cycle
# (200 such ~4 MiB bodies: ~800 MB kept until a collection). So the daemon runs a full
# collection, and hands the freed heap back, whenever it has grown by GARBAGE_GROWTH since the
# last one, or once GARBAGE_RECHECK_SECONDS after that while it stays as far above its low
# point (streams that held memory, then were abandoned, left garbage without growth).
GARBAGE_CHECK_SECONDS = 2.0
GARBAGE_RECHECK_SECONDS = 30.0
GARBAGE_GROWTH = 128 * 1024 * 1024  # resident bytes
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass(frozen=True, slots=True)
class HeapSizes:
    """Resident bytes after the last full collection (or the low point since); the low point a
    look again by time compares with (the lowest after a collection, raised to what such a look
    left: the new normal); seconds since the last collection."""

    after_last: int
    low_point: int
    since_last: float


def collection_due(resident: int, sizes: HeapSizes) -> bool:
    """Whether the process, ``resident`` bytes now, may hold enough garbage to look for."""
    if resident - sizes.after_last >= GARBAGE_GROWTH:
        return True
    return sizes.since_last >= GARBAGE_RECHECK_SECONDS and (
        resident - sizes.low_point >= GARBAGE_GROWTH
    )


def resident_bytes() -> int:
    """The process's resident set (Linux ``/proc/self/statm``); 0 where there is none."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * PAGE_BYTES
    except (OSError, ValueError, IndexError):
        return 0


async def collect_when_grown() -> None:
    """Run a full collection whenever :func:`collection_due` (checked every
    ``GARBAGE_CHECK_SECONDS``), then release the freed heap (off the trio thread)."""
    after_last = low_point = resident_bytes()
    last = trio.current_time()
    while True:
        await trio.sleep(GARBAGE_CHECK_SECONDS)
        resident = resident_bytes()
        sizes = HeapSizes(after_last, low_point, trio.current_time() - last)
        if not collection_due(resident, sizes):
            after_last = min(after_last, resident)
            continue
        rechecked = resident - after_last < GARBAGE_GROWTH  # due by time, not by growth
        found = gc.collect()
        await trio.to_thread.run_sync(release_free_heap)
        after_last, last = resident_bytes(), trio.current_time()
        # after a look again by time, what is left is the new normal: no look again until the
        # process grows further (a daemon whose DuckDB cache holds 256 MB looked every 30 s)
        low_point = after_last if rechecked else min(low_point, after_last)
        log.debug("collected %d objects: %d MB resident before, %d MB after", found,
                  resident >> 20, after_last >> 20)  # fmt: skip


async def serve(
    config: Config,
    *,
    on_ready: Callable[[str], None] = print,
    stop: trio.Event | None = None,
) -> None:
    """Run the daemon until SIGINT/SIGTERM/SIGHUP (or ``stop`` is set).

    The signal receiver spans everything once the plugins have loaded (a stop while they load
    ends the process as any program's), the rest of startup and the whole shutdown: trio turns a
    SIGINT that no receiver takes into KeyboardInterrupt (a traceback, and no drain). A terminal's
    Ctrl-C reaches only the daemon (children run in sessions of their own, see
    ``blocks.api.BlockContext.run_command``), so the first one drains exactly like SIGTERM; a
    second signal at any point of the stop cancels everything at once.
    """
    # Plugins load before the signals are taken: a stop meanwhile (an import that hangs) ends
    # the process as it would any program's (it was held until the daemon was ready).
    registry = load_config_blocks(config)
    stop_signals = signals_that_stop()
    with trio.open_signal_receiver(*stop_signals) as signals:
        exit_after_a_second_signal(*stop_signals)
        listen_key = config.listen_from or f"{config.source}: [daemon].listen"
        host, port = parse_listen(config.listen, key=listen_key)
        check_listener_ports(config)
        # token, TLS: refused with one line naming the file
        security = edge_security(config, host, listen_key, config.source)
        try:
            sock = bind(host, port)
        except (OSError, UnicodeError) as exc:  # (UnicodeError: a label IDNA cannot encode)
            reason = getattr(exc, "strerror", None) or exc
            raise ConfigError(f"cannot listen on {config.listen}: {reason}") from None
        try:
            http_sock = _bind_http(config, security)
        except ConfigError:
            sock.close()
            raise
        tune_collector()
        async with trio.open_nursery() as nursery:  # the second-signal watcher, the collector
            nursery.start_soon(collect_when_grown)
            nursery.start_soon(watch_the_loop)
            await _serve(
                config, registry, (sock, http_sock), security, signals, nursery, on_ready, stop
            )
            nursery.cancel_scope.cancel()


def _bind_http(config: Config, security: EdgeSecurity) -> socket.socket | None:
    """The HTTP listener's socket (``[http] listen``), None when it is off; refused in one line
    like the gRPC port's."""
    if config.http.listen == "off":
        return None
    # Imported here: hypercorn and connectrpc take ~1 s to import on a busy machine, which a
    # refused config or an HTTP-less daemon need not wait for.
    from foundry.kernel.edge.http.server import bind_http

    key = config.http_listen_from or f"{config.source}: [http].listen"
    host, port = parse_listen(config.http.listen, key=key)
    refuse_open_bind(host, key, security.token)
    try:
        return bind_http(host, port)
    except (OSError, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise ConfigError(f"cannot listen on {config.http.listen} (HTTP): {reason}") from None


async def _serve(
    config: Config,
    registry: BlockRegistry,
    sockets: tuple[socket.socket, socket.socket | None],
    security: EdgeSecurity,
    signals: AsyncIterator[int],
    nursery: trio.Nursery,
    on_ready: Callable[[str], None],
    stop: trio.Event | None,
) -> None:
    sock, http_sock = sockets
    bound = sock.getsockname()
    host = f"[{bound[0]}]" if ":" in bound[0] else bound[0]  # (IPv6: as a URL or grpcurl takes it)
    address = f"{host}:{bound[1]}"
    async with open_grpc_loop(), open_kernel(config, registry) as mailboxes:
        services = [  # on both listeners: one code path from request to actor
            FoundryService(mailboxes),
            RuntimeService(mailboxes),
            AnalyticsService(mailboxes, config.analytics),
            AdminService(mailboxes, config, registry, address),
        ]
        max_connections = connection_budget(config.max_connections)
        server = await start_server(
            services,
            sock,
            max_message_bytes=config.max_message_bytes,
            ssl_context=security.grpc_ssl_context,
            token=security.token,
            max_connections=max_connections,
            body_timeout=config.body_timeout,
        )
        nursery.start_soon(_health_follows_the_store, mailboxes, server.health)
        async with _open_http(config, http_sock, services, security, max_connections) as http:
            if http is not None:
                address = f"{address} {http.address}"  # the ready line: gRPC, then HTTP
            log.info("serving %d blocks on %s, home %s", len(registry), address, config.home)
            on_ready(address)
            await _until_stopped(stop, signals)
            log.info("stopping (a second Ctrl-C or SIGTERM stops at once)")
            nursery.start_soon(_stop_at_once_when_signalled, signals, nursery.cancel_scope)
            nursery.start_soon(_say_when_the_stop_is_held, config.shutdown_grace)
            server.stop_accepting()
            if http is not None:
                http.stop_accepting()
            await mailboxes.tap.send(CloseAll())  # live streams end before the servers drain
            await _drain(server, http, config.shutdown_grace)
            await server.close()


async def _health_follows_the_store(mailboxes: Mailboxes, health: ServingHealth) -> None:
    """NOT_SERVING while the store cannot commit (a probe takes the daemon out of rotation, where
    every write it took would be refused); until the tap closes its subscriptions."""
    changes: trio.MemoryReceiveChannel[Any] = await ask(
        mailboxes.tap, lambda r: Subscribe(STORE_HEALTH, None, r)
    )
    async with changes:
        async for change in changes:
            if isinstance(change, CommitHealth):
                if not change.committing:
                    log.warning("health: NOT_SERVING while the store cannot commit (%s)",
                                change.reason)  # fmt: skip
                health.store_committing(change.committing)


@asynccontextmanager
async def _open_http(
    config: Config,
    sock: socket.socket | None,
    services: list[Any],
    security: EdgeSecurity,
    max_connections: int,
) -> AsyncIterator[HttpServer | None]:
    if sock is None:
        yield None
        return
    from foundry.kernel.edge.http.server import open_http_server

    async with open_http_server(
        services,
        sock,
        max_message_bytes=config.max_message_bytes,
        cors_origins=config.http.cors_origins,
        body_timeout=config.http.body_timeout,
        grace=config.shutdown_grace,
        token=security.token,
        ssl_context=security.ssl_context,
        max_connections=max_connections,
    ) as http:
        yield http


# Seconds a second signal gives the work in flight to end once cancelled, before the process
# exits without it: a block that shields itself from cancellation, or a sync block that never
# returns (the loop then never even hears the signals), kept the daemon up after two SIGTERMs.
# What the daemon acknowledged is durable already (it survives kill -9).
HARD_STOP_SECONDS = 5.0


def signals_that_stop() -> tuple[int, ...]:
    """SIGINT, SIGTERM, and SIGHUP (its terminal closed: its default ended the daemon at once,
    with no drain and no log line) — unless the daemon was started ignoring SIGHUP (``nohup``):
    taking it would end what the operator meant to outlive the terminal."""
    hangup = () if signal.getsignal(signal.SIGHUP) is signal.SIG_IGN else (signal.SIGHUP,)
    return (signal.SIGINT, signal.SIGTERM, *hangup)


def exit_after_a_second_signal(*signums: int) -> None:
    """Count the signals trio's handlers take (they run in Python's own handler, between two
    bytecodes of whatever the main thread runs, loop or no loop): the second starts a thread
    that ends the process :data:`HARD_STOP_SECONDS` later if it has not ended by then. trio
    puts its own handlers' predecessors back when its receiver closes, so this goes with it."""
    seen = 0

    def counting(taken_by: Any) -> Callable[[int, Any], None]:
        def handler(signum: int, frame: Any) -> None:
            nonlocal seen
            seen += 1
            if seen == 2:
                threading.Thread(target=_exit_later, name="foundry-hard-stop", daemon=True).start()
            taken_by(signum, frame)

        return handler

    for signum in signums:
        taken_by = signal.getsignal(signum)
        if callable(taken_by):
            signal.signal(signum, counting(taken_by))


def _exit_later() -> None:
    """Not through logging: its handlers' lock, or a stderr pipe no one reads (where blocks'
    prints go too), would hold this thread as they hold the rest."""
    time.sleep(HARD_STOP_SECONDS)
    line = (f"foundry: still running {HARD_STOP_SECONDS:.0f} s after a second signal (a block "
            "does not end when cancelled): exiting now\n")  # fmt: skip
    with contextlib.suppress(OSError):
        os.set_blocking(2, False)
        os.write(2, line.encode())
    os._exit(1)


async def _stop_at_once_when_signalled(
    signals: AsyncIterator[int], everything: trio.CancelScope
) -> None:
    async for _ in signals:
        log.warning("signalled again: cancelling the work in flight and stopping now")
        everything.cancel()
        return


async def _say_when_the_stop_is_held(grace: float) -> None:
    """A stop takes the calls' grace, then the kernel's: past both (and a few seconds more),
    something does not end when cancelled. A service manager's one SIGTERM left a daemon that
    never exited and whose log said nothing after "stopping"."""
    waited = 2 * grace + HELD_STOP_SLACK
    await trio.sleep(waited)
    log.warning("still stopping %g s after the signal: work that does not end when cancelled "
                "holds the stop (a block that shields itself or never returns); a second "
                "SIGTERM or Ctrl-C stops the daemon at once", waited)  # fmt: skip


async def _until_stopped(stop: trio.Event | None, signals: AsyncIterator[int]) -> None:
    async with trio.open_nursery() as nursery:

        async def signalled() -> None:
            async for _ in signals:
                break
            nursery.cancel_scope.cancel()

        async def requested(event: trio.Event) -> None:
            await event.wait()
            nursery.cancel_scope.cancel()

        nursery.start_soon(signalled)
        if stop is not None:
            nursery.start_soon(requested, stop)


async def _drain(server: GrpcServer, http: HttpServer | None, grace: float) -> None:
    """Let the calls in flight on both listeners finish, for up to ``grace`` seconds (a second
    signal cancels the whole daemon, this included)."""
    async with trio.open_nursery() as nursery:
        if http is not None:
            nursery.start_soon(_drain_http, http, grace)
        left = await server.drain(grace)
        if left:
            log.warning("%d call(s) still running after %.1f s; cancelling them", left, grace)


async def _drain_http(http: HttpServer, grace: float) -> None:
    left = await http.drain(grace)
    if left:
        log.warning("%d HTTP call(s) still running after %.1f s; cancelling them", left, grace)


def run(config: Config, **options: Any) -> None:
    """Serve until stopped. Exception groups are unwrapped here, in one place: a ConfigError
    anywhere in one (say, the home is locked by another daemon) is raised alone, so the CLI
    prints one line and exits 2."""
    try:
        trio.run(lambda: serve(config, **options))
    except BaseExceptionGroup as group:
        refused, _ = group.split(ConfigError)
        if refused is not None:
            raise _first_leaf(refused) from None
        _, other = group.split(KeyboardInterrupt)
        if other is None:  # interrupted before the signal receiver was up: no traceback
            raise KeyboardInterrupt from None
        if _no_space(group):
            raise _full_disk(config) from None
        raise
    except Exception as exc:
        if _no_space(exc):
            raise _full_disk(config) from None
        raise


def _full_disk(config: Config) -> ConfigError:
    return ConfigError(
        f"{config.home}: {_NO_SPACE} (a lock, the keys, the database or the "
        "journal could not be written); free some space, then start again"
    )


_NO_SPACE = os.strerror(errno.ENOSPC)


def _no_space(exc: BaseException, depth: int = 0) -> bool:
    """Whether a full disk is behind ``exc``: an ENOSPC in it, its group, its cause or the
    error it replaced (DuckDB's "cannot rollback" hides the write that failed), or DuckDB's
    words for one — a start on a full disk was a traceback of 68 to 124 lines."""
    if depth > 20:
        return False
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    if _NO_SPACE in str(exc):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return any(_no_space(e, depth + 1) for e in exc.exceptions)
    inner = exc.__cause__ or exc.__context__
    return inner is not None and _no_space(inner, depth + 1)


def _first_leaf(group: BaseExceptionGroup[Any]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first
