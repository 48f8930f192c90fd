"""`alto soak`'s rules, pure: what a window of the run records, and the verdict (flat or
not) from the windows (see `alto.infra.soak`)."""

from __future__ import annotations

import collections
import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from alto.infra.logstats import PartitionLog

log = logging.getLogger(__name__)


WARMUP_WINDOWS = 1
DEFAULT_SPAN_S = 300.0
# The high quantile judged is the highest of these that each span's sample supports: at
# least `BEYOND` results above it. With fewer, "p99" is the span's one slowest result and a
# single outlier decides the verdict (a CI run: 90 results per span, p99 4.2 -> 9.7 s while
# p50 went 0.96 -> 1.50 s).
HIGH_QUANTILES = (0.99, 0.95, 0.9)
BEYOND = 5


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
    high: tuple[float, float]  # the high quantile `high_q`, (first span, last span)
    high_q: float
    rss_growth: dict[str, float]  # process -> the last span's RSS peak / the first span's
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
    duplicates: list[str] = field(default_factory=list)  # each duplicated request, described

    def to_json(self) -> dict[str, Any]:
        return {
            "rate": self.rate,
            "sustainable_rps": self.sustainable_rps,
            "minutes": self.minutes,
            "sent": self.sent,
            "answered": self.answered,
            "duplicated": self.duplicated,
            "duplicates": self.duplicates,
            "verdict": asdict(self.verdict),
            "partitions": [asdict(p) for p in self.partitions],
            "windows": [
                {k: v for k, v in asdict(w).items() if k != "latencies"} for w in self.windows
            ],
        }


def quantile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def high_quantile(n: int) -> float:
    """The highest of `HIGH_QUANTILES` a sample of `n` estimates with `BEYOND` results above
    it (the lowest of them when none does)."""
    return next((q for q in HIGH_QUANTILES if n * (1 - q) >= BEYOND), HIGH_QUANTILES[-1])


def quantile_name(q: float) -> str:
    return f"p{q * 100:g}"


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
        return Verdict(False, ["no windows"], (0, 0), (0, 0), (0, 0), (0, 0), 0.5, {}, lost, wrong)
    start, end = measured[0].start_s, measured[-1].end_s
    span = min(span_s, (end - start) / 3)
    head = [w for w in measured if w.end_s <= start + span + 1e-6] or measured[:1]
    tail = [w for w in measured if w.start_s >= end - span - 1e-6] or measured[-1:]
    head_lat = [x for w in head for x in w.latencies]
    tail_lat = [x for w in tail for x in w.latencies]
    p50 = (quantile(head_lat, 0.5), quantile(tail_lat, 0.5))
    high_q = high_quantile(min(len(head_lat), len(tail_lat)))
    high = (quantile(head_lat, high_q), quantile(tail_lat, high_q))
    reasons = []
    for name, (a, b) in (("p50", p50), (quantile_name(high_q), high)):
        if not (b <= a * (1 + latency_tolerance)):
            reasons.append(f"{name} grew from {a:.3f} s to {b:.3f} s (> +{latency_tolerance:.0%})")
    # Each span's peak: a process that grows shows it in its peaks as in its last value,
    # and one that rises and falls by design (the embedded broker under generations: its
    # memory is freed when a generation is deleted) is judged on like phases.
    base = _peaks(head)
    last = _peaks(tail)
    growth = {name: last[name] / mb for name, mb in base.items() if name in last and mb > 0}
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
        high=high,
        high_q=high_q,
        rss_growth=growth,
        lost=lost,
        wrong=wrong,
        table_keys=tables,
    )


def _peaks(windows: list[Window]) -> dict[str, float]:
    peaks: dict[str, float] = {}
    for w in windows:
        for name, mb in w.rss_mb.items():
            peaks[name] = max(peaks.get(name, 0.0), mb)
    return peaks


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
        f"  p50 {v.p50[0]:.3f} -> {v.p50[1]:.3f} s, {quantile_name(v.high_q)} "
        f"{v.high[0]:.3f} -> {v.high[1]:.3f} s "
        f"(minutes {v.head[0] / 60:.1f}-{v.head[1] / 60:.1f} against "
        f"{v.tail[0] / 60:.1f}-{v.tail[1] / 60:.1f})",
        "  RSS, the last span's peak / the first span's: "
        + " ".join(f"{n}={g:.2f}" for n, g in sorted(v.rss_growth.items())),
        "  table keys, most in the first span after the retention -> in the last: "
        + (
            "not judged (run shorter than retention + 2 spans)"
            if v.table_keys is None
            else f"{v.table_keys[0]} -> {v.table_keys[1]}"
        ),
    ]
    lines += [f"  - {reason}" for reason in v.reasons]
    lines += [f"  duplicated: {d}" for d in report.duplicates[:10]]
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
        size: collections.Counter[str] = collections.Counter()
        records_of: collections.Counter[str] = collections.Counter()
        batches_of: collections.Counter[str] = collections.Counter()
        for p in report.partitions:
            size[p.topic] += p.bytes
            records_of[p.topic] += p.records
            batches_of[p.topic] += p.batches
        lines.append("  the topics holding most bytes (keys and values):")
        lines += [
            f"    {t}: {n / 2**20:.1f} MB in {records_of[t]} records, {batches_of[t]} batches"
            for t, n in size.most_common(6)
        ]
    return "\n".join(lines)
