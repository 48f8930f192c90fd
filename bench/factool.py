"""`alto bench factool`: streaming vs baseline (vs LangGraph) on the FacTool pipeline.

Open-loop load: Poisson arrivals at a sweep of offered loads; at each load every system gets
the same questions (drawn from WordNet, seeded) at the same arrival times, one system after
the other (the order alternates from load to load, so drift on a shared machine does not
favour one side). Request ids `p<load>-<i>~<system>` make the SIMULATED engines write the
same text for a question in every system (`alto.lm_service.sim.sim_text`): equal work. Per
point: median and P99 end-to-end latency, the achieved load and the CPU used. A point passes when the median is within the target (`TARGET_MEDIAN_S`, the paper's 4 s) and
the achieved load is at least 80% of the offered one (the paper's rule). Reported per
system: the highest passing load (sustained load) and the P99 at the lowest load.

Achieved load is the completion rate, (completed - 1) / (last completion - first
completion): a system that keeps up completes requests as fast as they arrive; an
overloaded one at its capacity. (The paper ran 12-minute points and counted completions in
the arrival window; with points of a minute or two that count is biased low by the
latency itself.)

Tiers:
- `sim`: SIMULATED LM engines of a hardware profile (`--sim-profile`): `cpu` (the default),
  our CPU-calibrated SmolLM2 model run 4x faster (`SIM_TIME_SCALE`), so one unloaded request
  takes seconds, as in the paper; or `paper`, a 7B model on an A100 in real time, from
  cited measurements (`alto.lm_service.sim`),
  7 LM instances (the paper's 2 answering + 2 claim + 3 query instances; our verification
  calls share them), 2 Faust workers for the other stages (the paper's 4 BM25, 1 encoding
  and 4 reranking instances do not fit 2 CPU cores; ours run as partitions of the two
  workers), everything else real: broker, Faust, BM25 on the whole corpus, MiniLM.
- `vllm`: one real vLLM LM worker (SmolLM2-135M, CPU) at the loads it can carry.
- `langgraph`, in both tiers: the same pipeline as a LangGraph graph
  (`bench/langgraph_factool.py`) calling the same engines in-process: a pool of as many
  SIMULATED engines with the same parameters, or one vLLM engine; same BM25 and MiniLM code.
  It waits for each LM call to finish, as LangGraph nodes do.

Deployment: our stack gets the settings one would give it on a 2-core host. Each Faust
worker owns one partition of each topic (`PARTITIONS`), the workers serve only the FacTool
pipeline's topics, and consumers wait `FETCH_WAIT_MS` per fetch (the default). Each Faust
worker's MiniLM gets one core (`alto up` splits the cores). LangGraph runs in one process with
torch's default, every core. Why: each consumer fetches up to 1000 / wait times a second, and
each fetch costs the broker and the client in proportion to its partitions. With the old
defaults (8 partitions, every pipeline's topics, 10 ms: Tansu alone held every fetch for its
whole wait) the idle stack used 1.5 of the 2 cores; with 2 partitions and 25 ms about 0.5;
behind the long-poll front (`alto.infra.longpoll`) with 250 ms, 0.28. The bench measures
that idle use at the start of each tier and reports it, together with the CPU seconds per
request of every point (everything under test: the stack's processes, or LangGraph's
process).

JSON (`--json`): `{TIER: {SYSTEM: {"sustained_load_rps", "p99_low_load_s", ...}}}` with
SYSTEM in streaming, baseline, langgraph, plus every point under `points` (each with
`cpu_s_per_request`) and `stack_idle_cores` per tier.
"""

from __future__ import annotations

import asyncio
import collections
import math
import random
import statistics
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tqdm import tqdm

from alto.agents.factool import pipeline as factool
from alto.agents.factool.corpus import load_corpus, questions
from alto.agents.factool.resources import resources
from alto.agents.factool.settings import factool_settings
from alto.bench.common import (
    OUT_DIR,
    cpu_by_role,
    cpu_seconds,
    progress,
    stdout_to_stderr,
    write_json,
)
from alto.bench.factool_point import (
    DRAIN_S,
    FAUST_WORKERS,
    FETCH_WAIT_MS,
    IDLE_S,
    PARTITIONS,
    SEED,
    SIM_LM_INSTANCES,
    SIM_LOADS,
    VLLM_LOADS,
    Point,
    SimSetup,
    make_point,
)
from alto.bench.factool_report import describe, plot_points, print_points, summarize
from alto.config import AltoConfig, load_config
from alto.infra.broker import free_port
from alto.infra.client import new_request, stage_windows
from alto.infra.openloop import OpenLoop
from alto.infra.stack import Stack
from alto.schemas.messages import Mode, PipelineResult, ResultStatus
from alto.streams.critical_path import medians, medians_of


