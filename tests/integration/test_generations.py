"""Generations of the internal topics: ingest moves from one generation's workers to the
next under a steady load, every request is answered exactly once, and the drained
generation's topics are deleted while the new one serves on."""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

from confluent_kafka.admin import AdminClient

from alto.agents import example
from alto.config import AltoConfig
from alto.infra import generations
from alto.infra.broker import free_port
from alto.infra.chaos_workload import workload, wrong_reason
from alto.infra.client import Submitter, collect_results, new_request
from alto.infra.stack import Stack
from alto.kafka import client_settings
from alto.schemas.messages import Mode, PipelineRequest, ResultStatus
from tests.harness import WorkerProcess, wait_assigned

RATE = 20  # requests per second while the handover happens


class _Load(threading.Thread):
    """Submits example requests at a steady rate until stopped; remembers what it sent."""

    def __init__(self, config: AltoConfig) -> None:
        super().__init__(daemon=True)
        self.submitter = Submitter(config)
        self.sent: dict[str, str] = {}
        self.stopped = threading.Event()
        self.texts = example.example_texts(400, seed=5)

    def wait_sent(self, n: int, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.sent) < n:
            assert self.is_alive() and time.monotonic() < deadline, f"{len(self.sent)} sent"
            time.sleep(0.05)

    def run(self) -> None:
        i = 0
        while not self.stopped.is_set():
            text = self.texts[i % len(self.texts)]
            mode = (Mode.STREAMING, Mode.BASELINE)[i % 2]
            request = new_request(example.NAME, text, mode=mode)
            self.sent[request.request_id] = text
            self.submitter.submit(request)
            self.submitter.flush()
            i += 1
            self.stopped.wait(1 / RATE)


def _topics(config: AltoConfig) -> set[str]:
    return set(AdminClient(client_settings(config)).list_topics(timeout=10).topics)


def _assigned(worker: WorkerProcess, config: AltoConfig) -> None:
    topics = [*example.build().topics(config.internal_prefix), config.requests_topic]
    wait_assigned([worker], topics, config.kafka.partitions)


def test_ingest_moves_to_the_next_generation_exactly_and_the_old_one_is_deleted(
    alto_config: AltoConfig, tmp_path: Path
) -> None:
    base = alto_config.with_overrides(pipelines=(example.NAME,))
    first = base.with_overrides(generations={"current": 1})
    second = base.with_overrides(
        generations={"current": 2, "handoff_file": generations.handoff_file(tmp_path, 2)},
    )
    assert set(generations.internal_topics(first)).isdisjoint(generations.internal_topics(second))
    generations.create(first)
    old = WorkerProcess(first, "g1", tmp_path, env={"ALTO_ROLES": "ingest,stages,sink"})
    new: WorkerProcess | None = None
    load = _Load(base)
    try:
        _assigned(old, first)
        load.start()
        load.wait_sent(40)  # traffic on the old generation before the new one exists
        generations.create(second, after=first)
        new = WorkerProcess(second, "g2", tmp_path, env={"ALTO_ROLES": "ingest,stages,sink"})
        _assigned(new, second)
        starts = generations.hand_over([old], first, second)
        assert starts, "the old generation committed nothing on the requests topic"
        load.wait_sent(len(load.sent) + 60)  # and on the new one after the handover
        load.stopped.set()
        load.join(10)
        got, dupes = collect_results(base, load.sent, timeout_s=90)
        assert not dupes, f"answered twice: {[d.request_id for d in dupes][:5]}"
        missing = set(load.sent) - set(got)
        assert not missing, f"{len(missing)} of {len(load.sent)} unanswered"
        served_by: dict[str, int] = {"g1": 0, "g2": 0}
        for request_id, text in load.sent.items():
            result = got[request_id]
            assert result.status is ResultStatus.OK, result.error
            assert json.loads(result.output or "") == example.expected_output(text)
            workers = {w for span in result.trace for w in span.processed_by}
            assert len(workers & {"g1", "g2"}) == 1, f"{request_id} crossed generations"
            served_by[(workers & {"g1", "g2"}).pop()] += 1
        assert served_by["g1"] and served_by["g2"], served_by
        # The new generation never fetched the old one's requests (the ingest gate), so no
        # requests partition's first record was left behind for the stall re-read to find.
        # (A stage topic can still see one: the embedded broker's fetch race, README item 6.)
        stalls = [
            line
            for line in new.log_file.read_text().splitlines()
            if "still unprocessed" in line and f"topic='{base.requests_topic}'" in line
        ]
        assert not stalls, stalls

        # The old generation drains (nothing in flight), stops, and its topics go.
        deadline = time.monotonic() + 60
        while not generations.drained([old]):
            assert time.monotonic() < deadline, old.status()
            time.sleep(0.2)
        old.stop()
        deleted = generations.delete(first)
        assert set(generations.internal_topics(first)) <= set(deleted)
        left = _topics(base)
        assert not left & set(deleted), sorted(left & set(deleted))
        assert not [t for t in left if t.startswith(f"{first.group_id}-")], sorted(left)
        assert generations.committed(first, first.requests_topic) == {}  # its group is gone
        assert {base.requests_topic, base.results_topic} <= left

        # The new generation serves on.
        later = [new_request(example.NAME, "After the deletion. Still served.") for _ in range(5)]
        Submitter(base).submit_all(later)
        got, dupes = collect_results(base, [r.request_id for r in later], timeout_s=60)
        assert not dupes
        for r in later:
            assert got[r.request_id].status is ResultStatus.OK, got[r.request_id].error
            assert {w for s in got[r.request_id].trace for w in s.processed_by} == {"g2"}
    finally:
        load.stopped.set()
        old.stop()
        if new is not None:
            new.stop()


