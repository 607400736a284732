"""The kernel's one error hierarchy.

Every error a client can cause derives from :class:`FoundryError`; the gRPC edge maps each class
to a status code in one table (``kernel/edge/grpc/server.py``). Anything else that escapes is a bug:
the client gets a generic INTERNAL error and the daemon logs the traceback.
"""

from __future__ import annotations


class FoundryError(Exception):
    """Base of every error the kernel raises on purpose."""


class InvalidArgument(FoundryError):
    """The request is malformed: bad JSON, an empty required field, an unknown enum value.

    The message names the field.
    """


class NotFound(FoundryError):
    """The request names a workflow, event, run or step that does not exist."""


class FailedPrecondition(FoundryError):
    """The request is well formed but the target is in the wrong state for it."""


class AlreadyExists(FoundryError):
    """The request would create something that already exists."""


class Unavailable(FoundryError):
    """The daemon is shutting down, or an actor it needs has stopped."""


class ResourceExhausted(FoundryError):
    """A subscriber fell behind its bounded buffer and was cut off; a query's result was more
    than DuckDB's memory could make."""


class DeadlineExceeded(FoundryError):
    """The request ran out of its time limit (an analytics query was interrupted)."""


class ConfigError(FoundryError):
    """The configuration is unusable. The message names the file, the key and the reason."""


class BlockError(FoundryError):
    """A block failed; the message is what its trace records as the summary."""


class ChainLimitExceeded(FoundryError):
    """A chain went deeper, or emitted more events, than the engine allows (a runaway loop)."""
