"""`alto bench hop`: latency one stage hop adds, and the quanta/s one worker sustains.

A single Faust worker runs only the `hop` pipeline's relay stage (a map that returns its
input). The benchmark produces quanta straight onto the relay's input topic and reads
the relay's output topic with its own consumer, so each figure covers
produce -> broker -> agent (decode, process, encode) -> produce -> broker -> consumer.
1. Latency: quanta at a steady 1,000/s; p50/p99 of the per-quantum round trip. Also at
   `LOW_RATE` (10/s, one record at a time: what a hop costs a request at low load).
2. Throughput: a backlog produced as fast as possible; the worker's output rate, from the
   create times its producer stamps on the outputs (the reader may fall behind).
Both latencies are measured again without the worker (produce -> broker -> consume).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import psutil
from confluent_kafka import Producer

from alto.agents import hop
from alto.bench.common import OUT_DIR, bench_config, percentile, progress, write_json
from alto.infra.client import TopicReader
from alto.infra.logstats import log_stats
from alto.infra.processes import WorkerProcess, wait_assigned
from alto.kafka import client_settings, ensure_topics
from alto.schemas.messages import Mode, Quantum, QuantumKind
from alto.streams.pipeline import REQUEST


def _quantum(i: int, sent_ns: int) -> bytes:
    return Quantum(
        request_id=f"hop-{i}",
        pipeline=hop.NAME,
        mode=Mode.STREAMING,
        stage=REQUEST,
        path=(),
        seq=0,
        kind=QuantumKind.DATA,
        submitted_at_ms=sent_ns // 1_000_000,
        created_at_ms=sent_ns // 1_000_000,
        payload=json.dumps({"i": i, "t": sent_ns}),
    ).encode()


def _paced_producer(
    producer: Producer, topic: str, rate: float, seconds: float, start_i: int
) -> int:
    n = int(rate * seconds)
    t0 = time.perf_counter()
    for k in range(n):
        target = t0 + k / rate
        while (delay := target - time.perf_counter()) > 0:
            time.sleep(min(delay, 0.001))
        i = start_i + k
        producer.produce(topic, key=f"hop-{i}|".encode(), value=_quantum(i, time.time_ns()))
        producer.poll(0)
    producer.flush(30)
    return n


def _read(reader: TopicReader, want: int, timeout_s: float) -> list[tuple[int, int, int]]:
    """(index, sent_ns, received_ns) of the relay's outputs."""
    got: list[tuple[int, int, int]] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < want and time.monotonic() < deadline:
        for _, value in reader.poll(0.2):
            now = time.time_ns()
            payload = json.loads(Quantum.decode(value).payload or "{}")
            got.append((payload["i"], payload["t"], now))
    return got


def _count(reader: TopicReader, want: int, timeout_s: float) -> list[int]:
    """When the worker produced each of `want` outputs (its producer's create time, ms): the
    worker's pace, whenever this reader gets to them (it starts once the backlog is sent, by
    when a fast worker has relayed most of it). Not decoded, to leave the CPU to the worker."""
    emitted: list[int] = []
    deadline = time.monotonic() + timeout_s
    while len(emitted) < want and time.monotonic() < deadline:
        emitted += [ts for _, _, ts in reader.poll_records(0.2)]
    return emitted


def _latency(
    producer: Producer,
    reader: TopicReader,
    topic: str,
    rate: float,
    seconds: float,
    start_i: int,
    grace_s: float = 60.0,
) -> tuple[list[tuple[float, float]], int]:
    """Paced quanta onto `topic`, read back by `reader` (for at most `grace_s` after the
    last send): (seconds since the first send, latency ms) in send order, and how many were
    lost."""
    result: dict[str, Any] = {}
    thread = threading.Thread(
        target=lambda: result.update(n=_paced_producer(producer, topic, rate, seconds, start_i))
    )
    thread.start()
    got = _read(reader, int(rate * seconds), seconds + grace_s)
    thread.join()
    got.sort(key=lambda g: g[1])
    t0 = got[0][1] if got else 0
    series = [((sent - t0) / 1e9, (recv - sent) / 1e6) for _, sent, recv in got]
    return series, result["n"] - len(got)


WINDOW_S = 10.0
LOW_RATE = 10.0  # quanta/s: each travels alone, as a request's quanta do at low load


