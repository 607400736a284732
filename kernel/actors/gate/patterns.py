"""The eval ``regex`` assertion's engine (``core.evals.judge(search=)``): RE2.

A pattern is the caller's input (an eval pack's scenario). Python's engine backtracks:
``^(a+)+$`` against 28 a's and a "!" held the daemon's loop for 9 s, against 40 for good (it
never lets the interpreter lock go). RE2 takes time linear in the text whatever the pattern; it
has no backreferences or lookarounds, which it refuses as invalid patterns.
"""

from __future__ import annotations

import re2  # type: ignore[import-untyped]

# RE2 logs a pattern it refuses (through absl, on stderr): the reason goes in the reply instead.
_OPTIONS = re2.Options()
_OPTIONS.log_errors = False


def re2_search(pattern: str, text: str) -> str | None:
    """The text of ``pattern``'s first match in ``text``, or None; ValueError for a pattern RE2
    refuses, with its reason."""
    try:
        compiled = re2.compile(pattern, _OPTIONS)
    except (re2.error, TypeError) as exc:
        reason = exc.args[0] if exc.args else exc
        text_reason = reason.decode(errors="replace") if isinstance(reason, bytes) else str(reason)
        raise ValueError(f"{text_reason} (RE2 syntax)") from None
    match = compiled.search(text)
    return match.group(0) if match is not None else None
