"""The placement step the scheduler agent and the benchmarks share: the policy's choice,
then the same-engine rule for replays and the spill rule for a saturated choice."""

from __future__ import annotations

from alto.scheduler.placement import Placement, place
from alto.scheduler.policy import Call, ClusterState, Load, make_policy


def _call(i: int, prompt: str = "claims") -> Call:
    return Call(f"c{i}", prompt, "You list claims.", 40, 16)


def _cluster(n: int) -> ClusterState:
    state = ClusterState()
    for i in range(n):
        state.report(Load(i, at_ms=0))
    return state


def test_the_policys_choice_stands_while_it_has_room_and_is_recorded() -> None:
    state = _cluster(3)
    policy = make_policy("prefix_hash")
    first = place(policy, state, _call(0), 0, saturation=4)
    assert first is not None and first.why == "policy"
    for i in range(1, 4):  # same prefix: the same instance, until it is full
        assert place(policy, state, _call(i), 0, saturation=4) == first
    assert state.outstanding(first.instance) == 4


def test_a_saturated_choice_spills_to_the_least_queued_instance_with_room() -> None:
    state = _cluster(3)
    policy = make_policy("prefix_hash")
    home = place(policy, state, _call(0), 0, saturation=2)
    assert home is not None
    place(policy, state, _call(1), 0, saturation=2)  # home is now full
    others = sorted({0, 1, 2} - {home.instance})
    state.assigned(others[0], Call("long", "other", "", 5000, 100))  # more queued tokens
    spilled = place(policy, state, _call(2), 0, saturation=2)
    assert spilled == Placement(others[1], "spill")
    # Every instance full: the policy's choice stands (the agent waits before placing).
    state.assigned(others[0], Call("x", "other", "", 10, 1))
    state.assigned(others[1], Call("y", "other", "", 10, 1))
    assert place(policy, state, _call(3), 0, saturation=2) == Placement(home.instance, "policy")


def test_a_replay_goes_to_a_live_instance_of_its_first_engine() -> None:
    state = _cluster(3)
    policy = make_policy("round_robin")
    engines = {0: "vllm", 1: "sim", 2: "sim"}
    placed = [
        place(policy, state, _call(i), 0, saturation=64, engines=engines, engine="vllm")
        for i in range(3)
    ]
    assert [p.instance for p in placed if p] == [0, 0, 0]
    assert [p.why for p in placed if p] == ["policy", "same_engine", "same_engine"]
    # No live instance runs that engine: the policy decides.
    free = place(policy, state, _call(9), 0, saturation=64, engines={1: "sim"}, engine="vllm")
    assert free is not None and free.why == "policy"


def test_no_live_instance_places_nothing_and_records_nothing() -> None:
    state = _cluster(0)
    assert place(make_policy("least_loaded"), state, _call(0), 0, saturation=8) is None
    assert not state.pending
