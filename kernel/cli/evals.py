"""``foundry eval …``: sync eval packs, run them against a commit, record and compare results.

A pack file (TOML, or JSON when its name does not end in ``.toml``) is::

    pack = "smoke"

    [[scenarios]]
    slug = "outline"                     # unique in the pack
    title = "Outline mentions the topic" # optional, as is description
    [scenarios.run_spec]
    dag_file = "research.dag.json"       # relative to the pack file; or dag = '{"steps": …}'
    inputs = {topic = "otters"}          # optional: inputs, seed, labels, breakpoints
    seed = 7
    [scenarios.expected]                 # the README's "expected" vocabulary
    status = "succeeded"
    steps.outline.contains = "otters"

The ``run_spec`` sent to the daemon is ``{dag_json, inputs, seed, labels, breakpoints}`` (the
fields of ``RunSpec``). A bad file is a one-line :class:`ConfigError` naming the file and the key
(exit 2); a failing call is one line too (exit 1).

``eval run`` reads the pack file, syncs it (so results are judged against exactly that file),
submits every scenario ``--repeat`` times with the idempotency key
``eval:{pack}:{slug}:{commit}:{i}:{spec}`` (``spec``: 12 hex digits of its spec's SHA-256;
running the command again on the same pack reuses the runs), waits, records
each result at ``--commit`` and prints per scenario the statistics of
``foundry.kernel.core.evals.summarize``; with ``--baseline`` also those of the results recorded at
that commit (the scenario's history, one result per run: the latest) and the verdict of
``regression``. It exits 1 when a scenario did not pass every run or regressed.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import time
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import betterproto2
from foundry.kernel.cli.common import (
    positive_seconds,
    prepared_client,
    read_text_file,
    whole_number,
)
from foundry.kernel.cli.output import message_dict, reported, short_json, stamp, write_control
from foundry.kernel.core.evals import Regression, ScenarioStats, regression, summarize
from foundry.kernel.core.json_input import (
    MAX_DEPTH,
    STRUCT_DEPTH,
    DuplicateKey,
    check_depth,
    each_key_once,
    toml_not_json,
)
from foundry.kernel.errors import ConfigError, FoundryError, InvalidArgument
from foundry.proto import runtime_api as api
from foundry.proto.generated.google.protobuf import Struct
from grpclib import GRPCError
from grpclib.const import Status

TERMINAL = {api.RunStatus.SUCCEEDED, api.RunStatus.FAILED, api.RunStatus.CANCELED}
MAX_KEY_LENGTH = 256  # the daemon's limit on an idempotency key
MAX_SEED = 2**53  # the run_spec travels as a Struct: its numbers are doubles
RUN_SPEC_KEYS = {"dag", "dag_file", "inputs", "seed", "labels", "breakpoints"}
SCENARIO_KEYS = {"slug", "title", "description", "run_spec", "expected"}


def add_eval_commands(commands: Any) -> None:
    from foundry.kernel.cli.main import _client_options

    evals = commands.add_parser("eval", help="eval packs: sync, run, record, list")
    verbs = evals.add_subparsers(dest="verb", required=True, metavar="VERB")

    sync = verbs.add_parser("sync", help="create or update a pack's scenarios from a pack file")
    sync.add_argument("pack_file", help="TOML or JSON pack file")
    _client_options(sync)
    sync.set_defaults(handler=prepared_client(cmd_sync, _load_pack))

    listing = verbs.add_parser("list", help="scenarios with their latest results")
    listing.add_argument("pack", nargs="?", default="", help="only this pack")
    _client_options(listing)
    listing.set_defaults(handler=prepared_client(cmd_list))

    record = verbs.add_parser("record", help="judge a finished run and record the result")
    record.add_argument("pack")
    record.add_argument("slug")
    record.add_argument("run_id")
    record.add_argument("--commit", required=True, metavar="SHA")
    _client_options(record)
    record.set_defaults(handler=prepared_client(cmd_record))

    run = verbs.add_parser("run", help="run a pack at a commit; exits 1 on a failure or regression")
    run.add_argument("pack_file", help="TOML or JSON pack file (synced first)")
    run.add_argument("--commit", required=True, metavar="SHA")
    run.add_argument("--repeat", type=whole_number, default=1, metavar="K")
    run.add_argument("--baseline", metavar="SHA", help="compare with the results at this commit")
    run.add_argument("--timeout", type=positive_seconds, default=600.0, metavar="S",
                     help="seconds to wait for the runs (default 600)")  # fmt: skip
    _client_options(run)
    run.set_defaults(handler=prepared_client(cmd_run, _load_pack))


def _load_pack(args: argparse.Namespace) -> None:
    args.pack_def = load_pack(args.pack_file)


# --- files --------------------------------------------------------------------------------------


def load_document(path: str | Path) -> dict[str, Any]:
    """A JSON or TOML file as an object (TOML when the name ends in ``.toml``; ``-`` is JSON on
    stdin; another name is tried as JSON, then TOML). Errors are one-line ConfigErrors."""
    name = str(path)
    try:
        text = read_text_file(name)
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None
    suffix = ".json" if name == "-" else Path(path).suffix.lower()
    try:
        return _document(name, text, suffix)
    except RecursionError:
        raise ConfigError(f"{name}: nested too deeply") from None


def _document(name: str, text: str, suffix: str) -> dict[str, Any]:
    if suffix == ".toml":
        value: Any = _toml(name, text)
    else:
        try:
            value = json.loads(text, parse_constant=_no_constant, object_pairs_hook=each_key_once)
        except DuplicateKey as exc:
            raise ConfigError(f"{name}: not valid JSON: {exc}") from None
        except ValueError as exc:
            if suffix == ".json":
                raise ConfigError(f"{name}: not valid JSON: {exc}") from None
            try:
                value = tomllib.loads(text)
            except tomllib.TOMLDecodeError:
                raise ConfigError(f"{name}: neither valid JSON ({exc}) nor TOML") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{name}: expected an object at the top, got {_kind(value)}")
    return value


def _toml(name: str, text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{name}: not valid TOML: {exc}") from None


def _no_constant(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


@dataclass(frozen=True)
class ScenarioDef:
    slug: str
    title: str
    description: str
    run_spec: dict[str, Any]  # {dag_json, inputs, seed, labels, breakpoints}
    expected: dict[str, Any]

    def message(self) -> api.EvalScenarioDefinition:
        return api.EvalScenarioDefinition(
            slug=self.slug,
            title=self.title,
            description=self.description,
            run_spec=Struct.from_dict(self.run_spec),
            expected=Struct.from_dict(self.expected),
        )

    def spec(self) -> api.RunSpec:
        return api.RunSpec(
            dag_json=self.run_spec["dag_json"],
            inputs=Struct.from_dict(self.run_spec["inputs"]),
            seed=self.run_spec["seed"],
            labels=dict(self.run_spec["labels"]),
            breakpoints=list(self.run_spec["breakpoints"]),
        )


@dataclass(frozen=True)
class Pack:
    name: str
    scenarios: tuple[ScenarioDef, ...] = field(default_factory=tuple)

    def request(self) -> api.SyncEvalPackRequest:
        return api.SyncEvalPackRequest(
            pack=self.name, scenarios=[s.message() for s in self.scenarios]
        )


def load_pack(path: str | Path) -> Pack:
    """Read and check a pack file; see the module docstring for the format."""
    name = str(path)
    doc = load_document(path)
    where = f"{name}: "
    _known(doc, {"pack", "scenarios"}, where)
    pack = doc.get("pack")
    if not isinstance(pack, str) or not pack.strip():
        raise ConfigError(f"{where}pack: expected a non-empty string")
    scenarios = doc.get("scenarios")
    if not isinstance(scenarios, list) or not scenarios:
        raise ConfigError(f"{where}scenarios: expected a non-empty list of tables")
    base = Path(name).parent if name != "-" else Path.cwd()
    defs: list[ScenarioDef] = []
    seen: set[str] = set()
    for i, raw in enumerate(scenarios):
        at = f"{where}scenarios[{i}]"
        if not isinstance(raw, dict):
            raise ConfigError(f"{at}: expected a table, got {_kind(raw)}")
        _known(raw, SCENARIO_KEYS, f"{at}.")
        slug = raw.get("slug")
        if not isinstance(slug, str) or not slug.strip():
            raise ConfigError(f"{at}.slug: expected a non-empty string")
        if slug in seen:
            raise ConfigError(f"{at}.slug: {slug!r} appears twice in the pack")
        seen.add(slug)
        at = f"{where}scenario {slug}"
        for key in ("title", "description"):
            if not isinstance(raw.get(key, ""), str):
                raise ConfigError(f"{at}: {key}: expected a string")
        expected = raw.get("expected")
        if not isinstance(expected, dict) or not expected:
            raise ConfigError(f"{at}: expected: expected a non-empty table of assertions")
        _check_json(expected, f"{at}: expected")
        defs.append(
            ScenarioDef(
                slug=slug,
                title=raw.get("title", ""),
                description=raw.get("description", ""),
                run_spec=_run_spec(raw.get("run_spec"), base, at),
                expected=expected,
            )
        )
    return Pack(pack, tuple(defs))


def _run_spec(raw: Any, base: Path, at: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{at}: run_spec: expected a table, got {_kind(raw)}")
    _known(raw, RUN_SPEC_KEYS, f"{at}: run_spec.")
    if ("dag" in raw) == ("dag_file" in raw):
        raise ConfigError(f"{at}: run_spec: give exactly one of dag and dag_file")
    if "dag_file" in raw:
        if not isinstance(raw["dag_file"], str) or not raw["dag_file"]:
            raise ConfigError(f"{at}: run_spec.dag_file: expected a path")
        dag_path = base / raw["dag_file"]
        try:
            dag_json = read_text_file(str(dag_path))
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "strerror", None) or exc
            raise ConfigError(
                f"{at}: run_spec.dag_file: cannot read {dag_path}: {reason}"
            ) from None
        what = f"run_spec.dag_file {dag_path}"
    elif isinstance(raw["dag"], dict):
        _check_json(raw["dag"], f"{at}: run_spec.dag", MAX_DEPTH)  # (sent as its JSON text)
        dag_json = json.dumps(raw["dag"])
        what = "run_spec.dag"
    elif isinstance(raw["dag"], str):
        dag_json, what = raw["dag"], "run_spec.dag"
    else:
        raise ConfigError(f"{at}: run_spec.dag: expected a JSON string or a table")
    try:
        dag = json.loads(dag_json, parse_constant=_no_constant, object_pairs_hook=each_key_once)
    except ValueError as exc:
        raise ConfigError(f"{at}: {what}: not valid JSON: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{at}: {what}: nested too deeply") from None
    if not isinstance(dag, dict):
        raise ConfigError(f"{at}: {what}: expected a JSON object, got {_kind(dag)}")
    inputs = raw.get("inputs", {})
    if not isinstance(inputs, dict):
        raise ConfigError(f"{at}: run_spec.inputs: expected a table, got {_kind(inputs)}")
    _check_json(inputs, f"{at}: run_spec.inputs")
    seed = raw.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or abs(seed) > MAX_SEED:
        raise ConfigError(f"{at}: run_spec.seed: expected a whole number within ±2^53")
    labels = raw.get("labels", {})
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise ConfigError(f"{at}: run_spec.labels: expected a table of strings")
    points = raw.get("breakpoints", [])
    if not isinstance(points, list) or not all(isinstance(p, str) for p in points):
        raise ConfigError(f"{at}: run_spec.breakpoints: expected a list of step ids")
    return {"dag_json": dag_json, "inputs": inputs, "seed": seed, "labels": labels,
            "breakpoints": points}  # fmt: skip


def _known(table: Mapping[str, Any], keys: Iterable[str], where: str) -> None:
    unknown = sorted(set(table) - set(keys))
    if unknown:
        raise ConfigError(f"{where}{unknown[0]}: unknown key (known: {', '.join(sorted(keys))})")


def _check_json(value: Any, where: str, depth: int = STRUCT_DEPTH) -> None:
    """Refuse what a protobuf Struct cannot carry: TOML dates and times, NaN and infinities,
    nesting deeper than the daemon reads (200 levels were "JSON nested too deeply to read",
    naming neither the file nor the key)."""
    try:
        check_depth(value, where, depth)
    except InvalidArgument as exc:
        raise ConfigError(str(exc)) from None
    problem = toml_not_json(value, where)
    if problem is not None:
        raise ConfigError(problem)


def _kind(value: Any) -> str:
    return {dict: "a table", list: "a list", str: "a string", type(None): "null",
            bool: "a boolean", int: "a number", float: "a number"}.get(
        type(value), type(value).__name__
    )  # fmt: skip


# --- results and statistics ---------------------------------------------------------------------


def metrics_of(result: api.EvalResult) -> dict[str, Any]:
    """A result's metrics as ``summarize`` wants them; the outcome is the result's own."""
    metrics = result.metrics.to_dict() if result.metrics is not None else {}
    metrics = dict(metrics) if isinstance(metrics, dict) else {}
    metrics["outcome"] = result.outcome
    metrics.setdefault("score", 0.0)
    if not isinstance(metrics["score"], int | float) or isinstance(metrics["score"], bool):
        metrics["score"] = 0.0
    return metrics


def results_at(history: Iterable[api.EvalResult], commit: str) -> list[api.EvalResult]:
    """The results recorded at ``commit``, one per run (the latest), oldest first."""
    latest: dict[str, api.EvalResult] = {}
    for result in sorted(
        (r for r in history if r.commit == commit), key=lambda r: _when(r.executed_at)
    ):
        latest[result.run_id or result.result_id] = result
    return sorted(latest.values(), key=lambda r: _when(r.executed_at))


def latest(history: Sequence[api.EvalResult]) -> api.EvalResult | None:
    return max(history, key=lambda r: _when(r.executed_at)) if history else None


def _when(moment: Any) -> float:
    return moment.timestamp() if moment is not None else float("-inf")


def stats_of(results: Sequence[api.EvalResult]) -> ScenarioStats | None:
    return summarize([metrics_of(r) for r in results]) if results else None


@dataclass(frozen=True)
class ScenarioReport:
    """One row of ``eval run``: the current statistics, and the baseline's when asked for."""

    slug: str
    current: ScenarioStats
    baseline: ScenarioStats | None = None
    verdict: Regression | None = None

    @property
    def failed(self) -> bool:
        return self.current.pass_rate < 1.0

    @property
    def regressed(self) -> bool:
        return self.verdict is not None and self.verdict.is_regression

    @property
    def status(self) -> str:
        if self.regressed:
            return "REGRESSED" if not self.failed else "FAILED, REGRESSED"
        return "FAILED" if self.failed else "ok"

    def as_dict(self) -> dict[str, Any]:
        return {
            "slug": self.slug,
            "status": self.status,
            "failed": self.failed,
            "regressed": self.regressed,
            "stats": self.current.as_dict(),
            "baseline": self.baseline.as_dict() if self.baseline else None,
            "regression": self.verdict.as_dict() if self.verdict else None,
        }


