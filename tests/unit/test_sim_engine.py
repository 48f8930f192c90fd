"""The SIMULATED engine: fan-out statistics, determinism, batching timing, limits."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from pathlib import Path

import pytest

from alto.bench.virtual_time import VirtualTimeLoop
from alto.config import AltoConfig
from alto.errors import ConfigError, EngineError
from alto.lm_service.engine import GenerationParams, Prompt
from alto.lm_service.quanta import split_all
from alto.lm_service.sim import (
    PrefixCache,
    SimEngine,
    SimParams,
    iteration_s,
    profile_params,
    sim_params,
    sim_text,
)


def _prompt(name: str, text: str = "Question: what is the Moon?") -> Prompt:
    return Prompt(name, (("user", text),), prefix_chars=10)


def test_fan_out_follows_table_1() -> None:
    claims = [len(split_all(sim_text(f"r{i}", "claims", 512), "item")) for i in range(2000)]
    queries = [split_all(sim_text(f"r{i}", "queries", 512), "line") for i in range(2000)]
    per_claim = [len(q) for q in queries]
    words = [len(line.split()) for q in queries for line in q]
    # Paper: 3.3 +- 1.8 claims per answer, 2.5 +- 1.3 queries per claim, 5.5 +- 3.1 tokens per query.
    # Clipping at 1 shifts the means up a little.
    assert 3.1 < statistics.mean(claims) < 3.9 and 1.2 < statistics.stdev(claims) < 2.0
    assert 2.4 < statistics.mean(per_claim) < 3.0 and 0.8 < statistics.stdev(per_claim) < 1.5
    assert 5.3 < statistics.mean(words) < 6.6 and 2.2 < statistics.stdev(words) < 3.4


def test_text_is_deterministic_per_request_id() -> None:
    assert sim_text("a", "claims", 100) == sim_text("a", "claims", 100)
    assert sim_text("a", "claims", 100) != sim_text("b", "claims", 100)


def test_continuous_batching_timing() -> None:
    params = SimParams(decode_base_s=0.01, decode_per_seq_s=0.002, prefill_s_per_token=0.0)

    async def run(n: int) -> float:
        engine = SimEngine(params)
        await engine.start()
        gp = GenerationParams(max_tokens=20)

        async def one(i: int) -> int:
            return len([t async for t in engine.generate(f"r{i}", _prompt("other"), gp)])

        t0 = time.perf_counter()
        counts = await asyncio.gather(*(one(i) for i in range(n)))
        elapsed = time.perf_counter() - t0
        await engine.stop()
        assert all(c == 20 for c in counts)
        return elapsed

    one_stream = asyncio.run(run(1))
    eight = asyncio.run(run(8))
    # 20 iterations each: 20 * max(10, 2) ms vs 20 * max(10, 16) ms (batched, not 8x
    # sequential).
    assert 0.18 < one_stream < 0.5
    assert 0.3 < eight < 0.9


def test_prefix_cache_hits_and_context_limit() -> None:
    async def run() -> None:
        engine = SimEngine(SimParams(time_scale=0.01, context_tokens=100, cache_block_tokens=1))
        await engine.start()
        gp = GenerationParams(max_tokens=5)
        for i in range(4):
            _ = [t async for t in engine.generate(f"r{i}", _prompt("claims"), gp)]
        # 11 prompt tokens each (27 characters + 4 of chat template); the 10-character
        # prefix (2 tokens) hits on the 2nd, 3rd and 4th call.
        assert engine.stats().prefix_cache_hit_rate == pytest.approx(3 * 2 / (4 * 11))
        with pytest.raises(EngineError) as info:
            _ = [t async for t in engine.generate("big", _prompt("claims", "x" * 1000), gp)]
        assert info.value.reason == "prompt_too_long"
        await engine.stop()

    asyncio.run(run())


def test_ignore_eos_fills_to_exactly_max_tokens() -> None:
    natural = sim_text("r1", "claims", 128)
    filled = sim_text("r1", "claims", 128, fill=True)
    assert len(natural) < 128  # a claim list ends well before 128 tokens
    assert len(filled) == 128
    assert filled[: len(natural)] == natural  # same text, continued


def test_params_from_calibration_file(tmp_path: Path) -> None:
    path = tmp_path / "sim.json"
    path.write_text(json.dumps({"decode_base_s": 0.01, "decode_per_seq_s": 0.002}))
    params = SimParams.from_file(path, time_scale=0.5)
    assert (params.decode_base_s, params.decode_per_seq_s, params.time_scale) == (0.01, 0.002, 0.5)
    assert params.prefill_s_per_token == SimParams().prefill_s_per_token
    path.write_text(json.dumps({"decode_base": 0.01}))
    with pytest.raises(ConfigError, match="simulator parameters"):
        SimParams.from_file(path)


def test_prefix_cache_is_bounded_and_least_recently_used() -> None:
    cache = PrefixCache(capacity_tokens=100)
    assert cache.lookup("a", 40) == 0  # miss, now cached
    assert cache.lookup("b", 40) == 0
    assert cache.lookup("a", 40) == 40  # hit; "a" is now the most recent
    assert cache.lookup("c", 40) == 0  # 120 > 100: evicts "b", the least recently used
    assert cache.lookup("a", 40) == 40
    assert cache.lookup("b", 40) == 0
    assert cache.lookup("huge", 500) == 0 and cache.lookup("huge", 500) == 0  # never fits


def test_usage_of_a_finished_call() -> None:
    async def run() -> None:
        engine = SimEngine(SimParams(time_scale=0.1, cache_block_tokens=1))
        await engine.start()
        params = GenerationParams(max_tokens=20, ignore_eos=True)
        started = time.monotonic()
        async for _ in engine.generate("u1", _prompt("claims", "x" * 200), params):
            pass
        wall_s = time.monotonic() - started
        async for _ in engine.generate("u2", _prompt("claims", "x" * 200), params):
            pass
        await engine.stop()
        first, second = engine.take_usage("u1"), engine.take_usage("u2")
        assert first is not None and second is not None and engine.take_usage("u1") is None
        assert first.output_tokens == second.output_tokens == 20
        assert first.prompt_tokens == 50 + 4 and first.cached_tokens == 0  # + chat template
        assert second.cached_tokens == 2  # the 10-character prefix, cached by the first call
        # 20 iterations of ~25 ms simulated each, reported in simulated seconds: at least
        # that, and no more than the wall time it took at this time scale (a busy machine
        # stretches the sleeps, so no fixed upper bound).
        assert 0.3 < first.service_s <= wall_s / 0.1

    asyncio.run(run())


def test_a_tagged_request_id_simulates_the_same_text_as_its_base() -> None:
    base = sim_text("r7|answer:0#claims", "claims", 96)
    assert sim_text("r7~baseline|answer:0#claims", "claims", 96) == base
    assert sim_text("r7~langgraph|answer:0#claims", "claims", 96) == base
    assert sim_text("r8|answer:0#claims", "claims", 96) != base


def test_the_paper_profile_reproduces_its_cited_figures() -> None:
    """Each figure of the `paper` profile against the measurement it cites (sim.py's doc)."""
    paper = profile_params("paper")
    per_word = paper.tokens_per_word
    assert per_word == pytest.approx(1.3)
    # Decode, batch 1: lmdeploy's llama2-7b on an A100-80G, 100.02 tokens/s (10 ms a token).
    assert iteration_s(paper, 1, 0) / per_word == pytest.approx(1 / 100.02, rel=0.01)
    # Batch 64: 4,154.81 tokens/s (15.4 ms an iteration), within 1%.
    assert 64 / (iteration_s(paper, 64, 0) / per_word) == pytest.approx(4154.81, rel=0.01)
    # Flat until the per-sequence cost passes the weights' read (about 42 sequences).
    assert iteration_s(paper, 32, 0) == iteration_s(paper, 1, 0)
    # Prefill: TensorRT-LLM's LLaMA 7B, 16 ms after 128 prompt tokens, 133 ms after 2,048.
    slope = iteration_s(paper, 1, 2048) - iteration_s(paper, 1, 128)
    assert slope == pytest.approx(0.133 - 0.016, rel=0.01)
    # Against the `cpu` profile (SmolLM2 on 2 cores): a word 2.4x faster at batch 1,
    # prefill 18x faster per token.
    cpu = profile_params("cpu")
    assert iteration_s(cpu, 1, 0) / iteration_s(paper, 1, 0) == pytest.approx(2.39, rel=0.01)
    assert cpu.prefill_s_per_token / paper.prefill_s_per_token == pytest.approx(18.4, rel=0.01)


def test_a_profile_then_a_calibration_file_then_the_time_scale(tmp_path: Path) -> None:
    config = AltoConfig(lm={"sim_profile": "paper", "sim_time_scale": 0.5})
    params = sim_params(config)
    assert params.decode_base_s == 0.010 and params.time_scale == 0.5
    path = tmp_path / "fit.json"
    path.write_text(json.dumps({"decode_base_s": 0.02}))
    params = sim_params(config.with_overrides(lm={"sim_params": path}))
    # The file's fields over the profile's; the rest of the profile stays.
    assert params.decode_base_s == 0.02 and params.tokens_per_word == 1.3
    assert sim_params(AltoConfig()) == SimParams()
    with pytest.raises(ConfigError, match="unknown simulator profile 'tpu'"):
        profile_params("tpu")


def test_verification_length_follows_the_profile() -> None:
    def reason_words(verify_words: float) -> float:
        texts = [
            sim_text(f"r{i}", "factool.verify", 512, verify_words=verify_words) for i in range(400)
        ]
        return statistics.mean(len("".join(t).splitlines()[1].split()) for t in texts)

    assert 11 < reason_words(12.0) < 13
    assert 38 < reason_words(profile_params("paper").verify_words) < 42


class _LateLoop(VirtualTimeLoop):
    """Virtual time on a busy host: every timer fires `late` seconds after it was due."""

    def __init__(self, late: float) -> None:
        super().__init__()
        self.late = late

    def advance(self, seconds: float) -> None:
        super().advance(seconds + self.late)


def _finish_time(late: float, tokens: int = 50) -> float:
    """Virtual seconds one call of `tokens` iterations of 10 ms takes on a `_LateLoop`."""
    params = SimParams(decode_base_s=0.01, decode_per_seq_s=0.0, prefill_s_per_token=0.0)
    loop = _LateLoop(late)

    async def run() -> float:
        engine = SimEngine(params)
        await engine.start()
        gp = GenerationParams(max_tokens=tokens, ignore_eos=True)
        got = [t async for t in engine.generate("r", _prompt("claims"), gp)]
        await engine.stop()
        assert len(got) == tokens
        return loop.time()

    try:
        return loop.run_until_complete(run())
    finally:
        loop.close()


def test_late_wake_ups_do_not_slow_the_simulated_engine() -> None:
    on_time = _finish_time(0.0)
    assert on_time == pytest.approx(0.5)  # 50 iterations of 10 ms
    # Each wake-up 2 ms late: made up on the next iteration, so the call ends one lateness
    # after the schedule, not 50 (0.6 s if every iteration waited its full time again).
    assert _finish_time(0.002) == pytest.approx(0.502)
    # A stall longer than an iteration is made up by one iteration, not replayed: 30 ms late
    # each time, every other iteration runs at once (25 x 40 ms), no burst of 50.
    assert _finish_time(0.03) == pytest.approx(1.0 + 0.03, abs=0.041)
