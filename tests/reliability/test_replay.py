"""End-to-end retry: a request with no result after ALTO_ADMISSION__RETRY_S is replayed from its
root by the ingest worker that admitted it, and the replay still yields exactly one correct
result (every stage is idempotent)."""

from __future__ import annotations

import collections
import json
import time
from pathlib import Path

from alto.agents import example
from alto.config import AltoConfig
from alto.infra.client import Submitter, TopicReader, collect_results, new_request
from alto.schemas.messages import Mode, PipelineResult, Quantum, ResultStatus
from tests.harness import WorkerProcess, wait_assigned, wait_committed_to_the_end


def test_a_request_without_result_is_replayed_and_answered_once(
    alto_config: AltoConfig, tmp_path: Path
) -> None:
    config = alto_config.with_overrides(
        admission={"retry_s": 2.0},
    )
    text = "One short sentence here. And a second one."
    request = new_request(example.NAME, text, mode=Mode.STREAMING)
    topology = example.build()
    # The topic ingest writes to: the first stage after those chained into ingest.
    first_topic = topology.stage_topic(config.internal_prefix, topology.topic_stages[0])
    # Ingest and sink only: no stage runs, so the request cannot finish and is replayed.
    front = WorkerProcess(
        config, "front", tmp_path, env={"ALTO_ROLES": "ingest,sink"}, loglevel="info"
    )
    stages = None
    try:
        wait_assigned([front], [config.requests_topic, config.sink_topic], config.kafka.partitions)
        Submitter(config).submit_all([request])
        deadline = time.monotonic() + 60
        while "replaying it from its root" not in front.log_file.read_text(errors="replace"):
            assert time.monotonic() < deadline, front.log_tail()
            time.sleep(0.5)
        # The chain behind ingest ran twice: everything it sent, it sent twice.
        sent = collections.Counter(
            (q.request_id, q.stage, q.path, q.kind, q.payload)
            for q in (
                Quantum.decode(v)
                for _, v in TopicReader(config, first_topic).poll(2.0)
                if v is not None
            )
        )
        assert sent, "nothing reached the first topic"
        assert {k[0] for k in sent} == {request.request_id}
        assert set(sent.values()) == {2}, f"not every quantum sent twice: {sent}"
        # Now the stages run, and see the root twice.
        stages = WorkerProcess(config, "stages", tmp_path, env={"ALTO_ROLES": "stages"})
        got, dupes = collect_results(config, [request.request_id], timeout_s=90)
        assert request.request_id in got, stages.log_tail()
        result = got[request.request_id]
        assert result.status is ResultStatus.OK, result.error
        assert json.loads(result.output or "") == example.expected_output(text)
        # Both roots fully processed (the stages' and the sink's inputs committed to their
        # end: each input is acked only after its outputs were handed to the producer), so a
        # second result, if there were one, is on the results topic by now.
        for topic in (*topology.topics(config.internal_prefix), config.sink_topic):
            wait_committed_to_the_end(config, topic)
        every = [
            PipelineResult.decode(v)
            for _, v in TopicReader(config, config.results_topic).poll(2.0)
            if v is not None
        ]
        assert [r.request_id for r in every] == [request.request_id], "exactly one result"
        assert not dupes
    finally:
        for proc in (front, stages):
            if proc is not None:
                proc.stop()