def report(
    slug: str, current: ScenarioStats, baseline: ScenarioStats | None = None
) -> ScenarioReport:
    verdict = regression(current, baseline) if baseline is not None else None
    return ScenarioReport(slug, current, baseline, verdict)


HEADER = ("scenario", "pass", "score (mean ± sd)", "latency", "tokens", "cost", "status")


def format_table(
    reports: Sequence[ScenarioReport], *, baseline_commit: str | None = None
) -> list[str]:
    """The ``eval run`` table: one row per scenario; with a baseline, a row under it with the
    baseline's statistics and the deltas, and a line per regression reason."""
    rows: list[tuple[str, ...]] = [HEADER]
    notes: dict[int, list[str]] = {}
    for r in reports:
        rows.append((r.slug, *_cells(r.current), r.status))
        if baseline_commit is None:
            continue
        label = f"  vs {baseline_commit[:12]}"
        if r.baseline is None or r.verdict is None:
            rows.append((label, "(no results recorded at the baseline)", "", "", "", "", ""))
            continue
        d = r.verdict.deltas
        rows.append((label, *_cells(r.baseline), f"Δpass {d['pass_rate']:+.2f}"))
        notes[len(rows) - 1] = [
            f"    Δscore {d['score_mean']:+.3f} (allowed drop {d['score_threshold']:.3f})"
            f"{_delta_tail(d)}",
            *(f"    regression: {reason}" for reason in r.verdict.reasons),
        ]
    widths = [max(len(row[i]) for row in rows if not _spans(row)) for i in range(len(HEADER))]
    lines = []
    for i, row in enumerate(rows):
        if _spans(row):
            lines.append(f"{row[0]:<{widths[0]}}  {row[1]}")
        else:
            cells = [
                cell.ljust(widths[c]) if c in (0, 6) else cell.rjust(widths[c])
                for c, cell in enumerate(row)
            ]
            lines.append("  ".join(cells).rstrip())
        lines.extend(notes.get(i, []))
    return lines


