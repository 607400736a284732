"""Plugins' gate rules and eval assertions on a real daemon: what they are handed cannot change
what is recorded, what they answer is bounded, and one that is slow or never answers holds no
other client (each found by a hunt: a rule's or assertion's code ran on the loop or without a
time limit, and was handed the daemon's own objects)."""

from __future__ import annotations

import contextlib
import signal
import textwrap
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from foundry.proto import runtime_api as api
from foundry.proto.generated.google.protobuf import Struct

from tests.e2e.helpers import slowest_small_call_during
from tests.runs.helpers import dag, get_run, outputs, submit, wait_done

PLUGIN = """
import time

from foundry.kernel import AssertionResult, Followup, RuleResult, hookimpl
from foundry.kernel.core.gate_policy import BudgetSummary


class Meddles:
    name = "meddles"

    def evaluate(self, request, policy):
        asked = request.metadata.get("ask", "")
        if asked == "change-top":
            request.metadata["injected"] = "by the rule"
        elif asked == "change-nested":
            request.metadata["nested"]["injected"] = "by the rule"
        elif asked == "change-telemetry":
            request.telemetry["injected"] = "by the rule"
        elif asked == "sleep":
            time.sleep(request.metadata["seconds"])
        elif asked == "verbose":
            return RuleResult(
                "follow_up",
                tuple(f"reason {i} " + "x" * 50_000 for i in range(5_000)),
                tuple(Followup(f"f{i}" + "y" * 5_000, "z" * 50_000) for i in range(500)),
            )
        elif asked == "huge-part":
            return RuleResult("allow", (), (), {"blob": "b" * 3_000_000})
        elif asked == "huge-summary":
            return RuleResult("allow", (), (), BudgetSummary(breaches=("b" * 10_000,) * 500))
        elif asked == "huge-int":
            return RuleResult("allow", (), (), {"n": 10 ** 5_000})
        return RuleResult("allow")


class Rewrites:
    name = "rewrites"

    def check(self, expected, facts, step_id):
        facts.step(step_id).output["text"] = "REWRITTEN"
        return AssertionResult(self.name, True, None, expected, step_id, "rewrote it")


class Sleeps:
    name = "sleeps"

    def check(self, expected, facts, step_id):
        time.sleep(expected)
        return AssertionResult(self.name, True, None, expected, step_id, "slept")


@hookimpl
def register_gate_rules():
    return [Meddles()]


@hookimpl
def register_eval_assertions():
    return {"rewrites": Rewrites(), "sleeps": Sleeps()}
"""

OK_DAG = dag({"id": "answer", "type": "transform", "inputs": {"value": {"text": "otters swim"}}})
TIMEOUT = 1.5


@pytest.fixture(scope="module")
def daemon(shared_daemon, tmp_path_factory):
    folder = tmp_path_factory.mktemp("governance-plugin")
    (folder / "govern_plugin.py").write_text(textwrap.dedent(PLUGIN))
    return shared_daemon(
        f'[plugins]\npaths = ["{folder}"]\nmodules = ["govern_plugin"]\n'
        f'[gate]\nrule_timeout = {TIMEOUT}\nmissing_coverage = "allow"\n'
        f'missing_evals = "allow"\n[evals]\nassertion_timeout = {TIMEOUT}\n'
    )


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def check(daemon: Any, metadata: dict[str, Any], **fields: Any) -> api.ChangeGateDecision:
    request = api.CheckChangeGateRequest(
        change_id=fields.pop("change_id", unique("change")),
        metadata=Struct.from_dict(metadata),
        **fields,
    )
    decision = daemon.call(lambda _, rt: rt.check_change_gate(request)).decision
    assert decision is not None
    return decision


def listed(daemon: Any, change_id: str) -> api.ChangeGateDecision:
    request = api.ListChangeGatesRequest(change_id=change_id)
    (decision,) = daemon.call(lambda _, rt: rt.list_change_gates(request)).decisions
    return decision


def record(daemon: Any, pack: str, slug: str, run_id: str) -> api.EvalResult:
    request = api.RecordEvalResultRequest(pack=pack, slug=slug, run_id=run_id)
    result = daemon.call(lambda _, rt: rt.record_eval_result(request)).result
    assert result is not None
    return result


