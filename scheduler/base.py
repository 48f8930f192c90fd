"""The interface every scheduling policy implements (see `alto.scheduler.policy`)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from alto.config import PolicyName
from alto.scheduler.state import Call, ClusterState, Completion


class SchedulingPolicy(ABC):
    name: ClassVar[PolicyName]

    @abstractmethod
    def decide(self, state: ClusterState, call: Call, now_ms: int) -> int | None:
        """The instance to serve `call`, or None when no instance is live."""

    def on_completion(self, state: ClusterState, done: Completion) -> None:  # noqa: B027
        """Feedback: `done` finished (after `state.completed(done)`)."""

    def on_instance_removed(self, state: ClusterState, instance: int) -> None:  # noqa: B027
        """`instance` stopped reporting and was removed from `state`."""

    def table(self) -> dict[str, tuple[int, ...]]:
        """The state to share between scheduler replicas: prompt -> instances."""
        return {}

    def load_table(self, table: dict[str, tuple[int, ...]]) -> None:  # noqa: B027
        """Resume from a shared table (a restarted or second scheduler replica)."""
