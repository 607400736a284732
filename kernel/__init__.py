"""Foundry's kernel and the public plugin API.

A block author needs one import::

    from foundry.kernel import Block, BlockContext, BlockKind, block, hookimpl
"""

from .blocks import (
    Block,
    BlockContext,
    BlockFactory,
    BlockKind,
    CommandResult,
    Emission,
    Usage,
    block,
)
from .errors import (
    AlreadyExists,
    BlockError,
    ChainLimitExceeded,
    ConfigError,
    FailedPrecondition,
    FoundryError,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from .hookspecs import hookimpl, hookspec
from .throttle import Throttle
from .tools import Tool

__all__ = [
    "AlreadyExists",
    "Block",
    "BlockContext",
    "BlockError",
    "BlockFactory",
    "BlockKind",
    "ChainLimitExceeded",
    "CommandResult",
    "ConfigError",
    "Emission",
    "FailedPrecondition",
    "FoundryError",
    "InvalidArgument",
    "NotFound",
    "ResourceExhausted",
    "Throttle",
    "Tool",
    "Unavailable",
    "Usage",
    "block",
    "hookimpl",
    "hookspec",
]
