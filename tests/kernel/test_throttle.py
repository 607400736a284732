import pytest
from foundry.kernel.core.throttle import Action, Throttle, decide


@pytest.mark.parametrize(
    ("throttle", "is_mutator", "action", "deliver", "state"),
    [
        (Throttle.FULL, False, Action.RUN, True, "completed"),
        (Throttle.FULL, True, Action.RUN, True, "completed"),
        (Throttle.AUDIT_ONLY, False, Action.RUN, True, "completed"),
        (Throttle.AUDIT_ONLY, True, Action.AUDIT, False, "completed"),
        (Throttle.DRY_RUN, False, Action.RUN, True, "completed"),
        (Throttle.DRY_RUN, True, Action.SIMULATE, True, "skipped"),
    ],
)
def test_decide(throttle, is_mutator, action, deliver, state):
    decision = decide(throttle, is_mutator)

    assert (decision.action, decision.deliver, decision.state) == (action, deliver, state)


def test_the_table_covers_every_throttle():
    assert {t.value for t in Throttle} == {"full", "audit_only", "dry_run"}


def test_only_full_lets_a_mutator_act():
    acting = [t for t in Throttle if decide(t, is_mutator=True).action is Action.RUN]

    assert acting == [Throttle.FULL]


def test_a_throttled_mutator_has_a_summary_of_what_happened_when_it_gives_none():
    assert decide(Throttle.FULL, is_mutator=True).summary == ""  # the block's own, or its output
    assert decide(Throttle.AUDIT_ONLY, is_mutator=True).summary.startswith("audited under")
    assert decide(Throttle.DRY_RUN, is_mutator=True).summary.startswith("skipped under DRY_RUN")
    assert decide(Throttle.DRY_RUN, is_mutator=False).summary == ""  # an observer just runs
