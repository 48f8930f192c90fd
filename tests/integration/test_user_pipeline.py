"""A user's own pipeline, served without editing this repository: a module on the path,
named in `ALTO_PIPELINE_MODULES`, and a real worker through the real broker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alto.config import AltoConfig
from alto.infra.client import Submitter, collect_results, new_request
from alto.infra.processes import WorkerProcess, wait_assigned
from alto.schemas.messages import Mode, ResultStatus
from tests.harness import USER_PIPELINE_MODULE
from tests.integration.test_up import run_up_and_submit


def test_a_worker_serves_a_users_pipeline(alto_config: AltoConfig, tmp_path: Path) -> None:
    (tmp_path / "my_letters.py").write_text(USER_PIPELINE_MODULE)
    config = alto_config.with_overrides(pipeline_modules=("my_letters",), pipelines=("letters",))
    worker = WorkerProcess(config, "w1", tmp_path, env={"PYTHONPATH": str(tmp_path)})
    try:
        prefix = config.kafka.topic_prefix
        # `words` and `length` are stateless, so they run in ingest (chained): `total`,
        # the aggregate, is the pipeline's one stage topic.
        topics = [f"{prefix}letters.total"]
        wait_assigned([worker], [*topics, config.requests_topic], config.kafka.partitions)
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


@pytest.mark.parametrize("route", ["module:attribute", "--pipeline flag", "entry point"])
def test_alto_up_serves_a_users_pipeline_from_outside_the_repository(
    tmp_path: Path, route: str
) -> None:
    """`alto up --engine sim` serves a pipeline module written in a folder of its own (a
    fan-out and a keyed aggregation, no LM), found either through `ALTO_PIPELINE_MODULES`
    or `alto up --pipeline my_letters:build` (`module:attribute`), or as an entry point of an installed distribution (a
    `.dist-info` on the path, as pip leaves it); an independent client checks the result."""
    site = tmp_path / "site"
    site.mkdir()
    env = {"PYTHONPATH": str(site)}
    up_args: tuple[str, ...] = ()
    if route != "entry point":
        (site / "my_letters.py").write_text(USER_PIPELINE_MODULE)
        name = "letters"
        if route == "module:attribute":
            env["ALTO_PIPELINE_MODULES"] = "my_letters:build"
        else:  # this stack serves that pipeline alone
            up_args = ("--pipeline", "my_letters:build")
    else:
        name = "letters_ep"
        (site / "ep_letters.py").write_text(USER_PIPELINE_MODULE.replace('"letters"', f'"{name}"'))
        info = site / "ep_letters-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-letters\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(f"[alto.pipelines]\n{name} = ep_letters:build\n")
    result = run_up_and_submit(
        tmp_path,
        engine="sim",
        workers=1,
        lm_instances=1,
        pipeline=name,
        text="a bb ccc",
        ready_timeout_s=180,
        result_timeout_s=120,
        calls_lm=False,
        up_args=up_args,
        env_extra=env,
    )
    assert result["status"] == "OK", result["error"]
    assert json.loads(result["output"]) == {"words": 3, "letters": 6}
