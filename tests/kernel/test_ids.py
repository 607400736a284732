import hashlib
import json
import math
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import foundry.kernel.core.ids as ids
import pytest
from foundry.kernel.core.ids import (
    Clock,
    compact_json,
    event_id,
    event_id_of_json,
    is_event_id,
    occurred_stamp,
    payload_json_of,
    rfc3339,
)
from foundry.kernel.core.json_input import (
    CHARS_A_VALUE,
    JSON_VALUES_ON_LOOP,
    json_values_past,
    oversized_number,
    parse_json_object,
    text_depth,
)
from foundry.kernel.core.upstream_json import format_float, parse_number
from foundry.kernel.errors import InvalidArgument
from hypothesis import given
from hypothesis import strategies as st

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


# --- byte-identical to the public Foundry daemon (issue 14) ---------------------------------------

UPSTREAM = json.loads((Path(__file__).parent / "data" / "upstream-event-ids.json").read_text())


def _instant(case: dict) -> datetime:
    seconds, nanos = case["occurred_at_unix_seconds"], case["occurred_at_nanos"]
    assert nanos % 1000 == 0  # our clock has microseconds
    return datetime.fromtimestamp(seconds, UTC).replace(microsecond=nanos // 1000)


def _payload(text: str) -> dict:
    """As Emit reads ``payload_json`` (an empty one is ``{}``)."""
    return parse_json_object(text, "payload_json", upstream_numbers=True) if text else {}


@pytest.mark.parametrize(
    "case",
    UPSTREAM["cases"],
    ids=[f"{c['payload_json']}@{c['occurred_at_nanos']}" for c in UPSTREAM["cases"]],
)
def test_upstream_cases_hash_the_same_bytes_and_get_the_same_id(case):
    instant, payload = _instant(case), _payload(case["payload_json"])

    material = (
        case["event_type"] + case["project"] + occurred_stamp(instant) + payload_json_of(payload)
    )

    assert material.encode() == case["hashed"].encode()
    assert event_id(case["event_type"], case["project"], instant, payload) == case["event_id"]


def test_the_upstream_table_covers_the_issues_cases():
    hashed = {c["hashed"][len("greet_requestedacme") :] for c in UPSTREAM["cases"]}
    for expected in [
        "2026-11-28T07:03:52.123+00:00{}",
        '2026-11-28T07:03:52.123456+00:00{"name":"café"}',
        '2026-11-28T07:03:52.123456+00:00{"f":0.00005}',
        '2026-11-28T07:03:52.123456+00:00{"f":1e-7}',
        '2026-11-28T07:03:52.123456+00:00{"i":1e+20}',
        '2026-11-28T07:03:52.123456+00:00{"i":-0.0}',
    ]:
        assert expected in hashed


@pytest.mark.parametrize(
    ("micros", "stamp"),
    [
        (0, "2026-11-28T07:03:52+00:00"),  # whole second: no fraction
        (123000, "2026-11-28T07:03:52.123+00:00"),  # whole milliseconds: 3 digits
        (100000, "2026-11-28T07:03:52.100+00:00"),
        (1000, "2026-11-28T07:03:52.001+00:00"),
        (123456, "2026-11-28T07:03:52.123456+00:00"),  # else 6
        (100, "2026-11-28T07:03:52.000100+00:00"),
        (1, "2026-11-28T07:03:52.000001+00:00"),
        (999999, "2026-11-28T07:03:52.999999+00:00"),
    ],
)
def test_occurred_at_is_chronos_autosi_form(micros, stamp):
    instant = datetime(2026, 11, 28, 7, 3, 52, micros, tzinfo=UTC)

    assert occurred_stamp(instant) == stamp
    assert occurred_stamp(instant.astimezone(timezone(timedelta(hours=-5)))) == stamp


@pytest.mark.parametrize(
    ("value", "text"),
    [
        # strings: raw UTF-8; only '"', '\' and C0 controls escaped (named where JSON has a name)
        ({"s": "Zoë 😀 日本語"}, '{"s":"Zoë 😀 日本語"}'),
        ({"s": "\x7f\u2028\u2029"}, '{"s":"\x7f\u2028\u2029"}'),
        ({"s": "\x00\x01\x1f\b\f\n\r\t"}, '{"s":"\\u0000\\u0001\\u001f\\b\\f\\n\\r\\t"}'),
        ({"s": '"\\/'}, '{"s":"\\"\\\\/"}'),
        # keys sorted by their UTF-8 bytes, at every level
        (
            {"é": 1, "z": 2, "A": 3, "ä": 4, "😀": 5, "日": 6},
            '{"A":3,"z":2,"ä":4,"é":1,"日":6,"😀":5}',
        ),
        (
            {"b": [{"y": {"d": 1, "c": 2}, "x": []}], "a": {"k": None, "j": True, "i": False}},
            '{"a":{"i":false,"j":true,"k":null},"b":[{"x":[],"y":{"c":2,"d":1}}]}',
        ),
        # integers: as they are within i64/u64, floats beyond
        (
            {"i": 2**64 - 1, "j": -(2**63), "k": 0},
            '{"i":18446744073709551615,"j":-9223372036854775808,"k":0}',
        ),
        ({"i": 2**64}, '{"i":1.8446744073709552e+19}'),
        ({"i": -(2**63) - 1}, '{"i":-9.223372036854776e+18}'),
        ({"i": 10**20}, '{"i":1e+20}'),
        ({"t": True, "f": False}, '{"f":false,"t":true}'),  # bools are not integers
        ({}, "{}"),
        ({"l": [1, 2.5, "x", None, [], {}]}, '{"l":[1,2.5,"x",null,[],{}]}'),
        # a block's emission may have keys that are not str: sorted by their text's bytes (the
        # encoder sorted them by value, 1 2 10, and refused a mix of kinds)
        ({10: "c", 2: "b", 1: "a"}, '{"1":"a","10":"c","2":"b"}'),
        ({"n": {10: 1, 2: 2}, "b": "x"}, '{"b":"x","n":{"10":1,"2":2}}'),
        ({2: "x", "a": "y", True: "t", None: "n"}, '{"2":"x","a":"y","null":"n","true":"t"}'),
        ({-1: 1, 1.5: 2}, '{"-1":1,"1.5":2}'),
    ],
)
def test_payload_json_is_serde_jsons_compact_output(value, text):
    assert payload_json_of(value) == text


@pytest.mark.parametrize(
    ("number", "text"),
    [
        (1.0, "1.0"),
        (100.0, "100.0"),
        (-0.0, "-0.0"),
        (0.0, "0.0"),
        (0.1, "0.1"),
        (0.1 + 0.2, "0.30000000000000004"),
        (123.456, "123.456"),
        (0.0001, "0.0001"),
        (0.00001, "0.00001"),  # decimal exponent -5: still decimal
        (5e-05, "0.00005"),
        (1.5e-05, "0.000015"),
        (-5e-05, "-0.00005"),
        (9.999999999999999e-05, "0.00009999999999999999"),
        (1e-06, "1e-6"),  # decimal exponent -6: scientific, no zero padding
        (1e-07, "1e-7"),
        (-1e-07, "-1e-7"),
        (1.5e-10, "1.5e-10"),
        (5e-324, "5e-324"),
        (2.2250738585072014e-308, "2.2250738585072014e-308"),
        (1e15, "1000000000000000.0"),  # decimal exponent 15: still decimal
        (9007199254740992.0, "9007199254740992.0"),
        (1234567890123456.7, "1234567890123456.8"),
        (1e16, "1e+16"),  # 16: scientific, with a sign
        (1.5e16, "1.5e+16"),
        (1e21, "1e+21"),
        (-1e21, "-1e+21"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
    ],
)
def test_floats_are_written_as_serde_json_writes_them(number, text):
    assert format_float(number) == text
    assert payload_json_of({"f": number}) == f'{{"f":{text}}}'


@pytest.mark.parametrize(
    ("token", "value"),
    [
        ("0", 0),
        ("-0", -0.0),  # a float, as serde_json reads it
        ("1", 1),
        ("-1", -1),
        ("18446744073709551615", 2**64 - 1),
        ("18446744073709551616", 1.8446744073709552e19),
        ("-9223372036854775808", -(2**63)),
        ("-9223372036854775809", -9.223372036854776e18),
        ("100000000000000000000", 1e20),
        ("1.0", 1.0),
        ("1E2", 100.0),
        ("1e+2", 100.0),
        ("-0.0", -0.0),
        ("5e-05", 5e-05),
        ("1e-400", 0.0),
        ("-1e-400", -0.0),
        ("0e99999999999", 0.0),
        ("1e-99999999999", 0.0),
        ("123456789012345678901234.5", 1.2345678901234567e23),
    ],
)
def test_numbers_are_read_as_serde_json_reads_them(token, value):
    got = parse_number(token)

    assert type(got) is type(value)
    assert got == value
    assert math.copysign(1, got) == math.copysign(1, value)


@pytest.mark.parametrize("token", ["1e309", "-1e309", "1e99999999999", "18446744073709551616e300"])
def test_numbers_beyond_a_double_are_refused(token):
    with pytest.raises(ValueError, match="out of range"):
        parse_number(token)
    with pytest.raises(InvalidArgument, match="payload_json"):
        parse_json_object(f'{{"n":{token}}}', "payload_json", upstream_numbers=True)


def test_payload_depth_limit_is_serde_jsons_127_levels():
    def nested(levels: int) -> str:
        return '{"a":' * levels + "1" + "}" * levels

    assert parse_json_object(nested(127), "payload_json", upstream_numbers=True)
    with pytest.raises(InvalidArgument, match="payload_json: nested deeper than 127 levels"):
        parse_json_object(nested(128), "payload_json", upstream_numbers=True)  # serde: refused
    with pytest.raises(InvalidArgument, match="payload_json: nested deeper than 127 levels"):
        parse_json_object("[" * 100_000, "payload_json", upstream_numbers=True)


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ('{"a":"\\ud800","a":1}', "text must be valid Unicode (lone surrogate)"),
        ('{"a":"\\udc00","a":1}', "text must be valid Unicode (lone surrogate)"),
        ('{"a":{"\\ud800":1},"a":2}', "text must be valid Unicode (lone surrogate)"),
        ('{"a":' + "[" * 127 + "]" * 127 + ',"a":1}', "nested deeper than 127 levels"),
        ('{"a":[{"b":' + "[" * 126 + "]" * 126 + '}],"a":1}', "nested deeper than 127 levels"),
    ],
    ids=["high", "low", "in-a-key", "too-deep", "too-deep-mixed"],
)
def test_a_bad_value_under_a_key_named_twice_is_refused_as_serde_json_does(text, said):
    """json.loads keeps the last of a key named twice: what the first held was never checked,
    and Emit stored a payload the public daemon refuses (a conformance audit)."""
    with pytest.raises(InvalidArgument, match=re.escape(f"payload_json: {said}")):
        parse_json_object(text, "payload_json", upstream_numbers=True)


