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

import bisect
import hashlib
import heapq
import math
from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import ClassVar, get_args

from alto.config import PolicyName
from alto.schemas.messages import LMRequest, LMStatus

POLICY_NAMES: tuple[str, ...] = get_args(PolicyName)

CHARS_PER_TOKEN = 4.0  # prompt-size estimate before the engine has tokenized anything


@dataclass(frozen=True, slots=True)
class Call:
    """What a policy sees of one LM call."""

    call_id: str
    prompt: str  # the prompt template's name: the unit of prompt-aware allocation
    prefix: str  # the call's shared prompt prefix (system prompt, few-shot examples)
    prompt_tokens: int  # estimated size of the whole prompt
    max_tokens: int

    @classmethod
    def of(cls, request: LMRequest) -> Call:
        text = "".join(m.content for m in request.messages)
        return cls(
            request.lm_request_id,
            request.prompt_name,
            text[: request.prefix_chars],
            max(1, round(len(text) / CHARS_PER_TOKEN)),
            request.max_tokens,
        )


@dataclass(frozen=True, slots=True)
class Load:
    """One instance's load as it last reported it."""

    instance: int
    running: int = 0
    waiting: int = 0
    queued_prefill_tokens: int = 0
    queued_decode_tokens: int = 0
    kv_cache_usage: float = 0.0
    at_ms: int = 0

    @classmethod
    def of(cls, status: LMStatus) -> Load:
        return cls(
            status.instance,
            status.running,
            status.waiting,
            status.queued_prefill_tokens,
            status.queued_decode_tokens,
            status.kv_cache_usage,
            status.at_ms,
        )


@dataclass(frozen=True, slots=True)
class Completion:
    """A finished call, as measured by the instance that served it."""

    call_id: str
    instance: int
    prompt: str
    prompt_tokens: int
    cached_tokens: int
    output_tokens: int
    queue_s: float  # assigned -> first scheduled on the engine
    service_s: float  # first scheduled -> last token
    at_ms: int


@dataclass
class ClusterState:
    """What the scheduler knows: each instance's last report and the calls it has assigned
    that have not completed yet (`pending`)."""

    heartbeat_timeout_ms: int = 5_000
    loads: dict[int, Load] = field(default_factory=dict)
    pending: dict[int, dict[str, Call]] = field(default_factory=dict)
    # Last report time of each removed instance: a report from before its removal, read
    # late, must not bring it back (a restarted instance reports anew, with a later time).
    removed: dict[int, int] = field(default_factory=dict)

    def report(self, load: Load) -> None:
        if load.at_ms <= self.removed.get(load.instance, -1):
            return
        previous = self.loads.get(load.instance)
        if previous is None or load.at_ms >= previous.at_ms:
            self.loads[load.instance] = load
            self.pending.setdefault(load.instance, {})

    def live(self, now_ms: int) -> list[int]:
        return sorted(
            i for i, ld in self.loads.items() if now_ms - ld.at_ms <= self.heartbeat_timeout_ms
        )

    def forget(self, instance: int) -> dict[str, Call]:
        """Drop a dead instance; returns its pending calls (to be reassigned)."""
        last = self.loads.pop(instance, None)
        if last is not None:
            self.removed[instance] = max(last.at_ms, self.removed.get(instance, -1))
        return self.pending.pop(instance, {})

    def assigned(self, instance: int, call: Call) -> None:
        self.pending.setdefault(instance, {})[call.call_id] = call

    def completed(self, done: Completion) -> None:
        self.pending.get(done.instance, {}).pop(done.call_id, None)

    def queued_tokens(self, instance: int) -> int:
        """Work waiting on `instance`, in tokens: the larger of its own report and what this
        scheduler has assigned to it that has not completed (reports lag; other replicas
        assign too)."""
        ld = self.loads.get(instance, Load(instance))
        reported = ld.queued_prefill_tokens + ld.queued_decode_tokens
        mine = sum(c.prompt_tokens + c.max_tokens for c in self.pending.get(instance, {}).values())
        return max(reported, mine)

    def outstanding(self, instance: int) -> int:
        """Calls on `instance` (running + waiting), by the same rule as `queued_tokens`."""
        ld = self.loads.get(instance, Load(instance))
        return max(ld.running + ld.waiting, len(self.pending.get(instance, {})))

    def kv_usage(self, instance: int) -> float:
        ld = self.loads.get(instance)
        return ld.kv_cache_usage if ld else 0.0


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


