"""Numbers keep their type: a block gets the integer 9 whether an event (JSON text) or a DAG run's
inputs (a google.protobuf.Struct: every number a double on the wire) brought it, and ``--json``
output shows integers as integers (``kernel/core/numbers.py``)."""

from __future__ import annotations

import json
import re

from foundry.kernel.core.numbers import restore_ints
from foundry.proto import runtime_api as api

from tests.e2e.helpers import emit, finished, traced
from tests.runs.helpers import dag, submit, tap, wait_done

# The block prints the payload it got (compact JSON, as the kernel hands it over) and the type
# Python saw for "n": what it was given, exactly.
CONFIG = """
[[blocks]]
name = "echo"
type = "shell"
kind = "observer"
sinks = ["count"]
command = ["python3", "-c", '''
import json, sys
payload = json.load(sys.stdin)
print(json.dumps({"got": payload, "n_type": type(payload["n"]).__name__}))
''']
"""

PAYLOAD = {"n": 9, "big": 2**53, "half": 1.5, "list": [1, 2.5, {"deep": 3}]}


def test_a_block_gets_the_same_integers_from_an_event_and_from_a_dag_step(shared_daemon):
    daemon = shared_daemon(CONFIG)
    root = emit(daemon, "count", payload=PAYLOAD)
    finished(daemon, root.workflow_id)
    [execution] = traced(daemon, root.event_id).block_executions
    from_event = json.loads(execution.raw_output)

    run_id = submit(daemon, dag({"id": "s", "type": "echo", "inputs": {"n": "${inputs.n}",
                    "big": "${inputs.big}", "half": "${inputs.half}", "list": "${inputs.list}"}}),
                    inputs=PAYLOAD)  # fmt: skip
    assert wait_done(daemon, run_id).status == api.RunStatus.SUCCEEDED
    [completed] = [e for e in tap(daemon, run_id) if e["kind"] == "step_completed"]
    from_step = json.loads(completed["payload"]["raw_output"])

    assert from_event == {"got": PAYLOAD, "n_type": "int"}
    assert from_step == from_event
    assert "9.0" not in completed["payload"]["raw_output"]


def test_run_get_json_shows_integers_as_integers(shared_daemon):
    daemon = shared_daemon(CONFIG)
    run_id = submit(daemon, dag({"id": "s", "type": "echo", "inputs": {"n": 7, "f": 0.25}}),
                    inputs={"count": 3})  # fmt: skip
    wait_done(daemon, run_id)
    shown = daemon.cli("run", "get", run_id, "--json", check=True)
    run = json.loads(shown.stdout)
    assert run["spec"]["inputs"] == {"count": 3}
    assert type(run["spec"]["inputs"]["count"]) is int
    [step] = run["steps"]
    assert step["output"] == {"got": {"n": 7, "f": 0.25}, "n_type": "int"}
    assert type(step["output"]["got"]["n"]) is int
    assert type(step["idx"]) is int
    assert type(step["attempt"]) is int
    tapped = daemon.cli("run", "tap", run_id, "--json", check=True)
    leased = [json.loads(x) for x in tapped.stdout.splitlines() if '"step_leased"' in x][0]
    assert leased["payload"]["inputs"] == {"n": 7, "f": 0.25}
    assert type(leased["payload"]["attempt"]) is int
    # times as run get --json writes them (str() gave "2026-12-06 01:50:32.357562+00:00")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", leased["occurred_at"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", run["created_at"])


def test_the_rule_integral_doubles_within_2_to_the_53_become_ints():
    assert restore_ints({"a": 9.0, "b": [1.0, 1.5], "c": {"d": -0.0}}) == {
        "a": 9,
        "b": [1, 1.5],
        "c": {"d": 0},
    }
    assert type(restore_ints(9.0)) is int
    assert type(restore_ints(2.0**53)) is int
    assert type(restore_ints(2.0**53 + 2)) is float  # beyond exact integers: left a double
    assert restore_ints(float("inf")) == float("inf")
    assert restore_ints([True, None, "9.0"]) == [True, None, "9.0"]  # bools and text untouched
    original = {"a": [1.0]}
    restore_ints(original)
    assert original == {"a": [1.0]}
    assert type(original["a"][0]) is float
