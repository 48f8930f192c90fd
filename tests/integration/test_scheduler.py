"""The scheduler through the real broker: three SIMULATED LM workers and one real vLLM worker.

Same-prompt calls stay on one instance while it is not overloaded (prompt_aware placement,
visible on `alto.lm.work` and in the shared table on `alto.lm.assignments`); SIGKILLing the
instance that holds the prompt moves its unfinished calls to live instances and every
request completes, once.
"""

from __future__ import annotations

import collections
import json
import time
from pathlib import Path

import pytest

from alto.agents import claims
from alto.config import AltoConfig
from alto.infra.client import Submitter, TopicReader, collect_results, new_request, trail
from alto.infra.processes import WorkerProcess, lm_worker_command, wait_assigned
from alto.schemas.messages import LMAssignment, LMRequest, LMStatus, Mode, ResultStatus

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

vllm = pytest.importorskip("vllm", reason="vLLM is installed by `make setup`")

SIM_INSTANCES = (0, 1, 2)
VLLM_INSTANCE = 3


def _wait_reporting(config: AltoConfig, instances: set[int], timeout_s: float) -> None:
    reader = TopicReader(config, config.lm_status_topic)
    seen: set[int] = set()
    deadline = time.monotonic() + timeout_s
    while not instances <= seen:
        assert time.monotonic() < deadline, f"instances reporting: {sorted(seen)}"
        seen |= {LMStatus.decode(v).instance for _, v in reader.poll(1.0)}
    reader.close()


def _work(config: AltoConfig) -> list[tuple[int, LMRequest]]:
    """Every assignment on alto.lm.work, as (partition = instance, call)."""
    reader = TopicReader(config, config.lm_work_topic)
    out = [(LMRequest.decode(v).instance, LMRequest.decode(v)) for _, v in reader.poll(2.0)]
    reader.close()
    return out


def _assert_all(got: dict[str, object], wanted: list[str], scheduler: WorkerProcess) -> None:
    missing = [r for r in wanted if r not in got]
    assert not missing, f"{len(missing)} without a result; scheduler:\n{scheduler.log_tail()}"


def _submit(config: AltoConfig, texts: list[str], pause_s: float = 0.0) -> list[str]:
    submitter = Submitter(config)
    requests = [new_request("claims", t, mode=Mode.STREAMING) for t in texts]
    for r in requests:
        submitter.submit(r)
        submitter.flush()
        time.sleep(pause_s)
    return [r.request_id for r in requests]


def test_prompt_stays_on_one_instance_and_a_killed_instance_loses_nothing(
    alto_config: AltoConfig, tmp_path: Path
) -> None:
    config = alto_config.with_overrides(
        lm={"status_interval_s": 0.5, "sim_time_scale": 2.0},
        scheduler={"policy": "prompt_aware"},
    )
    faust_worker = WorkerProcess(config, "w1", tmp_path)
    lms = {
        i: WorkerProcess(config, f"lm{i}", tmp_path, command=lm_worker_command(i, "sim"))
        for i in SIM_INSTANCES
    }
    lms[VLLM_INSTANCE] = WorkerProcess(
        config, "lm-vllm", tmp_path, command=lm_worker_command(VLLM_INSTANCE, "vllm")
    )
    try:
        topology = claims.build()
        topics = [*topology.topics(config.internal_prefix), config.sink_topic]
        wait_assigned([faust_worker], [*topics, config.lm_requests_topic], config.kafka.partitions)
        _wait_reporting(config, {*SIM_INSTANCES, VLLM_INSTANCE}, timeout_s=240)

        # Phase 1, low load: one call at a time, all for the same prompt.
        first = _submit(config, [f"subject {i}" for i in range(6)], pause_s=1.0)
        got, dupes = collect_results(config, first, timeout_s=180)
        _assert_all(got, first, faust_worker)
        assert not dupes and all(got[r].status is ResultStatus.OK for r in first)
        placed = collections.Counter(i for i, call in _work(config) if call.request_id in first)
        assert len(placed) == 1, f"same-prompt calls spread while idle: {placed}"
        (home,) = placed
        table = [
            LMAssignment.decode(v)
            for _, v in TopicReader(config, config.lm_assignments_topic).poll(2.0)
        ]
        assert table and table[-1].prompt_name == "claims" and home in table[-1].instances

        # Phase 2: a burst, then the prompt's instance is SIGKILLed while it serves it.
        burst = _submit(config, [f"topic {i}" for i in range(12)])
        # Killed once it holds calls of the burst (placed on its partition of the work topic).
        deadline = time.monotonic() + 60
        while not any(i == home and c.request_id in burst for i, c in _work(config)):
            assert time.monotonic() < deadline, "no call of the burst reached the home instance"
        lms[home].kill()
        got, dupes = collect_results(config, burst, timeout_s=240)
        assert not dupes, f"results twice: {dupes}"
        failed = {r: got[r].error for r in got if got[r].status is not ResultStatus.OK}
        assert not failed, failed
        missing = [r for r in burst if r not in got]
        for r in got:
            out = json.loads(got[r].output or "")
            assert out["n"] == len(out["claims"]) >= 1
        # The dead instance's unfinished calls were placed again, on live instances.
        moved = [(i, c) for i, c in _work(config) if c.request_id in burst and c.attempt > 0]
        assert moved, "nothing was reassigned"
        assert all(i != home for i, _ in moved)
        assert all(p.alive() for i, p in lms.items() if i != home) and faust_worker.alive()
        assert not missing, (
            f"{len(missing)} of {len(burst)} lost after the kill: {missing}\n"
            f"{trail(config, claims.build().topics(config.internal_prefix), missing)}\nscheduler:\n{faust_worker.log_tail()}"
        )
    finally:
        for p in [faust_worker, *lms.values()]:
            p.stop(timeout_s=30)
