"""The metrics module: the endpoint, bounded labels, stage meters, consumer lag, and the
scheduler's decision counters (no broker)."""

from __future__ import annotations

import asyncio
import socket
import urllib.request
from pathlib import Path
from typing import NamedTuple

import pytest
from prometheus_client import REGISTRY

from alto import metrics
from alto.agents.faust_settings import consumer_lags
from alto.config import AltoConfig, child_env, load_config
from alto.scheduler.agent import Overloaded, SchedulerCore, _now_ms
from alto.schemas.messages import ChatMessage, LMRequest, LMStatus, QuantumRule
from tests.harness import until


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def test_serve_binds_a_free_port_and_exposes_the_families() -> None:
    config = AltoConfig(
        metrics={"port": 0, "host": "127.0.0.1"},
    )
    server = metrics.serve(config)
    assert server is not None
    try:
        assert server.port > 0
        metrics.meter("test_pipe", "test_stage").inputs.inc(3)
        text = _scrape(server.port)
        assert 'alto_stage_events_total{pipeline="test_pipe",stage="test_stage"}' in text
        for family in ("alto_results_total", "alto_request_latency_seconds", "alto_lm_calls"):
            assert f"# HELP {family}" in text
    finally:
        server.close()
    with pytest.raises(OSError):  # closed: nothing answers there any more
        _scrape(server.port)


