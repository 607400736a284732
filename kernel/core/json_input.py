"""JSON from clients: one set of limits for every document the daemon parses — event payloads,
``dag_json``, run inputs, patches, labels. Pure functions, standard library only.

A document is refused (:class:`InvalidArgument` naming the field) when it is not JSON, nests
deeper than :data:`MAX_DEPTH`, holds ``NaN``/``Infinity`` (not JSON, and the store refuses them),
or holds text that is not valid Unicode (lone surrogates).
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from foundry.kernel.core.upstream_json import parse_number
from foundry.kernel.errors import InvalidArgument

# As the public Foundry daemon: serde_json's recursion budget starts at 128 and a document fails
# when entering a container brings it to 0, so 127 levels of arrays and objects is the most.
MAX_DEPTH = 127
# JSON that protobuf carries as a Struct or Value (a run's inputs and outputs, patches, eval and
# gate documents): each level costs a decoder up to three messages (Struct, its map entry, Value),
# and upb — grpcio's, protobuf-python's — stops at 100 messages: 40 levels of inputs made GetRun
# and TapRun unreadable to them, inside their envelopes (an event's payload, an eval result's
# metrics). 24 levels keep the deepest echo under 100.
STRUCT_DEPTH = 24
QUOTE_LIMIT = 100


def quoted(text: object, limit: int = QUOTE_LIMIT) -> str:
    """Caller input for an error message: repr, at most ``limit`` characters of it."""
    shown = repr(text)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def shown(text: str, limit: int = QUOTE_LIMIT) -> str:
    """Caller input for an error message as it is (a key, a reference), at most ``limit``
    characters of it."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def cut_middle(text: str, limit: int) -> str:
    """``text`` for a message, its middle cut past ``limit`` characters: both ends say most (a
    path's start and the key that failed; an error's cause and its last words)."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]} … ({len(text) - 2 * half:,} characters cut) … {text[-half:]}"


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON (numbers must be finite)")


# 10**308 is a double's order of magnitude at most. (Anchored at a run's start: unanchored, each
# place inside a long run of digits began a match again — 1.5 s for 4 MB of them.)
_LONG_DIGITS = re.compile(r"(?<![0-9])[0-9]{309}")


def oversized_number(text: str) -> str:
    """A number of JSON ``text`` that no double can hold, shown shortened ("" when there is
    none): a JSON number travels as a double in a ``google.protobuf.Value``, and a step output
    of ``10**400`` was recorded, then every GetRun and TapRun of its run failed. Only text
    with 309 digits in a row is parsed again."""
    if not _LONG_DIGITS.search(text):
        return ""
    try:
        json.loads(text, parse_int=double_int)
    except OverflowError as exc:
        return str(exc)
    return ""


def double_int(digits: str) -> int:
    """A JSON integer's digits as an int (``parse_int``): OverflowError for one no double
    holds, as upstream's serde_json refuses it."""
    number = int(digits)
    try:
        float(number)
    except OverflowError:
        shown = f"{digits[:12]}… ({len(digits.lstrip('-'))} digits)"
        raise OverflowError(f"{shown} is past what a double holds (±1.8e308)") from None
    return number


