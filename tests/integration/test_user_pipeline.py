"""A user's own pipeline, served without editing this repository: a module on the path,
named in `ALTO_PIPELINE_MODULES`, and a real worker through the real broker."""

from __future__ import annotations

import json
from pathlib import Path

from alto.config import AltoConfig
from alto.infra.client import Submitter, collect_results, new_request
from alto.infra.processes import WorkerProcess, wait_assigned
from alto.schemas.messages import Mode, ResultStatus
from tests.harness import USER_PIPELINE_MODULE


def test_a_worker_serves_a_users_pipeline(alto_config: AltoConfig, tmp_path: Path) -> None:
    (tmp_path / "my_letters.py").write_text(USER_PIPELINE_MODULE)
    config = alto_config.with_overrides(pipeline_modules=("my_letters",), pipelines=("letters",))
    worker = WorkerProcess(config, "w1", tmp_path, env={"PYTHONPATH": str(tmp_path)})
    try:
        prefix = config.topic_prefix
        topics = [f"{prefix}letters.words", f"{prefix}letters.length", f"{prefix}letters.total"]
        wait_assigned([worker], [*topics, config.requests_topic], config.partitions)
        requests = [
            new_request("letters", text, mode=mode)
            for text, mode in [("a bb ccc", Mode.STREAMING), ("four five six", Mode.BASELINE)]
        ]
        Submitter(config).submit_all(requests)
        got, dupes = collect_results(config, [r.request_id for r in requests], timeout_s=60)
        assert not dupes
        for request in requests:
            result = got[request.request_id]
            assert result.status is ResultStatus.OK, result.error
            words = request.input.split()
            assert json.loads(result.output or "") == {
                "words": len(words),
                "letters": sum(map(len, words)),
            }
    finally:
        worker.stop()
