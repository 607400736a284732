"""``foundry emit --wait``'s tree, built from a trace as plain data (no daemon)."""

from __future__ import annotations

import argparse

import pytest
from foundry.kernel.cli.follow import add_wait_options, execution_line, tree_lines


def event(event_id: str, event_type: str, payload: str = "{}", **extra: object) -> dict:
    return {"event_id": event_id, "event_type": event_type, "payload_json": payload,
            "occurred_at": "2026-11-28T07:03:52.123+00:00", **extra}  # fmt: skip


def execution(name: str, trigger: str, emitted: list[str] = (), **extra: object) -> dict:
    return {"block_name": name, "trigger_event_id": trigger, "success": True,
            "state": "completed", "emitted_event_ids": list(emitted), "duration_ms": 12,
            "raw_output": "", "exit_code": 0, "summary": "", **extra}  # fmt: skip


def test_the_tree_is_indented_by_causality():
    trace = {
        "events": [
            event("evt_root", "greet_requested", '{"name":"Zoë"}'),
            event("evt_composed", "greeting_composed"),
            event("evt_delivered", "greeting_delivered"),
            event("evt_side", "noted"),
        ],
        "block_executions": [
            execution("Compose", "evt_root", ["evt_composed", "evt_side"], summary="composed"),
            execution("Audit", "evt_root"),
            execution("Deliver", "evt_composed", ["evt_delivered"]),
            execution("Archive", "evt_delivered", state="failed", success=False,
                      raw_output="boom\n", exit_code=3, duration_ms=1500, summary="sh exited 3"),
        ],
    }  # fmt: skip

    assert tree_lines(trace) == [
        'event greet_requested  evt_root  2026-11-28T07:03:52.123Z  {"name":"Zoë"}',
        "├─ block Compose  ok  12 ms  composed",
        "│  ├─ event greeting_composed  evt_composed  2026-11-28T07:03:52.123Z  {}",
        "│  │  └─ block Deliver  ok  12 ms",
        "│  │     └─ event greeting_delivered  evt_delivered  2026-11-28T07:03:52.123Z  {}",
        "│  │        └─ block Archive  FAILED  1.5 s  exit 3  sh exited 3",
        "│  └─ event noted  evt_side  2026-11-28T07:03:52.123Z  {}",
        "└─ block Audit  ok  12 ms",
    ]


@pytest.mark.parametrize(
    ("extra", "line"),
    [
        ({}, "block B  ok  12 ms"),
        ({"state": "skipped"}, "block B  skipped  12 ms"),
        ({"throttled": True}, "block B  ok*  12 ms"),
        ({"state": "failed", "success": False, "summary": "x"}, "block B  FAILED  12 ms  x"),
        ({"raw_output": "hi\n"}, "block B  ok  12 ms  exit 0"),  # ran a command
        ({"exit_code": 2}, "block B  ok  12 ms  exit 2"),
        ({"state": "", "success": False}, "block B  FAILED  12 ms"),  # upstream: no state key
        ({"duration_ms": 65_000}, "block B  ok  1 min 05 s"),
    ],
)
def test_an_execution_line_shows_state_duration_and_exit_code(extra, line):
    assert execution_line(execution("B", "evt_x", **extra)) == line


def test_throttled_events_are_marked():
    trace = {"events": [event("evt_a", "a", throttled=True)], "block_executions": []}

    assert tree_lines(trace) == [
        "event a  evt_a  2026-11-28T07:03:52.123Z  {}  (throttled: not delivered)"
    ]


def test_a_partial_or_malformed_trace_still_renders_without_looping():
    trace = {
        "events": [event("evt_a", "a"), event("evt_b", "b")],
        "block_executions": [
            execution("Loop", "evt_b", ["evt_a"]),  # a cycle: a → b → a
            execution("AB", "evt_a", ["evt_b", "evt_gone"]),
            execution("Orphan", "evt_unknown"),
        ],
    }

    lines = tree_lines(trace)

    assert lines[0].startswith("event a  evt_a")  # no root: the first event starts the tree
    assert sum(line.endswith("event evt_a (shown above)") for line in lines) == 1
    assert any("event evt_gone (not in the trace)" in line for line in lines)
    assert "event evt_unknown (not in the trace)" in lines
    assert lines[-1] == "└─ block Orphan  ok  12 ms"


def test_an_empty_trace_has_no_lines():
    assert tree_lines({}) == []
    assert tree_lines({"events": [], "block_executions": []}) == []


@pytest.mark.parametrize("bad", ["0", "-1", "nan", "inf", "1e9", "1e300", "soon"])
def test_timeout_must_be_a_positive_number_of_seconds(bad, capsys):
    """1e9 was refused as "must be more than 0 seconds" (found by a CLI hunt): the bound says
    both its ends."""
    parser = argparse.ArgumentParser()
    add_wait_options(parser)

    with pytest.raises(SystemExit):
        parser.parse_args(["--wait", "--timeout", bad])
    said = capsys.readouterr().err
    assert "--timeout" in said
    if bad != "soon":
        assert "more than 0 and less than 1,000,000,000 seconds" in said
    assert parser.parse_args(["--wait", "--timeout", "2.5"]).timeout == 2.5