def _arrivals(n: int, rate: float, seed: int) -> list[float]:
    """Seconds from a point's start at which its `n` requests arrive: a Poisson process at
    `rate` given that it offers exactly `rate`. The first arrives at 0 (a point does not
    open with an idle gap, 20 s on average on the vLLM tier), the last at (n - 1) / rate,
    and the n - 2 between fall as sorted uniform draws, which is how a Poisson process's
    arrivals lie given their count in an interval. Drawn freely, a point of 8-30 requests
    offered what its seed happened to give: the full sim sweep's 2 req/s point offered 1.50
    and its 3 req/s point 3.84, so every system "failed" 2 on the achieved-rate rule and
    passed 3."""
    if n <= 1:
        return [0.0] * n
    span = (n - 1) / rate
    rng = random.Random(seed)
    return [0.0, *sorted(rng.uniform(0.0, span) for _ in range(n - 2)), span]


def _evidence_ready_s(result: PipelineResult) -> float | None:
    """Seconds from submission until the last claim's evidence was ready (None: no claim)."""
    ends = [span.end_ms for span in result.trace if span.stage == "evidence"]
    return (max(ends) - result.submitted_at_ms) / 1000 if ends else None


# -- our system, through the broker --------------------------------------------------------


def _run_kafka(
    config: AltoConfig,
    tier: str,
    mode: Mode,
    asked: list[str],
    arrivals: list[float],
    tag: str,
    rate: float,
    pids: dict[str, int],
) -> Point:
    requests = [
        new_request(factool.NAME, q, mode=mode, request_id=f"{tag}-{i}~{mode.value.lower()}")
        for i, q in enumerate(asked)
    ]
    desc = f"{tier} {mode.value.lower():9} @{rate:g}/s"
    with tqdm(total=len(requests), desc=desc, leave=False) as bar:
        with OpenLoop(config, on_result=lambda _: bar.update(1)) as loop:
            cpu_before, roles_before = cpu_seconds(), cpu_by_role(pids)
            outcomes = loop.run(requests, arrivals)
            loop.wait(outcomes, DRAIN_S)
            cpu_used = cpu_seconds() - cpu_before
            roles = cpu_by_role(pids)
    ok = [o.result for o in outcomes if o.result is not None and o.status is ResultStatus.OK]
    point = make_point(
        tier,
        mode.value.lower(),
        rate,
        len(requests),
        [g.latency_ms / 1000 for g in ok],
        [g.completed_at_ms / 1000 for g in ok],
        [e for g in ok if (e := _evidence_ready_s(g)) is not None],
    )
    point.cpu_s_per_request = round(cpu_used / len(requests), 3)
    point.cpu_s_by_role = {
        role: round((spent - roles_before.get(role, 0.0)) / len(requests), 3)
        for role, spent in sorted(roles.items())
    }
    per_stage: dict[str, list[float]] = collections.defaultdict(list)
    for g in ok:
        for stage, ms in stage_windows(g).items():
            per_stage[stage].append(ms / 1000)
    point.stages_s = {s: round(statistics.median(v), 3) for s, v in per_stage.items()}
    point.set_critical(medians(ok, factool.build()))
    return point


# -- LangGraph -----------------------------------------------------------------------------


class _Pool:
    """Several engines behind one: each generation goes to the next one (round robin), as a
    LangGraph deployment behind a load balancer would spread its calls."""

    def __init__(self, engines: list[Any]) -> None:
        self.engines = engines
        self.name = engines[0].name
        self.simulated = engines[0].simulated
        self.usage: dict[str, Any] = {}
        self._next = 0

    def generate(self, request_id: str, prompt: Any, params: Any) -> Any:
        engine = self.engines[self._next % len(self.engines)]
        self._next += 1
        return engine.generate(request_id, prompt, params)

    def count_tokens(self, prompt: Any) -> int:
        return int(self.engines[0].count_tokens(prompt))

    def stats(self) -> Any:
        return self.engines[0].stats()

    def take_usage(self, request_id: str) -> Any:
        return None


def _engines(tier: str, config: AltoConfig, n: int) -> list[Any]:
    if tier == "sim":
        from alto.lm_service.sim import SimEngine, sim_params

        return [SimEngine(sim_params(config)) for _ in range(n)]
    from alto.lm_service.vllm_engine import VLLMEngine

    return [VLLMEngine.from_config(config)]


# -- a tier ----------------------------------------------------------------------------


def _factool_settings() -> dict[str, Any]:
    """The deployment's FacTool settings, with the store read where `alto index build` put it."""
    config = load_config()
    own = dict(config.pipeline_settings.get(factool.NAME, {}))
    own.setdefault("index_dir", str(config.data_dir.resolve()))
    return own


