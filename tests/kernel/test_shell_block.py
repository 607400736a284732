"""The shell block type, run by the real engine: the payload reaches the program as data only."""

import json
import re
import sys

import pytest
from foundry.kernel.blocks.registry import load_blocks
from foundry.kernel.core.throttle import Throttle
from foundry.kernel.errors import ConfigError

from .harness import running_kernel

INSPECT = """
import json, os, sys
print(json.dumps({
    "stdin": sys.stdin.read(),
    "payload_env": os.environ["FOUNDRY_PAYLOAD"],
    "inputs": {k: v for k, v in os.environ.items() if k.startswith("FOUNDRY_INPUT_")},
    "event_type": os.environ["FOUNDRY_EVENT_TYPE"],
    "project": os.environ["FOUNDRY_PROJECT"],
    "throttle": os.environ["FOUNDRY_THROTTLE"],
    "static": os.environ.get("STATIC", ""),
}))
"""


def shell_registry(**table):
    return load_blocks(
        declared=[{"name": "Sh", "type": "shell", "sinks": ["go"], **table}], entry_points=False
    )


async def run_once(home, registry, payload, throttle=Throttle.FULL):
    async with running_kernel(home, registry) as k:
        emitted = await k.emit("go", payload, project="acme", throttle=throttle)
        trace = await k.finished(emitted.workflow_id)
    [x] = [x for x in trace["block_executions"] if x["block_name"] == "Sh"]
    return trace, x


async def test_the_payload_arrives_on_stdin_and_in_env_and_stdout_json_is_emitted(tmp_path):
    registry = shell_registry(
        command=[sys.executable, "-c", INSPECT], emits="inspected", env={"STATIC": "yes"}
    )
    payload = {"name": "Ada", "count": 3, "ok": True, "nested": {"a": 1}, "dashed-key": "v"}

    trace, x = await run_once(tmp_path, registry, payload)

    assert x["success"] is True
    assert x["exit_code"] == 0
    [got] = x["emitted_payloads"]
    assert json.loads(got["stdin"]) == payload
    assert got["stdin"] == json.dumps(payload, separators=(",", ":"), sort_keys=True)
    assert json.loads(got["payload_env"]) == payload
    assert got["inputs"] == {
        "FOUNDRY_INPUT_NAME": "Ada",
        "FOUNDRY_INPUT_COUNT": "3",
        "FOUNDRY_INPUT_OK": "true",
        "FOUNDRY_INPUT_DASHED_KEY": "v",
    }  # only top-level scalars
    assert (got["event_type"], got["project"], got["throttle"]) == ("go", "acme", "full")
    assert got["static"] == "yes"
    assert json.loads(x["raw_output"]) == got
    assert [e["event_type"] for e in trace["events"]] == ["go", "inspected"]


async def test_a_payload_too_large_for_the_environment_arrives_on_stdin_alone(tmp_path):
    # Linux refuses an environment string over 128 KiB (E2BIG): a 300 KB input failed the
    # step on every attempt with "Argument list too long"
    probe = ("import json, os, sys; print(json.dumps({'stdin': len(sys.stdin.read()), "
             "'env': sorted(k for k in os.environ if k.startswith('FOUNDRY_INPUT_') "
             "or k == 'FOUNDRY_PAYLOAD')}))")  # fmt: skip
    registry = shell_registry(command=[sys.executable, "-c", probe], emits="probed")
    payload = {"big": "x" * 300_000, "small": "y", "also": "z" * 70_000}
    _, x = await run_once(tmp_path, registry, payload)
    assert x["success"] is True, x
    [got] = x["emitted_payloads"]
    assert got["stdin"] == len(json.dumps(payload, separators=(",", ":")))
    assert got["env"] == ["FOUNDRY_INPUT_SMALL"]  # the payload and the large inputs left out