@pytest.mark.parametrize(
    "text",
    [
        '{"a":"\\\\ud800"}',
        '{"a":"[[[[","a":1}',
        '{"a":' + "[" * 126 + "]" * 126 + ',"a":1}',
        '{"s":"' + "[" * 300 + '"}',
        '{"a":"\\ud83d\\ude00","a":1}',
    ],
    ids=["escaped-backslash", "brackets-in-a-string", "126-deep", "many-in-a-string", "pair"],
)
def test_what_serde_json_reads_is_read_whatever_the_duplicate(text):
    assert isinstance(parse_json_object(text, "payload_json", upstream_numbers=True), dict)


@given(st.recursive(st.none() | st.text(alphabet="[]{}\\\"ab", max_size=5),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(alphabet="[{a", max_size=3), inner, max_size=3),
                    max_leaves=30))  # fmt: skip
def test_text_depth_is_the_nesting_json_loads_finds(value):
    def depth(v):
        if isinstance(v, dict):
            return 1 + max(map(depth, v.values()), default=0)
        if isinstance(v, list):
            return 1 + max(map(depth, v), default=0)
        return 0

    assert text_depth(json.dumps(value), 1_000) == depth(value)


@pytest.mark.parametrize(
    ("text", "kind"),
    [("[1]", "an array"), ('"x"', "a string"), ("1", "a number"), ("null", "null")],
)
def test_non_object_payloads_are_refused(text, kind):
    with pytest.raises(InvalidArgument, match=f"payload_json: must be a JSON object, got {kind}"):
        parse_json_object(text, "payload_json", upstream_numbers=True)


