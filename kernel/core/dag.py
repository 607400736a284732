"""The DAG format of ``RunSpec.dag_json``: parsing, validation and input references. Pure functions.

A DAG is ``{"steps": [step, ...]}``; a step is::

    {"id": "summarize", "type": "llm", "depends_on": ["fetch"],
     "inputs": {"prompt": "Summarize: ${steps.fetch.output.body}"},
     "model": "mock:small", "env": {"TONE": "dry"},
     "retry": {"max_attempts": 3, "backoff": 0.5}, "timeout": 30}

References: ``${inputs.PATH}`` reads the run's inputs, ``${steps.ID.output.PATH}`` an upstream
step's output (PATH: dot-separated keys and list indexes; optional). A string that is exactly one
reference takes the referenced value with its JSON type; a reference inside a longer string is
replaced by its text (JSON for non-strings). Referencing a step makes it a dependency.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from foundry.kernel.core.envpolicy import env_violation
from foundry.kernel.core.ids import compact_json
from foundry.kernel.core.json_input import (
    QUOTE_LIMIT,
    STRUCT_DEPTH,
    check_depth,
    cut_middle,
    parse_json,
    quoted,
    shown,
)
from foundry.kernel.errors import InvalidArgument

REFERENCE = re.compile(r"\$\{([^}]*)\}")
_STEP_KEYS = {"id", "type", "inputs", "depends_on", "retry", "timeout", "model", "env"}
_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}")


@dataclass(frozen=True)
class Retry:
    max_attempts: int = 1
    backoff: float = 0.5


@dataclass(frozen=True)
class StepSpec:
    id: str
    idx: int
    type: str
    inputs: Mapping[str, Any]
    depends_on: tuple[str, ...]
    retry: Retry | None = None  # None: the block's own retries apply
    timeout: float | None = None
    model: str = ""
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Dag:
    steps: tuple[StepSpec, ...]

    def by_id(self) -> Mapping[str, StepSpec]:
        return self._by_id

    @cached_property
    def _by_id(self) -> Mapping[str, StepSpec]:
        # made once: a PatchStep deep in a long run looked it up again for each patch
        return {s.id: s for s in self.steps}

    @cached_property
    def dependents(self) -> dict[str, tuple[str, ...]]:
        """Direct dependents of each step."""
        found: dict[str, list[str]] = {}
        for step in self.steps:
            for dep in step.depends_on:
                found.setdefault(dep, []).append(step.id)
        return {k: tuple(v) for k, v in found.items()}

    def downstream_of(self, step_id: str) -> set[str]:
        """``step_id`` and every step that depends on it, directly or not."""
        found, todo = {step_id}, [step_id]
        while todo:
            for child in self.dependents.get(todo.pop(), ()):
                if child not in found:
                    found.add(child)
                    todo.append(child)
        return found


def upstream_of(dag: Dag, step_id: str) -> set[str]:
    """Every step ``step_id`` depends on, directly or not."""
    by_id = dag.by_id()
    found: set[str] = set()
    todo = list(by_id[step_id].depends_on)
    while todo:
        current = todo.pop()
        if current not in found:
            found.add(current)
            todo.extend(by_id[current].depends_on)
    return found


def check_patch_references(dag: Dag, step_id: str, inputs: Any) -> None:
    """Patched inputs may reference the run's inputs and upstream steps only. A step it depends
    on directly is found at once; only another reference walks everything upstream (once): a
    patch deep in a long chain names the step before, and a walk of the whole chain for each
    PatchStep (with ResumeRun's look at every step) made a pause → patch → resume cycle deep in
    a 1,000-step chain cost 10.8 ms against 8.7 ms without both."""
    direct = dag.by_id()[step_id].depends_on
    upstream: set[str] | None = None
    for path in references(inputs):
        text = "${" + ".".join(path) + "}"
        if path[0] == "inputs" and all(path):
            continue
        # (no empty segment, as a submitted DAG's: ``output..x`` passed, then failed the step)
        if path[0] == "steps" and len(path) >= 3 and path[2] == "output" and all(path):
            if path[1] in direct:
                continue
            if upstream is None:
                upstream = upstream_of(dag, step_id)
            if path[1] in upstream:
                continue
        raise InvalidArgument(
            f"step {quoted(step_id)}: inputs_patch: reference {shown(text)} must name the run's "
            "inputs or a "
            "step upstream of this one"
        )


EnvAllowance = Callable[[StepSpec], Collection[str]]
"""The env names a step may set: its block's ``allow_env`` for the step's inputs."""


def check_step_env(
    step_id: str, env: Mapping[str, Any], allowed: Collection[str], *, field: str = "env"
) -> None:
    """A run's step ``env`` sets only names its block allows, never a forbidden one."""
    violation = env_violation(env, allowed)
    if violation is not None:
        name, reason = violation
        raise InvalidArgument(f"step {quoted(step_id)}: {field}.{name[:100]}: {reason}")


def check_dag_env(dag: Dag, allowance: EnvAllowance) -> None:
    for step in dag.steps:
        if step.env:
            check_step_env(step.id, step.env, allowance(step))


ModelRefusal = Callable[[StepSpec], str]
"""Why a step may not name its ``model`` ("" when it may): its block's ``model_refused``."""


def no_model_refusal(step: StepSpec) -> str:
    return ""


def check_step_model(step: StepSpec, refusal: ModelRefusal, *, field: str = "model") -> None:
    """A step's ``model`` is one its block can serve (an unknown provider is refused now, not
    when the step runs — perhaps hours into the run, past a breakpoint)."""
    if step.model and (reason := refusal(step)):
        raise InvalidArgument(f"step {quoted(step.id)}: {field}: {reason}")


def check_dag_models(dag: Dag, refusal: ModelRefusal) -> None:
    for step in dag.steps:
        check_step_model(step, refusal)


def parse_dag(dag_json: str, known_types: Collection[str] | None) -> Dag:
    """Parse and validate; every error is InvalidArgument naming the step and the field.

    ``known_types`` None skips the step-type check and the duplicate-key check (reading back a
    stored run: one accepted before keys had to be unique still reads).
    """
    document = parse_json(dag_json, "spec.dag_json", unique_keys=known_types is not None)
    if not isinstance(document, dict) or not isinstance(document.get("steps"), list):
        raise InvalidArgument('spec.dag_json: expected an object with a "steps" array')
    if known_types is not None and dag_json.count("{") + dag_json.count("[") > INPUTS_AT:
        _check_inputs_depth(document)
    if not document["steps"]:
        raise InvalidArgument("spec.dag_json: steps: a DAG needs at least one step")
    fields = [_step_fields(raw, idx, known_types) for idx, raw in enumerate(document["steps"])]
    seen: set[str] = set()
    for step_id, *_ in fields:
        if step_id in seen:
            raise InvalidArgument(f"step {quoted(step_id)}: id: duplicate step id")
        seen.add(step_id)
    # Each StepSpec made once its dependencies are known (a frozen dataclass of 9 fields is
    # ~2 µs to make; a 1,000-step chain was parsed in 15.7 ms on the trio thread, now 8.5).
    steps = [
        StepSpec(step_id, idx, kind, inputs, _reference_deps(step_id, inputs, depends_on, seen),
                 retry, timeout, model, env)
        for step_id, idx, kind, inputs, depends_on, retry, timeout, model, env in fields
    ]  # fmt: skip
    _check_acyclic(steps)
    return Dag(tuple(steps))


_StepFields = tuple[
    str, int, str, dict[str, Any], list[str], Retry | None, float | None, str, dict[str, str]
]


def _step_fields(raw: Any, idx: int, known_types: Collection[str] | None) -> _StepFields:
    """A step's fields, checked: those of its StepSpec, ``depends_on`` as given. (The step's
    name for an error message is made only for one: this runs once a step, on the trio thread.)"""
    if not isinstance(raw, dict):
        raise InvalidArgument(f"steps[{idx}]: expected an object")
    step_id = raw.get("id")
    if not isinstance(step_id, str) or not _ID.fullmatch(step_id):
        raise InvalidArgument(f"steps[{idx}]: id: a step id (letters, digits, _ . : -) is required")
    if not raw.keys() <= _STEP_KEYS:
        unknown = sorted(set(raw) - _STEP_KEYS)[0]
        raise InvalidArgument(f"step {quoted(step_id)}: {shown(unknown)}: unknown field")
    kind = raw.get("type")
    if not isinstance(kind, str) or (known_types is not None and kind not in known_types):
        known = ", ".join(sorted(known_types or ()))
        raise InvalidArgument(
            f"step {quoted(step_id)}: type: unknown step type {quoted(kind)} (known: {known})"
        )
    inputs = raw.get("inputs", {})
    if not isinstance(inputs, dict):
        raise InvalidArgument(f"step {quoted(step_id)}: inputs: expected an object")
    depends_on = raw.get("depends_on", [])
    if not isinstance(depends_on, list) or not all(isinstance(d, str) for d in depends_on):
        raise InvalidArgument(f"step {quoted(step_id)}: depends_on: expected a list of step ids")
    env = raw.get("env", {})
    if not isinstance(env, dict) or (env and not all(isinstance(v, str) for v in env.values())):
        raise InvalidArgument(f"step {quoted(step_id)}: env: expected an object of strings")
    model = raw.get("model", "")
    if not isinstance(model, str):
        raise InvalidArgument(f"step {quoted(step_id)}: model: expected a string")
    retry, timeout = raw.get("retry"), raw.get("timeout")
    if retry is not None:
        retry = _parse_retry(retry, f"step {quoted(step_id)}")
    if timeout is not None:
        timeout = _parse_timeout(timeout, f"step {quoted(step_id)}")
    return step_id, idx, kind, inputs, depends_on, retry, timeout, model, env


INPUTS_AT = STRUCT_DEPTH + 3  # a step's inputs are the 4th level of its DAG: {steps: [{inputs}]}


def _check_inputs_depth(document: dict[str, Any]) -> None:
    """A step's inputs nested at most ``STRUCT_DEPTH`` levels, as its lease's must be: deeper
    ones could never be leased, and a patch recorded them as the inputs it replaced (a
    ``step_patched`` that grpcio could not read, for good)."""
    try:
        check_depth(document, "spec.dag_json", INPUTS_AT)
    except InvalidArgument:
        for raw in document["steps"]:
            inputs = raw.get("inputs") if isinstance(raw, dict) else None
            if isinstance(inputs, dict):
                check_depth(inputs, f"step {quoted(raw.get('id'))}: inputs", STRUCT_DEPTH)
        raise


def _parse_retry(raw: Any, where: str) -> Retry | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) - {"max_attempts", "backoff"}:
        raise InvalidArgument(f"{where}: retry: expected {{max_attempts, backoff}}")
    attempts, backoff = raw.get("max_attempts", 1), raw.get("backoff", 0.5)
    if isinstance(attempts, bool) or not isinstance(attempts, int) or not 1 <= attempts <= 100:
        raise InvalidArgument(f"{where}: retry.max_attempts: expected an integer 1..100")
    number = isinstance(backoff, int | float) and not isinstance(backoff, bool)
    if not number or not 0 <= backoff <= MAX_SECONDS:
        bounds = f">= 0 and <= {MAX_SECONDS}"
        raise InvalidArgument(f"{where}: retry.backoff: expected seconds, {bounds}")
    return Retry(attempts, float(backoff))


