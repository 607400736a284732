"""The CLI's output as a user meets it (CLI subprocesses, real daemons): one timestamp style,
numbers as numbers, trace headers, quiet broken pipes, ``--version`` and ``python -m foundry``,
``--payload @file|-``, ``blocks``/``tools`` from the daemon or the config, ``config check``, and
the daemon's log (failed workflows and runs, ``--log-format json``, quiet disconnects)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from importlib import metadata

import pytest
from foundry.proto import runtime_api

from tests.daemon import REPO, Daemon
from tests.e2e.helpers import closed_port, emit, finished, foundry_cli, trace
from tests.helpers import DEADLINE, cli_with_reader_gone, wait_until
from tests.runs.helpers import wait_done

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"

CONFIG = """
[[blocks]]
name = "Fail Hard"
type = "shell"
kind = "observer"
sinks = ["fail_requested"]
command = ["sh", "-c", "echo going down; exit 3"]

[[blocks]]
name = "Touch Marker"
type = "shell"
kind = "mutator"
sinks = ["touch_requested"]
command = ["sh", "-c", "echo touched"]

[[blocks]]
name = "Paint Terminal"
type = "shell"
kind = "observer"
sinks = ["paint_requested"]
command = ["printf", 'out\\033[2Jput\\rover\\n']
"""


@pytest.fixture(scope="module")
def daemon(shared_daemon):
    return shared_daemon(CONFIG)


def cli(daemon, *args, **options):
    done = daemon.cli(*args, **options)
    assert "Traceback" not in done.stderr, done.stderr
    return done


# --- timestamps, numbers, headers ----------------------------------------------------------------


def test_status_prints_times_in_the_one_style(daemon):
    root = emit(daemon, "touch_requested", project="out-a")
    finished(daemon, root.workflow_id)
    done = cli(daemon, "status", root.workflow_id)
    assert done.returncode == 0
    first = done.stdout.splitlines()[0]
    assert re.search(rf"  {STAMP} → {STAMP}$", first), first


def test_trace_header_has_state_total_and_labels_skipped_blocks(daemon):
    root = emit(daemon, "touch_requested", project="out-b", throttle=runtime_dry_run())
    finished(daemon, root.workflow_id)
    done = cli(daemon, "trace", root.workflow_id)
    assert done.returncode == 0
    header, *rest = done.stdout.splitlines()
    assert header.startswith(f"chain  {root.workflow_id}  completed  touch_requested [out-b]")
    assert re.search(rf"started {STAMP}  total \d+ ms  1 event\(s\), 1 block execution\(s\), "
                     r"0 failed$", header), header  # fmt: skip
    [block] = [x for x in rest if x.startswith("block  ")]
    assert block.startswith("block  skipped Touch Marker on ")
    [event] = [x for x in rest if x.startswith("event  ")]
    assert re.match(rf"^event  {STAMP}  {root.workflow_id}  touch_requested", event)


# A project a client chose: it sets the window title, rings, clears the screen, turns text red,
# and reverses what follows.
HOSTILE_PROJECT = "p\x1b]0;pwned\x07\x1b[2J\x1b[31mRED\u202e"
CONTROLS = ("\x1b", "\x07", "\r", "\u202e")


@pytest.mark.parametrize("command", ["trace", "status"])
def test_text_a_client_stored_reaches_the_terminal_escaped(daemon, command):
    root = emit(daemon, "paint_requested", project=HOSTILE_PROJECT)
    finished(daemon, root.workflow_id)

    done = cli(daemon, command, root.workflow_id)

    assert done.returncode == 0, done.stderr
    assert not any(c in done.stdout for c in CONTROLS), repr(done.stdout)
    assert "\\u001b]0;pwned\\u0007\\u001b[2J\\u001b[31mRED\\u202e" in done.stdout
    if command == "trace":  # the command's own output, escaped too
        assert "       | out\\u001b[2Jput" in done.stdout.splitlines()  # (\r: a line of its own)


def test_a_json_document_down_a_pipe_is_exact_and_on_a_terminal_escaped_and_still_json(daemon):
    root = emit(daemon, "paint_requested", project=HOSTILE_PROJECT)
    finished(daemon, root.workflow_id)

    piped = cli(daemon, "trace", root.workflow_id, "--json")
    assert json.loads(piped.stdout)["events"][0]["project"] == HOSTILE_PROJECT

    shown = _on_a_terminal(daemon, "trace", root.workflow_id, "--json")
    assert not any(c in shown for c in CONTROLS), repr(shown)
    assert json.loads(shown)["events"][0]["project"] == HOSTILE_PROJECT


def _on_a_terminal(daemon: Daemon, *args: str) -> str:
    """What the CLI writes to stdout when it is a terminal (a pseudo-terminal's other end)."""
    import pty

    controller, terminal = pty.openpty()
    env = {**os.environ, "FOUNDRY_ADDR": daemon.address, "FOUNDRY_HOME": str(daemon.home)}
    chunks = []
    try:
        with subprocess.Popen(
            [sys.executable, "-m", "foundry.kernel.cli", *args], stdout=terminal,
            stderr=subprocess.PIPE, env=env,
        ) as process:  # fmt: skip
            os.close(terminal)
            terminal = -1
            while True:
                try:
                    chunk = os.read(controller, 65536)
                except OSError:  # EIO: the terminal's last writer closed it
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            _, errors = process.communicate(timeout=DEADLINE)
            assert process.returncode == 0, errors
    finally:
        os.close(controller)
        if terminal != -1:
            os.close(terminal)
    return b"".join(chunks).decode().replace("\r\n", "\n")  # the terminal's own line ends


def runtime_dry_run():
    from foundry.proto import foundry_api

    return foundry_api.Throttle.DRY_RUN


def test_a_failed_chain_shows_failed_and_why(daemon):
    root = emit(daemon, "fail_requested", project="out-c")
    assert finished(daemon, root.workflow_id).state == "failed"
    done = cli(daemon, "trace", root.workflow_id)
    assert done.returncode == 0
    lines = done.stdout.splitlines()
    assert f"chain  {root.workflow_id}  failed  fail_requested [out-c]" in lines[0]
    assert lines[0].endswith("1 failed")
    [block] = [x for x in lines if x.startswith("block  ")]
    assert block.startswith("block  FAILED  Fail Hard on ")
    assert "       | going down" in lines


def test_json_numbers_are_numbers(daemon):
    root = emit(daemon, "touch_requested", project="out-d")
    finished(daemon, root.workflow_id)
    document = json.loads(cli(daemon, "trace", root.workflow_id, "--json").stdout)
    [execution] = document["block_executions"]
    assert isinstance(execution["duration_ms"], int)
    assert isinstance(execution["exit_code"], int)
    assert isinstance(execution["attempts"], int)
    if "total_duration_ms" in document:
        assert isinstance(document["total_duration_ms"], int)


# --- --payload @file and - ---------------------------------------------------------------------


def test_payload_from_a_file_and_from_stdin(daemon, tmp_path):
    payload = tmp_path / "payload.json"
    payload.write_text('{"name": "From File", "n": 7}')
    done = cli(daemon, "emit", "nobody", "--project", "out-e", "--payload", f"@{payload}", "--json")
    assert done.returncode == 0, done.stderr
    event = json.loads(done.stdout)["event_id"]

    env = {**os.environ, "FOUNDRY_ADDR": daemon.address}
    piped = subprocess.run(
        [sys.executable, "-m", "foundry.kernel.cli", "emit", "nobody", "--project", "out-e",
         "--payload", "-", "--json"],
        input='{"name": "From Stdin"}', capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert piped.returncode == 0, piped.stderr
    other = json.loads(piped.stdout)["event_id"]

    payloads = {e.event_id: json.loads(e.payload_json) for e in trace(daemon, event).events}
    assert payloads[event] == {"name": "From File", "n": 7}
    payloads = {e.event_id: json.loads(e.payload_json) for e in trace(daemon, other).events}
    assert payloads[other] == {"name": "From Stdin"}


def test_a_missing_payload_file_is_one_readable_line(daemon, tmp_path):
    done = cli(daemon, "emit", "x", "--project", "p", "--payload", f"@{tmp_path}/nope.json")
    assert done.returncode == 1
    [line] = done.stderr.splitlines()
    assert line.startswith(f"foundry: --payload: cannot read {tmp_path}/nope.json: ")


# --- broken pipes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args", [("status",), ("blocks", "--json"), ("tools",), ("trace", "--json", "ROOT")]
)
def test_a_reader_that_goes_away_is_not_an_error(daemon, args):
    root = emit(daemon, "touch_requested", project="out-f")
    finished(daemon, root.workflow_id)
    args = tuple(root.workflow_id if a == "ROOT" else a for a in args)
    code, err = cli_with_reader_gone(list(args), {**os.environ, "FOUNDRY_ADDR": daemon.address})
    assert code == 0, err
    assert "Traceback" not in err
    assert "cannot reach the daemon" not in err
    assert "Broken pipe" not in err


def test_piping_into_head_through_a_shell(daemon):
    for n in range(3):
        emit(daemon, "touch_requested", project="out-g", payload={"n": n})
    env = {**os.environ, "FOUNDRY_ADDR": daemon.address}
    cmd = f"{sys.executable} -m foundry.kernel.cli"
    for line in (f"{cmd} blocks --json | head -1", f"{cmd} status | head -1"):
        done = subprocess.run(
            ["bash", "-o", "pipefail", "-c", line], capture_output=True, text=True, env=env,
            timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, (line, done.stderr)
        assert len(done.stdout.splitlines()) == 1
        assert "Traceback" not in done.stderr


def test_output_that_cannot_be_written_is_said_so_not_blamed_on_the_daemon(daemon):
    """``foundry status > /dev/full`` said it could not reach the daemon (it had answered), and
    ``foundry sql``, ``blocks`` and ``config check`` ended in a traceback."""
    env = {**os.environ, "FOUNDRY_ADDR": daemon.address, "FOUNDRY_HOME": str(daemon.home)}
    cmd = f"{sys.executable} -m foundry.kernel.cli"
    for args in ("status", "run list", "sql 'select 1'", "blocks", "status --json"):
        done = subprocess.run(["bash", "-c", f"{cmd} {args} > /dev/full"], capture_output=True,
                              text=True, env=env, timeout=60)  # fmt: skip
        assert done.returncode == 1, (args, done.stderr)
        said = "foundry: cannot write the output: No space left on device\n"
        assert done.stderr.endswith(said), (args, done.stderr)
        assert "Traceback" not in done.stderr
        assert "cannot reach" not in done.stderr


def test_help_and_version_to_a_full_disk_end_quietly():
    """(The guard that names a failed write caught argparse's own output too: a traceback.)"""
    cmd = f"{sys.executable} -m foundry.kernel.cli"
    for args in ("--help", "--version", "run --help"):
        done = subprocess.run(["bash", "-c", f"{cmd} {args} > /dev/full"], capture_output=True,
                              text=True, timeout=60)  # fmt: skip
        assert done.returncode == 0, (args, done.stderr)
        assert "Traceback" not in done.stderr


def test_a_bad_argument_is_quoted_without_its_control_characters():
    """argparse quoted it raw: an ESC in an argument (an id a script took from the daemon) set
    the terminal's title and cleared its screen."""
    done = foundry_cli("status", "--\x1b]0;PWNED\x07\x1b[2Jx")
    assert done.returncode == 2
    assert "unrecognized arguments" in done.stderr
    assert "\x1b" not in done.stderr
    assert "\x07" not in done.stderr
    assert "\\u001b]0;PWNED" in done.stderr


def test_a_bad_address_is_exit_2_for_every_command():
    """``--addr garbage`` exited 1 from status and run list, 2 from sql and blocks."""
    for args in (("status",), ("run", "list"), ("sql", "select 1")):
        done = foundry_cli(*args, "--addr", "garbage", env={"FOUNDRY_HOME": "/nonexistent"})
        assert done.returncode == 2, (args, done.stderr)
        assert done.stderr == "foundry: --addr: expected HOST:PORT, got 'garbage'\n", args


# --- --version, python -m foundry ---------------------------------------------------------------


def test_version():
    done = foundry_cli("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"foundry {metadata.version('foundry')}"


@pytest.mark.parametrize("where", ["clean folder", "repo root"])
def test_python_m_foundry_is_the_cli(tmp_path, where):
    cwd = tmp_path if where == "clean folder" else REPO
    done = subprocess.run(
        [sys.executable, "-m", "foundry", "--version"], capture_output=True, text=True,
        cwd=cwd, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"foundry {metadata.version('foundry')}"
    # The top-level package does not hide the mapped ones.
    probe = subprocess.run(
        [sys.executable, "-c", "import foundry.kernel, foundry.proto, foundry.plugins; "
         "print(foundry.kernel.__file__)"],
        capture_output=True, text=True, cwd=cwd, timeout=60,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == str(REPO / "kernel" / "__init__.py")


# --- blocks, tools, config check -----------------------------------------------------------------


def test_blocks_and_tools_ask_the_running_daemon(daemon):
    done = cli(daemon, "blocks", "--config", str(REPO / "foundry.toml"))
    assert done.returncode == 0
    assert done.stderr.strip() == (
        f"from the running daemon at {daemon.address} (config {daemon.config})"
    )
    names = [x.split("  ")[0].strip() for x in done.stdout.splitlines()]
    assert "Fail Hard" in names  # the daemon's config, not the one named offline
    assert "Archive Greeting" not in names
    [line] = [x for x in done.stdout.splitlines() if x.startswith("Fail Hard")]
    assert f"[{daemon.config} [[blocks]] (type shell)]" in line

    tools = cli(daemon, "tools", "--json")
    assert tools.returncode == 0
    assert {"name": "echo", "source": "foundry.plugins.tool"}.items() <= {
        k: v for t in json.loads(tools.stdout) if t["name"] == "echo" for k, v in t.items()
    }.items()


def test_blocks_and_tools_fall_back_to_the_config_and_say_so():
    config = str(REPO / "foundry.toml")
    with closed_port() as port:
        blocks = foundry_cli("blocks", "--json", "--config", config, "--addr", f"127.0.0.1:{port}")
        tools = foundry_cli("tools", "--config", config, "--addr", f"127.0.0.1:{port}")
    for done in (blocks, tools):
        assert done.returncode == 0, done.stderr
        [note] = done.stderr.splitlines()
        assert note.startswith(f"daemon not reachable at 127.0.0.1:{port} (")
        assert f"from the config {config}" in note
    names = [b["name"] for b in json.loads(blocks.stdout)]
    assert "Archive Greeting" in names
    assert any(x.startswith("echo ") for x in tools.stdout.splitlines())


def test_config_check_summarises_a_good_config():
    done = foundry_cli("config", "check", "--config", str(REPO / "foundry.toml"))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"{REPO / 'foundry.toml'}: OK"
    assert any(x.startswith("  blocks ") and "Archive Greeting" in x for x in lines)
    as_json = json.loads(
        foundry_cli("config", "check", "--json", "--config", str(REPO / "foundry.toml")).stdout
    )
    assert as_json["ok"] is True
    assert isinstance(as_json["blocks"], int)
    assert "greeting_delivered" in as_json["event_types"]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[daemon]\nlisten = 5\n", ["bad.toml", "[daemon]", "listen"]),
        ('[plugins]\nmodules = ["no_such_module_here"]\n', ["no_such_module_here"]),
        ('[[blocks]]\nname = "x"\ntype = "nope"\n', ["bad.toml", "[[blocks]]", "nope"]),
        ("not toml = = =\n", ["bad.toml", "not valid TOML"]),
        # as serve refuses them (config check passed them)
        ('[daemon]\nlisten = "0.0.0.0:1"\n', ["[daemon].listen", "not a loopback address"]),
        ('[http]\nlisten = "0.0.0.0:2"\n', ["[http].listen", "not a loopback address"]),
        ('[daemon]\ntoken_env = "FOUNDRY_NO_SUCH_VARIABLE"\n', ["unset or empty"]),
    ],
)
def test_config_check_refuses_a_bad_config_with_exit_2(tmp_path, text, words):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    done = foundry_cli("config", "check", "--config", str(path))
    assert done.returncode == 2
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith("foundry: ")
    for word in words:
        assert word in line


def test_serve_names_what_set_a_home_or_an_address_it_refuses(tmp_path):
    """Found by an operator hunt: a home the file set (a file, not a folder) was blamed on
    FOUNDRY_HOME, and a --http-listen flag's open address on the file's [http].listen."""
    not_a_folder = tmp_path / "notadir"
    not_a_folder.write_text("x")
    path = tmp_path / "home.toml"
    path.write_text(f'[daemon]\nhome = "{not_a_folder}"\n')
    env = {"FOUNDRY_HOME": str(tmp_path / "env-home")}
    done = foundry_cli("serve", "--config", str(path), "--listen", "127.0.0.1:0",
                       "--http-listen", "off", env=env)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert f"{path}: [daemon].home {not_a_folder} is not a folder" in done.stderr
    (tmp_path / ".foundry").write_text("x")  # the default home, FOUNDRY_HOME unset
    path.write_text("")
    unset = {k: v for k, v in os.environ.items() if k != "FOUNDRY_HOME"}
    done = subprocess.run([sys.executable, "-m", "foundry.kernel.cli", "serve", "--config",
                           str(path), "--listen", "127.0.0.1:0", "--http-listen", "off"],
                          capture_output=True, text=True, timeout=30,
                          env={**unset, "HOME": str(tmp_path)})  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert f"the default home {tmp_path / '.foundry'} is not a folder" in done.stderr
    path.write_text("")
    done = foundry_cli("serve", "--config", str(path), "--listen", "127.0.0.1:0",
                       "--http-listen", "0.0.0.0:0", env=env)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "--http-listen: 0.0.0.0 is not a loopback address" in done.stderr
    for flag in ("--listen", "--http-listen"):  # an empty one was ignored: the file's was used
        other = "--http-listen" if flag == "--listen" else "--listen"
        done = foundry_cli("serve", "--config", str(path), flag, "", other,
                           "127.0.0.1:0" if other == "--listen" else "off", env=env)  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert f"{flag}: expected HOST:PORT, got ''" in done.stderr


def test_both_listeners_on_one_port_are_refused_naming_both_keys(tmp_path):
    """config check said OK; serve failed on "Address already in use" (the port its own), an
    operator off looking for another process."""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]  # free once closed: nothing else binds it meanwhile
    path = tmp_path / "ports.toml"
    for grpc_host in ("127.0.0.1", "0.0.0.0", "0"):  # ("0": the wildcard, spelled so)
        path.write_text(f'[daemon]\nlisten = "{grpc_host}:{port}"\ntoken_env = "T"\n'
                        f'[http]\nlisten = "127.0.0.1:{port}"\n')  # fmt: skip
        for command in (("config", "check"), ("serve",)):
            done = foundry_cli(
                *command,
                "--config",
                str(path),
                env={"T": "a-long-token" * 3, "FOUNDRY_HOME": str(tmp_path)},
            )
            assert done.returncode == 2, (command, done.stderr)
            assert done.stderr.strip() == (
                f"foundry: {path}: [http].listen: port {port} is the gRPC listener's too "
                f"({path}: [daemon].listen); give each listener a port of its own"
            ), command


def test_config_check_refuses_a_home_serve_refuses(tmp_path):
    """config check said OK to a home that is a file, or under one; serve refused both."""
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    path = tmp_path / "home.toml"
    nowhere = tmp_path / "nowhere"  # links to nothing: exists() said nothing was there
    (tmp_path / "dangling").symlink_to(nowhere)
    (tmp_path / "home2").mkdir()
    (tmp_path / "home2" / "commands").symlink_to(nowhere)
    # keys a link to nothing ("File exists" at start), archive a file (a traceback a pass)
    (tmp_path / "home3").mkdir()
    (tmp_path / "home3" / "keys").symlink_to(nowhere)
    (tmp_path / "home4").mkdir()
    (tmp_path / "home4" / "archive").write_text("x")
    for home, said in ((a_file, f"[daemon].home {a_file} is not a folder"),
                       (a_file / "sub", f"cannot be used: {a_file} is not a folder"),
                       (tmp_path / "dangling", "is not a folder"),
                       (tmp_path / "home2", "commands: not a folder"),
                       (tmp_path / "home3", "keys: not a folder"),
                       (tmp_path / "home4", "archive: not a folder")):  # fmt: skip
        path.write_text(f'[daemon]\nhome = "{home}"\n')
        for command in (("config", "check"),
                        ("serve", "--listen", "127.0.0.1:0", "--http-listen", "off")):  # fmt: skip
            done = foundry_cli(*command, "--config", str(path))
            assert done.returncode == 2, (command, done.stderr)
            assert said in done.stderr, (command, done.stderr)
            assert "Traceback" not in done.stderr
    assert not (a_file.parent / "sub").exists()  # config check makes nothing


# --- the daemon log ------------------------------------------------------------------------------

LOG_CONFIG = (
    CONFIG
    + """
[[blocks]]
name = "fail"
type = "shell"
command = ["sh", "-c", "exit 4"]
"""
)


@pytest.fixture
def json_log_daemon(tmp_path):
    config = tmp_path / "log.toml"
    config.write_text(LOG_CONFIG)
    daemon = Daemon(tmp_path / "home", config)
    log = tmp_path / "serve.log"
    with log.open("w") as stderr:
        daemon.process = subprocess.Popen(
            [sys.executable, "-m", "foundry.kernel.cli", "serve", "--config", str(config),
             "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--log-format", "json"],
            stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=tmp_path,
            env={**os.environ, "FOUNDRY_HOME": str(daemon.home)},
        )  # fmt: skip
    try:
        assert daemon.process.stdout is not None
        daemon.address = daemon.process.stdout.readline().split()[0]
        yield daemon, log
    finally:
        if daemon.process.poll() is None:
            daemon.process.kill()
        daemon.process.wait(10)
        daemon.process.stdout.close()


def test_the_daemon_logs_failures_as_json_and_not_disconnects(json_log_daemon):
    daemon, log = json_log_daemon
    root = emit(daemon, "fail_requested", project="logs")
    finished(daemon, root.workflow_id)
    dag = json.dumps({"steps": [{"id": "boom", "type": "shell", "inputs": {"command": "fail"}}]})
    request = runtime_api.SubmitRunRequest(spec=runtime_api.RunSpec(dag_json=dag))
    run_id = daemon.call(lambda _, rt: rt.submit_run(request)).run_id

    def run_failed():
        reply = daemon.call(lambda _, rt: rt.get_run(runtime_api.GetRunRequest(run_id=run_id)))
        return reply.run.status == runtime_api.RunStatus.FAILED

    wait_until(run_failed, what="the run failed")
    # A client that goes away mid-stream: a routine disconnect.
    watcher = subprocess.Popen(
        [sys.executable, "-m", "foundry.kernel.cli", "watch", "--addr", daemon.address],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert watcher.stderr is not None
    watcher.stderr.readline()  # "watching …": subscribed very soon after
    time.sleep(0.5)  # (no event to wait on: the Watch call must be open on the daemon)
    watcher.kill()
    watcher.wait(10)
    watcher.stderr.close()
    daemon.process.send_signal(signal.SIGTERM)
    assert daemon.process.wait(DEADLINE * 2) == 0

    records = [json.loads(x) for x in log.read_text().splitlines()]  # every line is one object
    assert all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    assert all(re.fullmatch(STAMP, r["time"]) for r in records)
    [workflow] = [r for r in records if r.get("workflow_id") == root.workflow_id]
    assert workflow["level"] == "warning"
    assert workflow["logger"] == "foundry.engine"
    assert "Fail Hard" in workflow["error"]
    assert workflow["message"].startswith(f"workflow {root.workflow_id} (fail_requested")
    [run] = [r for r in records if r.get("run_id") == run_id]
    assert run["level"] == "warning"
    assert run["step_id"] == "boom"
    assert "boom" in run["error"]
    assert not [r for r in records if "cancelled" in r["message"].lower()], records


# --- run get -------------------------------------------------------------------------------------


def test_run_get_header_has_labels_breakpoints_pause_and_totals(daemon, tmp_path):
    dag = tmp_path / "dag.json"
    dag.write_text(json.dumps({"steps": [
        {"id": "ask", "type": "llm", "inputs": {"prompt": "hi", "model": "mock:small"}},
        {"id": "count", "type": "tool", "depends_on": ["ask"],
         "inputs": {"tool": "word_count", "args": {"text": "a b c"}}},
    ]}))  # fmt: skip
    submitted = cli(daemon, "run", "submit", str(dag), "--label", "team=ops", "--breakpoint",
                    "count", "--json")  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    run_id = json.loads(submitted.stdout)["run_id"]

    def shown():
        done = cli(daemon, "run", "get", run_id)
        return done.stdout if "PAUSED_AT_STEP" in done.stdout else None

    lines = wait_until(shown, what="the run paused").splitlines()
    assert re.match(rf"^run {run_id}  PAUSED_AT_STEP  created {STAMP}  updated {STAMP}$", lines[0])
    assert lines[1] == "  seed 0  labels team=ops"
    assert lines[2] == "  breakpoints count"
    assert lines[3] == f"  paused before count: `foundry run resume {run_id}` continues"
    assert re.match(r"^  tokens [1-9]\d* in, [1-9]\d* out  cost \d+\.\d{6}$", lines[4]), lines

    assert cli(daemon, "run", "resume", run_id).returncode == 0

    def succeeded():
        done = cli(daemon, "run", "get", run_id)
        return done.stdout if "SUCCEEDED" in done.stdout.splitlines()[0] else None

    final = wait_until(succeeded, what="the run succeeded").splitlines()
    assert not any("paused before" in x for x in final)
    assert not any("{'" in x or "': " in x for x in final), final  # no Python reprs


@pytest.mark.parametrize(
    "args",
    [
        ("status", "w\udcff"),  # bytes that are not UTF-8 (os.fsencode gives back b"w\xff")
        ("emit", "x\udcff", "--project", "p"),
        ("emit", "x", "--project", "p\udcff"),
        ("run", "get", "run_\udcff"),
        ("trace", "evt_\udcff"),
    ],
)
def test_an_argument_that_is_not_utf8_is_one_line(daemon, args):
    done = daemon.cli(*args)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert "is not valid UTF-8 text" in done.stderr
    assert "\\udcff" in done.stderr


def test_inline_json_nested_too_deeply_is_one_line(daemon, tmp_path):
    dag = tmp_path / "dag.json"
    dag.write_text('{"steps": [{"id": "a", "type": "transform", "inputs": {"value": 1}}]}')
    deep = "[" * 5_000 + "]" * 5_000
    for args in (("run", "submit", str(dag), "--inputs", deep),
                 ("run", "submit", str(dag), "--inputs", '{"a": ' + deep + "}")):  # fmt: skip
        done = daemon.cli(*args)
        assert done.returncode == 2, done.stderr
        assert done.stderr.count("\n") == 1, done.stderr
        assert "nested too deeply" in done.stderr


# --- misbehaving plugins (found by a plugin hunt) -------------------------------------------------

NOISY_PLUGIN = """
import atexit
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from foundry.kernel import BlockContext, BlockKind, block, hookimpl

print("HELLO FROM A PLUGIN")
HERE = Path(__file__).parent
POOL = ThreadPoolExecutor(1)
atexit.register(lambda: (HERE / "atexit-ran").write_text("yes"))


def _slow_write() -> None:
    time.sleep(1)
    (HERE / "pool-work-done").write_text("yes")


@block("leave_a_thread", kind=BlockKind.OBSERVER)
def leave_a_thread(ctx: BlockContext) -> dict:
    POOL.submit(_slow_write)  # a pool's queued work: done at exit, as ever
    if ctx.inputs.get("forever"):
        threading.Thread(target=lambda: time.sleep(3600), name="left-behind").start()
    return {"left": True}


@hookimpl
def register_blocks():
    print("HELLO FROM A HOOK")
    return [leave_a_thread]
"""


def test_a_plugin_that_prints_and_leaves_a_thread_neither_hides_the_ready_line_nor_the_stop(
    make_daemon, tmp_path
):
    """A plugin's print came before the ready line (read as the daemon's address: the start
    failed) and broke ``config check --json``; a thread a block left running kept the stopped
    daemon's process alive for ever (the interpreter waited for it at exit)."""
    (tmp_path / "noisy_plugin.py").write_text(NOISY_PLUGIN)
    text = f'[plugins]\npaths = ["{tmp_path}"]\nmodules = ["noisy_plugin"]\n'
    for forever in (False, True):
        daemon = make_daemon(text, name=f"forever-{forever}")  # its first line: the addresses
        assert "HELLO FROM A PLUGIN" in daemon.stderr()
        step = {"id": "a", "type": "leave_a_thread", "inputs": {"forever": forever}}
        dag_json = json.dumps({"steps": [step]})
        submitted = daemon.call(lambda _, rt, dag_json=dag_json: rt.submit_run(
            runtime_api.SubmitRunRequest(spec=runtime_api.RunSpec(dag_json=dag_json))))  # fmt: skip
        assert wait_done(daemon, submitted.run_id).status == runtime_api.RunStatus.SUCCEEDED
        for name in ("atexit-ran", "pool-work-done"):
            (tmp_path / name).unlink(missing_ok=True)
        started = time.monotonic()
        assert daemon.stop(timeout=20) == 0
        assert time.monotonic() - started < 15
        # a pool's work and the atexit handlers run as ever (a review: exiting at once lost them)
        assert (tmp_path / "pool-work-done").exists()
        assert (tmp_path / "atexit-ran").exists() != forever  # the watchdog ends a stuck exit
        left = "exiting without 1 thread(s) a block left running (left-behind)"
        assert (left in daemon.stderr()) == forever
    config = tmp_path / "noisy.toml"
    config.write_text(text)
    done = foundry_cli("config", "check", "--config", str(config), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["ok"] is True


def test_a_stop_while_a_plugin_loads_ends_the_start(tmp_path):
    """Signals were taken before plugins loaded, and acted on only once the daemon was ready: a
    plugin import that hung could be stopped by SIGKILL alone."""
    (tmp_path / "slow_plugin.py").write_text("import time\ntime.sleep(600)\n")
    config = tmp_path / "slow.toml"
    config.write_text(f'[plugins]\npaths = ["{tmp_path}"]\nmodules = ["slow_plugin"]\n')
    process = subprocess.Popen(
        [sys.executable, "-m", "foundry.kernel.cli", "serve", "--config", str(config),
         "--listen", "127.0.0.1:0", "--http-listen", "off"],
        env={**os.environ, "FOUNDRY_HOME": str(tmp_path / "home")},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(3)  # importing the plugin
        process.send_signal(signal.SIGTERM)
        process.wait(10)
    finally:
        process.kill()
        process.wait(10)
    assert process.returncode == -signal.SIGTERM
