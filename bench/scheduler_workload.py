"""The scheduler benchmark's workload: applications with prompt templates (shared system
prompts, Zipf popularity, Poisson arrivals) and the SLO derived from the engine model (see
`alto.bench.scheduler`)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from alto.lm_service.sim import SimParams, iteration_s
from alto.scheduler.policy import (
    CHARS_PER_TOKEN,
)

N_INSTANCES = 4
N_APPS = 6
TEMPLATES_PER_APP = 4
SYSTEM_TOKENS = (100, 300)  # evenly spaced over the applications
OWN_TOKENS = (500, 1500)  # evenly spaced over the templates, shuffled
SUFFIX_TOKENS = (20, 80)  # uniform per call
OUTPUT_MEAN = (20, 100)  # evenly spaced over the templates, shuffled
OUTPUT_SPREAD = 0.25  # a call's output is its template's mean x U(1 - s, 1 + s)
ZIPF_S = 1.1
SLO_FACTOR = 2.0
WARMUP_FRACTION = 0.1
REPORT_EVERY_S = 1.0
PASS_ACHIEVED = 0.8

LOADS = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 16.0)
QUICK_LOADS = (0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0)
CALLS, QUICK_CALLS = 12_000, 5_000
BISECT_STEPS, QUICK_BISECT_STEPS = 5, 3
FIXED_LOAD_RPS = 2.0
SEED = 1

WORDS = (
    "you are a careful assistant answer the question list every claim stated in the text "
    "write one search query per claim cite the evidence rate each claim as true or false "
    "example input output format step reason context document passage verify summary"
).split()


def _text(tokens: int, rng: random.Random) -> str:
    """Filler text of `tokens` tokens at the policies' estimate (`CHARS_PER_TOKEN`)."""
    chars = round(tokens * CHARS_PER_TOKEN)
    words: list[str] = []
    length = 0
    while length < chars:
        word = rng.choice(WORDS)
        words.append(word)
        length += len(word) + 1
    return " ".join(words)[:chars].ljust(chars)


def _spaced(bounds: tuple[int, int], n: int) -> list[int]:
    lo, hi = bounds
    return [round(lo + (hi - lo) * k / max(1, n - 1)) for k in range(n)]


@dataclass(frozen=True)
class Template:
    name: str
    app: int
    system_tokens: int
    own_tokens: int
    output_mean: int
    max_tokens: int
    weight: float  # popularity (unnormalised Zipf weight)
    prefix: str  # system prompt + own part, as the policies see it

    @property
    def prefix_tokens(self) -> int:
        return self.system_tokens + self.own_tokens


@dataclass(frozen=True)
class Arrival:
    """One call of the workload, at unit rate (`t_unit` / rate = arrival time in s)."""

    t_unit: float
    template: int
    suffix_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class Workload:
    templates: tuple[Template, ...]
    arrivals: tuple[Arrival, ...]
    seed: int

    @property
    def distinct_prefix_tokens(self) -> int:
        systems = {t.app: t.system_tokens for t in self.templates}
        return sum(systems.values()) + sum(t.own_tokens for t in self.templates)


def make_workload(n_calls: int, seed: int = SEED) -> Workload:
    """The benchmark's templates and `n_calls` arrivals (deterministic per seed)."""
    rng = random.Random(seed)
    n = N_APPS * TEMPLATES_PER_APP
    systems = _spaced(SYSTEM_TOKENS, N_APPS)
    own = _spaced(OWN_TOKENS, n)
    rng.shuffle(own)
    outputs = _spaced(OUTPUT_MEAN, n)
    rng.shuffle(outputs)
    ranks = list(range(1, n + 1))
    rng.shuffle(ranks)
    system_texts = [_text(s, rng) for s in systems]
    templates = []
    for k in range(n):
        app = k // TEMPLATES_PER_APP
        templates.append(
            Template(
                name=f"app{app}/t{k % TEMPLATES_PER_APP}",
                app=app,
                system_tokens=systems[app],
                own_tokens=own[k],
                output_mean=outputs[k],
                max_tokens=math.ceil(outputs[k] * (1 + OUTPUT_SPREAD)),
                weight=ranks[k] ** -ZIPF_S,
                prefix=system_texts[app] + _text(own[k], rng),
            )
        )
    weights = [t.weight for t in templates]
    arrivals = []
    t = 0.0
    for _ in range(n_calls):
        t += rng.expovariate(1.0)
        k = rng.choices(range(n), weights)[0]
        out = templates[k].output_mean * rng.uniform(1 - OUTPUT_SPREAD, 1 + OUTPUT_SPREAD)
        arrivals.append(
            Arrival(
                t,
                k,
                rng.randint(*SUFFIX_TOKENS),
                max(1, min(templates[k].max_tokens, round(out))),
            )
        )
    return Workload(tuple(templates), tuple(arrivals), seed)


def unloaded_latency_s(params: SimParams, template: Template, *, cached: bool = False) -> float:
    """A call of `template` alone on an instance: its prefill iteration, then one iteration
    per further token (the longest suffix and max_tokens: the template's worst case)."""
    prompt = template.prefix_tokens + SUFFIX_TOKENS[1]
    prefill = prompt - (template.prefix_tokens if cached else 0)
    return iteration_s(params, 1, prefill) + (template.max_tokens - 1) * iteration_s(params, 1, 0)


def slo_s(params: SimParams, workload: Workload) -> float:
    """SLO_FACTOR x the cold unloaded latency of the most expensive template."""
    return SLO_FACTOR * max(unloaded_latency_s(params, t) for t in workload.templates)
