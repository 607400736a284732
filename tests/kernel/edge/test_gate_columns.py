"""The diffs of a CheckChangeGateRequest read as columns by upb (kernel/edge/grpc/gate_columns.py):
the same GateRequest, and the same decision, as betterproto2's diff-at-a-time conversion, for
every shape of diff (zeros, empty strings, missing, zero and NaN scores, tags or none) and for
bytes that are not canonical (a field sent twice)."""

from __future__ import annotations

import math
import random
import struct

import pytest
from foundry.kernel.core.gate_policy import GatePolicy, LazyColumn, decide
from foundry.kernel.edge.grpc import gate_columns
from foundry.kernel.edge.grpc.fastproto import upb_class
from foundry.kernel.errors import InvalidArgument
from foundry.proto import runtime_api as api

from tests.kernel.edge.test_fastproto import fast, slow


def diff(i: int, **fields):
    return api.ChangeDiff(path=f"src/f{i}.py", **fields)


SHAPES = {
    "every field": [
        diff(
            i,
            lines_added=i + 1,
            lines_deleted=2,
            novelty_score=0.1 * (i + 1),
            risk_tags=["ui"],
            component="web",
        )
        for i in range(5)
    ],
    "zeros and empties": [
        diff(
            i,
            lines_added=i % 2,
            lines_deleted=(i + 1) % 2,
            novelty_score=0.3,
            component="web" if i % 3 else "",
        )
        for i in range(6)
    ],
    "some scores missing": [diff(i, novelty_score=0.2 if i % 2 else None) for i in range(6)],
    "high scores, some missing": [
        diff(i, novelty_score=(0.95, None, 0.75)[i % 3]) for i in range(7)
    ],
    "a zero score": [diff(0, novelty_score=0.0), diff(1, novelty_score=0.5), diff(2)],
    "nan and negative zero": [
        diff(0, novelty_score=math.nan),
        diff(1, novelty_score=-0.0),
        diff(2, novelty_score=0.85),
    ],
    "tags on some": [diff(i, risk_tags=["auth", "ui"][: i % 3]) for i in range(6)],
    "an empty path": [diff(0, novelty_score=0.5), api.ChangeDiff(lines_added=3)],
    "one diff": [diff(0)],
    "none": [],
}


@pytest.mark.parametrize("shape", SHAPES)
def test_columns_read_as_betterproto2_reads_each_diff(shape):
    data = bytes(api.CheckChangeGateRequest(change_id="c", diffs=SHAPES[shape]))
    request, expected = fast(data), slow(data)
    policy = GatePolicy()  # decided first: repr reads every lazy column
    assert repr(decide(request, policy)) == repr(decide(expected, policy))
    assert repr(request) == repr(expected)  # repr: a NaN is not equal to itself
    assert repr(list(request.diffs)) == repr(list(expected.diffs))


def test_a_field_sent_twice_counts_once():
    # diff 1 sends its path and its score twice (the last wins), diff 2 has neither: columns
    # of the bytes as sent would line up wrongly, so the canonical bytes are read.
    first = b"\x0a\x01a" + b"\x0a\x01b" + _score(0.75) + _score(0.95)
    second = b"\x10\x05"
    data = b"\x0a\x01c" + _field(3, first) + _field(3, second)
    assert fast(data) == slow(data)
    assert fast(data).diffs.paths == ("b", "")
    assert fast(data).diffs.novelty_scores == (0.95, None)


def test_a_score_on_some_diffs_is_placed_only_when_a_rule_needs_it():
    diffs = [diff(i, novelty_score=0.25 if i % 2 else None, lines_added=i) for i in range(4)]
    data = bytes(api.CheckChangeGateRequest(change_id="c", diffs=diffs))
    columns = fast(data).diffs
    assert isinstance(columns._novelty_scores, LazyColumn)
    assert columns._novelty_scores.scores == (0.25, 0.25)
    assert isinstance(columns._lines_added, LazyColumn)  # diff 0 sent no lines_added
    assert columns.novelty_scores == (None, 0.25, None, 0.25)  # read as a tuple
    assert columns.lines_added == (0, 1, 2, 3)


