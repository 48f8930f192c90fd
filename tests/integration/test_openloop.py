"""The open-loop driver (`alto.infra.openloop`) against a real broker, with a responder thread in
place of a deployment: submissions keep their schedule, each outcome gets its first result,
duplicates are counted, and what is not ours or does not decode is ignored."""

from __future__ import annotations

import threading
import time

from alto.config import AltoConfig
from alto.infra.client import Submitter, TopicReader, new_request
from alto.infra.openloop import OpenLoop
from alto.kafka import ensure_topics
from alto.schemas.messages import Mode, PipelineRequest, PipelineResult, ResultStatus


def _respond(config: AltoConfig, stop: threading.Event, answered: list[str]) -> None:
    """Answer each request on the results topic: ids ending in -dup twice, -none never;
    first a garbage record and a result for a request nobody submitted."""
    reader = TopicReader(config, config.requests_topic)
    out = Submitter(config)
    out.submit_raw(b"junk", b"\x00not a result", topic=config.results_topic)
    stranger = new_request("example", "?", request_id="someone-else")
    out.submit_raw(b"x", _result(stranger).encode(), topic=config.results_topic)
    try:
        while not stop.is_set():
            for _, value in reader.poll(0.1):
                request = PipelineRequest.decode(value)
                answered.append(request.request_id)
                if request.request_id.endswith("-none"):
                    continue
                copies = 2 if request.request_id.endswith("-dup") else 1
                for _ in range(copies):
                    out.submit_raw(
                        request.request_id.encode(),
                        _result(request).encode(),
                        topic=config.results_topic,
                    )
                out.flush()
    finally:
        out.flush()
        reader.close()


def _result(request: PipelineRequest) -> PipelineResult:
    now = int(time.time() * 1000)
    return PipelineResult(
        request_id=request.request_id,
        pipeline=request.pipeline,
        status=ResultStatus.OK,
        latency_ms=now - request.submitted_at_ms,
        submitted_at_ms=request.submitted_at_ms,
        completed_at_ms=now,
        mode=Mode.STREAMING,
        output=request.input.upper(),
    )


def test_open_loop_keeps_its_schedule_and_counts_what_comes_back(alto_config: AltoConfig) -> None:
    ensure_topics(alto_config, {alto_config.requests_topic: 2, alto_config.results_topic: 2})
    stop, answered = threading.Event(), []
    responder = threading.Thread(target=_respond, args=(alto_config, stop, answered))
    first: list[str] = []
    polls = 0

    def count_poll() -> None:
        nonlocal polls
        polls += 1

    ids = ["r-0", "r-1-dup", "r-2", "r-3-none"]
    offsets = [0.2, 0.6, 1.0, 1.2]
    requests = [new_request("example", f"text {i}", request_id=rid) for i, rid in enumerate(ids)]
    try:
        with OpenLoop(
            alto_config, on_result=lambda o: first.append(o.request_id), on_poll=count_poll
        ) as loop:
            responder.start()
            started = time.time()
            outcomes = loop.run(requests, offsets, "phase-a")
            assert loop.wait(outcomes, 15.0) is False  # r-3-none never gets a result
            loop.poll(1.0)  # the duplicate may trail its first copy
    finally:
        stop.set()
        responder.join(10)

    by_id = {o.request_id: o for o in outcomes}
    assert set(loop.outcomes) == set(ids)  # the stranger's result made no outcome
    for rid, offset in zip(ids, offsets, strict=True):
        late = by_id[rid].submitted - started - offset
        assert -0.01 <= late < 0.3, (rid, late)  # on schedule (the read loop wakes in time)
        assert by_id[rid].request.submitted_at_ms == int(by_id[rid].submitted * 1000)
        assert by_id[rid].phase == "phase-a"
    for rid in ("r-0", "r-1-dup", "r-2"):
        outcome = by_id[rid]
        assert outcome.status is ResultStatus.OK
        assert outcome.result is not None and outcome.result.output == outcome.request.input.upper()
        assert outcome.latency_s > 0
    assert by_id["r-1-dup"].results == 2 and by_id["r-0"].results == 1
    none = by_id["r-3-none"]
    assert none.finished is None and none.status is None and none.results == 0
    assert none.latency_s != none.latency_s  # NaN while there is no result
    assert sorted(first) == ["r-0", "r-1-dup", "r-2"]  # on_result once per request
    assert polls > 0
    assert sorted(answered) == sorted(ids)
