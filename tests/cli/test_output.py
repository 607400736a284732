"""The CLI's formatting in isolation: the one timestamp style, durations, JSON values in summaries,
``--json`` numbers, trace headers and labels, the daemon's JSON log lines, and ``since``."""

from __future__ import annotations

import io
import json
import logging
from datetime import UTC, datetime, timedelta

import pytest
from foundry.kernel.cli.live import execution_label, trace_lines
from foundry.kernel.cli.logs import DisconnectsAreDebug, JsonFormatter
from foundry.kernel.cli.output import (
    TerminalSafe,
    duration,
    message_dict,
    short_json,
    stamp,
    write_control,
)
from foundry.kernel.cli.sql import table
from foundry.kernel.core.since import parse_since
from foundry.proto import foundry_api as api


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("2026-11-22T07:03:52.123456+00:00", "2026-11-22T07:03:52.123Z"),
        ("2026-11-22T07:03:52+00:00", "2026-11-22T07:03:52.000Z"),
        ("2026-11-22T07:03:52.5Z", "2026-11-22T07:03:52.500Z"),
        ("2026-11-22T09:03:52.123+02:00", "2026-11-22T07:03:52.123Z"),
        (datetime(2026, 1, 2, 3, 4, 5, 678900, tzinfo=UTC), "2026-01-02T03:04:05.678Z"),
        (datetime(2026, 1, 2, 3, 4, 5), "2026-01-02T03:04:05.000Z"),  # naive: UTC
        ("", ""),
        (None, ""),
        ("not a time", "not a time"),
    ],
)
def test_one_timestamp_style(value, shown):
    assert stamp(value) == shown


@pytest.mark.parametrize(
    ("ms", "shown"), [(0, "0 ms"), (999, "999 ms"), (1500, "1.5 s"), (125_000, "2 min 05 s")]
)
def test_durations(ms, shown):
    assert duration(ms) == shown


def test_summaries_are_json_never_python_reprs():
    assert short_json({"a": 1.0, "b": [2.0, 2.5], "c": None, "d": True}) == (
        '{"a":1,"b":[2,2.5],"c":null,"d":true}'
    )
    assert short_json("é") == '"é"'
    long = short_json({"text": "x" * 500}, limit=40)
    assert len(long) == 40
    assert long.endswith("…")


def test_json_output_keeps_64_bit_integers_as_numbers():
    reply = api.TraceResponse(
        found=True,
        block_executions=[api.TraceBlockExecution(block_name="b", duration_ms=12, exit_code=-1)],
    )
    document = message_dict(reply)
    assert document["block_executions"][0]["duration_ms"] == 12
    assert document["block_executions"][0]["exit_code"] == -1
    assert document["block_executions"][0]["block_name"] == "b"
    assert document["found"] is True
    assert json.loads(json.dumps(document)) == document


def test_execution_labels():
    assert execution_label(api.TraceBlockExecution(success=True, state="completed")) == "ok"
    assert execution_label(api.TraceBlockExecution(success=False, state="failed")) == "FAILED"
    skipped = api.TraceBlockExecution(success=True, state="skipped", throttled=True)
    assert execution_label(skipped) == "skipped"


def test_trace_header_states_error_and_total():
    reply = api.TraceResponse(
        found=True,
        events=[
            api.TraceEvent(
                event_id="evt_1", event_type="go", project="p",
                occurred_at="2026-01-02T03:04:05.000001+00:00", payload_json="{}",
            )
        ],
        block_executions=[
            api.TraceBlockExecution(block_name="a", success=False, state="failed", duration_ms=5),
            api.TraceBlockExecution(block_name="b", success=True, state="skipped"),
        ],
    )  # fmt: skip
    workflow = api.WorkflowStatus(workflow_id="evt_1", state="failed", error="a broke")
    lines = trace_lines(reply, workflow)
    assert lines[0].startswith("chain  evt_1  failed  go [p]  started 2026-01-02T03:04:05.000Z")
    assert "2 block execution(s), 1 failed" in lines[0]
    assert lines[1] == "error  a broke"
    assert lines[2] == "event  2026-01-02T03:04:05.000Z  evt_1  go  {}"
    assert lines[3].startswith("block  FAILED  a on ")
    assert lines[4].startswith("block  skipped b on ")


