"""Where a bad daemon address came from is what the CLI's error names."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [(["--addr", "garbage"], {}, "--addr"), ([], {"FOUNDRY_ADDR": "garbage"}, "FOUNDRY_ADDR")],
)
def test_a_bad_address_is_named_by_where_it_came_from(tmp_path, args, env, named):
    environment = {**os.environ, "FOUNDRY_HOME": str(tmp_path), **env}
    if "FOUNDRY_ADDR" not in env:
        environment.pop("FOUNDRY_ADDR", None)
    done = subprocess.run(
        [sys.executable, "-m", "foundry.kernel.cli", "status", *args],
        capture_output=True, text=True, env=environment, cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip() == f"foundry: {named}: expected HOST:PORT, got 'garbage'"


@pytest.mark.parametrize(
    "args",
    [["--addr", "127.0.0.1:1", "status"], ["--json", "--addr=127.0.0.1:1", "run", "list"]],
    ids=["addr", "json-and-addr"],
)
def test_client_options_before_the_command_are_taken(tmp_path, args):
    # argparse said "argument COMMAND: invalid choice: '127.0.0.1:1'", naming no option
    environment = {**os.environ, "FOUNDRY_HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "foundry.kernel.cli", *args],
        capture_output=True, text=True, env=environment, cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "cannot reach the daemon at 127.0.0.1:1" in done.stderr


def test_a_port_that_never_answers_is_given_up_on(monkeypatch, capsys):
    # it held the command until Ctrl-C (a hung process, a server that is no gRPC one)
    from foundry.kernel.cli.main import main
    from foundry.kernel.edge.grpc import client

    monkeypatch.setattr(client, "ANSWER_SECONDS", 0.5)
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        assert main(["status", "--addr", f"127.0.0.1:{port}"]) == 1
    said = capsys.readouterr().err
    assert said.strip() == (
        f"foundry: cannot reach the daemon at 127.0.0.1:{port}: no gRPC answer within 0.5 s"
    )
