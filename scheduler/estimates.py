"""Online estimates the prompt-aware policy keeps per prompt and per instance: decayed
rates, capacities, levels with hysteresis, moving averages."""

from __future__ import annotations

import math
from dataclasses import dataclass


class Rate:
    """An exponentially decayed event rate (per second) with time constant `tau_ms`,
    corrected for the short history at the start."""

    __slots__ = ("first_ms", "last_ms", "level", "tau_ms")

    def __init__(self, tau_ms: float) -> None:
        self.tau_ms = tau_ms
        self.level = 0.0
        self.first_ms: int | None = None
        self.last_ms = 0

    def add(self, amount: float, at_ms: int) -> None:
        if self.first_ms is None:
            self.first_ms = self.last_ms = at_ms
        elif at_ms > self.last_ms:
            self.level *= math.exp(-(at_ms - self.last_ms) / self.tau_ms)
            self.last_ms = at_ms
        self.level += amount

    def per_s(self, now_ms: int) -> float:
        if self.first_ms is None:
            return 0.0
        level = self.level * math.exp(-max(0, now_ms - self.last_ms) / self.tau_ms)
        span = max(now_ms, self.last_ms) - self.first_ms
        window_ms = max(1000.0, self.tau_ms * (1.0 - math.exp(-span / self.tau_ms)))
        return level * 1000.0 / window_ms


class Capacity:
    """Tokens per second an instance completes while busy: decayed sums of its completed
    calls' tokens and of the busy time each took (from the later of the previous
    completion and the call's assignment, to its completion)."""

    __slots__ = ("busy_s", "last_ms", "samples", "tokens")
    DECAY = 0.99  # about 100 completions: continuous batching finishes calls in bursts
    MIN_SAMPLES = 4

    def __init__(self) -> None:
        self.tokens = 0.0
        self.busy_s = 0.0
        self.samples = 0
        self.last_ms: int | None = None

    def add(self, tokens: int, assigned_ms: int, done_ms: int) -> None:
        start = assigned_ms if self.last_ms is None else max(self.last_ms, assigned_ms)
        self.tokens = self.tokens * self.DECAY + tokens
        self.busy_s = self.busy_s * self.DECAY + max(0, done_ms - start) / 1000.0
        self.samples += 1
        self.last_ms = done_ms if self.last_ms is None else max(self.last_ms, done_ms)

    def per_s(self) -> float | None:
        if self.samples < self.MIN_SAMPLES or self.busy_s <= 0.0:
            return None
        return self.tokens / self.busy_s


class Level:
    """A level sampled at irregular times, smoothed with time constant `tau_ms`."""

    __slots__ = ("at_ms", "tau_ms", "value")

    def __init__(self, tau_ms: float) -> None:
        self.tau_ms = tau_ms
        self.value = 0.0
        self.at_ms: int | None = None

    def update(self, x: float, now_ms: int) -> None:
        if self.at_ms is None:
            self.value, self.at_ms = x, now_ms
        elif now_ms > self.at_ms:
            self.value += (1.0 - math.exp(-(now_ms - self.at_ms) / self.tau_ms)) * (x - self.value)
            self.at_ms = now_ms


class Ewma:
    __slots__ = ("alpha", "value")

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha
        self.value: float | None = None

    def add(self, x: float) -> None:
        self.value = x if self.value is None else self.value + self.alpha * (x - self.value)

    def get(self, default: float = 0.0) -> float:
        return default if self.value is None else self.value


@dataclass
class PromptStats:
    """What prompt-aware placement knows of one prompt."""

    members: list[int]  # its instances, in the order they were added
    arrivals: Rate
    call_tokens: Ewma  # prompt_tokens + max_tokens, from the calls (before completions)
    prefill_tokens: Ewma  # from completions: prompt_tokens - cached_tokens
    output_tokens: Ewma
    service_s: Ewma
    queue_s: Ewma
    prefix_tokens: Ewma  # from completions that hit: cached_tokens (what a hit saves)
    hit_prefill_tokens: Ewma  # from completions that hit: prompt_tokens - cached_tokens
    completions: int = 0
    adjusted_ms: int | None = None
    cool_since_ms: int | None = None
    decode_weight: float = 1.0  # an output token's cost in prefill tokens

    def cost_tokens(self) -> float:
        """Estimated tokens one call of this prompt costs an instance that holds its prefix
        (what it costs once placed): its prefill when it hits, else any completion's, then
        its output; before any completion, its calls' estimate."""
        if self.completions:
            prefill = self.hit_prefill_tokens.get(self.prefill_tokens.get())
            return prefill + self.decode_weight * self.output_tokens.get()
        return self.call_tokens.get()

    def demand(self, now_ms: int) -> float:
        """Tokens per second this prompt asks of the cluster."""
        return self.arrivals.per_s(now_ms) * self.cost_tokens()
