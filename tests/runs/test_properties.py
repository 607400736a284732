"""Properties over random DAGs of deterministic blocks (transform + the mock llm), against one
real daemon per module: a branch with the SAME seed and no patches reproduces its source, and a
FULL replay of an unchanged deterministic run stays within tolerance."""

from __future__ import annotations

import json
from typing import Any

import pytest
from foundry.proto import runtime_api as api
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.runs.helpers import outputs, run_and_wait, steps, wait_done

SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def daemon(shared_daemon):
    return shared_daemon()


@st.composite
def dags(draw: st.DrawFn) -> dict[str, Any]:
    """A random DAG: each step a transform or a mock llm, reading the run's inputs and some
    earlier steps' outputs (whole values and embedded in text), with optional explicit deps."""
    count = draw(st.integers(1, 6))
    steps_: list[dict[str, Any]] = []
    for i in range(count):
        step_id = f"n{i}"
        earlier = [s["id"] for s in steps_]
        reads = draw(st.lists(st.sampled_from(earlier), unique=True, max_size=3)) if earlier else []
        extra = draw(st.lists(st.sampled_from(earlier), unique=True, max_size=2)) if earlier else []
        if draw(st.booleans()):
            inputs: dict[str, Any] = {"i": i, "topic": "${inputs.topic}"}
            inputs.update({f"from_{r}": f"${{steps.{r}.output}}" for r in reads})
            step: dict[str, Any] = {"id": step_id, "type": "transform", "inputs": inputs}
        else:
            prompt = " ".join(
                [f"step {i} on ${{inputs.topic}}", *(f"[${{steps.{r}.output}}]" for r in reads)]
            )
            step = {
                "id": step_id,
                "type": "llm",
                "inputs": {"prompt": prompt},
                "model": draw(st.sampled_from(["mock:small", "mock:large", ""])),
            }
        if extra:
            step["depends_on"] = extra
        steps_.append(step)
    return {"steps": steps_}


def topics() -> st.SearchStrategy[str]:
    return st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)


@SETTINGS
@given(document=dags(), seed=st.integers(0, 2**62), topic=topics(), data=st.data())
def test_a_same_seed_branch_reproduces_its_source(daemon, document, seed, topic, data):
    dag_json = json.dumps(document)
    source = run_and_wait(daemon, dag_json, inputs={"topic": topic}, seed=seed)
    assert source.status == api.RunStatus.SUCCEEDED
    from_step = data.draw(st.sampled_from([s["id"] for s in document["steps"]]), label="from_step")
    request = api.CreateBranchRunRequest(
        run_id=source.run_id, from_step=from_step, seed_mode=api.BranchSeedMode.SAME
    )
    branch_id = daemon.call(lambda _, rt: rt.create_branch_run(request)).run_id
    branch = wait_done(daemon, branch_id)
    assert branch.status == api.RunStatus.SUCCEEDED
    assert outputs(branch) == outputs(source)
    downstream = _downstream(document, from_step)
    for step_id, step in steps(branch).items():
        assert step.status == ("succeeded" if step_id in downstream else "reused"), step_id


@SETTINGS
@given(document=dags(), seed=st.integers(0, 2**62), topic=topics())
def test_a_full_replay_of_a_deterministic_run_is_within_tolerance(daemon, document, seed, topic):
    run = run_and_wait(daemon, json.dumps(document), inputs={"topic": topic}, seed=seed)
    assert run.status == api.RunStatus.SUCCEEDED
    request = api.ReplayRunRequest(run_id=run.run_id, mode=api.ReplayMode.FULL)
    result = daemon.call(lambda _, rt: rt.replay_run(request))
    assert result.all_within_tolerance
    assert result.strategy == api.ReplayStrategy.LIVE
    assert [s.step_id for s in result.steps] == [s["id"] for s in document["steps"]]
    for step in result.steps:
        assert step.drift.within_tolerance
        assert step.drift.token_delta == 0
        assert step.drift.cost_delta == 0
        assert step.drift.current.to_dict() == step.drift.recorded.to_dict()
    diff = daemon.call(
        lambda _, rt: rt.replay_run(
            api.ReplayRunRequest(run_id=run.run_id, mode=api.ReplayMode.DIFF)
        )
    )
    assert diff.all_within_tolerance
    assert list(diff.steps) == []


def _downstream(document: dict[str, Any], start: str) -> set[str]:
    found, changed = {start}, True
    while changed:
        changed = False
        for step in document["steps"]:
            deps = set(step.get("depends_on", []))
            deps |= {r.split(".")[1] for r in _refs(step["inputs"]) if r.startswith("steps.")}
            if step["id"] not in found and deps & found:
                found.add(step["id"])
                changed = True
    return found


def _refs(value: Any) -> list[str]:
    import re

    return re.findall(r"\$\{([^}]*)\}", json.dumps(value))
