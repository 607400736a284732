"""Eval packs and change gates end to end: the six governance RPCs on a real daemon, over a real
socket (grpclib client; one call through the independent grpcio client)."""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import duckdb
import grpc
import pytest
from foundry.proto import runtime_api as api
from foundry.proto.generated.google.protobuf import Struct
from grpclib import GRPCError
from grpclib.const import Status

from tests.runs.helpers import assert_error, dag, rpc_error, submit, wait_done, wait_status

OK_DAG = dag({"id": "answer", "type": "transform", "inputs": {"value": {"text": "otters swim"}}})


@pytest.fixture(scope="module")
def daemon(shared_daemon):
    return shared_daemon('[gate]\nmin_coverage = 0.8\nadvisory = ["budgets"]\n')


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def scenario(
    slug: str,
    *,
    title: str = "",
    run_spec: dict[str, Any] | None = None,
    expected: dict[str, Any] | None = None,
) -> api.EvalScenarioDefinition:
    return api.EvalScenarioDefinition(
        slug=slug,
        title=title or slug.title(),
        description=f"about {slug}",
        run_spec=Struct.from_dict(run_spec if run_spec is not None else {"dag_json": OK_DAG}),
        expected=Struct.from_dict(expected or {"status": "succeeded"}),
    )


def sync(daemon, pack: str, *scenarios: api.EvalScenarioDefinition) -> list[str]:
    request = api.SyncEvalPackRequest(pack=pack, scenarios=list(scenarios))
    return list(daemon.call(lambda _, rt: rt.sync_eval_pack(request)).scenario_ids)


def listed(daemon, pack: str) -> dict[str, api.EvalScenario]:
    reply = daemon.call(lambda _, rt: rt.list_eval_scenarios(api.ListEvalScenariosRequest()))
    return {s.slug: s for s in reply.scenarios if s.pack == pack}


def record(daemon, pack: str, slug: str, run_id: str, commit: str = "abc123") -> api.EvalResult:
    request = api.RecordEvalResultRequest(pack=pack, slug=slug, run_id=run_id, commit=commit)
    result = daemon.call(lambda _, rt: rt.record_eval_result(request)).result
    assert result is not None
    return result


def check(daemon, **fields: Any) -> api.ChangeGateDecision:
    request = api.CheckChangeGateRequest(**fields)
    decision = daemon.call(lambda _, rt: rt.check_change_gate(request)).decision
    assert decision is not None
    return decision


def gates(daemon, change_id: str, limit: int = 0) -> list[api.ChangeGateDecision]:
    request = api.ListChangeGatesRequest(change_id=change_id, limit=limit)
    return list(daemon.call(lambda _, rt: rt.list_change_gates(request)).decisions)


GOOD_EVIDENCE: dict[str, Any] = {
    "coverage": api.CoverageReport(overall_ratio=0.9),
    "evals": [api.EvalMetric(name="accuracy", slug="answers", score=0.95, threshold=0.7)],
}


# --- SyncEvalPack / ListEvalScenarios -------------------------------------------------------------


def test_sync_eval_pack_is_idempotent_keeps_ids_in_request_order_and_updates(daemon):
    pack = unique("pack")
    first = sync(daemon, pack, scenario("alpha"), scenario("beta"))
    assert len(first) == 2
    assert len(set(first)) == 2
    again = sync(daemon, pack, scenario("beta", title="Beta, renamed"), scenario("alpha"))
    assert again == [first[1], first[0]]
    extended = sync(daemon, pack, scenario("gamma"), scenario("alpha"))
    assert extended[1] == first[0]
    assert extended[0] not in first

    scenarios = listed(daemon, pack)
    assert sorted(scenarios) == ["alpha", "beta", "gamma"]  # a sync adds and updates, never drops
    assert scenarios["beta"].title == "Beta, renamed"
    assert scenarios["beta"].scenario_id == first[1]
    assert scenarios["alpha"].description == "about alpha"
    assert scenarios["alpha"].created_at is not None
    assert scenarios["alpha"].history == []


def test_sync_eval_pack_refuses_a_duplicate_slug_and_stores_nothing(daemon):
    pack = unique("pack")
    error = rpc_error(
        daemon,
        lambda rt: rt.sync_eval_pack(
            api.SyncEvalPackRequest(pack=pack, scenarios=[scenario("same"), scenario("same")])
        ),
    )
    assert_error(error, Status.INVALID_ARGUMENT, "'same'", "slug", "duplicate")
    assert listed(daemon, pack) == {}


