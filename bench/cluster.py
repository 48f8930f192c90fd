"""SIMULATED: the FacTool pipeline at the paper's scale, in virtual time (`alto bench factool
--tier cluster`).

What is real: the stage processors (the in-process runner's code path: routing, ancestry,
completion, operators, dead letters), the FacTool stage code (BM25 on the whole corpus, the
passage store, MiniLM query encoding; their results are cached per input, since a question
asked twice gives the same text), the LM worker's call serving (`serve_call`: splitting the
stream into quanta, nested word streams, ENDs) and the SIMULATED engine itself
(`SimEngine`, continuous batching, the `paper` profile). What is modelled: time. The run
happens on `bench.virtual_time`'s clock, where each of these takes virtual time and nothing
else does:
- an LM engine iteration (the engine's own `iteration_s`: a 7B model on an A100);
- a stage instance's service of one event: a FIFO server per instance, its service time the
  stage's median CPU cost measured on this machine at the tier's start (`calibrate`),
  divided by `GPU_FACTOR` for the MiniLM stages, which the paper ran on GPUs;
- a broker hop (`HOP_S`), and `LM_HOPS` of them from an LM stage to its engine (stage ->
  `alto.lm.requests` -> scheduler -> `alto.lm.work`).

Deployment: the paper's instance counts (Sec. 5 of arXiv 2403.04311: 2 answering, 2 claim
and 3 query-generation LM instances; 4 BM25, 1 encoding and 4 reranking instances). Our
pipeline's stages the paper does not have (the joins, `claim_search`, `judged`, `report`)
get `OTHER_INSTANCES` each; its verification calls go to the least loaded of all 7 LM
instances. Keys pick an instance as partitions do (a stable hash of the key).

The LangGraph stand-in is baseline mode with in-process hops (no broker transit, LM calls
placed directly).

Cited figures: `GPU_FACTOR` = 24, sbert.net's MiniLM-L6 (msmarco-MiniLM-L6 v5) query
encoding on a V100 against an 8-core Xeon Platinum 8168, 18,000 against 750 queries/s
(`docs/pretrained-models/msmarco-v5.md`); batched throughput, so a batch-of-one GPU call
gains less. `HOP_S` = 2 ms, Apache Kafka's end-to-end median in LinkedIn's benchmark (Kreps,
"Benchmarking Apache Kafka: 2 Million Writes Per Second (On Three Cheap Machines)", 2014:
2 ms median, 3 ms p99); Confluent's 2020 benchmark reports 5 ms p99 at 200 MB/s.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import statistics
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from alto.lm_service.serving import serve_call
from alto.lm_service.sim import SimEngine, SimParams, profile_params
from alto.schemas.messages import (
    LMRequest,
    Mode,
    PipelineRequest,
    PipelineResult,
    Quantum,
    QuantumKind,
    ResultStatus,
)
from alto.streams.ingest import Ingest
from alto.streams.local import LM_TOPIC, PREFIX, SINK
from alto.streams.operators import Item
from alto.streams.outputs import CallLM, DeadLetterOut, Output, Send, clock, now_ms
from alto.streams.pipeline import Topology
from alto.streams.processor import Routing, StageProcessor
from alto.streams.sink import Sink

PAPER_LM_POOLS: Mapping[str, int] = {"answer": 2, "claims": 2, "queries": 3}
PAPER_INSTANCES: Mapping[str, int] = {"bm25": 4, "encode": 1, "rerank": 4}
OTHER_INSTANCES = 4
GPU_STAGES = ("encode", "rerank", "claim_search")  # MiniLM: GPU stages in the paper's setup
GPU_FACTOR = 24.0
HOP_S = 0.002
# Where the virtual clock's stamps start (seconds since 1970: 2023-11-14), not at 0.
VIRTUAL_EPOCH_S = 1_700_000_000.0
LM_HOPS = 2
WORKER = "cluster"


@dataclass(frozen=True)
class ClusterSpec:
    """What takes virtual time, and how the cluster is laid out."""

    # Per event, by `cost_key` (a stage's data events; `stage:END` for its ENDs).
    service_s: Mapping[str, float] = field(default_factory=dict)
    hop_s: float = HOP_S
    lm_hops: int = LM_HOPS
    lm_pools: Mapping[str, int] = field(default_factory=lambda: dict(PAPER_LM_POOLS))
    instances: Mapping[str, int] = field(default_factory=lambda: dict(PAPER_INSTANCES))
    other_instances: int = OTHER_INSTANCES
    engine: SimParams = field(default_factory=lambda: profile_params("paper"))

    def instances_of(self, stage: str) -> int:
        return self.instances.get(stage, self.other_instances)


@dataclass
class ClusterRun:
    """One run's outcome, in virtual seconds."""

    arrived_s: dict[str, float] = field(default_factory=dict)
    done_s: dict[str, float] = field(default_factory=dict)  # the result reached the sink
    evidence_s: dict[str, float] = field(default_factory=dict)  # the last evidence left
    results: dict[str, PipelineResult] = field(default_factory=dict)
    dead_letters: list[DeadLetterOut] = field(default_factory=list)
    busy_s: dict[str, float] = field(default_factory=lambda: collections.defaultdict(float))
    # Per LM pool: sequences running per instance, sampled at each arrival (the batch).
    lm_batch: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    wall_s: float = 0.0

    @property
    def ok(self) -> set[str]:
        return {r for r, result in self.results.items() if result.status is ResultStatus.OK}

    def latencies(self) -> list[float]:
        ok = self.ok
        return [self.done_s[r] - self.arrived_s[r] for r in self.done_s if r in ok]

    def evidence_ready(self) -> list[float]:
        ok = self.ok
        return [self.evidence_s[r] - self.arrived_s[r] for r in self.evidence_s if r in ok]

    def span_s(self) -> float:
        """From the first arrival to the last arrival or result."""
        times = [*self.arrived_s.values(), *self.done_s.values()]
        return max(1e-9, max(times, default=0.0) - min(times, default=0.0))