def _record(level: int, msg: str, *args, **extra) -> logging.LogRecord:
    record = logging.LogRecord("foundry.engine", level, __file__, 1, msg, args, None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_json_log_lines_carry_the_extra_fields():
    record = _record(logging.WARNING, "workflow %s failed: %s", "evt_1", "boom",
                     workflow_id="evt_1", error="boom")  # fmt: skip
    document = json.loads(JsonFormatter().format(record))
    assert document["level"] == "warning"
    assert document["logger"] == "foundry.engine"
    assert document["message"] == "workflow evt_1 failed: boom"
    assert document["workflow_id"] == "evt_1"
    assert document["error"] == "boom"
    assert document["time"].endswith("Z")
    assert "args" not in document
    assert "msg" not in document


def test_json_log_lines_hold_no_character_a_reader_takes_for_a_line_break_or_obeys():
    """U+2028, NEL, a C1 CSI or a right-to-left override from a client's project name went out
    raw: str.splitlines() read 7 records as 37 lines, and a terminal obeyed the rest."""
    odd = "p\u2028q\u0085r\u009b31ms\u202et\x7fu é"
    record = _record(logging.WARNING, "workflow %s failed", odd, project=odd)
    line = JsonFormatter().format(record)
    assert line.isascii()
    assert len(line.splitlines()) == 1
    assert json.loads(line)["project"] == odd  # the same text, escaped


def test_json_log_lines_include_the_traceback():
    try:
        raise ValueError("inside")
    except ValueError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    document = json.loads(JsonFormatter().format(record))
    assert "ValueError: inside" in document["exception"]


def test_client_disconnects_become_debug():
    quiet = DisconnectsAreDebug()
    logging.getLogger("grpclib.server").setLevel(logging.INFO)
    try:
        message = "Request was cancelled: %s"  # grpclib.server's, word for word
        gone = logging.LogRecord(
            "grpclib.server", logging.INFO, __file__, 1, message, ("Connection lost",), None
        )
        assert quiet.filter(gone) is False
        assert gone.levelname == "DEBUG"
        other = logging.LogRecord("grpclib.server", logging.INFO, __file__, 1, "x", (), None)
        assert quiet.filter(other) is True
    finally:
        logging.getLogger("grpclib.server").setLevel(logging.NOTSET)


NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "instant"),
    [
        ("", datetime(1970, 1, 1, tzinfo=UTC)),
        ("90s", NOW - timedelta(seconds=90)),
        ("15m", NOW - timedelta(minutes=15)),
        ("1h30m", NOW - timedelta(minutes=90)),
        ("2d", NOW - timedelta(days=2)),
        ("250ms", NOW - timedelta(milliseconds=250)),
        ("2026-01-02T03:04:05Z", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2026-01-02T05:04:05+02:00", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2026-01-02T03:04:05", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2026-01-02", datetime(2026, 1, 2, tzinfo=UTC)),
    ],
)
def test_since(text, instant):
    assert parse_since(text, NOW) == instant
    assert parse_since(text, NOW).utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "text",
    ["yesterday", "1y", "15", "m15", "2026-13-01", "1" * 100 + "s",
     "9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00"],  # past a datetime's range in UTC
)  # fmt: skip
def test_a_bad_since_names_the_field(text):
    with pytest.raises(ValueError, match=r"^since: ") as caught:
        parse_since(text, NOW)
    assert len(str(caught.value)) < 250


def test_text_log_lines_use_the_one_timestamp_style():
    from foundry.kernel.cli.logs import TextFormatter

    record = _record(logging.INFO, "serving %d blocks", 7)
    record.created = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC).timestamp()
    line = TextFormatter().format(record)
    assert line == "2026-01-02T03:04:05.678Z foundry.engine INFO serving 7 blocks"


