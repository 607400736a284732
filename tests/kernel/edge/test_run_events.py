"""TapRun's RunEvents serialized by upb (``runtime_service.serialized_run_event``) against the
betterproto2 message ``run_event`` defines: the same message for any JSON payload."""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from foundry.kernel.core.runs import RunEventRecord
from foundry.kernel.edge.grpc.runtime_service import (
    encoded_run_event,
    run_event,
    serialized_run_event,
)
from foundry.proto import runtime_api as api
from hypothesis import given
from hypothesis import strategies as st

from tests.helpers import JSON

AT = datetime(2026, 12, 2, 1, 2, 3, 456789, tzinfo=UTC)


def event(payload: dict[str, Any], at: datetime = AT, seq: int = 7) -> RunEventRecord:
    return RunEventRecord("run_0123", seq, "s01", "step_completed", payload, at)


def same_as_betterproto(record: RunEventRecord) -> None:
    """The same message on the wire (a Struct's entries may come in another order)."""
    ours = api.RunEvent.parse(serialized_run_event(record))
    theirs = api.RunEvent.parse(bytes(run_event(record)))
    assert ours == theirs
    assert ours.to_dict() == theirs.to_dict()


@given(st.dictionaries(st.text(), JSON, max_size=6))
def test_any_json_payload_makes_the_same_message(payload: dict[str, Any]) -> None:
    same_as_betterproto(event(payload))


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"span_id": "00f067aa0ba902b7", "attempt": 1, "output": {"n": 3, "ok": True}},
        {"span_id": 5, "error": None, "usage": {"cost": 0.25}, "artifacts": []},
        {"big": 2**62 + 1, "neg": -0.0, "text": "é\u2028\x00", "nested": [[{"a": [None]}]]},
    ],
)
def test_step_event_payloads_make_the_same_message(payload: dict[str, Any]) -> None:
    same_as_betterproto(event(payload))


def test_the_instant_is_the_same_in_any_zone() -> None:
    plus_two = AT.astimezone(timezone(timedelta(hours=2)))
    assert serialized_run_event(event({}, plus_two)) == serialized_run_event(event({}))
    same_as_betterproto(event({}, plus_two))


def test_what_betterproto_refuses_is_still_refused() -> None:
    with pytest.raises(ValueError, match="timezone aware"):
        serialized_run_event(event({}, AT.replace(tzinfo=None)))
    with pytest.raises(ValueError, match="Unknown value type"):
        serialized_run_event(event({"x": object()}))
    with pytest.raises(struct.error, match="not a float"):  # an int beyond a double
        serialized_run_event(event({"huge": 10**400}))


def test_an_event_is_serialized_once_for_every_tapper() -> None:
    record = event({"n": 1}, seq=10_001)
    first = encoded_run_event(record)
    assert encoded_run_event(record) is first