MAX_SECONDS = 7 * 24 * 3600  # a week: also keeps huge integers from overflowing a float


def _parse_timeout(raw: Any, where: str) -> float | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not 0 < raw <= MAX_SECONDS:
        raise InvalidArgument(f"{where}: timeout: expected seconds, > 0 and <= {MAX_SECONDS}")
    return float(raw)


def references(value: Any) -> list[tuple[str, ...]]:
    """Every reference in a JSON value, as path segments (``("steps", "a", "output", "x")``), in
    document order. A walk with a stack, not nested generators (one a value: ~2 µs a step of a
    chain, on the trio thread)."""
    found: list[tuple[str, ...]] = []
    todo = [value]
    while todo:
        item = todo.pop()
        if isinstance(item, str):
            if "${" in item:
                found += [tuple(m.group(1).strip().split(".")) for m in REFERENCE.finditer(item)]
        elif isinstance(item, dict):
            todo += reversed(item.values())
        elif isinstance(item, list):
            todo += reversed(item)
    return found


def _reference_deps(
    step_id: str, inputs: Any, depends_on: Any, step_ids: set[str]
) -> tuple[str, ...]:
    """A step's dependencies: its ``depends_on`` (each a known step, not itself), then the steps
    its inputs reference."""
    deps = dict.fromkeys(depends_on)
    for dep in deps:
        if dep not in step_ids:
            raise InvalidArgument(f"step {quoted(step_id)}: depends_on: unknown step {quoted(dep)}")
        if dep == step_id:
            raise InvalidArgument(
                f"step {quoted(step_id)}: depends_on: a step cannot depend on itself"
            )
    for path in references(inputs):
        head = path[0]
        if head == "inputs" and all(path):
            continue
        if head == "steps" and len(path) >= 3 and path[2] == "output" and all(path):
            if path[1] not in step_ids or path[1] == step_id:
                text = "${" + ".".join(path) + "}"
                what = ("the step itself: a step cannot use its own output" if path[1] == step_id
                        else f"unknown step {quoted(path[1])}")  # fmt: skip
                raise InvalidArgument(
                    f"step {quoted(step_id)}: inputs: reference {shown(text)} names {what}"
                )
            deps.setdefault(path[1])
            continue
        text = "${" + ".".join(path) + "}"
        raise InvalidArgument(
            f"step {quoted(step_id)}: inputs: bad reference {shown(text)} "
            + _reference_hint(path, step_ids)
        )
    return tuple(deps)


