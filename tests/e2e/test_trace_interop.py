"""Interop with the public Foundry daemon, end to end (issue 14, items 1 and 3): its trace files
read through our Trace RPC, ours written as it writes them, and event ids it can recompute — over
a real socket with the grpcio client generated from the ``.proto`` sources.

Upstream's trace file sample is ``UPSTREAM_TRACE`` (its shape, as /work/shared/interop shows it):
pretty-printed, ``Z`` timestamps, ``null`` raw output and exit code for a block that ran no
command, none of our extra keys.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from datetime import UTC, datetime

import grpc
import pytest

from tests.daemon import Daemon
from tests.e2e.helpers import finished
from tests.helpers import wait_until

UPSTREAM_TRACE = {
    "events": [
        {
            "id": "evt_abababababababababababab",
            "event_type": "greet_requested",
            "project": "up",
            "occurred_at": "2026-11-28T07:03:52.123Z",
            "recorded_at": "2026-11-28T07:03:52.123Z",
            "throttle": "full",
            "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
            "span_id": "00f067aa0ba902b7",
            "payload": {"name": "Zoë"},
        }
    ],
    "block_executions": [
        {
            "block_name": "Compose Greeting",
            "trigger_event_id": "evt_abababababababababababab",
            "success": True,
            "summary": "ok",
            "emitted_event_ids": [],
            "duration_ms": 3,
            "raw_output": None,
            "exit_code": None,
            "trigger_payload": {"name": "Zoë"},
            "emitted_payloads": [],
            "audit_artifacts": [],
        }
    ],
    "total_duration_ms": 3,
}

SHELL = """
[[blocks]]
name = "Echo Shell"
type = "shell"
kind = "observer"
sinks = ["greeting_delivered"]
command = ["sh", "-c", "echo shelled"]

[[blocks]]
name = "Slow Shell"
type = "shell"
kind = "observer"
sinks = ["slow_requested"]
command = ["sh", "-c", "echo partial; echo err-partial 1>&2; exec sleep 30"]
emits = "never"
timeout = 1
"""


def upstream_id(event_type: str, project: str, occurred_at: str, payload_json: str) -> str:
    """The public daemon's recipe, written out here independently of ``core/ids.py``."""
    material = (event_type + project + occurred_at + payload_json).encode()
    return "evt_" + hashlib.sha256(material).hexdigest()[:24]


# The root id the tests query: the sample's root event as upstream computes its id.
ROOT = upstream_id("greet_requested", "up", "2026-11-28T07:03:52.123+00:00", '{"name":"Zoë"}')


def upstream_file(root_id: str, **changes: object) -> dict:
    """The sample, its root re-keyed to ``root_id`` (the id we query), with ``changes`` applied
    to its one block execution."""
    document = copy.deepcopy(UPSTREAM_TRACE)
    document["events"][0]["id"] = root_id
    document["block_executions"][0].update(trigger_event_id=root_id, **changes)
    return document


def drop(daemon: Daemon, root_id: str, text: str | bytes, day: str = "2026-11-28") -> None:
    folder = daemon.home / "traces" / day
    folder.mkdir(parents=True, exist_ok=True)
    data = text.encode() if isinstance(text, str) else text
    (folder / f"{root_id}.json").write_bytes(data)


def trace(stubs, pb, event_id: str):
    foundry, _ = stubs
    return foundry.Trace(pb.TraceRequest(event_id=event_id), timeout=15)


def fake_id(n: int) -> str:
    return "evt_" + hashlib.sha256(f"not stored {n}".encode()).hexdigest()[:24]


@pytest.fixture(scope="module")
def daemon(shared_daemon):
    """One daemon for the module: every test keys its files and chains by its own ids."""
    return shared_daemon(SHELL + "\n[engine]\nrecent_workflows = 1\n")


@pytest.fixture(scope="module")
def stubs(daemon, grpcio_client):
    with grpcio_client.connect(daemon.address) as pair:
        yield pair


@pytest.fixture
def pb(grpcio_client):
    return grpcio_client.foundry_pb2


# --- upstream's files, read through Trace ---------------------------------------------------


def test_the_samples_root_id_is_upstreams_recipe():
    # The sample's own id is a placeholder; the one the tests query is what upstream computes.
    root = UPSTREAM_TRACE["events"][0]
    stamp = (
        datetime.fromisoformat(root["occurred_at"])
        .astimezone(UTC)
        .isoformat(timespec="milliseconds")
    )
    assert stamp == "2026-11-28T07:03:52.123+00:00"
    assert upstream_id("greet_requested", "up", stamp, '{"name":"Zoë"}') == ROOT


