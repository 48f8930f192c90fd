"""`alto bench idle`: what the default stack costs while nothing happens, and what its pacing
(`alto.kafka.FetchPacer`) costs the first request after an idle spell.

For each of three settings, one after the other in one run: the defaults (paced, chained),
unpaced (`idle_fetch_wait_ms=0`) and unchained (`chaining=false`: every stage on its own
topic, as before operator chaining): start the `alto up` stack with its defaults (embedded broker, 2
Faust workers, 1 LM worker on the SIMULATED engine, every built-in pipeline), answer one
`example` request (every path warm), leave it idle, measure every process's CPU over the end
of the idle spell, then send `example` requests one at a time and time each (submitted to
result, the stack's own clock). The first is the one that meets the idle consumers.

Prints a markdown table; `--json` writes the figures. `--quick`: a 40 s spell (the wait has
doubled twice) and 3 requests; else 100 s (the 1 s ceiling is reached at 70 s) and 10.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from alto.bench.common import OUT_DIR, progress, write_json
from alto.config import AltoConfig, load_config

SETTINGS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "unpaced": {"kafka": {"idle_fetch_wait_ms": 0}},
    "unchained": {"chaining": False},
}


@dataclass
class IdleRun:
    setting: str
    idle_fetch_wait_ms: int
    chaining: bool
    topics: int  # stage topics of every pipeline (what the stack's consumers poll)
    idle_s: float
    idle_cores: float
    cpu_pct: dict[str, float]  # per process over the measured part of the spell
    first_ms: int  # the first request after the spell
    after_ms: list[int]  # the ones sent after it, one at a time


def sampled_s(idle_s: float) -> float:
    """The end of the idle spell over which CPU is measured."""
    return min(30.0, idle_s / 2)


def measure(config: AltoConfig, setting: str, *, idle_s: float, requests: int) -> IdleRun:
    from alto.agents import example
    from alto.infra.broker import free_port
    from alto.infra.client import Submitter, collect_results, new_request
    from alto.infra.soak import StackSampler
    from alto.infra.stack import Stack
    from alto.streams.registry import all_topologies

    stack = Stack(
        config,
        workers=2,
        lm_instances=1,
        engine="sim",
        listen=f"127.0.0.1:{free_port()}",
        workdir=config.data_dir / "up",
    )
    with stack:
        stack.wait_ready()
        submitter = Submitter(stack.config)

        def latency_ms(text: str) -> int:
            request = new_request("example", text)
            submitter.submit_all([request])
            got, _ = collect_results(stack.config, [request.request_id], timeout_s=120)
            result = got[request.request_id]
            return result.completed_at_ms - result.submitted_at_ms

        latency_ms("A first request. It warms every path.")
        progress(f"idle {setting}: idle for {idle_s:.0f} s")
        time.sleep(idle_s - sampled_s(idle_s))
        sampler = StackSampler(stack)
        sampler.sample()
        time.sleep(sampled_s(idle_s))
        _, cpu = sampler.sample()
        texts = [t for t in example.example_texts(4 * requests, seed=9) if t][:requests]
        latencies = [latency_ms(t) for t in texts]
    return IdleRun(
        setting=setting,
        idle_fetch_wait_ms=config.kafka.idle_fetch_wait_ms,
        chaining=config.chaining,
        topics=sum(len(t.topic_stages) for t in all_topologies(config)),
        idle_s=idle_s,
        idle_cores=sum(cpu.values()) / 100,
        cpu_pct={name: round(pct, 1) for name, pct in sorted(cpu.items())},
        first_ms=latencies[0],
        after_ms=latencies[1:],
    )


def main(*, quick: bool, json_path: Path | None) -> int:
    idle_s, requests = (40.0, 3) if quick else (100.0, 10)
    runs = []
    for setting, overrides in SETTINGS.items():
        config = load_config(data_dir=OUT_DIR / "data" / f"idle-{setting}", **overrides)
        runs.append(measure(config, setting, idle_s=idle_s, requests=requests))
    print("## alto bench idle: the default stack at rest, and the first request after\n")
    print(
        f"Default `alto up` stack (embedded broker, 2 Faust workers, 1 SIMULATED LM worker), "
        f"idle {idle_s:.0f} s after one request; CPU over the spell's last "
        f"{sampled_s(idle_s):.0f} s (100% = a core); then `example` requests one at a "
        "time.\n"
    )
    names = sorted({n for r in runs for n in r.cpu_pct})
    print(
        "| setting | idle fetch wait (ms) | stage topics | idle cores | "
        + " | ".join(f"{n} CPU %" for n in names)
        + " | first request after the spell (ms) | the next ones, median (ms) |"
    )
    print("|---|---|---|---|" + "---|" * len(names) + "---|---|")
    for r in runs:
        after = f"{statistics.median(r.after_ms):.0f}" if r.after_ms else "-"
        print(
            f"| {r.setting} | {r.idle_fetch_wait_ms} | {r.topics} | {r.idle_cores:.3f} | "
            + " | ".join(f"{r.cpu_pct.get(n, 0.0):.1f}" for n in names)
            + f" | {r.first_ms} | {after} |"
        )
    write_json(json_path, {"runs": [asdict(r) for r in runs]})
    return 0
