"""Foundry's kernel and the public plugin API.

A block author needs one import::

    from foundry.kernel import Block, BlockContext, BlockKind, block, hookimpl

Authors of block *types* (``[[blocks]]`` tables) and of blocks that talk to the network also get
the table helpers (:func:`common_options`, :func:`payload_filter`, :func:`matches`), the env
policy (:func:`forbidden_reason`), the egress-checked HTTP client (:func:`guarded_client`) and
:func:`compact_json`. Authors of change-gate rules and eval assertions get :class:`RuleResult`,
:class:`Followup`, :class:`AssertionResult` and :data:`BUILTIN_GATE_RULES`. Everything else
under ``foundry.kernel`` is internal; the public modules besides this one are
``foundry.kernel.testing``, ``foundry.kernel.hookspecs``, ``foundry.kernel.config`` and
``foundry.kernel.errors``.
"""

from foundry.kernel.blocks.api import (
    Block,
    BlockContext,
    BlockFactory,
    BlockKind,
    CommandResult,
    Emission,
    Usage,
    block,
)
from foundry.kernel.blocks.egress import EgressPolicy, EgressRefused, guarded_client, redact_url
from foundry.kernel.blocks.tables import common_options, matches, payload_filter
from foundry.kernel.blocks.tools import Tool
from foundry.kernel.core.envpolicy import forbidden_reason
from foundry.kernel.core.evals import AssertionResult
from foundry.kernel.core.gate_policy import BUILTIN_RULES as BUILTIN_GATE_RULES
from foundry.kernel.core.gate_policy import Followup, RuleResult
from foundry.kernel.core.ids import compact_json
from foundry.kernel.core.throttle import Throttle
from foundry.kernel.errors import (
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
from foundry.kernel.hookspecs import hookimpl, hookspec

__all__ = [
    "AlreadyExists",
    "AssertionResult",
    "BUILTIN_GATE_RULES",
    "Followup",
    "RuleResult",
    "EgressPolicy",
    "EgressRefused",
    "common_options",
    "compact_json",
    "forbidden_reason",
    "guarded_client",
    "matches",
    "payload_filter",
    "redact_url",
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
