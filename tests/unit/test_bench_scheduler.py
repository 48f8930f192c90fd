"""The scheduler benchmark's virtual-time cluster (bench/scheduler.py), on tiny workloads."""

from __future__ import annotations

import math
from typing import Any

import pytest

from alto.bench.scheduler import (
    Arrival,
    Template,
    Workload,
    make_workload,
    measure,
    simulate,
)
from alto.bench.scheduler_sim import decider_of
from alto.lm_service.sim import SimParams, iteration_s
from alto.scheduler.policy import Call, ClusterState, Completion, SchedulingPolicy, make_policy

PARAMS = SimParams()


def _template(name: str = "a/t0", app: int = 0, system: int = 100, own: int = 300) -> Template:
    return Template(name, app, system, own, 10, 12, 1.0, "x" * (4 * (system + own)))


def _workload(*arrivals: Arrival, templates: tuple[Template, ...] | None = None) -> Workload:
    return Workload(templates or (_template(),), tuple(arrivals), seed=0)


def test_one_call_alone_costs_the_sum_of_its_iterations() -> None:
    # rate 1: t_unit is the arrival time in seconds.
    jobs = simulate(make_policy("round_robin"), _workload(Arrival(0.5, 0, 40, 7)), 1.0)
    (job,) = jobs
    expected = iteration_s(PARAMS, 1, 440) + 6 * iteration_s(PARAMS, 1, 0)
    assert job.cached_tokens == 0
    assert job.admitted_s == 0.5
    assert job.finished_s - job.arrived_s == pytest.approx(expected)


def test_a_prefix_hit_costs_no_prefill() -> None:
    jobs = simulate(
        make_policy("round_robin"),
        _workload(Arrival(0.0, 0, 40, 7), Arrival(100.0, 0, 40, 7)),
        1.0,
        n_instances=1,
    )
    first, second = jobs
    assert (first.cached_tokens, second.cached_tokens) == (0, 400)
    expected = iteration_s(PARAMS, 1, 40) + 6 * iteration_s(PARAMS, 1, 0)
    assert second.finished_s - second.arrived_s == pytest.approx(expected)


def test_templates_of_one_application_share_the_system_prompt_only() -> None:
    a, b = _template("a/t0", 0), _template("a/t1", 0)
    jobs = simulate(
        make_policy("round_robin"),
        _workload(Arrival(0.0, 0, 40, 5), Arrival(50.0, 1, 40, 5), templates=(a, b)),
        1.0,
        n_instances=1,
    )
    assert [j.cached_tokens for j in jobs] == [0, 100]


def test_calls_arriving_together_are_batched() -> None:
    jobs = simulate(
        make_policy("round_robin"),
        _workload(Arrival(0.0, 0, 40, 3), Arrival(0.0, 0, 40, 3)),
        1.0,
        n_instances=1,
    )
    # Both join the first iteration (the second's prefix is already cached: looked up on
    # arrival, as SimEngine does); three iterations at batch 2.
    first = iteration_s(PARAMS, 2, 440 + 40)
    for job in jobs:
        assert job.finished_s == pytest.approx(first + 2 * iteration_s(PARAMS, 2, 0))


class _Recorder(SchedulingPolicy):
    name = "round_robin"

    def __init__(self) -> None:
        self.decisions: list[int] = []
        self.done: list[Completion] = []
        self.report_times: list[int] = []

    def decide(self, state: ClusterState, call: Call, now_ms: int) -> int | None:
        self.report_times = sorted({ld.at_ms for ld in state.loads.values()})
        self.decisions.append(now_ms)
        return state.live(now_ms)[0]

    def on_completion(self, state: ClusterState, done: Completion) -> None:
        assert done.call_id not in state.pending[done.instance]
        self.done.append(done)


def test_the_policy_sees_reports_decisions_and_completions() -> None:
    policy = _Recorder()
    jobs = simulate(
        policy, _workload(Arrival(0.2, 0, 40, 7), Arrival(3.7, 0, 40, 7)), 1.0, n_instances=2
    )
    assert policy.decisions == [200, 3700]
    assert max(policy.report_times) >= 2500  # reports every second of virtual time
    assert [d.call_id for d in policy.done] == ["call-0", "call-1"]
    for job, done in zip(jobs, policy.done, strict=True):
        assert done.queue_s == pytest.approx(job.admitted_s - job.arrived_s)
        assert done.service_s == pytest.approx(job.finished_s - job.admitted_s)
        assert done.output_tokens == 7


def test_same_seed_same_results_and_round_robin_spreads_evenly() -> None:
    workload = make_workload(400, seed=3)
    assert make_workload(400, seed=3) == workload
    a = measure("round_robin", workload, 2.0, slo=30.0)
    b = measure("round_robin", make_workload(400, seed=3), 2.0, slo=30.0)
    assert a.latencies == b.latencies and a.prefix_hit_rate == b.prefix_hit_rate
    assert max(a.calls_per_instance) - min(a.calls_per_instance) <= 1
    assert not math.isnan(a.p99_s) and a.achieved_rps == pytest.approx(2.0, rel=0.2)
    c = measure("round_robin", make_workload(400, seed=4), 2.0, slo=30.0)
    assert c.latencies != a.latencies


def test_several_deciders_each_place_their_own_calls_and_all_hear_every_completion() -> None:
    deciders = [_Recorder(), _Recorder()]
    arrivals = [Arrival(0.2 + i, 0, 40, 3) for i in range(8)]
    simulate(deciders, _workload(*arrivals), 1.0, n_instances=2)
    placed_by = [decider_of(f"call-{i}", 2) for i in range(8)]
    assert 0 < sum(placed_by) < 8  # both deciders had calls to place
    for d, recorder in enumerate(deciders):
        expected = [200 + 1000 * i for i in range(8) if placed_by[i] == d]
        assert recorder.decisions == expected
        assert [c.call_id for c in recorder.done] == [f"call-{i}" for i in range(8)]


def test_deciders_that_see_only_their_own_placements_herd_between_reports() -> None:
    # A burst between two load reports: one decider counts its own placements and spreads
    # them; many deciders each see four idle instances and pick the same one.
    burst = _workload(*(Arrival(0.1 + 0.001 * i, 0, 40, 20) for i in range(8)))
    one = simulate(make_policy("least_loaded"), burst, 1.0, n_instances=4)
    many = simulate([make_policy("least_loaded") for _ in range(64)], burst, 1.0, n_instances=4)

    def per_instance(jobs: list[Any]) -> list[int]:
        return [sum(1 for j in jobs if j.instance == i) for i in range(4)]

    assert per_instance(one) == [2, 2, 2, 2]
    assert max(per_instance(many)) >= 4
    assert max(j.finished_s - j.arrived_s for j in many) > max(
        j.finished_s - j.arrived_s for j in one
    )


def test_a_decider_shares_its_table_with_the_others() -> None:
    # Two calls, 16 deciders: at most two of them placed anything, every one knows both.
    templates = (_template("a/t0", 0), _template("a/t1", 0))
    arrivals = [Arrival(0.2, 0, 40, 3), Arrival(1.2, 1, 40, 3)]
    deciders = [make_policy("prompt_aware") for _ in range(16)]
    simulate(deciders, _workload(*arrivals, templates=templates), 1.0, n_instances=2)
    assert {decider_of("call-0", 16), decider_of("call-1", 16)} != set(range(16))
    for decider in deciders:
        assert set(decider.table()) == {"a/t0", "a/t1"}