def _reference_hint(path: tuple[str, ...], step_ids: set[str]) -> str:
    """How a bad reference is written right: a step whose id has a dot (ids may) is read as
    its id's first part, so its output cannot be referenced (its order can: depends_on)."""
    named = ".".join(path[1:]) + "."
    dotted = sorted(i for i in step_ids if "." in i and named.startswith(i + "."))
    if path[0] == "steps" and dotted:
        return (
            f"(step {quoted(dotted[-1])}: an id with a '.' cannot be referenced, as "
            "references split on dots: give it an id without one, or use depends_on)"
        )
    return "(use ${inputs.KEY} or ${steps.ID.output.KEY})"


def _check_acyclic(steps: list[StepSpec]) -> None:
    """Depth-first, with an explicit stack: a DAG may be a chain of thousands of steps, deeper
    than the interpreter's recursion limit."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    by_id = {s.id: s for s in steps}
    for step in steps:
        if step.id in state:
            continue
        path: list[str] = [step.id]
        pending: list[Iterator[str]] = [iter(step.depends_on)]
        state[step.id] = 1
        while pending:
            dep = next(pending[-1], None)
            if dep is None:
                state[path.pop()] = 2
                pending.pop()
            elif state.get(dep) == 1:
                cycle = " → ".join([*path[path.index(dep) :], dep])
                raise InvalidArgument(  # (either may close it: the message names both)
                    f"step {quoted(dep)}: depends_on and inputs' ${{steps.…}} references: "
                    f"cycle {cut_middle(cycle, QUOTE_LIMIT)}"
                )
            elif dep not in state:
                state[dep] = 1
                path.append(dep)
                pending.append(iter(by_id[dep].depends_on))


class UnresolvedReference(ValueError):
    """A reference names a key the run's inputs or an upstream output does not have."""