def test_the_stack_rotates_generations_under_load_and_deletes_the_drained_ones(
    alto_config: AltoConfig, tmp_path: Path
) -> None:
    """`alto up`'s rotation (`Stack` with `generation_s`) on the embedded broker, LM stages
    included (SIMULATED engine): two rotations under a steady load of both pipelines, every
    request answered once and right, every retired generation's topics gone."""
    config = alto_config.with_overrides(
        generations={"rotate_s": 8.0},
        lm={"engine": "sim", "sim_time_scale": 0.2},
    )
    stack = Stack(
        config,
        workers=1,
        lm_instances=1,
        listen=f"127.0.0.1:{free_port()}",
        workdir=tmp_path / "up",
    )
    sent: dict[str, PipelineRequest] = {}
    stop = threading.Event()

    def submit() -> None:
        submitter = Submitter(stack.config)
        for request in itertools.cycle(workload(200, seed=3)):
            if stop.is_set():
                return
            request = replace(request, request_id=uuid.uuid4().hex)
            sent[request.request_id] = request
            submitter.submit(request)
            submitter.flush()
            stop.wait(1 / 5)

    load = threading.Thread(target=submit, daemon=True)
    try:
        stack.start()
        stack.wait_ready(300)
        assert stack.rotation is not None and stack.config.generation == 1
        first_topics = generations.internal_topics(stack.config)
        load.start()
        deadline = time.monotonic() + 400
        while stack.rotation.rotations < 2 or stack.rotation.old is not None:
            assert time.monotonic() < deadline, f"rotations: {stack.rotation.rotations}"
            stack.supervise()
            time.sleep(0.5)
        stop.set()
        load.join(10)
        assert stack.config.generation == 3
        got, dupes = collect_results(stack.config, sent, timeout_s=120)
        assert not dupes, f"answered twice: {[d.request_id for d in dupes][:5]}"
        missing = set(sent) - set(got)
        assert not missing, f"{len(missing)} of {len(sent)} unanswered"
        wrong = {r: why for r in sent if (why := wrong_reason(sent[r], got[r])) is not None}
        assert not wrong, list(wrong.items())[:3]
        left = _topics(stack.config)
        assert not left & set(first_topics), sorted(left & set(first_topics))
        assert set(generations.internal_topics(stack.config)) <= left
        assert not any(".g2." in t or "-g2-" in t for t in left), sorted(left)
    finally:
        stop.set()
        stack.stop()
