"""The standard gRPC health service (``grpc.health.v1.Health``), grpclib's own.

SERVING for ``""`` (the whole server) and for each service while the daemon takes calls;
NOT_SERVING from the moment it starts draining, so a load balancer or a Kubernetes probe stops
sending it work before it goes away — and while its store cannot commit (every write refused:
a full disk, its journal deleted under it), SERVING again once a commit goes through. ``Watch``
streams see the change. Health calls need no token (a probe has none) and reveal nothing but
that status.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from grpclib.health.check import ServiceStatus
from grpclib.health.service import Health
from grpclib.reflection.service import ServerReflection

HEALTH_PATH_PREFIX = "/grpc.health.v1.Health/"


class ServingHealth:
    """One status shared by every service: the daemon serves all of them or none."""

    def __init__(self, services: Sequence[Any]) -> None:
        self._status = ServiceStatus()
        self._status.set(True)
        self._draining = False
        self._committing = True
        # the health and reflection services answer for themselves too (reflection lists them:
        # a Check of their names was NOT_FOUND); instances here only name them
        named = [*services, Health(), *ServerReflection.extend([])]
        self.service = Health({service: [self._status] for service in named})

    def not_serving(self) -> None:
        """The daemon drains: for good."""
        self._draining = True
        self._status.set(False)

    def store_committing(self, committing: bool) -> None:
        """The store's commits fail now (False), or work again."""
        self._committing = committing
        self._status.set(committing and not self._draining)
