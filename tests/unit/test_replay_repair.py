"""Replays that repair: a done aggregation node sends its output again when a replay of its
own END reaches it, so a replay from the request's root (the end-to-end retry) repairs an
output lost anywhere below, and the result stays exactly-once."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from alto.agents import example
from alto.schemas.messages import Mode, PathEntry, Quantum, QuantumKind, ResultStatus
from alto.streams import Pipeline, collect
from alto.streams.local import LocalRunner, make_request
from alto.streams.processor import Routing, Send, StageProcessor

TEXT = "One short sentence here. A second one follows it. And a third closes."


class _Loss:
    """Loses the first DATA quantum `stage` sends on the topic ending in `topic_suffix`, and
    every copy of it, until disarmed (a message the broker never kept)."""

    def __init__(self, topic_suffix: str, stage: str) -> None:
        self.topic_suffix = topic_suffix
        self.stage = stage
        self.armed = True
        self.chosen: tuple[str, tuple[PathEntry, ...]] | None = None

    def __call__(self, topic: str, q: Quantum) -> bool:
        if not self.armed or not topic.endswith(self.topic_suffix) or q.stage != self.stage:
            return False
        if q.kind is not QuantumKind.DATA:
            return False
        if self.chosen is None:
            self.chosen = (q.request_id, q.path)
        return self.chosen == (q.request_id, q.path)


@pytest.mark.parametrize("mode", [Mode.STREAMING, Mode.BASELINE])
def test_a_replay_repairs_an_output_lost_below_a_done_node(mode: Mode) -> None:
    # sentence_stats (one node per sentence) emits; one of its outputs never reaches
    # request_stats, so the request cannot finish.
    loss = _Loss("request_stats", "sentence_stats")
    runner = LocalRunner([example.build()], lose=loss, seed=3)
    request = make_request(example.NAME, TEXT, "req-1", mode)
    first = asyncio.run(runner.run([request]))
    assert first.lost == 1
    loss.armed = False
    assert request.request_id not in first.results
    # The retry replays the request from its root: the sentence_stats nodes are done, and
    # the replay of their END makes them send their outputs again.
    again = asyncio.run(runner.run([request]))
    result = again.results.get(request.request_id)
    assert result is not None, "the replay did not repair the loss"
    assert result.status is ResultStatus.OK, result.error
    assert json.loads(result.output or "") == example.expected_output(TEXT)


def test_a_replay_under_shuffle_and_duplicates_gives_one_exact_result() -> None:
    loss = _Loss("request_stats", "sentence_stats")
    runner = LocalRunner([example.build()], lose=loss, shuffle=True, duplicate=0.3, seed=11)
    request = make_request(example.NAME, TEXT, "req-2", Mode.STREAMING)
    first = asyncio.run(runner.run([request]))
    assert first.lost >= 1 and not first.results
    loss.armed = False
    runs = [asyncio.run(runner.run([request])).results for _ in range(3)]
    answered = [r[request.request_id] for r in runs if request.request_id in r]
    assert len(answered) == 1, "the first replay answers; later ones find the result"
    assert request.request_id in runs[0]
    assert json.loads(answered[0].output or "") == example.expected_output(TEXT)


def _processor() -> StageProcessor:
    topology = (
        Pipeline("b")
        .fan_out("w", lambda i: i.value.split())
        .aggregate("all", collect(), after="w")
        .build()
    )
    return StageProcessor(Routing(topology, "p.", "p.sink"), "all", "x")


def _feed(proc: StageProcessor, store: dict[str, Any], *quanta: Quantum) -> list[Any]:
    async def run() -> list[Any]:
        return [o for q in quanta async for o in proc.process(q, store)]

    return asyncio.run(run())


def _q(kind: QuantumKind, path: tuple[PathEntry, ...], **kw: Any) -> Quantum:
    return Quantum("r", "b", Mode.STREAMING, "w", path, 0, kind, 1, 1, **kw)


def test_only_the_nodes_own_end_resends_and_inputs_are_still_dropped() -> None:
    proc, store = _processor(), {}
    word = _q(QuantumKind.DATA, (PathEntry("w", 0),), payload=json.dumps("a"))
    end = _q(QuantumKind.END, (), count=1)
    first = _feed(proc, store, word, end)
    assert [type(o) for o in first] == [Send]
    assert _feed(proc, store, word) == []  # a replayed input: dropped
    again = _feed(proc, store, end)  # the node's own END: the output again, as sent
    assert [(o.topic, o.key, o.quantum) for o in again] == [
        (o.topic, o.key, o.quantum) for o in first
    ]
