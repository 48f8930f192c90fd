"""Scheduling policies: pure step functions that pick an LM instance for an LM call.

`decide(state, request) -> instance` and `observe(state, status)`; no I/O, so every
policy is tested on plain data. The prompt-aware policies of the scheduler issue plug in
behind the same interface, selected by name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Literal

from schemas.messages import LMRequest, LMStatus

PolicyName = Literal["round_robin"]


@dataclass
class ClusterState:
    """What the scheduler knows: the last status of every instance and when it came."""

    heartbeat_timeout_ms: int = 5_000
    statuses: dict[int, LMStatus] = field(default_factory=dict)

    def live(self, now_ms: int) -> list[int]:
        return sorted(
            i for i, st in self.statuses.items() if now_ms - st.at_ms <= self.heartbeat_timeout_ms
        )


class SchedulingPolicy(ABC):
    name: PolicyName

    def observe(self, state: ClusterState, status: LMStatus) -> None:
        previous = state.statuses.get(status.instance)
        if previous is None or status.at_ms >= previous.at_ms:
            state.statuses[status.instance] = status

    @abstractmethod
    def decide(self, state: ClusterState, request: LMRequest, now_ms: int) -> int | None:
        """The instance to serve `request`, or None when no instance is live."""


class RoundRobin(SchedulingPolicy):
    name = "round_robin"

    def __init__(self) -> None:
        self._next = 0

    def decide(self, state: ClusterState, request: LMRequest, now_ms: int) -> int | None:
        live = state.live(now_ms)
        if not live:
            return None
        choice = live[self._next % len(live)]
        self._next += 1
        return choice


def make_policy(name: PolicyName) -> SchedulingPolicy:
    if name == "round_robin":
        return RoundRobin()
    raise ValueError(f"unknown scheduling policy {name!r}")
