"""`alto soak`: does the stack hold steady? A steady open-loop load on the `alto up` stack
for N minutes, with a line per window (sent, answered, lost, latency, every process's memory
and CPU, table sizes, the broker's log, consumer lag) and a verdict at the end.

The verdict (`flat`) is the steady-state rule of issue 13, on spans of the run:
- latency: p50 and p99 of the results in the last span within `latency_tolerance` (20%) of
  those in the first span after warm-up (p95 or p90 in place of p99 where a span has too few
  results to estimate it: `soak_rules.high_quantile`);
- memory: every process's RSS at the end within `rss_tolerance` (+10%) of its RSS at the end
  of the first span;
- nothing lost: every request has a result once the load stops (after a drain).
A span is 5 minutes, or a third of the run when that is shorter (the first window of the run
is warm-up and left out). The figures are wall-clock latencies seen by this driver.

The workload is `alto chaos`'s: two in three requests of the `claims` pipeline (one LM call,
a fan-out, two levels of aggregation), the rest of `example` (no LM), modes alternating.
Results are checked against their expected output (a wrong one fails the verdict too).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alto.config import AltoConfig
from alto.infra.logstats import log_stats
from alto.infra.soak_rules import (
    DEFAULT_SPAN_S,
    SoakReport,
    Window,
    judge,
    quantile,
    verdict_text,
    window_line,
)

if TYPE_CHECKING:
    from alto.infra.openloop import Outcome
    from alto.schemas.messages import PipelineResult

log = logging.getLogger(__name__)


# -- sampling the stack ------------------------------------------------------------------


class StackSampler:
    """RSS and CPU of each child of the stack (with its own children), and the Faust
    workers' table sizes and consumer lag from their `/metrics`."""

    def __init__(self, stack: Any) -> None:
        self.stack = stack
        self._cpu: dict[str, float] = {}
        self._at = time.monotonic()

    def sample(self) -> tuple[dict[str, float], dict[str, float]]:
        """(RSS MB, CPU % since the last sample) per child of the stack, its own included.
        With generations, a worker's place is one name across them (`worker-1.g3` is
        `worker-1`): RSS is the largest of its processes (a process that grows is what the
        rule looks for), CPU the sum (both run while the older one drains)."""
        from alto.infra.processes import tree_usage

        now = time.monotonic()
        elapsed = max(1e-6, now - self._at)
        rss: dict[str, float] = {}
        cpu: dict[str, float] = {}
        totals: dict[str, float] = {}
        for name, pid in self.stack.pids().items():
            usage = tree_usage(pid)
            if usage is None:
                continue
            place = name.split(".g")[0]
            rss[place] = max(rss.get(place, 0.0), usage[0] / 2**20)
            totals[name] = usage[1]
            spent = usage[1] - self._cpu.get(name, usage[1])
            cpu[place] = cpu.get(place, 0.0) + 100 * spent / elapsed
        self._cpu, self._at = totals, now
        return rss, cpu

    def scrape(self) -> tuple[int, int]:
        """(table keys, consumer lag) summed over the Faust workers' `/metrics`."""
        keys = lag = 0
        for name, port in self.stack.metrics_ports().items():
            if not name.startswith("worker-"):
                continue
            try:
                url = f"http://127.0.0.1:{port}/metrics"
                with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - our own
                    text = resp.read().decode()
            except OSError:
                continue
            for line in text.splitlines():
                if line.startswith("alto_table_keys{"):
                    keys += int(float(line.rsplit(" ", 1)[1]))
                elif line.startswith("alto_consumer_lag{"):
                    lag += int(float(line.rsplit(" ", 1)[1]))
        return keys, lag


def broker_records(config: AltoConfig) -> dict[str, int]:
    """Records stored on the broker per topic: end offsets summed over partitions (what the
    broker reports: on the embedded broker an end is short by the last batch's tail)."""
    from confluent_kafka import Consumer, TopicPartition

    from alto.infra.client import client_settings

    consumer = Consumer(
        {**client_settings(config), "group.id": "alto-soak-probe", "enable.auto.commit": False}
    )
    try:
        topics = consumer.list_topics(timeout=10).topics
        out = {}
        for name, meta in topics.items():
            out[name] = 0
            for p in meta.partitions:
                with contextlib.suppress(Exception):
                    _low, high = consumer.get_watermark_offsets(
                        TopicPartition(name, p), timeout=5, cached=False
                    )
                    out[name] += max(0, high)
        return out
    finally:
        consumer.close()


