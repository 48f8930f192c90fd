"""The engine interface: what an LM worker needs from an inference engine.

Two implementations: `alto.lm_service.vllm_engine.VLLMEngine` (the real vLLM) and
`alto.lm_service.sim.SimEngine` (a continuous-batching timing model, labelled SIMULATED).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from alto.config import EngineName


@dataclass(frozen=True)
class GenerationParams:
    max_tokens: int = 256
    temperature: float = 0.0
    seed: int = 0
    stop: tuple[str, ...] = ()
    # Generate exactly max_tokens, past any end of sequence (benchmarks and calibration only:
    # equal-length outputs make engines comparable, as vLLM's own ignore_eos does).
    ignore_eos: bool = False


@dataclass(frozen=True)
class Prompt:
    """A rendered prompt: `name` identifies the template (prompt-aware scheduling and the
    simulator key on it); `messages` are chat messages; `prefix_len` is how many leading
    characters are shared by every prompt of this template (its cacheable prefix)."""

    name: str
    messages: tuple[tuple[str, str], ...]
    prefix_chars: int = 0

    @property
    def prefix_text(self) -> str:
        """The cacheable prefix: the first `prefix_chars` characters of the messages' text."""
        return "".join(text for _, text in self.messages)[: self.prefix_chars]


@dataclass(frozen=True)
class CallUsage:
    """What one finished generation cost, as the engine measured it (scheduler feedback)."""

    prompt_tokens: int
    cached_tokens: int  # prompt tokens served from the prefix cache
    output_tokens: int
    queue_s: float  # submitted -> first scheduled (vLLM: submitted -> first token)
    service_s: float  # the rest, to the last token


@dataclass
class EngineStats:
    """A snapshot of the engine's load, published in LM status reports."""

    running: int = 0
    waiting: int = 0
    queued_prefill_tokens: int = 0
    queued_decode_tokens: int = 0
    kv_cache_usage: float = 0.0
    prefix_cache_hit_rate: float = 0.0
    generated_tokens: int = 0
    extra: dict[str, float] = field(default_factory=dict)


class Engine(ABC):
    """Serves many generations at once (continuous batching), streaming text deltas."""

    name: EngineName
    simulated: bool = False
    usage: dict[str, CallUsage]  # request id -> usage of a finished generation, until taken

    def take_usage(self, request_id: str) -> CallUsage | None:
        """The usage of `request_id`'s finished generation (once; None if unknown)."""
        return self.usage.pop(request_id, None)

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Load the model (may take tens of seconds)."""

    async def stop(self) -> None:  # noqa: B027 - optional hook
        """Release the engine."""

    @abstractmethod
    def generate(
        self, request_id: str, prompt: Prompt, params: GenerationParams
    ) -> AsyncIterator[str | bytes]:
        """Text deltas of one generation, as they are produced (`bytes`: raw UTF-8 that
        may end inside a character, which the worker's splitter decodes incrementally).

        Raises `EngineError` for a request the engine refuses (e.g. a prompt longer than
        the context); the worker turns that into a failed outcome and a dead letter.
        """

    @abstractmethod
    def stats(self) -> EngineStats: ...

    @abstractmethod
    def count_tokens(self, prompt: Prompt) -> int:
        """Prompt length in tokens (for admission and load estimates)."""
