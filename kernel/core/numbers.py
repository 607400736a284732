"""Numbers across protobuf's JSON types.

``google.protobuf.Struct``/``Value`` carry every number as a double, so a client's ``9`` arrives
as ``9.0`` — a run's inputs, a patch, a step's output shown by the CLI. The rule, applied where a
Struct or Value becomes Python (the gRPC edge's decoding of client JSON, the CLI's decoding of
the daemon's answers): a double that is integral and within ±2^53 (where every integer is exact)
becomes an ``int``; any other double stays a ``float``. A client cannot send ``9.0`` meaning a
float through a Struct: the wire cannot tell it from ``9``. JSON carried as text (an Emit's
``payload_json``, a run's ``dag_json``) keeps its types exactly.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["EXACT_INTEGERS", "restore_ints"]

EXACT_INTEGERS = 2**53  # every integer of at most this size is exact in a double


def restore_ints(value: Any) -> Any:
    """``value`` (a decoded Struct/Value: dicts, lists, scalars) with every integral double
    within ±2^53 turned into an int. Iterative: depth is bounded by the caller's limits."""
    if isinstance(value, float):
        return _int_or_float(value)
    if not isinstance(value, dict | list):
        return value
    root: list[Any] = [value]
    stack: list[tuple[Any, Any]] = [(root, 0)]
    while stack:
        container, key = stack.pop()
        item = container[key]
        if isinstance(item, float):
            container[key] = _int_or_float(item)
        elif isinstance(item, dict):
            copy = dict(item)
            container[key] = copy
            stack.extend((copy, k) for k in copy)
        elif isinstance(item, list):
            copy_list = list(item)
            container[key] = copy_list
            stack.extend((copy_list, i) for i in range(len(copy_list)))
    return root[0]


def _int_or_float(number: float) -> int | float:
    if math.isfinite(number) and number.is_integer() and abs(number) <= EXACT_INTEGERS:
        return int(number)
    return number
