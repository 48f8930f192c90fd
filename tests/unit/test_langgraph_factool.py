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
        # Its critical path partitions its latency (to the millisecond, each end rounded).
        parts = r["critical_ms"]
        assert abs(sum(parts.values()) - r["latency_s"] * 1000) <= 2, parts
        assert parts["lm"] > 0 and parts["compute"] > 0, parts
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


def test_langgraphs_critical_path_follows_the_claim_verified_last() -> None:
    from alto.bench.langgraph_factool import critical_ms

    a, b = "answer:0/claims:0", "answer:0/claims:1"
    spans = [
        ("answer", "", 0.010, 0.110),
        ("claims", "", 0.120, 0.200),
        ("queries", a, 0.210, 0.250),
        ("queries", b, 0.210, 0.300),
        ("search", b, 0.305, 0.340),  # query 0
        ("rerank", b, 0.340, 0.400),
        ("search", b, 0.305, 0.420),  # query 1: the retrieval that ends last
        ("rerank", b, 0.420, 0.450),
        ("search", a, 0.255, 0.260),
        ("rerank", a, 0.260, 0.270),
        ("evidence", a, 0.270, 0.271),
        ("evidence", b, 0.460, 0.462),
        ("claim_search", a, 0.271, 0.280),
        ("claim_search", b, 0.462, 0.480),
        ("verify", a, 0.280, 0.500),
        ("verify", b, 0.490, 0.600),  # b is verified last
    ]
    parts = critical_ms(spans, 0.0, 0.650)
    # lm: answer 100 + claims 80 + b's queries 90 + verify 110; compute: search 115 + rerank
    # 30 + evidence 2 + claim_search 18; waiting: the rest of the 650 ms.
    assert parts["lm"] == 380 and parts["compute"] == 165
    assert parts["waiting"] == 650 - 380 - 165
    assert sum(parts.values()) == 650
    # No claims: the request's own steps only.
    assert critical_ms(spans[:2], 0.0, 0.250) == {
        **dict.fromkeys(parts, 0),
        "lm": 180,
        "waiting": 70,
    }


def test_manual_check_runs_with_its_own_engine_speed(capsys: pytest.CaptureFixture[str]) -> None:
    from alto.bench.langgraph_factool import main

    assert main(["--engine", "sim", "--n", "1", "--rate", "1", "--time-scale", "0.0001"]) == 0
    out = capsys.readouterr().out
    assert "LangGraph FacTool (SIMULATED engine): 1 requests at 1/s" in out
    assert "claims, factuality" in out and "median" in out