@pytest.mark.parametrize(
    ("run_spec", "needles"),
    [
        ({"dag_json": dag({"id": "x", "type": "no-such-type"})}, ["run_spec.dag_json", "type"]),
        ({"dag_json": "{not json"}, ["run_spec.dag_json"]),
        ({"inputs": {}}, ["run_spec.dag_json", "required"]),
        ({"dag_json": OK_DAG, "seed": 1.5}, ["run_spec.seed"]),
        ({"dag_json": OK_DAG, "breakpoints": ["nope"]}, ["run_spec.breakpoints", "'nope'"]),
        ({"dag_json": OK_DAG, "colour": "red"}, ["run_spec.colour", "unknown field"]),
        ({"dag_json": "{not json", "dagJson": OK_DAG}, ["run_spec.dag_json", "given twice"]),
        (
            {"dag_json": dag({"id": "e", "type": "envecho", "env": {"PATH": "/tmp"}})},
            ["run_spec.dag_json", "'e'", "PATH"],
        ),
        (
            {"dag_json": dag({"id": "ask", "type": "llm", "model": "nosuch:m"})},
            ["run_spec.dag_json", "'ask'", "model: unknown provider 'nosuch'"],
        ),
    ],
)
def test_sync_eval_pack_refuses_a_bad_run_spec_naming_scenario_and_field(daemon, run_spec, needles):
    pack = unique("pack")
    request = api.SyncEvalPackRequest(
        pack=pack, scenarios=[scenario("fine"), scenario("broken", run_spec=run_spec)]
    )
    error = rpc_error(daemon, lambda rt: rt.sync_eval_pack(request))
    assert_error(error, Status.INVALID_ARGUMENT, "scenario 'broken'", *needles)
    assert listed(daemon, pack) == {}  # all or nothing: "fine" is not stored either


def test_sync_eval_pack_refuses_an_empty_pack_name_or_slug(daemon):
    no_pack = rpc_error(
        daemon,
        lambda rt: rt.sync_eval_pack(api.SyncEvalPackRequest(pack="", scenarios=[scenario("a")])),
    )
    assert_error(no_pack, Status.INVALID_ARGUMENT, "pack")
    no_slug = rpc_error(
        daemon,
        lambda rt: rt.sync_eval_pack(
            api.SyncEvalPackRequest(pack=unique("pack"), scenarios=[scenario("")])
        ),
    )
    assert_error(no_slug, Status.INVALID_ARGUMENT, "scenarios[0].slug")


# --- RecordEvalResult ---------------------------------------------------------------------------


def test_record_eval_result_judges_a_finished_run_and_lists_history_newest_first(daemon):
    pack = unique("pack")
    sync(
        daemon,
        pack,
        scenario(
            "good", expected={"status": "succeeded", "steps": {"answer": {"contains": "otters"}}}
        ),
        scenario("bad", expected={"steps": {"answer": {"contains": "badgers"}}}),
    )
    run_id = submit(daemon, OK_DAG)
    wait_done(daemon, run_id)

    passed = record(daemon, pack, "good", run_id, commit="c1")
    failed = record(daemon, pack, "bad", run_id, commit="c1")
    later = record(daemon, pack, "good", run_id, commit="c2")

    assert passed.outcome == "passed"
    assert passed.run_id == run_id
    assert passed.commit == "c1"
    assert passed.result_id.startswith("evr_")
    assert passed.executed_at is not None
    metrics = passed.metrics.to_dict()
    assert metrics["score"] == 1.0
    assert metrics["steps"] == 1
    assert {a["name"] for a in metrics["assertions"]} == {"status", "contains"}
    assert failed.outcome == "failed"
    assert "badgers" in failed.metrics.to_dict()["assertions"][0]["message"]

    scenarios = listed(daemon, pack)
    assert passed.scenario_id == scenarios["good"].scenario_id
    assert [r.result_id for r in scenarios["good"].history] == [later.result_id, passed.result_id]
    assert [r.commit for r in scenarios["good"].history] == ["c2", "c1"]
    assert [r.outcome for r in scenarios["bad"].history] == ["failed"]


