"""Foundry's kernel and the public plugin API.

A block author needs one import::

    from foundry.kernel import Block, BlockContext, BlockKind, block, hookimpl

Authors of block *types* (``[[blocks]]`` tables) and of blocks that talk to the network also get
the table helpers (:func:`common_options`, :func:`payload_filter`, :func:`matches`,
:func:`json_table`), the env policy (:func:`forbidden_reason`), the egress-checked HTTP client
(:func:`guarded_client`, and :func:`request_bounded` to read an answer up to a size),
:func:`compact_json` and :func:`payload_number` (JSON numbers read as an event payload's are).
Authors of change-gate rules and eval assertions get :class:`RuleResult`, :class:`Followup`,
:class:`AssertionResult` and :data:`BUILTIN_GATE_RULES`. Everything else
under ``foundry.kernel`` is internal; the public modules besides this one are
``foundry.kernel.testing``, ``foundry.kernel.hookspecs``, ``foundry.kernel.config`` and
``foundry.kernel.errors``.
"""

import importlib as _importlib
import typing as _typing

if _typing.TYPE_CHECKING:  # the names below are imported when first used (PEP 562): see __getattr__
    from foundry.kernel.blocks.api import (
        Block,
        BlockContext,
        BlockFactory,
        BlockKind,
        CommandResult,
        Emission,
        Usage,
        block,
        event_type_fault,
    )
    from foundry.kernel.blocks.egress import (
        EgressPolicy,
        EgressRefused,
        guarded_client,
        redact_url,
        request_bounded,
    )
    from foundry.kernel.blocks.tables import (
        common_options,
        json_table,
        matches,
        payload_filter,
    )
    from foundry.kernel.blocks.tools import Tool
    from foundry.kernel.core.envpolicy import forbidden_reason
    from foundry.kernel.core.evals import AssertionResult
    from foundry.kernel.core.gate_policy import BUILTIN_RULES as BUILTIN_GATE_RULES
    from foundry.kernel.core.gate_policy import Followup, RuleResult
    from foundry.kernel.core.ids import compact_json
    from foundry.kernel.core.throttle import Throttle
    from foundry.kernel.core.upstream_json import payload_number
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
    "json_table",
    "matches",
    "payload_filter",
    "payload_number",
    "redact_url",
    "request_bounded",
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
    "event_type_fault",
    "hookimpl",
    "hookspec",
]

# Where each public name lives. Importing ``foundry.kernel`` (as every ``foundry.kernel.*`` import
# does: the CLI's, the daemon's) costs nothing until a plugin asks for one of them; the plugin
# API alone imports trio, httpx and the gate policy, ~0.3 s of a CLI command's start.
_HOMES = {
    "foundry.kernel.blocks.api": (
        "Block", "BlockContext", "BlockFactory", "BlockKind", "CommandResult", "Emission",
        "Usage", "block", "event_type_fault",
    ),
    "foundry.kernel.blocks.egress": (
        "EgressPolicy", "EgressRefused", "guarded_client", "redact_url", "request_bounded",
    ),
    "foundry.kernel.blocks.tables": ("common_options", "json_table", "matches", "payload_filter"),
    "foundry.kernel.blocks.tools": ("Tool",),
    "foundry.kernel.core.envpolicy": ("forbidden_reason",),
    "foundry.kernel.core.evals": ("AssertionResult",),
    "foundry.kernel.core.gate_policy": ("BUILTIN_GATE_RULES", "Followup", "RuleResult"),
    "foundry.kernel.core.ids": ("compact_json",),
    "foundry.kernel.core.throttle": ("Throttle",),
    "foundry.kernel.core.upstream_json": ("payload_number",),
    "foundry.kernel.errors": (
        "AlreadyExists", "BlockError", "ChainLimitExceeded", "ConfigError", "FailedPrecondition",
        "FoundryError", "InvalidArgument", "NotFound", "ResourceExhausted", "Unavailable",
    ),
    "foundry.kernel.hookspecs": ("hookimpl", "hookspec"),
}  # fmt: skip
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}
_RENAMED = {"BUILTIN_GATE_RULES": "BUILTIN_RULES"}


def __getattr__(name: str) -> object:
    module = _HOME_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'foundry.kernel' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), _RENAMED.get(name, name))
    globals()[name] = value  # found once; later lookups are plain
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