class StepTooLarge(ValueError):
    """A step's resolved inputs or its output over ``[scheduler] max_step_bytes`` of JSON, or
    a run's recorded inputs and outputs over ``max_run_bytes``: the step fails."""


def resolve(value: Any, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> Any:
    """Substitute every reference in ``value`` (see the module doc)."""
    return _substituted(value, lambda path: _lookup(path, inputs, outputs))


def resolve_bounded(
    value: Any, inputs: Mapping[str, Any], outputs: Mapping[str, Any], limit: int
) -> Any:
    """:func:`resolve`, refusing (StepTooLarge) once the JSON of the values its references
    substitute passes ``limit`` bytes — before more is made: inputs that name a large output
    twice, step after step, double at each step (a 12 KB DAG once made a 160 MB input)."""
    spent = 0

    def lookup(path: list[str]) -> Any:
        nonlocal spent
        found = _lookup(path, inputs, outputs)
        spent += len(found) if isinstance(found, str) else len(compact_json(found))
        if spent > limit:
            raise StepTooLarge(f"inputs: their references substitute over {limit:,} bytes of "
                               "JSON, the step limit ([scheduler] max_step_bytes)")  # fmt: skip
        return found

    return _substituted(value, lookup)


def _substituted(value: Any, lookup: Callable[[list[str]], Any]) -> Any:
    """``value`` with each reference replaced by what ``lookup`` finds at its path: a whole
    string that is one reference by the value itself, else by its text."""
    if isinstance(value, str):
        whole = REFERENCE.fullmatch(value)
        if whole:
            return lookup(whole.group(1).strip().split("."))
        return REFERENCE.sub(lambda m: _text(lookup(m.group(1).strip().split("."))), value)
    if isinstance(value, dict):
        return {k: _substituted(v, lookup) for k, v in value.items()}
    if isinstance(value, list):
        return [_substituted(v, lookup) for v in value]
    return value


# A list index in a reference: ASCII digits (``str.isdigit`` takes ``١`` for 1, and ``²``, or
# 5,000 digits, reached int() and came back as Python's own error text).
_INDEX = re.compile(r"[0-9]{1,18}")


def _lookup(path: list[str], inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> Any:
    if path[0] == "inputs":
        current: Any = inputs
        rest = path[1:]
    else:
        current = outputs[path[1]]
        rest = path[3:]
    for key in rest:
        if isinstance(current, Mapping) and key in current:
            current = current[key]
        elif isinstance(current, list) and _INDEX.fullmatch(key) and int(key) < len(current):
            current = current[int(key)]
        else:
            shown = cut_middle(".".join(path), 200)
            raise UnresolvedReference(f"${{{shown}}}: no {quoted(key)} there")
    return current


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


SEED_BITS = 53  # a seed survives JSON and protobuf Values (doubles) exactly
SEED_MASK = (1 << SEED_BITS) - 1


def step_seed(run_seed: int, step_id: str) -> int:
    """A step's seed: derived from the run seed and the step id (stable across runs)."""
    digest = hashlib.sha256(f"{run_seed}:{step_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & SEED_MASK


def step_seeds(run_seed: int, steps: Iterable[StepSpec]) -> dict[str, int]:
    """Every step's :func:`step_seed`, by step id. The planner makes them in one go at a run's
    first lease: one at a time, each lease's hash cost ~7 µs of the trio thread in place
    (OpenSSL's code and state out of the caches between steps), ~1 µs in a loop."""
    return {spec.id: step_seed(run_seed, spec.id) for spec in steps}
