"""Hierarchical completion over random ancestry trees, arrival orders and replays."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alto.errors import BadInputError
from alto.streams.completion import CompletionTracker


def _tree(
    rng: random.Random, depth: int, max_fanout: int
) -> tuple[list[tuple[int, ...]], list[tuple[tuple[int, ...], int]]]:
    """Leaves and ENDs of a random tree with variable fan-out (0 allowed) at every level."""
    leaves: list[tuple[int, ...]] = []
    ends: list[tuple[tuple[int, ...], int]] = []

    def walk(node: tuple[int, ...]) -> None:
        if len(node) == depth:
            leaves.append(node)
            return
        n = rng.randint(0, max_fanout)
        ends.append((node, n))
        for i in range(n):
            walk((*node, i))

    walk(())
    return leaves, ends


@settings(max_examples=300, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    depth=st.integers(0, 4),
    max_fanout=st.integers(0, 4),
    replay=st.floats(0, 0.5),
    roundtrip=st.booleans(),
)
def test_complete_exactly_when_everything_arrived(
    seed: int, depth: int, max_fanout: int, replay: float, roundtrip: bool
) -> None:
    rng = random.Random(seed)
    leaves, ends = _tree(rng, depth, max_fanout)
    events: list[tuple[str, tuple[int, ...], int]] = [("leaf", leaf, 0) for leaf in leaves]
    events += [("end", node, n) for node, n in ends]
    rng.shuffle(events)
    events += [e for e in events if rng.random() < replay]  # at-least-once: some arrive twice
    rng.shuffle(events)
    tracker = CompletionTracker(depth)
    distinct: set[tuple[str, tuple[int, ...]]] = set()
    total = len(leaves) + len(ends)
    for kind, node, n in events:
        assert tracker.complete == (len(distinct) == total), "complete at the wrong moment"
        new = tracker.add_leaf(node) if kind == "leaf" else tracker.add_end(node, n)
        assert new == ((kind, node) not in distinct)
        distinct.add((kind, node))
        if roundtrip:
            tracker = CompletionTracker.from_json(tracker.to_json())
    assert tracker.complete


def test_zero_children_completes_on_end() -> None:
    tracker = CompletionTracker(2)
    tracker.add_end((), 0)
    assert tracker.complete


def test_inconsistent_input_is_bad_input() -> None:
    tracker = CompletionTracker(1)
    tracker.add_end((), 2)
    with pytest.raises(BadInputError):
        tracker.add_leaf((5,))
    with pytest.raises(BadInputError):
        tracker.add_end((), 3)
    with pytest.raises(BadInputError):
        tracker.add_leaf((0, 1))
    other = CompletionTracker(1)
    other.add_leaf((0,))
    other.add_leaf((1,))
    with pytest.raises(BadInputError):
        other.add_end((), 1)
