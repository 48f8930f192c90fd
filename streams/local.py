"""An in-process runner: the broker-free harness for pipelines and stage logic.

It drives the same processors as the Faust workers, encodes every hop with the real
Avro codec, and can deliver messages in a shuffled order and more than once, the two
things a real broker does to a stream-processing job under rebalances and retries; and it
can lose chosen messages, to show what repairs a loss (a replay from the request's root).
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from alto.schemas.messages import (
    DeadLetter,
    LMRequest,
    Mode,
    PipelineRequest,
    PipelineResult,
    Quantum,
)
from alto.streams.chain import Chains
from alto.streams.pipeline import Topology
from alto.streams.processor import (
    CallLM,
    DeadLetterOut,
    Ingest,
    Output,
    Routing,
    Send,
    Sink,
    StageProcessor,
    now_ms,
)

LMService = Callable[[LMRequest], AsyncIterator[Send | DeadLetterOut]]
Loss = Callable[[str, Quantum], bool]
"""Whether to lose the quantum about to be delivered on a topic."""

PREFIX = "local."
SINK = "local.sink"
LM_TOPIC = "local.lm.requests"


@dataclass
class LocalRun:
    """What one `run` delivered: the results it produced (a request answered in an earlier
    run is not answered again), dead letters, deliveries and losses."""

    results: dict[str, PipelineResult] = field(default_factory=dict)
    dead_letters: list[DeadLetterOut] = field(default_factory=list)
    delivered: int = 0
    lost: int = 0


class LocalRunner:
    """Runs pipelines without a broker. `shuffle`/`duplicate` model at-least-once delivery."""

    def __init__(
        self,
        topologies: list[Topology],
        *,
        seed: int = 0,
        shuffle: bool = False,
        duplicate: float = 0.0,
        worker: str = "local",
        default_mode: Mode = Mode.STREAMING,
        max_input_chars: int = 100_000,
        lm: LMService | None = None,
        lose: Loss | None = None,
    ) -> None:
        """`lm` serves LM stages' calls in-process (e.g. `alto.lm_service.serving.serve_call`
        over a simulated engine); without it a pipeline with LM stages cannot finish.
        `lose` drops the deliveries it returns True for (counted in `LocalRun.lost`).
        Stage state persists across `run` calls, as a worker's tables do: running a
        request again is a replay from its root."""
        self.lm = lm
        self.lose = lose
        self.routings = {t.pipeline: Routing(t, PREFIX, SINK, LM_TOPIC) for t in topologies}
        # Chained stages run in memory, as in a worker; each also keeps a processor behind
        # its topic name, so that a test can deliver to it directly.
        self.chains = Chains(self.routings.values(), worker)
        self.processors: dict[str, StageProcessor] = dict(self.chains.stages)
        for routing in self.routings.values():
            for stage in routing.topology.topic_stages:
                topic = routing.topology.stage_topic(PREFIX, stage)
                self.processors[topic] = StageProcessor(routing, stage, worker)
        self.ingest = Ingest(self.routings, worker, default_mode, max_input_chars, SINK)
        self.sink = Sink({t.pipeline: t for t in topologies})
        self.rng = random.Random(seed)
        self.shuffle = shuffle
        self.duplicate = duplicate
        self.stores: dict[str, dict[str, Any]] = {topic: {} for topic in self.processors}
        self.emitted: dict[str, PipelineResult] = {}  # the sink's memory, as a results table

    async def run(self, requests: list[PipelineRequest]) -> LocalRun:
        run = LocalRun()
        pending: list[tuple[str, bytes]] = []
        self._lm_pending: list[LMRequest] = []
        for req in requests:
            outs = self.ingest.handle(PipelineRequest.decode(req.encode()))
            await self._collect(outs, pending, run)
        while pending or self._lm_pending:
            if not pending:
                await self._serve_lm(pending, run)
                continue
            idx = self.rng.randrange(len(pending)) if self.shuffle else 0
            topic, data = pending.pop(idx)
            if self.duplicate and self.rng.random() < self.duplicate:
                pending.append((topic, data))
            q = Quantum.decode(data)
            if self.lose is not None and self.lose(topic, q):
                run.lost += 1
                continue
            run.delivered += 1
            if topic == SINK:
                result = self.sink.handle(q, self.emitted)
                if result is not None:
                    run.results[result.request_id] = result
                continue
            await self._collect(self.processors[topic].process(q, self.stores[topic]), pending, run)
        return run

    async def _serve_lm(self, pending: list[tuple[str, bytes]], run: LocalRun) -> None:
        if self.lm is None:
            raise RuntimeError("a pipeline made an LM call but the runner has no LM service")
        request = self._lm_pending.pop(0)
        await self._collect(self.lm(request), pending, run)

    async def _collect(
        self,
        outs: Iterable[Output] | AsyncIterable[Output],
        pending: list[tuple[str, bytes]],
        run: LocalRun,
    ) -> None:
        async for out in self.chains.expand(outs):
            if isinstance(out, Send):
                pending.append((out.topic, out.quantum.encode()))
            elif isinstance(out, CallLM):
                self._lm_pending.append(LMRequest.decode(out.request.encode()))
            else:
                run.dead_letters.append(out)


def make_request(
    pipeline: str, text: str, request_id: str, mode: Mode | None = None
) -> PipelineRequest:
    return PipelineRequest(request_id, pipeline, text, now_ms(), mode)


__all__ = ["DeadLetter", "LocalRun", "LocalRunner", "make_request"]
