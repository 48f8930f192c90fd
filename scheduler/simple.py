"""Policies without learned state: `round_robin`, `least_loaded`, `prefix_hash`."""

from __future__ import annotations

import bisect
import hashlib

from alto.scheduler.base import SchedulingPolicy
from alto.scheduler.state import Call, ClusterState


class RoundRobin(SchedulingPolicy):
    name = "round_robin"

    def __init__(self) -> None:
        self._next = 0

    def decide(self, state: ClusterState, call: Call, now_ms: int) -> int | None:
        live = state.live(now_ms)
        if not live:
            return None
        choice = live[self._next % len(live)]
        self._next += 1
        return choice


class LeastLoaded(SchedulingPolicy):
    """The live instance with the least queued work in tokens; ties: KV-cache use, then id."""

    name = "least_loaded"

    def decide(self, state: ClusterState, call: Call, now_ms: int) -> int | None:
        live = state.live(now_ms)
        if not live:
            return None
        return min(live, key=lambda i: (state.queued_tokens(i), state.kv_usage(i), i))


def _stable_hash(text: str) -> int:
    """A 64-bit hash that is the same in every process (unlike the salted `hash()`)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class PrefixHash(SchedulingPolicy):
    """Consistent hashing of the call's prefix (its prompt name when the prefix is empty) on
    a ring of `vnodes` points per live instance: an instance leaving or joining moves only
    the keys on its own arcs."""

    name = "prefix_hash"

    def __init__(self, vnodes: int = 64) -> None:
        self.vnodes = vnodes
        self._ring_of: tuple[int, ...] = ()
        self._points: list[int] = []
        self._owners: list[int] = []

    def _ring(self, live: list[int]) -> None:
        key = tuple(live)
        if key == self._ring_of:
            return
        ring = sorted(
            (_stable_hash(f"instance-{i}#{v}"), i) for i in live for v in range(self.vnodes)
        )
        self._points = [p for p, _ in ring]
        self._owners = [i for _, i in ring]
        self._ring_of = key

    def decide(self, state: ClusterState, call: Call, now_ms: int) -> int | None:
        live = state.live(now_ms)
        if not live:
            return None
        self._ring(live)
        at = bisect.bisect_right(self._points, _stable_hash(call.prefix or call.prompt))
        return self._owners[at % len(self._owners)]
