"""`prompt_aware`: ALTO's prompt-aware scheduling (section 6.2 of the paper; see
`alto.scheduler.policy`)."""

from __future__ import annotations

import math
from collections import OrderedDict

from alto.scheduler.base import SchedulingPolicy
from alto.scheduler.estimates import Capacity, Ewma, Level, PromptStats, Rate
from alto.scheduler.state import CHARS_PER_TOKEN, Call, ClusterState, Completion, Load


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
        self._capacity: dict[int, Capacity] = {}
        self._wait: dict[int, Level] = {}  # smoothed wait per instance, seconds
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
                Rate(self.rate_tau_ms),
                Ewma(a),
                Ewma(a),
                Ewma(a),
                Ewma(a),
                Ewma(a),
                Ewma(a),
                Ewma(a),
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

    def _sent(self, instance: int, prompt: str, prefix: int) -> None:
        """Record that `instance` now holds `prompt`'s prefix, `prefix` tokens long (most
        recently used)."""
        held = self._held.setdefault(instance, OrderedDict())
        held.pop(prompt, None)
        held[prompt] = prefix
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
            self._wait.setdefault(i, Level(self.smooth_ms)).update(wait[i], now_ms)
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
        self._sent(choice, prompt, self.prefix_tokens(prompt, call))
        if len(self._inflight) >= self.MAX_INFLIGHT:  # completions that never came
            del self._inflight[next(iter(self._inflight))]
        self._inflight[call.call_id] = (choice, work, prompt, now_ms)
        return choice

    def on_completion(self, state: ClusterState, done: Completion) -> None:
        mine = done.call_id in self._inflight
        began_ms = done.at_ms - round((done.queue_s + done.service_s) * 1000)
        _, _, prompt, decided_ms = self._inflight.pop(
            done.call_id, (done.instance, 0, done.prompt, began_ms)
        )
        work = max(0, done.prompt_tokens - done.cached_tokens) + round(
            self.decode_weight * done.output_tokens
        )
        self._capacity.setdefault(done.instance, Capacity()).add(work, decided_ms, done.at_ms)
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
        if not mine:  # another decider's call: its instance now holds the prefix too
            self._sent(done.instance, prompt, round(stats.prefix_tokens.get(done.cached_tokens)))

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