class _Rate:
    """An exponentially decayed event rate (per second) with time constant `tau_ms`,
    corrected for the short history at the start."""

    __slots__ = ("first_ms", "last_ms", "level", "tau_ms")

    def __init__(self, tau_ms: float) -> None:
        self.tau_ms = tau_ms
        self.level = 0.0
        self.first_ms: int | None = None
        self.last_ms = 0

    def add(self, amount: float, at_ms: int) -> None:
        if self.first_ms is None:
            self.first_ms = self.last_ms = at_ms
        elif at_ms > self.last_ms:
            self.level *= math.exp(-(at_ms - self.last_ms) / self.tau_ms)
            self.last_ms = at_ms
        self.level += amount

    def per_s(self, now_ms: int) -> float:
        if self.first_ms is None:
            return 0.0
        level = self.level * math.exp(-max(0, now_ms - self.last_ms) / self.tau_ms)
        span = max(now_ms, self.last_ms) - self.first_ms
        window_ms = max(1000.0, self.tau_ms * (1.0 - math.exp(-span / self.tau_ms)))
        return level * 1000.0 / window_ms


class _Capacity:
    """Tokens per second an instance completes while busy: decayed sums of its completed
    calls' tokens and of the busy time each took (from the later of the previous
    completion and the call's assignment, to its completion)."""

    __slots__ = ("busy_s", "last_ms", "samples", "tokens")
    DECAY = 0.99  # about 100 completions: continuous batching finishes calls in bursts
    MIN_SAMPLES = 4

    def __init__(self) -> None:
        self.tokens = 0.0
        self.busy_s = 0.0
        self.samples = 0
        self.last_ms: int | None = None

    def add(self, tokens: int, assigned_ms: int, done_ms: int) -> None:
        start = assigned_ms if self.last_ms is None else max(self.last_ms, assigned_ms)
        self.tokens = self.tokens * self.DECAY + tokens
        self.busy_s = self.busy_s * self.DECAY + max(0, done_ms - start) / 1000.0
        self.samples += 1
        self.last_ms = done_ms if self.last_ms is None else max(self.last_ms, done_ms)

    def per_s(self) -> float | None:
        if self.samples < self.MIN_SAMPLES or self.busy_s <= 0.0:
            return None
        return self.tokens / self.busy_s


class _Level:
    """A level sampled at irregular times, smoothed with time constant `tau_ms`."""

    __slots__ = ("at_ms", "tau_ms", "value")

    def __init__(self, tau_ms: float) -> None:
        self.tau_ms = tau_ms
        self.value = 0.0
        self.at_ms: int | None = None

    def update(self, x: float, now_ms: int) -> None:
        if self.at_ms is None:
            self.value, self.at_ms = x, now_ms
        elif now_ms > self.at_ms:
            self.value += (1.0 - math.exp(-(now_ms - self.at_ms) / self.tau_ms)) * (x - self.value)
            self.at_ms = now_ms


class _Ewma:
    __slots__ = ("alpha", "value")

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha
        self.value: float | None = None

    def add(self, x: float) -> None:
        self.value = x if self.value is None else self.value + self.alpha * (x - self.value)

    def get(self, default: float = 0.0) -> float:
        return default if self.value is None else self.value