def test_a_backtracking_regex_is_judged_at_once_and_the_daemon_serves_on(daemon):
    """``^(a+)+$`` against 40 a's and a "!": Python's engine never finished, holding the daemon's
    loop (every RPC stalled; SIGTERM went unheard). RE2 judges it in linear time."""
    pack = unique("redos")
    sync(daemon, pack, scenario("s", expected={"steps": {"answer": {"regex": "^(a+)+$"}}}))
    run_id = submit(daemon, dag({"id": "answer", "type": "transform",
                                 "inputs": {"value": "a" * 40 + "!"}}))  # fmt: skip
    wait_done(daemon, run_id)
    started = time.monotonic()
    assert record(daemon, pack, "s", run_id).outcome == "failed"
    assert time.monotonic() - started < 5
    # a pattern RE2 refuses (a backreference) is refused at the sync, with RE2's reason
    bad = scenario("bad", expected={"steps": {"answer": {"regex": "(a)\\1"}}})
    request = api.SyncEvalPackRequest(pack=pack, scenarios=[bad])
    refused = rpc_error(daemon, lambda rt: rt.sync_eval_pack(request))
    assert_error(refused, Status.INVALID_ARGUMENT, "scenario 'bad': expected: steps.answer.regex",
                 "RE2 syntax")  # fmt: skip
    assert "re2.cc" not in daemon.stderr()  # the reason is in the reply, not the log


def test_record_eval_result_unknown_scenario_or_run_is_not_found(daemon):
    pack = unique("pack")
    sync(daemon, pack, scenario("known"))
    run_id = submit(daemon, OK_DAG)
    wait_done(daemon, run_id)

    for slug, run, needle in (
        ("unknown", run_id, "'unknown'"),
        ("known", "run_nope", "run_nope"),
    ):
        error = rpc_error(
            daemon,
            lambda rt, slug=slug, run=run: rt.record_eval_result(
                api.RecordEvalResultRequest(pack=pack, slug=slug, run_id=run)
            ),
        )
        assert_error(error, Status.NOT_FOUND, needle)
    other_pack = rpc_error(
        daemon,
        lambda rt: rt.record_eval_result(
            api.RecordEvalResultRequest(pack=unique("pack"), slug="known", run_id=run_id)
        ),
    )
    assert_error(other_pack, Status.NOT_FOUND, "'known'")


def test_record_eval_result_of_an_unfinished_run_is_a_failed_precondition(daemon):
    pack = unique("pack")
    sync(daemon, pack, scenario("paused"))
    run_id = submit(daemon, OK_DAG, breakpoints=["answer"])
    wait_status(daemon, run_id, api.RunStatus.PAUSED_AT_STEP)

    error = rpc_error(
        daemon,
        lambda rt: rt.record_eval_result(
            api.RecordEvalResultRequest(pack=pack, slug="paused", run_id=run_id)
        ),
    )
    assert_error(error, Status.FAILED_PRECONDITION, run_id, "finished")
    assert listed(daemon, pack)["paused"].history == []


# --- CheckChangeGate ----------------------------------------------------------------------------


def test_check_change_gate_allows_a_change_with_good_evidence(daemon):
    change = unique("change")
    decision = check(
        daemon,
        change_id=change,
        revision="r1",
        diffs=[api.ChangeDiff(path="src/app.py", lines_added=3, novelty_score=0.2)],
        telemetry=Struct.from_dict({"tokens": 1000}),
        metadata=Struct.from_dict({"pr": 42}),
        actor="ci",
        **GOOD_EVIDENCE,
    )
    assert decision.effect == api.ChangeDecisionEffect.ALLOW
    assert decision.reasons == []
    assert decision.followups == []
    assert decision.gate_id.startswith("gate_")
    assert decision.decided_at is not None
    assert decision.change_id == change
    assert decision.revision == "r1"
    assert decision.metadata.to_dict() == {"pr": 42}
    assert decision.telemetry.to_dict() == {"tokens": 1000}
    card = decision.scorecard
    assert card.novelty.max_novelty == pytest.approx(0.2)
    assert card.coverage.overall_ratio == pytest.approx(0.9)
    assert card.evals.score_per_token == pytest.approx(0.95 / 1000)
    assert card.budgets.breaches == []


def test_check_change_gate_asks_for_follow_ups_when_evidence_is_missing_or_risky(daemon):
    decision = check(
        daemon,
        change_id=unique("change"),
        diffs=[api.ChangeDiff(path="src/auth/login.py", novelty_score=0.8)],
    )
    assert decision.effect == api.ChangeDecisionEffect.FOLLOW_UP
    assert "novelty 0.80 of src/auth/login.py is above the follow-up threshold 0.70" in (
        decision.reasons
    )
    assert any(
        "src/auth/login.py is high risk (path matches **/auth/**" in r for r in decision.reasons
    )
    assert "no coverage report: evidence missing (policy: follow_up)" in decision.reasons
    slugs = {f.slug for f in decision.followups if f.recommended}
    assert {"review-novelty", "review-high-risk", "provide-coverage", "provide-evals"} <= slugs
    assert decision.scorecard.novelty.high_risk_paths == ["src/auth/login.py"]
    assert decision.scorecard.coverage.overall_ratio is None


