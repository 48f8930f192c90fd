"""The FacTool pipeline in-process on the SIMULATED engine, its streaming BM25 operator, and
the verdict parser."""

from __future__ import annotations

import asyncio
import json
import random

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from alto.agents.factool import pipeline as factool
from alto.agents.factool.bm25 import BM25Index, tokenize
from alto.agents.factool.corpus import load_wordnet, questions
from alto.agents.factool.verdict import REFUTED, SUPPORTED, UNVERIFIABLE, parse_verdict
from alto.lm_service.quanta import split_all
from alto.lm_service.serving import serve_call
from alto.lm_service.sim import SimEngine, SimParams, sim_text
from alto.schemas.messages import Mode, PathEntry, ResultStatus
from alto.streams.ancestry import node_key
from alto.streams.local import LocalRunner, make_request
from alto.streams.operators import Item

# -- the pipeline --------------------------------------------------------------------


def _lm_out(request_id: str, path: tuple[PathEntry, ...], stage: str, call: object) -> list[str]:
    lm_id = f"{node_key(request_id, path)}#{stage}"
    return split_all(sim_text(lm_id, call.prompt_name, call.max_tokens), call.rule)  # type: ignore[attr-defined]


def _expected_claims(request_id: str) -> tuple[list[str], list[str], list[list[str]]]:
    """The sentences, claims and each claim's queries the SIMULATED engine writes."""
    sentences = _lm_out(request_id, (), "answer", factool.ANSWER)
    claims, queries = [], []
    for i in range(len(sentences)):
        at = (PathEntry("answer", i),)
        for j, claim in enumerate(_lm_out(request_id, at, "claims", factool.CLAIMS)):
            claims.append(claim)
            queries.append(
                _lm_out(request_id, (*at, PathEntry("claims", j)), "queries", factool.QUERIES)
            )
    return sentences, claims, queries


@pytest.mark.parametrize("mode", [Mode.STREAMING, Mode.BASELINE])
def test_factool_on_the_simulated_engine_with_shuffled_duplicated_delivery(mode: Mode) -> None:
    asked = questions(load_wordnet(), 3, seed=11)

    async def run():  # type: ignore[no-untyped-def]
        engine = SimEngine(SimParams(time_scale=0.0001))
        await engine.start()
        runner = LocalRunner([factool.build()], shuffle=True, duplicate=0.1, seed=3)
        runner.lm = lambda req: serve_call(req, engine, runner.routings, "lm-local")
        reqs = [make_request(factool.NAME, q, f"q{i}", mode) for i, q in enumerate(asked)]
        out = await runner.run(reqs)
        await engine.stop()
        return reqs, out

    reqs, out = asyncio.run(run())
    assert not out.dead_letters
    index = factool.resources().index
    for req in reqs:
        result = out.results[req.request_id]
        assert result.status is ResultStatus.OK, result.error
        assert result.simulated
        report = json.loads(result.output or "")
        sentences, claims, queries = _expected_claims(req.request_id)
        assert report["answer"] == " ".join(sentences)
        assert [c["claim"] for c in report["claims"]] == claims
        assert claims, "the simulated answer always makes claims"
        for claim, wanted in zip(report["claims"], queries, strict=True):
            assert claim["queries"] == wanted
            assert claim["verdict"] in (SUPPORTED, REFUTED, UNVERIFIABLE) and claim["parsed"]
            assert 0 < len(claim["evidence"]) <= factool.EVIDENCE_K
            by_claim = 0
            for passage in claim["evidence"]:
                # Each passage's BM25 score is the corpus score of one of the claim's queries
                # or of the claim's own text, which always takes part in retrieval.
                doc = next(
                    i
                    for i, d in enumerate(factool.resources().docs)
                    if d.doc_id == passage["doc_id"]
                )
                own = float(index.get_scores(tokenize(claim["claim"]))[doc])
                scores = {float(index.get_scores(tokenize(q))[doc]) for q in wanted}
                assert passage["bm25"] in scores | {own}
                by_claim += passage["bm25"] == own
            assert by_claim, f"no passage found by the claim's own text: {claim}"
        verdicts = [c["verdict"] for c in report["claims"]]
        assert report["factuality"] == round(verdicts.count(SUPPORTED) / len(verdicts), 4)
        stages = {s.stage for s in result.trace}
        assert {"answer", "claims", "queries", "query_words", "bm25", "encode", "rerank"} <= stages


# -- streaming BM25 ------------------------------------------------------------------

_DOCS = [
    "the cat sat on the mat",
    "a dog chased the cat around the garden",
    "cats and dogs are common pets",
    "the stock market fell sharply on monday",
    "markets rallied after the announcement",
    "a garden of roses and tulips",
]


@given(
    st.lists(st.sampled_from("cat dog the garden market xyz roses".split()), max_size=6),
    st.integers(0, 99),
)
def test_streaming_bm25_equals_rank_bm25_for_words_in_any_order(
    words: list[str], seed: int
) -> None:
    from rank_bm25 import BM25Okapi

    corpus = [tokenize(d) for d in _DOCS]
    index = BM25Index(corpus)
    op = factool.StreamingBM25(k=3, index=lambda: index)
    acc = op.init()
    path = (PathEntry("queries", 0),)
    order = list(range(len(words)))
    random.Random(seed).shuffle(order)
    for i in order:  # words may arrive out of order, and twice
        for _ in range(1 + (i % 2)):
            acc = op.add(acc, Item(words[i], "r", (*path, PathEntry("query_words", i)), "w"))
    out = op.result(json.loads(json.dumps(acc)))
    reference = BM25Okapi(corpus).get_scores(tokenize(" ".join(words)))
    best = np.argsort(-reference, kind="stable")[:3] if words else []
    assert out["candidates"] == [(int(d), float(reference[d])) for d in best]


# -- verdicts ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "verdict", "parsed"),
    [
        ("SUPPORTED\nThe gloss says so.", SUPPORTED, True),
        ("REFUTED\nIt was born in 1809.", REFUTED, True),
        ("NOT ENOUGH INFO\nThe passages are about something else.", UNVERIFIABLE, True),
        ("Not supported by the evidence.", REFUTED, True),
        ("True. Lincoln was a president.", SUPPORTED, True),
        ("The claim is false.", REFUTED, True),
        ("After reading the passages, the verdict: SUPPORTED.", SUPPORTED, True),
        ("Lincoln was a lawyer from Illinois.", UNVERIFIABLE, False),
        ("", UNVERIFIABLE, False),
        ("\x00\x01 ### ???", UNVERIFIABLE, False),
    ],
)
def test_verdicts_are_parsed_defensively(text: str, verdict: str, parsed: bool) -> None:
    got = parse_verdict(text)
    assert (got.verdict, got.parsed) == (verdict, parsed)


@given(st.one_of(st.text(), st.none(), st.integers(), st.lists(st.text())))
def test_any_lm_output_gives_a_verdict(value: object) -> None:
    assert parse_verdict(value).verdict in (SUPPORTED, REFUTED, UNVERIFIABLE)
