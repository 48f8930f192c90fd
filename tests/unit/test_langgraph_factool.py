"""The LangGraph FacTool baseline does our pipeline's work: on the SIMULATED engine, for the
same request ids, its reports equal those of our pipeline run in-process."""

from __future__ import annotations

import asyncio
import json

import pytest

from alto.agents.factool import pipeline as factool
from alto.agents.factool.corpus import load_wordnet, questions
from alto.lm_service.serving import serve_call
from alto.lm_service.sim import SimEngine, SimParams
from alto.schemas.messages import Mode, ResultStatus
from alto.streams.local import LocalRunner, make_request

pytest.importorskip("langgraph")


def test_langgraph_reports_equal_our_pipelines_on_the_simulated_engine() -> None:
    from alto.bench.langgraph_factool import run_open_loop

    asked = questions(load_wordnet(), 2, seed=5)
    ids = [f"lg{i}" for i in range(len(asked))]

    async def run():  # type: ignore[no-untyped-def]
        engine = SimEngine(SimParams(time_scale=0.0001))
        await engine.start()
        try:
            runner = LocalRunner([factool.build()])
            runner.lm = lambda req: serve_call(req, engine, runner.routings, "lm-local")
            ours = await runner.run(
                [make_request(factool.NAME, q, r, Mode.STREAMING) for q, r in zip(asked, ids)]
            )
            graph = await run_open_loop(engine, asked, [0.0, 0.01], ids)
        finally:
            await engine.stop()
        return ours, graph

    ours, graph = asyncio.run(run())
    assert not ours.dead_letters
    assert [r["request_id"] for r in graph] == ids
    for r in graph:
        result = ours.results[r["request_id"]]
        assert result.status is ResultStatus.OK, result.error
        want = json.loads(result.output or "")
        # Ours went through JSON between stages; LangGraph's stayed Python objects.
        got = json.loads(json.dumps(r["output"]))
        assert r["error"] is None and r["latency_s"] > 0
        assert {"answer", "claims", "queries", "search", "rerank", "verify"} <= set(r["steps"])
        assert got["answer"] == want["answer"]
        assert [c["claim"] for c in got["claims"]] == [c["claim"] for c in want["claims"]]
        assert want["claims"], "the simulated answer always makes claims"
        for g, w in zip(got["claims"], want["claims"], strict=True):
            assert g["queries"] == w["queries"]
            assert [p["doc_id"] for p in g["evidence"]] == [p["doc_id"] for p in w["evidence"]]
            # Equal, not close: both compute with the same code on the same float16 query
            # embeddings, and passage embeddings come from one per-process cache.
            assert g["evidence"] == w["evidence"]
            assert (g["verdict"], g["parsed"]) == (w["verdict"], w["parsed"])
        assert got["verdicts"] == want["verdicts"]
        assert got["factuality"] == want["factuality"]
        assert got == want
