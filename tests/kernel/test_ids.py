import hashlib
from datetime import UTC, datetime, timedelta, timezone

import foundry.kernel.core.ids as ids
from foundry.kernel.core.ids import (
    Clock,
    compact_json,
    event_id,
    event_id_of_json,
    is_event_id,
    rfc3339,
)

INSTANT = datetime(2026, 11, 22, 7, 3, 52, 123456, tzinfo=UTC)


def _expected(material: str) -> str:
    return "evt_" + hashlib.sha256(material.encode()).hexdigest()[:24]


def test_event_id_is_the_public_daemons_recipe():
    payload = {"name": "Ada", "count": 2, "nested": {"z": 1, "a": [1, 2]}}

    got = event_id("greet_requested", "acme", INSTANT, payload)

    material = (
        "greet_requested"
        "acme"
        "2026-11-22T07:03:52.123456+00:00"
        '{"count":2,"name":"Ada","nested":{"a":[1,2],"z":1}}'
    )
    assert got == _expected(material)
    assert len(got) == 4 + 24
    assert is_event_id(got)


def test_event_id_converts_the_instant_to_utc():
    plus_two = timezone(timedelta(hours=2))
    same_instant = INSTANT.astimezone(plus_two)

    assert rfc3339(same_instant) == "2026-11-22T07:03:52.123456+00:00"
    assert event_id("t", "p", same_instant, {}) == event_id("t", "p", INSTANT, {})


def test_key_order_does_not_change_the_id():
    assert compact_json({"b": 1, "a": 2}) == '{"a":2,"b":1}'
    assert event_id("t", "p", INSTANT, {"b": 1, "a": 2}) == event_id(
        "t", "p", INSTANT, {"a": 2, "b": 1}
    )
    assert event_id_of_json("t", "p", INSTANT, '{"a":2,"b":1}') == event_id(
        "t", "p", INSTANT, {"a": 2, "b": 1}
    )


def test_every_part_of_the_material_changes_the_id():
    base = event_id("t", "p", INSTANT, {"a": 1})
    variants = {
        event_id("u", "p", INSTANT, {"a": 1}),
        event_id("t", "q", INSTANT, {"a": 1}),
        event_id("t", "p", INSTANT + timedelta(microseconds=1), {"a": 1}),
        event_id("t", "p", INSTANT, {"a": 2}),
    }
    assert base not in variants
    assert len(variants) == 4


def test_is_event_id_rejects_lookalikes():
    good = event_id("t", "p", INSTANT, {})
    assert is_event_id(good)
    assert not is_event_id(good.upper())
    assert not is_event_id(good[:-1])
    assert not is_event_id("wf_" + good[4:] + "0")
    assert not is_event_id("evt_" + "g" * 24)


def test_clock_readings_strictly_increase():
    clock = Clock()
    readings = [clock.now() for _ in range(2_000)]

    assert all(a < b for a, b in zip(readings, readings[1:], strict=False))
    assert all(r.tzinfo is not None and r.utcoffset() == timedelta(0) for r in readings)


def test_clock_increases_even_when_the_wall_clock_stands_still_or_goes_back(monkeypatch):
    frozen = [INSTANT]

    class FrozenDatetime(datetime):
        @classmethod
        def now(cls, tz=None):
            return frozen[0]

    monkeypatch.setattr(ids, "datetime", FrozenDatetime)
    clock = Clock()

    first, second = clock.now(), clock.now()
    frozen[0] = INSTANT - timedelta(seconds=5)
    third = clock.now()

    assert first == INSTANT
    assert second == INSTANT + timedelta(microseconds=1)
    assert third == INSTANT + timedelta(microseconds=2)
    # identical emits in one instant still get distinct ids
    assert event_id("t", "p", first, {}) != event_id("t", "p", second, {})
