"""The plugin API's hook specifications (pluggy project name ``foundry``).

A plugin module defines functions named like these, marked with ``@hookimpl``; hooks are
synchronous and return data. The kernel owns every task and never hands a nursery to a plugin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from foundry.kernel.blocks.api import Block, BlockFactory
    from foundry.kernel.blocks.tools import Tool
    from foundry.kernel.config import Config
    from foundry.kernel.core.evals import AssertionType
    from foundry.kernel.core.gate_policy import Rule

hookspec = pluggy.HookspecMarker("foundry")
hookimpl = pluggy.HookimplMarker("foundry")

# --- Blocks -------------------------------------------------------------------------------------


@hookspec
def register_blocks(config: Config, tools: dict[str, Tool]) -> list[Block]:  # type: ignore[empty-body]
    """Contribute blocks. Each serves as a task block (when it sinks event types) and as a DAG
    step type (under its name). An implementation may take any subset of the arguments.

    :param config: the daemon's configuration (e.g. ``config.llm``).
    :param tools: every tool contributed through ``register_tools``, by name.
    :returns: the blocks this plugin provides, in the order they should run for one event.
    """


@hookspec
def register_block_types() -> dict[str, BlockFactory]:  # type: ignore[empty-body]
    """Contribute block types that ``[[blocks]]`` tables in foundry.toml can instantiate.

    :returns: a mapping of type name (the table's ``type`` key) to a factory that takes the table
        and returns a :class:`~foundry.kernel.Block`; the factory raises ``ValueError`` naming
        the key when the table is wrong.
    """


@hookspec
def register_tools() -> list[Tool]:  # type: ignore[empty-body]
    """Contribute tools that DAG steps of type ``tool`` can call by name.

    :returns: :class:`~foundry.kernel.Tool` objects; names are unique across plugins.
    """


# --- Governance: change gates and eval packs ----------------------------------------------------


@hookspec
def register_gate_rules() -> list[Rule]:  # type: ignore[empty-body]
    """Contribute change-gate rules, evaluated by every CheckChangeGate in registration order
    (the built-ins — novelty, coverage, evals, budgets — come from ``foundry.plugins.gate_rules``).

    :returns: rule objects, each with a ``name`` (unique across plugins; ``[gate].advisory``
        and ``[gate.effects]`` refer to it) and ``evaluate(request, policy) -> RuleResult``,
        pure and fast. A rule that raises or answers something else denies (the gate fails
        closed).
    """


@hookspec
def register_eval_assertions() -> dict[str, AssertionType]:  # type: ignore[empty-body]
    """Contribute assertion types for eval scenarios' ``expected`` objects.

    :returns: a mapping of the key used in ``expected`` to an object with a ``name`` and
        ``check(expected_value, facts, step_id) -> AssertionResult`` (``step_id`` is None at the
        run level), optionally ``scopes`` (``{"run"}``, ``{"step"}``). A key given twice, or one
        of the built-ins, is refused at start.
    """