@dataclass
class PromptStats:
    """What prompt-aware placement knows of one prompt."""

    members: list[int]  # its instances, in the order they were added
    arrivals: _Rate
    call_tokens: _Ewma  # prompt_tokens + max_tokens, from the calls (before completions)
    prefill_tokens: _Ewma  # from completions: prompt_tokens - cached_tokens
    output_tokens: _Ewma
    service_s: _Ewma
    queue_s: _Ewma
    prefix_tokens: _Ewma  # from completions that hit: cached_tokens (what a hit saves)
    hit_prefill_tokens: _Ewma  # from completions that hit: prompt_tokens - cached_tokens
    completions: int = 0
    adjusted_ms: int | None = None
    cool_since_ms: int | None = None
    decode_weight: float = 1.0  # an output token's cost in prefill tokens

    def cost_tokens(self) -> float:
        """Estimated tokens one call of this prompt costs an instance that holds its prefix
        (what it costs once placed): its prefill when it hits, else any completion's, then
        its output; before any completion, its calls' estimate."""
        if self.completions:
            prefill = self.hit_prefill_tokens.get(self.prefill_tokens.get())
            return prefill + self.decode_weight * self.output_tokens.get()
        return self.call_tokens.get()

    def demand(self, now_ms: int) -> float:
        """Tokens per second this prompt asks of the cluster."""
        return self.arrivals.per_s(now_ms) * self.cost_tokens()


