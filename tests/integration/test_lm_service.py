"""LM workers (SIMULATED engine) behind the scheduler, through the real broker."""

from __future__ import annotations

import json
import time
from pathlib import Path

from alto.agents import claims
from alto.config import AltoConfig
from alto.infra.client import Submitter, TopicReader, collect_results, new_request
from alto.infra.processes import WorkerProcess, lm_worker_command, wait_assigned
from alto.lm_service.quanta import split_all
from alto.lm_service.sim import sim_text
from alto.schemas.messages import LMStatus, Mode, PipelineResult, ResultStatus
from alto.streams.ancestry import node_key


def _expected(request_id: str) -> dict:  # type: ignore[type-arg]
    lm_id = f"{node_key(request_id, ())}#claims"
    return claims.expected_output(split_all(sim_text(lm_id, "claims", 96), "item"))  # type: ignore[arg-type]


def _stack(
    config: AltoConfig, tmp: Path, lm_instances: int
) -> tuple[WorkerProcess, list[WorkerProcess]]:
    faust_worker = WorkerProcess(config, "w1", tmp)
    lms = [
        WorkerProcess(config, f"lm{i}", tmp, command=lm_worker_command(i, "sim"))
        for i in range(lm_instances)
    ]
    topology = claims.build()
    topics = [*topology.topics(config.internal_prefix), config.sink_topic, config.lm_requests_topic]
    wait_assigned([faust_worker], topics, config.kafka.partitions)
    return faust_worker, lms


def test_lm_calls_stream_through_sim_workers_and_survive_a_kill(
    alto_config: AltoConfig, tmp_path: Path
) -> None:
    config = alto_config.with_overrides(
        lm={"status_interval_s": 0.5, "sim_time_scale": 1.0},
    )
    faust_worker, lms = _stack(config, tmp_path, 2)
    try:
        requests = [
            new_request("claims", f"topic {i}", mode=Mode.STREAMING if i % 2 else Mode.BASELINE)
            for i in range(40)
        ]
        Submitter(config).submit_all(requests)
        reader = TopicReader(config, config.results_topic)
        got: dict[str, PipelineResult] = {}
        deadline = time.monotonic() + 60
        while len(got) < 5 and time.monotonic() < deadline:
            for _, value in reader.poll(0.2):
                r = PipelineResult.decode(value)
                got[r.request_id] = r
        assert 0 < len(got) < len(requests)
        lms[0].kill()  # mid-generation: its unfinished calls must be served again
        lms[0] = WorkerProcess(
            config, "lm0-restarted", tmp_path, command=lm_worker_command(0, "sim")
        )
        rest, dupes = collect_results(
            config, {r.request_id for r in requests} - set(got), timeout_s=120, reader=reader
        )
        reader.close()
        got.update(rest)
        assert not dupes
        for req in requests:
            result = got[req.request_id]
            assert result.status is ResultStatus.OK, result.error
            assert json.loads(result.output or "") == _expected(req.request_id)
            assert result.simulated  # labelled: the LM output came from the SIMULATED engine
        # Both instances served calls, and both report load on alto.lm.status.
        statuses = [
            LMStatus.decode(v) for _, v in TopicReader(config, config.lm_status_topic).poll(2.0)
        ]
        assert {s.instance for s in statuses} == {0, 1}
        assert all(s.simulated and s.engine == "sim" for s in statuses)
        assert max(s.running for s in statuses) > 1  # batched, not one at a time
    finally:
        for p in [faust_worker, *lms]:
            p.stop()


def test_bad_lm_calls_become_dead_letters_and_failed_results(
    alto_config: AltoConfig, tmp_path: Path
) -> None:
    from alto.schemas.messages import DeadLetter

    config = alto_config.with_overrides(
        lm={"status_interval_s": 0.5},
    )
    faust_worker, lms = _stack(config, tmp_path, 1)
    try:
        submitter = Submitter(config)
        # Garbage where an LM call should be, and a prompt longer than the context.
        submitter.producer.produce(
            config.lm_work_topic, key=b"bad-call", value=b"\xc3\x01garbage", partition=0
        )
        huge = new_request("claims", "word " * 3000, mode=Mode.STREAMING)
        good = new_request("claims", "the Moon", mode=Mode.STREAMING)
        submitter.submit(huge)
        submitter.submit(good)
        submitter.flush()
        got, _ = collect_results(
            config, ["bad-call", huge.request_id, good.request_id], timeout_s=60
        )
        assert got["bad-call"].status is ResultStatus.FAILED
        assert got[huge.request_id].status is ResultStatus.FAILED
        assert "prompt_too_long" in (got[huge.request_id].error or "")
        assert got[good.request_id].status is ResultStatus.OK  # the LM worker kept serving
        letters = [DeadLetter.decode(v) for _, v in TopicReader(config, config.dlq_topic).poll(2.0)]
        assert {"undecodable", "prompt_too_long"} <= {d.reason for d in letters}
        assert all(p.alive() for p in [faust_worker, *lms])
    finally:
        for p in [faust_worker, *lms]:
            p.stop()


def test_an_engine_raising_mid_call_fails_its_request_and_the_worker_serves_on(
    alto_config: AltoConfig, tmp_path: Path
) -> None:
    """The SIMULATED engine raises halfway through some calls (after streaming half of their
    output): each such request fails with the engine's error and a dead letter, exactly
    once; the others are answered correctly; the LM worker stays up."""
    from alto.lm_service.sim import crashes
    from alto.schemas.messages import DeadLetter

    params = tmp_path / "sim.json"
    params.write_text(json.dumps({"crash_rate": 0.4}))
    config = alto_config.with_overrides(
        lm={"status_interval_s": 0.5, "sim_params": params},
    )
    faust_worker, lms = _stack(config, tmp_path, 1)
    try:
        requests = [new_request("claims", f"subject {i}", mode=Mode.STREAMING) for i in range(16)]
        crashing = {
            r.request_id for r in requests if crashes(f"{node_key(r.request_id, ())}#claims", 0.4)
        }
        assert 0 < len(crashing) < len(requests), "the seed must give both kinds of call"
        Submitter(config).submit_all(requests)
        got, dupes = collect_results(config, [r.request_id for r in requests], timeout_s=90)
        assert not dupes
        for req in requests:
            result = got[req.request_id]
            if req.request_id in crashing:
                assert result.status is ResultStatus.FAILED
                assert "SIMULATED engine crash" in (result.error or ""), result.error
            else:
                assert result.status is ResultStatus.OK, result.error
                assert json.loads(result.output or "") == _expected(req.request_id)
        letters = [DeadLetter.decode(v) for _, v in TopicReader(config, config.dlq_topic).poll(2.0)]
        assert {d.request_id for d in letters if d.reason == "engine_error"} == crashing
        assert all(p.alive() for p in [faust_worker, *lms])
    finally:
        for p in [faust_worker, *lms]:
            p.stop()
