"""JSON exactly as the public Foundry daemon's serde_json reads and writes it — the payload half of
an event id's material (see ``ids.event_id``). Standard library only.

Writing (:func:`dumps`): compact, keys sorted by their UTF-8 bytes, strings as raw UTF-8 with only
``"``, ``\\`` and C0 controls escaped (``\\b \\f \\n \\r \\t`` by name, the rest ``\\u00XX`` in
lowercase hex; DEL and U+2028 stay raw), integers in i64/u64 range as integers, every other number
as serde_json's float form: the shortest digits that round-trip, in decimal when the decimal
exponent is in -5..15 (``0.00005``, ``1000000000000000.0``, ``100.0``) and ``d.ddde±N`` otherwise
(``1e-7``, ``1.5e-10``, ``1e+16``, ``1.8446744073709552e+19``).

Reading (:func:`parse_number`): serde_json's number parser with its default features (no
``float_roundtrip``), so a payload holds the very numbers upstream holds: integers in
[-2**63, 2**64) stay integers; ``-0`` and integers outside that range become floats; a float's
digits are gathered into a u64 (digits past its capacity are dropped) and scaled by one multiply or
divide by a power of ten — which can land a ULP or two from the correctly rounded value, as it does
upstream; a number too large for a double is refused.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

I64_MIN, U64_MAX, I32_MAX = -(2**63), 2**64 - 1, 2**31 - 1
_POW10 = tuple(float(f"1e{n}") for n in range(309))  # serde_json's POW10 table: 1e0 ..= 1e308

# Python's encoder already writes serde_json's form for strings, keys, integers in range and floats
# whose decimal exponent is -4..15 (repr's decimal range: serde_json's, less one step at -5).
_encode = json.JSONEncoder(
    separators=(",", ":"), sort_keys=True, allow_nan=False, ensure_ascii=False
).encode
_quote = json.encoder.encode_basestring
# Where Python's text can differ from serde_json's: a float repr writes in exponent form (a digit
# then "e"; its decimal forms are serde_json's already), a 19-digit run that may be an integer
# out of range, or a key that may have been a number, a bool or None (a block's emission may
# have them: the encoder sorts those by value — 1, 2, 10 — serde_json by text, "1", "10", "2").
# Strings that happen to match only cost the slower walk.
_MAY_DIFFER = re.compile(r'[0-9](?:[eE]|[0-9]{18})|"(?:[-0-9][^"]*|true|false|null)":').search


def dumps(value: Any) -> str:
    """``value`` as serde_json's compact output of a ``Value`` (its Map is sorted: a BTreeMap).

    Raises ValueError for NaN, infinities, lone surrogates or nesting too deep to encode,
    TypeError for values that are not JSON.
    """
    try:
        text = _encode(value)
    except TypeError:  # keys of mixed types, unsortable by value (or no JSON: the walk says)
        text = None
    if text is None or _MAY_DIFFER(text) is not None:
        parts: list[str] = []
        try:
            _write(value, parts)
        except RecursionError:
            raise ValueError("nested too deeply to encode") from None
        text = "".join(parts)
    if not text.isascii():
        text.encode()  # a lone surrogate has no UTF-8 form: UnicodeEncodeError, a ValueError
    return text


def _write(value: Any, parts: list[str]) -> None:
    if isinstance(value, str):
        parts.append(_quote(value))
    elif value is None or value is True or value is False:
        parts.append("null" if value is None else "true" if value else "false")
    elif isinstance(value, int):
        parts.append(str(value) if I64_MIN <= value <= U64_MAX else format_float(float(value)))
    elif isinstance(value, float):
        parts.append(format_float(value))
    elif isinstance(value, Mapping):
        _write_object(value, parts)
    elif isinstance(value, list | tuple):
        parts.append("[")
        for index, item in enumerate(value):
            if index:
                parts.append(",")
            _write(item, parts)
        parts.append("]")
    else:
        raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _write_object(value: Mapping[Any, Any], parts: list[str]) -> None:
    items = sorted(((_key(k), v) for k, v in value.items()), key=lambda kv: kv[0].encode())
    parts.append("{")
    for index, (key, item) in enumerate(items):
        if index and key == items[index - 1][0]:  # 1 and "1": which one would a reader keep?
            raise ValueError(f"two keys are written {_quote(key)[:60]}")
        parts.append("," if index else "")
        parts.append(_quote(key))
        parts.append(":")
        _write(item, parts)
    parts.append("}")


def _key(key: Any) -> str:
    """A key as json.dumps converts it (the fast path uses json.dumps too)."""
    if isinstance(key, str):
        return key
    if key is None or isinstance(key, bool):
        return {None: "null", True: "true", False: "false"}[key]
    if isinstance(key, float):
        if not math.isfinite(key):
            raise ValueError("Out of range float values are not JSON compliant")
        return float.__repr__(key)
    if isinstance(key, int):
        return int.__repr__(key)
    raise TypeError(f"keys must be str, int, float, bool or None, not {type(key).__name__}")


def format_float(value: float) -> str:
    """A finite double as serde_json writes it (ryu's digits, with a sign on every exponent)."""
    if not math.isfinite(value):
        raise ValueError("Out of range float values are not JSON compliant")
    text = repr(value)  # the shortest digits that round-trip, as ryu finds them
    mantissa, marker, exponent_text = text.partition("e")
    if not marker:
        return text  # repr is decimal for exponents -4..15: so is serde_json
    exponent = int(exponent_text)
    if exponent == -5:  # serde_json is decimal one step further: 0.00005, not 5e-05
        sign, digits = ("-", mantissa[1:]) if mantissa[0] == "-" else ("", mantissa)
        return f"{sign}0.0000{digits.replace('.', '')}"
    return f"{mantissa}e{exponent:+d}"


# --- reading ------------------------------------------------------------------------------------


def parse_number(token: str) -> int | float:
    """A JSON number token (as the json module's scanner matched it) as serde_json reads it."""
    positive = token[0] != "-"
    at = 0 if positive else 1
    significand = 0
    if token[at] == "0":
        at += 1
    else:
        while at < len(token) and token[at].isdigit():
            digit = ord(token[at]) - 48
            if significand * 10 + digit > U64_MAX:
                return _long_integer(token, at, positive, significand)
            significand = significand * 10 + digit
            at += 1
    if at == len(token):
        return _integer(positive, significand)
    if token[at] == ".":
        return _decimal(token, at, positive, significand, 0)
    return _exponent(token, at, positive, significand, 0)


payload_number = parse_number  # its name in the plugin API (``foundry.kernel``)


def _integer(positive: bool, significand: int) -> int | float:
    if positive:
        return significand
    if significand == 0 or -significand < I64_MIN:  # -0 and below i64: a float, as upstream
        return -float(significand)
    return -significand


def _long_integer(token: str, at: int, positive: bool, significand: int) -> float:
    """Integer digits past a u64 only scale it (serde_json's ``parse_long_integer``)."""
    exponent = 0
    while at < len(token) and token[at].isdigit():
        at += 1
        exponent += 1
    if at == len(token):
        return _from_parts(positive, significand, exponent)
    if token[at] == ".":
        return _decimal(token, at, positive, significand, exponent)
    return _exponent(token, at, positive, significand, exponent)


def _decimal(token: str, at: int, positive: bool, significand: int, exponent: int) -> float:
    at += 1  # the "."
    while at < len(token) and token[at].isdigit():
        digit = ord(token[at]) - 48
        if significand * 10 + digit > U64_MAX:  # the rest of the fraction is dropped
            while at < len(token) and token[at].isdigit():
                at += 1
            break
        significand = significand * 10 + digit
        exponent -= 1
        at += 1
    if at < len(token):
        return _exponent(token, at, positive, significand, exponent)
    return _from_parts(positive, significand, exponent)


def _exponent(token: str, at: int, positive: bool, significand: int, starting: int) -> float:
    at += 1  # the "e" or "E"
    positive_exponent = token[at] != "-"
    at += token[at] in "+-"
    exponent = 0
    for char in token[at:]:
        exponent = exponent * 10 + ord(char) - 48
        if exponent > I32_MAX:
            if significand and positive_exponent:
                raise ValueError("number out of range")
            return 0.0 if positive else -0.0
    total = starting + exponent if positive_exponent else starting - exponent
    return _from_parts(positive, significand, max(-(2**31), min(I32_MAX, total)))


def _from_parts(positive: bool, significand: int, exponent: int) -> float:
    """serde_json's ``f64_from_parts`` without ``float_roundtrip``: one scaling by 10**|e|."""
    value = float(significand)
    while True:
        if abs(exponent) < len(_POW10):
            if exponent >= 0:
                value *= _POW10[exponent]
                if math.isinf(value):
                    raise ValueError("number out of range")
            else:
                value /= _POW10[-exponent]
            break
        if value == 0.0:
            break
        if exponent >= 0:
            raise ValueError("number out of range")
        value /= 1e308
        exponent += 308
    return value if positive else -value


__all__ = ["dumps", "format_float", "parse_number"]