CostLog = dict[str, list[float]]


def cluster_topology(topology: Topology, memo: dict[tuple[str, str], Any]) -> Topology:
    """`topology` with its stages run inline (threads would let the virtual clock run ahead
    of them) and the pure MiniLM stages' results cached by input in `memo`."""
    stages = {}
    for name, stage in topology.stages.items():
        fn = stage.fn
        if name in GPU_STAGES and fn is not None:
            fn = _memoised(name, fn, memo)
        stages[name] = dataclasses.replace(stage, blocking=False, fn=fn)
    return dataclasses.replace(topology, stages=stages)


def _memoised(name: str, fn: Callable[[Item], Any], memo: dict[tuple[str, str], Any]) -> Any:
    def cached(item: Item) -> Any:
        key = (name, json.dumps(item.value, sort_keys=True, default=str))
        if key not in memo:
            memo[key] = fn(item)
        return memo[key]

    return cached


class Cluster:
    """One run of `topology` on the modelled cluster (see the module docstring)."""

    def __init__(self, topology: Topology, spec: ClusterSpec, costs: CostLog | None = None):
        # The paper's layout: every stage a pool of its own instances, so no chaining.
        topology = topology.unchained()
        self.topology = topology
        self.spec = spec
        self.costs = costs
        self.routing = Routing(topology, PREFIX, SINK, LM_TOPIC)
        self.routings = {topology.pipeline: self.routing}
        self.stage_of = {topology.stage_topic(PREFIX, s): s for s in topology.topic_stages}
        self.processors = {
            s: StageProcessor(self.routing, s, WORKER) for s in topology.topic_stages
        }
        self.stores: dict[str, dict[str, Any]] = {s: {} for s in topology.topic_stages}
        self.ingest = Ingest(self.routings, WORKER, Mode.STREAMING, 100_000, SINK)
        self.sink = Sink({topology.pipeline: topology})
        self.emitted: dict[str, Any] = {}
        self.run_state = ClusterRun()
        self.evidence_topic = topology.stage_topic(PREFIX, "claim_search")

    async def run(
        self, arrivals: list[tuple[float, PipelineRequest]], drain_s: float
    ) -> ClusterRun:
        loop = asyncio.get_running_loop()
        # Every stamp of the stage and LM serving code reads the virtual clock (from a fixed
        # epoch: 0 means "unknown" in a trace), so that results' traces give critical paths.
        with clock(lambda: VIRTUAL_EPOCH_S + loop.time()):
            return await self._run(loop, arrivals, drain_s)

    async def _run(
        self,
        loop: asyncio.AbstractEventLoop,
        arrivals: list[tuple[float, PipelineRequest]],
        drain_s: float,
    ) -> ClusterRun:
        started = time.perf_counter()
        self._loop = loop
        self._remaining = len(arrivals)
        self._all_done = asyncio.Event()
        self._queues = {
            s: [asyncio.Queue[tuple[Quantum, int]]() for _ in range(self.spec.instances_of(s))]
            for s in self.topology.topic_stages
        }
        self._tasks = [
            asyncio.ensure_future(self._serve(stage, queue))
            for stage, queues in self._queues.items()
            for queue in queues
        ]
        self._engines = {
            stage: [SimEngine(self.spec.engine) for _ in range(n)]
            for stage, n in self.spec.lm_pools.items()
        }
        self._outstanding: dict[int, int] = collections.defaultdict(int)
        for engines in self._engines.values():
            for engine in engines:
                await engine.start()
        t0 = loop.time()
        for at, request in arrivals:
            loop.call_at(t0 + at, self._arrive, request)
        last = max((at for at, _ in arrivals), default=0.0)
        try:
            await asyncio.wait_for(self._all_done.wait(), last + drain_s)
        except TimeoutError:
            pass
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for engines in self._engines.values():
            for engine in engines:
                await engine.stop()
        self.run_state.wall_s = time.perf_counter() - started
        return self.run_state

    # -- events ------------------------------------------------------------------------

    def _arrive(self, request: PipelineRequest) -> None:
        self.run_state.arrived_s[request.request_id] = self._loop.time()
        request = dataclasses.replace(request, submitted_at_ms=now_ms())
        for pool, engines in self._engines.items():
            running = sum(e.stats().running for e in engines) / len(engines)
            self.run_state.lm_batch[pool].append(running)
        # The request is produced to the requests topic and read by a worker's ingest: a hop.
        self._dispatch(self.ingest.handle(request))

    async def _serve(self, stage: str, queue: asyncio.Queue[tuple[Quantum, int]]) -> None:
        """One instance of `stage`, a FIFO server: the event's modelled service time, then
        the stage's code (in no virtual time). In a trace the service time and the queue
        before it are therefore `waiting` (received at the instance until the stage's span
        started), and `compute` is nil."""
        processor, store = self.processors[stage], self.stores[stage]
        while True:
            q, received_ms = await queue.get()
            key = cost_key(stage, q)
            service = self.spec.service_s.get(key, 0.0)
            if service > 0:
                await asyncio.sleep(service)
                self.run_state.busy_s[stage] += service
            t0 = time.perf_counter()
            outs = [o async for o in processor.process(q, store, received_ms)]
            if self.costs is not None:
                self.costs.setdefault(key, []).append(time.perf_counter() - t0)
            self._dispatch(outs)

    def _dispatch(self, outs: list[Output] | list[Send | DeadLetterOut]) -> None:
        hop = self.spec.hop_s
        for out in outs:
            if isinstance(out, Send):
                if out.topic == SINK:
                    self._loop.call_later(hop, self._deliver_result, out.quantum)
                    continue
                if out.topic == self.evidence_topic:
                    self.run_state.evidence_s[out.quantum.request_id] = self._loop.time()
                stage = self.stage_of[out.topic]
                queues = self._queues[stage]
                queue = queues[zlib.crc32(out.key.encode()) % len(queues)]
                self._loop.call_later(hop, self._receive, queue, out.quantum)
            elif isinstance(out, CallLM):
                self._loop.call_later(hop * self.spec.lm_hops, self._place, out.request)
            else:
                self.run_state.dead_letters.append(out)

    @staticmethod
    def _receive(queue: asyncio.Queue[tuple[Quantum, int]], q: Quantum) -> None:
        queue.put_nowait((q, now_ms()))

    def _place(self, request: LMRequest) -> None:
        pool = self._engines.get(request.stage) or [
            e for engines in self._engines.values() for e in engines
        ]
        engine = min(pool, key=lambda e: self._outstanding[id(e)])
        self._outstanding[id(engine)] += 1
        asyncio.ensure_future(self._call(engine, request))

    async def _call(self, engine: SimEngine, request: LMRequest) -> None:
        try:
            async for out in serve_call(request, engine, self.routings, WORKER):
                self._dispatch([out])
        finally:
            self._outstanding[id(engine)] -= 1

    def _deliver_result(self, q: Quantum) -> None:
        result = self.sink.handle(q, self.emitted)
        if result is None:
            return
        self.run_state.done_s[result.request_id] = self._loop.time()
        self.run_state.results[result.request_id] = result
        self._remaining -= 1
        if self._remaining <= 0:
            self._all_done.set()


def cost_key(stage: str, q: Quantum) -> str:
    """Events are costed apart by kind: a stage's data (`stage`) does its work, its ENDs and
    other control quanta (`stage:END`) only bookkeeping."""
    return stage if q.kind is QuantumKind.DATA else f"{stage}:{q.kind.value}"


def service_times(costs: CostLog, gpu_factor: float = GPU_FACTOR) -> dict[str, float]:
    """Per stage and kind of event: the median measured cost of one, on a GPU for the MiniLM
    stages."""
    return {
        key: statistics.median(spent) / (gpu_factor if key.split(":")[0] in GPU_STAGES else 1.0)
        for key, spent in costs.items()
        if spent
    }
