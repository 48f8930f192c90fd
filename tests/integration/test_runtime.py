"""The streaming runtime on a real broker with two Faust worker processes."""

from __future__ import annotations

import collections
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka.partitioner import DefaultPartitioner

from alto.agents import example
from alto.config import AltoConfig
from alto.infra.client import Submitter, TopicReader, collect_results, new_request, trail
from alto.kafka import ensure_topics
from alto.schemas.messages import (
    DeadLetter,
    Mode,
    PathEntry,
    PipelineRequest,
    PipelineResult,
    ResultStatus,
)
from alto.streams.ancestry import key_at_level
from alto.streams.pipeline import REQUEST
from tests.harness import WorkerProcess, wait_assigned, wait_committed_to_the_end

STATEFUL = ("sentence_stats", "request_stats")


@pytest.fixture
def two_workers(
    alto_config: AltoConfig, tmp_path: Path
) -> Iterator[tuple[list[WorkerProcess], dict]]:
    topology = example.build()
    topics = [topology.stage_topic(alto_config.internal_prefix, s) for s in topology.topic_stages]
    topics.append(alto_config.sink_topic)
    workers = [WorkerProcess(alto_config, f"w{i}", tmp_path) for i in (1, 2)]
    try:
        owners = wait_assigned(workers, topics, alto_config.kafka.partitions)
        yield workers, owners
    finally:
        for w in workers:
            w.stop()


def _results_by_id(config: AltoConfig) -> dict[str, list[PipelineResult]]:
    reader = TopicReader(config, config.results_topic)
    seen: dict[str, list[PipelineResult]] = collections.defaultdict(list)
    try:
        for _, value in reader.poll(3.0):
            result = PipelineResult.decode(value)
            seen[result.request_id].append(result)
    finally:
        reader.close()
    return seen


def _check_correct(
    config: AltoConfig,
    requests: list[PipelineRequest],
    got: dict[str, PipelineResult],
    workers: list[WorkerProcess],
) -> None:
    missing = [r.request_id for r in requests if r.request_id not in got]
    if missing:
        topics = example.build().topics(config.internal_prefix)
        logs = "\n".join(f"--- {w.worker_id}:\n{w.log_tail(60)}" for w in workers)
        raise AssertionError(
            f"{len(missing)} requests got no result: {missing}\n"
            f"{trail(config, topics, missing)}\n{logs}"
        )
    for req in requests:
        result = got[req.request_id]
        assert result.status is ResultStatus.OK, result.error
        assert result.mode is req.mode
        assert json.loads(result.output or "") == example.expected_output(req.input), req.request_id


def test_two_workers_serve_400_concurrent_requests_exactly(
    alto_config: AltoConfig, two_workers: tuple[list[WorkerProcess], dict]
) -> None:
    workers, owners = two_workers
    texts = example.example_texts(200, seed=21)
    requests = [
        new_request("example", t, mode=m) for t in texts for m in (Mode.STREAMING, Mode.BASELINE)
    ]
    Submitter(alto_config).submit_all(requests)
    got, dupes = collect_results(alto_config, [r.request_id for r in requests], timeout_s=180)
    _check_correct(alto_config, requests, got, workers)
    assert not dupes

    # The aggregation constraint, proven: every aggregation node was folded by exactly one
    # worker, and that worker owned the partition its derived key hashes to.
    topology = example.build()
    partitioner = DefaultPartitioner()
    parts = list(range(alto_config.kafka.partitions))
    used = collections.Counter()
    for result in got.values():
        for span in result.trace:
            if span.stage != REQUEST:
                # Every stage records when its input was emitted and received (one host, one
                # clock; rounding to the millisecond either way): the critical path's transit
                # and waiting (streams/critical_path.py).
                done = span.end_ms if span.stage in STATEFUL else span.start_ms
                assert span.input_ms - 1 <= span.received_ms <= done + 1, span
            if span.stage not in STATEFUL:
                continue
            assert len(span.processed_by) == 1, (
                f"{span.stage} {span.path} folded by {span.processed_by}"
            )
            path = tuple(
                PathEntry(s, int(i)) for s, i in (p.split(":") for p in span.path.split("/") if p)
            )
            key = key_at_level(result.request_id, path, topology.level[span.stage])
            partition = partitioner(key.encode(), parts, parts)
            topic = topology.stage_topic(alto_config.internal_prefix, span.stage)
            assert span.processed_by[0] == owners[(topic, partition)]
            used[span.processed_by[0]] += 1
    assert set(used) == {"w1", "w2"}, f"one worker did all aggregation: {used}"
    assert all(w.alive() for w in workers)
    wait_committed_to_the_end(alto_config, alto_config.requests_topic)