@pytest.mark.parametrize(
    "payload",
    [{1: "a", "1": "b"}, {True: 1, "true": 2}, {math.nan: 1, "a": 2}, {math.inf: 1}],
    ids=["1 and '1'", "True and 'true'", "nan key", "inf key"],
)
def test_a_payload_whose_keys_write_alike_or_are_no_number_is_refused(payload):
    """Written, two keys would be one text (which would a reader keep? its id would not be the
    id of the payload read back); NaN is no JSON."""
    with pytest.raises(ValueError, match="two keys are written|Out of range float"):
        payload_json_of(payload)


def test_payloads_upstream_cannot_hold_are_refused():
    with pytest.raises(ValueError, match="surrogates not allowed"):
        payload_json_of({"s": "\ud800"})  # a lone surrogate has no UTF-8 form
    with pytest.raises(ValueError, match="Out of range float"):
        payload_json_of({"f": float("nan")})
    with pytest.raises(ValueError, match="Out of range float"):
        payload_json_of({"f": [1.5, float("inf")]})
    with pytest.raises(TypeError):
        payload_json_of({"x": object()})


def test_compact_json_keeps_its_ascii_form_for_its_other_users():
    assert compact_json({"b": "é", "a": 5e-05}) == '{"a":5e-05,"b":"\\u00e9"}'


