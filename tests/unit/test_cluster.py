"""The cluster tier's virtual time (SIMULATED): the clock, a queue with a known analytic
answer, and a real pipeline with LM stages served on it."""

from __future__ import annotations

import asyncio
import json
import random
import time

import pytest

from alto.agents import claims
from alto.bench.cluster import GPU_FACTOR, Cluster, ClusterSpec, cluster_topology, service_times
from alto.bench.virtual_time import Stalled, run_virtual
from alto.lm_service.quanta import split_all
from alto.lm_service.sim import sim_text
from alto.schemas.messages import Mode, PipelineRequest, ResultStatus
from alto.streams import Pipeline
from alto.streams.ancestry import node_key
from alto.streams.critical_path import breakdown_ms
from alto.streams.outputs import now_ms


def test_virtual_time_jumps_to_each_timer_and_knows_a_stall() -> None:
    async def sleepers() -> list[tuple[float, float]]:
        loop = asyncio.get_running_loop()
        seen: list[tuple[float, float]] = []

        async def nap(d: float) -> None:
            await asyncio.sleep(d)
            seen.append((d, loop.time()))

        await asyncio.gather(*(nap(d) for d in (5.0, 1.0, 3600.0, 2.5)))
        return seen

    started = time.perf_counter()
    seen = run_virtual(sleepers())
    assert seen == [(1.0, 1.0), (2.5, 2.5), (5.0, 5.0), (3600.0, 3600.0)]
    assert time.perf_counter() - started < 5  # an hour of virtual time, not of wall time

    async def forever() -> None:
        await asyncio.Event().wait()  # nothing will ever set it

    with pytest.raises(Stalled):
        run_virtual(forever())


def _requests(
    pipeline: str, n: int, rate: float, mode: Mode, seed: int
) -> list[tuple[float, PipelineRequest]]:
    rng = random.Random(seed)
    t, out = 0.0, []
    for i in range(n):
        t += rng.expovariate(rate)
        out.append((t, PipelineRequest(f"r{i}", pipeline, f"topic {i}", 0, mode)))
    return out


def test_one_server_queue_matches_the_m_d_1_formula() -> None:
    """Poisson arrivals at one instance with a fixed service time D: an M/D/1 queue, whose
    mean time in system is D + rho * D / (2 * (1 - rho)) (Pollaczek-Khinchine)."""
    pipeline = Pipeline("md1")
    pipeline.request.map(len, name="size")
    topology = pipeline.build()
    service, rho = 0.1, 0.6
    spec = ClusterSpec(
        service_s={"size": service}, hop_s=0.0, lm_hops=0, lm_pools={}, instances={"size": 1}
    )
    arrivals = _requests("md1", 20_000, rho / service, Mode.STREAMING, seed=5)
    run = run_virtual(Cluster(topology, spec).run(arrivals, drain_s=60.0))
    assert len(run.ok) == len(arrivals) and not run.dead_letters
    mean = sum(run.latencies()) / len(run.latencies())
    assert mean == pytest.approx(service + rho * service / (2 * (1 - rho)), rel=0.05)
    # One instance was busy rho of the time.
    assert run.busy_s["size"] / (max(run.done_s.values()) - arrivals[0][0]) == pytest.approx(
        rho, rel=0.05
    )


@pytest.mark.parametrize("mode", [Mode.STREAMING, Mode.BASELINE])
def test_an_lm_pipeline_gives_exact_results_in_virtual_time(mode: Mode) -> None:
    memo: dict[tuple[str, str], object] = {}
    topology = cluster_topology(claims.build(), memo)
    spec = ClusterSpec(hop_s=0.002, service_s={"words": 0.001})
    arrivals = _requests("claims", 40, 5.0, mode, seed=2)
    started = time.perf_counter()
    run = run_virtual(Cluster(topology, spec).run(arrivals, drain_s=60.0))
    assert not run.dead_letters and len(run.ok) == len(arrivals)
    assert time.perf_counter() - started < 60
    for _, request in arrivals:
        lm_id = f"{node_key(request.request_id, ())}#claims"
        expected = claims.expected_output(split_all(sim_text(lm_id, "claims", 96), "item"))  # type: ignore[arg-type]
        assert run.results[request.request_id].status is ResultStatus.OK
        assert json.loads(run.results[request.request_id].output or "") == expected
    # Latency is virtual: the engine's iterations (about 13 ms a word on the `paper`
    # profile), two hops to the engine and the hops between stages, not the wall clock.
    assert all(0.05 < lat < 10.0 for lat in run.latencies())


@pytest.mark.parametrize("mode", [Mode.STREAMING, Mode.BASELINE])
def test_traces_in_virtual_time_cut_each_latency_into_its_critical_path(mode: Mode) -> None:
    """The stage and LM serving code stamp their traces on the virtual clock during a run
    (and on the wall clock again after it), so each result's critical path adds up to its
    virtual latency: the modelled hops, the engine, the stage's service time as `waiting`."""
    topology = cluster_topology(claims.build(), {})
    spec = ClusterSpec(hop_s=0.002, service_s={"words": 0.001})
    arrivals = _requests("claims", 8, 1.0, mode, seed=3)
    run = run_virtual(Cluster(topology, spec).run(arrivals, drain_s=60.0))
    assert len(run.ok) == len(arrivals)
    assert abs(now_ms() / 1000 - time.time()) < 5  # the wall clock again
    for request_id in run.ok:
        parts = breakdown_ms(run.results[request_id], claims.build())
        latency_ms = (run.done_s[request_id] - run.arrived_s[request_id]) * 1000
        assert sum(parts.values()) == pytest.approx(latency_ms, abs=2)  # stamps are whole ms
        assert parts["unattributed"] == 0 and parts["compute"] == 0
        assert parts["lm_dispatch"] == 3 * 2  # to the LM stage, then two hops to the engine
        assert parts["waiting"] >= 1  # the `words` stage's service time
        # Streaming: the engine is most of it. (Baseline holds a call's outputs until it
        # ends, and the walk charges that hold as transit.)
        assert parts["lm"] > (0.4 if mode is Mode.STREAMING else 0.1) * latency_ms


def test_service_times_are_median_costs_and_minilm_runs_on_a_gpu() -> None:
    costs = {
        "bm25": [0.001, 0.003, 0.002],
        "encode": [0.024, 0.048, 0.024],
        "encode:END": [0.0048],
        "idle": [],
    }
    assert service_times(costs) == {
        "bm25": 0.002,
        "encode": pytest.approx(0.024 / GPU_FACTOR),
        "encode:END": pytest.approx(0.0048 / GPU_FACTOR),
    }
