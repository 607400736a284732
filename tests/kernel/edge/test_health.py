"""The health service's one status: draining is for good; the store's commits come and go."""

from __future__ import annotations

import asyncio

from foundry.kernel.edge.grpc.health import ServingHealth


def _serving(health: ServingHealth) -> bool:
    async def check() -> bool:
        status = health._status
        await status.__check__()
        return bool(status.__status__())

    return asyncio.run(check())


def test_a_store_that_commits_again_does_not_undo_a_drain():
    health = ServingHealth([])
    assert _serving(health)
    health.store_committing(False)
    assert not _serving(health)
    health.store_committing(True)
    assert _serving(health)
    health.not_serving()  # draining
    health.store_committing(True)
    assert not _serving(health)