async def test_a_hostile_payload_is_never_interpreted(tmp_path):
    marks = [tmp_path / f"pwned{i}" for i in range(4)]
    hostile = {
        "note": f"$(touch {marks[0]}); `touch {marks[1]}`",
        "path": f"x; touch {marks[2]} && echo",
        "quote": f"'\"; touch {marks[3]}; echo \"'",
    }
    registry = shell_registry(
        command=[
            "sh",
            "-c",
            'printf "%s|%s|%s|" "$FOUNDRY_INPUT_NOTE" "$1" {note}; cat',
            "sh",
            "{path}",
        ],
        cwd=str(tmp_path),
    )

    _, x = await run_once(tmp_path / "home", registry, hostile)

    assert x["success"] is True
    assert x["raw_output"] == (
        f"{hostile['note']}|{{path}}|{{note}}|"
        + json.dumps(hostile, separators=(",", ":"), sort_keys=True)
    )
    assert [m for m in marks if m.exists()] == []


async def test_a_command_string_is_split_but_never_run_by_a_shell(tmp_path):
    mark = tmp_path / "pwned"
    registry = shell_registry(command=f"echo one; touch {mark}")

    _, x = await run_once(tmp_path / "home", registry, {})

    assert x["raw_output"] == f"one; touch {mark}\n"
    assert not mark.exists()


async def test_the_operators_env_outranks_what_the_payload_sets(tmp_path):
    # a payload key "mode" set FOUNDRY_INPUT_MODE over the operator's own
    registry = shell_registry(
        command=[sys.executable, "-c", INSPECT], emits="inspected",
        env={"FOUNDRY_INPUT_MODE": "safe"},
    )  # fmt: skip
    trace, x = await run_once(tmp_path, registry, {"mode": "yolo", "other": "kept"})
    [got] = x["emitted_payloads"]
    assert got["inputs"] == {"FOUNDRY_INPUT_MODE": "safe", "FOUNDRY_INPUT_OTHER": "kept"}


async def test_a_silent_command_that_fails_says_only_its_exit_code(tmp_path):
    registry = shell_registry(command=["sh", "-c", "exit 3"])
    trace, x = await run_once(tmp_path, registry, {})
    assert x["summary"].endswith("BlockError: sh exited with 3"), x["summary"]


async def test_a_nonzero_exit_fails_with_the_code_and_output_captured(tmp_path):
    registry = shell_registry(
        command=["sh", "-c", "echo working; echo 'bad thing happened' >&2; exit 3"],
        emits="never",
    )

    trace, x = await run_once(tmp_path, registry, {"a": 1})

    assert x["success"] is False
    assert x["state"] == "failed"
    assert x["exit_code"] == 3
    # stdout and stderr from pipes of their own, each piece as it is read: in either order
    assert sorted(x["raw_output"].splitlines()) == ["bad thing happened", "working"]
    assert "exited with 3" in x["summary"]
    assert "bad thing happened" in x["summary"]
    assert x["emitted_event_ids"] == []
    assert trace["state"] == "failed"


async def test_a_failure_is_said_by_stderrs_last_line_whichever_pipe_was_read_last(tmp_path):
    """With stdout and stderr read apart, the output's last line was stdout's now and then:
    "sh exited with 3: working" (1 in 60 in the daemon, 46 in 200 without stdin)."""
    script = "echo 'bad thing happened' >&2; sleep 0.05; echo working; exit 3"  # stdout last
    registry = shell_registry(command=["sh", "-c", script])
    async with running_kernel(tmp_path, registry) as k:
        for _ in range(3):
            emitted = await k.emit("go", {"a": 1}, project="acme")
            trace = await k.finished(emitted.workflow_id)
            [x] = [x for x in trace["block_executions"] if x["block_name"] == "Sh"]
            assert x["summary"].endswith("exited with 3: bad thing happened"), x["summary"]


async def test_a_failing_command_is_retried(tmp_path):
    counter = tmp_path / "count"
    script = (
        f"n=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {counter}; [ $n -ge 2 ]"
    )
    registry = shell_registry(command=["sh", "-c", script], retries=1, backoff=0)

    _, x = await run_once(tmp_path / "home", registry, {})

    assert x["success"] is True
    assert x["attempts"] == 2
    assert counter.read_text().strip() == "2"


