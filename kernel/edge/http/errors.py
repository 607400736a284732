"""One error table for every edge: kernel errors become gRPC statuses in
``grpc.server.to_grpc_error`` (``STATUS_OF``); here a gRPC status becomes its Connect code (the
protocols' own one-to-one correspondence), so a request refused on one port is refused the same
way on the other."""

from __future__ import annotations

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from foundry.kernel.edge.grpc.server import bounded_message, to_grpc_error
from grpclib import GRPCError
from grpclib.const import Status

CODE_OF: dict[Status, Code] = {
    Status.CANCELLED: Code.CANCELED,
    **{status: Code[status.name] for status in Status if status.name in Code.__members__},
}


def connect_error(exc: BaseException) -> ConnectError:
    """What a handler raised, as the Connect error the client gets (an unexpected error is
    logged once, by ``to_grpc_error``, and answered INTERNAL)."""
    if isinstance(exc, ConnectError):
        return exc
    grpc_error = exc if isinstance(exc, GRPCError) else to_grpc_error(exc)
    message = bounded_message(grpc_error.message) or grpc_error.status.name.lower()
    return ConnectError(CODE_OF.get(grpc_error.status, Code.UNKNOWN), message)
