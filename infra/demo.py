"""`alto demo`: the main job on the embedded defaults, end to end, in the foreground.

Starts the embedded broker and Faust workers, sends example requests (real text) in
streaming and baseline mode, shows results as they arrive, then prints a summary with
per-stage time from the results' traces, checks every result against a direct
computation, and shuts everything down.
"""

from __future__ import annotations

import collections
import json
import shutil
import tempfile
import time
from pathlib import Path

from alto.agents import example
from alto.agents.runtime import create_app
from alto.config import load_config
from alto.infra.broker import EmbeddedBroker
from alto.infra.client import Submitter, TopicReader, new_request, stage_windows
from alto.infra.processes import WorkerProcess, wait_assigned
from alto.kafka import ensure_topics
from alto.schemas.messages import Mode, PipelineResult, ResultStatus


def run_demo(*, requests: int, workers: int, mode: str) -> int:
    modes = [Mode.STREAMING, Mode.BASELINE] if mode == "both" else [Mode.parse(mode)]
    workdir = Path(tempfile.mkdtemp(prefix="alto-demo-"))
    print(f"alto demo: embedded broker + {workers} Faust workers, pipeline {example.NAME!r}")
    with EmbeddedBroker() as broker:
        config = load_config(
            kafka={"bootstrap_servers": broker.bootstrap_servers, "partitions": 4},
            data_dir=workdir / "data",
        )
        topology = example.build()
        print(f"  broker (Tansu) on {broker.bootstrap_servers}")
        print(
            "  stages: "
            + " -> ".join(topology.order)
            + " (aggregates: "
            + ", ".join(f"{s} per {topology.stages[s].per}" for s in topology.level)
            + ")"
        )
        procs = [WorkerProcess(config, f"worker-{i + 1}", workdir) for i in range(workers)]
        try:
            app = create_app(config, [topology])
            ensure_topics(config, app.topic_partitions())
            topics = [
                *topology.topics(config.internal_prefix),
                config.sink_topic,
                config.requests_topic,
            ]
            t0 = time.monotonic()
            owners = wait_assigned(procs, topics, config.kafka.partitions, timeout_s=120)
            by_worker = collections.Counter(owners.values())
            print(
                f"  workers ready in {time.monotonic() - t0:.1f} s; partitions per worker: {dict(by_worker)}"
            )
            texts = example.example_texts(requests, seed=int(time.time()))
            reqs = [new_request(example.NAME, text, mode=m) for text in texts for m in modes]
            print(
                f"\nsubmitting {len(reqs)} requests ({len(texts)} texts x {', '.join(m.value.lower() for m in modes)})\n"
            )
            reader = TopicReader(config, config.results_topic)
            Submitter(config).submit_all(reqs)
            results = _follow(reader, reqs, timeout_s=120)
            reader.close()
        finally:
            for proc in procs:
                proc.stop()
    ok = _summary(reqs, results)
    shutil.rmtree(workdir, ignore_errors=True)
    print("\nstopped the workers and the broker.")
    return 0 if ok else 1


def _follow(reader: TopicReader, reqs: list, timeout_s: float) -> dict[str, PipelineResult]:  # type: ignore[type-arg]
    wanted = {r.request_id: r for r in reqs}
    got: dict[str, PipelineResult] = {}
    deadline = time.monotonic() + timeout_s
    while len(got) < len(wanted) and time.monotonic() < deadline:
        for _, value in reader.poll(0.5):
            result = PipelineResult.decode(value)
            if result.request_id not in wanted or result.request_id in got:
                continue
            got[result.request_id] = result
            out = json.loads(result.output) if result.output else None
            brief = (
                f"{out['sentences']} sentences, {out['words']} words"
                if isinstance(out, dict)
                else result.error
            )
            print(
                f"  [{len(got):>3}/{len(wanted)}] {result.request_id[:8]} {result.mode.value.lower():9} "
                f"{result.status.value:6} {result.latency_ms:>6} ms  {brief}",
                flush=True,
            )
    return got


def _summary(reqs: list, results: dict[str, PipelineResult]) -> bool:  # type: ignore[type-arg]
    print("\n## results\n")
    print("| mode | requests | OK | correct | median latency ms | max latency ms |")
    print("|---|---|---|---|---|---|")
    all_ok = True
    stage_ms: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    for mode in sorted({r.mode for r in reqs}):
        mine = [r for r in reqs if r.mode is mode]
        got = [results[r.request_id] for r in mine if r.request_id in results]
        correct = sum(
            1
            for r in mine
            if r.request_id in results
            and results[r.request_id].status is ResultStatus.OK
            and json.loads(results[r.request_id].output or "null")
            == example.expected_output(r.input)
        )
        lat = sorted(g.latency_ms for g in got)
        med = lat[len(lat) // 2] if lat else float("nan")
        print(
            f"| {mode.value.lower()} | {len(mine)} | {sum(g.status is ResultStatus.OK for g in got)} | {correct} | {med} | {lat[-1] if lat else 'n/a'} |"
        )
        all_ok &= correct == len(mine)
        for g in got:
            for stage, ms in stage_windows(g).items():
                stage_ms[(mode.value.lower(), stage)].append(ms)
    print("\n## median time per stage and request (ms, from the traces)\n")
    stages = list(dict.fromkeys(stage for _, stage in stage_ms))
    modes = sorted({m for m, _ in stage_ms})
    print("| stage | " + " | ".join(modes) + " |")
    print("|---|" + "---|" * len(modes))
    for stage in stages:
        cells = []
        for m in modes:
            vals = sorted(stage_ms.get((m, stage), []))
            cells.append(f"{vals[len(vals) // 2]:.0f}" if vals else "-")
        print(f"| {stage} | " + " | ".join(cells) + " |")
    print(
        "\nevery result checked against a direct computation: "
        + ("all correct" if all_ok else "MISMATCHES")
    )
    return all_ok