async def test_stdout_alone_is_the_answer_and_stderr_is_in_the_raw_output(tmp_path):
    """stdout and stderr together were parsed: a warning on stderr made a command's JSON
    answer the text ``{"output": "{...}\\nwarning: ..."}`` (and a DAG step's output too)."""
    script = "echo '{\"ok\": 1}'; echo 'warning: something' >&2"
    registry = shell_registry(command=["sh", "-c", script], emits="json_done")
    _, x = await run_once(tmp_path, registry, {})
    assert x["emitted_payloads"] == [{"ok": 1}]
    assert sorted(x["raw_output"].splitlines()) == ["warning: something", '{"ok": 1}']


async def test_plain_text_and_non_object_json_are_wrapped_as_output(tmp_path):
    text = shell_registry(command=["echo", "hello there"], emits="said")
    listing = shell_registry(command=["echo", "[1, 2]"], emits="said")

    _, x_text = await run_once(tmp_path / "a", text, {})
    _, x_list = await run_once(tmp_path / "b", listing, {})

    assert x_text["emitted_payloads"] == [{"output": "hello there"}]
    assert x_list["emitted_payloads"] == [{"output": [1, 2]}]


async def test_a_shell_mutator_does_not_run_under_audit_only_or_dry_run(tmp_path):
    mark = tmp_path / "ran"
    registry = shell_registry(command=["touch", str(mark)], emits="done", simulate=True)

    audit_trace, audited = await run_once(tmp_path / "a", registry, {"k": 1}, Throttle.AUDIT_ONLY)
    dry_trace, dry = await run_once(tmp_path / "b", registry, {"k": 1}, Throttle.DRY_RUN)

    assert not mark.exists()
    assert (audited["state"], audited["throttled"], audited["emitted_payloads"]) == (
        "completed",
        True,
        [],
    )
    assert dry["state"] == "skipped"
    assert dry["emitted_payloads"] == [{"k": 1, "simulated": True}]
    assert audit_trace["state"] == dry_trace["state"] == "completed"


async def test_a_when_filter_picks_payloads(tmp_path):
    registry = shell_registry(command=["echo", "hi"], when={"env": "prod"})

    async with running_kernel(tmp_path, registry) as k:
        prod = await k.emit("go", {"env": "prod"})
        dev = await k.emit("go", {"env": "dev"})
        prod_trace = await k.finished(prod.workflow_id)
        dev_trace = await k.finished(dev.workflow_id)

    assert [x["block_name"] for x in prod_trace["block_executions"]] == ["Sh"]
    assert dev_trace["block_executions"] == []


def test_a_shell_block_needs_a_command():
    with pytest.raises(ConfigError, match=r"'Sh'.*command"):
        shell_registry()


async def test_a_value_an_environment_cannot_hold_arrives_on_stdin_alone(tmp_path):
    # A NUL in any payload string failed every shell block it reached ("embedded null byte"),
    # and 20,000 keys with short values passed the 512 KiB budget only counted by their names
    probe = (
        "import json, os, sys; print(json.dumps({'stdin': len(sys.stdin.read()), "
        "'env': sorted(k for k in os.environ if k.startswith('FOUNDRY_INPUT_'))}))"
    )
    registry = shell_registry(command=[sys.executable, "-c", probe], emits="probed")
    many = {f"key_{i:05d}_{'k' * 90}": "" for i in range(20_000)}
    payload = {"nul": "a\0b", "fine": "c", **many}
    _, x = await run_once(tmp_path, registry, payload)
    assert x["success"] is True, x["summary"]
    [got] = x["emitted_payloads"]
    assert got["stdin"] == len(json.dumps(payload, separators=(",", ":")))
    assert "FOUNDRY_INPUT_NUL" not in got["env"]
    assert "FOUNDRY_INPUT_FINE" in got["env"]
    assert 1_000 < len(got["env"]) < 6_000  # the names count towards the 512 KiB


