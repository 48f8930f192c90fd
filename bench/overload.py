"""`alto bench overload`: three times the sustainable load for two minutes, then back down.

The stack: the broker, 2 Faust workers, 3 LM workers on the SIMULATED engine; requests of the
`claims` pipeline (an LM call, fan-out, two aggregations). Admission control is on with a
limit of `limit` requests in flight (`ALTO_ADMISSION__MAX_INFLIGHT`).

1. **Calibration**: a closed loop that keeps `limit` requests in flight (a new one as each
   finishes) for `calm_s`; the rate at which they finish after the first third (warm-up) is
   the throughput with the system full: the *sustainable load* C.
2. **Before**: Poisson arrivals at 0.5 C for `calm_s`.
3. **Overload**: 3 C for `overload_s`.
4. **After**: 0.5 C again for `calm_s`.

Reported per phase: requests, OK, OVERLOADED, other failures, lost (no result), latency of
OK results (p50, p99, max) and of OVERLOADED ones (how fast a refusal comes back); peak RSS of
every process (sampled each second, children included); how long after the load dropped the
last admitted overload request finished. A plot (`bench-out/overload.png`) shows every
request's latency against its submission time, by status.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alto.bench.common import OUT_DIR, percentile, progress, write_json
from alto.config import AltoConfig, load_config
from alto.infra.broker import free_port
from alto.infra.client import new_request
from alto.infra.openloop import OpenLoop, Outcome
from alto.infra.processes import tree_usage
from alto.infra.stack import Stack
from alto.schemas.messages import Mode, PipelineRequest, ResultStatus

PIPELINE = "claims"
FAUST_WORKERS = 2
LM_WORKERS = 3
FACTOR = 3.0
CALM = 0.5


@dataclass
class OverloadReport:
    limit: int
    capacity_rps: float
    phases: dict[str, dict[str, Any]]
    peak_rss_mb: dict[str, float]
    calm_rss_mb: dict[str, float]
    drained_after_s: float | None
    dropped_at: float = 0.0  # wall clock: the end of the overload phase
    outcomes: list[Outcome] = field(default_factory=list)

    def markdown(self) -> str:
        lines = [
            "## Overload (LM engines SIMULATED; broker, Faust workers, admission real)",
            "",
            f"- admission limit: {self.limit} requests in flight; sustainable load "
            f"(throughput with {self.limit} in flight): **{self.capacity_rps:.2f} req/s**",
            f"- last admitted overload request finished {_fmt(self.drained_after_s)} s "
            "after the load dropped",
            "",
            "| phase | offered (req/s) | requests | OK | OVERLOADED | failed | lost | dup "
            "| OK p50 (s) | OK p99 (s) | OK max (s) | OVERLOADED p50 (s) | OVERLOADED p99 (s) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, p in self.phases.items():
            lines.append(
                f"| {name} | {p['offered_rps']:.2f} | {p['requests']} | {p['ok']} "
                f"| {p['overloaded']} | {p['failed']} | {p['lost']} | {p['duplicated']} "
                f"| {_fmt(p['ok_p50_s'])} | {_fmt(p['ok_p99_s'])} | {_fmt(p['ok_max_s'])} "
                f"| {_fmt(p['overloaded_p50_s'])} | {_fmt(p['overloaded_p99_s'])} |"
            )
        lines += ["", "| process | RSS before overload (MB) | peak RSS (MB) |", "|---|---|---|"]
        for name, peak in self.peak_rss_mb.items():
            lines.append(f"| {name} | {self.calm_rss_mb.get(name, math.nan):.0f} | {peak:.0f} |")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "limit": self.limit,
            "capacity_rps": self.capacity_rps,
            "phases": self.phases,
            "peak_rss_mb": self.peak_rss_mb,
            "calm_rss_mb": self.calm_rss_mb,
            "drained_after_s": self.drained_after_s,
        }


def _fmt(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.2f}"


class _RssSampler:
    """Peak resident memory per named process, its children included."""

    def __init__(self, pids: Callable[[], dict[str, int]]) -> None:
        self.pids = pids
        self.peak: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self._next = 0.0

    def sample(self, force: bool = False) -> None:
        now = time.monotonic()
        if now < self._next and not force:
            return
        self._next = now + 1.0
        for name, pid in self.pids().items():
            usage = tree_usage(pid)
            if usage is not None:
                mb = usage[0] / 2**20
                self.last[name] = mb
                self.peak[name] = max(self.peak.get(name, 0.0), mb)


class _Workload:
    """Numbered requests of the pipeline, submitted open-loop or a closed loop."""

    def __init__(self, loop: OpenLoop) -> None:
        self.loop = loop
        self._n = 0

    def _requests(self, k: int) -> list[PipelineRequest]:
        out = []
        for _ in range(k):
            self._n += 1
            out.append(
                new_request(
                    PIPELINE, f"subject {self._n}", mode=Mode.STREAMING, request_id=f"ov-{self._n}"
                )
            )
        return out

    def run(self, phase: str, offsets: list[float]) -> list[Outcome]:
        """Submit one request at each offset (s from now); return when all are submitted."""
        return self.loop.run(self._requests(len(offsets)), offsets, phase)

    def closed_loop(self, concurrency: int, duration_s: float) -> list[Outcome]:
        """Keep `concurrency` requests in flight for `duration_s`; return them all."""
        return self.loop.closed_loop(self._endless(), concurrency, duration_s, "calibration")

    def _endless(self) -> Iterator[PipelineRequest]:
        while True:
            yield from self._requests(1)


def _poisson(rate: float, duration_s: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    out, t = [], rng.expovariate(rate)
    while t < duration_s:
        out.append(t)
        t += rng.expovariate(rate)
    return out


def _phase_stats(outcomes: list[Outcome], offered: float) -> dict[str, Any]:
    ok = sorted(o.latency_s for o in outcomes if o.status is ResultStatus.OK)
    over = sorted(o.latency_s for o in outcomes if o.status is ResultStatus.OVERLOADED)
    return {
        "offered_rps": offered,
        "requests": len(outcomes),
        "ok": len(ok),
        "overloaded": len(over),
        "failed": sum(
            1
            for o in outcomes
            if o.status is not None and o.status not in (ResultStatus.OK, ResultStatus.OVERLOADED)
        ),
        "lost": sum(1 for o in outcomes if o.finished is None),
        "duplicated": sum(1 for o in outcomes if o.results > 1),
        "ok_p50_s": percentile(ok, 50),
        "ok_p99_s": percentile(ok, 99),
        "ok_max_s": ok[-1] if ok else math.nan,
        "overloaded_p50_s": percentile(over, 50),
        "overloaded_p99_s": percentile(over, 99),
    }


def run_overload(
    config: AltoConfig,
    workdir: Path,
    *,
    limit: int = 64,
    overload_s: float = 120.0,
    calm_s: float = 30.0,
    seed: int = 5,
    listen: str | None = None,
    settle_s: float = 120.0,
) -> OverloadReport:
    """The experiment on a stack of its own (embedded broker at `listen`, or the broker
    `config` names when `listen` is None)."""
    stack_config = config.with_overrides(admission={"max_inflight": limit}, warmup=False)
    stack = Stack(
        stack_config,
        workers=FAUST_WORKERS,
        lm_instances=LM_WORKERS,
        engine="sim",
        listen=listen,
        workdir=workdir,
    )
    progress(f"overload: starting the stack ({FAUST_WORKERS} Faust, {LM_WORKERS} sim LM workers)")
    try:
        stack.start()
        stack.wait_ready(300)
        sampler = _RssSampler(stack.pids)
        with OpenLoop(stack.config, on_poll=sampler.sample) as loop:
            return _phases(_Workload(loop), sampler, limit, overload_s, calm_s, seed, settle_s)
    finally:
        stack.stop()


def _phases(
    workload: _Workload,
    sampler: _RssSampler,
    limit: int,
    overload_s: float,
    calm_s: float,
    seed: int,
    settle_s: float,
) -> OverloadReport:
    progress(f"overload: calibration, {limit} requests in flight for {calm_s:.0f} s")
    started = time.time()
    burst = workload.closed_loop(limit, calm_s)
    ended = time.time()
    warm = started + (ended - started) / 3
    # Served requests only: a refusal at the limit (the workers' shares of it are uneven
    # for a moment) is fast and would inflate the figure.
    counted = [
        o
        for o in burst
        if o.status is ResultStatus.OK and o.finished is not None and warm <= o.finished <= ended
    ]
    if len(counted) < 2:
        raise RuntimeError(f"calibration failed: {len(counted)} requests finished")
    capacity = len(counted) / (ended - warm)
    workload.loop.wait(burst, settle_s)
    progress(f"overload: sustainable load {capacity:.2f} req/s")
    phases: dict[str, tuple[float, list[Outcome]]] = {}
    for k, (name, factor, duration) in enumerate(
        (("before", CALM, calm_s), ("overload", FACTOR, overload_s), ("after", CALM, calm_s))
    ):
        rate = factor * capacity
        progress(f"overload: {name}, {rate:.2f} req/s for {duration:.0f} s")
        if name == "overload":
            sampler.sample(force=True)
            calm_rss = dict(sampler.last)
        phases[name] = (rate, workload.run(name, _poisson(rate, duration, seed + k)))
        if name == "overload":
            dropped_at = time.time()
    everything = [o for _, outcomes in phases.values() for o in outcomes]
    workload.loop.wait(everything, settle_s)
    sampler.sample(force=True)
    admitted = [o for o in phases["overload"][1] if o.status is ResultStatus.OK]
    drained = max((o.finished or 0.0 for o in admitted), default=None)
    return OverloadReport(
        limit=limit,
        capacity_rps=capacity,
        phases={
            "calibration": _phase_stats(burst, math.nan),
            **{name: _phase_stats(outcomes, rate) for name, (rate, outcomes) in phases.items()},
        },
        peak_rss_mb=dict(sampler.peak),
        calm_rss_mb=calm_rss,
        drained_after_s=None if drained is None else max(0.0, drained - dropped_at),
        dropped_at=dropped_at,
        outcomes=list(workload.loop.outcomes.values()),
    )


def _plot(report: OverloadReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = min(o.submitted for o in report.outcomes)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for status, color in ((ResultStatus.OK, "tab:blue"), (ResultStatus.OVERLOADED, "tab:red")):
        xs = [o.submitted - t0 for o in report.outcomes if o.status is status]
        ys = [o.latency_s for o in report.outcomes if o.status is status]
        ax.scatter(xs, ys, s=4, color=color, label=status.value)
    ax.set_xlabel("submitted at (s)")
    ax.set_ylabel("latency (s)")
    ax.set_yscale("log")
    ax.set_title(
        f"claims pipeline, SIMULATED LM engines: 0.5x, {FACTOR:.0f}x, 0.5x of "
        f"{report.capacity_rps:.1f} req/s; admission limit {report.limit}"
    )
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    progress(f"plot written to {path}")


def main(*, quick: bool, json_path: Path | None) -> int:
    base = load_config(data_dir=OUT_DIR / "data" / "overload")
    report = run_overload(
        base,
        OUT_DIR / "logs" / "overload",
        overload_s=30.0 if quick else 120.0,
        calm_s=15.0 if quick else 30.0,
        listen=f"127.0.0.1:{free_port()}",
    )
    print(report.markdown())
    _plot(report, OUT_DIR / "overload.png")
    write_json(json_path, report.to_json())
    return 0
