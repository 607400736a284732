"""The daemon: the kernel's actors (``actors.supervisor.open_kernel``) with the gRPC edge in front,
and an orderly stop.

Start order: bind the port (fail fast), lock the home, tap broker, store (recovers what a killed
daemon left), engine, scheduler (picks up unfinished runs), replay, then the gRPC server. Stop
order on SIGINT/SIGTERM: end the live streams, stop the server, close the engine's, scheduler's
and replay's mailboxes (work in flight gets ``shutdown_grace`` seconds), then the store flushes
and closes the database.
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
from foundry.kernel.edge.grpc.foundry_service import FoundryService
from foundry.kernel.edge.grpc.runtime_service import RuntimeService
from foundry.kernel.edge.grpc.server import bind, open_grpc_loop, start_server, stop_server
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
                [FoundryService(mailboxes), RuntimeService(mailboxes)],
                sock,
                max_message_bytes=config.max_message_bytes,
            )
            log.info("serving %d blocks on %s, home %s", len(registry), address, config.home)
            on_ready(address)
            await _until_stopped(stop, signals)
            log.info("stopping")
            await mailboxes.tap.send(CloseAll())  # live streams end before the server drains
            await stop_server(server)


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