def test_sql_tables_escape_what_a_terminal_would_obey():
    """A stored "\\x1b[31m…" (or a column alias of one) wrote its escape sequence to the
    analyst's terminal; trace, status and emit --wait escaped it already."""
    shown = table(["n\x1b]0;t\x07"], [["x\x1b[31mred\nnext\x00\u202e"], [7]])
    assert shown.isprintable() is False  # only the table's own newlines
    lines = shown.split("\n")
    assert all(line.isprintable() for line in lines)
    assert lines[0].rstrip() == "n\\x1b]0;t\\x07"
    assert lines[2].rstrip() == "x\\x1b[31mred\\nnext\\x00\\u202e"
    assert lines[3].strip() == "7"


def test_blocks_and_tools_show_a_descriptions_first_line():
    # a block's docstring ran on: `foundry blocks` was no longer a line a block
    from foundry.kernel.cli.inventory import _about

    assert _about("Tally the words.\n\n    As a DAG step (``type``) ...\n") == " — Tally the words."
    assert _about("  one line  ") == " — one line"
    assert _about("") == ""


def test_a_terminal_sees_controls_escaped_and_text_as_it_is():
    shown = io.StringIO()
    terminal = TerminalSafe(shown)
    terminal.write("Résumé\u00a0: 10\u202f000 € 日本語\u3000テキスト \ue000\n")  # spaces: text
    terminal.write("\x1b[2J \x07 \r \x85 \u202e \u200b \u2028 \U000e0001 \udcff\ttab\n")
    write_control(terminal, "\r")  # the CLI's own: a progress line rewrites itself
    terminal.write("progress")
    assert shown.getvalue() == (
        "Résumé\u00a0: 10\u202f000 € 日本語\u3000テキスト \ue000\n"
        "\\u001b[2J \\u0007 \\u000d \\u0085 \\u202e \\u200b \\u2028 \\udb40\\udc01 \\udcff\ttab\n"
        "\rprogress"
    )
    assert json.loads('"' + "\\udb40\\udc01 \\u202e" + '"') == "\U000e0001 \u202e"  # JSON's escapes


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_eval_progress_rewrites_its_line_on_a_terminal(monkeypatch):
    import asyncio
    from types import SimpleNamespace

    from foundry.kernel.cli import evals
    from foundry.proto import runtime_api

    asks = iter([runtime_api.RunStatus.RUNNING] * 2 + [runtime_api.RunStatus.SUCCEEDED] * 9)

    class Runtime:
        async def get_run(self, request):
            return SimpleNamespace(run=SimpleNamespace(status=next(asks)))

    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", TerminalSafe(terminal))
    asyncio.run(evals._wait(Runtime(), [evals._Run(slug="s", index=0, run_id="r1")], "p", 30))
    shown = terminal.getvalue()
    assert shown.count("\r") == 3  # each line goes back to its start: the CLI's own \r
    assert "\\u000d" not in shown
    assert shown.endswith("\n")
    assert "eval p: 1/1 runs finished" in shown.split("\r")[-1]


def test_an_attestation_id_of_before_is_checked_against_its_runs_seqs_offline():
    import hashlib

    from foundry.kernel.cli.attest import _hashed_from

    # an older daemon's id: sha256("RUN\nSEQ")[:24]; its run archived, GetRun cannot list it
    made = "att_" + hashlib.sha256(b"run_a\n7").hexdigest()[:24]
    assert _hashed_from("run_a", made)
    assert not _hashed_from("run_b", made)  # another run's statement copied into its row


def test_an_eval_results_assertion_lines_show_compact_json_with_whole_numbers():
    """A Struct's numbers are doubles: `eval record` printed `recorded {"words": 23.0},
    expected {"words": 120.0}` (a README walk-through)."""
    from foundry.kernel.cli import evals
    from foundry.proto import runtime_api
    from foundry.proto.generated.google.protobuf import Struct

    recorded = {"words": 23, "tags": [1, 2.5]}
    assertion = {"step_id": "count", "name": "subset", "passed": False,
                 "recorded": recorded, "expected": {"words": 120}}  # fmt: skip
    result = runtime_api.EvalResult(
        outcome="failed", run_id="run_1", commit="c", result_id="r",
        metrics=Struct.from_dict({"score": 0.0, "assertions": [assertion]}),
    )  # fmt: skip
    [_, line] = evals.describe_result(result, "pack/slug")
    assert line == (
        '  FAIL  steps.count.subset: recorded {"tags":[1,2.5],"words":23}, expected {"words":120}'
    )
