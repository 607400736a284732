"""Fuzz every RPC of both services over a real daemon with raw request bytes.

Each RPC gets Hypothesis-drawn bodies of four kinds: random bytes; valid messages built from the
betterproto2 classes with hostile field values (huge and odd strings, deep or non-finite JSON, huge
numbers, open-enum numbers); wire-type confusion (a field re-encoded with another protobuf wire
type, at the top level or inside a nested message); and truncated or length-lying encodings. The
bodies go out as raw bytes through grpcio's generic API, so the daemon's decoding is what is tested.

Every answer must be one of the statuses a client may see for bad input (never INTERNAL or
UNKNOWN), must come within :data:`CALL_TIMEOUT`, and the daemon must stay alive and keep serving
an ordinary Emit + Status. A call that kills or wedges the daemon fails the example; the daemon is
restarted so the remaining examples (and Hypothesis' shrinking) still run against a live one.

``FOUNDRY_FUZZ_EXAMPLES`` sets the number of generated examples across all RPCs (default
:data:`DEFAULT_EXAMPLES`, derandomized); ``make fuzz`` runs a long random campaign and prints a
summary (examples, per-RPC status counts, slowest answers, distinct failures, wall time).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import re
import subprocess
import time
import typing
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from foundry.proto import admin_api, analytics_api, foundry_api, runtime_api
from foundry.proto.generated.google.protobuf import Struct
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from tests.daemon import Daemon
from tests.helpers import wait_until

CALL_TIMEOUT = 10.0  # seconds any unary answer may take; a slower one is a hang
STREAM_DEADLINE = 0.5  # deliberate client deadline of a Watch / TapRun read (a quiet one hits it)
STREAM_MESSAGES = 5  # messages read from a stream before it is cancelled
QUICK = 5.0  # seconds the explicit reproducers (e.g. a 1 MB workflow id) may take
DEFAULT_EXAMPLES = 380
EXAMPLES = int(os.environ.get("FOUNDRY_FUZZ_EXAMPLES", DEFAULT_EXAMPLES))
LONG = EXAMPLES > DEFAULT_EXAMPLES

OK_STATUSES = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
# After these the daemon's health is checked (on a stream DEADLINE_EXCEEDED is our own deadline,
# but a quiet stream may also hide a daemon that is stuck).
SUSPICIOUS = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
NOT_BUILT: set[str] = set()


@dataclass(frozen=True)
class Rpc:
    name: str
    path: str
    request: type
    reply: type
    streaming: bool = False

    def allowed(self) -> set[grpc.StatusCode]:
        allowed = set(OK_STATUSES)
        if self.name in NOT_BUILT:
            allowed.add(grpc.StatusCode.UNIMPLEMENTED)
        if self.streaming:  # our own short deadline, and our own cancel after a few messages
            allowed |= {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
        return allowed


def _rpcs() -> dict[str, Rpc]:
    f, r, a = foundry_api, runtime_api, analytics_api
    foundry = [
        ("Emit", f.EmitRequest, f.EmitResponse, False),
        ("Status", f.StatusRequest, f.StatusResponse, False),
        ("Watch", f.WatchRequest, f.WatchResponse, True),
        ("Trace", f.TraceRequest, f.TraceResponse, False),
    ]
    runtime = [
        ("SubmitRun", r.SubmitRunRequest, r.SubmitRunResponse, False),
        ("GetRun", r.GetRunRequest, r.GetRunResponse, False),
        ("TapRun", r.TapRunRequest, r.RunEvent, True),
        ("ReplayRun", r.ReplayRunRequest, r.ReplayRunResponse, False),
        ("UpdateBreakpoints", r.UpdateBreakpointsRequest, r.UpdateBreakpointsResponse, False),
        ("ResumeRun", r.ResumeRunRequest, r.ResumeRunResponse, False),
        ("PatchStep", r.PatchStepRequest, r.PatchStepResponse, False),
        ("CreateBranchRun", r.CreateBranchRunRequest, r.CreateBranchRunResponse, False),
        ("SyncEvalPack", r.SyncEvalPackRequest, r.SyncEvalPackResponse, False),
        ("ListEvalScenarios", r.ListEvalScenariosRequest, r.ListEvalScenariosResponse, False),
        ("RecordEvalResult", r.RecordEvalResultRequest, r.RecordEvalResultResponse, False),
        ("CheckChangeGate", r.CheckChangeGateRequest, r.CheckChangeGateResponse, False),
        ("RecordGateFollowup", r.RecordGateFollowupRequest, r.RecordGateFollowupResponse, False),
        ("ListChangeGates", r.ListChangeGatesRequest, r.ListChangeGatesResponse, False),
        ("GetAttestations", r.GetAttestationsRequest, r.GetAttestationsResponse, False),
        ("ListRuns", r.ListRunsRequest, r.ListRunsResponse, False),
        # Last: cancelling the seeded runs (say, the paused one) leaves the RPCs before it less
        # to reach.
        ("CancelRun", r.CancelRunRequest, r.CancelRunResponse, False),
    ]
    # ExportParquet is left out on purpose: it writes files where the request says.
    analytics = [
        ("Query", a.QueryRequest, a.QueryResponse, False),
        ("ListSavedQuestions", a.ListSavedQuestionsRequest, a.ListSavedQuestionsResponse, False),
    ]
    d = admin_api
    admin = [
        ("GetVersion", d.GetVersionRequest, d.GetVersionResponse, False),
        ("ListBlocks", d.ListBlocksRequest, d.ListBlocksResponse, False),
        ("ListTools", d.ListToolsRequest, d.ListToolsResponse, False),
        ("ListEvents", d.ListEventsRequest, d.ListEventsResponse, False),
    ]
    rpcs = [Rpc(n, f"/foundry.Foundry/{n}", *rest) for n, *rest in foundry]
    rpcs += [Rpc(n, f"/foundry.admin.v1.Admin/{n}", *rest) for n, *rest in admin]
    rpcs += [Rpc(n, f"/foundry.analytics.v1.Analytics/{n}", *rest) for n, *rest in analytics]
    rpcs += [Rpc(n, f"/fleetforge.runtime.v1.RuntimeService/{n}", *rest) for n, *rest in runtime]
    return {rpc.name: rpc for rpc in rpcs}


RPCS = _rpcs()
# SubmitRun reaches the most code (DAG parsing, the scheduler, the blocks): it gets more examples.
WEIGHTS = {"SubmitRun": 4, "Emit": 2, "PatchStep": 2, "CreateBranchRun": 2}
PER_RPC = {
    name: max(5, EXAMPLES * WEIGHTS.get(name, 1) // sum(WEIGHTS.get(n, 1) for n in RPCS))
    for name in RPCS
}
FUZZ = settings(
    max_examples=1,  # set per RPC from PER_RPC
    deadline=None,
    derandomize=not LONG,
    database=None,
    print_blob=False,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
)


# --- a tiny protobuf wire encoder / splitter ------------------------------------------------------

VARINT, I64, LEN, SGROUP, EGROUP, I32 = 0, 1, 2, 3, 4, 5
MASK64 = (1 << 64) - 1


def raw_varint(n: int) -> bytes:
    """Base-128 varint of a non-negative int of any size (beyond 64 bits on purpose)."""
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def varint(n: int) -> bytes:
    return raw_varint(n & MASK64)  # negative numbers as 64-bit two's complement, like protobuf


def tag(number: int, wire_type: int) -> bytes:
    return raw_varint(number << 3 | wire_type)


def length_delimited(number: int, payload: bytes) -> bytes:
    return tag(number, LEN) + raw_varint(len(payload)) + payload


@dataclass(frozen=True)
class WireField:
    number: int
    wire_type: int
    start: int  # offset of the tag
    value_start: int  # offset of the value (after the length prefix for LEN)
    end: int


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if pos >= len(data) or shift > 70:
            raise ValueError("bad varint")
        byte = data[pos]
        result |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            return result, pos


def split(data: bytes) -> list[WireField] | None:
    """The top-level fields of an encoding, or None if it does not split cleanly."""
    fields, pos = [], 0
    try:
        while pos < len(data):
            start = pos
            key, pos = _read_varint(data, pos)
            number, wire_type = key >> 3, key & 7
            if wire_type == VARINT:
                _, pos = _read_varint(data, pos)
                value_start = pos
            elif wire_type == LEN:
                size, pos = _read_varint(data, pos)
                value_start, pos = pos, pos + size
            elif wire_type in (I64, I32):
                value_start, pos = pos, pos + (8 if wire_type == I64 else 4)
            else:
                return None
            if pos > len(data):
                return None
            fields.append(WireField(number, wire_type, start, value_start, pos))
    except ValueError:
        return None
    return fields


# --- hostile values -------------------------------------------------------------------------------

CHARS = st.characters(codec="utf-8")  # any code point but lone surrogates (proto3 strings)
ODD_TEXT = st.text(CHARS, max_size=40)
SPECIAL_TEXT = st.sampled_from(
    [
        "", " ", "\x00", "\x00\x01\x7f", "\n\r\t", "../../etc/passwd", "evt_' OR 1=1; --",
        "%s%n%x", "${inputs.x}", "${steps.a.output.text}", "\u202etxet\u202c", "🦄" * 50,
        "e\u0301" * 100, "\ufeff", "\uffff\U0010ffff", "NaN", "-0", "1e999", "a" * 128,
        "a" * 129, "x" * 4097, "evt_000000000000000000000000", "run_" + "f" * 32,
    ]
)  # fmt: skip


@st.composite
def huge_text(draw: st.DrawFn, max_bytes: int = 300_000) -> str:
    """A repeated unit up to ``max_bytes`` UTF-8 bytes (drawing that many chars is too slow)."""
    unit = draw(st.text(CHARS, min_size=1, max_size=4))
    size = draw(st.integers(1_000, max_bytes))
    return unit * max(1, size // len(unit.encode()))


TEXT = st.one_of(ODD_TEXT, SPECIAL_TEXT, huge_text())

JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**63).map(lambda n: n**3),  # far beyond 64 bits
    st.floats(),  # NaN and infinities too: json.dumps writes them as NaN / Infinity
    ODD_TEXT,
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ODD_TEXT, inner, max_size=4),
    max_leaves=20,
)
JSON_OBJECTS = st.dictionaries(ODD_TEXT, JSON_VALUES, max_size=6)


def _nested(n: int, opener: str, closer: str, core: str = "") -> str:
    return opener * n + core + closer * n


JSON_TEXT = st.one_of(
    JSON_OBJECTS.map(json.dumps),
    JSON_VALUES.map(json.dumps),
    st.integers(1, 5_000).map(lambda n: _nested(n, "[", "]")),
    st.integers(1, 5_000).map(lambda n: '{"a":' + _nested(n, "[", "]") + "}"),
    st.integers(1, 5_000).map(lambda n: _nested(n, '{"a":', "}", "1")),
    st.integers(1, 5_000).map(lambda n: "[" * n),  # never closed
    st.integers(1, 100_000).map(lambda n: '{"a": ' + "9" * n + "}"),  # huge int literal
    st.integers(1, 100_000).map(lambda n: '{"a": 0.' + "1" * n + "e-999}"),
    st.sampled_from(
        [
            '{"a": NaN}',
            '{"a": Infinity}',
            '{"a": -Infinity}',
            '{"a": 1e999}',
            '{"a": -1e999}',
            '{"a": "\\ud800"}',
            '{"\\udfff": 1}',
            '{"a": "\\u0000"}',
            "null",
            "[]",
            '"s"',
            "1",
            "",
            "{",
            '{"a":1}x',
            "\ufeff{}",
            '{"a":1,"a":2}',
            "{'a': 1}",
            '{"a": 01}',
            '{"a": 1_000}',
            '{"a": .5}',
            '{"a": tru}',
            "\x00",
        ]
    ),  # fmt: skip
    huge_text(),
    TEXT,
)

STEP_TYPES = ["llm", "tool", "transform", "relay", "shell", "nope", "", "LLM"]  # never "http"
MODELS = ["mock:small", "mock:large", "", "mock-tiny", "mock:" + "m" * 300]  # never a real one
NUMBERS = st.one_of(
    st.integers(-5, 200),
    st.floats(),
    st.sampled_from([10**30, 1e308, 1e-300, 0, -0.0, "3", None, True, [], {}]),
)
STEP_IDS = st.one_of(st.sampled_from(["a", "b", "c", "outline", "draft"]), ODD_TEXT)


@st.composite
def dag_steps(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(STEP_TYPES))
    inputs = draw(
        st.one_of(
            st.fixed_dictionaries({"prompt": st.one_of(ODD_TEXT, SPECIAL_TEXT)}),
            st.fixed_dictionaries(
                {"tool": st.sampled_from(["echo", "word_count", "nope"]), "args": JSON_OBJECTS}
            ),
            st.fixed_dictionaries(
                {"value": JSON_VALUES} | {"merge": st.lists(JSON_OBJECTS, max_size=3)}
            ),
            st.fixed_dictionaries({"concat": st.lists(JSON_VALUES, max_size=3)}),
            JSON_OBJECTS,
            JSON_VALUES,
        )
    )
    step: dict[str, Any] = draw(
        st.fixed_dictionaries(
            {"id": STEP_IDS, "type": st.sampled_from(STEP_TYPES)},
            optional={
                "depends_on": st.one_of(st.lists(STEP_IDS, max_size=3), JSON_VALUES),
                "retry": st.one_of(
                    st.fixed_dictionaries(
                        {}, optional={"max_attempts": NUMBERS, "backoff": NUMBERS}
                    ),
                    JSON_VALUES,
                ),
                "timeout": NUMBERS,
                "model": st.one_of(st.sampled_from(MODELS), JSON_SCALARS),
                "env": st.one_of(st.dictionaries(ODD_TEXT, ODD_TEXT, max_size=3), JSON_VALUES),
                "surprise": JSON_VALUES,
            },
        )
    )
    return {**step, "type": kind, "inputs": inputs}


def _chain(n: int, cyclic: bool) -> str:
    steps = [
        {"id": f"s{i}", "type": "transform", "inputs": {"value": i},
         "depends_on": [f"s{i - 1}"] if i else ([f"s{n - 1}"] if cyclic and n > 1 else [])}
        for i in range(n)
    ]  # fmt: skip
    return json.dumps({"steps": steps})


DAG_JSON = st.one_of(
    st.lists(dag_steps(), max_size=5).map(lambda steps: json.dumps({"steps": steps})),
    st.integers(2, 3_000).map(lambda n: _chain(n, cyclic=True)),  # deep cycle: rejected
    st.integers(1, 30).map(lambda n: _chain(n, cyclic=False)),
    st.integers(1, 5_000).map(lambda n: '{"steps":' + _nested(n, "[", "]") + "}"),
    st.integers(1, 5_000).map(lambda n: '{"steps": [' + _nested(n, '{"id":', "}", '"a"') + "]}"),
    JSON_TEXT,
)


def _deep_dict(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth):
        value = {"a": value}
    return value


STRUCTS = st.one_of(
    st.dictionaries(
        ODD_TEXT,
        st.recursive(
            st.none() | st.booleans() | st.floats() | st.integers(-(2**60), 2**60) | TEXT,
            lambda inner: (
                st.lists(inner, max_size=3) | st.dictionaries(ODD_TEXT, inner, max_size=3)
            ),
            max_leaves=12,
        ),
        max_size=5,
    ),
    st.integers(1, 60).map(_deep_dict),
).map(Struct.from_dict)


@dataclass(frozen=True)
class Known:
    """Ids of things that exist in the daemon, so valid-shaped requests reach deep code."""

    event_id: str
    workflow_id: str
    runs: tuple[str, ...]
    steps: tuple[str, ...] = ("outline", "count", "draft", "report")


def overrides(known: Known) -> dict[str, st.SearchStrategy[Any]]:
    """Field name → values, for the fields whose meaning matters to the daemon."""
    run_ids = st.one_of(st.sampled_from(known.runs), TEXT)
    step_ids = st.one_of(st.sampled_from(known.steps), TEXT)
    return {
        "event_id": st.one_of(st.just(known.event_id), TEXT),
        "workflow_id": st.one_of(st.just(known.workflow_id), TEXT),
        "run_id": run_ids,
        "step_id": step_ids,
        "from_step": step_ids,
        "add": step_ids,
        "remove": step_ids,
        "breakpoints": step_ids,
        "event_type": st.one_of(
            st.sampled_from(["greet_requested", "alert_raised", "fuzz_event"]), TEXT
        ),
        "project": st.one_of(st.just("fuzz"), TEXT),
        "payload_json": JSON_TEXT,
        "dag_json": DAG_JSON,
        "model": st.one_of(st.sampled_from(MODELS), TEXT),
        "since": st.one_of(st.sampled_from(["", "90s", "1h30m", "2026-01-02T03:04:05Z"]), TEXT),
    }


@st.composite
def plausible_dags(draw: st.DrawFn) -> str:
    """DAGs that parse and run (mock models, built-in tools), with extreme retries, timeouts,
    references and values: these reach the scheduler and the blocks, not just the parser."""
    ids = ["outline", "count", "draft", "report"][: draw(st.integers(1, 4))]
    steps = []
    for i, step_id in enumerate(ids):
        kind = draw(st.sampled_from(["llm", "tool", "transform"]))
        text = st.one_of(
            ODD_TEXT, SPECIAL_TEXT, st.just("${inputs.topic}"), st.just("${inputs.x.y.0}")
        )
        if i:
            text = st.one_of(text, st.just(f"${{steps.{ids[i - 1]}.output.text}}"))
        inputs = {
            "llm": st.fixed_dictionaries({"prompt": text}),
            "tool": st.fixed_dictionaries(
                {"tool": st.sampled_from(["echo", "word_count", "nope"]), "args": JSON_OBJECTS}
            ),
            "transform": st.one_of(
                st.fixed_dictionaries({"value": JSON_VALUES}),
                st.fixed_dictionaries({"merge": st.lists(JSON_OBJECTS, max_size=3)}),
                st.fixed_dictionaries(
                    {"concat": st.lists(st.one_of(text, JSON_VALUES), max_size=3)}
                ),
                st.fixed_dictionaries(
                    {"pick": st.fixed_dictionaries({"from": JSON_OBJECTS, "keys": JSON_VALUES})}
                ),
                JSON_OBJECTS,
            ),
        }[kind]
        step = draw(
            st.fixed_dictionaries(
                {"id": st.just(step_id), "type": st.just(kind), "inputs": inputs},
                optional={
                    "depends_on": st.lists(st.sampled_from(ids[:i] or ["outline"]), max_size=2),
                    "retry": st.fixed_dictionaries(
                        {"max_attempts": st.integers(1, 3)},
                        optional={"backoff": st.sampled_from([0, 1e-300, 0.001])},
                    ),
                    "timeout": st.sampled_from(
                        [1e-300, 0.001, 30, 1e308, math.inf, math.nan, 2**70, 10**400]
                    ),
                    "model": st.sampled_from(MODELS),
                    "env": st.dictionaries(ODD_TEXT, ODD_TEXT, max_size=2),
                },
            )
        )
        steps.append(step)
    return json.dumps({"steps": steps})


def targeted(known: Known) -> dict[str, st.SearchStrategy[Any]]:
    """Like :func:`overrides`, but only values that exist: requests that get past validation."""
    steps = st.sampled_from(known.steps)
    return {
        "event_id": st.just(known.event_id),
        "workflow_id": st.just(known.workflow_id),
        "run_id": st.sampled_from(known.runs),
        "step_id": steps,
        "from_step": steps,
        "add": steps,
        "remove": steps,
        "breakpoints": steps,
        "event_type": st.sampled_from(["greet_requested", "alert_raised"]),
        "project": st.just("fuzz"),
        "payload_json": st.one_of(
            st.fixed_dictionaries(
                {"name": TEXT}, optional={"severity": st.sampled_from(["high", "low"])}
            ),
            JSON_OBJECTS,
        ).map(json.dumps),
        "dag_json": plausible_dags(),
        "model": st.sampled_from(MODELS),
    }


FORCED = frozenset(
    {"spec", "dag_json", "run_id", "step_id", "from_step", "event_id", "event_type", "project"}
)


# --- valid-shaped messages from the betterproto2 classes ------------------------------------------

INT_RANGES = {
    "int32": (-(2**31), 2**31 - 1),
    "sint32": (-(2**31), 2**31 - 1),
    "sfixed32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "fixed32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "sint64": (-(2**63), 2**63 - 1),
    "sfixed64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
    "fixed64": (0, 2**64 - 1),
}
INT32 = st.integers(-(2**31), 2**31 - 1)
UTC = datetime.UTC
WRAPPED = {
    "StringValue": TEXT,
    "BytesValue": st.binary(max_size=64),
    "BoolValue": st.booleans(),
    "Int64Value": st.integers(*INT_RANGES["int64"]),
    "UInt64Value": st.integers(*INT_RANGES["uint64"]),
    "Int32Value": INT32,
    "UInt32Value": st.integers(*INT_RANGES["uint32"]),
    "DoubleValue": st.floats(),
    "FloatValue": st.floats(width=32),
    "Timestamp": st.datetimes(min_value=datetime.datetime(1, 1, 1), timezones=st.just(UTC)),
}


def _message_class(hint: Any) -> type:
    for arg in (hint, *typing.get_args(hint)):
        if isinstance(arg, type) and dataclasses.is_dataclass(arg):
            return arg
    raise TypeError(f"no message class in {hint!r}")


def _scalar(
    meta: Any, hint: Any, names: dict[str, Any], depth: int, force: frozenset[str]
) -> st.SearchStrategy[Any]:
    kind = meta.proto_type
    if kind == "string":
        return TEXT
    if kind == "bytes":
        return st.binary(max_size=256)
    if kind == "bool":
        return st.booleans()
    if kind in INT_RANGES:
        return st.integers(*INT_RANGES[kind])
    if kind == "double":
        return st.floats()
    if kind == "float":
        return st.floats(width=32)
    if kind == "enum":
        members = [a for a in (hint, *typing.get_args(hint)) if isinstance(a, type)]
        known = st.sampled_from(list(members[0])) if members else INT32
        return st.one_of(known, INT32)  # proto3 enums are open: any int32 goes on the wire
    if kind == "message":
        if meta.unwrap is not None:
            return WRAPPED[meta.unwrap().__name__]
        cls = _message_class(hint)
        if cls is Struct:
            return STRUCTS
        if depth >= 3:
            return st.just(cls())
        return messages(cls, names, depth + 1, force)
    raise TypeError(f"unexpected proto type {kind}")


def messages(
    cls: type, names: dict[str, Any], depth: int = 0, force: frozenset[str] = frozenset()
) -> st.SearchStrategy[Any]:
    """Instances of a betterproto2 message class: each field set or not (those named in ``force``
    always), ``names`` giving the values of the fields they name, oneofs respected."""
    hints = typing.get_type_hints(cls)
    plain: dict[str, st.SearchStrategy[Any]] = {}
    groups: dict[str, dict[str, st.SearchStrategy[Any]]] = defaultdict(dict)
    for item in dataclasses.fields(cls):
        meta = item.metadata["betterproto"]
        hint = hints[item.name]
        if item.name in names and (meta.proto_type == "string" or meta.unwrap is not None):
            values = names[item.name]
        elif meta.proto_type == "map":
            key_meta, value_meta = meta.map_meta
            value_hint = typing.get_args(hint)[1] if typing.get_args(hint) else hint
            values = st.dictionaries(
                _scalar(key_meta, Any, names, depth, force),
                _scalar(value_meta, value_hint, names, depth, force),
                max_size=4,
            )
        else:
            inner = typing.get_args(hint)[0] if meta.repeated and typing.get_args(hint) else hint
            values = _scalar(meta, inner, names, depth, force)
        if meta.repeated and meta.proto_type != "map":
            values = st.lists(values, max_size=4)
        if meta.group:
            groups[meta.group][item.name] = values
        else:
            plain[item.name] = values

    @st.composite
    def build(draw: st.DrawFn) -> Any:
        kwargs = {
            name: draw(values)
            for name, values in plain.items()
            if name in force or draw(st.booleans())
        }
        for members in groups.values():
            chosen = draw(st.sampled_from([None, *members]))
            if chosen is not None:
                kwargs[chosen] = draw(members[chosen])
        return cls(**kwargs)

    return build()


# --- malformed encodings --------------------------------------------------------------------------


@st.composite
def wire_value(draw: st.DrawFn, wire_type: int) -> bytes:
    """A value of ``wire_type`` (for a field whose declared type is some other one)."""
    if wire_type == VARINT:
        return raw_varint(draw(st.one_of(st.integers(0, 2**64 - 1), st.just(2**70))))
    if wire_type == I64:
        return draw(st.binary(min_size=8, max_size=8))
    if wire_type == I32:
        return draw(st.binary(min_size=4, max_size=4))
    if wire_type == LEN:
        payload = draw(st.binary(max_size=16))
        return raw_varint(len(payload)) + payload
    return draw(st.binary(max_size=4))  # groups, and the invalid wire types 6 and 7


WIRE_TYPES = st.integers(0, 7)
FIELD_NUMBERS = st.one_of(st.integers(1, 12), st.sampled_from([0, 2**29 - 1, 2**29, 2**32]))


@st.composite
def confused(draw: st.DrawFn, data: bytes, depth: int = 0) -> bytes:
    """``data`` (an encoding) with one field re-encoded with another wire type, possibly inside
    a nested message, or with garbage, a truncation or a lying length."""
    fields = split(data) or []
    ops = ["retype", "retype", "truncate", "lie", "garbage", "group", "overlong", "duplicate"]
    if any(f.wire_type == LEN for f in fields) and depth < 4:
        ops += ["nested", "nested"]
    op = draw(st.sampled_from(ops))
    if op == "retype":
        known = sorted({f.number for f in fields})
        number = draw(st.sampled_from(known) if known and draw(st.booleans()) else FIELD_NUMBERS)
        declared = {f.wire_type for f in fields if f.number == number}
        wire_type = draw(WIRE_TYPES.filter(lambda w: w not in declared))
        kept = b"".join(data[f.start : f.end] for f in fields if f.number != number)
        field_bytes = tag(number, wire_type) + draw(wire_value(wire_type))
        at = draw(st.integers(0, len(kept)))
        # at a field boundary when possible, else anywhere
        boundaries = [0, *[f.end - f.start for f in fields]]
        if fields and draw(st.booleans()):
            at = sum(draw(st.sampled_from([boundaries[: i + 1] for i in range(len(boundaries))])))
            at = min(at, len(kept))
        return kept[:at] + field_bytes + kept[at:]
    if op == "nested":
        target = draw(st.sampled_from([f for f in fields if f.wire_type == LEN]))
        inner = draw(confused(data[target.value_start : target.end], depth + 1))
        return data[: target.start] + length_delimited(target.number, inner) + data[target.end :]
    if op == "truncate":
        return data[: draw(st.integers(0, max(0, len(data) - 1)))]
    if op == "lie":
        size = draw(st.integers(0, 64))
        payload = draw(st.binary(min_size=size, max_size=size))
        claim = draw(
            st.sampled_from([size + 1, size + 1_000, 2**31 - 1, 2**31, 2**32 + size, 2**63, MASK64])
            | st.integers(0, max(0, size - 1))
        )
        number = draw(FIELD_NUMBERS)
        return data + tag(number, LEN) + raw_varint(claim) + payload
    if op == "garbage":
        at = draw(st.integers(0, len(data)))
        return data[:at] + draw(st.binary(min_size=1, max_size=32)) + data[at:]
    if op == "group":
        number = draw(FIELD_NUMBERS)
        other = draw(FIELD_NUMBERS)
        shape = draw(st.sampled_from(["open", "close", "mismatch", "deep"]))
        if shape == "open":
            return data + tag(number, SGROUP)
        if shape == "close":
            return data + tag(number, EGROUP)
        if shape == "mismatch":
            return data + tag(number, SGROUP) + tag(other, EGROUP)
        depth_ = draw(st.integers(1, 20_000))
        return data + tag(number, SGROUP) * depth_ + tag(number, EGROUP) * depth_
    if op == "overlong":
        number = draw(FIELD_NUMBERS)
        return data + tag(number, VARINT) + b"\xff" * draw(st.integers(10, 40)) + b"\x01"
    # duplicate: the same field twice, the second copy with another wire type
    number = draw(st.sampled_from(sorted({f.number for f in fields}) or [1]))
    return data + tag(number, VARINT) + b"\x01" + tag(number, LEN) + b"\x01x"


# Deep google.protobuf.Struct / Value nesting on the wire (too deep for the Python encoder).
def deep_struct(depth: int, via_list: bool) -> bytes:
    body = length_delimited(2, tag(2, I64) + b"\x00" * 8)  # a map entry's value: number 0.0
    struct = length_delimited(1, length_delimited(1, b"k") + body)
    for _ in range(depth):
        if via_list:  # Value{list_value: ListValue{values: [Value{struct_value: ...}]}}
            value = length_delimited(6, length_delimited(1, length_delimited(5, struct)))
        else:  # Value{struct_value: ...}
            value = length_delimited(5, struct)
        struct = length_delimited(1, length_delimited(1, b"k") + length_delimited(2, value))
    return struct


def struct_paths(cls: type, prefix: tuple[int, ...] = ()) -> list[tuple[int, ...]]:
    """Field-number paths (up to two levels) of the Struct fields of a request."""
    hints = typing.get_type_hints(cls)
    found = []
    for item in dataclasses.fields(cls):
        meta = item.metadata["betterproto"]
        if meta.proto_type != "message" or meta.unwrap is not None:
            continue
        hint = hints[item.name]
        cls_ = _message_class(typing.get_args(hint)[0] if meta.repeated else hint)
        if cls_ is Struct:
            found.append((*prefix, meta.number))
        elif not prefix:
            found += struct_paths(cls_, (meta.number,))
    return found


# --- request bodies -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Body:
    """Request bytes, with how they were made; the repr stays short for 300 KB bodies."""

    kind: str
    data: bytes

    def __repr__(self) -> str:
        more = " …" if len(self.data) > 40 else ""
        return f"Body({self.kind}, {len(self.data)} bytes: {self.data[:40].hex(' ')}{more})"


RESEARCH_DAG = (Path(__file__).resolve().parents[2] / "examples" / "research.dag.json").read_text()


@st.composite
def deep_structs(draw: st.DrawFn, base: st.SearchStrategy[bytes], paths: list) -> bytes:
    """A valid message plus a Struct field nested hundreds or thousands of levels deep."""
    path = draw(st.sampled_from(paths))
    payload = deep_struct(draw(st.integers(50, 5_000)), via_list=draw(st.booleans()))
    for number in reversed(path):
        payload = length_delimited(number, payload)
    if len(path) == 2 and draw(st.booleans()):  # give a nested spec a real DAG too
        payload = length_delimited(path[0], length_delimited(1, RESEARCH_DAG.encode())) + payload
    return draw(base) + payload


def bodies(rpc: Rpc, known: Known) -> st.SearchStrategy[Body]:
    valid = messages(rpc.request, overrides(known)).map(bytes)
    kinds = [
        st.binary(max_size=256).map(lambda d: Body("random", d)),
        valid.map(lambda d: Body("valid", d)),
        messages(rpc.request, targeted(known), force=FORCED).map(
            lambda m: Body("targeted", bytes(m))
        ),
        valid.flatmap(confused).map(lambda d: Body("malformed", d)),
    ]
    paths = struct_paths(rpc.request)
    if paths:
        kinds.append(deep_structs(valid, paths).map(lambda d: Body("deep-struct", d)))
    return st.one_of(kinds)


# --- the daemon under fuzz ------------------------------------------------------------------------


@dataclass
class Outcome:
    code: grpc.StatusCode
    details: str
    elapsed: float
    replies: int = 0
    bad_reply: str = ""


@dataclass
class Results:
    """What ``make fuzz`` prints: examples, per-RPC status counts, slowest calls, failures."""

    started: float = field(default_factory=time.monotonic)
    counts: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    slowest: dict[str, tuple[float, str]] = field(default_factory=dict)
    failures: dict[tuple[str, str], Body] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def record(self, rpc: Rpc, body: Body, outcome: Outcome) -> None:
        self.counts[rpc.name][outcome.code.name] += 1
        if outcome.elapsed > self.slowest.get(rpc.name, (0.0, ""))[0]:
            self.slowest[rpc.name] = (outcome.elapsed, repr(body))

    def fail(self, rpc: Rpc, body: Body, problem: str) -> None:
        key = (rpc.name, problem[:160])
        if key not in self.failures or len(body.data) < len(self.failures[key].data):
            self.failures[key] = body

    def report(self) -> str:
        total = sum(sum(c.values()) for c in self.counts.values())
        overall: Counter[str] = sum(self.counts.values(), Counter())
        lines = [
            f"fuzz summary: {total} calls over {len(self.counts)} RPCs in "
            f"{time.monotonic() - self.started:.1f}s (FOUNDRY_FUZZ_EXAMPLES={EXAMPLES}, "
            f"{sum(PER_RPC.values())} generated examples, SubmitRun {PER_RPC['SubmitRun']})",
            "  all RPCs: " + ", ".join(f"{k}={v}" for k, v in overall.most_common()),
        ]
        for name in RPCS:
            if name in self.counts:
                counts = ", ".join(f"{k}={v}" for k, v in self.counts[name].most_common())
                slow, body = self.slowest.get(name, (0.0, ""))
                lines.append(f"  {name:<19} {counts}  (slowest {slow:.2f}s: {body})")
        lines += [f"  reproducer {k}: {v:.3f}s" for k, v in self.timings.items()]
        lines.append(f"  distinct failures: {len(self.failures)}")
        lines += [
            f"    {name}: {problem} <- {body!r}" for (name, problem), body in self.failures.items()
        ]
        return "\n".join(lines)


RESULTS = Results()


class Harness:
    """One daemon, a grpcio channel to it, and the checks every fuzzed call goes through."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.deaths: list[str] = []
        self._stderr_mark = len(daemon.stderr())
        self._channel: grpc.Channel | None = None
        self._address = ""

    def channel(self) -> grpc.Channel:
        if self._channel is None or self._address != self.daemon.address:
            self.close()
            options = [
                ("grpc.max_receive_message_length", -1),
                ("grpc.max_send_message_length", -1),
            ]
            self._channel = grpc.insecure_channel(self.daemon.address, options=options)
            self._address = self.daemon.address
        return self._channel

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def call(self, rpc: Rpc, data: bytes) -> Outcome:
        start = time.monotonic()
        replies: list[bytes] = []
        try:
            if rpc.streaming:
                stream = self.channel().unary_stream(rpc.path)(data, timeout=STREAM_DEADLINE)
                for message in stream:
                    replies.append(message)
                    if len(replies) >= STREAM_MESSAGES:
                        stream.cancel()
                        break
                code, details = stream.code(), stream.details() or ""
            else:
                replies.append(self.channel().unary_unary(rpc.path)(data, timeout=CALL_TIMEOUT))
                code, details = grpc.StatusCode.OK, ""
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details() or ""
        outcome = Outcome(code, details, time.monotonic() - start, len(replies))
        for reply in replies:
            try:
                rpc.reply.parse(reply)
            except Exception as exc:  # any parse failure is the finding
                outcome.bad_reply = f"{type(exc).__name__}: {exc}"
        return outcome

    def unary(self, rpc: str, message: Any, timeout: float = CALL_TIMEOUT) -> Any:
        method = self.channel().unary_unary(RPCS[rpc].path)
        return RPCS[rpc].reply.parse(method(bytes(message), timeout=timeout))

    def serving(self, timeout: float = 5.0) -> str:
        """ "" when a normal Emit + Status work, else what went wrong."""
        try:
            emitted = self.unary(
                "Emit",
                foundry_api.EmitRequest(event_type="greet_requested", project="fuzz-health"),
                timeout,
            )
            reply = self.unary(
                "Status", foundry_api.StatusRequest(workflow_id=emitted.workflow_id), timeout
            )
        except grpc.RpcError as exc:
            return f"{exc.code().name}: {exc.details()}"
        if [w.workflow_id for w in reply.workflows] != [emitted.workflow_id]:
            return f"Status of {emitted.workflow_id} answered {reply}"
        return ""

    def stderr(self) -> str:
        """What the current daemon process logged (the file is shared by restarts)."""
        return self.daemon.stderr()[self._stderr_mark :]

    def last_error(self) -> str:
        """The last exception line the daemon logged (what killed it, usually)."""
        pattern = re.compile(r"^[\s|+-]*([\w.]+(Error|Exception|Exit|Interrupt)\b.*)")
        errors = [m.group(1) for m in map(pattern.match, self.stderr().splitlines()) if m]
        return errors[-1][:200] if errors else "no exception in its log"

    def stderr_tail(self, lines: int = 25) -> str:
        return "\n".join(self.stderr().splitlines()[-lines:])[-3_000:]

    def restart(self, why: str) -> None:
        self.deaths.append(why)
        self.close()
        if self.daemon.process is not None:
            self.daemon.kill()
        self._stderr_mark = len(self.daemon.stderr())
        self.daemon.start()

    def check(self, rpc: Rpc, body: Body) -> Outcome:
        """Send ``body``; fail (after reviving the daemon) on a forbidden status, a hang, an
        undecodable reply, or a dead or wedged daemon."""
        outcome = self.call(rpc, body.data)
        RESULTS.record(rpc, body, outcome)
        problems = []
        if outcome.code not in rpc.allowed():
            problems.append(f"status {outcome.code.name}: {outcome.details[:300]}")
        if outcome.bad_reply:
            problems.append(f"undecodable {rpc.reply.__name__}: {outcome.bad_reply[:200]}")
        process = self.daemon.process
        assert process is not None
        broken = ""
        if process.poll() is None and outcome.code in SUSPICIOUS:
            broken = self.serving()
            if broken:  # a dying daemon closes its socket before it exits: give it a moment
                with suppress(subprocess.TimeoutExpired):
                    process.wait(3)
        exit_code = process.poll()
        if exit_code is not None:
            problems.append(
                f"daemon died (exit {exit_code}, {self.last_error()}); stderr tail:\n"
                + self.stderr_tail()
            )
            self.restart(f"{rpc.name} {body!r}: died (exit {exit_code}, {self.last_error()})")
        elif broken:
            problems.append(f"daemon stopped serving ({broken})")
            self.restart(f"{rpc.name} {body!r}: wedged ({broken})")
        for problem in problems:
            RESULTS.fail(rpc, body, problem.splitlines()[0])
        if problems:
            raise AssertionError(
                f"{rpc.name} {body!r} after {outcome.elapsed:.2f}s: " + "; ".join(problems)
            )
        return outcome

    def seed(self) -> Known:
        """A finished workflow, a finished run and a run paused at a breakpoint."""
        r = runtime_api
        emitted = self.unary(
            "Emit", foundry_api.EmitRequest(event_type="greet_requested", project="fuzz")
        )
        runs = []
        for breakpoints, until in (
            ([], r.RunStatus.SUCCEEDED),
            (["draft"], r.RunStatus.PAUSED_AT_STEP),
        ):
            spec = r.RunSpec(
                dag_json=RESEARCH_DAG,
                inputs=Struct.from_dict({"topic": "fuzz"}),
                seed=7,
                breakpoints=breakpoints,
            )
            run_id = self.unary("SubmitRun", r.SubmitRunRequest(spec=spec)).run_id
            wait_until(
                lambda run_id=run_id, until=until: (
                    self.unary("GetRun", r.GetRunRequest(run_id=run_id)).run.status == until
                ),
                what=f"run {run_id} to reach {until.name}",
            )
            runs.append(run_id)
        return Known(emitted.event_id, emitted.workflow_id, tuple(runs))


