"""`alto bench factool`'s settings (loads, deployment, pass rule) and what it measures at
one load point of one system (`Point`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

TARGET_MEDIAN_S = 4.0
PASS_ACHIEVED = 0.8
SIM_TIME_SCALE = 0.25  # the `cpu` profile's (the `paper` profile runs in real time)
SIM_LM_INSTANCES = 7
FAUST_WORKERS = 2
SEED = 11
# Our deployment on this 2-core machine (see "Deployment" above): one partition per Faust
# worker, only the FacTool pipeline's topics, a 25 ms fetch wait.
PARTITIONS = FAUST_WORKERS
FETCH_WAIT_MS = 25

# (loads in req/s, requests per point) per tier and size
SIM_LOADS = {
    "quick": ((0.25, 0.5, 1.0), 8),
    "full": ((0.25, 0.5, 0.75, 1.0, 1.25, 1.5), 30),
}
VLLM_LOADS = {"quick": ((0.05,), 3), "full": ((0.03, 0.06), 6)}
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
    # Arrival -> every claim has its evidence: the paper's endpoint (its pipeline ended at
    # reranking; ours goes on to verify and report).
    evidence_p50_s: float = math.nan
    evidence_p99_s: float = math.nan
    stages_s: dict[str, float] = field(default_factory=dict)  # median window per stage
    # The critical path by kind of time (`alto.streams.critical_path`): median ms, and
    # median share of a request's latency. Ours only: LangGraph's results have no trace.
    critical_ms: dict[str, float] = field(default_factory=dict)
    critical_shares: dict[str, float] = field(default_factory=dict)
