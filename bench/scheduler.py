"""`alto bench scheduler`: the scheduling policies on a SIMULATED cluster (virtual time).

What it measures. Every policy in `alto.scheduler.policy.POLICY_NAMES` routes the same stream of
LM calls over a virtual-time, discrete-event cluster of `N_INSTANCES` LM instances; no
broker, no asyncio, no wall clock: a run is a pure function of (policy, load, seed). The
scheduler side drives the policy exactly as `scheduler/agent.py` does: the placement step
`alto.scheduler.placement.place` (the policy's choice, then the spill rule at the agent's
default saturation, `SATURATION`) for every call; each
instance's `state.report(Load(...))` every second of virtual time (running, waiting, queued
prefill and decode tokens, KV usage, as `SimEngine.stats()` computes them); on a finish
`state.completed(Completion(...))` then `policy.on_completion(state, done)`, with
queue_s = admitted - arrived and service_s = finished - admitted.

Each instance is `alto.lm_service.sim.SimEngine`'s continuous-batching model, event for event
(same cost model as the SIMULATED LM workers: `iteration_s` and `PrefixCache` with the
default `SimParams()`): at the start of an iteration it admits waiting calls up to
`max_batch`; the iteration lasts `iteration_s(params, running, uncached prompt tokens of the
calls it admitted)`; every running call gets one token per iteration and finishes at its
output length. As in `SimEngine`, the prefix cache is looked up when the call reaches the
instance. One difference: a prompt's prefix is two chained cache entries, the application's
system prompt then the template's own instructions and few-shot examples (vLLM caches
blocks chained from the start of the prompt, so templates of one application share the
system prompt's blocks); the template's entry counts only when the system prompt's entry
hits. `SimEngine` keys one entry per template: the special case with no shared part.

Workload (fixed from the problem statement before any policy was run; the same seed gives
every policy the same templates and the same arrival sequence at each load):
- 24 templates = 6 applications x 4 templates. System prompt of an application: 100..300
  tokens (evenly spaced); each template's own part: 500..1500 tokens (evenly spaced,
  shuffled), so prefixes are at most 600..1800 tokens (680..1717 with seed 1); a per-call
  unique suffix of 20..80 tokens
  (uniform). Mean output per template 20..100 tokens (evenly spaced, shuffled independently
  of the prefix), each call 0.75..1.25x its template's mean; max_tokens = 1.25x the mean.
  Prompt + max_tokens stays within the 2048-token context of `SimParams`.
  Cost spread (seed 1, worst-case suffix and output, alone on an instance, default
  `SimParams` as of 2026-11-24: 1.12 ms prefill per token): 0.9..4.0 s per call with the
  prefix cached (4.6x), 2.1..5.2 s uncached (2.5x), 6x between the cheapest cached call and
  the dearest uncached one.
- Distinct prefix tokens: 6 x 200 + 24 x 1000 = 25,200 = 1.54x one instance's prefix cache
  (16,384, `SimParams.prefix_cache_tokens`) and 0.38x the cluster's: one instance cannot
  hold every prefix, the cluster can hold each one once with room to replicate hot ones.
  So where a call goes decides whether its prefix is a hit, and prefill (1.12 ms per
  uncached token in the default `SimParams`) is most of a cold call's cost: policies differ.
- Popularity: Zipf with s = 1.1 over the templates in a seeded random order (independent of
  cost); the most popular template gets 30% of calls, the top four 60%.
- Arrivals: Poisson. One sequence of unit-rate arrival times and call draws per seed, scaled
  by 1/rate for each offered load, so every load replays the same calls.
- `N_INSTANCES` = 4 instances.

Metrics (per policy; the first `WARMUP_FRACTION` of calls, cold caches, are not measured):
- latency = finish - arrival of each measured call; p50 and p99 (nearest rank).
- achieved throughput = calls finished between the first measured arrival and the last
  arrival, divided by that span.
- a load passes when p99 <= SLO and achieved >= 80% of offered (the paper's rule).
  SLO = 2x the unloaded latency of the most expensive template (cold cache, alone on an
  instance: prefill of its whole longest prompt, then its max_tokens of decode at batch 1),
  decided before running anything: `slo_s()`; 10.4 s with the default `SimParams` above
  (it follows the cost model: 13.0 s and 11.2 s under earlier defaults).
- `throughput_at_slo_rps`: the load sweep `LOADS` runs in ascending order; between the last
  passing point and the first failing one the load is bisected (`BISECT_STEPS` times), and
  the figure is the highest load that was run and passed. (Passing is not guaranteed to be
  monotone in the load; the figure is the edge of the first failure.)
- `p99_latency_s` and `prefix_hit_rate` (cached prompt tokens / prompt tokens, measured calls)
  at the fixed load `FIXED_LOAD_RPS` = 2 calls/s (0.5 per instance), chosen from
  round_robin's curve before any other policy existed: round_robin keeps up there
  (achieved = offered, p50 1.6 s, near the unloaded latency) and, under the cost model of
  the time, its p99 sat at the SLO (with the current defaults: p99 5.8 s, SLO 10.4 s).

Durations on the 2-core development machine (all five policies, measured 2026-11-24, under
`nice -n 19`): `--quick` (5,000 calls per point, 9 loads, 3 bisection steps) 20 s; the full
run (12,000 calls per point, 12 loads, 5 bisection steps) 203 s, of which ~120 s is the
real-vLLM check (the simulated part: 10..22 s per policy). cache_aware's prefix trees
compare prefixes by slices in C now (they took 72 s of the quick run and 263 s of the full
one when they compared character by character). The herding section runs every policy
three more times (2, 4, 8 deciders): `--quick` took 119 s in all on 2026-11-30, not niced;
the full run's herding part was not timed (about three times its simulated part). Every run
prints its own wall time at the end.

Herding (several deciders). Deployed, every Faust worker with the scheduler role places
LM calls (its own stages' calls directly, and the calls of its share of `alto.lm.requests`):
a stack with W workers has W deciders, each of which knows only its own placements between
two load reports. Each policy is run again with `HERDING_DECIDERS` deciders
(`scheduler_sim.simulate` with one policy per decider: a call's key picks its decider, reports
and completions reach all, table entries are shared at once), the same sweep and bisection,
and the table reports throughput at the SLO, p99, p50 and hit rate at the fixed load beside
the single decider's. A policy that herds (sends every decider's calls to the instance that
looked least loaded at the last report) loses throughput and p99 as deciders grow.

`--json PATH` writes `{policy: {throughput_at_slo_rps, p99_latency_s, prefix_hit_rate,
by_deciders: {n: {the same three}}}}`;
everything else (the workload, every sweep point) goes to `bench-out/scheduler_detail.json`;
the plot (p99 latency vs offered load, one line per policy, the SLO) to
`bench-out/scheduler.png`.

A small real-vLLM check (`real_vllm_hit_rates`, full runs only, when `import vllm` works;
NOT simulated): two `VLLMEngine`s in this process, 80 MiB of KV cache each (3,584 tokens =
28 blocks of 128), 40 calls of 6 templates whose ~950-token system prompts (7 full blocks
each, 42 in all: 1.5x one engine's cache, 0.75x both) compete for the cache, in a seeded
uniform order, 4 calls in flight, 4 new tokens each; the same calls (salted differently per
policy, so no run reuses another's cache) routed by round_robin and by prompt_aware (pure
policies, in-process, no broker, load reports taken from `engine.stats()` before each
decision), and vLLM's own count of cached prompt tokens (`num_cached_tokens`) per policy.
Both engines' processes share this machine's 2 cores; it takes about 2 minutes.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from alto.bench.common import OUT_DIR, progress, write_json
from alto.bench.scheduler_sim import PolicyResult, evaluate, measure, simulate
from alto.bench.scheduler_vllm import maybe_real_vllm
from alto.bench.scheduler_workload import (
    BISECT_STEPS,
    CALLS,
    FIXED_LOAD_RPS,
    LOADS,
    N_APPS,
    N_INSTANCES,
    PASS_ACHIEVED,
    QUICK_BISECT_STEPS,
    QUICK_CALLS,
    QUICK_LOADS,
    SEED,
    SLO_FACTOR,
    WARMUP_FRACTION,
    ZIPF_S,
    Arrival,
    Template,
    Workload,
    make_workload,
    slo_s,
)
from alto.lm_service.sim import SimParams
from alto.scheduler.policy import (
    POLICY_NAMES,
    make_policy,
)

# Scheduler replicas compared with the single decider (a 2-worker stack has 2; 4 and 8
# stand for larger stacks).
HERDING_DECIDERS = (2, 4, 8)

# ---------------------------------------------------------------------------------------
# Output


def _plot(results: list[PolicyResult], slo: float, fixed_load: float) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        progress("matplotlib not installed; no plot")
        return None
    OUT_DIR.mkdir(exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for res in results:
        xs = [r.offered_rps for r in res.sweep]
        ys = [r.p99_s for r in res.sweep]
        ax.plot(xs, ys, marker="o", markersize=3, label=res.name)
    ax.axhline(slo, linestyle="--", color="grey", label=f"SLO {slo:.1f} s")
    ax.axvline(fixed_load, linestyle=":", color="grey")
    ax.set_yscale("log")
    ax.set_xlabel("offered load (calls/s)")
    ax.set_ylabel("p99 latency (s)")
    ax.set_title(f"alto bench scheduler (SIMULATED, {N_INSTANCES} instances)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = OUT_DIR / "scheduler.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    progress(f"plot written to {path}")
    return path


def _fmt(x: float, digits: int = 2) -> str:
    return "n/a" if x != x else f"{x:.{digits}f}"


def main(*, quick: bool, json_path: Path | None) -> int:
    started = time.perf_counter()
    params = SimParams()
    n_calls = QUICK_CALLS if quick else CALLS
    loads = QUICK_LOADS if quick else LOADS
    steps = QUICK_BISECT_STEPS if quick else BISECT_STEPS
    workload = make_workload(n_calls)
    slo = slo_s(params, workload)
    available: list[str] = []
    for name in POLICY_NAMES:
        try:
            make_policy(name)
            available.append(name)
        except ValueError:
            progress(f"policy {name} is not in scheduler/policy.py yet; skipped")
    results: list[PolicyResult] = []
    for name in available:
        t0 = time.perf_counter()
        results.append(evaluate(name, workload, slo, loads, steps, FIXED_LOAD_RPS))
        progress(f"{name}: {time.perf_counter() - t0:.1f} s")
    herding: dict[str, list[PolicyResult]] = {r.name: [r] for r in results}
    for name in available:
        for deciders in HERDING_DECIDERS:
            t0 = time.perf_counter()
            herding[name].append(
                evaluate(name, workload, slo, loads, steps, FIXED_LOAD_RPS, deciders=deciders)
            )
            progress(f"{name} with {deciders} deciders: {time.perf_counter() - t0:.1f} s")
    vllm_rates: dict[str, Any] | None = None
    if not quick:
        vllm_rates = maybe_real_vllm()
    elapsed = time.perf_counter() - started

    base = next((r for r in results if r.name == "round_robin"), None)
    print(f"## alto bench scheduler: SIMULATED cluster ({N_INSTANCES} instances, virtual time)\n")
    print(
        f"Workload: {len(workload.templates)} templates ({N_APPS} applications sharing a system "
        f"prompt), prefixes {min(t.prefix_tokens for t in workload.templates)}.."
        f"{max(t.prefix_tokens for t in workload.templates)} tokens, "
        f"{workload.distinct_prefix_tokens} distinct prefix tokens vs a prefix cache of "
        f"{params.prefix_cache_tokens} per instance; Zipf s={ZIPF_S}; Poisson arrivals; "
        f"{n_calls} calls per point (first {WARMUP_FRACTION:.0%} not measured); seed {SEED}. "
        f"SLO: p99 <= {slo:.1f} s ({SLO_FACTOR:g}x the cold unloaded latency of the most "
        f"expensive template) and achieved >= {PASS_ACHIEVED:.0%} of offered.\n"
    )
    print(
        f"| policy | throughput at SLO (req/s) | vs round_robin | p99 at {FIXED_LOAD_RPS:g} req/s (s) "
        f"| p50 at {FIXED_LOAD_RPS:g} req/s (s) | prefix hit rate at {FIXED_LOAD_RPS:g} req/s "
        f"| calls per instance at {FIXED_LOAD_RPS:g} req/s |"
    )
    print("|---|---|---|---|---|---|---|")
    for res in results:
        ratio = (
            res.throughput_at_slo_rps / base.throughput_at_slo_rps
            if base and base.throughput_at_slo_rps
            else math.nan
        )
        f = res.fixed
        print(
            f"| {res.name} | {_fmt(res.throughput_at_slo_rps)} | {_fmt(ratio)}x | {_fmt(f.p99_s)} "
            f"| {_fmt(f.p50_s)} | {f.prefix_hit_rate:.1%} | {'/'.join(map(str, f.calls_per_instance))} |"
        )
    print("\n### p99 latency (s) by offered load (req/s); * = fails the SLO rule\n")
    print("| policy | " + " | ".join(f"{x:g}" for x in loads) + " |")
    print("|---|" + "---|" * len(loads))
    for res in results:
        cells = [f"{_fmt(r.p99_s, 1)}{'' if r.passed else '*'}" for r in res.sweep]
        print(f"| {res.name} | " + " | ".join(cells) + " |")
    _print_herding(herding)
    if vllm_rates:
        print("\n### real vLLM (not simulated): prefix-cache hit rate measured by vLLM\n")
        print(vllm_rates["description"] + "\n")
        print(
            "| policy | cached prompt tokens / prompt tokens | calls per engine "
            "| templates on 1 / 2 engines at the end | spills | wall s |"
        )
        print("|---|---|---|---|---|---|")
        for name, row in vllm_rates["policies"].items():
            sizes = [len(v) for v in row["table"].values()]
            spread = f"{sizes.count(1)} / {sizes.count(2)}" if sizes else "n/a"
            print(
                f"| {name} | {row['prefix_hit_rate']:.1%} | "
                f"{'/'.join(map(str, row['calls_per_engine']))} | {spread} | "
                f"{row['spills'] if row['spills'] is not None else 'n/a'} | {row['wall_s']:.1f} |"
            )
    print(f"\n(bench took {elapsed:.1f} s of wall time{' with --quick' if quick else ''})")

    _plot(results, slo, FIXED_LOAD_RPS)
    detail = {
        "simulated": True,
        "quick": quick,
        "wall_s": round(elapsed, 1),
        "sim_params": asdict(params),
        "instances": N_INSTANCES,
        "slo_s": slo,
        "fixed_load_rps": FIXED_LOAD_RPS,
        "calls_per_point": n_calls,
        "warmup_fraction": WARMUP_FRACTION,
        "distinct_prefix_tokens": workload.distinct_prefix_tokens,
        "templates": [
            {k: v for k, v in asdict(t).items() if k != "prefix"} for t in workload.templates
        ],
        "policies": {
            r.name: {
                "throughput_at_slo_rps": r.throughput_at_slo_rps,
                "sweep": [p.summary() for p in r.sweep],
                "bisect": [p.summary() for p in r.bisect],
                "fixed": r.fixed.summary(),
            }
            for r in results
        },
        "real_vllm": vllm_rates,
        "herding": {
            name: {
                str(r.deciders): {
                    "throughput_at_slo_rps": r.throughput_at_slo_rps,
                    "fixed": r.fixed.summary(),
                }
                for r in runs
            }
            for name, runs in herding.items()
        },
    }
    OUT_DIR.mkdir(exist_ok=True)
    (OUT_DIR / "scheduler_detail.json").write_text(json.dumps(detail, indent=2))
    progress(f"details written to {OUT_DIR / 'scheduler_detail.json'}")
    write_json(
        json_path,
        {
            r.name: {
                **_headline(r),
                "by_deciders": {str(h.deciders): _headline(h) for h in herding[r.name]},
            }
            for r in results
        },
    )
    return 0


def _headline(r: PolicyResult) -> dict[str, float]:
    return {
        "throughput_at_slo_rps": r.throughput_at_slo_rps,
        "p99_latency_s": round(r.fixed.p99_s, 3),
        "prefix_hit_rate": round(r.fixed.prefix_hit_rate, 4),
    }


def _print_herding(herding: dict[str, list[PolicyResult]]) -> None:
    print(
        "\n### several deciders (herding): each knows only its own placements between "
        "load reports\n"
    )
    print(
        f"| policy | deciders | throughput at SLO (req/s) | vs 1 decider | p99 at "
        f"{FIXED_LOAD_RPS:g} req/s (s) | p50 (s) | prefix hit rate | calls per instance |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, runs in herding.items():
        one = runs[0].throughput_at_slo_rps
        for r in runs:
            f = r.fixed
            ratio = r.throughput_at_slo_rps / one if one else math.nan
            print(
                f"| {name} | {r.deciders} | {_fmt(r.throughput_at_slo_rps)} | {_fmt(ratio)}x "
                f"| {_fmt(f.p99_s)} | {_fmt(f.p50_s)} | {f.prefix_hit_rate:.1%} "
                f"| {'/'.join(map(str, f.calls_per_instance))} |"
            )


__all__ = [
    "Arrival",
    "PolicyResult",
    "Template",
    "Workload",
    "evaluate",
    "main",
    "make_workload",
    "measure",
    "simulate",
]