@pytest.fixture(scope="module")
def harness(shared_daemon: Callable[..., Daemon]) -> Iterator[Harness]:
    harness = Harness(shared_daemon())
    harness.known = harness.seed()  # type: ignore[attr-defined]
    try:
        yield harness
    finally:
        harness.close()
        print("\n" + RESULTS.report())


# --- the tests ------------------------------------------------------------------------------------


def _submit(dag_json: str) -> bytes:
    return bytes(runtime_api.SubmitRunRequest(spec=runtime_api.RunSpec(dag_json=dag_json)))


REPRODUCERS = {
    "Emit-08-01": ("Emit", bytes.fromhex("0801")),
    "Trace-08-01": ("Trace", bytes.fromhex("0801")),
    "Status-08-01": ("Status", bytes.fromhex("0801")),
    "Watch-08-01": ("Watch", bytes.fromhex("0801")),
    "SubmitRun-0a-02-08-01": ("SubmitRun", bytes.fromhex("0a020801")),
    "SubmitRun-dag_json-1000-brackets": (
        "SubmitRun",
        _submit('{"steps":' + "[" * 1000 + "]" * 1000 + "}"),
    ),
    "Status-1MB-workflow_id": (
        "Status",
        bytes(foundry_api.StatusRequest(workflow_id="x" * 1_000_000)),
    ),
    "GetRun-08-01-after-a-run": ("GetRun", bytes.fromhex("0801")),
    # found by this fuzzer: a step timeout no float can hold
    "SubmitRun-timeout-1e400-int": (
        "SubmitRun",
        _submit('{"steps": [{"id": "a", "type": "transform", "timeout": 1' + "0" * 400 + "}]}"),
    ),
}