def test_sigkilled_worker_loses_nothing_and_duplicates_nothing(
    alto_config: AltoConfig, two_workers: tuple[list[WorkerProcess], dict]
) -> None:
    workers, _ = two_workers
    texts = example.example_texts(300, seed=33)
    requests = [
        new_request("example", t, mode=Mode.STREAMING if i % 2 else Mode.BASELINE)
        for i, t in enumerate(texts)
    ]
    ids = [r.request_id for r in requests]
    Submitter(alto_config).submit_all(requests)
    reader = TopicReader(alto_config, alto_config.results_topic)
    got: dict[str, PipelineResult] = {}
    # Kill one worker once some, but not all, results are out.
    deadline = time.monotonic() + 120
    while len(got) < len(ids) // 5 and time.monotonic() < deadline:
        for _, value in reader.poll(0.2):
            result = PipelineResult.decode(value)
            got[result.request_id] = result
    assert 0 < len(got) < len(ids), f"{len(got)} results before the kill; cannot test mid-run"
    workers[0].kill()
    rest, _ = collect_results(alto_config, set(ids) - set(got), timeout_s=180, reader=reader)
    reader.close()
    got.update(rest)
    _check_correct(alto_config, requests, got, workers)
    counts = {rid: len(rs) for rid, rs in _results_by_id(alto_config).items()}
    assert {rid: n for rid, n in counts.items() if n != 1} == {}
    assert workers[1].alive()


def test_malformed_bytes_become_dead_letters_and_failed_results(
    alto_config: AltoConfig, two_workers: tuple[list[WorkerProcess], dict]
) -> None:
    workers, _ = two_workers
    submitter = Submitter(alto_config)
    stage_topic = example.build().stage_topic(alto_config.internal_prefix, "sentence_stats")
    good = new_request("example", "A sentence that works. And another one.")
    wrong_fp = good.encode()[:2] + b"\x00" * 8 + good.encode()[10:]
    submitter.submit_raw(b"bad-garbage", b"\x00\x01garbage")
    submitter.submit_raw(b"bad-fingerprint", wrong_fp)
    submitter.submit_raw(b"bad-truncated", good.encode()[:-5])
    submitter.submit_raw(b"bad-stage|sentences:0", b"\xc3\x01not a quantum", topic=stage_topic)
    submitter.submit_raw(b"\xff\xfe", b"junk with an unreadable key")
    submitter.submit(new_request("no-such-pipeline", "x", request_id="bad-pipeline"))
    submitter.submit(good)
    submitter.flush()
    failed_ids = ["bad-garbage", "bad-fingerprint", "bad-truncated", "bad-stage", "bad-pipeline"]
    got, dupes = collect_results(alto_config, [*failed_ids, good.request_id], timeout_s=60)
    for rid in failed_ids:
        assert got[rid].status is ResultStatus.FAILED, rid
        assert got[rid].error
    assert got[good.request_id].status is ResultStatus.OK  # the workers kept serving
    assert not dupes

    reader = TopicReader(alto_config, alto_config.dlq_topic)
    letters = [DeadLetter.decode(v) for _, v in reader.poll(3.0)]
    reader.close()
    by_key = {letter.key: letter for letter in letters}
    assert by_key[b"bad-garbage"].reason == "undecodable"
    assert by_key[b"bad-fingerprint"].reason == "unknown_fingerprint"
    assert by_key[b"bad-truncated"].reason == "undecodable"
    assert by_key[b"bad-stage|sentences:0"].source_topic == stage_topic
    assert by_key[b"bad-stage|sentences:0"].request_id == "bad-stage"
    assert by_key[b"\xff\xfe"].value == b"junk with an unreadable key"
    assert by_key[b"\xff\xfe"].request_id is None
    assert by_key[b"bad-pipeline"].reason == "unknown_pipeline"
    assert all(w.alive() for w in workers)


def test_topic_creation_is_idempotent_and_checks_partitions(alto_config: AltoConfig) -> None:
    name = alto_config.topic("idem")
    assert ensure_topics(alto_config, {name: 3}) == {name: 3}
    assert ensure_topics(alto_config, {name: 3}) == {name: 3}
    from alto.errors import BrokerError

    with pytest.raises(BrokerError):
        ensure_topics(alto_config, {name: 5})