def _spans(row: tuple[str, ...]) -> bool:
    return row[1].startswith("(no results")


def _cells(stats: ScenarioStats) -> tuple[str, str, str, str, str]:
    latency = "-" if stats.latency_ms_mean is None else f"{_ms(stats.latency_ms_mean)} ms"
    return (
        f"{stats.passed}/{stats.runs} {stats.pass_rate:>4.0%}",
        f"{stats.score_mean:.3f} ± {stats.score_stddev:.3f}",
        latency,
        _number(stats.tokens_mean),
        f"{stats.cost_mean:.6f}",
    )


def _ms(value: float, sign: str = "") -> str:
    return f"{value:{sign}.1f}" if abs(value) < 100 else f"{value:{sign}.0f}"


def _number(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"


def _delta_tail(deltas: Mapping[str, Any]) -> str:
    parts = []
    if deltas.get("latency_ms_mean") is not None:
        parts.append(f"Δlatency {_ms(deltas['latency_ms_mean'], '+')} ms")
    parts.append(f"Δtokens {deltas['tokens_mean']:+.1f}")
    parts.append(f"Δcost {deltas['cost_mean']:+.6f}")
    return ", " + ", ".join(parts)


# --- commands -----------------------------------------------------------------------------------


def _dump(message: betterproto2.Message) -> Any:
    return message_dict(message)  # 64-bit integers as JSON numbers


async def cmd_sync(args: argparse.Namespace, stubs: Any) -> int:
    _, runtime = stubs
    pack: Pack = args.pack_def
    ids = await _synced(runtime, pack, args.pack_file)
    if args.json:
        slugs = [s.slug for s in pack.scenarios]
        print(json.dumps({"pack": pack.name, "scenario_ids": ids,
                          "scenarios": dict(zip(slugs, ids, strict=False))}))  # fmt: skip
        return 0
    for i, scenario_id in enumerate(ids):
        slug = pack.scenarios[i].slug if i < len(pack.scenarios) else ""
        print(f"{scenario_id}  {pack.name}/{slug}".rstrip("/ "))
    return 0


async def _synced(runtime: Any, pack: Pack, source: str) -> list[str]:
    """The pack synced: its scenario ids. What the daemon finds wrong in it (an ``expected``
    with an assertion type none of its plugins has, a step type it lacks) is a bad file: exit
    2, as the checks made here before sending it."""
    try:
        reply = await runtime.sync_eval_pack(pack.request())
    except GRPCError as exc:
        if exc.status is not Status.INVALID_ARGUMENT:
            raise
        raise ConfigError(f"{source}: {exc.message}") from None
    return list(reply.scenario_ids)


async def list_scenarios(runtime: Any, pack: str = "") -> list[api.EvalScenario]:
    reply = await runtime.list_eval_scenarios(api.ListEvalScenariosRequest())
    return [s for s in reply.scenarios if not pack or s.pack == pack]


async def cmd_list(args: argparse.Namespace, stubs: Any) -> int:
    _, runtime = stubs
    scenarios = sorted(await list_scenarios(runtime, args.pack), key=lambda s: (s.pack, s.slug))
    if args.json:
        rows = []
        for s in scenarios:
            last = latest(s.history)
            rows.append({**{k: v for k, v in _dump(s).items() if k != "history"},
                         "results": len(s.history),
                         "latest": _dump(last) if last else None})  # fmt: skip
        print(json.dumps(rows, indent=2))
        return 0
    if not scenarios:
        print(f"no scenarios in pack {args.pack}" if args.pack else "no eval scenarios")
    for s in scenarios:
        title = f"  {s.title}" if s.title else ""
        print(f"{s.pack}/{s.slug}  {s.scenario_id}{title}")
        last = latest(s.history)
        if last is None:
            print("    no results yet")
            continue
        m = metrics_of(last)
        when = stamp(last.executed_at)
        print(f"    latest {last.outcome:<7} score {float(m['score']):.2f}  commit {last.commit}  "
              f"run {last.run_id}  {when}  ({len(s.history)} results)")  # fmt: skip
    return 0


async def cmd_record(args: argparse.Namespace, stubs: Any) -> int:
    _, runtime = stubs
    reply = await runtime.record_eval_result(
        api.RecordEvalResultRequest(
            pack=args.pack, slug=args.slug, run_id=args.run_id, commit=args.commit
        )
    )
    result = reply.result
    if result is None:
        raise FoundryError("the daemon answered without a result")
    code = reported(0 if result.outcome == "passed" else 1)
    if args.json:
        print(json.dumps(_dump(result), indent=2))
    else:
        for line in describe_result(result, f"{args.pack}/{args.slug}"):
            print(line)
    return code


def describe_result(result: api.EvalResult, name: str) -> list[str]:
    """A recorded result: the outcome, then each assertion, recorded against expected."""
    m = metrics_of(result)
    lines = [f"{result.outcome}  {name}  run {result.run_id}  commit {result.commit}  "
             f"score {float(m['score']):.2f}  result {result.result_id}"]  # fmt: skip
    for a in m.get("assertions") or []:
        if not isinstance(a, dict):
            continue
        mark = "ERROR" if a.get("error") else ("ok" if a.get("passed") else "FAIL")
        key = f"steps.{a['step_id']}.{a.get('name')}" if a.get("step_id") else str(a.get("name"))
        lines.append(f"  {mark:<5} {key}: recorded {_short(a.get('recorded'))}, "
                     f"expected {_short(a.get('expected'))}")  # fmt: skip
        if a.get("message") and not a.get("passed"):
            lines.append(f"        {a['message']}")
    lines.extend(f"  error: {e}" for e in m.get("errors") or [])
    for kind in ("assertions", "errors"):
        total, shown = m.get(f"{kind}_total"), len(m.get(kind) or [])
        if isinstance(total, int) and total > shown:
            lines.append(f"  ({total - shown} more {kind}, counted but not recorded)")
    return lines


def _short(value: Any, limit: int = 60) -> str:
    """Compact JSON, whole numbers whole at any depth (a Struct's numbers are doubles)."""
    return short_json(value, limit, sort_keys=True)


def idempotency_key(pack: str, slug: str, commit: str, i: int, run_spec: Mapping[str, Any]) -> str:
    """The key of a scenario's ``i``-th run at ``commit``; it names the spec too (the first 12
    hex digits of the SHA-256 of its sorted compact JSON): a scenario edited at the same
    commit gets new runs, where the daemon would refuse its key for another spec."""
    text = json.dumps(
        run_spec, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    )
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    key = f"eval:{pack}:{slug}:{commit}:{i}:{digest}"
    if len(key) <= MAX_KEY_LENGTH:
        return key
    return "eval:" + hashlib.sha256(key.encode()).hexdigest()


@dataclass
class _Run:
    slug: str
    index: int
    run_id: str
    status: api.RunStatus = api.RunStatus.UNSPECIFIED


async def cmd_run(args: argparse.Namespace, stubs: Any) -> int:
    _, runtime = stubs
    pack: Pack = args.pack_def
    await _synced(runtime, pack, args.pack_file)
    runs: list[_Run] = []
    for scenario in pack.scenarios:
        for i in range(args.repeat):
            key = idempotency_key(pack.name, scenario.slug, args.commit, i, scenario.run_spec)
            request = api.SubmitRunRequest(spec=scenario.spec(), idempotency_key=key)
            try:
                reply = await runtime.submit_run(request)
            except GRPCError as exc:
                raise FoundryError(
                    f"scenario {scenario.slug}: SubmitRun: {exc.status.name}: {exc.message}"
                ) from None
            runs.append(_Run(scenario.slug, i, reply.run_id))
    await _wait(runtime, runs, pack.name, args.timeout)
    results: dict[str, list[api.EvalResult]] = {s.slug: [] for s in pack.scenarios}
    for run in runs:
        try:
            reply = await runtime.record_eval_result(
                api.RecordEvalResultRequest(
                    pack=pack.name, slug=run.slug, run_id=run.run_id, commit=args.commit
                )
            )
        except GRPCError as exc:
            raise FoundryError(
                f"scenario {run.slug}: RecordEvalResult for {run.run_id}: "
                f"{exc.status.name}: {exc.message}"
            ) from None
        if reply.result is not None:
            results[run.slug].append(reply.result)
    history: dict[str, list[api.EvalResult]] = {}
    if args.baseline:
        history = {s.slug: list(s.history) for s in await list_scenarios(runtime, pack.name)}
    reports = []
    for slug, recorded in results.items():
        current = stats_of(recorded)
        if current is None:
            raise FoundryError(f"scenario {slug}: the daemon recorded no results")
        base = stats_of(results_at(history.get(slug, []), args.baseline)) if args.baseline else None
        reports.append(report(slug, current, base))
    ok = not any(r.failed or r.regressed for r in reports)
    code = reported(0 if ok else 1)
    if args.json:
        print(json.dumps({
            "pack": pack.name, "commit": args.commit, "repeat": args.repeat,
            "baseline": args.baseline, "ok": ok,
            "scenarios": [{**r.as_dict(), "results": [
                {"run_id": x.run_id, "result_id": x.result_id, "outcome": x.outcome,
                 "score": metrics_of(x)["score"]} for x in results[r.slug]]}
                for r in reports],
            "runs": [{"slug": r.slug, "index": r.index, "run_id": r.run_id,
                      "status": r.status.name} for r in runs],
        }, indent=2))  # fmt: skip
    else:
        print(f"eval pack {pack.name} at {args.commit}: {len(pack.scenarios)} scenarios × "
              f"{args.repeat} run{'s' if args.repeat != 1 else ''}")  # fmt: skip
        for line in format_table(reports, baseline_commit=args.baseline):
            print(line)
        failed = [r.slug for r in reports if r.failed]
        regressed = [r.slug for r in reports if r.regressed]
        verdict = "ok" if ok else "FAILED"
        detail = "; ".join(
            part
            for part in (
                f"failing: {', '.join(failed)}" if failed else "",
                f"regressed: {', '.join(regressed)}" if regressed else "",
            )
            if part
        )
        print(f"{verdict}{': ' + detail if detail else ''}")
    return code


async def _wait(runtime: Any, runs: list[_Run], pack: str, seconds: float) -> None:
    """Poll GetRun until every run has ended, with one progress line on stderr."""
    started = time.monotonic()
    tty = sys.stderr.isatty()
    shown = ""
    interval = 0.05
    while True:
        pending = [r for r in runs if r.status not in TERMINAL]
        replies = await asyncio.gather(
            *(runtime.get_run(api.GetRunRequest(run_id=r.run_id)) for r in pending)
        )
        for run, reply in zip(pending, replies, strict=True):
            if reply.run is not None:
                run.status = reply.run.status
        done = sum(r.status in TERMINAL for r in runs)
        elapsed = time.monotonic() - started
        line = f"eval {pack}: {done}/{len(runs)} runs finished ({elapsed:.1f}s)"
        if done == len(runs):
            if tty:
                write_control(sys.stderr, "\r")
            print(line + " " * max(0, len(shown) - len(line)), file=sys.stderr, flush=True)
            return
        if tty and line != shown:
            write_control(sys.stderr, "\r")
            print(line, end="", file=sys.stderr, flush=True)
            shown = line
        if elapsed > seconds:
            if tty:
                print(file=sys.stderr)
            waiting = [r for r in runs if r.status not in TERMINAL]
            paused = [r for r in waiting if r.status == api.RunStatus.PAUSED_AT_STEP]
            names = ", ".join(f"{r.run_id} ({r.slug})" for r in waiting[:5])
            more = f" and {len(waiting) - 5} more" if len(waiting) > 5 else ""
            hint = f"; {len(paused)} paused at a breakpoint" if paused else ""
            raise FoundryError(
                f"timed out after {seconds:g}s waiting for {len(waiting)} of {len(runs)} runs: "
                f"{names}{more}{hint}"
            )
        await asyncio.sleep(interval)
        interval = min(interval * 2, 0.5)
