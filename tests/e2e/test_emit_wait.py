"""``foundry emit --wait`` against a real daemon: it follows the chain to its end, prints the tree
of events and block executions, and exits 0 (completed), 1 (failed) or 3 (not ended in time)."""

from __future__ import annotations

import json
import re

import pytest

from tests.daemon import Daemon
from tests.e2e.helpers import status

BLOCKS = """
[[blocks]]
name = "Archive Greeting"
type = "shell"
kind = "observer"
sinks = ["greeting_delivered"]
command = ["sh", "-c", "echo archived"]
emits = "greeting_archived"

[[blocks]]
name = "Always Fails"
type = "shell"
kind = "observer"
sinks = ["fail_requested"]
command = ["sh", "-c", "echo about to fail; exit 3"]

[[blocks]]
name = "Wait For Gate"
type = "shell"
kind = "observer"
sinks = ["gated_requested"]
# Waits for the file the payload names (30 s at most, so it never outlives the test).
command = ["sh", "-c", 'for i in $(seq 600); do [ -e "$FOUNDRY_INPUT_GATE" ] \
  && break; sleep 0.05; done; echo released']
"""


@pytest.fixture(scope="module")
def daemon(shared_daemon) -> Daemon:
    return shared_daemon(BLOCKS)


def test_a_completed_chain_prints_its_tree_and_exits_0(daemon):
    done = daemon.cli(
        "emit", "greet_requested", "--project", "acme", "--payload", '{"name": "Zoë"}', "--wait"
    )

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    root_id = lines[0].split()[1]
    assert re.fullmatch(r"evt_[0-9a-f]{24}", root_id)
    assert lines[1] == f"workflow {root_id}  completed"
    tree = [re.sub(r"\s+\S+ ms\b|\s+\d+\.\d s\b", " T", line) for line in lines[2:]]
    shapes = [re.sub(r"evt_[0-9a-f]{24}|\d{4}-\S+Z", "X", line) for line in tree]
    assert shapes[0] == 'event greet_requested  X  X  {"name":"Zoë"}'
    assert shapes[1].startswith("└─ block Compose Greeting  ok T")
    assert shapes[2].startswith("   └─ event greeting_composed  X  X  {")
    assert shapes[3].startswith("      └─ block Deliver Greeting  ok T")
    assert shapes[4].startswith("         └─ event greeting_delivered  X  X  {")
    assert shapes[5].startswith("            └─ block Archive Greeting  ok T  exit 0")
    assert shapes[6].startswith("               └─ event greeting_archived  X  X  {")
    assert len(shapes) == 7


def test_a_failed_chain_exits_1_and_shows_the_failure(daemon):
    done = daemon.cli("emit", "fail_requested", "--project", "acme", "--wait")

    assert done.returncode == 1, done.stderr
    assert re.search(r"^workflow evt_\w+  failed$", done.stdout, re.M)
    assert re.search(r"^error    block 'Always Fails' failed", done.stdout, re.M)
    assert re.search(r"^└─ block Always Fails  FAILED  \S+ ms  exit 3  ", done.stdout, re.M)


def test_json_prints_the_trace(daemon):
    done = daemon.cli("emit", "fail_requested", "--project", "acme", "--wait", "--json")

    assert done.returncode == 1, done.stderr
    document = json.loads(done.stdout)
    assert document["state"] == "failed"
    assert document["event_id"] == document["workflow_id"]
    assert [e["event_id"] for e in document["trace"]["events"]] == [document["event_id"]]
    [execution] = document["trace"]["block_executions"]
    assert (execution["block_name"], execution["exit_code"]) == ("Always Fails", 3)
    assert execution["raw_output"] == "about to fail\n"


def test_a_chain_that_outlasts_the_timeout_exits_3_and_goes_on(daemon, tmp_path):
    gate = tmp_path / "gate"
    payload = json.dumps({"gate": str(gate)})
    done = daemon.cli(
        "emit", "gated_requested", "--project", "acme", "--payload", payload,
        "--wait", "--timeout", "0.5",
    )  # fmt: skip

    assert done.returncode == 3, done.stderr
    root_id = done.stdout.split()[1]
    assert f"workflow {root_id} had not ended after 0.5 s" in done.stderr
    [workflow] = status(daemon, root_id)
    assert workflow.state == "running"  # the CLI gave up; the chain goes on
    gate.touch()
    again = daemon.cli("trace", root_id, "--follow")
    assert again.returncode == 0, again.stderr
    assert status(daemon, root_id)[0].state == "completed"


def test_an_event_no_block_sinks_has_nothing_to_wait_for(daemon):
    done = daemon.cli("emit", "nobody_listens", "--project", "acme", "--wait")

    assert done.returncode == 0, done.stderr
    assert "workflow (none: no block sinks its type)" in done.stdout


def test_a_bad_timeout_is_refused_before_anything_is_emitted(daemon):
    done = daemon.cli("emit", "greet_requested", "--project", "acme", "--wait", "--timeout", "-1")

    assert done.returncode == 2
    assert "--timeout: must be more than 0 and less than 1,000,000,000 seconds" in done.stderr


def test_json_after_a_timeout_or_without_a_workflow_is_one_document(daemon, tmp_path):
    gate = tmp_path / "gate"
    payload = json.dumps({"gate": str(gate)})
    late = daemon.cli(
        "emit", "gated_requested", "--project", "acme", "--payload", payload,
        "--wait", "--timeout", "0.3", "--json",
    )  # fmt: skip
    gate.touch()  # let the chain end

    assert late.returncode == 3, late.stderr
    document = json.loads(late.stdout)
    assert (document["state"], document["trace"]) == ("running", None)
    assert document["workflow_id"] == document["event_id"]

    none = daemon.cli("emit", "nobody_listens", "--project", "acme", "--wait", "--json")
    assert none.returncode == 0, none.stderr
    assert json.loads(none.stdout)["state"] == "none"
    assert json.loads(none.stdout)["workflow_id"] == ""
