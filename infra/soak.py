"""`alto soak`: does the stack hold steady? A steady open-loop load on the `alto up` stack
for N minutes, with a line per window (sent, answered, lost, latency, every process's memory
and CPU, table sizes, the broker's log, consumer lag) and a verdict at the end.

The verdict (`flat`) is the steady-state rule of issue 13, on spans of the run:
- latency: p50 and p99 of the results in the last span within `latency_tolerance` (20%) of
  those in the first span after warm-up;
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from alto.config import AltoConfig
from alto.infra.logstats import PartitionLog, log_stats

log = logging.getLogger(__name__)

WARMUP_WINDOWS = 1
DEFAULT_SPAN_S = 300.0


@dataclass
class Window:
    """One line of the soak's report: what happened between `start_s` and `end_s`."""

    start_s: float
    end_s: float
    sent: int
    answered: int  # results that arrived in this window
    lost: int  # requests sent at least `lost_after_s` ago with no result yet (cumulative)
    p50_s: float
    p99_s: float
    rss_mb: dict[str, float]  # per process (its own children included)
    cpu_pct: dict[str, float]  # per process, over this window (100 = one core)
    table_keys: int  # keys in every table of every Faust worker
    broker_records: int  # records stored on the broker, every topic (end offsets summed)
    topic_records: dict[str, int]  # the same per topic
    lag: int  # messages behind, every partition the Faust workers consume
    latencies: list[float] = field(default_factory=list, repr=False)


@dataclass
class Verdict:
    flat: bool
    reasons: list[str]
    head: tuple[float, float]  # the first span's (start, end), seconds into the run
    tail: tuple[float, float]
    p50: tuple[float, float]  # (first span, last span)
    p99: tuple[float, float]
    rss_growth: dict[str, float]  # process -> end RSS / RSS at the end of the first span
    lost: int
    wrong: int
    table_keys: tuple[int, int] | None = None  # most keys: first span after retention, last


@dataclass
class SoakReport:
    rate: float
    minutes: float
    windows: list[Window]
    verdict: Verdict
    sent: int
    answered: int
    duplicated: int
    partitions: list[PartitionLog] = field(default_factory=list)  # the broker's log at the end
    sustainable_rps: float | None = None  # measured first when the rate was `auto`

    def to_json(self) -> dict[str, Any]:
        return {
            "rate": self.rate,
            "sustainable_rps": self.sustainable_rps,
            "minutes": self.minutes,
            "sent": self.sent,
            "answered": self.answered,
            "duplicated": self.duplicated,
            "verdict": asdict(self.verdict),
            "partitions": [asdict(p) for p in self.partitions],
            "windows": [
                {k: v for k, v in asdict(w).items() if k != "latencies"} for w in self.windows
            ],
        }


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def window_line(w: Window) -> str:
    rss = " ".join(f"{name}={mb:.0f}" for name, mb in sorted(w.rss_mb.items()))
    cpu = " ".join(f"{name}={pct:.0f}" for name, pct in sorted(w.cpu_pct.items()))
    return (
        f"{w.end_s / 60:5.1f} min  sent {w.sent:5d}  answered {w.answered:5d}  lost {w.lost:3d}  "
        f"p50 {w.p50_s:6.3f} s  p99 {w.p99_s:6.3f} s  tables {w.table_keys:6d}  "
        f"broker records {w.broker_records:8d}  lag {w.lag:5d}\n"
        f"           RSS MB: {rss}\n           CPU %: {cpu}"
    )


def judge(
    windows: list[Window],
    lost: int,
    wrong: int,
    *,
    span_s: float = DEFAULT_SPAN_S,
    latency_tolerance: float = 0.2,
    rss_tolerance: float = 0.1,
    settle_s: float | None = None,
    table_tolerance: float = 0.5,
    exempt: tuple[str, ...] = (),
) -> Verdict:
    """The steady-state verdict over `windows` (see the module's docstring).

    With `settle_s` (the state retention plus a sweep: when expiry starts to balance new
    state), the tables' keys must plateau too: the most in the last span at most
    `table_tolerance` above the most in the first span after `settle_s` (not judged when the
    run is too short to have such a span before its last)."""
    # Windows with results: the one that closes the run after the last arrival may have none.
    measured = [w for w in windows[WARMUP_WINDOWS:] if w.latencies] or windows
    if not measured:
        return Verdict(False, ["no windows"], (0, 0), (0, 0), (0, 0), (0, 0), {}, lost, wrong)
    start, end = measured[0].start_s, measured[-1].end_s
    span = min(span_s, (end - start) / 3)
    head = [w for w in measured if w.end_s <= start + span + 1e-6] or measured[:1]
    tail = [w for w in measured if w.start_s >= end - span - 1e-6] or measured[-1:]
    head_lat = [x for w in head for x in w.latencies]
    tail_lat = [x for w in tail for x in w.latencies]
    p50 = (_quantile(head_lat, 0.5), _quantile(tail_lat, 0.5))
    p99 = (_quantile(head_lat, 0.99), _quantile(tail_lat, 0.99))
    reasons = []
    for name, (a, b) in (("p50", p50), ("p99", p99)):
        if not (b <= a * (1 + latency_tolerance)):
            reasons.append(f"{name} grew from {a:.3f} s to {b:.3f} s (> +{latency_tolerance:.0%})")
    base = head[-1].rss_mb
    growth = {
        name: tail[-1].rss_mb[name] / mb
        for name, mb in base.items()
        if name in tail[-1].rss_mb and mb > 0
    }
    for name, g in sorted(growth.items()):
        if g > 1 + rss_tolerance and name not in exempt:
            reasons.append(f"{name} RSS grew {g - 1:+.0%} (> +{rss_tolerance:.0%})")
    tables: tuple[int, int] | None = None
    if settle_s is not None:
        settled = [w for w in measured if w.start_s >= settle_s]
        ref = [w for w in settled if w.end_s <= settled[0].start_s + span + 1e-6] if settled else []
        if ref and ref[-1].end_s <= tail[0].start_s + 1e-6:
            tables = (max(w.table_keys for w in ref), max(w.table_keys for w in tail))
            if tables[1] > tables[0] * (1 + table_tolerance):
                reasons.append(
                    f"table keys grew from {tables[0]} to {tables[1]} after the retention "
                    f"(> +{table_tolerance:.0%})"
                )
    if lost:
        reasons.append(f"{lost} requests lost")
    if wrong:
        reasons.append(f"{wrong} results wrong")
    return Verdict(
        flat=not reasons,
        reasons=reasons,
        head=(head[0].start_s, head[-1].end_s),
        tail=(tail[0].start_s, tail[-1].end_s),
        p50=p50,
        p99=p99,
        rss_growth=growth,
        lost=lost,
        wrong=wrong,
        table_keys=tables,
    )


