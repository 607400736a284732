"""Watch's gRPC route closes its responses however the call ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

from foundry.kernel.edge.grpc.foundry_service import FoundryService
from foundry.proto import foundry_api as api


class _WatchOfRecord(FoundryService):
    """The service with a subscription that says when it was let go."""

    def __init__(self) -> None:
        super().__init__(mailboxes=None)  # type: ignore[arg-type]  # watch below asks no actor
        self.let_go = asyncio.Event()

    async def watch(self, message: api.WatchRequest) -> AsyncGenerator[api.WatchResponse, None]:
        try:
            for n in range(1_000_000):
                yield api.WatchResponse(event_id=f"e{n}", event_type="flood")
        finally:
            self.let_go.set()  # (the real one closes its sink here: the broker stops offering)


class _PeerThatNeverReads:
    """grpclib's stream as a watcher that stopped reading sees it: a send never returns."""

    async def recv_message(self) -> api.WatchRequest:
        return api.WatchRequest(project="stall")

    async def send_initial_metadata(self) -> None:
        return None

    async def send_message(self, _: Any) -> None:
        await asyncio.Event().wait()


def test_a_watch_whose_peer_went_away_lets_its_subscription_go_at_once():
    """The generated route iterated Watch without closing it: a watcher that stopped reading,
    then went away (grpclib cancels its task), left the subscription suspended at a ``yield``,
    held by the cancelled task's traceback and taking events until 10,000 were buffered."""

    async def scenario() -> None:
        service = _WatchOfRecord()
        route = asyncio.create_task(service._serve_watch(_PeerThatNeverReads()))  # type: ignore[arg-type]
        await asyncio.sleep(0.05)  # the first reply's send is waiting on the peer
        assert not service.let_go.is_set()
        route.cancel()  # what grpclib does when the connection is lost
        await asyncio.gather(route, return_exceptions=True)
        assert service.let_go.is_set(), "the subscription outlived its call"

    asyncio.run(scenario())