# -- the run -------------------------------------------------------------------------------


def measure_sustainable(
    config: AltoConfig,
    *,
    in_flight: int = 64,
    duration_s: float = 60.0,
    seed: int = 1000,
    echo: bool = True,
) -> float:
    """The sustainable load of the running stack on the soak's workload: a closed loop
    keeping `in_flight` requests outstanding for `duration_s`; requests per second that
    finish after the first third (warm-up). The stack is drained before this returns."""
    from alto.infra.chaos_workload import workload
    from alto.infra.openloop import OpenLoop

    with OpenLoop(config) as loop:
        t0 = time.time()
        burst = loop.closed_loop(iter(workload(100_000, seed)), in_flight, duration_s, "calibrate")
        start = t0 + duration_s / 3
        end = time.time()
        done = sum(1 for o in burst if o.finished is not None and start <= o.finished)
        loop.wait(burst, 120.0)
    rps = done / (end - start)
    if echo:
        print(
            f"calibration: {in_flight} requests in flight for {duration_s:.0f} s: "
            f"{rps:.2f} requests/s finished after the first third",
            flush=True,
        )
    return rps


def run_soak(
    config: AltoConfig,
    *,
    minutes: float,
    rate: float,
    window_s: float = 60.0,
    workers: int = 2,
    lm_instances: int = 1,
    seed: int = 1,
    workdir: Path | None = None,
    lost_after_s: float = 60.0,
    drain_timeout_s: float = 120.0,
    span_s: float = DEFAULT_SPAN_S,
    latency_tolerance: float = 0.2,
    rss_tolerance: float = 0.1,
    exempt: tuple[str, ...] = (),
    listen: str | None = None,
    echo: bool = True,
) -> SoakReport:
    """Start the stack (SIMULATED LM engine; the embedded broker on `listen`, a free port by
    default, unless ALTO_KAFKA__BOOTSTRAP_SERVERS is set), drive it at `rate` requests/s for
    `minutes`, print a line per `window_s`, and judge the run (`exempt`: processes whose RSS
    is reported but not judged). Everything started is stopped."""
    from alto.infra.broker import free_port
    from alto.infra.chaos_workload import workload, wrong_reason
    from alto.infra.openloop import OpenLoop
    from alto.infra.stack import Stack

    if config.pipelines:
        pipelines = config.pipelines
    else:
        pipelines = ("claims", "example")
    external = config.names_a_broker  # ALTO_KAFKA__BOOTSTRAP_SERVERS
    config = config.with_overrides(
        pipelines=pipelines,
        lm={"engine": "sim"},
    )
    if listen is None and not external:
        listen = f"127.0.0.1:{free_port()}"
    stack = Stack(config, workers=workers, lm_instances=lm_instances, engine="sim",
                  listen=listen, workdir=workdir)  # fmt: skip
    windows: list[Window] = []
    sustainable: float | None = None
    with stack:
        stack.wait_ready()
        if rate <= 0:
            sustainable = measure_sustainable(stack.config, seed=seed + 1000, echo=echo)
            rate = sustainable / 2
            if echo:
                print(
                    f"sustainable load {sustainable:.2f} requests/s: soaking at half, {rate:.2f}/s",
                    flush=True,
                )
        total = max(1, round(minutes * 60 * rate))
        work = workload(total, seed)
        offsets = [i / rate for i in range(total)]
        sampler = StackSampler(stack)
        sampler.sample()
        with OpenLoop(stack.config) as loop:
            t0 = time.time()
            marks = {"next": window_s, "start": 0.0, "supervised": 0.0}

            def close_window(now_s: float) -> None:
                start = marks["start"]
                outcomes = list(loop.outcomes.values())
                sent = sum(1 for o in outcomes if start <= o.submitted - t0 < now_s)
                done = [
                    o for o in outcomes
                    if o.finished is not None and start <= o.finished - t0 < now_s
                ]  # fmt: skip
                lost = sum(
                    1 for o in outcomes
                    if o.finished is None and now_s - (o.submitted - t0) >= lost_after_s
                )  # fmt: skip
                lat = [o.latency_s for o in done]
                rss, cpu = sampler.sample()
                keys, lag = sampler.scrape()
                topics = broker_records(stack.config)
                w = Window(
                    start, now_s, sent, len(done), lost, quantile(lat, 0.5),
                    quantile(lat, 0.99), rss, cpu, keys, sum(topics.values()), topics, lag, lat,
                )  # fmt: skip
                windows.append(w)
                if echo:
                    print(window_line(w), flush=True)
                marks["start"] = now_s
                marks["next"] = now_s + window_s

            def tick(_: float) -> None:
                now_s = time.time() - t0
                if now_s >= marks["next"]:
                    close_window(now_s)
                if now_s - marks["supervised"] >= 1.0:  # restarts, and generations' rotation
                    marks["supervised"] = now_s
                    stack.supervise()

            loop.run(work, offsets, tick=tick)
            while time.time() - t0 < offsets[-1] + 1 / rate:
                loop.poll(0.05)
                tick(0.0)
            close_window(time.time() - t0)
            loop.wait(loop.outcomes.values(), drain_timeout_s)
            outcomes = list(loop.outcomes.values())
        logs = log_stats(stack.config)
    lost = sum(1 for o in outcomes if o.result is None)
    wrong = sum(1 for o in outcomes if o.result is not None and wrong_reason(o.request, o.result))
    verdict = judge(
        windows,
        lost,
        wrong,
        span_s=span_s,
        latency_tolerance=latency_tolerance,
        rss_tolerance=rss_tolerance,
        # Expiry balances new state once the retention has passed, a sweep has run and the
        # workers' gauge (refreshed every few seconds) has caught up.
        settle_s=max(config.state.retention_s, config.state.results_retention_s)
        + config.state.sweep_s
        + window_s,
        exempt=exempt,
    )
    return SoakReport(
        rate=rate,
        minutes=minutes,
        windows=windows,
        verdict=verdict,
        sent=len(outcomes),
        answered=sum(1 for o in outcomes if o.result is not None),
        duplicated=sum(1 for o in outcomes if o.results > 1),
        duplicates=[describe_duplicate(o) for o in outcomes if o.extra],
        partitions=logs,
        sustainable_rps=sustainable,
    )


