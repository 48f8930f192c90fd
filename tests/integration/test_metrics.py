"""Prometheus endpoints of a Faust worker and a SIMULATED LM worker, scraped over HTTP
after real requests of the `claims` pipeline went through the broker: every counter that
moved is checked against what the results and the broker say happened."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from alto.agents import claims
from alto.config import AltoConfig
from alto.infra.client import Submitter, collect_results, new_request, wait_lm_reporting
from alto.infra.processes import WorkerProcess, lm_worker_command, wait_assigned
from alto.schemas.messages import Mode, ResultStatus

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

N_REQUESTS = 6


def _metrics_port(proc: WorkerProcess, timeout_s: float = 30.0) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        port = (proc.status() or {}).get("metrics_port")
        if isinstance(port, int):
            return port
        assert proc.alive(), proc.log_tail()
        time.sleep(0.2)
    raise AssertionError(f"{proc.worker_id} wrote no metrics port:\n{proc.log_tail()}")


def _scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of `name` over every sample whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def _scrape_until(port: int, ready: Callable[[Samples], bool], timeout_s: float) -> Samples:
    """Scrape until `ready` (gauges and sampled counters refresh every few seconds)."""
    deadline = time.monotonic() + timeout_s
    while True:
        samples = _scrape(port)
        if ready(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.5)


def test_metrics_endpoints_count_what_the_pipeline_did(
    alto_config: AltoConfig, tmp_path: Path
) -> None:
    config = alto_config.with_overrides(
        lm={"status_interval_s": 0.5, "sim_time_scale": 0.25},
    )
    faust_worker = WorkerProcess(config, "w1", tmp_path, loglevel="info")
    lm = WorkerProcess(config, "lm0", tmp_path, command=lm_worker_command(0, "sim"))
    try:
        topology = claims.build()
        topics = [*topology.topics(config.internal_prefix), config.sink_topic]
        wait_assigned([faust_worker], [*topics, config.lm_requests_topic], config.kafka.partitions)
        wait_lm_reporting(config, [0], timeout_s=60)
        # Both ports are discoverable from the status files, and logged once.
        worker_port, lm_port = _metrics_port(faust_worker), _metrics_port(lm)
        assert worker_port != lm_port
        assert f":{worker_port}/metrics" in faust_worker.log_file.read_text()
        assert f":{lm_port}/metrics" in lm.log_file.read_text()

        requests = [
            new_request("claims", f"topic {i}", mode=Mode.STREAMING if i % 2 else Mode.BASELINE)
            for i in range(N_REQUESTS)
        ]
        submitter = Submitter(config)
        submitter.submit_all(requests)
        submitter.submit_raw(b"not-avro", b"garbage")  # a dead letter and a FAILED result
        submitter.flush()
        wanted = [r.request_id for r in requests] + ["not-avro"]
        got, dupes = collect_results(config, wanted, timeout_s=40)
        assert set(got) == set(wanted) and not dupes
        ok = [got[r.request_id] for r in requests]
        assert all(r.status is ResultStatus.OK for r in ok), [r.error for r in ok]
        n_claims = sum(json.loads(r.output or "")["n"] for r in ok)
        assert n_claims >= N_REQUESTS

        w = _scrape_until(
            worker_port,
            lambda s: (
                _total(s, "alto_consumer_lag") == 0
                and _total(s, "alto_stage_events_total", stage="sink") >= N_REQUESTS + 1
                and any(n == "alto_consumer_lag" for n, _ in s)
            ),
            timeout_s=15,
        )
        m = _scrape_until(
            lm_port, lambda s: _total(s, "alto_lm_generated_tokens_total") > 0, timeout_s=10
        )

        # Results and end-to-end latency at the sink, per pipeline, mode and status.
        for mode in (Mode.STREAMING, Mode.BASELINE):
            mine = [r for r in ok if r.mode is mode]
            labels = {"pipeline": "claims", "mode": mode.value, "status": "OK"}
            assert _total(w, "alto_results_total", **labels) == len(mine)
            assert _total(w, "alto_request_latency_seconds_count", **labels) == len(mine)
            latency_sum = _total(w, "alto_request_latency_seconds_sum", **labels)
            assert latency_sum == pytest.approx(sum(r.latency_ms for r in mine) / 1000)
        assert _total(w, "alto_results_total", pipeline="unknown", status="FAILED") == 1
        assert _total(w, "alto_results_total") == N_REQUESTS + 1
        # The undecodable request: one dead letter, by reason and source topic.
        assert (
            _total(w, "alto_dead_letters_total", reason="undecodable", topic=config.requests_topic)
            == 1
        )

        # Per-stage throughput. Faust side: ingest, the LM stage's calls, the fan-out.
        assert _total(w, "alto_stage_events_total", pipeline="claims", stage="ingest") == (
            N_REQUESTS
        )
        assert _total(w, "alto_stage_events_total", pipeline="claims", stage="claims") == (
            N_REQUESTS
        )
        assert _total(w, "alto_stage_out_total", stage="claims", kind="LM_CALL") == N_REQUESTS
        # `words` reads each claim plus the END of each request's claims.
        assert _total(w, "alto_stage_events_total", stage="words") == n_claims + N_REQUESTS
        assert _total(w, "alto_stage_seconds_count", pipeline="claims", stage="words") == (
            n_claims + N_REQUESTS
        )
        # The LM worker produced the LM stage's quanta.
        assert _total(m, "alto_stage_out_total", stage="claims", kind="DATA") == n_claims
        assert _total(m, "alto_stage_out_total", stage="claims", kind="END") == N_REQUESTS

        # The scheduler placed every call once, on the only instance, by the policy.
        decisions = {"policy": config.scheduler.policy, "prompt": "claims"}
        assert _total(w, "alto_scheduler_decisions_total", **decisions) == N_REQUESTS
        assert _total(w, "alto_scheduler_decisions_total", instance="0", why="policy") == (
            N_REQUESTS
        )
        assert _total(w, "alto_scheduler_overloaded_total") == 0

        # The LM worker: calls, latency, TTFT, tokens, load.
        call = {"instance": "0", "prompt": "claims"}
        assert _total(m, "alto_lm_calls_total", outcome="OK", **call) == N_REQUESTS
        assert _total(m, "alto_lm_calls_total") == N_REQUESTS
        assert _total(m, "alto_lm_call_seconds_count", **call) == N_REQUESTS
        assert _total(m, "alto_lm_ttft_seconds_count", **call) == N_REQUESTS
        ttft, whole = (_total(m, f"alto_lm_{h}_seconds_sum", **call) for h in ("ttft", "call"))
        assert 0 < ttft < whole
        assert _total(m, "alto_lm_tokens_total", kind="output", **call) >= n_claims
        assert _total(m, "alto_lm_tokens_total", kind="prompt", **call) > 0
        assert _total(m, "alto_lm_generated_tokens_total", instance="0", engine="sim") > 0
        assert _total(m, "alto_lm_calls_in_flight", instance="0") == 0
        # Consumer lag: every partition of the pipeline's topics read to the end.
        lag_topics = {dict(ls)["topic"] for n, ls in w if n == "alto_consumer_lag"}
        assert set(topics) <= lag_topics, lag_topics
        assert _total(w, "alto_consumer_lag") == 0
    finally:
        for p in (faust_worker, lm):
            p.stop()
