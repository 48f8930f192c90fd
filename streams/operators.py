"""Aggregation operators for stateful stages: collect, count, sum, top-k, filter, map, combine.

An operator folds the items of one ancestry node into an accumulator, one item at a
time, and turns the accumulator into the node's output once the node is complete.
Accumulators are plain JSON values so they can live in a changelog-backed table and a
replacement worker resumes them. The runtime calls `add` once per distinct item
(replays are filtered out before), in arrival order, which varies; operators whose
result depends on order (collect, top-k ties) order by the items' ancestry instead.
"""

from __future__ import annotations

import heapq
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from alto.schemas.messages import PathEntry


@dataclass(frozen=True, slots=True)
class Item:
    """One input of a stage: its value and where it sits in the request's ancestry."""

    value: Any
    request_id: str
    path: tuple[PathEntry, ...]
    source: str  # the stage that emitted it

    @property
    def indices(self) -> list[int]:
        return [p.index for p in self.path]


class Operator(ABC):
    """Folds the items of one node: `init` -> `add`* -> `result`."""

    @abstractmethod
    def init(self) -> Any: ...

    @abstractmethod
    def add(self, acc: Any, item: Item) -> Any: ...

    @abstractmethod
    def result(self, acc: Any) -> Any: ...


class Collect(Operator):
    """All values, in ancestry order (not arrival order)."""

    def init(self) -> list[Any]:
        return []

    def add(self, acc: list[Any], item: Item) -> list[Any]:
        acc.append([item.indices, item.value])
        return acc

    def result(self, acc: list[Any]) -> list[Any]:
        return [value for _, value in sorted(acc, key=lambda pair: pair[0])]


class Count(Operator):
    def init(self) -> int:
        return 0

    def add(self, acc: int, item: Item) -> int:
        return acc + 1

    def result(self, acc: int) -> int:
        return acc


class Sum(Operator):
    """Sum of `key(value)` (the value itself by default)."""

    def __init__(self, key: Callable[[Any], float] | None = None) -> None:
        self.key = key

    def init(self) -> float:
        return 0

    def add(self, acc: float, item: Item) -> float:
        return acc + (self.key(item.value) if self.key else item.value)

    def result(self, acc: float) -> float:
        return acc


class TopK(Operator):
    """The k values with the largest `key(value)`; ties broken by ancestry order."""

    def __init__(self, k: int, key: Callable[[Any], float]) -> None:
        if k < 1:
            raise ValueError("top-k needs k >= 1")
        self.k = k
        self.key = key

    def init(self) -> list[Any]:
        return []

    def add(self, acc: list[Any], item: Item) -> list[Any]:
        # Entries are [score, negated indices, source, value]: a min-heap keeps the k best,
        # and (indices, source) is unique per item, so values are never compared.
        entry = [self.key(item.value), [-i for i in item.indices], item.source, item.value]
        if len(acc) < self.k:
            heapq.heappush(acc, entry)
        elif entry[:3] > acc[0][:3]:
            heapq.heapreplace(acc, entry)
        return acc

    def result(self, acc: list[Any]) -> list[Any]:
        return [e[3] for e in sorted(acc, key=lambda e: e[:3], reverse=True)]


class Filter(Operator):
    """Pass only the items whose value satisfies `predicate` to `inner`."""

    def __init__(self, predicate: Callable[[Any], bool], inner: Operator) -> None:
        self.predicate = predicate
        self.inner = inner

    def init(self) -> Any:
        return self.inner.init()

    def add(self, acc: Any, item: Item) -> Any:
        return self.inner.add(acc, item) if self.predicate(item.value) else acc

    def result(self, acc: Any) -> Any:
        return self.inner.result(acc)


class Map(Operator):
    """Apply `fn` to each value before `inner` sees it."""

    def __init__(self, fn: Callable[[Any], Any], inner: Operator) -> None:
        self.fn = fn
        self.inner = inner

    def init(self) -> Any:
        return self.inner.init()

    def add(self, acc: Any, item: Item) -> Any:
        mapped = Item(self.fn(item.value), item.request_id, item.path, item.source)
        return self.inner.add(acc, mapped)

    def result(self, acc: Any) -> Any:
        return self.inner.result(acc)


class Combine(Operator):
    """Several operators over the same items; the result is a dict by name.

    `finish`, when given, turns that dict into the node's output.
    """

    def __init__(
        self, finish: Callable[[dict[str, Any]], Any] | None = None, **ops: Operator
    ) -> None:
        if not ops:
            raise ValueError("combine needs at least one operator")
        self.ops = ops
        self.finish = finish

    def init(self) -> dict[str, Any]:
        return {name: op.init() for name, op in self.ops.items()}

    def add(self, acc: dict[str, Any], item: Item) -> dict[str, Any]:
        for name, op in self.ops.items():
            acc[name] = op.add(acc[name], item)
        return acc

    def result(self, acc: dict[str, Any]) -> Any:
        out = {name: op.result(acc[name]) for name, op in self.ops.items()}
        return self.finish(out) if self.finish else out


class BySource(Operator):
    """A join: items from each upstream stage go to that stage's operator."""

    def __init__(self, **ops: Operator) -> None:
        self.ops = ops

    def init(self) -> dict[str, Any]:
        return {name: op.init() for name, op in self.ops.items()}

    def add(self, acc: dict[str, Any], item: Item) -> dict[str, Any]:
        op = self.ops.get(item.source)
        if op is not None:
            acc[item.source] = op.add(acc[item.source], item)
        return acc

    def result(self, acc: dict[str, Any]) -> dict[str, Any]:
        return {name: op.result(acc[name]) for name, op in self.ops.items()}


def collect() -> Operator:
    return Collect()


def count() -> Operator:
    return Count()


def sum_of(key: Callable[[Any], float] | None = None) -> Operator:
    return Sum(key)


def top_k(k: int, key: Callable[[Any], float]) -> Operator:
    return TopK(k, key)


def filter_by(predicate: Callable[[Any], bool], inner: Operator) -> Operator:
    return Filter(predicate, inner)


def map_values(fn: Callable[[Any], Any], inner: Operator) -> Operator:
    return Map(fn, inner)


def combine(finish: Callable[[dict[str, Any]], Any] | None = None, **ops: Operator) -> Operator:
    return Combine(finish, **ops)


def by_source(**ops: Operator) -> Operator:
    return BySource(**ops)
