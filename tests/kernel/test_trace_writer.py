"""The trace file format: rows framed for the archivist, rendered to the JSON the file holds."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from foundry.kernel.core.ids import compact_json, event_id, rfc3339
from foundry.kernel.core.records import Event, ExecutionRecord, trace_rows
from foundry.kernel.core.throttle import Throttle
from foundry.kernel.core.trace_format import FileWriter, frame, frames, render

T0 = datetime(2026, 11, 22, 9, 30, tzinfo=UTC)
AWKWARD = 'quote " backslash \\ newline \n tab \t é 🚀 </script>'


def awkward_chain() -> tuple[Event, Event, ExecutionRecord]:
    payload = {"text": AWKWARD, "nested": {"list": [1, 2.5, None, True]}}
    root_id = event_id(AWKWARD, "proj é", T0, payload)
    root = Event(
        root_id, AWKWARD, "proj é", T0, T0, Throttle.AUDIT_ONLY, root_id, payload,
        compact_json(payload), stamp=rfc3339(T0),
    )  # fmt: skip
    later = T0 + timedelta(milliseconds=3)
    child = Event(
        event_id("done", "proj é", later, {}), "done", "proj é", later, later + timedelta(1),
        Throttle.AUDIT_ONLY, root_id, {}, "{}", depth=1, parent_id=root_id,
        emitted_by=f"Block {AWKWARD}", throttled=True,
    )  # fmt: skip
    execution = ExecutionRecord(
        trace_id=root_id, block_name=f"Block {AWKWARD}", trigger=root, state="completed",
        success=True, summary=AWKWARD, emitted=(child,), started_at=T0, completed_at=later,
        duration_ms=3, raw_output=AWKWARD, exit_code=-2, audit_artifacts=(f"/a/{AWKWARD}",),
        attempts=2, throttled=True,
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
        "occurred_at": rfc3339(T0), "recorded_at": rfc3339(T0), "throttle": "audit_only",
        "trace_id": root.id, "payload": root.payload, "parent_id": None, "emitted_by": None,
        "depth": 0, "throttled": False,
    }  # fmt: skip
    assert second["recorded_at"] == rfc3339(child.recorded_at)  # not the same as occurred_at
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
        "throttled": True, "attempts": 2, "started_at": rfc3339(T0),
        "completed_at": rfc3339(execution.completed_at),
    }  # fmt: skip


def test_frames_carry_rows_or_text_and_the_writer_renders_them(tmp_path):
    root, child, execution = awkward_chain()
    rows = trace_rows([root, child], [execution], 3, workflow_id=root.id, state="ok", error="")
    rows_path, text_path = tmp_path / "d1" / "rows.json", tmp_path / "d2" / "text.json"
    blob = frame(str(rows_path), rows) + frame(str(text_path), '{"as": "is é"}')

    assert [path for path, _ in frames(blob)] == [str(rows_path), str(text_path)]
    FileWriter().write_all(blob)

    assert json.loads(rows_path.read_bytes()) == json.loads(render(rows))
    assert json.loads(text_path.read_bytes()) == {"as": "is é"}
