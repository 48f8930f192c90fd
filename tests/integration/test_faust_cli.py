"""`faust -A alto.agents.app worker` (Faust's own CLI) runs the same stage agents as `alto worker`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from alto.agents import example
from alto.config import AltoConfig
from alto.infra.client import Submitter, collect_results, new_request
from alto.infra.processes import WorkerProcess, wait_assigned
from alto.schemas.messages import Mode, ResultStatus


def test_faust_cli_worker_serves_requests(alto_config: AltoConfig, tmp_path: Path) -> None:
    faust_bin = str(Path(sys.executable).parent / "faust")
    worker = WorkerProcess(
        alto_config,
        "faust-cli",
        tmp_path,
        command=[faust_bin, "-A", "alto.agents.app", "worker", "-l", "warn"],
    )
    try:
        topology = example.build()
        topics = [*topology.topics(alto_config.internal_prefix), alto_config.sink_topic]
        wait_assigned([worker], topics, alto_config.kafka.partitions)
        texts = example.example_texts(5, seed=3)
        requests = [new_request("example", t, mode=Mode.STREAMING) for t in texts]
        Submitter(alto_config).submit_all(requests)
        got, dupes = collect_results(alto_config, [r.request_id for r in requests], timeout_s=60)
        assert not dupes
        for req in requests:
            assert got[req.request_id].status is ResultStatus.OK
            assert json.loads(got[req.request_id].output or "") == example.expected_output(
                req.input
            )
    finally:
        worker.stop()