class PromptAware(SchedulingPolicy):
    """Prompt-aware placement (ALTO section 6.2): GPU capacity allocated to prompts by their
    measured resource use, while each prompt stays on few instances (prefix-cache reuse).

    Estimates, all online and deterministic (time is `now_ms` or a completion's `at_ms`):
    - per prompt, the cost of one call in tokens: EWMAs (`ewma_alpha`) over its
      completions of the prefill (prompt - cached tokens) and output tokens; before any
      completion, of its calls' prompt + max tokens. Also EWMAs of `queue_s`, `service_s`,
      and of the cached tokens of its calls that hit (its prefix: what a hit saves; before
      any hit, the call's prefix at `CHARS_PER_TOKEN`).
    - per prompt, its arrival rate (decayed over `rate_tau_s`), and its demand = rate x
      cost (tokens/s). Its fair share of the cluster is ceil(live x demand / total demand).
    - per instance, the prompts whose prefixes it likely holds: those sent there lately,
      least recently sent forgotten beyond `cache_tokens` of prefix (an approximation of
      the engine's prefix cache, per prompt, as cache_aware keeps one per prefix).
    - the expected work of a call on an instance, in tokens: the tokens it will prefill
      (its prompt less its prefix where the instance holds the prefix, the whole prompt
      where it does not) plus its expected output (learned, at most `max_tokens`).
    - per instance, its throughput while busy (work tokens/s, from completions: uncached
      prompt + output tokens, an output token weighted `decode_weight`; until measured,
      its measured peers' mean, or `default_tokens_per_s`), its queued work (the
      larger of its report and the expected work of the calls this scheduler assigned it
      that have not completed), and its wait = queued work / throughput, smoothed over
      `smooth_s`.

    Each prompt owns a set of instances, at first one: the live instance with the least
    pressure (queued work, plus the demand already placed on it over
    `placement_horizon_s`, plus the prompt's prefix where it does not hold it, over its
    throughput). A call goes to the member where it would finish its prefill soonest
    (wait + its own expected work there). At most once per `adjust_interval_ms` per prompt
    the set is revised:
    - The prompt's delay is the larger of its measured queueing time and its best
      member's smoothed wait. It is *hot* when the delay exceeds its threshold and some
      non-member waits less than `grow_ratio` times its best member. The threshold is
      relative: `hot_calls` times the time one of its own calls takes on its best member
      (cost / throughput), and at least `queue_target_s`. So a prompt is hot when the
      work queued ahead of it is several of its own calls, on any cluster speed (and on
      engines whose `queue_s` includes the prefill, as vLLM's does).
    - Whether hot or not (every instance may be busy), when its delay exceeds the
      threshold and its demand alone needs more instances than it has (demand over
      `max_utilization` x its members' mean throughput), it gains the least-pressure
      non-member; its set never contracts below that number.
    - Hot, below its fair share or itself the larger part of the demand on its most
      loaded member: it gains the least-pressure non-member (replication).
    - Hot otherwise (others' demand is the problem): it moves off its most loaded member
      to the least-pressure non-member; at most one prompt leaves an instance per
      interval, so a hot instance sheds its small prompts one at a time.
    - Not hot for `cool_ms`, with more than one member, and either cool (delay under
      `cool_fraction` of the threshold) or above `share_slack` times its fair share: it
      drops its last added member (contraction), and the `cool_ms` wait starts again.
    The gap between the hot and cool thresholds, the `cool_ms` wait and the interval keep
    sets from flapping. Whatever the set, a call spills to the best non-member (without
    joining the set) when even its best member's wait exceeds `spill_ratio` times that
    non-member's wait plus `spill_slack_s`, both counting the call's own work on each
    instance: a non-member that does not hold the prefix is charged the prefill of the
    whole prompt (the cache miss), so spills happen only when they still win
    (stickiness never starves a prompt, and never trades a hit for a small gain).

    `table()` is prompt -> instances; `load_table()` resumes from one (members that are
    not live are skipped when deciding, and dropped by `on_instance_removed`)."""

    name = "prompt_aware"
    MAX_INFLIGHT = 100_000  # calls remembered between decide() and their completion

    def __init__(
        self,
        queue_target_s: float = 0.5,
        hot_calls: float = 2.0,
        default_tokens_per_s: float = 2000.0,
        rate_tau_s: float = 10.0,
        smooth_s: float = 2.0,
        ewma_alpha: float = 0.2,
        adjust_interval_ms: int = 1000,
        grow_ratio: float = 0.5,
        cool_fraction: float = 0.25,
        cool_ms: int = 10_000,
        share_slack: float = 1.5,
        spill_ratio: float = 2.0,
        spill_slack_s: float = 1.0,
        placement_horizon_s: float = 1.0,
        cache_tokens: int = 16_384,
        decode_weight: float = 1.0,
        max_utilization: float = 0.75,
    ) -> None:
        self.max_utilization = max_utilization
        self.decode_weight = decode_weight
        self.queue_target_s = queue_target_s
        self.hot_calls = hot_calls
        self.default_tokens_per_s = default_tokens_per_s
        self.rate_tau_ms = rate_tau_s * 1000.0
        self.smooth_ms = smooth_s * 1000.0
        self.ewma_alpha = ewma_alpha
        self.adjust_interval_ms = adjust_interval_ms
        self.grow_ratio = grow_ratio
        self.cool_fraction = cool_fraction
        self.cool_ms = cool_ms
        self.share_slack = share_slack
        self.spill_ratio = spill_ratio
        self.spill_slack_s = spill_slack_s
        self.placement_horizon_s = placement_horizon_s
        self.cache_tokens = cache_tokens
        self.prompts: dict[str, PromptStats] = {}
        self.spills = 0  # calls sent outside their prompt's set
        self._capacity: dict[int, _Capacity] = {}
        self._wait: dict[int, _Level] = {}  # smoothed wait per instance, seconds
        # call -> (instance, expected work tokens, prompt, decided at)
        self._inflight: dict[str, tuple[int, int, str, int]] = {}
        self._left_ms: dict[int, int] = {}  # instance -> when a prompt last moved off it
        # instance -> prompt -> prefix tokens, least recently sent first
        self._held: dict[int, OrderedDict[str, int]] = {}

    # -- estimates -------------------------------------------------------------------

    def _stats(self, prompt: str) -> PromptStats:
        stats = self.prompts.get(prompt)
        if stats is None:
            a = self.ewma_alpha
            stats = PromptStats(
                [],
                _Rate(self.rate_tau_ms),
                _Ewma(a),
                _Ewma(a),
                _Ewma(a),
                _Ewma(a),
                _Ewma(a),
                _Ewma(a),
                _Ewma(a),
                decode_weight=self.decode_weight,
            )
            self.prompts[prompt] = stats
        return stats

    def throughput(self, instance: int) -> float:
        """Work tokens per second `instance` serves while busy; until it is measured, the
        mean of the instances that are (a new instance is taken to be like its peers), and
        `default_tokens_per_s` while none is."""
        capacity = self._capacity.get(instance)
        measured = capacity.per_s() if capacity else None
        if measured is not None:
            return measured
        peers = [r for c in self._capacity.values() if (r := c.per_s()) is not None]
        return sum(peers) / len(peers) if peers else self.default_tokens_per_s

    def holds(self, instance: int, prompt: str) -> bool:
        """Whether `instance` likely holds `prompt`'s prefix (it was sent there lately)."""
        return prompt in self._held.get(instance, ())

    def prefix_tokens(self, prompt: str, call: Call) -> int:
        """The prompt's prefix in tokens: learned from hits; before any, the call's."""
        stats = self.prompts.get(prompt)
        if stats is not None and stats.prefix_tokens.value is not None:
            return min(call.prompt_tokens, round(stats.prefix_tokens.value))
        return min(call.prompt_tokens, round(len(call.prefix) / CHARS_PER_TOKEN))

    def work_tokens(self, instance: int, prompt: str, call: Call) -> int:
        """Expected work of `call` on `instance`: tokens to prefill (less the prefix where
        the instance holds it) plus expected output tokens."""
        prefill = call.prompt_tokens
        if self.holds(instance, prompt):
            prefill -= self.prefix_tokens(prompt, call)
        stats = self.prompts.get(prompt)
        output = float(call.max_tokens)
        if stats is not None and stats.completions:
            output = min(output, stats.output_tokens.get())
        return max(1, prefill + round(self.decode_weight * output))

    def queued_work(self, state: ClusterState, instance: int) -> int:
        """Work waiting on `instance`, in tokens: the larger of its report (uncached prefill
        + decode tokens) and the expected work of the calls assigned to it here that have
        not completed (`state.queued_tokens` counts those at prompt + max tokens)."""
        ld = state.loads.get(instance, Load(instance))
        reported = ld.queued_prefill_tokens + round(self.decode_weight * ld.queued_decode_tokens)
        mine = 0
        for call_id, call in state.pending.get(instance, {}).items():
            known = self._inflight.get(call_id)
            if known is None:
                mine += call.prompt_tokens + round(self.decode_weight * call.max_tokens)
            else:
                mine += known[1]
        return max(reported, mine)

    def wait_s(self, state: ClusterState, instance: int) -> float:
        """Seconds to serve what is queued on `instance` now."""
        return self.queued_work(state, instance) / self.throughput(instance)

    def smoothed_wait_s(self, instance: int) -> float:
        level = self._wait.get(instance)
        return level.value if level else 0.0

    def hot_threshold_s(self, prompt: str, instance: int) -> float:
        """Queueing beyond which `prompt` is hot: `hot_calls` of its own calls on
        `instance` (at least `queue_target_s`)."""
        call_s = self.prompts[prompt].cost_tokens() / self.throughput(instance)
        return max(self.queue_target_s, self.hot_calls * call_s)

    def share(self, prompt: str, n_live: int, now_ms: int) -> float:
        """The prompt's fair number of instances, unrounded: live x its demand share."""
        total = sum(s.demand(now_ms) for s in self.prompts.values())
        if total <= 0.0:
            return 0.0
        return n_live * self.prompts[prompt].demand(now_ms) / total

    def _placed(self, live: set[int], now_ms: int) -> dict[int, float]:
        """Demand (tokens/s) already placed on each live instance."""
        placed = dict.fromkeys(live, 0.0)
        for stats in self.prompts.values():
            members = [m for m in stats.members if m in live]
            for m in members:
                placed[m] += stats.demand(now_ms) / len(members)
        return placed

    def _place(
        self,
        state: ClusterState,
        prompt: str,
        call: Call,
        candidates: list[int],
        live: set[int],
        now_ms: int,
    ) -> int:
        placed = self._placed(live, now_ms)
        miss = self.prefix_tokens(prompt, call)

        def pressure(i: int) -> tuple[float, float, int]:
            work = self.queued_work(state, i) + placed[i] * self.placement_horizon_s
            if not self.holds(i, prompt):
                work += miss
            return work / self.throughput(i), state.kv_usage(i), i

        return min(candidates, key=pressure)

    def _sent(self, instance: int, prompt: str, call: Call) -> None:
        """Record that `instance` now holds `prompt`'s prefix (most recently used)."""
        held = self._held.setdefault(instance, OrderedDict())
        held.pop(prompt, None)
        held[prompt] = self.prefix_tokens(prompt, call)
        total = sum(held.values())
        while total > self.cache_tokens and len(held) > 1:
            _, tokens = held.popitem(last=False)
            total -= tokens

    # -- decisions -------------------------------------------------------------------

    def _adjust(
        self, state: ClusterState, prompt: str, call: Call, live: list[int], now_ms: int
    ) -> None:
        stats = self.prompts[prompt]
        if stats.adjusted_ms is not None and now_ms - stats.adjusted_ms < self.adjust_interval_ms:
            return
        stats.adjusted_ms = now_ms
        live_set = set(live)
        members = [m for m in stats.members if m in live_set]
        outside = [i for i in live if i not in members]
        wait = {i: self.smoothed_wait_s(i) for i in live}
        best_in = min(members, key=lambda m: (wait[m], m))
        w_in = wait[best_in]
        w_out = min((wait[i] for i in outside), default=math.inf)
        delay = max(stats.queue_s.get(), w_in)
        threshold = self.hot_threshold_s(prompt, best_in)
        share = self.share(prompt, len(live), now_ms)
        fair = max(1, min(len(live), math.ceil(share - 1e-9)))
        # Instances its demand needs on its own, at `max_utilization` of their throughput.
        capacity = self.max_utilization * sum(self.throughput(m) for m in members) / len(members)
        needed = min(len(live), math.ceil(stats.demand(now_ms) / capacity - 1e-9))
        if outside and len(members) < needed and delay > threshold:
            # More than its set can serve, and it queues: replicate (even when every
            # instance is busy, where the hot rule below would wait for an idle one).
            stats.cool_since_ms = None
            stats.members.append(self._place(state, prompt, call, outside, live_set, now_ms))
            return
        if delay > threshold and w_out < self.grow_ratio * w_in:  # hot
            stats.cool_since_ms = None
            worst = max(members, key=lambda m: (wait[m], m))
            placed = self._placed(live_set, now_ms)
            mine = stats.demand(now_ms) / len(members)
            if len(members) < fair or 2.0 * mine >= placed[worst]:
                # Its own demand overloads its set: replicate.
                stats.members.append(self._place(state, prompt, call, outside, live_set, now_ms))
            elif now_ms - self._left_ms.get(worst, now_ms - self.adjust_interval_ms) >= (
                self.adjust_interval_ms
            ):  # others' demand does: move off the most loaded member
                self._left_ms[worst] = now_ms
                stats.members.remove(worst)
                stats.members.append(self._place(state, prompt, call, outside, live_set, now_ms))
            return
        if stats.cool_since_ms is None:
            stats.cool_since_ms = now_ms
        if len(members) <= max(1, needed) or now_ms - stats.cool_since_ms < self.cool_ms:
            return
        if delay < self.cool_fraction * threshold or len(members) > math.ceil(
            share * self.share_slack - 1e-9
        ):  # not hot for a while, and cool or above its share: drop the last added member
            stats.members.remove(members[-1])
            stats.cool_since_ms = now_ms

    def decide(self, state: ClusterState, call: Call, now_ms: int) -> int | None:
        live = state.live(now_ms)
        if not live:
            return None
        wait = {i: self.wait_s(state, i) for i in live}
        for i in live:
            self._wait.setdefault(i, _Level(self.smooth_ms)).update(wait[i], now_ms)
        prompt = call.prompt or call.prefix
        stats = self._stats(prompt)
        stats.arrivals.add(1.0, now_ms)
        stats.call_tokens.add(  # as if it hits (the prefix cached where it is placed)
            call.prompt_tokens
            - self.prefix_tokens(prompt, call)
            + self.decode_weight * call.max_tokens
        )
        live_set = set(live)
        if not live_set.intersection(stats.members):
            stats.members.append(self._place(state, prompt, call, live, live_set, now_ms))
            stats.adjusted_ms = now_ms
        else:
            self._adjust(state, prompt, call, live, now_ms)
        members = [m for m in stats.members if m in live_set]

        def finish_s(i: int) -> float:  # its wait plus this call's own work there
            return wait[i] + self.work_tokens(i, prompt, call) / self.throughput(i)

        choice = min(members, key=lambda i: (finish_s(i), state.kv_usage(i), i))
        outside = [i for i in live if i not in members]
        if outside:
            best = min(outside, key=lambda i: (finish_s(i), i))
            if finish_s(choice) > self.spill_ratio * finish_s(best) + self.spill_slack_s:
                choice = best
                self.spills += 1
        work = self.work_tokens(choice, prompt, call)  # before it is recorded as held
        self._sent(choice, prompt, call)
        if len(self._inflight) >= self.MAX_INFLIGHT:  # completions that never came
            del self._inflight[next(iter(self._inflight))]
        self._inflight[call.call_id] = (choice, work, prompt, now_ms)
        return choice

    def on_completion(self, state: ClusterState, done: Completion) -> None:
        began_ms = done.at_ms - round((done.queue_s + done.service_s) * 1000)
        _, _, prompt, decided_ms = self._inflight.pop(
            done.call_id, (done.instance, 0, done.prompt, began_ms)
        )
        work = max(0, done.prompt_tokens - done.cached_tokens) + round(
            self.decode_weight * done.output_tokens
        )
        self._capacity.setdefault(done.instance, _Capacity()).add(work, decided_ms, done.at_ms)
        stats = self.prompts.get(prompt)
        if stats is None:
            return
        stats.prefill_tokens.add(max(0, done.prompt_tokens - done.cached_tokens))
        stats.output_tokens.add(done.output_tokens)
        stats.service_s.add(done.service_s)
        stats.queue_s.add(done.queue_s)
        if done.cached_tokens > 0:
            stats.prefix_tokens.add(done.cached_tokens)
            stats.hit_prefill_tokens.add(max(0, done.prompt_tokens - done.cached_tokens))
        stats.completions += 1

    def on_instance_removed(self, state: ClusterState, instance: int) -> None:
        for stats in self.prompts.values():
            if instance in stats.members:
                stats.members.remove(instance)
        self._capacity.pop(instance, None)
        self._wait.pop(instance, None)
        self._left_ms.pop(instance, None)
        self._held.pop(instance, None)
        self._inflight = {c: v for c, v in self._inflight.items() if v[0] != instance}

    def table(self) -> dict[str, tuple[int, ...]]:
        return {p: tuple(s.members) for p, s in self.prompts.items() if s.members}

    def load_table(self, table: dict[str, tuple[int, ...]]) -> None:
        for prompt, instances in table.items():
            self._stats(prompt).members = list(dict.fromkeys(instances))


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