def sync(daemon: Any, pack: str, expected: dict[str, dict[str, Any]]) -> None:
    scenarios = [
        api.EvalScenarioDefinition(
            slug=slug,
            title=slug,
            run_spec=Struct.from_dict({"dag_json": OK_DAG}),
            expected=Struct.from_dict(checks),
        )  # fmt: skip
        for slug, checks in expected.items()
    ]
    request = api.SyncEvalPackRequest(pack=pack, scenarios=scenarios)
    daemon.call(lambda _, rt: rt.sync_eval_pack(request))


# --- gate rules ----------------------------------------------------------------------------------


@pytest.mark.parametrize("ask", ["change-top", "change-nested", "change-telemetry"])
def test_a_rule_cannot_change_the_request_the_decision_records(daemon, ask):
    metadata = {"ask": ask, "nested": {"a": 1}, "list": [1, 2]}
    change_id = unique("meddled")
    decision = check(daemon, metadata, change_id=change_id,
                     telemetry=Struct.from_dict({"t": {"n": 1}}))  # fmt: skip
    for shown in (decision, listed(daemon, change_id)):
        assert shown.metadata.to_dict() == metadata
        assert shown.telemetry.to_dict() == {"t": {"n": 1}}
        assert shown.scorecard.telemetry.to_dict() == {"t": {"n": 1}}
    assert decision.effect == api.ChangeDecisionEffect.DENY  # fails closed: it raised
    assert any(r.startswith("rule meddles failed (TypeError") for r in decision.reasons)


def test_a_rule_answer_is_recorded_bounded(daemon):
    decision = check(daemon, {"ask": "verbose"})
    reasons = [r for r in decision.reasons if "evidence missing" not in r]  # built-ins'
    assert len(reasons) == 101
    assert reasons[-1] == "rule meddles: 4,900 more reasons not shown"
    assert all(len(r) < 1_100 for r in reasons)
    assert reasons[0].startswith("reason 0 xxx")
    assert reasons[0].endswith("… (50,009 characters)")
    followups = [f for f in decision.followups if f.slug.startswith("f")]  # the rule's
    assert len(followups) == 100
    assert all(len(f.slug) < 250 and len(f.description) < 1_100 for f in followups)

    for ask, said in [("huge-part", "scorecard holds over 1,000,000 characters"),
                      ("huge-summary", "scorecard holds over 1,000,000 characters"),
                      ("huge-int", "scorecard holds an integer of over 4,200 digits")]:  # fmt: skip
        huge = check(daemon, {"ask": ask})
        assert huge.effect == api.ChangeDecisionEffect.DENY
        assert any(said in r for r in huge.reasons), huge.reasons


def test_decisions_waiting_their_turn_are_not_timed_for_the_wait(daemon):
    """Ten decisions at once, each rule taking 0.4 s: the last waits 3.6 s for its turn, past
    the 1.5 s limit, and is still decided (the wait was counted, and it was denied)."""
    with ThreadPoolExecutor(10) as pool:
        decisions = list(pool.map(lambda _: check(daemon, {"ask": "sleep", "seconds": 0.4}),
                                  range(10)))  # fmt: skip
    assert [d.effect for d in decisions] == [api.ChangeDecisionEffect.ALLOW] * 10


def test_a_rule_that_does_not_answer_in_time_denies_and_holds_no_other_client(daemon):
    slow_id, queued_id = unique("slow"), unique("queued")
    queued: list[api.ChangeGateDecision] = []

    def slow() -> api.ChangeGateDecision:
        started = time.monotonic()
        # a second change decided meanwhile waits behind the rule (one decision at a time)
        later = threading.Timer(0.3, lambda: queued.append(
            check(daemon, {}, change_id=queued_id)))  # fmt: skip
        later.start()
        decision = check(daemon, {"ask": "sleep", "seconds": 6}, change_id=slow_id)
        later.join()
        assert time.monotonic() - started < 5
        return decision

    decision, slowest = slowest_small_call_during(daemon, slow)
    assert slowest < 0.7
    assert decision.effect == api.ChangeDecisionEffect.DENY
    assert list(decision.reasons) == [
        f"rule meddles did not answer within {TIMEOUT:g} s, so the gate denies"
    ]
    assert [f.slug for f in decision.followups] == ["fix-gate-rule"]
    assert listed(daemon, slow_id).gate_id == decision.gate_id  # recorded
    (second,) = queued
    assert second.effect == api.ChangeDecisionEffect.DENY
    assert second.reasons[0] == (
        f"rule meddles has not answered an earlier decision within {TIMEOUT:g} s and still "
        "runs (a gate decides one change at a time), so the gate denies"
    )
    time.sleep(4.5)  # the rule answers at last: decisions are made again
    assert check(daemon, {}).effect == api.ChangeDecisionEffect.ALLOW


