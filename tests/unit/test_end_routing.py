"""Where ENDs go: an aggregate takes the END of a node above its level from its first input
only, and no stage is sent an END that nothing after it counts (`Routing.wants_end`); the
results stay exact under shuffled and duplicated delivery."""

from __future__ import annotations

import asyncio
import collections
import json

import pytest

from alto.agents.factool import pipeline as factool
from alto.agents.factool.corpus import load_wordnet, questions
from alto.lm_service.serving import serve_call
from alto.lm_service.sim import SimEngine, SimParams
from alto.schemas.messages import Mode, Quantum, QuantumKind, ResultStatus
from alto.streams import Pipeline, collect
from alto.streams.local import LocalRunner, make_request
from alto.streams.outputs import Routing

Ends = collections.Counter[tuple[str, str, str, int]]


def _diamond() -> Pipeline:
    """request -> split (fan-out) -> a, b (maps) -> pair (join per split) -> total."""
    p = Pipeline("diamond")
    parts = p.request.fan_out(str.split, name="split")
    a = parts.map(str.upper, name="a")
    b = parts.map(len, name="b")
    pair = p.join("pair", lambda got: [*got["a"], *got["b"]], per=parts, a=a, b=b)
    pair.aggregate(collect(), name="total")
    return p


def _counting(ends: Ends):  # type: ignore[no-untyped-def]
    """A `LocalRunner` `lose` hook that loses nothing and counts the ENDs delivered to each
    topic, per request, by the producing stage and the depth of the node they close."""

    def tap(topic: str, q: Quantum) -> bool:
        if q.kind is QuantumKind.END:
            ends[(q.request_id, topic.rpartition(".")[2], q.stage, len(q.path))] += 1
        return False

    return tap


def _run(topology, requests, ends: Ends, **kw):  # type: ignore[no-untyped-def]
    return asyncio.run(LocalRunner([topology], lose=_counting(ends), **kw).run(requests))


def test_an_aggregate_takes_an_upper_end_from_its_first_input_only() -> None:
    topology = _diamond().build().unchained()
    routing = Routing(topology, "x.", "x.sink")
    assert routing.wants_end("a", "pair", 0) and not routing.wants_end("b", "pair", 0)
    assert routing.wants_end("pair", "total", 0)  # total counts the splits: its own level
    ends: Ends = collections.Counter()
    texts = ["one two three", "four", ""]
    reqs = [make_request("diamond", t, f"r{i}") for i, t in enumerate(texts)]
    run = _run(topology, reqs, ends)
    for req, text in zip(reqs, texts, strict=True):
        result = run.results[req.request_id]
        assert result.status is ResultStatus.OK
        assert sorted(map(tuple, json.loads(result.output or ""))) == sorted(
            (w.upper(), len(w)) for w in text.split()
        )
        rid = req.request_id
        # One END of the request's node reaches `pair` (from `a`) and one reaches `total`;
        # before, `b` sent a second, and `pair` forwarded both.
        assert ends[(rid, "pair", "a", 0)] == 1 and ends[(rid, "pair", "b", 0)] == 0
        assert ends[(rid, "total", "pair", 0)] == 1


@pytest.mark.parametrize("mode", [Mode.STREAMING, Mode.BASELINE])
def test_factool_sends_each_end_once_and_only_where_it_is_counted(mode: Mode) -> None:
    topology = factool.build()
    routing = Routing(topology, "x.", "x.sink")
    # Nothing after `encode` counts the ENDs above a query: `join` takes them from `bm25`.
    assert not any(routing.wants_end("queries", "encode", d) for d in range(3))
    assert routing.wants_end("queries", "encode", 3)  # ... not that it gets any: a map
    assert not routing.wants_end("verify", "judged", 1)
    assert routing.wants_end("claim_search", "judged", 1) and routing.wants_end(
        "judged", "report", 1
    )
    asked = questions(load_wordnet(), 3, seed=5)
    reqs = [make_request(factool.NAME, q, f"r{i}", mode) for i, q in enumerate(asked)]
    ends: Ends = collections.Counter()

    async def with_engine():  # type: ignore[no-untyped-def]
        engine = SimEngine(SimParams(time_scale=0.0001))
        await engine.start()
        try:
            runner = LocalRunner([topology], lose=_counting(ends))
            runner.lm = lambda req: serve_call(req, engine, runner.routings, "lm-local")
            return await runner.run(reqs)
        finally:
            await engine.stop()

    run = asyncio.run(with_engine())
    assert not run.dead_letters
    for req in reqs:
        assert run.results[req.request_id].status is ResultStatus.OK
    got = {k[1:] for k in ends}
    assert all(n == 1 for (_, _, _, depth), n in ends.items() if depth < 2), ends
    assert not any(topic == "encode" for topic, _, _ in got)
    assert ("report", "judged", 0) in got and ("report", "judged", 1) in got
    assert ("judged", "verify", 0) not in got and ("join", "encode", 2) not in got


def test_exact_under_shuffled_and_duplicated_delivery() -> None:
    topology = _diamond().build()
    texts = ["a bb ccc dddd", "e", "f gg", ""] * 3
    reqs = [make_request("diamond", t, f"r{i}") for i, t in enumerate(texts)]
    for seed in range(5):
        run = _run(topology, reqs, collections.Counter(), shuffle=True, duplicate=0.3, seed=seed)
        for req, text in zip(reqs, texts, strict=True):
            out = json.loads(run.results[req.request_id].output or "")
            assert sorted(map(tuple, out)) == sorted((w.upper(), len(w)) for w in text.split())
