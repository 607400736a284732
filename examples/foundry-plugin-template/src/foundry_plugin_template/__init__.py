"""A template Foundry plugin: the hooks the kernel calls when it loads this module.

Loaded through the ``foundry`` entry point (pyproject.toml) once installed, or by naming it in
``[plugins] modules`` of foundry.toml. Hooks are synchronous and return data.
"""

from __future__ import annotations

from foundry.kernel import Block, Tool, hookimpl

from foundry_plugin_template.assertions import MinWords
from foundry_plugin_template.blocks import SaveTally, tally_words
from foundry_plugin_template.tools import slugify

__all__ = ["MinWords", "SaveTally", "register_blocks", "slugify", "tally_words"]


@hookimpl
def register_blocks() -> list[Block]:
    """Task blocks (they sink event types) and DAG step types (by name), in running order."""
    return [tally_words, SaveTally()]


@hookimpl
def register_tools() -> list[Tool]:
    """Tools for the built-in ``tool`` step type: ``{"tool": "slugify", "args": {...}}``."""
    return [Tool("slugify", slugify, "lower-case ASCII slug of args.text")]


@hookimpl
def register_eval_assertions() -> dict[str, MinWords]:
    """Eval assertion types, by the key used in a scenario's ``expected``."""
    return {"min_words": MinWords()}