# --- eval assertions -----------------------------------------------------------------------------


def test_an_assertion_cannot_rewrite_the_run_it_judges(daemon):
    pack = unique("pack")
    sync(daemon, pack, {
        "rewrite": {"steps": {"answer": {"rewrites": True}}},
        "same": {"steps": {"answer": {"equals": {"text": "otters swim"}}}},
        # judged in one result, the plugin's first: the built-in sees the run's own output
        "both": {"steps": {"answer": {"rewrites": True, "equals": {"text": "otters swim"}}}},
    })  # fmt: skip
    run_id = submit(daemon, OK_DAG)
    wait_done(daemon, run_id)

    assert record(daemon, pack, "rewrite", run_id).outcome == "passed"
    assert record(daemon, pack, "same", run_id).outcome == "passed"
    assert record(daemon, pack, "both", run_id).outcome == "passed"
    assert outputs(get_run(daemon, run_id)) == {"answer": {"text": "otters swim"}}


def test_an_assertion_that_does_not_answer_in_time_is_an_error_holding_no_one(daemon):
    pack = unique("pack")
    sync(daemon, pack, {"slow": {"steps": {"answer": {"sleeps": 5}}}})
    run_id = submit(daemon, OK_DAG)
    wait_done(daemon, run_id)

    started = time.monotonic()
    result, slowest = slowest_small_call_during(
        daemon, lambda: record(daemon, pack, "slow", run_id)
    )
    assert time.monotonic() - started < 4.5
    assert slowest < 0.7  # (5 s: the assertion ran on the loop)
    assert result.outcome == "error"
    assert result.metrics.to_dict()["errors"] == [
        f"assertion sleeps did not answer within {TIMEOUT:g} s"
    ]


def test_hung_assertions_at_once_are_bounded_and_judging_comes_back_when_they_end(daemon):
    """Ten results at once of an assertion that sleeps 5 s: each was left running (48 held the
    daemon's shared thread limiter, and its other work waited: a review). Few are left; the
    rest err at once; gates go on; once they end, judging comes back."""
    pack = unique("pack")
    sync(daemon, pack, {"slow": {"steps": {"answer": {"sleeps": 5}}},
                        "plain": {"status": "succeeded"}})  # fmt: skip
    run_id = submit(daemon, OK_DAG)
    wait_done(daemon, run_id)

    started = time.monotonic()
    with ThreadPoolExecutor(10) as pool:
        slow = [pool.submit(record, daemon, pack, "slow", run_id) for _ in range(10)]
        time.sleep(TIMEOUT + 0.5)
        plain = record(daemon, pack, "plain", run_id)  # every judging thread is a stuck one
        gate = check(daemon, {})
        results = [f.result() for f in slow]
    assert time.monotonic() - started < 4.5
    errors = [r.metrics.to_dict()["errors"][0] for r in results]
    assert all(r.outcome == "error" for r in results)
    # a result starts only while fewer than four are left running: at most 3 + the 4 judged
    left = errors.count(f"assertion sleeps did not answer within {TIMEOUT:g} s")
    assert 4 <= left <= 7, errors
    assert all(e.startswith("judging did not start: assertions of earlier results (sleeps)")
               for e in errors if "did not answer" not in e)  # fmt: skip
    assert plain.outcome == "error"
    assert gate.effect == api.ChangeDecisionEffect.ALLOW
    time.sleep(5)  # the sleeping assertions end
    assert record(daemon, pack, "plain", run_id).outcome == "passed"


def test_a_graceful_stop_does_not_wait_for_a_rule_that_never_answers(make_daemon, tmp_path):
    (tmp_path / "govern_plugin.py").write_text(textwrap.dedent(PLUGIN))
    daemon = make_daemon(
        '[daemon]\nshutdown_grace = 1\n[plugins]\npaths = ["."]\nmodules = ["govern_plugin"]\n'
        "[gate]\nrule_timeout = 3600\n"
    )
    hung = threading.Thread(target=_hung_check, args=(daemon,))
    hung.start()
    time.sleep(1.0)  # the rule sleeps on its thread
    started = time.monotonic()
    assert daemon.stop(signal.SIGTERM, timeout=30) == 0
    assert time.monotonic() - started < 8  # (the rule's 60 s: 59.6 s)
    hung.join(30)


def _hung_check(daemon: Any) -> None:
    with contextlib.suppress(Exception):  # cut off by the stop
        check(daemon, {"ask": "sleep", "seconds": 60})
