"""The daemon: the kernel's actors (``actors.supervisor.open_kernel``) with the gRPC edge in front,
and an orderly stop.

Start order: bind the port (fail fast), lock the home, tap broker, store (recovers what a killed
daemon left), engine, scheduler (picks up unfinished runs), replay, then the gRPC server. Stop
order on SIGINT/SIGTERM: the server stops listening and refuses new calls (UNAVAILABLE), the live
Watch/TapRun streams end, the calls in flight get ``shutdown_grace`` seconds to finish (a second
signal cuts that short) before the server cancels the rest; then the engine's, scheduler's and
replay's mailboxes close (their work in flight gets ``shutdown_grace`` seconds), and the store
flushes and closes the database.
"""

from __future__ import annotations

import gc
import logging
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any

import trio
from foundry.kernel.actors.supervisor import open_kernel
from foundry.kernel.actors.tap.messages import CloseAll
from foundry.kernel.blocks.registry import load_config_blocks
from foundry.kernel.config import Config, parse_listen
from foundry.kernel.edge.grpc.analytics_service import AnalyticsService
from foundry.kernel.edge.grpc.foundry_service import FoundryService
from foundry.kernel.edge.grpc.loop import open_grpc_loop
from foundry.kernel.edge.grpc.runtime_service import RuntimeService
from foundry.kernel.edge.grpc.server import GrpcServer, bind, start_server
from foundry.kernel.errors import ConfigError

log = logging.getLogger("foundry.daemon")

# The daemon allocates many short-lived objects per event and keeps many (recent workflows,
# runs): Python's default thresholds (700, 10, 10) run a collection every 700 allocations and
# rescan the old generation often. These cost less CPU per event (+5-8% engine events/s, measured).
GC_THRESHOLDS = (10_000, 50, 100)


def tune_collector() -> None:
    gc.set_threshold(*GC_THRESHOLDS)


async def serve(
    config: Config,
    *,
    on_ready: Callable[[str], None] = print,
    stop: trio.Event | None = None,
) -> None:
    """Run the daemon until SIGINT/SIGTERM (or ``stop`` is set)."""
    registry = load_config_blocks(config)
    host, port = parse_listen(config.listen, key=f"{config.source}: [daemon].listen")
    try:
        sock = bind(host, port)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {config.listen}: {exc.strerror or exc}") from None
    bound = sock.getsockname()
    address = f"{bound[0]}:{bound[1]}"

    tune_collector()
    # Signals are caught from here on: a SIGTERM during startup stops the daemon cleanly.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_grpc_loop(), open_kernel(config, registry) as mailboxes:
            server = await start_server(
                [
                    FoundryService(mailboxes),
                    RuntimeService(mailboxes),
                    AnalyticsService(mailboxes, config.analytics),
                ],
                sock,
                max_message_bytes=config.max_message_bytes,
            )
            log.info("serving %d blocks on %s, home %s", len(registry), address, config.home)
            on_ready(address)
            await _until_stopped(stop, signals)
            log.info("stopping")
            server.stop_accepting()
            await mailboxes.tap.send(CloseAll())  # live streams end before the server drains
            await _drain(server, config.shutdown_grace, signals)
            await server.close()


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


async def _drain(server: GrpcServer, grace: float, signals: AsyncIterator[int]) -> None:
    """Let the calls in flight finish, for up to ``grace`` seconds or until another signal."""
    async with trio.open_nursery() as nursery:

        async def again() -> None:
            async for _ in signals:
                log.warning("signalled again: cancelling the calls in flight")
                nursery.cancel_scope.cancel()

        nursery.start_soon(again)
        left = await server.drain(grace)
        if left:
            log.warning("%d call(s) still running after %.1f s; cancelling them", left, grace)
        nursery.cancel_scope.cancel()


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
        raise


def _first_leaf(group: BaseExceptionGroup[Any]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first