# -- sampling the stack ------------------------------------------------------------------


class _Sampler:
    """RSS and CPU of each child of the stack (with its own children), and the Faust
    workers' table sizes and consumer lag from their `/metrics`."""

    def __init__(self, stack: Any) -> None:
        self.stack = stack
        self._cpu: dict[str, float] = {}
        self._at = time.monotonic()

    def sample(self) -> tuple[dict[str, float], dict[str, float]]:
        """(RSS MB, CPU % since the last sample) per child of the stack, its own included."""
        from alto.infra.processes import tree_usage

        now = time.monotonic()
        elapsed = max(1e-6, now - self._at)
        rss, cpu, totals = {}, {}, {}
        for name, pid in self.stack.pids().items():
            usage = tree_usage(pid)
            if usage is None:
                continue
            rss[name] = usage[0] / 2**20
            totals[name] = usage[1]
            cpu[name] = 100 * (usage[1] - self._cpu.get(name, usage[1])) / elapsed
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
    from alto.infra.chaos import workload
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
    default, unless ALTO_BOOTSTRAP_SERVERS is set), drive it at `rate` requests/s for
    `minutes`, print a line per `window_s`, and judge the run (`exempt`: processes whose RSS
    is reported but not judged). Everything started is stopped."""
    from alto.infra.broker import free_port
    from alto.infra.chaos import workload, wrong_reason
    from alto.infra.openloop import OpenLoop
    from alto.infra.stack import Stack

    if config.pipelines:
        pipelines = config.pipelines
    else:
        pipelines = ("claims", "example")
    external = "bootstrap_servers" in config.model_fields_set  # ALTO_BOOTSTRAP_SERVERS
    config = config.with_overrides(pipelines=pipelines, engine="sim")
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
        sampler = _Sampler(stack)
        sampler.sample()
        with OpenLoop(stack.config) as loop:
            t0 = time.time()
            marks = {"next": window_s, "start": 0.0}

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
                    start, now_s, sent, len(done), lost, _quantile(lat, 0.5),
                    _quantile(lat, 0.99), rss, cpu, keys, sum(topics.values()), topics, lag, lat,
                )  # fmt: skip
                windows.append(w)
                if echo:
                    print(window_line(w), flush=True)
                marks["start"] = now_s
                marks["next"] = now_s + window_s
                stack.supervise()

            def tick(_: float) -> None:
                now_s = time.time() - t0
                if now_s >= marks["next"]:
                    close_window(now_s)

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
        settle_s=max(config.state_retention_s, config.results_retention_s)
        + config.state_sweep_s
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
        partitions=logs,
        sustainable_rps=sustainable,
    )


def verdict_text(report: SoakReport) -> str:
    v = report.verdict
    lines = (
        []
        if report.sustainable_rps is None
        else [
            f"alto soak: sustainable load {report.sustainable_rps:.2f}/s (closed loop, 64 in flight)"
        ]
    )
    lines += [
        f"alto soak: {'FLAT' if v.flat else 'NOT FLAT'}: {report.sent} sent at "
        f"{report.rate:g}/s for {report.minutes:g} min, {report.answered} answered, "
        f"{v.lost} lost, {v.wrong} wrong, {report.duplicated} duplicated",
        f"  p50 {v.p50[0]:.3f} -> {v.p50[1]:.3f} s, p99 {v.p99[0]:.3f} -> {v.p99[1]:.3f} s "
        f"(minutes {v.head[0] / 60:.1f}-{v.head[1] / 60:.1f} against "
        f"{v.tail[0] / 60:.1f}-{v.tail[1] / 60:.1f})",
        "  RSS at the end / at the end of the first span: "
        + " ".join(f"{n}={g:.2f}" for n, g in sorted(v.rss_growth.items())),
        "  table keys, most in the first span after the retention -> in the last: "
        + (
            "not judged (run shorter than retention + 2 spans)"
            if v.table_keys is None
            else f"{v.table_keys[0]} -> {v.table_keys[1]}"
        ),
    ]
    lines += [f"  - {reason}" for reason in v.reasons]
    if report.partitions:
        batches = sum(p.batches for p in report.partitions)
        records = sum(p.records for p in report.partitions)
        lines.append(
            f"  broker log at the end: {records} records in {batches} batches "
            f"({records / max(1, batches):.1f} records per batch); the partitions with most:"
        )
        top = sorted(report.partitions, key=lambda p: -p.batches)[:8]
        lines += [
            f"    {p.topic}[{p.partition}]: {p.batches} batches, {p.records} records" for p in top
        ]
    return "\n".join(lines)


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


__all__ = ["SoakReport", "Verdict", "Window", "judge", "run_soak", "run_soak_command"]
