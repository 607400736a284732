"""The plugin template (examples/foundry-plugin-template) works as its README promises: its own
tests pass with the current interpreter, and a real daemon loads it — from its own foundry.toml
through ``[plugins] paths``, and through its entry point — and runs its blocks end to end."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.daemon import REPO, Daemon, Daemons
from tests.e2e.helpers import block, finished, traced
from tests.runs.helpers import outputs, steps, wait_done

TEMPLATE = REPO / "examples" / "foundry-plugin-template"
SENTENCE = "the quick brown fox"


@pytest.fixture
def template(tmp_path) -> Path:
    """A copy of the template (the daemon writes bytecode beside the modules it imports)."""
    copy = tmp_path / "foundry-plugin-template"
    shutil.copytree(TEMPLATE, copy, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
    return copy


def test_the_template_passes_its_own_tests(tmp_path):
    # Its pyproject.toml configures pytest-trio (trio_mode) and puts src/ on the path.
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", str(TEMPLATE)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )  # fmt: skip

    assert done.returncode == 0, done.stdout + done.stderr
    assert " passed" in done.stdout
    assert "failed" not in done.stdout


def test_the_template_s_config_loads_it_beside_the_config_and_runs_its_chain(
    make_daemon: Daemons, template: Path
):
    # Its foundry.toml says [plugins] paths = ["src"]: relative to the file, not the daemon's
    # working directory (the daemon runs elsewhere), and with no PYTHONPATH.
    daemon = make_daemon(config_file=template / "foundry.toml", env={"PYTHONPATH": ""})
    event_id = _emit(daemon, "text_submitted", {"text": SENTENCE})

    chain = traced(daemon, event_id)

    types = [e.event_type for e in chain.events]
    assert types == ["text_submitted", "words_tallied", "tally_saved"]
    tally, save = block(chain, "Tally Words"), block(chain, "Save Tally")
    assert (tally.success, tally.summary) == (True, "4 words")
    assert (save.success, save.summary) == (True, "saved 4 words")
    [artifact] = save.audit_artifacts
    assert json.loads(Path(artifact).read_text()) == {"longest": "quick", "words": 4}


def test_the_template_s_block_and_tool_run_as_dag_steps_whose_emits_are_dropped(
    make_daemon: Daemons, template: Path
):
    daemon = make_daemon(config_file=template / "foundry.toml")
    _emit(daemon, "text_submitted", {"text": SENTENCE})  # as a task block, it does emit
    assert _count_events(daemon, "words_tallied") == 1
    submitted = daemon.cli(
        "run", "submit", str(template / "tally.dag.json"),
        "--inputs", json.dumps({"text": "Blocks are plain functions"}), "--json",
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr

    run = wait_done(daemon, json.loads(submitted.stdout)["run_id"])

    assert {k: s.status for k, s in steps(run).items()} == {
        "tally": "succeeded",
        "slug": "succeeded",
    }
    assert outputs(run) == {
        "tally": {"words": 4, "longest": "functions"},
        "slug": {"slug": "functions"},
    }
    # The step called ctx.emit("words_tallied", …) too: as a DAG step, nothing is emitted.
    assert _count_events(daemon, "words_tallied") == 1


def test_the_template_s_eval_assertion_judges_a_run(make_daemon: Daemons, template: Path):
    daemon = make_daemon(config_file=template / "foundry.toml")

    done = daemon.cli(
        "eval", "run", str(template / "evals.toml"), "--commit", "c0ffee", timeout=120
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert "tally" in done.stdout


def test_an_installed_template_loads_through_its_entry_point(
    make_daemon: Daemons, template: Path, tmp_path: Path
):
    """What ``pip install`` leaves behind — the package on the path and a dist-info with the
    pyproject's entry points — without touching this interpreter's site-packages."""
    site = tmp_path / "site"
    _fake_install(template, site)
    daemon = make_daemon(env={"PYTHONPATH": os.pathsep.join([str(site), str(template / "src")])})
    event_id = _emit(daemon, "text_submitted", {"text": SENTENCE})

    chain = traced(daemon, event_id)

    assert block(chain, "Tally Words").success
    assert block(chain, "Save Tally").success


def test_a_missing_plugins_path_refuses_the_start_with_one_line(tmp_path: Path):
    config = tmp_path / "foundry.toml"
    config.write_text('[plugins]\npaths = ["plugins-here"]\n')

    done = subprocess.run(
        [sys.executable, "-m", "foundry.kernel.cli", "serve", "--config", str(config),
         "--listen", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "FOUNDRY_HOME": str(tmp_path / "home")},
    )  # fmt: skip

    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"foundry: {config}: [plugins].paths[0]: no such directory: ")
    assert line.endswith("plugins-here'")


# --- helpers ------------------------------------------------------------------------------------


def _emit(daemon: Daemon, event_type: str, payload: dict[str, str]) -> str:
    """Emit through the CLI; the chain must have started (a block sinks the type): wait for it."""
    done = daemon.cli(
        "emit", event_type, "--project", "template", "--payload", json.dumps(payload), "--json"
    )
    assert done.returncode == 0, done.stderr
    reply = json.loads(done.stdout)
    assert reply["workflow_id"] == reply["event_id"], f"no block sinks it: {daemon.stderr()}"
    finished(daemon, reply["workflow_id"])
    return str(reply["event_id"])


def _count_events(daemon: Daemon, event_type: str) -> int:
    done = daemon.cli(
        "sql", f"SELECT count(*) AS n FROM events WHERE event_type = '{event_type}'", "--json"
    )
    assert done.returncode == 0, done.stderr
    return int(json.loads(done.stdout)["rows"][0][0])


def _fake_install(template: Path, site: Path) -> None:
    """A dist-info whose entry_points.txt is the template's ``[project.entry-points]``."""
    project = tomllib.loads((template / "pyproject.toml").read_text())["project"]
    info = site / f"foundry_plugin_template-{project['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
    )
    lines = [f"[{group}]" + "".join(f"\n{k} = {v}" for k, v in points.items())
             for group, points in project["entry-points"].items()]  # fmt: skip
    (info / "entry_points.txt").write_text("\n\n".join(lines) + "\n")
