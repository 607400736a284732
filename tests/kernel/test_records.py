"""Records: a recorded payload's copies (what the engine hands on is what its JSON says, and
nobody's change to a copy reaches the record), and the engine's quick constructors."""

from __future__ import annotations

import dataclasses
import enum
import json
import pickle
from datetime import UTC, datetime

import pytest
from foundry.kernel.core.ids import payload_json_of
from foundry.kernel.core.records import (
    Event,
    FinishedChain,
    decoded,
    new_event,
    new_finished,
    quick,
)
from foundry.kernel.core.throttle import Throttle


class Colour(enum.StrEnum):
    RED = "red"


class Size(enum.IntEnum):
    LARGE = 3


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"i": 1, "step": "a", "ok": True, "none": None, "x": 1.5, "z": -0.0, "big": 1e16},
        {"edge": 2**64 - 1, "low": -(2**63)},
        {"too_big": 2**64},  # JSON carries it as a float
        {"too_low": -(2**63) - 1},
        {"nested": {"a": [1, 2]}},
        {"list": [1, "a"]},
        {"tuple": (1, 2)},  # a list in JSON
        {1: "int key"},  # a text key in JSON
        {"enum": Colour.RED},  # plain text in JSON
        {"enum": Size.LARGE},  # a plain integer in JSON
        {"flag": True, "n": 0},
        {"b": 1, "a": 2, "é": 3, "z": 4, "😀": 5, "\uffff": 6},  # sorted as the JSON is
    ],
)
def test_decoded_is_what_the_json_says_value_and_type(payload):
    text = payload_json_of(payload)
    copy = decoded(payload, text)
    expected = json.loads(text)
    assert list(copy.items()) == list(expected.items())  # in the same order
    assert [type(v) for v in copy.values()] == [type(v) for v in expected.values()]
    assert [type(k) for k in copy] == [type(k) for k in expected]
    assert payload_json_of(copy) == text


def test_decoded_is_a_copy_its_receiver_may_change():
    payload = {"i": 1, "step": "a"}
    copy = decoded(payload, payload_json_of(payload))
    copy["i"] = 2
    assert payload == {"i": 1, "step": "a"}
    nested = {"inner": {"i": 1}}
    deep = decoded(nested, payload_json_of(nested))
    deep["inner"]["i"] = 2
    assert nested == {"inner": {"i": 1}}


def test_quick_makes_the_same_frozen_record_as_the_class():
    at = datetime(2026, 11, 22, 7, 3, 52, 123456, tzinfo=UTC)
    args = ("evt_1", "tick", "p", at, at, Throttle.FULL, "evt_1", {"n": 1}, '{"n":1}')
    made, plain = (
        new_event(*args, depth=2, trace_id="t" * 32),
        Event(*args, depth=2, trace_id="t" * 32),
    )
    assert type(made) is Event
    assert made == plain
    assert repr(made) == repr(plain)
    assert (made.parent_id, made.span_id) == ("", "")  # the class's defaults
    assert pickle.loads(pickle.dumps(made)) == plain
    assert dataclasses.replace(made, depth=3) == dataclasses.replace(plain, depth=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.depth = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        new_event(*args, colour="red")  # checked as the class's own constructor
    chain = new_finished("w", "tick", "p", Throttle.FULL, "completed", "", at, at, 3, 3, None)
    assert chain == FinishedChain(
        "w", "tick", "p", Throttle.FULL, "completed", "", at, at, 3, 3, None
    )
    assert hash(chain) == hash(
        FinishedChain("w", "tick", "p", Throttle.FULL, "completed", "", at, at, 3, 3, None)
    )


def test_quick_refuses_a_class_it_cannot_make():
    @dataclasses.dataclass(frozen=True)  # no slots: nothing to share with a twin
    class Plain:
        x: int

    with pytest.raises(TypeError):
        quick(Plain)