def test_check_change_gate_denies_with_values_and_thresholds_in_the_reasons(daemon):
    decision = check(
        daemon,
        change_id=unique("change"),
        coverage=api.CoverageReport(
            overall_ratio=0.71,
            components=[
                api.CoverageComponent(name="payments", coverage_ratio=0.55, required_ratio=0.8)
            ],
        ),
        evals=[
            api.EvalMetric(name="accuracy", slug="answers", score=0.62, threshold=0.7),
            api.EvalMetric(
                name="latency", score=0.98, threshold=1.0,
                direction=api.MetricDirection.LOWER_IS_BETTER,
            ),
        ],
        budgets=[api.BudgetSignal(name="cost", actual=12.5, limit=10.0)],
    )  # fmt: skip
    assert decision.effect == api.ChangeDecisionEffect.DENY
    for reason in (
        "coverage 0.71 is below the minimum 0.80",
        "coverage 0.55 of component payments is below its required 0.80",
        "metric accuracy (answers) scored 0.62, below its threshold 0.70 (higher is better)",
        "metric latency scored 0.98, within 0.05 of its threshold 1.00 (lower is better)",
        "advisory: budget cost 12.50 is over its limit 10.00",  # [gate] advisory = ["budgets"]
    ):
        assert reason in decision.reasons
    assert decision.scorecard.coverage.components_below_threshold == ["payments"]
    assert decision.scorecard.evals.failing_metrics == ["accuracy (answers)"]
    assert decision.scorecard.evals.attention_metrics == ["latency"]
    assert decision.scorecard.budgets.breaches == ["cost"]
    spend = next(f for f in decision.followups if f.slug == "reduce-spend")
    assert not spend.recommended  # advisory


def test_check_change_gate_requires_a_change_id(daemon):
    error = rpc_error(daemon, lambda rt: rt.check_change_gate(api.CheckChangeGateRequest()))
    assert_error(error, Status.INVALID_ARGUMENT, "change_id")


# --- RecordGateFollowup / ListChangeGates --------------------------------------------------------


def test_record_gate_followup_and_list_change_gates_newest_first_with_acknowledgements(daemon):
    change = unique("change")
    first = check(daemon, change_id=change, revision="r1")
    second = check(daemon, change_id=change, revision="r2", **GOOD_EVIDENCE)
    check(daemon, change_id=unique("other"))

    ack = daemon.call(
        lambda _, rt: rt.record_gate_followup(
            api.RecordGateFollowupRequest(
                gate_id=first.gate_id, actor="alice", outcome=api.FollowupOutcome.NEEDS_CHANGES,
                note="add coverage", details=Struct.from_dict({"ticket": "QA-1"}),
            )
        )
    ).followup  # fmt: skip
    assert ack.followup_id.startswith("fup_")
    assert ack.gate_id == first.gate_id
    assert ack.outcome == api.FollowupOutcome.NEEDS_CHANGES
    assert ack.note == "add coverage"
    assert ack.details.to_dict() == {"ticket": "QA-1"}
    daemon.call(
        lambda _, rt: rt.record_gate_followup(
            api.RecordGateFollowupRequest(
                gate_id=first.gate_id, actor="bob", outcome=api.FollowupOutcome.APPROVED
            )
        )
    )

    listed_gates = gates(daemon, change)
    assert [g.gate_id for g in listed_gates] == [second.gate_id, first.gate_id]
    assert [g.revision for g in listed_gates] == ["r2", "r1"]
    acks = listed_gates[1].acknowledgements
    assert [(a.actor, a.outcome) for a in acks] == [
        ("alice", api.FollowupOutcome.NEEDS_CHANGES),
        ("bob", api.FollowupOutcome.APPROVED),
    ]
    assert acks[1].note is None
    assert listed_gates[1].reasons == first.reasons
    assert listed_gates[0].effect == api.ChangeDecisionEffect.ALLOW
    assert listed_gates[0].acknowledgements == []
    assert gates(daemon, change, limit=1)[0].gate_id == second.gate_id
    everything = gates(daemon, "", limit=1000)
    assert {first.gate_id, second.gate_id} <= {g.gate_id for g in everything}
    assert len({g.change_id for g in everything}) >= 2