def parse_json(
    text: str, field: str, *, upstream_numbers: bool = False, unique_keys: bool = False
) -> Any:
    """Parse ``text`` under the limits above. ``upstream_numbers`` reads numbers as the public
    Foundry daemon's serde_json does (``-0`` and integers beyond i64/u64 become floats; see
    ``upstream_json.parse_number``): an event payload, so its id is the one upstream computes.
    ``unique_keys``: an object naming a key twice is refused (a DAG whose step says
    ``"id": "a", "id": "b"`` reads as one thing to a reviewer and ran as the other)."""
    number = parse_number if upstream_numbers else None
    # Only a document with that many brackets can be too deep: skip the walk for the rest.
    deep = text.count("[") + text.count("{") > MAX_DEPTH
    named_twice: list[bool] = []  # (a deep document's objects are noted as they are made)
    pairs = each_key_once if unique_keys else _noting_twice(named_twice) if deep else None
    try:
        value = json.loads(
            text, parse_constant=_not_json, parse_int=number, parse_float=number,
            object_pairs_hook=pairs,
        )  # fmt: skip
    except DuplicateKey as exc:
        raise InvalidArgument(f"{field}: an object names the key {quoted(exc.key)} twice") from None
    except RecursionError:
        raise InvalidArgument(f"{field}: nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:
        said = str(exc)
        if "integer string conversion" in said:  # (Python's own advice, meant for its caller)
            said = f"a number of more than {sys.get_int_max_str_digits()} digits"
        raise InvalidArgument(f"{field}: not valid JSON: {said[:200]}") from None
    check_json_value(value, field, walk=deep)
    # Of a key named twice, json.loads keeps the last value unchecked by the above; serde_json
    # refuses the whole text (a lone surrogate or too deep anywhere), and so do we.
    if "\\u" in text and unpaired_surrogate_escape(text):
        raise InvalidArgument(f"{field}: text must be valid Unicode (lone surrogate)")
    if named_twice and text_depth(text, MAX_DEPTH) > MAX_DEPTH:  # (each pass reads the text)
        raise InvalidArgument(f"{field}: nested deeper than {MAX_DEPTH} levels")
    return value


def _noting_twice(found: list[bool]) -> Callable[[list[tuple[str, Any]]], dict[str, Any]]:
    """An ``object_pairs_hook`` making each object a dict, noting in ``found`` one that names a
    key twice (what it dropped the checks of the parsed value never see)."""

    def made(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        value = dict(pairs)
        if len(value) != len(pairs):
            found.append(True)
        return value

    return made


# A JSON string (escapes included), and an empty array or object.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_EMPTY_PAIR = re.compile(r"\[\]|\{\}")


def text_depth(text: str, limit: int) -> int:
    """How deep the arrays and objects of valid JSON ``text`` nest, counted up to ``limit`` + 1.
    Each pass removes the pairs that are empty at its start (``re.sub`` does not look again at
    what it made), so the passes are the depth — in C, with no Python step per bracket."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    depth = 0
    while brackets and depth <= limit:
        brackets = _EMPTY_PAIR.sub("", brackets)
        depth += 1
    return depth


class DuplicateKey(ValueError):
    """A JSON object naming ``key`` twice (readers disagree on which of the two counts)."""

    def __init__(self, key: str) -> None:
        super().__init__(f"duplicate key {quoted(key)}")
        self.key = key


def each_key_once(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An ``object_pairs_hook`` refusing a key given twice (:class:`DuplicateKey`):
    ``json.loads`` keeps the last, so a proxy or a reviewer reading the first saw another
    document than the one used."""
    found = dict(pairs)
    if len(found) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKey(key)
            seen.add(key)
    return found


def parse_json_object(text: str, field: str, *, upstream_numbers: bool = False) -> dict[str, Any]:
    """:func:`parse_json` of a document that must be an object."""
    value = parse_json(text, field, upstream_numbers=upstream_numbers)
    if not isinstance(value, dict):
        raise InvalidArgument(f"{field}: must be a JSON object, got {_kind(value)}")
    return value


def check_json_value(value: Any, field: str, *, walk: bool = True, depth: int = MAX_DEPTH) -> None:
    """A decoded JSON value under the limits above, nested at most ``depth`` levels
    (:data:`STRUCT_DEPTH` for what protobuf carries as a Struct or Value)."""
    if walk:
        _check_depth(value, field, depth)
    try:
        json.dumps(value, allow_nan=False, ensure_ascii=False).encode()
    except RecursionError:
        raise InvalidArgument(f"{field}: nested deeper than {MAX_DEPTH} levels") from None
    except UnicodeEncodeError:  # before ValueError, its base class
        raise InvalidArgument(f"{field}: text must be valid Unicode (lone surrogate)") from None
    except ValueError:
        reason = "numbers must be finite (NaN and infinities are not JSON)"
        raise InvalidArgument(f"{field}: {reason}") from None


_CONTAINERS = (dict, list)  # a tuple: isinstance with ``dict | list`` costs ~3x as much


def check_depth(value: Any, field: str, limit: int) -> None:
    """``value`` nested at most ``limit`` levels (InvalidArgument naming ``field``)."""
    _check_depth(value, field, limit)


def check_struct_depth(text: str, value: Any, field: str) -> None:
    """``value`` (whose compact JSON is ``text``) nested at most :data:`STRUCT_DEPTH` levels;
    only a text with that many brackets is walked."""
    if text.count("[") + text.count("{") > STRUCT_DEPTH:
        _check_depth(value, field, STRUCT_DEPTH)


def _check_depth(value: Any, field: str, limit: int = MAX_DEPTH) -> None:
    """Iterative, so a hostile document cannot exhaust the interpreter's stack here. Only dicts
    and lists are descended into (the containers ``json.loads`` makes). Each
    level's containers are found in one comprehension per container, not a generator: a
    1,000-step ``dag_json`` walked in 2.3 ms, now ~1."""
    level: list[Any] = [value] if isinstance(value, _CONTAINERS) else []
    depth = 0
    containers = _CONTAINERS
    while level:
        depth += 1
        if depth > limit:
            raise InvalidArgument(f"{field}: nested deeper than {limit} levels")
        nested: list[Any] = []
        for item in level:
            children = item.values() if isinstance(item, dict) else item
            nested += [v for v in children if isinstance(v, containers)]
        level = nested


def _kind(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


# A UTF-16 surrogate escape in JSON text (``\ud800``): DuckDB's JSON type refuses an unpaired one,
# and so does anything that reads the text as UTF-8.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_ESCAPES = re.compile(r"(\\+)u([dD][89a-fA-F][0-9a-fA-F]{2})")


def unpaired_surrogate_escape(json_text: str) -> bool:
    """Does JSON text hold a ``\\uD800``-``\\uDFFF`` escape that is not a high one followed at
    once by a low one (a lone surrogate: an emoji cut in half)? ~50 ns without any escape."""
    if "\\u" not in json_text or _SURROGATE_ESCAPE.search(json_text) is None:
        return False
    escapes = [
        (match.start(), match.end(), int(match.group(2), 16))
        for match in _ESCAPES.finditer(json_text)
        if len(match.group(1)) % 2 == 1  # an odd run of backslashes: an escape, not a "\\"
    ]
    index = 0
    while index < len(escapes):
        _, end, unit = escapes[index]
        if unit >= 0xDC00:
            return True  # a low surrogate with no high one before it
        following = escapes[index + 1] if index + 1 < len(escapes) else None
        if following is None or following[0] != end or following[2] < 0xDC00:
            return True
        index += 2
    return False


def toml_not_json(value: Any, where: str) -> str | None:
    """What in a value read from TOML no JSON can hold — a date or a time, NaN or an infinity —
    named by its path under ``where``; None when all of it is JSON."""
    if isinstance(value, dict):
        for key, item in value.items():
            found = toml_not_json(item, f"{where}.{key}")
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = toml_not_json(item, f"{where}[{index}]")
            if found is not None:
                return found
    elif isinstance(value, float) and not math.isfinite(value):
        return f"{where}: {value} is not a finite number"
    elif isinstance(value, int) and not isinstance(value, bool) and not _fits_double(value):
        return f"{where}: an integer of {len(str(abs(value)))} digits is past what a double holds"
    elif value is not None and not isinstance(value, str | int | float | bool):
        return f"{where}: {type(value).__name__} values are not JSON (quote it)"
    return None


def _fits_double(value: int) -> bool:
    """Whether a JSON number a protobuf Struct carries (a double) can hold ``value``: a
    401-digit one ended the CLI's eval and gate commands in a traceback."""
    try:
        float(value)
    except OverflowError:
        return False
    return True


def same_json(a: Any, b: Any) -> bool:
    """``a`` and ``b`` are the same JSON value (``1`` and ``1.0`` are; ``1`` and ``true`` not:
    Python's ``==`` says they are). A block's ``when`` and a replay's drift compare so."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and a == b
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(map(same_json, a, b))
    return a is None and b is None


# JSON of more values than this is made, read or written on a worker thread, not the trio
# thread (~1-12 µs a value there, depending on the work; 900,000 held every other client 11 s).
JSON_VALUES_ON_LOOP = 2_000
# Of a string (a value or a key), the characters counted as one value: encoding them costs
# about what one small value does (~2-4 ns a character in GetRun's reply; twenty outputs of
# 3.9 MB, each one value, held every other client 0.7-3 s).
CHARS_A_VALUE = 1_000


def json_values_past(values: Iterable[Any], limit: int = JSON_VALUES_ON_LOOP) -> bool:
    """Whether JSON values (as ``json.loads`` makes them) hold more than ``limit`` values, each
    one and its nested ones counted, and a long string as one a :data:`CHARS_A_VALUE`
    characters; a bounded look: it stops counting there."""
    seen = 0
    for value in values:
        seen += 1 + _string_weight(value)
        stack = [value]
        while stack and seen <= limit:
            node = stack.pop()
            if isinstance(node, Mapping):
                seen += len(node) + _keys_weight(node)
                children: Any = node.values()
            elif isinstance(node, list | tuple):
                seen += len(node)
                children = node
            else:
                continue
            if seen > limit:
                return True
            for child in children:
                kind = type(child)  # (the exact types first: an ABC's check costs ~0.5 µs)
                if kind in _SCALARS:
                    continue
                if kind is str:
                    seen += len(child) // CHARS_A_VALUE
                elif kind is dict or kind is list or kind is tuple:
                    stack.append(child)
                elif isinstance(child, str):
                    seen += len(child) // CHARS_A_VALUE
                elif isinstance(child, Mapping | list | tuple):
                    stack.append(child)
        if seen > limit:
            return True
    return False


_SCALARS = frozenset((int, float, bool, type(None)))


def _keys_weight(node: Mapping[Any, Any]) -> int:
    try:
        return sum(map(len, node)) // CHARS_A_VALUE
    except TypeError:  # a key that is no string (an output not JSON yet: judged later)
        return sum(len(k) for k in node if isinstance(k, str)) // CHARS_A_VALUE


def _string_weight(value: Any) -> int:
    return len(value) // CHARS_A_VALUE if isinstance(value, str) else 0
