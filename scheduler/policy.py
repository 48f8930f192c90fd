"""Scheduling policies: pure step functions that pick an LM instance for an LM call.

No I/O anywhere in this module: the scheduler agent (`scheduler/agent.py`) and the
benchmark's virtual-time cluster (`bench/scheduler.py`) feed the same objects with the same
events, so every policy is tested on plain data.

Events, all driven by the caller:
- `ClusterState.report(load)`: an instance's load report (also its heartbeat);
- `policy.decide(state, call, now_ms) -> instance | None`, then `state.assigned(instance, call)`;
- `state.completed(done)` then `policy.on_completion(state, done)`: a call finished.
A policy keeps whatever it learns (counters, prefix trees, per-prompt estimates) in itself;
`table()` / `load_table()` expose the part that must be shared between scheduler replicas
(prompt -> instances), which the agent keeps in the compacted topic `alto.lm.assignments`.

The policies (`make_policy(name)`, names in `POLICY_NAMES`); each only ever returns a live
instance, None when there is none, and is deterministic given the same events:
- `round_robin`: live instances in turn; ignores load and prefixes (the baseline).
- `least_loaded`: the live instance with the least queued work in tokens (not calls);
  ties go to the lower KV-cache use, then the lower id.
- `prefix_hash`: consistent hashing of the call's prefix (or its prompt name when it has
  no prefix) on a ring of virtual nodes, with a hash that is the same in every process;
  when an instance leaves or joins, only the keys on its arcs move. Perfect prefix
  locality, blind to load.
- `cache_aware`: after SGLang's router. One approximate radix tree per instance of the
  prefixes routed there (LRU-evicted under a size budget). While queues are balanced the
  call follows the instance holding the longest part of its prefix (or, with no good
  match, the instance with the smallest tree); once they are not, the shortest queue.
- `prompt_aware`: ALTO's prompt-aware scheduling (section 6.2, proposed there, built
  here). Each prompt is sticky to a small set of instances (prefix-cache reuse); sets
  grow, move and shrink with the prompt's demand (arrival rate x cost, both measured
  online) and its queueing delay relative to its own calls' cost, with hysteresis,
  preferring instances that hold its prefix; a call spills outside its set only when
  that still wins after paying the cache miss (the prefill of its prefix).
"""

from __future__ import annotations

from typing import get_args

from alto.config import PolicyName
from alto.scheduler.base import SchedulingPolicy
from alto.scheduler.cache_aware import CacheAware, PrefixTree
from alto.scheduler.prompt_aware import PromptAware
from alto.scheduler.simple import LeastLoaded, PrefixHash, RoundRobin
from alto.scheduler.state import CHARS_PER_TOKEN, Call, ClusterState, Completion, Load

POLICY_NAMES: tuple[str, ...] = get_args(PolicyName)

_POLICIES: tuple[type[SchedulingPolicy], ...] = (
    RoundRobin,
    LeastLoaded,
    PrefixHash,
    CacheAware,
    PromptAware,
)


def make_policy(name: str) -> SchedulingPolicy:
    policies: dict[str, type[SchedulingPolicy]] = {cls.name: cls for cls in _POLICIES}
    try:
        return policies[name]()
    except KeyError:
        known = ", ".join(POLICY_NAMES)
        raise ValueError(f"unknown scheduling policy {name!r} (known: {known})") from None


__all__ = [
    "CHARS_PER_TOKEN",
    "POLICY_NAMES",
    "CacheAware",
    "Call",
    "ClusterState",
    "Completion",
    "LeastLoaded",
    "Load",
    "PrefixHash",
    "PrefixTree",
    "PromptAware",
    "RoundRobin",
    "SchedulingPolicy",
    "make_policy",
]