@pytest.mark.parametrize(
    ("table", "said"),
    [
        ({"cwd": 5}, "cwd: expected a directory path"),
        ({"cwd": "/no/such/folder"}, "cwd: no such directory"),
        ({"env": {"A=B": "x"}}, "env: 'A=B' is not an environment variable name"),
        ({"env": {"X": "a\0b"}}, "env.X: the value holds a NUL character"),
        ({"simulate": "no"}, "simulate: expected true or false, got 'no'"),
        ({"command": ["tr\0ue"]}, "command: an argument holds a NUL character"),
        ({"when": {"v": float("nan")}}, "when.v: nan is not a finite number"),
        ({"emits": "a\0b"}, "emits: the event type holds a NUL character"),
        ({"emits": "e" * 257}, "emits: the event type is longer than 256 characters"),
        ({"kind": ["mutator"]}, "kind: expected 'observer' or 'mutator', got ['mutator']"),
    ],
    ids=["cwd-number", "cwd-missing", "env-name", "env-nul", "simulate-text", "argv-nul", "nan",
         "emits-nul", "emits-long", "kind-list"],
)  # fmt: skip
def test_a_shell_block_option_no_run_could_use_is_refused_at_start(table, said):
    # each of these passed `config check` and `serve`, then failed every run
    with pytest.raises(ConfigError, match=re.escape(said)):
        shell_registry(**{"command": ["true"], **table})


def test_when_compares_as_json_does():
    registry = shell_registry(command=["true"], when={"flag": True, "n": 0})
    sh = registry.by_name["Sh"]
    assert sh.accepts({"flag": True, "n": 0})
    assert sh.accepts({"flag": True, "n": 0.0})  # one JSON number
    assert not sh.accepts({"flag": 1, "n": 0})  # true is not 1
    assert not sh.accepts({"flag": True, "n": False})  # nor 0 false
    assert not sh.accepts({"flag": True})


async def test_an_executions_raw_output_keeps_the_last_64_kib(tmp_path):
    # stored whole, a 60 MB output made its chain's Trace RESOURCE_EXHAUSTED for good
    many = "head -c 100000 /dev/zero | tr '\\0' a; echo end"
    registry = shell_registry(command=["sh", "-c", many])
    trace, x = await run_once(tmp_path, registry, {})
    assert len(x["raw_output"]) == 65_536
    assert x["raw_output"].endswith("aaaaend\n")


async def test_an_output_nested_past_emits_limit_is_not_emitted(tmp_path):
    """A program's JSON output 500 levels deep was emitted: Emit refuses past 127."""
    deep = "[" * 200 + "]" * 200
    registry = shell_registry(command=["printf", '{"v":' + deep + "}"], emits="deep")
    trace, x = await run_once(tmp_path, registry, {})
    assert x["success"] is False
    assert "nested deeper than 127 levels" in x["summary"], x["summary"]
    assert [e["event_type"] for e in trace["events"]] == ["go"]


async def test_an_output_too_deep_for_json_loads_is_read_as_text(tmp_path):
    """~1,000 levels deep, json.loads raises RecursionError: the block failed with it."""
    deep = "[" * 5_000 + "]" * 5_000
    registry = shell_registry(command=["printf", deep], emits="deep")
    trace, x = await run_once(tmp_path, registry, {})
    assert x["success"] is True, x["summary"]
    [emitted] = x["emitted_payloads"]
    assert emitted == {"output": deep}


async def test_an_output_at_emits_depth_limit_is_emitted(tmp_path):
    deep = "[" * 126 + "]" * 126  # in {"v": …}: 127 levels
    registry = shell_registry(command=["printf", '{"v":' + deep + "}"], emits="deep")
    trace, x = await run_once(tmp_path, registry, {})
    assert x["success"] is True, x["summary"]
    assert [e["event_type"] for e in trace["events"]] == ["go", "deep"]