def windows(series: list[tuple[float, float]], width_s: float = WINDOW_S) -> list[dict[str, Any]]:
    """p50/p99/max latency (ms) per `width_s` window of send time."""
    buckets: dict[int, list[float]] = {}
    for t, ms in series:
        buckets.setdefault(int(t // width_s), []).append(ms)
    out = []
    for k in sorted(buckets):
        values = sorted(buckets[k])
        out.append(
            {
                "start_s": k * width_s,
                "n": len(values),
                "p50_ms": round(percentile(values, 50), 3),
                "p99_ms": round(percentile(values, 99), 3),
                "max_ms": round(values[-1], 3),
            }
        )
    return out


def drift(series: list[tuple[float, float]], span_s: float, duration_s: float) -> dict[str, float]:
    """p50 and p99 (ms) in the first and the last `span_s` of a run of `duration_s` (by send
    time), after its first window (warm-up): the soak's steady-state rule. A span with no
    output at all reads as NaN (quanta sent then never came back)."""
    if not series:
        return {}
    # A short run (`--quick`) has no window to spare: its warm-up phase has to do.
    skip = WINDOW_S if duration_s > 2 * WINDOW_S else 0.0
    head = sorted(ms for t, ms in series if skip <= t < skip + span_s)
    tail = sorted(ms for t, ms in series if t >= duration_s - span_s)
    return {
        "head_p50_ms": round(percentile(head, 50), 3),
        "head_p99_ms": round(percentile(head, 99), 3),
        "tail_p50_ms": round(percentile(tail, 50), 3),
        "tail_p99_ms": round(percentile(tail, 99), 3),
        "span_s": span_s,
    }


def main(*, quick: bool, json_path: Path | None, minutes: float | None = None) -> int:
    """`minutes`: a soak, the latency phase held that long, reported per 10 s window."""
    rate, latency_s = 1000.0, (5.0 if quick else 20.0)
    if minutes is not None:
        latency_s = minutes * 60
    backlog = 10_000 if quick else 40_000
    # Partition count: several, as a real deployment has; one worker owns them all.
    with bench_config(
        "hop", kafka={"partitions": 4}, pipelines=("hop",), roles=("stages",)
    ) as config:
        topology = hop.build()
        relay_topic = topology.stage_topic(config.internal_prefix, "relay")
        direct_topic = config.topic("hop-direct")
        ensure_topics(
            config,
            {
                relay_topic: config.kafka.partitions,
                config.sink_topic: config.kafka.partitions,
                direct_topic: 4,
            },
        )
        worker = WorkerProcess(config, "hop-worker", OUT_DIR / "logs")
        try:
            wait_assigned([worker], [relay_topic], config.kafka.partitions)
            producer = Producer({**client_settings(config), "linger.ms": 0, "acks": 1})
            reader = TopicReader(config, config.sink_topic, from_beginning=False)
            # Warm-up: let the worker's first-event costs pass before measuring. Sent while
            # the reader polls: a reader from the end resolves that end at its first fetch,
            # and what came before is not its to read.
            _latency(producer, reader, relay_topic, 500, 1.0, 0, grace_s=5)
            low_s = 10.0 if quick else 20.0
            progress(f"latency through the relay: {LOW_RATE:.0f} quanta/s for {low_s:.0f} s")
            low, _ = _latency(producer, reader, relay_topic, LOW_RATE, low_s, 5_000, grace_s=5)
            progress(f"latency through the relay: {rate:.0f} quanta/s for {latency_s:.0f} s")
            series, lost_latency = _latency(producer, reader, relay_topic, rate, latency_s, 10_000)
            lat_ms = sorted(ms for _, ms in series)
            progress(f"broker alone (no worker): {rate:.0f} quanta/s for {latency_s:.0f} s")
            direct_reader = TopicReader(config, direct_topic, from_beginning=False)
            _latency(producer, direct_reader, direct_topic, 500, 1.0, 400_000, grace_s=5)
            low_direct, _ = _latency(
                producer, direct_reader, direct_topic, LOW_RATE, low_s, 450_000, grace_s=5
            )
            direct, _ = _latency(producer, direct_reader, direct_topic, rate, latency_s, 500_000)
            direct_ms = sorted(ms for _, ms in direct)
            low_ms = sorted(ms for _, ms in low)
            low_direct_ms = sorted(ms for _, ms in low_direct)
            direct_reader.close()

            progress(f"throughput: backlog of {backlog} quanta")
            worker_proc = psutil.Process(worker.pid)
            cpu_before = sum(worker_proc.cpu_times()[:2])
            t_produce = time.perf_counter()
            base = 1_000_000
            for k in range(backlog):
                producer.produce(
                    relay_topic,
                    key=f"hop-{base + k}|".encode(),
                    value=_quantum(base + k, time.time_ns()),
                )
                if k % 1000 == 0:
                    producer.poll(0)
            producer.flush(60)
            produce_s = time.perf_counter() - t_produce
            out = _count(reader, backlog, 300)
            worker_cpu_s = sum(worker_proc.cpu_times()[:2]) - cpu_before
            reader.close()
            logs = log_stats(config, [relay_topic, config.sink_topic])
        finally:
            worker.stop()
    emitted = sorted(out)
    span_s = (emitted[-1] - emitted[0]) / 1e3 if len(emitted) > 1 else float("nan")
    throughput = (len(emitted) - 1) / span_s if span_s == span_s and span_s > 0 else 0.0
    figures = {
        "p50_ms": round(percentile(lat_ms, 50), 3),
        "p99_ms": round(percentile(lat_ms, 99), 3),
        "max_ms": round(lat_ms[-1], 3) if lat_ms else None,
        "latency_samples": len(lat_ms),
        "latency_lost": lost_latency,
        "broker_only_p50_ms": round(percentile(direct_ms, 50), 3),
        "broker_only_p99_ms": round(percentile(direct_ms, 99), 3),
        "offered_rate": rate,
        "low_rate": LOW_RATE,
        "low_p50_ms": round(percentile(low_ms, 50), 3),
        "low_p99_ms": round(percentile(low_ms, 99), 3),
        "low_broker_only_p50_ms": round(percentile(low_direct_ms, 50), 3),
        "low_broker_only_p99_ms": round(percentile(low_direct_ms, 99), 3),
        "max_quanta_per_s": round(throughput, 1),
        "backlog": backlog,
        "backlog_received": len(emitted),
        "backlog_produce_s": round(produce_s, 3),
        "worker_cpu_s": round(worker_cpu_s, 2),
        "quanta_per_worker_cpu_s": round(len(emitted) / worker_cpu_s, 1) if worker_cpu_s else None,
        "partitions": 4,
        "quick": quick,
        "windows": windows(series),
        "drift": drift(series, min(300.0, latency_s / 3), latency_s),
        "broker_batches": sum(p.batches for p in logs),
        "broker_records": sum(p.records for p in logs),
    }
    print("## alto bench hop (one worker process, relay stage, embedded broker)\n")
    print(
        "Broker, worker and this client share the machine's cores; the CPU-second figure "
        "is the worker's own cost.\n"
    )
    print("| metric | measured | goal |")
    print("|---|---|---|")
    print(f"| hop latency p50 at {rate:.0f} quanta/s | {figures['p50_ms']} ms | <= 3 ms |")
    print(f"| hop latency p99 at {rate:.0f} quanta/s | {figures['p99_ms']} ms | <= 15 ms |")
    print(f"| hop latency max | {figures['max_ms']} ms | |")
    print(
        f"| same path without the worker (produce -> broker -> consume) p50 / p99 | "
        f"{figures['broker_only_p50_ms']} / {figures['broker_only_p99_ms']} ms | |"
    )
    print(
        f"| at {LOW_RATE:.0f} quanta/s (one at a time): hop p50 / p99, and without the worker | "
        f"{figures['low_p50_ms']} / {figures['low_p99_ms']} ms, "
        f"{figures['low_broker_only_p50_ms']} / {figures['low_broker_only_p99_ms']} ms | |"
    )
    print(
        f"| quanta/s one worker sustains (wall clock) | {figures['max_quanta_per_s']} | >= 10,000 |"
    )
    print(
        f"| quanta per worker CPU-second (capacity with a core of its own) | "
        f"{figures['quanta_per_worker_cpu_s']} | |"
    )
    print(f"| samples (latency / backlog) | {len(lat_ms)} / {len(emitted)} of {backlog} | |")
    d = figures["drift"]
    if d:
        print(
            f"| p50 / p99, first {d['span_s']:.0f} s after warm-up -> last {d['span_s']:.0f} s | "
            f"{d['head_p50_ms']} / {d['head_p99_ms']} -> {d['tail_p50_ms']} / "
            f"{d['tail_p99_ms']} ms | within +20% |"
        )
    print(
        f"| broker log of the relay's topics at the end | {figures['broker_records']} records "
        f"in {figures['broker_batches']} batches | |"
    )
    if minutes is not None:
        print("\nLatency per 10 s window (send time):\n")
        print("| from s | quanta | p50 ms | p99 ms | max ms |")
        print("|---|---|---|---|---|")
        for w in figures["windows"]:
            print(
                f"| {w['start_s']:.0f} | {w['n']} | {w['p50_ms']} | {w['p99_ms']} | {w['max_ms']} |"
            )
    _plot(lat_ms, series)
    write_json(json_path, figures)
    return 0


def _plot(lat_ms: list[float], series: list[tuple[float, float]]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        progress("matplotlib not installed; no plot")
        return
    OUT_DIR.mkdir(exist_ok=True)
    fig, (ax, over_time) = plt.subplots(1, 2, figsize=(11, 3.5))
    over_time.plot([t for t, _ in series], [ms for _, ms in series], ",", alpha=0.5)
    over_time.set_yscale("log")
    over_time.set_xlabel("seconds since the first quantum was sent")
    over_time.set_ylabel("hop latency (ms)")
    over_time.set_title("latency over the run (a growing backlog shows as a ramp)")
    ys = [i / max(1, len(lat_ms) - 1) for i in range(len(lat_ms))]
    ax.plot(lat_ms, ys)
    ax.set_xscale("log")
    ax.set_xlabel("hop latency (ms), produce -> agent -> produce -> consume")
    ax.set_ylabel("fraction of quanta")
    ax.axvline(3, linestyle="--", color="grey")
    ax.axvline(15, linestyle=":", color="grey")
    ax.set_title("alto bench hop: latency CDF at 1,000 quanta/s")
    fig.tight_layout()
    fig.savefig(OUT_DIR / "hop_latency.png", dpi=100)
    progress(f"plot written to {OUT_DIR / 'hop_latency.png'}")
