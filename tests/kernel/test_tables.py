"""The store's rows: text DuckDB would refuse is refused before a write is journaled, whether
checked value by value (``table_rows``) or in the rows' pickled form (``check_encoded``)."""

from __future__ import annotations

import dataclasses
import struct
from datetime import UTC, datetime, timedelta

import pytest
from foundry.kernel.actors.store.journal import encode
from foundry.kernel.actors.store.tables import Unstorable, check_encoded, rows_in, table_rows
from foundry.kernel.core.ids import event_id, payload_json_of
from foundry.kernel.core.records import Event, FinishedChain
from foundry.kernel.core.throttle import Throttle

T0 = datetime(2026, 11, 22, 7, 3, 52, tzinfo=UTC)


def event(n: int, **changes: object) -> Event:
    at = T0 + timedelta(microseconds=n * 7919)  # microseconds of every kind of byte
    payload = {"n": n, "text": "héllo ✓ 😀"}
    eid = event_id("tick", "p", at, payload)
    made = Event(eid, "tick", "p", at, at, Throttle.FULL, eid, payload, payload_json_of(payload))
    return dataclasses.replace(made, **changes)


def checked_both_ways(records: list[object]) -> list[str]:
    """What each check says of ``records``: "ok" or "refused", value by value, then encoded."""
    said = []
    try:
        table_rows(records)
        said.append("ok")
    except Unstorable:
        said.append("refused")
    tables = table_rows(records, check=False)
    try:
        check_encoded(tables, encode(tables))
        said.append("ok")
    except Unstorable:
        said.append("refused")
    return said


@pytest.mark.parametrize(
    "changes",
    [
        {"event_type": "tick\ud800"},  # a lone high surrogate
        {"project": "\udcff"},  # a lone low one (how surrogateescape carries a bad byte)
        {"emitted_by": "\ud83d\ude00"},  # a pair, as two code points: no UTF-8 form either
        {"payload_json": '{"n":"\\ud800"}'},  # an unpaired surrogate escape in JSON
        {"payload_json": '{"n":"\\udc00\\ud800"}'},  # escapes in the wrong order
    ],
    ids=["high", "low", "pair", "json-escape", "json-reversed"],
)
def test_text_duckdb_would_refuse_is_refused_both_ways(changes):
    records = [event(n) for n in range(50)]
    records[17] = dataclasses.replace(records[17], **changes)
    assert checked_both_ways(records) == ["refused", "refused"]


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"payload_json": '{"n":"\\ud83d\\ude00"}'},  # a paired escape is JSON's own
        {"payload_json": '{"n":"\\\\ud800"}'},  # an escaped backslash, then text
        {"payload_json": '{"n":"\\u0001"}'},  # a control character's escape
        {"event_type": "tick\u00ed\u00a0\u0080"},  # text whose bytes look like ED A0 80 in Latin-1
    ],
    ids=["plain", "json-pair", "json-backslash", "json-control", "latin-1-lookalike"],
)
def test_storable_text_passes_both_ways(changes):
    records = [event(n) for n in range(50)]
    records[17] = dataclasses.replace(records[17], **changes)
    assert checked_both_ways(records) == ["ok", "ok"]


def test_bytes_that_only_look_like_a_surrogate_fall_back_to_the_exact_check():
    """Binary data in the pickle (here a workflow count) can hold a surrogate's UTF-8 bytes: the
    rows are then checked value by value, and pass."""
    lookalike = struct.unpack("<i", b"\xed\xa0\x80\x00")[0]
    chain = FinishedChain(
        "w", "tick", "p", Throttle.FULL, "completed", "", T0, T0, lookalike, 1, None
    )
    tables = table_rows([chain], check=False)
    assert b"\xed\xa0\x80" in encode(tables)
    check_encoded(tables, encode(tables))  # no error


def test_a_batch_of_attestations_is_one_record_of_many_rows():
    """The attestor hands the store a batch as one record: each of its rows lands in the
    table, in order, after the rows of records before it; and it weighs its rows."""
    from foundry.kernel.core.attest_records import AttestationRows

    def row(n: int) -> tuple[object, ...]:
        return (f"att_{n}", "run_a", f"s{n}", "step", "{}", "k", "sig", "h", None, T0, n)

    batch = AttestationRows((row(1), row(2), row(3)))
    tables = table_rows([batch, AttestationRows((row(4),)), event(1)])
    assert tables[0] == ("attestation_statements", [row(1), row(2), row(3), row(4)])
    assert tables[1][0] == "events"
    assert [rows_in(r) for r in (batch, event(1))] == [3, 1]