def test_ids_already_stored_are_not_recomputed(tmp_path):
    """An id is computed once, at emit: what reads an event back takes its stored id."""
    import foundry.kernel

    package = Path(foundry.kernel.__file__).parent
    callers = [
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if re.search(r"\bevent_id(_of_json)?\(", path.read_text())
    ]
    assert sorted(callers) == ["actors/engine/actor.py", "core/ids.py"]


finite_floats = st.floats(allow_nan=False, allow_infinity=False)


@given(finite_floats)
def test_float_text_round_trips_and_is_shortest(number):
    text = format_float(number)

    assert float(text) == number
    assert math.copysign(1, float(text)) == math.copysign(1, number)
    mantissa = text.lstrip("-").split("e")[0].replace(".", "").strip("0")
    assert len(mantissa) <= 17
    # Upstream's reader (serde_json without float_roundtrip) is within two ULPs of it: the digits
    # and the power of ten are each rounded before the one multiply or divide.
    assert abs(parse_number(text) - number) <= 2 * math.ulp(number)


json_values = st.recursive(
    # Integers beyond i64/u64 become floats, which upstream's reader need not read back exactly.
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)


@given(st.dictionaries(st.text(), json_values, max_size=5))
def test_payload_json_round_trips_through_the_upstream_reader(payload):
    try:
        text = payload_json_of(payload)
    except ValueError:  # a lone surrogate in generated text
        return
    again = parse_json_object(text, "payload_json", upstream_numbers=True)

    assert payload_json_of(again) == text  # a stored payload hashes to its own id again
    assert again == payload


@given(st.integers(0, 2**64 - 1), st.integers(-22, 22))
def test_exact_numbers_read_as_correctly_rounded(significand, exponent):
    """One multiply or divide of exact operands is correctly rounded: serde_json's reader then
    agrees with Python's (beyond 2**53 or 10**22 it can be a ULP or two off, as upstream's is)."""
    if significand > 2**53:
        significand %= 2**53
    token = f"{significand}e{exponent}"
    assert parse_number(token) == float(token)


