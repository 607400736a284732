"""The supervisor: a trio nursery of actors, grpclib in front, and an orderly stop.

Start order: bind the port (fail fast), tap broker, store (recovers what a killed daemon left),
engine, scheduler (picks up unfinished runs), replay, then the gRPC server. Stop order on
SIGINT/SIGTERM: end the live streams, stop the server, close the engine's, scheduler's and replay's
mailboxes (work in flight gets ``shutdown_grace`` seconds), then the store flushes and closes the
database.
"""

from __future__ import annotations

import gc
import logging
import signal
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import trio
import trio_asyncio

from .aio_loop import run_ready_callbacks_in_batches
from .config import Config, parse_listen
from .drift import Tolerance
from .engine import Engine, EngineMessage
from .errors import ConfigError
from .foundry_service import FoundryService, Mailboxes
from .grpc_server import bind, start_server, stop_server
from .plugins import BlockRegistry, load_config_blocks
from .replay import Replay, Replayer
from .runtime_service import RuntimeService
from .scheduler import Scheduler, SchedulerMessage
from .store import Store, StoreMessage
from .tap import TapBroker, TapMessage
from .tap_messages import CloseAll

log = logging.getLogger("foundry.daemon")

MAILBOX_SIZE = 1_024
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

    run_ready_callbacks_in_batches()
    tune_collector()
    # Signals are caught from here on: a SIGTERM during startup stops the daemon cleanly.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio_asyncio.open_loop(), trio.open_nursery() as nursery:
            await _run_actors(config, registry, sock, address, nursery, on_ready, stop, signals)


async def _run_actors(
    config: Config,
    registry: BlockRegistry,
    sock: socket.socket,
    address: str,
    nursery: trio.Nursery,
    on_ready: Callable[[str], None],
    stop: trio.Event | None,
    signals: AsyncIterator[int],
) -> None:
    mailboxes = await _start_actors(config, registry, nursery)
    server = await start_server(
        [FoundryService(mailboxes), RuntimeService(mailboxes)],
        sock,
        max_message_bytes=config.max_message_bytes,
    )
    log.info("serving %d blocks on %s, home %s", len(registry), address, config.home)
    on_ready(address)

    await _until_stopped(stop, signals)
    log.info("stopping")
    await mailboxes.tap.send(CloseAll())
    await stop_server(server)
    for mailbox in (mailboxes.engine, mailboxes.scheduler, mailboxes.replay, mailboxes.tap):
        mailbox.close()  # each actor finishes its work in flight, then the store closes last


async def _start_actors(
    config: Config, registry: BlockRegistry, nursery: trio.Nursery
) -> Mailboxes:
    tap_send, tap_receive = trio.open_memory_channel[TapMessage](MAILBOX_SIZE)
    store_send, store_receive = trio.open_memory_channel[StoreMessage](MAILBOX_SIZE)
    engine_send, engine_receive = trio.open_memory_channel[EngineMessage](MAILBOX_SIZE)
    scheduler_send, scheduler_receive = trio.open_memory_channel[SchedulerMessage](MAILBOX_SIZE)
    replay_send, replay_receive = trio.open_memory_channel[Replay](MAILBOX_SIZE)
    home, grace = config.home, config.shutdown_grace

    await nursery.start(TapBroker(tap_receive, buffer=config.tap.subscriber_buffer).run)
    store = Store(home, store_receive, tap_send.clone(), max_batch=config.store.max_batch_rows)
    recovered = await nursery.start(store.run)
    if recovered:
        log.warning("marked %d unfinished workflow(s) failed: daemon restarted", len(recovered))
    engine = Engine(registry, engine_receive, store_send.clone(), home=home,
                    config=config.engine, shutdown_grace=grace)  # fmt: skip
    await nursery.start(engine.run)
    scheduler = Scheduler(registry, scheduler_receive, store_send.clone(), tap_send.clone(),
                          home=home, config=config.scheduler, shutdown_grace=grace)  # fmt: skip
    resumed = await nursery.start(scheduler.run)
    if resumed:
        log.warning("picked up %d unfinished run(s) where they stopped", resumed)
    replayer = Replayer(registry, replay_receive, store_send.clone(), home=home,
                        tolerance=Tolerance(**vars(config.replay)))  # fmt: skip
    await nursery.start(replayer.run)
    store_send.close()
    return Mailboxes(engine=engine_send, tap=tap_send, scheduler=scheduler_send, replay=replay_send)


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
    trio.run(lambda: serve(config, **options))
