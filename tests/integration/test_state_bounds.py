"""Bounded state in a real worker: after many requests its tables empty out once the
retention passes, and a request that cannot complete fails at its deadline, naming the
stage that held it, and frees that state."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from alto.agents import example
from alto.config import AltoConfig
from alto.infra.client import Submitter, TopicReader, new_request
from alto.schemas.messages import Mode, PipelineResult, Quantum, QuantumKind, ResultStatus
from alto.streams.ancestry import key_at_level
from alto.streams.processor import DEADLINE
from tests.harness import WorkerProcess, fresh_config, wait_assigned

TABLES = ("example.sentence_stats", "example.request_stats", "results")


@pytest.fixture
def bounded(
    request: pytest.FixtureRequest, bootstrap_servers: str, tmp_path: Path
) -> Iterator[tuple[AltoConfig, WorkerProcess]]:
    """One worker with short retentions. The request deadline is 4 s for the deadline test
    (`@pytest.mark.parametrize("bounded", [4.0], indirect=True)`), else 120 s: a busy
    machine can take longer than 4 s over a request that does complete."""
    config = fresh_config(
        bootstrap_servers,
        tmp_path,
        pipelines=("example",),
        state={
            "retention_s": 2.0,
            "results_retention_s": 2.0,
            "deadline_s": getattr(request, "param", 120.0),
            "sweep_s": 0.5,
        },
        admission={"retry_s": 0.0},
    )
    worker = WorkerProcess(config, "w1", tmp_path)
    try:
        topology = example.build()
        topics = [topology.stage_topic(config.internal_prefix, s) for s in topology.topic_stages]
        wait_assigned([worker], [*topics, config.sink_topic], config.kafka.partitions)
        yield config, worker
    finally:
        worker.stop()


def _table_keys(worker: WorkerProcess) -> dict[str, int]:
    port = (worker.status() or {}).get("metrics_port")
    assert isinstance(port, int)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("alto_table_keys{"):
            table = line.split('table="', 1)[1].split('"', 1)[0]
            out[table] = int(float(line.rsplit(" ", 1)[1]))
    return out


def _wait_for(check, timeout_s: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.25)
    raise AssertionError(f"{what} not seen within {timeout_s:.0f} s (last: {last!r})")


def _results(config: AltoConfig, ids: set[str], timeout_s: float) -> dict[str, PipelineResult]:
    reader = TopicReader(config, config.results_topic)
    got: dict[str, PipelineResult] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while ids - got.keys() and time.monotonic() < deadline:
            for _, value in reader.poll(0.5):
                result = PipelineResult.decode(value)
                if result.request_id in ids:
                    got.setdefault(result.request_id, result)
    finally:
        reader.close()
    return got


def test_tables_empty_out_after_the_retention(bounded: tuple[AltoConfig, WorkerProcess]) -> None:
    config, worker = bounded
    texts = example.example_texts(40, seed=3)
    requests = [new_request("example", t, request_id=f"b{i}") for i, t in enumerate(texts)]
    submitter = Submitter(config)
    submitter.submit_all(requests)
    results = _results(config, {r.request_id for r in requests}, 90)
    assert len(results) == len(requests)
    bad = {
        r.request_id: (r.status, r.error)
        for r in results.values()
        if r.status is not ResultStatus.OK
    }
    assert not bad
    # The tables held state for every request (done markers, results) ...
    held = _wait_for(
        lambda: (k := _table_keys(worker)) and sum(k.get(t, 0) for t in TABLES) > 0 and k,
        30,
        "table keys reported",
    )
    assert held
    # ... and, with nothing new arriving, drop all of it once the retention passes.
    _wait_for(
        lambda: (k := _table_keys(worker)) and all(k.get(t, -1) == 0 for t in TABLES),
        60,
        "empty tables",
    )


@pytest.mark.parametrize("bounded", [4.0], indirect=True)
def test_a_request_that_cannot_complete_fails_at_its_deadline(
    bounded: tuple[AltoConfig, WorkerProcess],
) -> None:
    config, worker = bounded
    topology = example.build()
    # A forged END promises request_stats three sentences that never come: the node would
    # stay open for ever.
    forged = Quantum(
        "forged-end", "example", Mode.STREAMING, "sentence_stats", (), 0, QuantumKind.END,
        int(time.time() * 1000), int(time.time() * 1000), count=3,
    )  # fmt: skip
    key = key_at_level("forged-end", (), topology.key_level("request_stats"))
    submitter = Submitter(config)
    submitter.submit_raw(
        key.encode(), forged.encode(), topology.stage_topic(config.internal_prefix, "request_stats")
    )
    submitter.flush()
    results = _results(config, {"forged-end"}, 60)
    result = results["forged-end"]
    assert result.status is ResultStatus.FAILED
    assert result.error is not None
    assert result.error.startswith(f"{DEADLINE}: stage 'request_stats'"), result.error
    assert "'sentence_stats'" in result.error  # what it was waiting for
    # Its state was freed: the table ends empty (the marker expires too).
    _wait_for(
        lambda: (k := _table_keys(worker)) and k.get("example.request_stats", -1) == 0,
        60,
        "request_stats emptied",
    )
