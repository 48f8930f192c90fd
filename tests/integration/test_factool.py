"""The FacTool pipeline end to end on real vLLM (SmolLM2-135M on CPU) through the real broker:
questions drawn from WordNet, both modes, well-formed results, and streaming visible in the
trace (BM25 work on the first claim starts before the request's claim extraction ends)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alto.agents.factool import pipeline as factool
from alto.agents.factool.corpus import load_wordnet, questions
from alto.agents.factool.verdict import REFUTED, SUPPORTED, UNVERIFIABLE
from alto.config import AltoConfig
from alto.infra.client import Submitter, TopicReader, collect_results, new_request
from alto.infra.processes import WorkerProcess, lm_worker_command, wait_assigned
from alto.schemas.messages import Mode, Quantum, QuantumKind, ResultStatus

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

vllm = pytest.importorskip("vllm", reason="vLLM is installed by `make setup`")


def _claims_ends(config: AltoConfig) -> dict[str, int]:
    """Per request: when its last claim-extraction call finished (its END was made)."""
    topology = factool.build()
    reader = TopicReader(config, topology.stage_topic(config.internal_prefix, "evidence"))
    ends: dict[str, int] = {}
    for _, value in reader.poll(3.0):
        q = Quantum.decode(value)
        if q.stage == "claims" and q.kind is QuantumKind.END and len(q.path) == 1:
            ends[q.request_id] = max(q.created_at_ms, ends.get(q.request_id, 0))
    reader.close()
    return ends


def _claim_of(path: str) -> tuple[int, ...]:
    """(answer, claim) indices of a trace path such as answer:0/claims:2/queries:1."""
    return tuple(int(level.split(":")[1]) for level in path.split("/")[:2])


def test_factool_on_vllm_in_both_modes(alto_config: AltoConfig, tmp_path: Path) -> None:
    config = alto_config.with_overrides(lm={"status_interval_s": 0.5}, warmup=True)
    faust_worker = WorkerProcess(config, "w1", tmp_path)
    lm = WorkerProcess(config, "lm0", tmp_path, command=lm_worker_command(0, "vllm"))
    try:
        topology = factool.build()
        topics = [*topology.topics(config.internal_prefix), config.sink_topic]
        wait_assigned([faust_worker], [*topics, config.lm_requests_topic], config.kafka.partitions)
        asked = questions(load_wordnet(), 3, seed=5)
        requests = [
            new_request(factool.NAME, q, mode=m)
            for q in asked
            for m in (Mode.STREAMING, Mode.BASELINE)
        ]
        Submitter(config).submit_all(requests)
        got, dupes = collect_results(config, [r.request_id for r in requests], timeout_s=600)
        assert not dupes
        missing = [r.input for r in requests if r.request_id not in got]
        assert not missing, f"no result for {missing}; worker:\n{faust_worker.log_tail()}"
        ends = _claims_ends(config)
        overlapped = 0
        for req in requests:
            result = got[req.request_id]
            assert result.status is ResultStatus.OK, result.error
            assert not result.simulated
            report = json.loads(result.output or "")
            print(f"\n[{req.mode}] {req.input}\n  answer: {report['answer']}")
            for c in report["claims"]:
                top = c["evidence"][0]["title"] if c["evidence"] else None
                print(f"  - {c['claim']} | queries {c['queries']} | {top} | {c['verdict']}")
            assert report["answer"].strip()
            for claim in report["claims"]:
                assert claim["claim"].strip()
                assert claim["evidence"], f"claim without evidence: {claim}"
                assert all(p["doc_id"] and p["text"] for p in claim["evidence"])
                assert claim["verdict"] in (SUPPORTED, REFUTED, UNVERIFIABLE)
            if len(report["claims"]) > 1 and req.mode is Mode.STREAMING:
                # (With one claim, extraction ends as that claim does: nothing to overlap.)
                overlapped += 1
                bm25 = [s for s in result.trace if s.stage == "bm25"]
                first = min(_claim_of(s.path) for s in bm25)
                first_bm25 = min(s.start_ms for s in bm25 if _claim_of(s.path) == first)
                assert first_bm25 < ends[req.request_id], "BM25 waited for claim extraction"
        assert overlapped, "no streaming request had two claims to show the overlap on"
    finally:
        lm.stop(timeout_s=30)
        faust_worker.stop(timeout_s=30)