# Tried on every RPC before the generated bodies: wire-type confusion at the top level and one
# level down, truncations, a lone group tag, an invalid wire type, an overlong varint.
EXPLICIT = [
    bytes.fromhex(h)
    for h in (
        "", "0801", "0800", "0a020801", "12020801", "1a020801", "2a020801", "0a0a0a080801",
        "0a", "0a05", "0aff", "0b", "0c", "0e", "0f", "08ffffffffffffffffffff01", "0d00",
        "0900", "ff",
    )
]  # fmt: skip


@pytest.mark.parametrize(("rpc_name", "data"), REPRODUCERS.values(), ids=REPRODUCERS.keys())
def test_known_reproducer(harness, rpc_name, data):
    body = Body("reproducer", data)
    started = time.monotonic()
    outcome = harness.check(RPCS[rpc_name], body)
    RESULTS.timings[f"{rpc_name} {body!r}"] = elapsed = time.monotonic() - started
    assert elapsed < QUICK, f"{rpc_name} answered {outcome.code.name} only after {elapsed:.2f}s"
    assert not harness.serving()


@pytest.mark.parametrize("rpc_name", list(RPCS))
def test_fuzz(harness, rpc_name):
    rpc = RPCS[rpc_name]
    deaths = len(harness.deaths)

    @settings(FUZZ, max_examples=PER_RPC[rpc_name])
    @given(body=bodies(rpc, harness.known))
    def fuzz_one(body: Body) -> None:
        harness.check(rpc, body)

    for data in EXPLICIT:
        fuzz_one = example(body=Body("explicit", data))(fuzz_one)

    fuzz_one()
    assert harness.deaths[deaths:] == []
    assert harness.daemon.process.poll() is None
    assert not harness.serving()


def test_daemon_survived_the_fuzzing(harness):
    assert harness.deaths == [], "\n".join(harness.deaths)
    assert harness.daemon.process.poll() is None
    assert not harness.serving()
