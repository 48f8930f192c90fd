"""`cache_aware`: per-instance approximate radix trees of routed prefixes (after SGLang's
router)."""

from __future__ import annotations

import heapq

from alto.scheduler.base import SchedulingPolicy
from alto.scheduler.state import CHARS_PER_TOKEN, Call, ClusterState


class _Node:
    __slots__ = ("children", "edge", "last_used", "parent", "seq")

    def __init__(self, edge: str, parent: _Node | None, seq: int) -> None:
        self.edge = edge
        self.parent = parent
        self.children: dict[str, _Node] = {}
        self.last_used = 0
        self.seq = seq


class PrefixTree:
    """A radix tree over characters: the prefixes recently sent to one instance, an
    approximation of what its KV cache holds. `size` counts the characters on its edges;
    `evict(budget)` drops least recently used leaves until `size <= budget`."""

    def __init__(self) -> None:
        self._seq = 0
        self.root = _Node("", None, 0)
        self.size = 0

    def _new(self, edge: str, parent: _Node) -> _Node:
        self._seq += 1
        node = _Node(edge, parent, self._seq)
        parent.children[edge[0]] = node
        self.size += len(edge)
        return node

    def match(self, text: str) -> int:
        """How many leading characters of `text` the tree holds."""
        node, pos = self.root, 0
        while pos < len(text):
            child = node.children.get(text[pos])
            if child is None:
                break
            common = _common_prefix(child.edge, text, pos)
            pos += common
            if common < len(child.edge):
                break
            node = child
        return pos

    def insert(self, text: str, tick: int) -> None:
        node, pos = self.root, 0
        node.last_used = tick
        while pos < len(text):
            child = node.children.get(text[pos])
            if child is None:
                self._new(text[pos:], node).last_used = tick
                return
            common = _common_prefix(child.edge, text, pos)
            if common < len(child.edge):  # split the edge where `text` leaves it
                del node.children[child.edge[0]]
                self.size -= len(child.edge)
                middle = self._new(child.edge[:common], node)
                child.edge = child.edge[common:]
                child.parent = middle
                middle.children[child.edge[0]] = child
                self.size += len(child.edge)
                child = middle
            child.last_used = tick
            pos += common
            node = child

    def evict(self, budget: int) -> None:
        if self.size <= budget:
            return
        heap: list[tuple[int, int, _Node]] = []
        stack = [self.root]
        while stack:
            node = stack.pop()
            stack.extend(node.children.values())
            if not node.children and node is not self.root:
                heap.append((node.last_used, node.seq, node))
        heapq.heapify(heap)
        while self.size > budget and heap:
            _, _, leaf = heapq.heappop(heap)
            parent = leaf.parent
            assert parent is not None
            del parent.children[leaf.edge[0]]
            self.size -= len(leaf.edge)
            if not parent.children and parent is not self.root:
                heapq.heappush(heap, (parent.last_used, parent.seq, parent))


def _common_prefix(edge: str, text: str, pos: int) -> int:
    """Length of the common prefix of `edge` and `text[pos:]`: slice comparisons (in C),
    the whole edge first (the usual case), then a binary search for where they part."""
    n = min(len(edge), len(text) - pos)
    if edge[:n] == text[pos : pos + n]:
        return n
    lo, hi = 0, n - 1  # edge[:lo] matches; edge[:hi + 1] does not
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if edge[:mid] == text[pos : pos + mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


class CacheAware(SchedulingPolicy):
    """Cache-aware routing in the manner of SGLang's router: one approximate prefix tree per
    instance, made of the prefixes this policy sent there.

    The cluster is *imbalanced* when the spread of `queued_tokens` over live instances
    exceeds `balance_abs_tokens` and the largest exceeds `balance_rel` times the smallest
    (both, as in SGLang); then the call goes to the least queued instance. Otherwise it goes
    to the instance whose tree matches the longest part of its prefix when that part is at
    least `cache_threshold` of the prefix (ties: least queued), else to the instance with
    the smallest tree (the most cache room; ties: least queued). The prefix is then recorded
    in the chosen instance's tree, which is kept under `max_tree_chars` by evicting its
    least recently used leaves.

    Defaults: SGLang's `cache_threshold` 0.5; SGLang measures balance in requests (32 and
    1.0001, or 1.5 in later versions); we measure it in tokens: 4096 tokens (about 16 calls
    of 256 tokens, a fraction of a second of work for one engine) and 1.5.
    `max_tree_chars` = 4 x 16,384 = 65,536 characters: about 16k tokens of prefix per
    instance (at `CHARS_PER_TOKEN`), the size of a realistic engine prefix cache (the
    simulated engines' `prefix_cache_tokens`; SGLang's router also bounds its tree,
    `max_tree_size`). A tree much larger than the cache claims hits the engine evicted."""

    name = "cache_aware"

    def __init__(
        self,
        cache_threshold: float = 0.5,
        balance_abs_tokens: int = 4096,
        balance_rel: float = 1.5,
        max_tree_chars: int = round(CHARS_PER_TOKEN * 16_384),
    ) -> None:
        self.cache_threshold = cache_threshold
        self.balance_abs_tokens = balance_abs_tokens
        self.balance_rel = balance_rel
        self.max_tree_chars = max_tree_chars
        self.trees: dict[int, PrefixTree] = {}
        self._tick = 0

    def _tree(self, instance: int) -> PrefixTree:
        return self.trees.setdefault(instance, PrefixTree())

    def imbalanced(self, loads: list[int]) -> bool:
        hi, lo = max(loads), min(loads)
        return hi - lo > self.balance_abs_tokens and hi > self.balance_rel * lo

    def decide(self, state: ClusterState, call: Call, now_ms: int) -> int | None:
        live = state.live(now_ms)
        if not live:
            return None
        queued = {i: state.queued_tokens(i) for i in live}
        text = call.prefix or call.prompt
        if self.imbalanced(list(queued.values())):
            choice = min(live, key=lambda i: (queued[i], i))
        else:
            matched = {i: self._tree(i).match(text) for i in live}
            best = max(matched.values())
            if text and best / len(text) >= self.cache_threshold:
                choice = min((i for i in live if matched[i] == best), key=lambda i: (queued[i], i))
            else:
                choice = min(live, key=lambda i: (self._tree(i).size, queued[i], i))
        self._tick += 1
        tree = self._tree(choice)
        tree.insert(text, self._tick)
        if tree.size > self.max_tree_chars:  # evict to 90% so eviction runs rarely
            tree.evict(self.max_tree_chars * 9 // 10)
        return choice

    def on_instance_removed(self, state: ClusterState, instance: int) -> None:
        self.trees.pop(instance, None)
