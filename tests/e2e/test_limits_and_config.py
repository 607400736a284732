"""Runaway chains are stopped by the engine's limits; a bad config or a busy port stops ``foundry
serve`` at once with one readable line."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from foundry.proto import foundry_api as api
from grpclib.const import Status

from tests.e2e.helpers import emit, finished, foundry_cli, status, traced
from tests.helpers import grpc_error

PING_PONG = """
[engine]
max_chain_depth = {depth}
max_chain_events = {events}

[[blocks]]
name = "A"
type = "relay"
sinks = ["ping"]
emits = "pong"

[[blocks]]
name = "B"
type = "relay"
sinks = ["pong"]
emits = "ping"
"""


def test_a_relay_loop_is_stopped_by_the_depth_limit(make_daemon):
    daemon = make_daemon(PING_PONG.format(depth=5, events=10_000))
    reply = emit(daemon, "ping", payload={"ball": 1})
    workflow = finished(daemon, reply.workflow_id)
    assert workflow.state == "failed"
    assert "depth limit 5" in workflow.error
    chain = traced(daemon, reply.event_id)
    assert len(chain.events) <= 7  # the root, five levels, and the one that crossed the line
    assert [e.event_type for e in chain.events[:3]] == ["ping", "pong", "ping"]
    # The daemon is fine and serves the next chain.
    assert finished(daemon, emit(daemon, "greet_requested").workflow_id).state == "completed"


def test_a_relay_loop_is_stopped_by_the_event_budget(make_daemon):
    daemon = make_daemon(PING_PONG.format(depth=1_000, events=20))
    reply = emit(daemon, "ping")
    workflow = finished(daemon, reply.workflow_id)
    assert workflow.state == "failed"
    assert "event limit 20" in workflow.error
    assert len(traced(daemon, reply.event_id).events) <= 21


FAN = "".join(
    f'[[blocks]]\nname = "Copy {i}"\ntype = "relay"\nsinks = ["big"]\nemits = "copied"\n\n'
    for i in range(12)
)


def test_a_trace_too_large_to_answer_is_resource_exhausted_and_the_daemon_stays_quick(
    make_daemon,
):
    """A 5,000-event fan-out of 20 KB payloads made a 305 MB Trace reply: 1 GB of memory and
    14 s during which no other call was answered. Here 12 copies of a 1 MB payload (each in its
    event, its block's trigger and its emitted payloads: ~37 MB of JSON)."""
    daemon = make_daemon(FAN)
    reply = emit(daemon, "big", payload={"blob": "x" * 1_000_000})
    assert finished(daemon, reply.workflow_id).state == "completed"
    small = emit(daemon, "small", payload={"n": 1})  # sunk by nothing: a trace of one event
    for _ in range(2):  # from the engine's memory, then from the trace file after a restart
        error = grpc_error(daemon, lambda f, _: f.trace(api.TraceRequest(event_id=reply.event_id)))
        assert error.status == Status.RESOURCE_EXHAUSTED, error
        assert f"the trace of {reply.event_id} is " in error.message
        assert "over the 25,165,824 Trace answers" in error.message
        assert "ListEvents" in error.message
        assert status(daemon, reply.workflow_id)[0].state == "completed"
        daemon.stop()
        daemon.start()
    assert traced(daemon, small.event_id).events[0].payload_json == '{"n":1}'
    assert "Traceback" not in daemon.stderr()


def test_the_trace_of_a_chain_of_long_text_is_whole_on_both_ports(make_daemon):
    """Each payload is written again as the bytes its id hashed: for one 3 MB string, ~0.1 s a
    copy, four copies a relay's trace, held every other client 0.25-0.6 s a Trace (a hunt).
    Such a reply is made on a worker thread."""
    import httpx

    from tests.e2e.http_helpers import url

    daemon = make_daemon('[[blocks]]\nname = "Relay"\ntype = "relay"\nsinks = ["long"]\n'
                         'emits = "relayed"\n')  # fmt: skip
    text = "\u00e9" + "x" * 3_000_000
    reply = emit(daemon, "long", payload={"s": text})
    assert finished(daemon, reply.workflow_id).state == "completed"
    trace = traced(daemon, reply.event_id)
    assert [json.loads(e.payload_json) for e in trace.events] == [{"s": text}] * 2
    [execution] = trace.block_executions
    assert json.loads(execution.trigger_payload_json) == {"s": text}
    assert [json.loads(p) for p in execution.emitted_payload_jsons] == [{"s": text}]
    answer = httpx.post(url(daemon, "/foundry.Foundry/Trace"), json={"eventId": reply.event_id},
                        timeout=60)  # fmt: skip
    assert answer.status_code == 200, answer.text[:300]
    events = answer.json()["events"]
    assert [json.loads(e["payloadJson"]) for e in events] == [{"s": text}] * 2


def test_an_emit_whose_payload_is_stored_past_max_event_bytes_is_invalid_argument(make_daemon):
    """Stored numbers take serde_json's form: 1e15 is 1000000000000000.0, so a 1.25 MB Emit was
    stored as a 4.75 MB event, which cut off every default-client watcher (a hunt). A root's
    payload is held to the limit a block's emission is, as stored."""
    daemon = make_daemon("[engine]\nmax_event_bytes = 20000\n")
    numbers = '{"n": [' + ",".join(["1e15"] * 2_000) + "]}"  # ~10 KB sent, ~38 KB stored
    error = grpc_error(daemon, lambda f, _: f.emit(api.EmitRequest(
        event_type="numbers", project="limits", payload_json=numbers)))  # fmt: skip
    assert error.status == Status.INVALID_ARGUMENT, error
    assert "payload_json: 38,007 bytes of JSON as stored" in error.message
    assert "max_event_bytes (20,000)" in error.message
    fits = emit(daemon, "numbers", payload={"n": [1] * 5_000}, project="limits")
    assert traced(daemon, fits.event_id).events[0].payload_json.startswith('{"n":[1,1')
    # a payload of 64 KiB or more is parsed and written as stored on a worker thread: the same
    # refusal, the same stored form
    more = '{"n": [' + ",".join(["1e15"] * 20_000) + "]}"
    error = grpc_error(daemon, lambda f, _: f.emit(api.EmitRequest(
        event_type="numbers", project="limits", payload_json=more)))  # fmt: skip
    assert error.status == Status.INVALID_ARGUMENT, error
    assert "payload_json: 380,007 bytes of JSON as stored" in error.message


def test_status_lists_workflows_out_of_the_engines_memory_from_the_database(make_daemon):
    daemon = make_daemon("[engine]\nrecent_workflows = 2\n")
    replies = [emit(daemon, "greet_requested", payload={"n": i}) for i in range(3)]
    for reply in replies:
        finished(daemon, reply.workflow_id)
    listed = [w.workflow_id for w in status(daemon)]
    # Newest first; the oldest is out of the engine's memory, and listed from the database.
    assert listed == [r.workflow_id for r in reversed(replies)]
    # Asked by id, it comes from the database too.
    [oldest] = status(daemon, replies[0].workflow_id)
    assert oldest.state == "completed"
    assert len(oldest.task_blocks) == 2


# --- refusing to start --------------------------------------------------------------------------

BAD_CONFIGS = {
    "unknown top-level key": ("colour = 'blue'\n", "colour"),
    "unknown engine key": ("[engine]\nmax_chain_dpeth = 5\n", "[engine].max_chain_dpeth"),
    "wrong type": ("[tap]\nsubscriber_buffer = 'big'\n", "[tap].subscriber_buffer"),
    "not TOML": ("[engine\n", "not valid TOML"),
    "unknown block key": (
        '[[blocks]]\nname = "X"\ntype = "shell"\ncommand = ["true"]\ncomand = 1\n',
        "comand",
    ),
    "unknown block type": ('[[blocks]]\nname = "X"\ntype = "telepathy"\n', "telepathy"),
}


def serve(config, home, listen="127.0.0.1:0", timeout=20):
    return foundry_cli(
        "serve", "--config", str(config), "--listen", listen, "--http-listen", "127.0.0.1:0",
        env={"FOUNDRY_HOME": str(home)}, timeout=timeout,
    )  # fmt: skip


@pytest.fixture(scope="module")
def refusals(tmp_path_factory):
    """``foundry serve`` with each bad config, all started at once (each takes a second to
    import): ``{case: (config path, seconds taken, CompletedProcess)}``."""
    base = tmp_path_factory.mktemp("bad-configs")

    def attempt(case, body):
        config = base / f"{case.replace(' ', '-')}.toml"
        config.write_text(body)
        started = time.monotonic()
        done = serve(config, base / "home")
        return case, (config, time.monotonic() - started, done)

    with ThreadPoolExecutor(len(BAD_CONFIGS)) as pool:
        return dict(pool.map(lambda case: attempt(case, BAD_CONFIGS[case][0]), BAD_CONFIGS))


@pytest.mark.parametrize("case", BAD_CONFIGS)
def test_a_bad_config_is_refused_at_start_with_one_line(refusals, case):
    config, seconds, done = refusals[case]
    assert seconds < 15
    assert done.returncode == 2
    assert done.stdout == ""  # never printed an address: it did not serve
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert str(config) in lines[0]
    assert BAD_CONFIGS[case][1] in lines[0]
    assert "Traceback" not in done.stderr


def test_a_port_in_use_is_refused_with_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "ok.toml"
        config.write_text("")
        done = serve(config, tmp_path / "home", listen=f"127.0.0.1:{port}")
    assert done.returncode != 0
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert f"127.0.0.1:{port}" in lines[0]
    assert "in use" in lines[0]
    assert "Traceback" not in done.stderr


def test_a_bad_listen_address_is_refused_with_one_line(tmp_path):
    config = tmp_path / "ok.toml"
    config.write_text("")
    done = serve(config, tmp_path / "home", listen="nowhere")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [done.stderr.strip()]
    assert "--listen" in done.stderr


def test_the_repo_example_formation_serves(make_daemon):
    """``foundry.toml`` at the repo root (what ``make run`` serves) starts and answers."""
    from tests.daemon import REPO

    daemon = make_daemon(config_file=REPO / "foundry.toml")
    reply = emit(daemon, "greet_requested", payload={"name": "Repo"})
    workflow = finished(daemon, reply.workflow_id)
    assert workflow.state == "completed"
    assert [b.name for b in workflow.task_blocks] == [
        "Compose Greeting", "Deliver Greeting", "Archive Greeting",
    ]  # fmt: skip
    alert = emit(daemon, "alert_raised", payload={"severity": "high"})
    assert finished(daemon, alert.workflow_id).state == "completed"
    assert daemon.stop() == 0


def _serve_in(cwd, home, prefix=()):
    """``foundry serve`` with no ``--config`` in ``cwd`` (after ``prefix``, a command such as
    nohup); returns the process and its address."""
    process = subprocess.Popen(
        [*prefix, sys.executable, "-m", "foundry.kernel.cli", "serve", "--listen", "127.0.0.1:0",
         "--http-listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=cwd,
        env={**os.environ, "FOUNDRY_HOME": str(home)},
    )  # fmt: skip
    assert process.stdout is not None
    return process, process.stdout.readline().split(" ")[0].strip()  # gRPC, then HTTP


def _reap(process):
    if process.poll() is None:
        process.kill()
    process.wait(10)
    if process.stdout is not None:
        process.stdout.close()


def test_serve_without_a_config_uses_the_defaults(tmp_path):
    """No ``--config`` and no ./foundry.toml: built-in defaults (here on an explicit port 0)."""
    process, address = _serve_in(tmp_path, tmp_path / "home")
    try:
        assert address.startswith("127.0.0.1:")
        done = foundry_cli("emit", "nobody_listens", "--project", "p", "--addr", address)
        assert done.returncode == 0, done.stderr
        process.terminate()
        assert process.wait(15) == 0
        assert (tmp_path / "home" / "foundry.duckdb").is_file()
    finally:
        _reap(process)


def test_sigterm_right_after_the_ready_line_is_graceful(tmp_path):
    for attempt in range(6):  # racy by nature: a few tries make the failure near certain
        process, address = _serve_in(tmp_path, tmp_path / f"home-{attempt}")
        try:
            assert address
            process.terminate()
            code = process.wait(15)
        finally:
            _reap(process)
        assert code == 0, f"try {attempt + 1}: exit code {code}"


def test_sighup_stops_the_daemon_gracefully_unless_it_was_started_ignoring_it(tmp_path):
    """SIGHUP's default ended the daemon at once (no drain, no log line): it stops as SIGTERM
    does now — but not a daemon started under nohup, which ignores it to outlive its terminal
    (a review: taking SIGHUP over undid nohup)."""
    process, address = _serve_in(tmp_path, tmp_path / "home")
    try:
        assert address
        process.send_signal(signal.SIGHUP)
        assert process.wait(15) == 0
    finally:
        _reap(process)
    process, address = _serve_in(tmp_path, tmp_path / "home-nohup", prefix=("nohup",))
    try:
        process.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        assert process.poll() is None, "a daemon under nohup stopped on SIGHUP"
        done = foundry_cli("status", "--addr", address)
        assert done.returncode == 0, done.stderr
        process.terminate()
        assert process.wait(15) == 0
    finally:
        _reap(process)


def _damage(home, case):
    if case == "journal is a file":
        (home / "journal").write_text("x")
    elif case == "writer lock is a folder":
        (home / "journal").mkdir()
        (home / "journal" / "writer.lock").mkdir()
    elif case == "keys is a file":
        (home / "keys").write_text("x")
    elif case == "database is a folder":
        (home / "foundry.duckdb").mkdir()
    elif case == "database is random bytes":
        (home / "foundry.duckdb").write_bytes(os.urandom(300_000))
    elif case in ("traces is a file", "artifacts is a file", "commands is a file"):
        (home / case.split()[0]).write_text("x")
    elif case == "the signing key is gone, its public key kept":
        (home / "keys").mkdir(mode=0o700)
        (home / "keys" / "attestor.pub").write_text("-----BEGIN PUBLIC KEY-----\n")


HOME_DAMAGE = {
    "journal is a file": "journal: not a folder (the daemon writes there)",
    "writer lock is a folder": "writer.lock: the store cannot use it",
    "keys is a file": "keys: not a folder (the daemon writes there)",
    "database is a folder": "foundry.duckdb: DuckDB cannot open it",
    "database is random bytes": "foundry.duckdb: DuckDB cannot open it",
    "the signing key is gone, its public key kept": "the key that signed earlier attestations",
    # the daemon started; then every trace file (a traceback in its log) or step failed
    "traces is a file": "traces: not a folder (the daemon writes there)",
    "artifacts is a file": "artifacts: not a folder (the daemon writes there)",
    "commands is a file": "commands: not a folder (the daemon writes there)",
}


@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_a_home_that_is_not_a_folder_is_refused_at_start_with_one_line(tmp_path, where):
    (tmp_path / "afile").write_text("x")
    home = tmp_path / "afile" if where == "a file" else tmp_path / "afile" / "home"
    config = tmp_path / "f.toml"
    config.write_text("")
    done = serve(config, home)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert f"FOUNDRY_HOME {home}" in done.stderr


@pytest.mark.parametrize("case", HOME_DAMAGE)
def test_a_damaged_home_is_refused_at_start_with_one_line(tmp_path, case):
    """Each printed a 64- to 102-line traceback; a lost signing key was silently replaced, and
    its public key with it (every earlier attestation then failed to verify)."""
    home = tmp_path / "home"
    home.mkdir()
    _damage(home, case)
    config = tmp_path / "f.toml"
    config.write_text("")
    done = serve(config, home)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert HOME_DAMAGE[case] in done.stderr
    if case.startswith("the signing key"):
        assert (home / "keys" / "attestor.pub").read_text() == "-----BEGIN PUBLIC KEY-----\n"