@given(st.lists(finite_floats | st.integers(-(2**70), 2**70), max_size=5))
def test_the_fast_path_writes_what_the_walk_writes(numbers):
    """Python's own encoder is used when its text cannot differ from serde_json's: it must agree
    with the number-by-number form everywhere."""
    assert payload_json_of({"n": numbers}) == '{"n":[' + ",".join(map(_number, numbers)) + "]}"


@given(st.dictionaries(st.integers(-1000, 10**6) | st.text(max_size=4), st.integers(0, 9)))
def test_keys_are_sorted_by_their_texts_bytes_whatever_their_kind(payload):
    """As serde_json sorts the keys of an object it read (and its text is the event id's)."""
    written = payload_json_of(payload)
    keys = [str(k) for k in payload]
    if len(set(keys)) == len(keys):
        assert list(json.loads(written)) == sorted(keys, key=str.encode)


def _number(value: float | int) -> str:
    if isinstance(value, int) and -(2**63) <= value <= 2**64 - 1:
        return str(value)
    return format_float(float(value))


@given(
    st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=-7, minutes=-30))])),
    st.sampled_from([None, 0, 1000]),
)
def test_stamps_are_isoformat_of_the_utc_instant_whatever_the_seconds_seen_before(instant, micros):
    """The stamps keep the text of recent seconds: each must still be the instant's own."""
    if micros is not None:  # whole seconds and milliseconds, which change the form
        instant = instant.replace(
            microsecond=instant.microsecond // micros * micros if micros else 0
        )
    utc = instant.astimezone(UTC)
    spec = (
        "microseconds"
        if utc.microsecond % 1000
        else "milliseconds"
        if utc.microsecond
        else "seconds"
    )
    assert rfc3339(instant) == utc.isoformat()
    assert occurred_stamp(instant) == utc.isoformat(timespec=spec)


def test_stamps_of_many_seconds_in_turn():
    start = datetime(2026, 12, 31, 23, 59, 50, 1, tzinfo=UTC)
    for step in range(40):  # across a minute, an hour, a day and a year
        instant = start + timedelta(seconds=step // 2, microseconds=step * 1001)
        assert rfc3339(instant) == instant.isoformat()
        assert occurred_stamp(instant) == instant.isoformat(
            timespec="microseconds" if instant.microsecond % 1000 else "milliseconds"
        )


def test_a_number_no_double_holds_is_found_and_digits_in_text_are_not():
    assert oversized_number('{"n":' + "9" * 308 + "}") == ""  # 1e308 > 10**308 - 1: a double
    assert "past what a double holds" in oversized_number('{"n":' + "9" * 309 + "}")
    assert "(400 digits)" in oversized_number("[-" + "1" * 400 + "]")
    assert oversized_number('{"s":"' + "9" * 5_000 + '"}') == ""  # a string of digits
    assert oversized_number(json.dumps(["9" * 308] * 1_000)) == ""  # long runs, none too long


def test_json_values_past_counts_values_and_long_strings_by_their_characters():
    limit = JSON_VALUES_ON_LOOP
    assert not json_values_past(([None] * (limit - 1),))
    assert json_values_past(([None] * limit,))
    assert json_values_past(({"a": {"b": list(range(limit))}},))
    # One value each, but as costly to encode as thousands (twenty 3.9 MB outputs held the
    # loop for seconds): a string as a value, in a list, in an object, and as a key.
    long = "y" * (CHARS_A_VALUE * limit)
    for value in (long, [long], {"a": [1, {"b": long}]}, {long: 1}):
        assert json_values_past((value,)), type(value)
    assert json_values_past(["y" * (CHARS_A_VALUE * limit // 4)] * 5)  # many, together
    assert not json_values_past(({"a": "y" * (CHARS_A_VALUE * 10)}, "é" * 50_000))
    assert not json_values_past(({1: "a", "1": "b", None: [2]},))  # not JSON yet: judged later
    assert json_values_past(({1: "a", "y" * (CHARS_A_VALUE * limit): "b"},))
