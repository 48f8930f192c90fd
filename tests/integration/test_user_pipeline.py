"""A user's own pipeline, served without editing this repository: a module on the path,
named in `ALTO_PIPELINE_MODULES`, and a real worker through the real broker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alto.client import Submitter, collect_results, new_request
from alto.config import AltoConfig
from infra.processes import WorkerProcess, wait_assigned
from schemas.messages import Mode, ResultStatus

pytestmark = pytest.mark.integration

MODULE = """
from streams import Pipeline, combine, count, sum_of


def _words(item):
    yield from item.value.split()


def build():
    return (
        Pipeline("letters")
        .fan_out("words", _words)
        .map("length", lambda item: len(item.value), after="words")
        .aggregate("total", combine(words=count(), letters=sum_of(int)), after="length")
    )
"""


def test_a_worker_serves_a_users_pipeline(alto_config: AltoConfig, tmp_path: Path) -> None:
    (tmp_path / "my_letters.py").write_text(MODULE)
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