@pytest.mark.parametrize(
    "render",
    [
        lambda d: json.dumps(d, indent=2, ensure_ascii=False),  # as upstream writes it
        lambda d: json.dumps(d, separators=(",", ":")),  # compact, \u escapes
        lambda d: json.dumps(d, indent="\t") + "\n\n",
    ],
    ids=["pretty", "compact", "tabs"],
)
def test_an_upstream_trace_file_is_read_through_trace(daemon, stubs, pb, render):
    drop(daemon, ROOT, render(upstream_file(ROOT)))

    reply = trace(stubs, pb, ROOT)

    assert reply.found
    [event] = reply.events
    assert (event.event_id, event.event_type, event.project) == (ROOT, "greet_requested", "up")
    assert event.occurred_at == "2026-11-28T07:03:52.123+00:00"  # the file's "Z", as id-hashed
    assert event.throttle == pb.THROTTLE_FULL
    assert event.payload_json == '{"name":"Zoë"}'
    assert event.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert event.span_id == "00f067aa0ba902b7"
    assert (event.recorded_at, event.throttled) == ("2026-11-28T07:03:52.123+00:00", False)
    [x] = reply.block_executions
    assert (x.block_name, x.trigger_event_id, x.success, x.summary) == (
        "Compose Greeting",
        ROOT,
        True,
        "ok",
    )
    assert (x.raw_output, x.exit_code, x.duration_ms) == ("", 0, 3)  # null: ran no command
    assert x.trigger_payload_json == '{"name":"Zoë"}'
    assert list(x.emitted_event_ids) == list(x.emitted_payload_jsons) == []
    assert (x.state, x.throttled, x.attempts) == ("", False, 1)  # our extra keys: defaults
    if "total_duration_ms" in {f.name for f in pb.TraceResponse.DESCRIPTOR.fields}:
        assert reply.total_duration_ms == 3


def test_upstream_files_without_extra_keys_or_with_unknown_ones_are_read(daemon, stubs, pb):
    bare = upstream_file(ROOT)
    for key in ("recorded_at", "trace_id", "span_id"):
        del bare["events"][0][key]
    del bare["total_duration_ms"]
    drop(daemon, ROOT, json.dumps(bare))
    assert trace(stubs, pb, ROOT).events[0].trace_id == ""

    extra = upstream_file(ROOT, future_field={"nested": [1, 2]}, exit_code=0, raw_output="out")
    extra["events"][0]["labels"] = ["x"]
    extra["schema_version"] = 7
    drop(daemon, ROOT, json.dumps(extra, indent=1))
    reply = trace(stubs, pb, ROOT)
    assert reply.found
    assert (reply.block_executions[0].raw_output, reply.block_executions[0].exit_code) == (
        "out",
        0,
    )


def test_span_ids_a_file_gives_against_emits_rules_are_shown_empty(daemon, stubs, pb):
    """A file the daemon did not write may hold ids Emit refuses: a span its own parent, span
    ids without a trace id. Trace answered them as they were (a hunt)."""
    own_parent = upstream_file(ROOT)
    event, execution = own_parent["events"][0], own_parent["block_executions"][0]
    event["parent_span_id"] = event["span_id"]
    execution["parent_span_id"] = execution["span_id"] = event["span_id"]
    drop(daemon, ROOT, json.dumps(own_parent))
    reply = trace(stubs, pb, ROOT)
    assert reply.events[0].span_id == event["span_id"]
    assert reply.events[0].parent_span_id == ""
    assert (reply.block_executions[0].span_id, reply.block_executions[0].parent_span_id) == (
        event["span_id"], "")  # fmt: skip

    untraced = upstream_file(ROOT)
    untraced["events"][0]["trace_id"] = "00-" + untraced["events"][0]["trace_id"] + "-01"
    untraced["events"][0]["parent_span_id"] = "1111111111111111"
    drop(daemon, ROOT, json.dumps(untraced))
    reply = trace(stubs, pb, ROOT)
    e, x = reply.events[0], reply.block_executions[0]
    assert (e.trace_id, e.span_id, e.parent_span_id, x.span_id, x.parent_span_id) == ("",) * 5


def at_time(document: dict, occurred_at: str) -> dict:
    document["events"][0]["occurred_at"] = occurred_at
    return document


def test_a_time_at_another_offset_is_shown_as_the_instant_in_utc(daemon, stubs, pb):
    drop(daemon, ROOT, json.dumps(at_time(upstream_file(ROOT), "2026-11-28t09:03:52.123+02:00")))
    assert trace(stubs, pb, ROOT).events[0].occurred_at == "2026-11-28T07:03:52.123+00:00"