@pytest.mark.parametrize(
    ("field", "message", "number"),
    [("diffs", "ChangeDiff", gate_columns.DIFFS_FIELD),
     ("evals", "EvalMetric", gate_columns.EVALS_FIELD)],
)  # fmt: skip
def test_the_view_declares_every_field_of_the_messages(field, message, number):
    view = gate_columns.view_class().DESCRIPTOR.fields_by_name[field]
    real = upb_class(message).DESCRIPTOR
    assert {f.name: f.number for f in view.message_type.fields} == {
        f.name: f.number for f in real.fields
    }
    assert view.number == number
    assert upb_class("CheckChangeGateRequest").DESCRIPTOR.fields_by_name[field].number == number


def metric(i: int, **fields):
    return api.EvalMetric(name=f"m{i}", **fields)


METRICS = {
    "every field": [
        metric(
            i,
            slug="s",
            score=0.5,
            threshold=0.7,
            direction=api.MetricDirection(1 + i % 2),
            weight=2.0,
        )
        for i in range(4)
    ],
    "zeros and missing": [
        metric(
            i,
            slug="s" if i % 2 else "",
            score=i % 2 * 0.5,
            threshold=(0.7, 0.0, None)[i % 3],
            weight=(None, 1.0)[i % 2],
        )
        for i in range(6)
    ],
    "nan": [metric(0, score=math.nan, threshold=math.nan, weight=-0.0)],
    "an empty name": [metric(0), api.EvalMetric(score=1.0)],
    "none": [],
}


@pytest.mark.parametrize("shape", METRICS)
def test_metric_columns_read_as_betterproto2_reads_each_metric(shape):
    data = bytes(api.CheckChangeGateRequest(change_id="c", evals=METRICS[shape]))
    assert repr(fast(data).evals) == repr(slow(data).evals)


def test_an_unknown_direction_is_named_with_its_index():
    evals = [metric(0, direction=api.MetricDirection(1)), metric(1)]
    data = bytes(api.CheckChangeGateRequest(change_id="c", evals=evals))
    data += _field(5, b"\x0a\x01z" + b"\x28\x07")  # a third metric, direction 7
    with pytest.raises(InvalidArgument, match=r"evals\[2\]\.direction: unknown MetricDirection 7"):
        fast(data)


def _score(value: float) -> bytes:
    return _field(4, b"\x09" + struct.pack("<d", value))


def _field(number: int, payload: bytes) -> bytes:
    assert len(payload) < 128
    return bytes([number << 3 | 2, len(payload)]) + payload


def test_random_requests_read_as_betterproto2_reads_them():
    rng = random.Random(11)

    def maybe(value):
        return value if rng.random() < 0.6 else None

    for _ in range(150):
        diffs = [
            api.ChangeDiff(
                path=rng.choice(["", "a.py", "src/auth/x.py", "db/1.sql", "ü/\0.py"]),
                lines_added=rng.choice([0, 1, 300]), lines_deleted=rng.choice([0, 2]),
                novelty_score=maybe(rng.choice([0.0, 0.5, 0.75, 0.95, math.nan])),
                risk_tags=rng.sample(["ui", "auth", "", "DB"], rng.randrange(3)),
                component=rng.choice(["", "web"]),
            )
            for _ in range(rng.randrange(12))
        ]  # fmt: skip
        evals = [
            api.EvalMetric(
                name=rng.choice(["", "m"]), slug=rng.choice(["", "s"]),
                score=rng.choice([0.0, 0.5]), threshold=maybe(rng.choice([0.0, 0.7])),
                direction=api.MetricDirection(rng.randrange(3)), weight=maybe(1.0),
            )
            for _ in range(rng.randrange(5))
        ]  # fmt: skip
        data = bytes(api.CheckChangeGateRequest(change_id="c", diffs=diffs, evals=evals))
        request, expected = fast(data), slow(data)
        # decided first: repr reads every lazy column
        assert repr(decide(request, GatePolicy())) == repr(decide(expected, GatePolicy()))
        assert repr(request) == repr(expected)