def test_serve_off_and_a_taken_port_leave_the_process_running(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert (
        metrics.serve(
            AltoConfig(
                metrics={"port": -1},
            )
        )
        is None
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = AltoConfig(
            metrics={"port": port, "host": "127.0.0.1"},
        )
        assert metrics.serve(config, "test worker") is None
    assert any("cannot serve metrics" in r.getMessage() for r in caplog.records)


def test_metrics_port_is_configured_from_the_environment_and_passed_to_children(
    tmp_path: Path,
) -> None:
    config = load_config(
        environ={"ALTO_METRICS__PORT": "9464", "ALTO_METRICS__HOST": "127.0.0.1"},
        data_dir=tmp_path,
    )
    assert (config.metrics.port, config.metrics.host) == (9464, "127.0.0.1")
    assert load_config(environ=child_env(config)).metrics == config.metrics
    assert load_config(environ={}).metrics.port == 0  # default: a free port per process
    assert load_config(environ={"ALTO_METRICS__PORT": "-1"}).metrics.port == -1


def test_bounded_label_folds_values_past_its_limit() -> None:
    label = metrics.BoundedLabel(limit=2)
    assert [label(v) for v in ("a", "b", "c", "a", "")] == ["a", "b", "other", "a", "unknown"]


def test_stage_meter_is_bound_once_and_counts_per_kind() -> None:
    meter = metrics.meter("test_pipe", "kinds")
    assert metrics.meter("test_pipe", "kinds") is meter
    before = _value("alto_stage_out_total", pipeline="test_pipe", stage="kinds", kind="END")
    meter.out["END"].inc()
    meter.seconds.observe(0.002)
    after = _value("alto_stage_out_total", pipeline="test_pipe", stage="kinds", kind="END")
    assert after == before + 1
    assert set(meter.out) == {"END"}  # series appear per kind on first use
    assert metrics.stage_out("test_pipe", "kinds") is meter.out
    with pytest.raises(KeyError):
        meter.out["SOMETHING"].inc()
    assert _value("alto_stage_seconds_count", pipeline="test_pipe", stage="kinds") >= 1


class _TP(NamedTuple):
    topic: str
    partition: int


class _Consumer:
    def __init__(self) -> None:
        self.high = {_TP("a", 0): 10, _TP("a", 1): 12, _TP("a", 2): 3, _TP("b", 0): 7}
        self._committed_offset = {_TP("a", 0): 5}
        self._read_offset = {_TP("a", 1): 9}

    def highwater(self, tp: _TP) -> int:
        if tp not in self.high:
            raise RuntimeError("partition is not assigned")
        return self.high[tp]


class _Assignor:
    def assigned_actives(self) -> set[_TP]:
        return {_TP("a", 0), _TP("a", 1), _TP("a", 2), _TP("a", 3), _TP("b", 0)}


class _App:
    consumer = _Consumer()
    assignor = _Assignor()


def test_consumer_lag_is_highwater_minus_committed_for_our_topics() -> None:
    lags = consumer_lags(_App(), {"a"})
    # a/0: committed 5; a/1: never committed, last read 9; a/2: nothing read; a/3: no
    # highwater yet (not fetched); b: not a topic our agents read.
    assert lags == {("a", 0): 5, ("a", 1): 2, ("a", 2): 3}
    metrics.set_consumer_lag(lags, previous=[("a", 7)])
    assert _value("alto_consumer_lag", topic="a", partition="0") == 5
    metrics.set_consumer_lag({("a", 1): 0}, previous=lags)  # a/0 and a/2 were revoked
    assert REGISTRY.get_sample_value("alto_consumer_lag", {"topic": "a", "partition": "0"}) is None
    assert _value("alto_consumer_lag", topic="a", partition="1") == 0


def _call(i: int, prompt: str) -> LMRequest:
    return LMRequest(
        f"c{i}", f"r{i}", "claims", "claims", prompt,
        (ChatMessage("system", "You list claims."), ChatMessage("user", f"topic {i}")),
        16, QuantumRule.ITEM, b"", 0, prefix_chars=16,
    )  # fmt: skip


def _status(instance: int) -> bytes:
    return LMStatus(
        instance, f"lm-{instance}", "sim", True, 0, 0, 0, 0, 0.0, 0.0, 0.0, _now_ms()
    ).encode()


async def _noop_send(topic: str, key: bytes, value: bytes, partition: int | None) -> None:
    return None


def test_scheduler_counts_decisions_spills_waits_and_refusals() -> None:
    prompt = "metrics_test_prompt"

    def decisions(why: str) -> float:
        return sum(
            _value(
                "alto_scheduler_decisions_total",
                policy="prefix_hash",
                prompt=prompt,
                instance=str(i),
                why=why,
            )
            for i in (0, 1)
        )

    def refused() -> float:
        return _value("alto_scheduler_overloaded_total", policy="prefix_hash", prompt=prompt)

    async def run() -> None:
        # prefix_hash sends one prompt to one instance; saturation 1 makes the second call
        # spill to the other, the third wait, the fourth be refused (queue of 1).
        config = AltoConfig(
            scheduler={"policy": "prefix_hash", "saturation": 1, "queue": 1},
        )
        core = SchedulerCore(config, _noop_send, name="s1")
        for i in (0, 1):
            await core._on_status(_status(i))
        policy0, spill0, refused0 = decisions("policy"), decisions("spill"), refused()
        first = await core.place(_call(0, prompt))
        second = await core.place(_call(1, prompt))
        assert {first, second} == {0, 1}
        assert decisions("policy") == policy0 + 1 and decisions("spill") == spill0 + 1
        waiting0 = _value("alto_scheduler_waiting_calls")
        waiter = asyncio.ensure_future(core.place(_call(2, prompt)))
        await until(lambda: _value("alto_scheduler_waiting_calls") == waiting0 + 1)
        with pytest.raises(Overloaded):
            await core.place(_call(3, prompt))
        assert refused() == refused0 + 1
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        assert _value("alto_scheduler_waiting_calls") == waiting0

    asyncio.run(run())


def test_hot_path_cost_is_small() -> None:
    """What one stage event pays for metrics (an input, two outputs, a latency), measured:
    a bound well below the worker's ~250 us of CPU per quantum (`alto bench hop`)."""
    import time

    meter = metrics.meter("test_pipe", "cost")
    n = 20_000
    started = time.perf_counter()
    for _ in range(n):
        meter.inputs.inc()
        meter.out["DATA"].inc()
        meter.out["END"].inc()
        meter.seconds.observe(0.0003)
    per_event_us = (time.perf_counter() - started) / n * 1e6
    assert per_event_us < 50, per_event_us
