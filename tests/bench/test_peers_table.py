"""``make bench-peers``'s table: the ratio and the formatting, from given numbers (nothing is
measured here, and LangGraph is not installed in the project's environment)."""

from __future__ import annotations

import ast
import importlib.util
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from bench.peers.__main__ import _add, rows
from bench.peers.ours import QUICK, Sizes, shapes
from bench.peers.table import Row, format_markdown, format_ratio, format_table, ratio

REPO = Path(__file__).resolve().parents[2]
LANGGRAPH_SIDE = REPO / "bench" / "peers" / "langgraph_side.py"
REQUIREMENTS = "bench/peers/requirements.txt"


@pytest.mark.parametrize(
    ("peer", "ours", "expected"),
    [(2.38, 0.17, 14.0), (1.0, 2.0, 0.5), (None, 1.0, None), (1.0, None, None), (1.0, 0.0, None)],
)
def test_ratio_is_the_peer_divided_by_ours(peer, ours, expected):
    value = ratio(peer, ours)
    if expected is None:
        assert value is None
    else:
        assert value == pytest.approx(expected)


def test_ratios_are_printed_with_two_decimals_below_ten_and_one_above():
    assert format_ratio(0.5) == "0.50×"
    assert format_ratio(9.994) == "9.99×"
    assert format_ratio(14.0) == "14.0×"
    assert format_ratio(None) == "—"


def test_the_table_aligns_columns_and_lists_notes():
    table = [
        Row("1,000-step chain, per step", "ms", 2.38, 0.17),
        Row("interrupt → update → resume, per cycle", "ms", 10.7, 21.4, "ours over gRPC"),
        Row("fork", "ms", None, 1_234.5),
    ]
    lines = format_table(table).splitlines()
    assert lines[0].split() == ["scenario", "unit", "LangGraph", "ours", "LangGraph", "÷", "ours"]
    assert set(lines[1]) == {"-", " "}
    assert lines[2].split()[-3:] == ["2.38", "0.17", "14.0×"]
    assert lines[3].split()[-3:] == ["10.7", "21.4", "0.50×"]
    assert lines[4].split()[-3:] == ["—", "1,234", "—"]
    assert len({len(line) for line in lines[2:5]}) == 1  # right-aligned to one width
    assert lines[-2:] == ["notes:", "  interrupt → update → resume, per cycle: ours over gRPC"]


def test_the_markdown_table_has_one_row_per_scenario():
    markdown = format_markdown([Row("fan-out 1→50→1, per task", "ms", 0.83, 0.13)]).splitlines()
    assert markdown[0] == "| scenario | unit | LangGraph | ours | LangGraph ÷ ours |"
    assert markdown[2] == "| fan-out 1→50→1, per task | ms | 0.83 | 0.13 | 6.38× |"


def test_rows_take_medians_over_repetitions_and_pair_each_scenario():
    sizes = Sizes(chains=(100,), fan=50, mutators=(100,), pause=3, fork=1_000)
    peer: dict[str, list[float]] = {}
    mine: dict[str, list[float]] = {}
    for rep in range(3):  # medians: 2.0 and 1.0 for every figure; 10 for the cycles
        _add(peer, {"chain100_sqlite": 1.0 + rep, "chain100_memoryless": 0.2, "fan50_sqlite": 2.0,
                    "fan50_memoryless": 2.0, "mut100_sqlite": 2.0, "cycle": [9.0, 10.0, 99.0],
                    "fork": 2.0, "fork_lookup": 66.0})  # fmt: skip
        _add(mine, {"chain100": 1.0, "fan50": 1.0, "mut100": 1.0, "cycle": 10.0, "fork": 1.0,
                    "fork_rpc": 30.0})  # fmt: skip
    table = {row.scenario: row for row in rows(sizes, peer, mine)}
    assert table["100-step chain, per step"].peer == 2.0
    assert (
        ratio(table["100-step chain, per step"].peer, table["100-step chain, per step"].ours) == 2
    )
    assert table["100-step chain, per step, LangGraph without checkpointer"].peer == 0.2
    assert table["fan-out 1→50→1, per task"].ours == 1.0
    assert table["100-step chain of side-effecting steps, per step"].peer == 2.0
    cycle = table["interrupt → update → resume, per cycle"]
    assert (cycle.peer, cycle.ours) == (10.0, 10.0)
    fork = table["fork at step 500 of 1,000, run to the end"]
    assert "66.0 ms more" in fork.note
    assert "the RPC alone: 30.0 ms" in fork.note


def test_missing_figures_leave_empty_cells():
    table = rows(QUICK, {}, {"chain100": [0.2]})
    assert all(row.peer is None for row in table)
    assert "—" in format_table(table)


def test_our_shapes_have_the_sizes_langgraph_gets():
    keys = {shape.key: shape.steps for shape in shapes(QUICK)}
    assert keys == {"chain100": 100, "chain200": 200, "fan50": 52, "mut50": 50, "mut100": 100}


def test_the_langgraph_side_imports_nothing_of_ours():
    tree = ast.parse(LANGGRAPH_SIDE.read_text())
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, "a relative import"
            modules.add(node.module or "")
        elif isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
    assert "langgraph.checkpoint.sqlite" in modules
    assert not {m for m in modules if m.split(".")[0] in {"foundry", "bench", "tests"}}


def test_langgraph_is_not_installed_in_the_projects_environment():
    assert importlib.util.find_spec("langgraph") is None


def test_make_bench_peers_installs_langgraph_only_into_its_own_venv(tmp_path: Path):
    for name in ("Makefile", "pyproject.toml", REQUIREMENTS):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, tmp_path / name)
    os.utime(tmp_path / "pyproject.toml", (time.time() - 60, time.time() - 60))
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    for done in (".venv/bin/python", ".venv/.installed"):  # the project's venv, up to date
        (tmp_path / done).touch()
    plan = subprocess.run(
        ["make", "--no-print-directory", "-n", "bench-peers", "ARGS=--quick"], cwd=tmp_path,
        capture_output=True, text=True, timeout=60, check=True,
        # not a sub-make of `make test`: no inherited MAKELEVEL/MAKEFLAGS
        env={k: v for k, v in os.environ.items() if not k.startswith("MAKE")},
    ).stdout  # fmt: skip

    assert "-m venv .peers-venv\n" in plan
    assert f".peers-venv/bin/python -m pip install --quiet -r {REQUIREMENTS}\n" in plan
    assert ".venv/bin/python -m pip" not in plan  # nothing is installed into the project's venv
    assert plan.endswith(
        ".venv/bin/python -m bench.peers --peers-python .peers-venv/bin/python --quick\n"
    )
