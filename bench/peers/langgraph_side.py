"""The LangGraph side of ``make bench-peers``: run in the peers' virtualenv (``.peers-venv``, which
has ``langgraph`` and ``langgraph-checkpoint-sqlite``), never in the project's own ``.venv``, and
imports nothing from this project. ``python langgraph_side.py SIZES_JSON`` prints one JSON object
on stdout: every figure's samples (milliseconds), plus the versions and SQLite settings used.

Every graph's state is ``{"n": int}`` (the fan-out adds ``results``, a list joined with
``operator.add``); each node returns a one-key update at once, like our ``noop`` block. The
checkpointer is ``SqliteSaver`` on a file in a temporary directory (it switches the file to WAL;
Python's sqlite3 leaves ``synchronous`` at FULL, so each commit syncs the WAL), one fresh file per
measurement. Runs are ``invoke``d with ``durability="sync"``: a step's checkpoint is written before
the next step starts — the rule our mutators follow. Each measurement is preceded by a small
warm-up run of the same shape (imports, SQLite's first pages).

Figures (each: milliseconds; the orchestrator takes medians over repetitions):

- ``chain{N}_sqlite`` / ``chain{N}_memoryless``: per step of an N-node linear graph
  (START → n0 → … → n{N-1} → END), ``invoke`` → return, divided by N; with SqliteSaver, and with
  no checkpointer at all (nothing durable, for scale).
- ``fan{W}_sqlite`` / ``fan{W}_memoryless``: per task of root → W × ``Send("work", …)`` → join
  (W parallel tasks in one superstep, then the join): ``invoke`` → return, divided by W + 2.
- ``mut{N}_sqlite``: per step of an N-node chain whose every node performs a side effect outside
  the state (it appends to a list in this process) after the previous step's checkpoint is durable.
- ``cycle``: ``interrupt_before`` every node of a P-node chain; at each pause ``update_state``
  (patches ``n``) then ``invoke(None, config)``, which runs the patched node and stops before the
  next: update_state called → invoke returned. The patched value is checked. In-process.
- ``fork`` / ``fork_lookup``: an F-node chain runs to the end; ``fork_lookup`` is finding the
  checkpoint taken before node F/2 in ``get_state_history`` (the thread's checkpoints,
  newest first); ``fork`` is ``update_state`` on that checkpoint (a new branch of the thread) then
  ``invoke(None, branch_config)`` running nodes F/2 … F-1 to the end.
"""

from __future__ import annotations

import json
import operator
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any, TypedDict

from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Send

WARMUP_STEPS = 20
SIDE_EFFECTS: list[int] = []  # what the side-effecting nodes touch, outside the graph's state


class ChainState(TypedDict):
    n: int


class FanState(TypedDict):
    n: int
    results: Annotated[list[int], operator.add]


def _node_ids(steps: int) -> list[str]:
    return [f"n{i:04d}" for i in range(steps)]


def _step(state: ChainState) -> dict[str, int]:
    return {"n": state["n"] + 1}


def _side_effecting_step(state: ChainState) -> dict[str, int]:
    SIDE_EFFECTS.append(state["n"])
    return {"n": state["n"] + 1}


def chain_graph(steps: int, node: Callable[[ChainState], dict[str, int]]) -> StateGraph[Any]:
    graph: StateGraph[Any] = StateGraph(ChainState)
    ids = _node_ids(steps)
    for node_id in ids:
        graph.add_node(node_id, node)
    graph.add_edge(START, ids[0])
    for previous, node_id in zip(ids, ids[1:], strict=False):
        graph.add_edge(previous, node_id)
    graph.add_edge(ids[-1], END)
    return graph


def fan_graph(width: int) -> StateGraph[Any]:
    graph: StateGraph[Any] = StateGraph(FanState)
    graph.add_node("root", lambda state: {"n": 0})
    graph.add_node("work", lambda item: {"results": [item["i"]]})
    graph.add_node("join", lambda state: {"n": len(state["results"])})
    graph.add_edge(START, "root")
    graph.add_conditional_edges(
        "root", lambda state: [Send("work", {"i": i}) for i in range(width)], ["work"]
    )
    graph.add_edge("work", "join")
    graph.add_edge("join", END)
    return graph


@contextmanager
def sqlite_saver() -> Iterator[SqliteSaver]:
    """SqliteSaver on a fresh file in a temporary directory (removed afterwards)."""
    with tempfile.TemporaryDirectory(prefix="langgraph-bench-") as directory:
        conn = sqlite3.connect(Path(directory) / "checkpoints.sqlite", check_same_thread=False)
        try:
            saver = SqliteSaver(conn)
            saver.setup()
            yield saver
        finally:
            conn.close()


def _config(thread: str, steps: int) -> dict[str, Any]:
    # LangGraph stops a run after recursion_limit supersteps (default 25).
    return {"configurable": {"thread_id": thread}, "recursion_limit": steps + 10}


def _invoke(compiled: Any, state: Any, config: dict[str, Any]) -> Any:
    # durability="sync" without a checkpointer fails in LangGraph 1.2 (AttributeError), so it is
    # passed only when there is one.
    durability = "sync" if compiled.checkpointer else None
    return compiled.invoke(state, config, durability=durability)


def _timed_invoke(compiled: Any, state: Any, thread: str, steps: int) -> tuple[Any, float]:
    config = _config(thread, steps)
    started = time.perf_counter()
    result = _invoke(compiled, state, config)
    return result, (time.perf_counter() - started) * 1000


