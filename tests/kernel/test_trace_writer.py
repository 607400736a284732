"""The trace file format: rows framed for the archivist, rendered to the JSON the file holds."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta

import pytest
from foundry.kernel.core.ids import compact_json, event_id, occurred_stamp, rfc3339
from foundry.kernel.core.records import Event, ExecutionRecord, trace_rows
from foundry.kernel.core.throttle import Throttle
from foundry.kernel.core.trace_format import (
    FileWriter,
    Unreadable,
    frame,
    frames,
    id_stamp,
    parse,
    readable,
    render,
    zulu,
)

T0 = datetime(2026, 11, 22, 9, 30, tzinfo=UTC)
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
AWKWARD = 'quote " backslash \\ newline \n tab \t é 🚀 </script>'


def awkward_chain() -> tuple[Event, Event, ExecutionRecord]:
    payload = {"text": AWKWARD, "nested": {"list": [1, 2.5, None, True]}}
    root_id = event_id(AWKWARD, "proj é", T0, payload)
    root = Event(
        root_id, AWKWARD, "proj é", T0, T0, Throttle.AUDIT_ONLY, root_id, payload,
        compact_json(payload), stamp=rfc3339(T0), trace_id=TRACE, span_id="00f067aa0ba902b7",
    )  # fmt: skip
    later = T0 + timedelta(milliseconds=3)
    child = Event(
        event_id("done", "proj é", later, {}), "done", "proj é", later, later + timedelta(1),
        Throttle.AUDIT_ONLY, root_id, {}, "{}", depth=1, parent_id=root_id,
        emitted_by=f"Block {AWKWARD}", throttled=True, trace_id=TRACE, span_id="b7ad6b7169203331",
        parent_span_id="53995c3f42cd8ad8",
    )  # fmt: skip
    execution = ExecutionRecord(
        workflow_id=root_id, block_name=f"Block {AWKWARD}", trigger=root, state="completed",
        success=True, summary=AWKWARD, emitted=(child,), started_at=T0, completed_at=later,
        duration_ms=3, raw_output=AWKWARD, exit_code=-2, audit_artifacts=(f"/a/{AWKWARD}",),
        attempts=2, throttled=True, span_id="53995c3f42cd8ad8",
    )  # fmt: skip
    return root, child, execution


def test_rendered_rows_are_the_trace_document():
    root, child, execution = awkward_chain()
    rows = trace_rows(
        [root, child], [execution], 3, workflow_id=root.id, state="failed", error=AWKWARD
    )

    document = json.loads(render(rows))

    assert document["total_duration_ms"] == 3
    assert (document["workflow_id"], document["state"], document["error"]) == (
        root.id,
        "failed",
        AWKWARD,
    )
    first, second = document["events"]
    assert first == {
        "id": root.id, "event_type": AWKWARD, "project": "proj é",
        "occurred_at": zulu(rfc3339(T0)), "recorded_at": zulu(rfc3339(T0)),
        "throttle": "audit_only",
        "trace_id": TRACE, "payload": root.payload, "parent_id": None, "emitted_by": None,
        "depth": 0, "throttled": False, "span_id": "00f067aa0ba902b7", "parent_span_id": None,
    }  # fmt: skip
    assert second["recorded_at"] == zulu(occurred_stamp(child.recorded_at))  # not its occurred_at
    assert first["occurred_at"].endswith("Z")  # as upstream's files: 2026-11-22T09:30:00Z
    assert (second["trace_id"], second["parent_span_id"]) == (TRACE, "53995c3f42cd8ad8")
    assert (second["parent_id"], second["emitted_by"], second["throttled"]) == (
        root.id,
        f"Block {AWKWARD}",
        True,
    )
    [x] = document["block_executions"]
    assert x == {
        "block_name": f"Block {AWKWARD}", "trigger_event_id": root.id, "success": True,
        "summary": AWKWARD, "emitted_event_ids": [child.id], "duration_ms": 3,
        "raw_output": AWKWARD, "exit_code": -2, "trigger_payload": root.payload,
        "emitted_payloads": [{}], "audit_artifacts": [f"/a/{AWKWARD}"], "state": "completed",
        "throttled": True, "attempts": 2, "started_at": zulu(occurred_stamp(T0)),
        "completed_at": zulu(occurred_stamp(execution.completed_at)), "span_id": "53995c3f42cd8ad8",
        "parent_span_id": "00f067aa0ba902b7",
    }  # fmt: skip


UPSTREAM_EVENT_KEYS = [
    "id",
    "event_type",
    "project",
    "occurred_at",
    "recorded_at",
    "throttle",
    "trace_id",
    "span_id",
    "payload",
]  # /work/shared/interop's sample, in order


def test_rendered_text_is_written_as_upstream_writes_it():
    root, child, execution = awkward_chain()
    execution = dataclasses.replace(execution, summary="雪\udcff", raw_output="雪" * 1000)
    rows = trace_rows([root, child], [execution], 3, workflow_id=root.id, state="done", error="")

    text = render(rows)
    data = text.encode()  # a lone surrogate (a block's own summary) does not stop the file

    assert '"project":"proj é"' in text  # UTF-8 as it is, as serde_json writes it
    assert data.count("雪".encode()) == 1000  # the output's, 3 bytes each
    assert '"summary":"\\u96ea\\udcff"' in text  # the one string UTF-8 cannot hold: escaped
    first = json.loads(data)["events"][0]
    assert [k for k in first if k in UPSTREAM_EVENT_KEYS] == UPSTREAM_EVENT_KEYS


def test_frames_carry_rows_or_text_and_the_writer_renders_them(tmp_path):
    root, child, execution = awkward_chain()
    rows = trace_rows([root, child], [execution], 3, workflow_id=root.id, state="ok", error="")
    rows_path, text_path = tmp_path / "d1" / "rows.json", tmp_path / "d2" / "text.json"
    blob = frame(str(rows_path), rows) + frame(str(text_path), '{"as": "is é"}')

    assert [path for path, _ in frames(blob)] == [str(rows_path), str(text_path)]
    FileWriter().write_all(blob)

    assert json.loads(rows_path.read_bytes()) == json.loads(render(rows))
    assert json.loads(text_path.read_bytes()) == {"as": "is é"}


# --- null raw output and exit code; reading ours and the public daemon's files (issue 14) ---------


def test_a_block_that_ran_no_command_has_null_raw_output_and_exit_code():
    root, _, execution = awkward_chain()
    silent = dataclasses.replace(
        execution, emitted=(), raw_output="", exit_code=0, ran_command=False
    )
    ran = dataclasses.replace(execution, emitted=(), raw_output="", exit_code=0)

    document = json.loads(render(trace_rows([root], [silent, ran], 3, workflow_id=root.id,
                                            state="completed", error="")))  # fmt: skip

    first, second = document["block_executions"]
    assert (first["raw_output"], first["exit_code"]) == (None, None)
    assert (second["raw_output"], second["exit_code"]) == ("", 0)  # it ran one, silently
    assert readable(document)["block_executions"][0] == {
        **first, "raw_output": "", "exit_code": 0,
    }  # fmt: skip


UPSTREAM = {
    "events": [
        {"id": "evt_abababababababababababab", "event_type": "greet_requested", "project": "up",
         "occurred_at": "2026-11-28T07:03:52.123Z", "recorded_at": "2026-11-28T07:03:52.123Z",
         "throttle": "full", "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
         "span_id": "00f067aa0ba902b7", "payload": {"name": "Zoë"}},
    ],
    "block_executions": [
        {"block_name": "Compose Greeting", "trigger_event_id": "evt_abababababababababababab",
         "success": True, "summary": "ok", "emitted_event_ids": [], "duration_ms": 3,
         "raw_output": None, "exit_code": None, "trigger_payload": {"name": "Zoë"},
         "emitted_payloads": [], "audit_artifacts": []},
    ],
    "total_duration_ms": 3,
}  # fmt: skip


def test_an_upstream_file_reads_with_every_field_typed():
    parsed = parse(json.dumps(UPSTREAM, indent=2, ensure_ascii=False).encode())

    assert parsed == UPSTREAM  # as written: the Trace RPC reads it through readable()
    document = readable(parsed)
    [event] = document["events"]
    # the form its id hashed (the Trace RPC shows that), from the file's "…52.123Z"
    assert (event["occurred_at"], event["recorded_at"]) == ("2026-11-28T07:03:52.123+00:00",) * 2
    assert (event["parent_span_id"], event["throttled"]) == ("", False)
    [x] = document["block_executions"]
    assert (x["raw_output"], x["exit_code"], x["duration_ms"]) == ("", 0, 3)
    assert (x["state"], x["throttled"], x["attempts"]) == ("", False, 1)
    assert document["total_duration_ms"] == 3


def test_unknown_keys_are_kept_and_missing_extras_take_defaults():
    extra = {**UPSTREAM, "future": 1}
    extra["block_executions"] = [{**UPSTREAM["block_executions"][0], "exit_code": 7.0, "x": []}]

    document = readable(extra)

    assert document["future"] == 1
    assert (document["block_executions"][0]["exit_code"], document["block_executions"][0]["x"]) == (
        7,
        [],
    )
    assert readable({"events": [], "block_executions": []})["total_duration_ms"] == 0


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"events": None}, "events: must be a list"),
        ({"block_executions": {}}, "block_executions: must be a list"),
        ({"events": [1]}, "events: each is an object"),
        ({"events": [{"id": "e", "event_type": "t", "project": "p"}]}, "occurred_at: must be"),
        ({"events": [{**UPSTREAM["events"][0], "throttle": "loud"}]}, "throttle: unknown"),
        ({"total_duration_ms": "3"}, "total_duration_ms: must be a number"),
        ({"total_duration_ms": -1}, "total_duration_ms: out of range"),
        ({"total_duration_ms": 2**63}, "total_duration_ms: out of range"),
        ({"total_duration_ms": 1.5}, "total_duration_ms: must be a whole number"),
        ({"total_duration_ms": True}, "total_duration_ms: must be a number"),
    ],
)
def test_a_document_that_is_not_a_trace_is_unreadable(change, reason):
    with pytest.raises(Unreadable, match=reason):
        readable({**UPSTREAM, **change})


@pytest.mark.parametrize(
    "field",
    [
        {"exit_code": "0"}, {"exit_code": 2**64}, {"success": 1}, {"duration_ms": -1},
        {"emitted_event_ids": "evt"}, {"audit_artifacts": [None]}, {"block_name": 5},
    ],
)  # fmt: skip
def test_a_wrong_typed_execution_is_unreadable(field):
    document = {**UPSTREAM, "block_executions": [{**UPSTREAM["block_executions"][0], **field}]}

    with pytest.raises(Unreadable):
        readable(document)


def test_null_numbers_and_texts_of_an_execution_read_as_none_given():
    nulls = {"duration_ms": None, "summary": None, "state": None, "throttled": None}
    document = {**UPSTREAM, "block_executions": [{**UPSTREAM["block_executions"][0], **nulls}]}

    [x] = readable(document)["block_executions"]

    assert (x["duration_ms"], x["summary"], x["state"], x["throttled"]) == (0, "", "", False)


@pytest.mark.parametrize(
    "data",
    [b"", b"{", b"\xff", b"[]", b"null", b'{"events": NaN}', b'{"x": "\\udc00"}', b"[" * 50_000],
)
def test_parse_answers_none_for_anything_that_is_not_a_trace(data):
    assert parse(data) is None


def test_a_trace_whose_payload_holds_a_number_no_double_holds_is_not_one():
    """Upstream's serde_json refuses it; read, its event's id was computed at Trace: INTERNAL."""
    event = {**UPSTREAM["events"][0], "payload": {"n": int("9" * 400)}}
    assert parse(json.dumps({**UPSTREAM, "events": [event]}).encode()) is None
    assert parse(json.dumps(UPSTREAM).encode()) is not None


@pytest.mark.parametrize(
    ("written", "shown"),
    [
        ("2026-11-28T07:03:52Z", "2026-11-28T07:03:52+00:00"),
        ("2026-11-28T07:03:52.123Z", "2026-11-28T07:03:52.123+00:00"),
        ("2026-11-28T07:03:52.123456+00:00", "2026-11-28T07:03:52.123456+00:00"),
        # written by another hand: shown as chrono's AutoSi would have written them (they
        # were shown as written, Z made +00:00, whatever the README promised)
        ("2026-11-28T07:03:52.1Z", "2026-11-28T07:03:52.100+00:00"),
        ("2026-11-28T07:03:52.000Z", "2026-11-28T07:03:52+00:00"),  # JavaScript's toISOString
        ("2026-11-28T07:03:52.123000Z", "2026-11-28T07:03:52.123+00:00"),
        ("2026-11-28T07:03:52.000100Z", "2026-11-28T07:03:52.000100+00:00"),
        ("2026-11-28T07:03:52.1234567Z", "2026-11-28T07:03:52.123456700+00:00"),
        # another offset, lowercase letters (RFC 3339 allows both): the instant, in UTC (they
        # were shown as written)
        ("2026-11-28T08:03:52+01:00", "2026-11-28T07:03:52+00:00"),
        ("2026-11-28T09:03:52.1234567+02:00", "2026-11-28T07:03:52.123456700+00:00"),
        ("2026-12-02T01:50:27.123456789+01:00", "2026-12-02T00:50:27.123456789+00:00"),
        ("2016-12-31T23:59:60Z", "2016-12-31T23:59:60+00:00"),  # a leap second, as chrono's
        ("2017-01-01T00:59:60+01:00", "2016-12-31T23:59:60+00:00"),
        ("2026-11-28t07:03:52.123z", "2026-11-28T07:03:52.123+00:00"),
        ("2026-11-28 07:03:52-00:30", "2026-11-28T07:33:52+00:00"),
    ],
)
def test_a_trace_files_times_are_shown_in_the_form_event_ids_hash(written, shown):
    assert id_stamp(written) == shown


@pytest.mark.parametrize(
    "written",
    ["yesterday", "2026-13-45T07:03:52Z", "2026-02-30T00:00:00Z", "2026-11-28T07:03:52",
     "2026-11-28", "", "20261202T015027+01:00", "2026-12-02T01:50+01:00",
     "2026-11-28T07:03:52+24:00", "0001-01-01T00:00:00+01:00"],
)  # fmt: skip
def test_a_trace_file_time_that_is_none_makes_the_file_unreadable(written):
    with pytest.raises(Unreadable, match="time"):
        id_stamp(written)


async def test_an_archivist_that_cannot_write_its_files_goes_on(tmp_path, monkeypatch, caplog):
    # Its child gone and the disk full, the thread's write raised in the store's nursery and
    # took the daemon down; the traces are in the database, which Trace reads then.
    import types

    import trio
    from foundry.kernel.actors.store import archivist as archivist_module

    gone = tmp_path / "gone.py"
    gone.write_text("import sys\nsys.stdin.close()\n")  # a child that ends at once
    script = types.SimpleNamespace(__file__=str(gone))
    monkeypatch.setattr(archivist_module, "trace_format", script)
    archivist = archivist_module.Archivist()
    tried: list[bytes] = []
    second = trio.Event()

    def full_once(blob: bytes) -> None:
        tried.append(blob)
        if len(tried) == 1:
            raise OSError(28, "No space left on device")
        trio.from_thread.run_sync(second.set)

    monkeypatch.setattr(archivist._fallback, "write_all", full_once)
    first = frame(str(tmp_path / "a.json"), "{}")
    later = frame(str(tmp_path / "b.json"), "{}")
    async with trio.open_nursery() as nursery:
        await nursery.start(archivist.run)
        with trio.fail_after(10):
            while not tried:  # the child, then the one started again, ended: the thread writes
                await trio.sleep(0.2)
                await archivist.send(first)
            await archivist.send(later)  # the archivist goes on
            await second.wait()
        nursery.cancel_scope.cancel()
    assert "could not write trace files ([Errno 28] No space left on device)" in caplog.text
    assert "the trace file writer exited (code 0): started again" in caplog.text
    assert "exited again (code 0): trace files are written from a thread" in caplog.text
    assert tried[0].startswith(first)
    assert tried[-1].endswith(later)


def test_the_writer_process_skips_a_file_it_cannot_write_and_writes_the_next(tmp_path):
    """On a full disk the writer process died, its traceback raw in the daemon's log, and trace
    files were written from a thread ever after (an operator hunt). A file it cannot write (here:
    its folder is a file) is skipped: the database holds the trace."""
    import subprocess
    import sys

    from foundry.kernel.core import trace_format

    blocked = tmp_path / "not-a-folder"
    blocked.write_text("x")
    blob = frame(str(blocked / "t.json"), '{"a": 1}') + frame(str(tmp_path / "ok.json"), '{"b": 2}')
    done = subprocess.run([sys.executable, "-I", trace_format.__file__], input=blob,
                          capture_output=True, timeout=60)  # fmt: skip
    assert (done.returncode, done.stderr) == (0, b"")
    assert json.loads((tmp_path / "ok.json").read_bytes()) == {"b": 2}