def describe_duplicate(outcome: Outcome) -> str:
    """A request answered more than once: each result's status, when it was completed and
    which workers its trace went through (a generation's workers are named after it)."""

    def one(result: PipelineResult) -> str:
        workers = sorted({w for span in result.trace for w in span.processed_by})
        return f"{result.status.value} at {result.completed_at_ms} by {','.join(workers)}"

    first = outcome.result
    results = [one(r) for r in ([first] if first is not None else []) + outcome.extra]
    return f"{outcome.request_id} ({outcome.request.pipeline}): " + "; ".join(results)


def plot(report: SoakReport, path: Path) -> None:
    """Latency (p50, p99), broker RSS and every process's RSS against time, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ws = report.windows
    t = [w.end_s / 60 for w in ws]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    ax1.plot(t, [w.p50_s for w in ws], marker="o", label="p50")
    ax1.plot(t, [w.p99_s for w in ws], marker="o", label="p99")
    ax1.set_ylabel("latency (s)")
    ax1.set_title(
        f"alto soak: {report.rate:g} req/s, SIMULATED LM engine "
        f"({'flat' if report.verdict.flat else 'not flat'})"
    )
    ax1.legend()
    ax1.grid(alpha=0.3)
    for name in sorted({n for w in ws for n in w.rss_mb}):
        ax2.plot(t, [w.rss_mb.get(name, math.nan) for w in ws], marker=".", label=name)
    ax2.set_ylabel("RSS (MB)")
    ax2.set_xlabel("minutes")
    ax2.legend(fontsize="small")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_soak_command(
    config: AltoConfig,
    *,
    minutes: float,
    rate: float,
    window_s: float,
    workers: int,
    lm_instances: int,
    json_path: str | None,
    plot_path: str | None,
) -> int:
    what = f"{rate:g} requests/s" if rate > 0 else "half the sustainable load"
    print(
        f"alto soak: {what} for {minutes:g} min (claims and example pipelines, both modes; "
        f"SIMULATED LM engine), a line every {window_s:g} s",
        flush=True,
    )
    report = run_soak(
        config,
        minutes=minutes,
        rate=rate,
        window_s=window_s,
        workers=workers,
        lm_instances=lm_instances,
    )
    print(verdict_text(report), flush=True)
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(report.to_json(), indent=2) + "\n")
    if plot_path:
        plot(report, Path(plot_path))
        print(f"plot: {plot_path}", flush=True)
    return 0 if report.verdict.flat else 1


__all__ = ["SoakReport", "Window", "judge", "run_soak", "run_soak_command", "verdict_text"]