@pytest.mark.parametrize(
    "corrupt",
    [
        b"",
        b'{"events": [',  # torn
        b"\xff\xfe not utf-8",
        b"[]",
        b'{"events": 3, "block_executions": []}',
        b'{"block_executions": []}',
        json.dumps(upstream_file("X", exit_code="zero")).encode(),
        json.dumps(upstream_file("X", exit_code=1.5)).encode(),
        json.dumps(upstream_file("X", duration_ms=-1)).encode(),
        json.dumps(upstream_file("X", duration_ms=2**70)).encode(),
        json.dumps(upstream_file("X", success="yes")).encode(),
        json.dumps(upstream_file("X", emitted_event_ids=[1, 2])).encode(),
        json.dumps(upstream_file("X", block_name=None)).encode(),
        json.dumps(upstream_file("X", summary={"not": "text"})).encode(),
        json.dumps(
            {**upstream_file("X"), "events": [{"id": "e", "throttle": "sideways"}]}
        ).encode(),
        json.dumps({**upstream_file("X"), "events": ["not an object"]}).encode(),
        json.dumps(at_time(upstream_file("X"), "2026-13-45T07:03:52Z")).encode(),  # no such day
        json.dumps(at_time(upstream_file("X"), "yesterday")).encode(),
        b'{"events": [], "block_executions": [], "x": NaN}',
        b'{"events": [], "block_executions": [], "x": 1e400}',
        b'{"events": [], "block_executions": [], "x": "\\ud800"}',
        b'{"events": [], "block_executions": [], "x": ' + b"[" * 100_000,
        b'{"events": [], "block_executions": [], "x": ' + b"[" * 3000 + b"]" * 3000 + b"}",
    ],
)
def test_a_corrupt_file_of_an_unknown_chain_is_not_found_and_harms_nothing(
    daemon, stubs, pb, corrupt
):
    drop(daemon, ROOT, corrupt)

    assert trace(stubs, pb, ROOT).found is False
    assert daemon.process is not None
    assert daemon.process.poll() is None
    drop(daemon, ROOT, json.dumps(upstream_file(ROOT)))  # the daemon still answers
    assert trace(stubs, pb, ROOT).found


def test_a_folder_in_place_of_the_file_is_not_found(daemon, stubs, pb):
    (daemon.home / "traces" / "2026-11-28" / f"{fake_id(1)}.json").mkdir(parents=True)

    assert trace(stubs, pb, fake_id(1)).found is False


# --- our files: written as upstream writes them, and read back from the database when corrupt ---


def greet(stubs, pb, name: str = "Zoë"):
    foundry, _ = stubs
    request = pb.EmitRequest(
        event_type="greet_requested", project="acme", payload_json=json.dumps({"name": name})
    )
    return foundry.Emit(request, timeout=15)


def our_file(daemon: Daemon, root_id: str) -> tuple:
    def found():
        return next(iter((daemon.home / "traces").glob(f"*/{root_id}.json")), None)

    path = wait_until(found, what=f"the trace file of {root_id}")
    document = wait_until(lambda: _loaded(path), what=f"{path} written whole")
    return path, document


def _loaded(path):
    try:
        return json.loads(path.read_bytes())
    except ValueError:
        return None


def test_our_files_write_null_for_blocks_that_ran_no_command(daemon, stubs, pb):
    reply = greet(stubs, pb)
    finished(daemon, reply.workflow_id)

    _, document = our_file(daemon, reply.workflow_id)

    executions = {x["block_name"]: x for x in document["block_executions"]}
    for python_block in ("Compose Greeting", "Deliver Greeting"):
        assert executions[python_block]["raw_output"] is None
        assert executions[python_block]["exit_code"] is None
    assert executions["Echo Shell"]["raw_output"] == "shelled\n"  # it ran a command
    assert executions["Echo Shell"]["exit_code"] == 0
    # ... and Trace reads them (from memory here) as "" and 0
    traced = trace(stubs, pb, reply.workflow_id)
    by_name = {x.block_name: x for x in traced.block_executions}
    assert (by_name["Compose Greeting"].raw_output, by_name["Compose Greeting"].exit_code) == (
        "",
        0,
    )
    assert by_name["Echo Shell"].raw_output == "shelled\n"


