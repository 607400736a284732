"""The ``fleetforge.runtime.v1.RuntimeService``. Every RPC is registered; those not built yet
answer UNIMPLEMENTED (the generated base class does that)."""

from __future__ import annotations

from foundry.proto import runtime_api as api

from .foundry_service import Mailboxes


class RuntimeService(api.RuntimeServiceBase):
    def __init__(self, mailboxes: Mailboxes) -> None:
        self._mail = mailboxes
