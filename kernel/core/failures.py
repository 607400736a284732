"""What a plugin's failure says, for its trace: a block's exception is data, never the kernel's.

A block may raise anything — ``SystemExit``, ``KeyboardInterrupt``, a ``BaseException`` of its
own, or an exception whose ``__str__`` raises in turn. The kernel catches all of it where it calls
plugin code (``blocks/execution.py``, ``core/chain.reached``) and records this text instead: one
such block took the whole daemon down, and a DAG step that did so took every restart down too
(an unfinished run goes on at the next start).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from foundry.kernel.core.json_input import cut_middle

# Characters of an exception's text kept (its middle goes past them): a block raising with a
# client's 10 MB payload in its message stored it twice (error and summary) per execution.
MAX_DESCRIBED = 2_000


def described(exc: BaseException) -> str:
    """``Type: message`` of ``exc``, whatever its ``__str__`` does, at most ``MAX_DESCRIBED``
    characters of its message (both ends: the cause and the last words)."""
    try:
        text = str(exc)
    except BaseException as broken:  # noqa: BLE001 - its __str__ raised: the type still says
        text = f"<str() raised {type(broken).__name__}>"
    return f"{type(exc).__name__}: {cut_middle(text, MAX_DESCRIBED)}"


def text_of(value: Any, show: Callable[[Any], str] = repr) -> str:
    """``show(value)`` (``repr`` or ``str``), whatever a plugin's ``__repr__``/``__str__`` does
    (or a value nested too deep for it): ``<Type: repr() raised Error>`` then."""
    try:
        return show(value)
    except BaseException as exc:  # noqa: BLE001 - RecursionError too; a plugin's SystemExit
        return f"<{type(value).__name__}: {show.__name__}() raised {type(exc).__name__}>"
