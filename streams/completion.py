"""Hierarchical completion tracking for variable fan-out at every level.

An aggregator for one node receives leaves (DATA quanta `depth` levels below the node)
and END markers (an inner node's exact child count), in any order and possibly more than
once. The node is complete when every inner node below it has its END and all of its
children are complete. State is plain JSON so it can live in a changelog-backed table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from alto.errors import BadInputError

Rel = tuple[int, ...]


def _k(rel: Sequence[int]) -> str:
    return ".".join(map(str, rel))


@dataclass
class CompletionTracker:
    """Completion of one node whose leaves lie `depth` levels below it.

    Depth 0 is a join input that contributes one item at the node itself.
    """

    depth: int
    expected: dict[str, int] = field(default_factory=dict)
    done_children: dict[str, int] = field(default_factory=dict)
    complete_nodes: set[str] = field(default_factory=set)
    # Per inner node, the highest index among its complete children: an END that comes
    # after them must count past it (else children 0 and 7 would "complete" a count of 2).
    highest: dict[str, int] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return "" in self.complete_nodes

    def add_leaf(self, rel: Rel) -> bool:
        """Record a DATA quantum; False when it was seen before (a replay to ignore)."""
        if len(rel) != self.depth:
            raise BadInputError(
                "bad_ancestry", f"leaf at relative depth {len(rel)}, expected {self.depth}"
            )
        key = _k(rel)
        if key in self.complete_nodes:
            return False
        self._check_in_range(rel)
        self._mark_complete(rel)
        return True

    def add_end(self, rel: Rel, count: int) -> bool:
        """Record that inner node `rel` has exactly `count` children; False if already known."""
        if len(rel) >= self.depth:
            raise BadInputError(
                "bad_ancestry", f"END at relative depth {len(rel)}, leaves are at {self.depth}"
            )
        if count < 0:
            raise BadInputError("bad_end", f"END with negative count {count}")
        if any(i < 0 for i in rel):
            raise BadInputError("bad_ancestry", f"negative child index in {_k(rel)}")
        key = _k(rel)
        known = self.expected.get(key)
        if known is not None:
            if known != count:
                raise BadInputError(
                    "bad_end", f"END for {key or 'node'} says {count} children, earlier {known}"
                )
            return False
        if self.done_children.get(key, 0) > count or self.highest.get(key, -1) >= count:
            raise BadInputError("bad_end", f"END count {count} below children already seen")
        self.expected[key] = count
        if self.done_children.get(key, 0) == count:
            self._mark_complete(rel)
        return True

    def _check_in_range(self, rel: Rel) -> None:
        if any(i < 0 for i in rel):
            raise BadInputError("bad_ancestry", f"negative child index in {_k(rel)}")
        for i in range(len(rel)):
            n = self.expected.get(_k(rel[:i]))
            if n is not None and rel[i] >= n:
                raise BadInputError(
                    "bad_ancestry", f"child index {rel[i]} beyond the END count {n}"
                )

    def _mark_complete(self, rel: Rel) -> None:
        # Walk upwards: each newly complete node counts once towards its parent.
        while True:
            self.complete_nodes.add(_k(rel))
            if not rel:
                return
            parent = rel[:-1]
            pkey = _k(parent)
            done = self.done_children.get(pkey, 0) + 1
            self.done_children[pkey] = done
            self.highest[pkey] = max(self.highest.get(pkey, -1), rel[-1])
            if self.expected.get(pkey) != done:
                return
            rel = parent

    def to_json(self) -> dict[str, Any]:
        return {
            "depth": self.depth,
            "expected": self.expected,
            "done": self.done_children,
            "complete": sorted(self.complete_nodes),
            "highest": self.highest,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CompletionTracker:
        return cls(
            depth=data["depth"],
            expected=dict(data["expected"]),
            done_children=dict(data["done"]),
            complete_nodes=set(data["complete"]),
            highest=dict(data.get("highest", {})),  # absent in state written before it
        )
