"""The scheduler benchmark's virtual-time cluster: SIMULATED LM instances on the sim
engine's cost model, driven event by event, and the load sweep per policy (see
`alto.bench.scheduler`)."""

from __future__ import annotations

import heapq
import math
import zlib
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from alto.bench.common import percentile, progress
from alto.bench.scheduler_workload import (
    N_INSTANCES,
    PASS_ACHIEVED,
    REPORT_EVERY_S,
    WARMUP_FRACTION,
    Template,
    Workload,
)
from alto.lm_service.sim import PrefixCache, SimParams, iteration_s
from alto.scheduler.placement import SATURATION, place
from alto.scheduler.policy import (
    Call,
    ClusterState,
    Completion,
    Load,
    SchedulingPolicy,
    make_policy,
)

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
    deciders: int = 1
    passed: bool = False
    latencies: list[float] = field(default_factory=list, repr=False)

    def summary(self) -> dict[str, Any]:
        row = asdict(self)
        row.pop("latencies")
        return row


def decider_of(call_id: str, deciders: int) -> int:
    """Which of `deciders` scheduler replicas places a call: its key's hash, as Kafka's
    partitioner spreads LM calls (and the requests they come from) over the workers."""
    return zlib.crc32(call_id.encode()) % deciders


def simulate(
    policy: SchedulingPolicy | Sequence[SchedulingPolicy],
    workload: Workload,
    rate: float,
    *,
    params: SimParams | None = None,
    n_instances: int = N_INSTANCES,
) -> list[_Job]:
    """Every call of `workload` at `rate` calls/s through `policy`: the finished jobs, in
    arrival order. Deterministic: a pure function of its arguments.

    Several policies are several deciders (scheduler replicas, one per Faust worker), as
    deployed: each call is placed by one of them (`decider_of`), each keeps its own
    `ClusterState`, so it counts only its own placements between load reports; reports and
    completions reach all of them (they all read `alto.lm.status`), and a decider's table
    entry reaches the others at once (the compacted assignments topic, its hop not
    modelled). One policy is the single decider of `alto bench scheduler`'s main table."""
    params = params or SimParams()
    policies = [policy] if isinstance(policy, SchedulingPolicy) else list(policy)
    states = [ClusterState() for _ in policies]
    shared: dict[str, tuple[int, ...]] = {}  # the assignments topic's latest entries
    instances = [Instance(i, params) for i in range(n_instances)]
    events: list[tuple[float, int, int, int]] = []  # (time, kind, instance, tiebreak)
    tiebreak = 0

    def push(t: float, kind: int, instance: int) -> None:
        nonlocal tiebreak
        tiebreak += 1
        heapq.heappush(events, (t, kind, instance, tiebreak))

    for inst in instances:  # every instance registers at t=0, then reports every second
        for state in states:
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
                load = inst.load(_ms(now))
                for state in states:
                    state.report(load)
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
                for state, decider in zip(states, policies, strict=True):
                    state.completed(done)
                    decider.on_completion(state, done)
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
        d = decider_of(call.call_id, len(policies))
        placed = place(policies[d], states[d], call, _ms(now), saturation=SATURATION)
        if placed is None:
            raise RuntimeError(f"{policies[d].name} found no live instance at t={now:.3f} s")
        choice = placed.instance
        entry = policies[d].table().get(call.prompt) if len(policies) > 1 else None
        if entry is not None and shared.get(call.prompt) != entry:
            shared[call.prompt] = entry  # published, as the agent's `_publish` does
            for other in policies:
                if other is not policies[d]:
                    other.load_table({call.prompt: entry})
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
    deciders: int = 1,
) -> RunResult:
    """One sweep point: a fresh policy (one per decider) and cluster, every call at `rate`."""
    policies = [make_policy(policy_name) for _ in range(deciders)]
    jobs = simulate(policies, workload, rate, params=params, n_instances=n_instances)
    policy = policies[0]
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
        spills=_spills(policies),
        deciders=deciders,
        latencies=latencies,
    )
    result.passed = result.p99_s <= slo and achieved >= PASS_ACHIEVED * rate
    return result


def _spills(policies: Sequence[SchedulingPolicy]) -> int | None:
    counts = [n for p in policies if (n := getattr(p, "spills", None)) is not None]
    return sum(counts) if counts else None


@dataclass
class PolicyResult:
    name: str
    sweep: list[RunResult]
    bisect: list[RunResult]
    fixed: RunResult
    throughput_at_slo_rps: float
    deciders: int = 1


def evaluate(
    policy_name: str,
    workload: Workload,
    slo: float,
    loads: tuple[float, ...],
    bisect_steps: int,
    fixed_load: float,
    *,
    deciders: int = 1,
) -> PolicyResult:
    def point(rate: float) -> RunResult:
        return measure(policy_name, workload, rate, slo, deciders=deciders)

    sweep = [point(rate) for rate in loads]
    by_rate = {r.offered_rps: r for r in sweep}
    if fixed_load not in by_rate:
        by_rate[fixed_load] = point(fixed_load)
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
            run = point(mid)
            bisect.append(run)
            lo, hi = (mid, hi) if run.passed else (lo, mid)
        best = lo
    return PolicyResult(policy_name, sweep, bisect, by_rate[fixed_load], best, deciders)
