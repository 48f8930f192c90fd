"""`alto bench factool`'s `cluster` tier (SIMULATED, virtual time; the model is in
`bench/cluster.py`): calibrate the stages' service times on this machine, then sweep the
offered load for streaming, baseline and the LangGraph stand-in (baseline with in-process
hops), each point with its own fresh cluster and the same arrivals.

Requests ask questions from a pool of `POOL` (ids `q<j>~<point>-<i>`, so the SIMULATED
engine writes the same text for the same question, and the MiniLM stages' cached results
apply); arrivals are Poisson. Points last `POINT_S` virtual seconds (3 minutes with `--full`,
not the paper's 12: see `POINT_S`), plus up to `DRAIN_S` for the last results.
"""

from __future__ import annotations

import random
import statistics
from typing import Any

from alto.agents.factool import pipeline as factool
from alto.agents.factool.corpus import Document, questions
from alto.bench.cluster import (
    HOP_S,
    LM_HOPS,
    Cluster,
    ClusterSpec,
    CostLog,
    cluster_topology,
    service_times,
)
from alto.bench.common import progress
from alto.bench.factool_point import SEED, Point, make_point
from alto.bench.virtual_time import run_virtual
from alto.schemas.messages import Mode, PipelineRequest
from alto.streams.critical_path import medians
from alto.streams.processor import now_ms

POOL = 32
# The paper's points lasted 12 minutes; simulating one request costs about 50 ms of wall
# time here (our stage code and runtime run for real), so `--full` runs 3-minute points.
POINT_S = {"quick": 30.0, "full": 180.0}
LOADS = {"quick": (1.0, 4.0, 16.0), "full": (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)}
DRAIN_S = 120.0
CALIBRATION_REQUESTS = 6
SYSTEMS = {  # name: (mode, in-process hops)
    "streaming": (Mode.STREAMING, False),
    "baseline": (Mode.BASELINE, False),
    "langgraph": (Mode.BASELINE, True),
}


def _requests(
    asked: list[str], rate: float, duration_s: float, tag: str, mode: Mode, seed: int
) -> list[tuple[float, PipelineRequest]]:
    rng = random.Random(seed)
    out: list[tuple[float, PipelineRequest]] = []
    t = rng.expovariate(rate)
    i = 0
    while t < duration_s:
        j = rng.randrange(len(asked))
        rid = f"q{j}~{tag}-{i}"
        out.append((t, PipelineRequest(rid, factool.NAME, asked[j], now_ms(), mode)))
        t += rng.expovariate(rate)
        i += 1
    return out


def calibrate(docs: list[Document], memo: dict[tuple[str, str], Any]) -> dict[str, float]:
    """Each stage's median cost per event on this machine, from a few requests run one at a
    time (nothing cached yet, nothing queued), as service times (MiniLM on a GPU)."""
    costs: CostLog = {}
    topology = cluster_topology(factool.build(), memo)
    asked = questions(docs, CALIBRATION_REQUESTS, seed=SEED + 100)
    arrivals = [
        (30.0 * k, PipelineRequest(f"cal-{k}", factool.NAME, q, now_ms(), Mode.STREAMING))
        for k, q in enumerate(asked)
    ]
    run_virtual(Cluster(topology, ClusterSpec(), costs).run(arrivals, DRAIN_S))
    return service_times(costs)


def run_tier(
    docs: list[Document],
    quick: bool,
    loads: tuple[float, ...] | None = None,
    point_s: float | None = None,
) -> tuple[list[Point], dict[str, Any]]:
    """The tier's points; `loads` and `point_s` replace the size's own (`LOADS`, `POINT_S`)."""
    size = "quick" if quick else "full"
    loads = loads or LOADS[size]
    duration = point_s or POINT_S[size]
    memo: dict[tuple[str, str], Any] = {}
    progress("cluster (SIMULATED, virtual time): calibrating the stages' service times")
    service = calibrate(docs, memo)
    asked = questions(docs, POOL, seed=SEED)
    points: list[Point] = []
    walls: list[float] = []
    for k, rate in enumerate(loads):
        for system, (mode, in_process) in SYSTEMS.items():
            spec = ClusterSpec(
                service_s=service,
                hop_s=0.0 if in_process else HOP_S,
                lm_hops=0 if in_process else LM_HOPS,
            )
            arrivals = _requests(asked, rate, duration, f"p{k}{system[0]}", mode, SEED + k)
            topology = cluster_topology(factool.build(), memo)
            run = run_virtual(Cluster(topology, spec).run(arrivals, DRAIN_S))
            walls.append(run.wall_s)
            point = make_point(
                "cluster",
                system,
                rate,
                len(arrivals),
                run.latencies(),
                [run.done_s[r] for r in run.ok],
                run.evidence_ready(),
            )
            span = run.span_s()
            use = {
                stage: busy / (span * spec.instances_of(stage))
                for stage, busy in run.busy_s.items()
            }
            busiest = max(use.items(), key=lambda kv: kv[1], default=("-", 0.0))
            batch = {p: statistics.mean(v) for p, v in run.lm_batch.items() if v}
            point.stages_s = {
                "busiest_stage_utilisation": round(busiest[1], 3),
                **{f"lm_batch_{p}": round(b, 1) for p, b in batch.items()},
            }
            # Where the time went, from the results' traces in virtual time (the stages'
            # service times and their queues show as `waiting`: `Cluster._serve`).
            point.set_critical(medians([run.results[r] for r in run.ok], factool.build()))
            points.append(point)
            progress(
                f"cluster {system:9} offered {rate:g}/s: {point.completed}/{point.sent} done, "
                f"p50 {point.p50_s:.2f} s, p99 {point.p99_s:.2f} s, achieved "
                f"{point.achieved_rps:.2f}/s, busiest stage {busiest[0]} "
                f"({point.stages_s['busiest_stage_utilisation']:.0%}), mean LM batch "
                + ", ".join(f"{p} {b:.1f}" for p, b in batch.items())
                + f"; {run.wall_s:.1f} s of wall "
                f"time {'PASS' if point.passed else 'fail'}"
            )
    info = {
        "service_ms": {s: round(v * 1000, 3) for s, v in sorted(service.items())},
        "point_s": duration,
        "wall_s_per_point": round(statistics.median(walls), 1) if walls else None,
    }
    return points, info
