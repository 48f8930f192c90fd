"""Scheduling policies on plain data (no broker)."""

from __future__ import annotations

import pytest

from scheduler.policy import ClusterState, make_policy
from schemas.messages import LMRequest, LMStatus, QuantumRule

pytestmark = pytest.mark.unit


def _status(instance: int, at_ms: int) -> LMStatus:
    return LMStatus(instance, f"lm-{instance}", "sim", True, 0, 0, 0, 0, 0.0, 0.0, 0.0, at_ms)


def _request(i: int) -> LMRequest:
    return LMRequest(f"c{i}", f"r{i}", "p", "s", "claims", (), 16, QuantumRule.LINE, b"", 0)


def test_round_robin_spreads_over_live_instances_only() -> None:
    state = ClusterState(heartbeat_timeout_ms=1000)
    policy = make_policy("round_robin")
    assert policy.decide(state, _request(0), now_ms=0) is None
    for i in (0, 1, 2):
        policy.observe(state, _status(i, at_ms=10_000))
    policy.observe(state, _status(1, at_ms=5_000))  # a stale report does not win
    picks = [policy.decide(state, _request(i), now_ms=10_500) for i in range(6)]
    assert sorted(picks) == [0, 0, 1, 1, 2, 2]
    # Instance 2 stops reporting: only 0 and 1 are chosen.
    for i in (0, 1):
        policy.observe(state, _status(i, at_ms=12_000))
    assert {policy.decide(state, _request(i), now_ms=12_100) for i in range(4)} == {0, 1}