def tier_stack(
    tier: str, sim: SimSetup, fetch_wait_ms: int, *, leg_trace_dir: Path | None = None
) -> tuple[Stack, list[Any]]:
    """The (not yet started) stack a tier's points run on, and the corpus of its questions
    (`leg_trace_dir`: where its workers trace each hop, `alto bench legs`)."""
    base = load_config(
        lm={"sim_time_scale": sim.scale, "sim_profile": sim.profile},
        kafka={"partitions": PARTITIONS, "fetch_max_wait_ms": fetch_wait_ms},
        metrics={"leg_trace_dir": leg_trace_dir},
        data_dir=OUT_DIR / "data" / f"factool-{tier}",
        warmup=True,
        # No system may rerank with embeddings another system's run left in memory; all read
        # the passage store `alto index build` filled (under the default data folder).
        # (The deployment's own FacTool settings stay: `..._PASSAGE_STORE=false` runs the
        # bench with every candidate encoded online, as before the store.)
        pipeline_settings={factool.NAME: {**_factool_settings(), "passage_cache": 0}},
        pipelines=(factool.NAME,),
    )
    store = resources(base).store  # LangGraph runs in this process: the same settings
    progress(f"passage store {store.folder}: {store.coverage().line()} (the rest encoded online)")
    docs = load_corpus(factool_settings(base).corpus)
    stack = Stack(
        base,
        workers=FAUST_WORKERS,
        lm_instances=SIM_LM_INSTANCES if tier == "sim" else 1,
        engine="sim" if tier == "sim" else "vllm",
        listen=f"127.0.0.1:{free_port()}",
        workdir=OUT_DIR / "logs" / f"factool-{tier}",
    )
    return stack, docs


def warm(stack: Stack, tier: str, docs: list[Any]) -> None:
    """A few requests first: warm caches (and vLLM's compiled paths) for every system."""
    _run_kafka(
        stack.config,
        tier,
        Mode.STREAMING,
        questions(docs, 2, seed=1),
        [0.0, 0.5],
        "warm",
        1.0,
        stack.pids(),
    )


def tier_loads(
    tier: str, quick: bool, sim_loads: tuple[float, ...] | None = None
) -> tuple[tuple[float, ...], int]:
    """A real tier's offered loads (req/s) and requests a point: its sweep, or on the sim
    tier `sim_loads` in its place (each point as many requests as the sweep's)."""
    loads, n = (SIM_LOADS if tier == "sim" else VLLM_LOADS)["quick" if quick else "full"]
    if tier == "sim" and sim_loads:
        loads = sim_loads
    return loads, n


def _tier(
    tier: str,
    quick: bool,
    sim: SimSetup,
    fetch_wait_ms: int,
    sim_loads: tuple[float, ...] | None = None,
) -> tuple[list[Point], float]:
    loads, n = tier_loads(tier, quick, sim_loads)
    stack, docs = tier_stack(tier, sim, fetch_wait_ms)
    base = stack.config
    lm_instances = stack.lm_instances
    points: list[Point] = []
    idle_cores = math.nan
    progress(
        f"{tier}: starting the stack ({lm_instances} LM workers, {FAUST_WORKERS} Faust workers)"
    )
    try:
        stack.start()
        stack.wait_ready(600)
        config = stack.config
        warm(stack, tier, docs)
        idle_cores = _idle_cores()
        progress(f"{tier}: the idle stack uses {idle_cores:.2f} cores (broker and client polls)")
        for k, rate in enumerate(loads):
            asked = questions(docs, n, seed=SEED + k)
            arrivals = _arrivals(n, rate, SEED + k)
            systems = [Mode.STREAMING, Mode.BASELINE]
            for mode in systems if k % 2 == 0 else systems[::-1]:
                point = _run_kafka(config, tier, mode, asked, arrivals, f"p{k}", rate, stack.pids())
                points.append(point)
                progress(describe(point))
    finally:
        stack.stop()
    progress(f"{tier}: LangGraph at the same loads")

    # Each run has its own event loop (asyncio.run), so each gets engines of its own: an
    # engine's internal tasks and events belong to the loop that started it.
    for k, rate in enumerate(loads):
        asked = questions(docs, n, seed=SEED + k)
        arrivals = _arrivals(n, rate, SEED + k)

        async def one(
            asked: list[str] = asked, arrivals: list[float] = arrivals, k: int = k
        ) -> tuple[list[Any], float]:
            """The runs, and the CPU they used, measured while the engines are up (vLLM's
            engine core is a child process, counted only while it lives)."""
            from alto.bench.langgraph_factool import run_open_loop

            engines = _engines(tier, base, lm_instances)
            for e in engines:
                await e.start()
            try:
                ids = [f"p{k}-{i}~langgraph" for i in range(len(asked))]
                cpu_before = cpu_seconds()
                runs = await run_open_loop(_Pool(engines), asked, arrivals, ids)
                return runs, cpu_seconds() - cpu_before
            finally:
                for e in engines:
                    await e.stop()

        try:
            started = time.time()
            runs, cpu_used = asyncio.run(one())
        except ImportError as exc:
            progress(f"LangGraph not available ({exc}); skipped")
            break
        lat = [r["latency_s"] for r in runs if r.get("output") is not None]
        done = [
            started + a + r["latency_s"]
            for a, r in zip(arrivals, runs, strict=True)
            if r.get("output") is not None
        ]
        ready = [
            r["steps"]["evidence"]["last_end_s"]
            for r in runs
            if r.get("output") is not None and "evidence" in r.get("steps", {})
        ]
        point = make_point(tier, "langgraph", rate, n, lat, done, ready)
        point.cpu_s_per_request = round(cpu_used / n, 3)
        point.set_critical(medians_of([r["critical_ms"] for r in runs if r.get("output")]))
        points.append(point)
        progress(describe(point))
    return points, idle_cores


