"""Placement: the policy's choice plus the two rules every placement obeys (pure, no I/O).

`place(...)` is the one step from an LM call to an instance. The scheduler agent
(`scheduler/agent.py`) and `alto bench scheduler` (its simulated cluster and its vLLM run)
both call it, so the benchmark measures what the agent does, rules included:

1. **Same engine for a replay** (`engine`): a call placed again after its instance died
   goes to a live instance running the engine of its first attempt, when there is one: its
   output must reproduce what the first attempt streamed in part (downstream deduplication
   keeps the first copy of each quantum).
2. **Spill**: when the policy's choice is saturated (`saturation` calls outstanding) while
   another live instance has room, the call goes to the one of those with the least queued
   work in tokens; stickiness must never queue calls behind a full instance.

Then the call is recorded on the state (`state.assigned`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from alto.config import SchedulerSettings
from alto.scheduler.base import SchedulingPolicy
from alto.scheduler.state import Call, ClusterState

Why = Literal["policy", "same_engine", "spill"]

# The agent's default saturation, for the benchmarks.
SATURATION: int = SchedulerSettings().saturation


@dataclass(frozen=True, slots=True)
class Placement:
    instance: int
    why: Why


def place(
    policy: SchedulingPolicy,
    state: ClusterState,
    call: Call,
    now_ms: int,
    *,
    saturation: int,
    engines: Mapping[int, str] | None = None,
    engine: str | None = None,
) -> Placement | None:
    """Where `call` goes, recorded on `state`; None when no instance is live (the caller
    waits for a change). `engines` maps instances to the engine each runs."""
    instance = policy.decide(state, call, now_ms)
    if instance is None:
        return None
    live = state.live(now_ms)
    why: Why = "policy"
    same = [i for i in live if engines is not None and engines.get(i) == engine]
    if engine is not None and same and instance not in same:
        instance = min(same, key=lambda i: (state.queued_tokens(i), i))
        why = "same_engine"
    elif state.outstanding(instance) >= saturation:
        room = [i for i in live if state.outstanding(i) < saturation]
        if room:
            instance = min(room, key=lambda i: (state.queued_tokens(i), i))
            why = "spill"
    state.assigned(instance, call)
    return Placement(instance, why)