def test_record_gate_followup_unknown_gate_or_unspecified_outcome_is_refused(daemon):
    gate = check(daemon, change_id=unique("change"))
    unknown = rpc_error(
        daemon,
        lambda rt: rt.record_gate_followup(
            api.RecordGateFollowupRequest(gate_id="gate_nope", outcome=api.FollowupOutcome.APPROVED)
        ),
    )
    assert_error(unknown, Status.NOT_FOUND, "gate_nope")
    unspecified = rpc_error(
        daemon,
        lambda rt: rt.record_gate_followup(api.RecordGateFollowupRequest(gate_id=gate.gate_id)),
    )
    assert_error(unspecified, Status.INVALID_ARGUMENT, "outcome")
    assert gates(daemon, gate.change_id)[0].acknowledgements == []


def test_list_change_gates_holds_as_many_decisions_as_fit_in_four_mib(daemon):
    """1,000 decisions of 2.5 MB each (a hunt) made one 2.5 GB reply, built whole in memory."""
    change = unique("change")
    made = [
        check(daemon, change_id=change, metadata=Struct.from_dict({"blob": "x" * 1_500_000}))
        for _ in range(3)
    ]
    listed = gates(daemon, change, limit=3)
    assert [g.gate_id for g in listed] == [made[2].gate_id, made[1].gate_id]  # 3.0 of 4 MiB
    [newest] = gates(daemon, change, limit=1)
    assert len(newest.metadata.to_dict()["blob"]) == 1_500_000


def test_a_decision_keeps_at_most_a_mebibyte_of_follow_ups(daemon):
    """Each follow-up comes back with its decision in every ListChangeGates that lists it: a
    decision with follow-ups of 4 MB each, without end, made every such reply as large."""
    gate = check(daemon, change_id=unique("change"))

    def followup(text: str) -> api.RecordGateFollowupRequest:
        return api.RecordGateFollowupRequest(gate_id=gate.gate_id, note="n",
                                             outcome=api.FollowupOutcome.DEFERRED,
                                             details=Struct.from_dict({"text": text}))  # fmt: skip

    for _ in range(3):
        daemon.call(lambda _, rt: rt.record_gate_followup(followup("x" * 300_000)))
    refused = rpc_error(daemon, lambda rt: rt.record_gate_followup(followup("x" * 300_000)))
    assert_error(refused, Status.RESOURCE_EXHAUSTED, "bytes of follow-ups")
    assert "1,048,576 a decision keeps" in refused.message
    daemon.call(lambda _, rt: rt.record_gate_followup(followup("small")))  # what fits is taken
    assert len(gates(daemon, gate.change_id)[0].acknowledgements) == 4


def test_follow_ups_sent_at_once_are_held_to_the_bound_together(make_daemon):
    """Each follow-up read and measured every earlier one of its gate (quadratic: 70 ms a call
    at 2,000) and checked the bound before any of those sent at once was written: they all
    passed it. A gate's follow-ups are taken one at a time now, its bytes kept known."""
    daemon = make_daemon()
    gate = check(daemon, change_id=unique("change"))
    details = Struct.from_dict({"t": "x" * 200_000})
    request = api.RecordGateFollowupRequest(
        gate_id=gate.gate_id, outcome=api.FollowupOutcome.DEFERRED, details=details
    )

    def send(_: int) -> str:
        try:
            daemon.call(lambda _, rt: rt.record_gate_followup(request))
            return "taken"
        except GRPCError as exc:
            return "refused" if exc.status == Status.RESOURCE_EXHAUSTED else str(exc)

    with ThreadPoolExecutor(8) as pool:
        said = sorted(pool.map(send, range(8)))
    assert said == ["refused"] * 3 + ["taken"] * 5  # 5 of ~200 KB fit in 1 MiB, not 6
    daemon.restart()  # the bytes held read again from what is stored
    refused = rpc_error(daemon, lambda rt: rt.record_gate_followup(request))
    assert_error(refused, Status.RESOURCE_EXHAUSTED, "bytes of follow-ups")
    assert len(gates(daemon, gate.change_id)[0].acknowledgements) == 5