def _idle_cores() -> float:
    """CPU cores the stack uses with no request in flight: the price of polling (the embedded
    broker holds every fetch for its whole wait, so each consumer fetches 1000 / wait times a
    second; see agents/transport.py)."""
    time.sleep(2.0)  # the warm-up's last commits
    before = cpu_seconds()
    time.sleep(IDLE_S)
    return (cpu_seconds() - before) / IDLE_S


def main(
    *,
    quick: bool,
    json_path: Path | None,
    tiers: tuple[str, ...] = ("sim", "vllm", "cluster"),
    sim_profile: str = "cpu",
    sim_time_scale: float | None = None,
    cluster_loads: tuple[float, ...] | None = None,
    cluster_point_s: float | None = None,
    fetch_wait_ms: int = FETCH_WAIT_MS,
    sim_loads: tuple[float, ...] | None = None,
) -> int:
    """`sim_profile` picks the sim tier's hardware (`cpu`, `paper`); a `sim_time_scale` other
    than the profile's own is an ablation (LM time's share of the work), reported as such;
    the comparison of systems is always made at one profile and scale. `cluster_loads` and
    `cluster_point_s` replace the cluster tier's sweep (e.g. to look for its knee), and
    `sim_loads` the sim tier's (e.g. an A/B of two deployments near saturation);
    `fetch_wait_ms`, the stack's fetch wait (its choice against the hop cost and the idle
    CPU it buys)."""
    sim = SimSetup(sim_profile, sim_time_scale)
    started = time.perf_counter()
    points: list[Point] = []
    idle: dict[str, float] = {}
    cluster: dict[str, Any] = {}
    for tier in tiers:
        with stdout_to_stderr():  # vLLM logs to stdout; stdout keeps only the markdown
            if tier == "cluster":
                from alto.bench.factool_cluster import run_tier

                tier_points, cluster = run_tier(
                    resources().docs, quick, cluster_loads, cluster_point_s
                )
            else:
                tier_points, idle[tier] = _tier(tier, quick, sim, fetch_wait_ms, sim_loads)
            points += tier_points
    summary = summarize(points)
    res = resources()
    store = res.store.coverage()
    print_points(points, summary, idle, sim)
    read = "read" if res.settings.passage_store else "not read: every candidate encoded online"
    print(f"\nPassage store: {store.line()} ({read}). Fetch wait: {fetch_wait_ms} ms.")
    if cluster:
        print(
            f"\nCluster tier (SIMULATED): points of {cluster['point_s']:g} virtual s, "
            f"{cluster['wall_s_per_point']} s of wall time each (median); service times per "
            f"event (ms, MiniLM stages on a GPU): {cluster['service_ms']}"
        )
    plot = plot_points(points, sim)
    elapsed = time.perf_counter() - started
    print(f"\n(plot: {plot}; bench took {elapsed / 60:.1f} min{' with --quick' if quick else ''})")
    raw: dict[str, Any] = {
        **summary,
        "points": [asdict(p) for p in points],
        "stack_idle_cores": {t: round(c, 3) for t, c in idle.items()},
    }
    write_json(
        json_path,
        {
            **raw,
            "quick": quick,
            "elapsed_s": elapsed,
            "sim_profile": sim.profile,
            "sim_time_scale": sim.scale,
            "fetch_wait_ms": fetch_wait_ms,
            "passage_store": {**asdict(store), "read": res.settings.passage_store},
            "cluster": cluster,
        },
    )
    return 0