async def test_a_key_too_long_for_the_environment_arrives_on_stdin_alone(tmp_path):
    # "FOUNDRY_INPUT_<140,000 Ks>=v" is one environment string past Linux's 128 KiB: the value's
    # size alone was checked, and every start failed "Argument list too long"
    probe = (
        "import os, sys; sys.stdin.read(); "
        "print(sorted(len(k) for k in os.environ if k.startswith('FOUNDRY_INPUT_')))"
    )
    registry = shell_registry(command=[sys.executable, "-c", probe])
    _, x = await run_once(tmp_path, registry, {"k" * 140_000: "v", "short": "s"})
    assert x["success"] is True, x["summary"]
    assert x["raw_output"].strip() == str([len("FOUNDRY_INPUT_SHORT")])


@pytest.mark.parametrize(
    "stdout",
    ['{"x": NaN}', '{"x": 1e400}', "Infinity", '{"x": "\\ud800"}', '{"n": 1' + "0" * 400 + "}"],
)
async def test_output_that_is_no_json_the_daemon_stores_is_emitted_as_text(tmp_path, stdout):
    # Python's reader takes NaN, 1e400 (as inf) and a lone surrogate's escape: the block then
    # failed to emit them, where README says such stdout is emitted as {"output": text}
    registry = shell_registry(command=["printf", "%s", stdout], emits="said")
    _, x = await run_once(tmp_path, registry, {})
    assert x["success"] is True, x["summary"]
    assert x["emitted_payloads"] == [{"output": stdout}]


async def test_stdouts_numbers_are_read_as_emits_are(tmp_path):
    """-0 was 0 here and -0.0 through Emit, a number past a u64 an int here and a float there:
    the same JSON made another payload, so another event id (a hunt)."""
    from foundry.kernel.core.ids import payload_json_of
    from foundry.kernel.core.json_input import parse_json_object

    stdout = '{"a": -0, "b": 18446744073709551616, "c": 0.1, "d": -9223372036854775809}'
    registry = shell_registry(command=["printf", "%s", stdout], emits="said")
    _, x = await run_once(tmp_path, registry, {})
    [emitted] = x["emitted_payloads"]
    emitted_by_emit = parse_json_object(stdout, "payload_json", upstream_numbers=True)
    assert payload_json_of(emitted) == payload_json_of(emitted_by_emit)
    assert payload_json_of(emitted).startswith('{"a":-0.0,"b":1.8446744073709552e+19')


async def test_an_audited_shell_mutator_says_it_told_nothing_it_would_emit(tmp_path):
    registry = shell_registry(command=["echo", "{}"], emits="done")
    _, audited = await run_once(tmp_path, registry, {"k": 1}, Throttle.AUDIT_ONLY)
    assert audited["emitted_payloads"] == []
    assert audited["summary"] == (
        "audited under AUDIT_ONLY: a mutator, not run; it told nothing it would emit"
    )  # it said "what it would emit is recorded": nothing was


async def test_a_sink_listed_twice_runs_its_block_once_an_event(tmp_path):
    mark = tmp_path / "runs"
    registry = shell_registry(
        command=["sh", "-c", f"echo ran >> {mark}"], sinks=["go", "go"], kind="observer"
    )
    assert registry.by_name["Sh"].sinks == ("go",)
    trace, _ = await run_once(tmp_path / "home", registry, {})
    assert len(trace["block_executions"]) == 1
    assert mark.read_text() == "ran\n"


async def test_an_audited_relay_mutator_records_what_it_would_emit(tmp_path):
    registry = load_blocks(
        declared=[{"name": "Sh", "type": "relay", "kind": "mutator", "sinks": ["go"],
                   "emits": "relayed", "set": {"via": "relay"}}],
        entry_points=False,
    )  # fmt: skip
    trace, x = await run_once(tmp_path, registry, {"k": 1}, Throttle.AUDIT_ONLY)
    assert x["emitted_payloads"] == [{"k": 1, "via": "relay"}]  # recorded, as the summary says
    assert x["summary"].startswith("audited under AUDIT_ONLY")
    assert "recorded, not delivered" in x["summary"]
    [relayed] = [e for e in trace["events"] if e["event_type"] == "relayed"]
    assert relayed["throttled"] is True