@pytest.mark.parametrize("text", ["\\" * 300_000, "日" * 200_000], ids=["escapes", "cjk"])
def test_a_follow_up_is_measured_in_utf8_bytes_alike_sent_and_stored(daemon, text):
    """A review: a stored follow-up's frozen details were measured by their repr (a backslash
    counted twice more), and text by its ASCII escapes (``日`` six bytes, not three)."""
    gate = check(daemon, change_id=unique("change"))
    request = api.RecordGateFollowupRequest(gate_id=gate.gate_id,
                                            outcome=api.FollowupOutcome.DEFERRED,
                                            details=Struct.from_dict({"t": text}))  # fmt: skip
    daemon.call(lambda _, rt: rt.record_gate_followup(request))  # 600 KB: taken
    small = api.RecordGateFollowupRequest(gate_id=gate.gate_id,
                                          outcome=api.FollowupOutcome.APPROVED)  # fmt: skip
    daemon.call(lambda _, rt: rt.record_gate_followup(small))  # ~600 KB stored, not 1.2 MB
    refused = rpc_error(daemon, lambda rt: rt.record_gate_followup(request))  # 1.2 MB: not
    assert_error(refused, Status.RESOURCE_EXHAUSTED, "bytes of follow-ups")


def test_list_change_gates_limit_zero_means_fifty(daemon):
    change = unique("change")
    for _ in range(52):
        check(daemon, change_id=change)
    assert len(gates(daemon, change)) == 50
    assert len(gates(daemon, change, limit=60)) == 52
    assert len(gates(daemon, change, limit=3)) == 3


def test_governance_rpcs_over_the_grpcio_client(daemon, grpcio_client):
    pb, stubs = grpcio_client.runtime_pb2, grpcio_client.runtime_pb2_grpc
    change = unique("change")
    with grpc.insecure_channel(daemon.address) as channel:
        stub = stubs.RuntimeServiceStub(channel)
        reply = stub.CheckChangeGate(
            pb.CheckChangeGateRequest(
                change_id=change,
                coverage=pb.CoverageReport(overall_ratio={"value": 0.5}),
                evals=[pb.EvalMetric(name="m", score=1.0)],
            ),
            timeout=10,
        )
        assert reply.decision.effect == pb.CHANGE_DECISION_EFFECT_DENY
        assert "coverage 0.50 is below the minimum 0.80" in reply.decision.reasons
        listed_reply = stub.ListChangeGates(pb.ListChangeGatesRequest(change_id=change), timeout=10)
        assert [d.gate_id for d in listed_reply.decisions] == [reply.decision.gate_id]


def test_governance_tables_hold_the_records(make_daemon):
    d = make_daemon()
    pack = unique("pack")
    sync(d, pack, scenario("one"))
    sync(d, pack, scenario("one", title="Renamed"))
    gate = check(d, change_id="c-1", metadata=Struct.from_dict({"k": [1, 2]}))
    d.stop()
    con = duckdb.connect(str(d.home / "foundry.duckdb"), read_only=True)
    try:
        rows = con.execute("SELECT pack, slug, title, run_spec FROM eval_scenarios").fetchall()
        assert [(r[0], r[1], r[2]) for r in rows] == [(pack, "one", "Renamed")]
        assert json.loads(rows[0][3]) == {"dag_json": OK_DAG}
        decided = con.execute(
            "SELECT gate_id, effect, metadata, scorecard->>'$.coverage' FROM gate_decisions"
        ).fetchall()
        assert decided[0][:2] == (gate.gate_id, "follow_up")
        assert json.loads(decided[0][2]) == {"k": [1, 2]}
    finally:
        con.close()


def test_syncing_a_pack_of_many_dags_holds_up_no_one(daemon):
    """A pack's DAGs are parsed and its records made on worker threads: on the loop, 100
    scenarios of 600 steps each (3.7 MB) held every other client 1.7-3 s (a hunt)."""
    from tests.e2e.helpers import slowest_small_call_during

    wide = json.dumps({"steps": [{"id": f"s{i}", "type": "transform", "inputs": {"value": i}}
                                 for i in range(600)]})  # fmt: skip
    pack = unique("wide")
    scenarios = [scenario(f"w{i}", run_spec={"dag_json": wide}) for i in range(100)]
    ids, slowest = slowest_small_call_during(daemon, lambda: sync(daemon, pack, *scenarios))
    assert len(set(ids)) == 100
    assert len(listed(daemon, pack)) == 100
    assert slowest < 0.7  # (1.7-3 s on the loop; ~0.1 s off it, loaded)
