"""Operator chaining: the stateless stages a producer runs in memory, with no topic between.

`Topology.chained` names the stages whose input needs no repartitioning (see
`alto.streams.pipeline.chainable`). Their producers still address them by topic (a `Send`
to the stage's topic, from `Routing.sends`), and whoever drives the producer (a Faust agent,
the in-process runner, the cluster simulation) hands such a `Send` to the stage's
processor here instead of producing it. So everything that holds across a topic holds
across a chain: ENDs are forwarded by the same code, FAILED markers go to the sink,
dead letters name the chained stage, and each stage adds its own span to the trace (its
`received_ms` is the moment of the hand-over, so its transit is zero).

Delivery stays at-least-once: a chained stage runs inside the handling of its producer's
input, whose offset is committed only once everything the chain produced was handed to
the producer; a replay runs the chain again, and the aggregates downstream drop copies.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable

from alto.streams.outputs import Output, Routing, Send, now_ms
from alto.streams.pipeline import REQUEST, StageKind, Topology
from alto.streams.processor import DEFAULT_MAX_SPANS, StageProcessor, each_async


class Chains:
    """The chained stages of a set of pipelines, by the topic their producers address."""

    def __init__(
        self, routings: Iterable[Routing], worker: str, *, max_spans: int = DEFAULT_MAX_SPANS
    ) -> None:
        self.stages: dict[str, StageProcessor] = {}
        for routing in routings:
            topology = routing.topology
            for stage in topology.chained:
                topic = topology.stage_topic(routing.prefix, stage)
                self.stages[topic] = StageProcessor(routing, stage, worker, max_spans=max_spans)

    def get(self, out: Output) -> StageProcessor | None:
        """The processor that takes `out` in memory, if `out` is a Send to a chained stage."""
        return self.stages.get(out.topic) if isinstance(out, Send) else None

    async def expand(self, outs: Iterable[Output] | AsyncIterable[Output]) -> AsyncIterator[Output]:
        """`outs` with every Send to a chained stage replaced by what that stage (and the
        stages chained behind it) outputs, in order, as it is produced."""
        async for out in each_async(outs):
            processor = self.get(out)
            if processor is None:
                yield out
                continue
            assert isinstance(out, Send)
            async for inner in self.expand(processor.process(out.quantum, None, now_ms())):
                yield inner


def describe(
    topology: Topology,
    prefix: str,
    requests_topic: str,
    lm_topic: str,
    sink: str,
    lm_fallback: str | None = None,
) -> str:
    """The agents `topology` runs and the topics between them (`alto topology`): one block
    per agent, with the topic it reads, the stages it runs (the first reads the topic, the
    rest are chained behind it) and the topics it writes. An LM stage's calls go to
    `lm_topic`, and to `lm_fallback` where one is given (direct placement: the LM workers'
    topic, and the scheduler's while every instance is saturated)."""
    calls = f"{lm_topic} (its LM calls"
    calls += f"; {lm_fallback} while every LM instance is saturated" if lm_fallback else ""
    calls += "; an LM worker writes their outputs)"
    every = [s for s in topology.order if s in topology.chained]
    lines = [
        f"{topology.pipeline}: stage topics {len(topology.topic_stages)}; chained "
        f"{len(every)} ({', '.join(every) or 'none'})"
    ]
    for head, chained in topology.chains().items():
        reads = requests_topic if head == REQUEST else topology.stage_topic(prefix, head)
        members = ([] if head == REQUEST else [head]) + list(chained)
        writes: list[str] = []
        for stage in [head, *chained]:
            if stage != REQUEST and topology.stages[stage].kind is StageKind.LM:
                writes.append(calls)
                continue
            consumers = topology.consumers[stage]
            if not consumers:  # the final stage
                writes.append(sink)
            writes += [
                topology.stage_topic(prefix, c) for c in consumers if c not in topology.chained
            ]
        name = "ingest" if head == REQUEST else head
        lines.append(f"agent {name}: reads {reads}")
        lines.append("  runs " + (" -> ".join(_label(topology, s) for s in members) or "ingest"))
        lines.extend(f"  writes {w}" for w in dict.fromkeys(writes))
    fed = sorted(
        {
            c
            for s, stage in topology.stages.items()
            if stage.kind in (StageKind.LM, StageKind.LM_WORDS)
            for c in topology.consumers[s]
            if topology.stages[c].kind is not StageKind.LM_WORDS
        }
    )
    if fed:
        lines.append("LM workers write: " + ", ".join(topology.stage_topic(prefix, c) for c in fed))
    return "\n".join(lines)


def _label(topology: Topology, stage: str) -> str:
    spec = topology.stages[stage]
    if spec.kind is StageKind.AGGREGATE:
        return f"{stage}(aggregate per {spec.per})"
    return f"{stage}({spec.kind.value})"
