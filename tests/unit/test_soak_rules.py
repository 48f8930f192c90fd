"""The steady-state rules of `alto soak` and `alto bench hop --minutes`, on made-up windows."""

from __future__ import annotations

import math

from alto.bench.hop import drift, windows
from alto.infra.soak import Window, judge
from alto.infra.soak_rules import high_quantile


def _w(i: int, lat: float, rss: dict[str, float], keys: int = 100) -> Window:
    start = 60.0 * i
    return Window(
        start_s=start, end_s=start + 60, sent=60, answered=60, lost=0, p50_s=lat, p99_s=lat,
        rss_mb=rss, cpu_pct={}, table_keys=keys, broker_records=0, topic_records={}, lag=0,
        latencies=[lat] * 60,
    )  # fmt: skip


def test_a_steady_run_is_flat() -> None:
    ws = [_w(i, 1.0, {"w": 100.0}) for i in range(30)]
    v = judge(ws, lost=0, wrong=0, settle_s=600)
    assert v.flat, v.reasons
    assert v.head == (60.0, 360.0) and v.tail == (1500.0, 1800.0)
    assert v.table_keys == (100, 100)


def test_latency_memory_tables_and_losses_each_fail_the_verdict() -> None:
    ws = [
        _w(i, 1.0 + (i >= 25), {"w": 100 + 2 * i, "broker": 50 + 10 * i}, keys=10 * i)
        for i in range(30)
    ]
    v = judge(ws, lost=2, wrong=1, settle_s=600)
    text = " | ".join(v.reasons)
    assert not v.flat
    assert "p50 grew" in text and "p95 grew" in text  # 300 results per span: p99 unsupported
    assert "w RSS grew" in text and "broker RSS grew" in text
    assert "table keys grew" in text
    assert "2 requests lost" in text and "1 results wrong" in text
    exempt = judge(ws, lost=0, wrong=0, exempt=("broker", "w"), latency_tolerance=1.5)
    assert exempt.flat, exempt.reasons  # no settle_s: tables not judged
    assert exempt.table_keys is None


def test_the_high_quantile_is_one_the_spans_sample_supports() -> None:
    assert [high_quantile(n) for n in (20, 50, 99, 100, 499, 500, 5000)] == [
        0.9, 0.9, 0.9, 0.95, 0.95, 0.99, 0.99
    ]  # fmt: skip
    # 90 results per span (the test's soak): one slow result in the last span is p99 there,
    # not p90; a whole slow tail is both.
    ws = [_w(i, 1.0, {"w": 100.0}) for i in range(8)]
    for w in ws:
        w.latencies = [1.0] * 30
    ws[-1].latencies[0] = 10.0
    v = judge(ws, lost=0, wrong=0, span_s=90)
    assert v.flat and v.high_q == 0.9 and v.high == (1.0, 1.0), v
    ws[-1].latencies[:5] = [10.0] * 5
    ws[-2].latencies[:5] = [10.0] * 5
    assert "p90 grew from 1.000 s to 10.000 s" in " ".join(judge(ws, 0, 0, span_s=90).reasons)


def test_memory_is_judged_on_each_spans_peak_a_sawtooth_is_flat_a_leak_is_not() -> None:
    # Freed every 5 minutes (generations deleted), wherever the run happens to end.
    for end in (30, 32):
        ws = [_w(i, 1.0, {"broker": 150 + 30 * (i % 5)}) for i in range(end)]
        v = judge(ws, lost=0, wrong=0)
        assert v.flat, (end, v.reasons)
    # The same sawtooth on a rising floor is growth.
    ws = [_w(i, 1.0, {"broker": 150 + 30 * (i % 5) + 4 * i}) for i in range(30)]
    assert "broker RSS grew" in " ".join(judge(ws, lost=0, wrong=0).reasons)


def test_the_window_after_the_last_arrival_is_not_judged() -> None:
    ws = [_w(i, 1.0, {"w": 100.0}) for i in range(10)]
    ws.append(Window(600, 601, 0, 0, 0, math.nan, math.nan, {"w": 100.0}, {}, 100, 0, {}, 0))
    assert judge(ws, lost=0, wrong=0).flat


def test_hop_windows_and_drift() -> None:
    series = [(t / 10, 5.0 + (t >= 500) * 100) for t in range(600)]  # 60 s, slow after 50 s
    ws = windows(series)
    assert [w["start_s"] for w in ws] == [0, 10, 20, 30, 40, 50]
    assert ws[0]["p50_ms"] == 5.0 and ws[-1]["p50_ms"] == 105.0
    d = drift(series, 10, 60)
    assert d["head_p50_ms"] == 5.0 and d["tail_p50_ms"] == 105.0
    # Nothing came back in the last span: NaN, never a flattering number.
    assert math.isnan(drift(series[:300], 10, 60)["tail_p50_ms"])


def test_hop_drift_of_a_short_run_reads_its_first_seconds() -> None:
    # `--quick` measures 5 s, less than the warm-up window a soak skips.
    series = [(t / 100, 2.0 if t < 250 else 4.0) for t in range(500)]
    d = drift(series, 5 / 3, 5)
    assert d["head_p50_ms"] == 2.0 and d["tail_p50_ms"] == 4.0
