"""`alto bench factool`'s settings (loads, deployment, pass rule) and what it measures at
one load point of one system (`Point`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from alto.bench.common import percentile
from alto.streams.critical_path import Medians

TARGET_MEDIAN_S = 4.0
TARGETS_S = (2.0, 4.0, 8.0)  # the latency targets the throughput is also reported at
PASS_ACHIEVED = 0.8
SIM_TIME_SCALE = 0.25  # the `cpu` profile's (the `paper` profile runs in real time)
SIM_LM_INSTANCES = 7
FAUST_WORKERS = 2
SEED = 11
# Our deployment on this 2-core machine (see "Deployment" above): one partition per Faust
# worker, only the FacTool pipeline's topics, the default fetch wait (250 ms: the embedded
# broker's long-poll front answers a fetch when data arrives; 25 ms before it).
PARTITIONS = FAUST_WORKERS
FETCH_WAIT_MS = 250

# (loads in req/s, requests per point) per tier and size
SIM_LOADS = {
    "quick": ((0.25, 1.0, 2.0), 8),
    "full": ((0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0), 30),
}
VLLM_LOADS = {"quick": ((0.05,), 2), "full": ((0.03, 0.06), 6)}
IDLE_S = 10.0  # how long the idle stack's CPU use is measured, per tier
DRAIN_S = 120.0  # how long a point waits for its last results after its last arrival


@dataclass(frozen=True)
class SimSetup:
    """The sim tier's LM engines: a profile (`alto.lm_service.sim.PROFILES`) at a time scale."""

    profile: str = "cpu"
    time_scale: float | None = None  # None: the profile's own (cpu 0.25, paper 1.0)

    @property
    def scale(self) -> float:
        if self.time_scale is not None:
            return self.time_scale
        return SIM_TIME_SCALE if self.profile == "cpu" else 1.0

    def label(self) -> str:
        return f"profile `{self.profile}`, time scale {self.scale:g}"

    def suffix(self) -> str:
        """The plot's file-name suffix: none for the default setup."""
        if self.profile == "cpu" and self.scale == SIM_TIME_SCALE:
            return ""
        return f"_{self.profile}_scale{self.scale:g}"


@dataclass
class Point:
    tier: str
    system: str
    offered_rps: float
    sent: int
    completed: int
    p50_s: float
    p99_s: float
    achieved_rps: float
    passed: bool = False
    cpu_s_per_request: float = math.nan  # CPU of everything under test / requests sent
    # The same by kind of process (`bench.common.ROLES`, and `client`): ours only.
    cpu_s_by_role: dict[str, float] = field(default_factory=dict)
    # Arrival -> every claim has its evidence: the paper's endpoint (its pipeline ended at
    # reranking; ours goes on to verify and report).
    evidence_p50_s: float = math.nan
    evidence_p99_s: float = math.nan
    stages_s: dict[str, float] = field(default_factory=dict)  # median window per stage
    # The critical path by kind of time (`alto.streams.critical_path`): median ms, and
    # median share of a request's latency. Ours only: LangGraph's results have no trace.
    critical_ms: dict[str, float] = field(default_factory=dict)
    critical_shares: dict[str, float] = field(default_factory=dict)

    def set_critical(self, found: Medians) -> None:
        self.critical_ms = {k: round(v, 1) for k, v in found.ms.items()}
        self.critical_shares = {k: round(v, 4) for k, v in found.shares.items()}


def make_point(
    tier: str,
    system: str,
    rate: float,
    sent: int,
    latencies: list[float],
    done: list[float],
    evidence: list[float] | None = None,
) -> Point:
    """One system's point from its latencies, completion times and evidence-ready times."""
    lat = sorted(latencies)
    done = sorted(done)
    achieved = (
        (len(done) - 1) / (done[-1] - done[0]) if len(done) > 1 and done[-1] > done[0] else 0.0
    )
    point = Point(
        tier,
        system,
        rate,
        sent,
        len(lat),
        percentile(lat, 50),
        percentile(lat, 99),
        achieved,
    )
    point.passed = passes(point, TARGET_MEDIAN_S)
    ready = sorted(evidence or [])
    point.evidence_p50_s, point.evidence_p99_s = percentile(ready, 50), percentile(ready, 99)
    return point


def passes(point: Point, target_s: float) -> bool:
    """The paper's rule at a median target: every request answered, the median within the
    target, and at least `PASS_ACHIEVED` of the offered load achieved."""
    return (
        point.completed == point.sent
        and point.p50_s <= target_s
        and point.achieved_rps >= PASS_ACHIEVED * point.offered_rps
    )