def test_a_command_its_timeout_cut_short_keeps_its_output_and_exit_code(daemon, stubs, pb):
    foundry, _ = stubs
    reply = foundry.Emit(pb.EmitRequest(event_type="slow_requested", project="acme"), timeout=15)
    finished(daemon, reply.workflow_id)

    _, document = our_file(daemon, reply.workflow_id)

    (execution,) = document["block_executions"]
    assert execution["success"] is False
    assert execution["summary"] == "timed out after 1s"
    # it ran a command: what it wrote before the timeout, and the signal that stopped it. Its
    # stdout and stderr come through pipes of their own (a block sees each alone), so the two
    # lines, written at once, reach the raw output in either order.
    assert lines_of(execution["raw_output"]) == ["err-partial\n", "partial\n"]
    assert execution["exit_code"] == -15
    (traced,) = trace(stubs, pb, reply.workflow_id).block_executions
    assert (lines_of(traced.raw_output), traced.exit_code) == (["err-partial\n", "partial\n"], -15)


def lines_of(output: str) -> list[str]:
    return sorted(output.splitlines(keepends=True))


def test_our_ids_are_recomputable_from_our_files_and_trace(daemon, stubs, pb):
    foundry, _ = stubs
    payload = (
        '{"name": "Zoë", "f": 5e-05, "i": -0, "big": 100000000000000000000,'
        ' "k": {"b": 1, "a": [1.0, 1e-7]}}'
    )
    reply = foundry.Emit(
        pb.EmitRequest(event_type="greet_requested", project="acme", payload_json=payload),
        timeout=15,
    )
    finished(daemon, reply.workflow_id)

    _, document = our_file(daemon, reply.workflow_id)
    traced = trace(stubs, pb, reply.workflow_id)
    root = traced.events[0]
    expected = '{"big":1e+20,"f":0.00005,"i":-0.0,"k":{"a":[1.0,1e-7],"b":1},"name":"Zoë"}'
    assert root.payload_json == expected
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3}|\.\d{6})?\+00:00", root.occurred_at
    )
    assert upstream_id("greet_requested", "acme", root.occurred_at, expected) == reply.event_id
    for event, on_disk in zip(traced.events, document["events"], strict=True):
        assert on_disk["occurred_at"] == event.occurred_at.removesuffix("+00:00") + "Z"
        assert (
            upstream_id(event.event_type, event.project, event.occurred_at, event.payload_json)
            == event.event_id
        )  # every event of the chain, emitted ones too


def test_a_corrupt_file_of_a_stored_chain_is_read_from_the_database(daemon, stubs, pb):
    first = greet(stubs, pb, "First")
    finished(daemon, first.workflow_id)
    path, document = our_file(daemon, first.workflow_id)
    second = greet(stubs, pb, "Second")  # recent_workflows = 1: the first leaves memory
    finished(daemon, second.workflow_id)
    our_file(daemon, second.workflow_id)

    for corrupt in (b'{"events": [', json.dumps({**document, "events": 5}).encode()):
        path.write_bytes(corrupt)
        reply = trace(stubs, pb, first.workflow_id)
        assert reply.found
        assert [e.event_id for e in reply.events] == [e["id"] for e in document["events"]]
        assert json.loads(reply.events[0].payload_json) == {"name": "First"}
        for event in reply.events:  # the database answers in the hashed form too
            assert (
                upstream_id(event.event_type, event.project, event.occurred_at, event.payload_json)
                == event.event_id
            )
        assert {x.block_name for x in reply.block_executions} == {
            x["block_name"] for x in document["block_executions"]
        }


# --- what Emit refuses, as upstream does --------------------------------------------------------


@pytest.mark.parametrize(
    ("payload_json", "reason"),
    [
        ('{"a":' * 128 + "1" + "}" * 128, "payload_json: nested deeper than 127 levels"),
        ('{"n": 1e400}', "payload_json: not valid JSON: number out of range"),
        ("[1, 2]", "payload_json: must be a JSON object, got an array"),
        ('"Zoë"', "payload_json: must be a JSON object, got a string"),
    ],
)
def test_payloads_upstream_refuses_are_invalid_argument(stubs, pb, payload_json, reason):
    foundry, _ = stubs
    request = pb.EmitRequest(event_type="greet_requested", project="p", payload_json=payload_json)

    with pytest.raises(grpc.RpcError) as caught:
        foundry.Emit(request, timeout=15)

    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith(reason)


def test_a_payload_127_levels_deep_is_accepted(stubs, pb):
    """The deepest serde_json takes (its budget of 128 runs out on entering the 128th)."""
    foundry, _ = stubs
    deep = '{"a":' * 127 + "1" + "}" * 127
    request = pb.EmitRequest(event_type="nobody_sinks", project="p", payload_json=deep)

    assert foundry.Emit(request, timeout=15).event_id.startswith("evt_")
