"""Coalesced changelogs (`alto.agents.stores.CoalescedTable`) through the broker: a worker's
aggregator writes each node's state to its changelog once per commit rather than once per
update, every node's last state still reaches the changelog, and the results stay exact."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from alto.agents import example
from alto.agents.faust_settings import changelog_topic
from alto.infra.client import Submitter, TopicReader, collect_results, new_request
from alto.infra.logstats import log_stats
from alto.schemas.messages import Mode, ResultStatus
from tests.harness import WorkerProcess, fresh_config, wait_assigned

STAGE = "sentence_stats"


@pytest.mark.parametrize("coalesce", [True, False], ids=["coalesced", "every-update"])
def test_each_nodes_last_state_reaches_the_changelog(
    bootstrap_servers: str, tmp_path: Path, coalesce: bool
) -> None:
    config = fresh_config(bootstrap_servers, tmp_path, state={"coalesce_changelog": coalesce})
    topology = example.build()
    stage_topic = topology.stage_topic(config.internal_prefix, STAGE)
    texts = example.example_texts(40, seed=5)
    requests = [new_request("example", t, mode=m) for t in texts for m in Mode]
    nodes = sum(len(example.split_sentences(r.input)) for r in requests)
    worker = WorkerProcess(config, "w1", tmp_path)
    try:
        wait_assigned([worker], [stage_topic], config.kafka.partitions)
        Submitter(config).submit_all(requests)
        got, dupes = collect_results(config, [r.request_id for r in requests], timeout_s=120)
        assert len(got) == len(requests) and not dupes
        for r in requests:
            result = got[r.request_id]
            assert result.status is ResultStatus.OK, result.error
            assert json.loads(result.output or "") == example.expected_output(r.input)
        # The last writes go out with the worker's next commit: read until every node's
        # latest state on the changelog is its done marker.
        last: dict[bytes | None, object] = {}
        written = 0
        reader = TopicReader(config, changelog_topic(config, f"example.{STAGE}"))
        deadline = time.monotonic() + 60
        try:
            while time.monotonic() < deadline:
                for key, value in reader.poll(0.5):
                    written += 1
                    last[key] = json.loads(value) if value else None
                if len(last) == nodes and all(_done(v) for v in last.values()):
                    break
        finally:
            reader.close()
        inputs = sum(p.records for p in log_stats(config, [stage_topic]))
    finally:
        worker.stop()
    print(f"coalesce={coalesce}: {written} changelog records for {nodes} nodes, {inputs} inputs")
    open_nodes = {k: v for k, v in last.items() if not _done(v)}
    assert len(last) == nodes and not open_nodes, (len(last), nodes, list(open_nodes)[:3])
    # Every word and every END a node gathers updates its state; `inputs` counts them.
    if coalesce:
        assert written < inputs / 2, (written, inputs)
    else:
        assert written >= inputs - nodes, (written, inputs)


def _done(state: object) -> bool:
    return isinstance(state, dict) and state.get("done") is True
