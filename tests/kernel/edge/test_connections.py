"""``edge/connections.py``: a listener's count of connections against its cap, and the cap the
open-files limit allows."""

from __future__ import annotations

import logging
import resource

import pytest
from foundry.kernel.edge import connections
from foundry.kernel.edge.connections import ConnectionCap, connection_budget


def test_a_cap_admits_up_to_its_limit_and_again_once_one_ends(caplog):
    cap = ConnectionCap(2, "gRPC")
    with caplog.at_level(logging.WARNING, "foundry.daemon"):
        assert [cap.admit() for _ in range(5)] == [True, True, False, False, False]
    assert (cap.live, cap.refused) == (2, 3)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["the gRPC listener holds 2 connections, its cap ([daemon] max_connections): "
                     "new ones are closed at once (1 so far)"]  # one line a burst  # fmt: skip
    cap.release()
    assert cap.admit()
    assert not cap.admit()


def test_the_budget_keeps_the_cap_when_the_limit_can_be_raised_to_hold_it(monkeypatch):
    limits = {"soft": 1_024, "hard": 65_536}
    monkeypatch.setattr(resource, "getrlimit", lambda _: (limits["soft"], limits["hard"]))
    monkeypatch.setattr(resource, "setrlimit", lambda _, pair: limits.update(soft=pair[0]))
    assert connection_budget(1_024) == 1_024
    assert limits["soft"] == 2 * 1_024 + connections.RESERVED_FDS


def test_the_budget_lowers_the_cap_to_what_the_hard_limit_leaves(monkeypatch, caplog):
    monkeypatch.setattr(resource, "getrlimit", lambda _: (256, 1_024))
    monkeypatch.setattr(resource, "setrlimit", lambda _, pair: None)
    with caplog.at_level(logging.WARNING, "foundry.daemon"):
        assert connection_budget(1_024) == (1_024 - connections.RESERVED_FDS) // 2
    assert "max_connections 1024 lowered to 256: the open-files limit is 1024" in caplog.text


@pytest.mark.parametrize("soft", [64, 512])
def test_the_budget_never_goes_under_its_minimum(monkeypatch, soft):
    monkeypatch.setattr(resource, "getrlimit", lambda _: (soft, soft))
    assert connection_budget(1_024) == connections.MINIMUM_CAP