def chain_ms_per_step(steps: int, *, durable: bool, side_effects: bool = False) -> float:
    node = _side_effecting_step if side_effects else _step
    with sqlite_saver() as saver:
        checkpointer = saver if durable else None
        warm_up = chain_graph(WARMUP_STEPS, node).compile(checkpointer=checkpointer)
        _invoke(warm_up, {"n": 0}, _config("warm-up", WARMUP_STEPS))
        compiled = chain_graph(steps, node).compile(checkpointer=checkpointer)
        SIDE_EFFECTS.clear()
        result, ms = _timed_invoke(compiled, {"n": 0}, "chain", steps)
    if result["n"] != steps or (side_effects and len(SIDE_EFFECTS) != steps):
        raise AssertionError(f"chain of {steps}: n={result['n']}, {len(SIDE_EFFECTS)} effects")
    return ms / steps


def fan_ms_per_task(width: int, *, durable: bool) -> float:
    with sqlite_saver() as saver:
        checkpointer = saver if durable else None
        warm_up = fan_graph(5).compile(checkpointer=checkpointer)
        _invoke(warm_up, {"n": 0, "results": []}, _config("warm-up", 10))
        compiled = fan_graph(width).compile(checkpointer=checkpointer)
        result, ms = _timed_invoke(compiled, {"n": 0, "results": []}, "fan", 10)
    if result["n"] != width or sorted(result["results"]) != list(range(width)):
        raise AssertionError(f"fan of {width}: joined {result['n']} results")
    return ms / (width + 2)


def interrupt_cycles_ms(steps: int) -> list[float]:
    """Each cycle: update_state at the pause, then invoke(None) to the next pause (or the end)."""
    ids = _node_ids(steps)
    cycles: list[float] = []
    with sqlite_saver() as saver:
        compiled = chain_graph(steps, _step).compile(checkpointer=saver, interrupt_before=ids)
        config = _config("paused", steps)
        compiled.invoke({"n": 0}, config, durability="sync")
        for index, node_id in enumerate(ids):
            paused = compiled.get_state(config)
            if paused.next != (node_id,):
                raise AssertionError(f"paused before {paused.next}, expected {node_id}")
            patched = 1000 * (index + 1)
            started = time.perf_counter()
            compiled.update_state(config, {"n": patched})
            result = compiled.invoke(None, config, durability="sync")
            cycles.append((time.perf_counter() - started) * 1000)
            if result["n"] != patched + 1:
                raise AssertionError(f"{node_id}: n={result['n']}, expected {patched + 1}")
        if compiled.get_state(config).next:
            raise AssertionError("the paused chain did not finish")
    return cycles


def fork_ms(steps: int) -> tuple[float, float]:
    """(lookup ms, fork ms): branch from the checkpoint before node steps/2 and run to the end."""
    middle = steps // 2
    target = _node_ids(steps)[middle]
    with sqlite_saver() as saver:
        compiled = chain_graph(steps, _step).compile(checkpointer=saver)
        config = _config("source", steps)
        compiled.invoke({"n": 0}, config, durability="sync")
        started = time.perf_counter()
        snapshot = next(s for s in compiled.get_state_history(config) if s.next == (target,))
        lookup_ms = (time.perf_counter() - started) * 1000
        if snapshot.values["n"] != middle:
            raise AssertionError(f"checkpoint before {target}: n={snapshot.values['n']}")
        started = time.perf_counter()
        branch = compiled.update_state(snapshot.config, {"n": -middle})
        result = compiled.invoke(None, {**branch, "recursion_limit": steps + 10}, durability="sync")
        fork = (time.perf_counter() - started) * 1000
    if result["n"] != -middle + (steps - middle):
        raise AssertionError(f"the branch ended at n={result['n']}")
    return lookup_ms, fork


def _sqlite_settings() -> dict[str, Any]:
    with sqlite_saver() as saver:
        journal = saver.conn.execute("PRAGMA journal_mode").fetchone()[0]
        synchronous = saver.conn.execute("PRAGMA synchronous").fetchone()[0]
    return {"journal_mode": journal, "synchronous": synchronous, "sqlite": sqlite3.sqlite_version}


def measure(sizes: dict[str, Any]) -> dict[str, Any]:
    figures: dict[str, float | list[float]] = {}
    for steps in sizes["chains"]:
        figures[f"chain{steps}_sqlite"] = chain_ms_per_step(steps, durable=True)
        figures[f"chain{steps}_memoryless"] = chain_ms_per_step(steps, durable=False)
    width = sizes["fan"]
    figures[f"fan{width}_sqlite"] = fan_ms_per_task(width, durable=True)
    figures[f"fan{width}_memoryless"] = fan_ms_per_task(width, durable=False)
    for steps in sizes["mutators"]:
        figures[f"mut{steps}_sqlite"] = chain_ms_per_step(steps, durable=True, side_effects=True)
    figures["cycle"] = interrupt_cycles_ms(sizes["pause"])
    figures["fork_lookup"], figures["fork"] = fork_ms(sizes["fork"])
    return figures


def main(argv: list[str]) -> int:
    sizes = json.loads(argv[1])
    document = {
        "versions": {
            name: metadata.version(name) for name in ("langgraph", "langgraph-checkpoint-sqlite")
        },
        "settings": _sqlite_settings(),
        "figures": measure(sizes),
    }
    print(json.dumps(document))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
