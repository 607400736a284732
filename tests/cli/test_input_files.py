"""Files the CLI reads and sends (a DAG, an eval pack, a gate request): hostile ones get one
line naming the file and the reason — never a traceback, never an unbounded read. Found by a
hostile-input hunt: ``/dev/zero`` as a DAG filled 6–7 GB, a file not UTF-8 or nested 100,000
deep printed a traceback (3,001 lines for deep TOML)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def _files(folder):
    (folder / "latin1.dag.json").write_bytes(b'\xff\xfe{"steps": []}')
    (folder / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (folder / "deep.toml").write_text("x = " + "[" * 100_000 + "]" * 100_000 + "\n")
    (folder / "zero.toml").write_text(
        'pack = "p"\n[[scenarios]]\nslug = "s"\ntitle = "s"\nexpected = {status = "succeeded"}\n'
        '[scenarios.run_spec]\ndag_file = "/dev/zero"\n'
    )


@pytest.mark.parametrize(
    ("command", "needle"),
    [
        (["run", "submit", "latin1.dag.json"], "latin1.dag.json: not UTF-8 text"),
        (["run", "submit", "/dev/zero"], "/dev/zero: not a regular file"),
        (["gate", "check", "deep.json"], "deep.json: nested too deeply"),
        (["gate", "check", "deep.toml"], "deep.toml: nested too deeply"),
        (["eval", "sync", "zero.toml"], "cannot read /dev/zero: not a regular file"),
    ],
)
def test_a_hostile_input_file_is_one_line_naming_it(tmp_path, command, needle):
    _files(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "foundry.kernel.cli", *command, "--addr", "127.0.0.1:1"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env={**os.environ, "FOUNDRY_HOME": str(tmp_path / "home")},
    )  # fmt: skip
    assert done.returncode in (1, 2), done.stderr
    assert needle in done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr[-2000:]


@pytest.mark.parametrize(
    "args",
    [["run", "branch", "run_x", "--from", "a", "--seed-mode", "custom", "--seed",
      "9223372036854775808"],
     ["run", "submit", "-", "--seed", "-9223372036854775809"]],
    ids=["branch past int64", "submit below int64"],
)  # fmt: skip
def test_a_seed_no_int64_holds_is_a_usage_error(tmp_path, args):
    """It was sent wrapped around (2^63 recorded as -2^63), or ended in a traceback."""
    environment = {**os.environ, "FOUNDRY_HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "foundry.kernel.cli", *args, "--addr", "127.0.0.1:1"],
        capture_output=True, text=True, env=environment, cwd=tmp_path, timeout=60, input="",
    )  # fmt: skip
    assert done.returncode == 2
    assert "argument --seed: must be from -9223372036854775808 to 9223372036854775807" in (
        done.stderr
    )
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("command", "named"),
    [(["export", "parquet", ""], "DIRECTORY"), (["sql", "SELECT 1", "--home", ""], "--home"),
     (["sql", "SELECT 1", "--config", ""], "--config"),
     (["export", "parquet", "out", "--config", ""], "--config")],
)  # fmt: skip
def test_an_empty_path_is_refused_not_taken_for_the_working_directory(tmp_path, command, named):
    """``export parquet "$UNSET"`` wrote its table folders into the working directory."""
    done = subprocess.run(
        [sys.executable, "-m", "foundry.kernel.cli", *command, "--addr", "127.0.0.1:1"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env={**os.environ, "FOUNDRY_HOME": str(tmp_path / "home")},
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == f"foundry: {named}: expected a path, got an empty one"
    assert list(tmp_path.iterdir()) == []
