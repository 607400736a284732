"""Tools: named functions a plugin registers (``register_tools``) for the ``tool`` step type."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

ToolFn = Callable[[Mapping[str, Any]], Any]


@dataclass(frozen=True)
class Tool:
    """``fn(args) -> JSON value`` (sync or async). ``description`` shows in ``foundry blocks``."""

    name: str
    fn: ToolFn
    description: str = ""
