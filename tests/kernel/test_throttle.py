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
