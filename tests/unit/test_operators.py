"""Aggregation operators: results match a direct computation, whatever the arrival order."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alto.schemas.messages import PathEntry
from alto.streams.operators import (
    Item,
    by_source,
    collect,
    combine,
    count,
    filter_by,
    map_values,
    sum_of,
    top_k,
)


def _items(values: list[int], source: str = "s") -> list[Item]:
    return [Item(v, "r", (PathEntry("x", i),), source) for i, v in enumerate(values)]


def _fold(op, items: list[Item], seed: int):  # type: ignore[no-untyped-def]
    order = list(items)
    random.Random(seed).shuffle(order)
    acc = op.init()
    for item in order:
        acc = json.loads(json.dumps(op.add(acc, item)))  # state must survive a changelog round trip
    return op.result(acc)


values = st.lists(st.integers(-50, 50), max_size=30)


@given(values, st.integers())
def test_collect_keeps_ancestry_order(vs: list[int], seed: int) -> None:
    assert _fold(collect(), _items(vs), seed) == vs


@given(values, st.integers())
def test_count_and_sum(vs: list[int], seed: int) -> None:
    assert _fold(count(), _items(vs), seed) == len(vs)
    assert _fold(sum_of(), _items(vs), seed) == sum(vs)
    assert _fold(sum_of(abs), _items(vs), seed) == sum(map(abs, vs))


@given(values, st.integers(1, 5), st.integers())
def test_top_k_is_order_independent_and_breaks_ties_by_ancestry(
    vs: list[int], k: int, seed: int
) -> None:
    expected = [vs[i] for i in sorted(range(len(vs)), key=lambda i: (-vs[i], i))[:k]]
    assert _fold(top_k(k, key=lambda v: v), _items(vs), seed) == expected


@given(values, st.integers())
def test_filter_and_map(vs: list[int], seed: int) -> None:
    op = filter_by(lambda v: v > 0, map_values(lambda v: v * 2, collect()))
    assert _fold(op, _items(vs), seed) == [v * 2 for v in vs if v > 0]


@given(values, values, st.integers())
def test_combine_and_join_by_source(a: list[int], b: list[int], seed: int) -> None:
    op = by_source(left=combine(n=count(), total=sum_of()), right=collect())
    items = _items(a, "left") + _items(b, "right")
    assert _fold(op, items, seed) == {"left": {"n": len(a), "total": sum(a)}, "right": b}
    finished = combine(lambda parts: parts["n"] * 10, n=count())
    assert _fold(finished, _items(a), seed) == len(a) * 10


def test_top_k_rejects_k_below_one() -> None:
    with pytest.raises(ValueError):
        top_k(0, key=len)
