"""FacTool through the real broker with its passage store built ahead: every evidence score a
worker reports is the MaxSim of a query against the store's vectors, not against vectors it
encoded itself; SIMULATED LM engine (the `paper` profile), both modes.

So that the two sources cannot be confused, the store is built with each passage's neighbour's
text (passage i holds passage i+1's vectors): scores from it differ from scores of the real
passage by far more than the noise of encoding a query in another process (thread counts
change the float sums, and the query travels as float16 between stages)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from alto.agents.factool import pipeline as factool
from alto.agents.factool.corpus import WORDNET_DIR, load_wordnet, questions
from alto.agents.factool.encoder import score as passage_score
from alto.agents.factool.resources import Resources, pack, unpack
from alto.config import AltoConfig
from alto.infra.client import Submitter, collect_results, new_request
from alto.infra.processes import WorkerProcess, lm_worker_command, wait_assigned
from alto.schemas.messages import Mode, ResultStatus

pytestmark = pytest.mark.slow


def test_workers_rerank_with_the_stored_vectors(alto_config: AltoConfig, tmp_path: Path) -> None:
    docs = load_wordnet(WORDNET_DIR, parts=("noun",))[40_000:40_600]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "".join(json.dumps({"id": d.doc_id, "title": d.title, "text": d.text}) + "\n" for d in docs)
    )
    config = alto_config.with_overrides(
        lm={"status_interval_s": 0.5, "sim_profile": "paper"},
        pipeline_settings={"factool": {"corpus": str(corpus), "passage_cache": 0}},
        pipelines=(factool.NAME,),
    )
    res = Resources(config)
    n = len(res.docs)
    shifted = res.store.build(lambda r: [res.docs[(i + 1) % n].contents for i in r], res.encoder)
    assert shifted == 1  # 600 passages: one shard, built before the workers start
    faust_worker = WorkerProcess(config, "w1", tmp_path)
    lm = WorkerProcess(config, "lm0", tmp_path, command=lm_worker_command(0, "sim"))
    try:
        topology = factool.build()
        topics = [*topology.topics(config.internal_prefix), config.sink_topic]
        wait_assigned([faust_worker], [*topics, config.lm_requests_topic], config.kafka.partitions)
        asked = questions(res.docs, 3, seed=3)
        requests = [new_request(factool.NAME, q, mode=m) for q in asked for m in Mode]
        Submitter(config).submit_all(requests)
        got, dupes = collect_results(config, [r.request_id for r in requests], timeout_s=180)
        assert not dupes
        assert len(got) == len(requests), faust_worker.log_tail()
    finally:
        faust_worker.stop()
        lm.stop()

    index = {d.doc_id: i for i, d in enumerate(res.docs)}
    stored_scores, online_scores, checked = 0, 0, 0
    for req in requests:
        result = got[req.request_id]
        assert result.status is ResultStatus.OK, result.error
        assert result.simulated
        for claim in json.loads(result.output or "")["claims"]:
            # The claim's evidence came from one of its queries, or from the claim's own text
            # (claim_search); queries travel as float16 between the stages.
            texts = [*claim["queries"], claim["claim"]]
            queries = [unpack(pack(q)) for q in res.encoder.token_embeddings(texts)]
            for passage in claim["evidence"]:
                i = index[passage["doc_id"]]
                (stored,) = res.store.get([i]).values()
                (online,) = res.encoder.token_embeddings([res.docs[i].contents])
                checked += 1
                stored_scores += any(_near(q, stored, passage["score"]) for q in queries)
                online_scores += any(_near(q, online, passage["score"]) for q in queries)
    assert checked >= 6
    assert stored_scores == checked  # every score: a query against the stored vectors
    assert online_scores < checked / 2  # not what encoding the passage itself gives


def _near(query: np.ndarray, passage: np.ndarray, score: float) -> bool:
    return abs(passage_score(query, passage) - score) < 5e-3
