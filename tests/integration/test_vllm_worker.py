"""The real engine: vLLM (SmolLM2-135M on CPU) behind an LM worker, through the real broker."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pytest

from alto.agents import claims
from alto.config import AltoConfig
from alto.infra.client import Submitter, TopicReader, collect_results, new_request
from alto.infra.processes import WorkerProcess, lm_worker_command, wait_assigned
from alto.schemas.messages import LMStatus, Mode, Quantum, QuantumKind, ResultStatus

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

vllm = pytest.importorskip("vllm", reason="vLLM is installed by `make setup`")


def test_vllm_streams_each_quantum_before_its_generation_ends(
    alto_config: AltoConfig, tmp_path: Path
) -> None:
    config = alto_config.with_overrides(
        lm={"status_interval_s": 0.5},
    )
    faust_worker = WorkerProcess(config, "w1", tmp_path)
    lm = WorkerProcess(config, "lm0", tmp_path, command=lm_worker_command(0, "vllm"))
    try:
        topology = claims.build()
        topics = [
            *topology.topics(config.internal_prefix),
            config.sink_topic,
            config.lm_requests_topic,
        ]
        wait_assigned([faust_worker], topics, config.kafka.partitions)
        questions = [
            "the Moon",
            "Paris",
            "carbon",
            "the Nile",
            "Mount Everest",
            "oxygen",
            "Jupiter",
            "the Pacific Ocean",
        ]
        requests = [new_request("claims", q, mode=Mode.STREAMING) for q in questions]
        reply = TopicReader(config, topology.stage_topic(config.internal_prefix, "words"))
        Submitter(config).submit_all(requests)
        got, dupes = collect_results(config, [r.request_id for r in requests], timeout_s=300)
        assert not dupes
        for req in requests:
            result = got[req.request_id]
            assert result.status is ResultStatus.OK, result.error
            out = json.loads(result.output or "")
            assert out["n"] == len(out["claims"]) >= 1
            assert all(c["words"] >= 1 for c in out["claims"])
        # Streaming is real: each request's first claim reached the reply topic before
        # that request's generation finished (the END is made when generation ends).
        first_data: dict[str, int] = {}
        gen_end: dict[str, int] = {}
        kinds = collections.Counter()
        for _, value, ts in reply.poll_records(5.0):
            q = Quantum.decode(value)
            if q.stage != "claims":
                continue
            kinds[q.kind] += 1
            if q.kind is QuantumKind.DATA:
                first_data[q.request_id] = min(ts, first_data.get(q.request_id, ts))
            elif q.kind is QuantumKind.END:
                gen_end[q.request_id] = q.created_at_ms
        reply.close()
        for req in requests:
            assert first_data[req.request_id] < gen_end[req.request_id], req.input
        statuses = [
            LMStatus.decode(v) for _, v in TopicReader(config, config.lm_status_topic).poll(2.0)
        ]
        assert statuses and all(s.engine == "vllm" and not s.simulated for s in statuses)
        assert max(s.running for s in statuses) > 1  # continuous batching, not one at a time
    finally:
        lm.stop(timeout_s=30)
        faust_worker.stop()
