"""Scheduling policies on plain data (no broker).

Most tests drive a policy with a small virtual-time cluster (`_simulate`): N instances,
each serving its queue first-in first-out at a fixed number of tokens per second, reusing
the prefix of a prompt it served recently (prefix-cache hit), reporting its queued tokens
every 100 ms and its completions as they happen. Workloads are seeded, so every run is
the same.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections import OrderedDict, defaultdict, deque
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest

from alto.scheduler.policy import (
    POLICY_NAMES,
    CacheAware,
    Call,
    ClusterState,
    Completion,
    Load,
    PrefixTree,
    PromptAware,
    SchedulingPolicy,
    make_policy,
)

REPO = Path(__file__).resolve().parents[2]
TICK_MS = 10
REPORT_MS = 100
HEARTBEAT_MS = 500


def _status(instance: int, at_ms: int) -> Load:
    return Load(instance, at_ms=at_ms)


def _request(i: int) -> Call:
    return Call(f"c{i}", "claims", "You list claims.", 40, 16)


# -- the virtual cluster -------------------------------------------------------------------


@dataclass
class _Job:
    call: Call
    assigned_ms: int
    prefill: float  # tokens left to prefill (the uncached part of the prompt)
    decode: float  # tokens left to generate
    cached: int
    started_ms: int | None = None


@dataclass
class _Server:
    tokens_per_s: float
    queue: deque[_Job] = field(default_factory=deque)
    prefixes: OrderedDict[str, None] = field(default_factory=OrderedDict)  # its prefix cache
    alive: bool = True

    def queued(self) -> float:
        return sum(j.prefill + j.decode for j in self.queue)


@dataclass
class _Run:
    policy: SchedulingPolicy
    sent_tokens: dict[int, int]  # prompt + max tokens of the calls sent to each instance
    placed: dict[str, list[int]]  # prompt -> the instance of each of its calls, in order
    decisions: list[tuple[int, int | None]]  # (now_ms, choice)
    queued: list[list[float]]  # every 100 ms: each instance's queued tokens
    tables: list[dict[str, tuple[int, ...]]]  # every second: policy.table()
    latency_s: list[float]

    def mean_queued(self) -> list[float]:
        return [sum(col) / len(col) for col in zip(*self.queued, strict=True)]

    def sent_share(self, instance: int) -> float:
        return self.sent_tokens.get(instance, 0) / sum(self.sent_tokens.values())


Arrivals = tuple[tuple[int, Call], ...]


def _simulate(
    policy: SchedulingPolicy,
    arrivals: Arrivals,
    speeds: tuple[float, ...],
    until_ms: int,
    kill: tuple[int, int] | None = None,  # (at_ms, instance): it stops serving and reporting
) -> _Run:
    state = ClusterState(heartbeat_timeout_ms=HEARTBEAT_MS)
    servers = {i: _Server(s) for i, s in enumerate(speeds)}
    run = _Run(policy, defaultdict(int), defaultdict(list), [], [], [], [])
    todo = deque(arrivals)
    removed = False

    def place(call: Call, since_ms: int, now_ms: int) -> None:
        choice = policy.decide(state, call, now_ms)
        run.decisions.append((now_ms, choice))
        assert choice is not None
        state.assigned(choice, call)
        run.sent_tokens[choice] += call.prompt_tokens + call.max_tokens
        run.placed[call.prompt].append(choice)
        server = servers[choice]
        cached = len(call.prefix) // 4 if call.prefix in server.prefixes else 0
        server.prefixes[call.prefix] = None
        server.prefixes.move_to_end(call.prefix)
        if len(server.prefixes) > 6:
            server.prefixes.popitem(last=False)
        server.queue.append(
            _Job(call, since_ms, call.prompt_tokens - cached, call.max_tokens, cached)
        )

    for i in servers:
        state.report(Load(i, at_ms=0))
    now = 0
    while now < until_ms:
        if kill and now >= kill[0]:
            servers[kill[1]].alive = False
            if not removed and now >= kill[0] + HEARTBEAT_MS + REPORT_MS:
                removed = True  # what the agent does once the instance stops reporting
                orphans = state.forget(kill[1])
                policy.on_instance_removed(state, kill[1])
                servers[kill[1]].queue.clear()
                for call in orphans.values():
                    place(call, now, now)
        while todo and todo[0][0] <= now:
            at, call = todo.popleft()
            place(call, at, now)
        end = now + TICK_MS
        for i, server in servers.items():
            budget = server.tokens_per_s * TICK_MS / 1000
            while server.alive and server.queue and budget > 0:
                job = server.queue[0]
                if job.started_ms is None:
                    job.started_ms = now
                step = min(budget, job.prefill)
                job.prefill -= step
                budget -= step
                step = min(budget, job.decode)
                job.decode -= step
                budget -= step
                if job.prefill + job.decode > 1e-9:
                    break
                server.queue.popleft()
                c = job.call
                done = Completion(
                    c.call_id,
                    i,
                    c.prompt,
                    c.prompt_tokens,
                    job.cached,
                    c.max_tokens,
                    (job.started_ms - job.assigned_ms) / 1000,
                    (end - job.started_ms) / 1000,
                    end,
                )
                state.completed(done)
                policy.on_completion(state, done)
                run.latency_s.append((end - job.assigned_ms) / 1000)
        now = end
        if now % REPORT_MS == 0:
            run.queued.append([s.queued() for s in servers.values()])
            for i, s in servers.items():
                if s.alive:
                    prefill = round(sum(j.prefill for j in s.queue))
                    decode = round(sum(j.decode for j in s.queue))
                    running = min(1, len(s.queue))
                    kv = min(1.0, (prefill + decode) / 50_000)
                    state.report(Load(i, running, len(s.queue) - running, prefill, decode, kv, now))
        if now % 1000 == 0:
            run.tables.append(policy.table())
    return run


def _call(i: int, prompt: int) -> Call:
    """Call `i` of prompt `prompt`: prompts differ in size; a prompt's prefix is fixed."""
    prefix = f"Prompt {prompt}. Instructions and worked examples. " * 4
    return Call(f"c{i}", f"p{prompt}", prefix, 440 - 40 * (prompt % 4), 100 - 20 * (prompt % 3))


@cache
def _zipf_arrivals(
    rate_per_s: float, seconds: int, prompts: int = 20, s: float = 1.1, seed: int = 11
) -> Arrivals:
    """Poisson arrivals; prompt k (0-based) is picked with probability ~ 1 / (k+1)^s."""
    rng = random.Random(seed)
    weights = [1 / (k + 1) ** s for k in range(prompts)]
    out: list[tuple[int, Call]] = []
    t = 0.0
    while True:
        t += rng.expovariate(rate_per_s) * 1000
        if t >= seconds * 1000:
            return tuple(out)
        out.append((int(t), _call(len(out), rng.choices(range(prompts), weights)[0])))


EQUAL = (2000.0, 2000.0, 2000.0, 2000.0)
ONE_SLOW = (2000.0, 2000.0, 2000.0, 500.0)  # instance 3 serves 4x slower
ZIPF_RATE = 13.0  # calls/s: ~80% of EQUAL's capacity (~95% of ONE_SLOW's); p0 needs > 1
ZIPF_S = 60


@cache
def _zipf_run(name: str, speeds: tuple[float, ...] = EQUAL) -> _Run:
    return _simulate(make_policy(name), _zipf_arrivals(ZIPF_RATE, ZIPF_S), speeds, 62_000)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


# -- interface -----------------------------------------------------------------------------


def test_round_robin_spreads_over_live_instances_only() -> None:
    state = ClusterState(heartbeat_timeout_ms=1000)
    policy = make_policy("round_robin")
    assert policy.decide(state, _request(0), now_ms=0) is None
    for i in (0, 1, 2):
        state.report(_status(i, at_ms=10_000))
    state.report(_status(1, at_ms=5_000))  # a stale report does not win
    picks = [policy.decide(state, _request(i), now_ms=10_500) for i in range(6)]
    assert sorted(picks) == [0, 0, 1, 1, 2, 2]
    # Instance 2 stops reporting: only 0 and 1 are chosen.
    for i in (0, 1):
        state.report(_status(i, at_ms=12_000))
    assert {policy.decide(state, _request(i), now_ms=12_100) for i in range(4)} == {0, 1}


def test_make_policy_builds_every_named_policy_and_rejects_unknown_names() -> None:
    assert set(POLICY_NAMES) == {
        "round_robin",
        "least_loaded",
        "prefix_hash",
        "cache_aware",
        "prompt_aware",
    }
    for name in POLICY_NAMES:
        policy = make_policy(name)
        assert isinstance(policy, SchedulingPolicy)
        assert policy.name == name
        assert make_policy(name) is not policy  # a fresh policy each time
        state = ClusterState(heartbeat_timeout_ms=1000)
        assert policy.decide(state, _request(0), now_ms=0) is None  # nothing reported
        state.report(_status(3, at_ms=0))
        assert policy.decide(state, _request(1), now_ms=500) == 3
        assert policy.decide(state, _request(2), now_ms=5000) is None  # 3 went silent
    with pytest.raises(ValueError, match="unknown scheduling policy 'fastest'"):
        make_policy("fastest")


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_every_policy_is_deterministic(name: str) -> None:
    arrivals = _zipf_arrivals(ZIPF_RATE, 10)
    first = _simulate(make_policy(name), arrivals, ONE_SLOW, 10_100)
    second = _simulate(make_policy(name), arrivals, ONE_SLOW, 10_100)
    assert first.decisions == second.decisions
    assert len(first.decisions) == len(arrivals)


# -- least_loaded --------------------------------------------------------------------------


def test_least_loaded_counts_tokens_not_calls_then_breaks_ties_by_kv_then_id() -> None:
    state = ClusterState()
    policy = make_policy("least_loaded")
    for i in range(3):
        state.report(Load(i, at_ms=0))
    state.assigned(0, Call("big", "p", "", 6000, 500))  # one long call
    for k in range(3):
        state.assigned(1, Call(f"small{k}", "p", "", 100, 20))  # three short ones
        state.assigned(2, Call(f"other{k}", "p", "", 100, 20))
    state.report(Load(1, kv_cache_usage=0.6, at_ms=10))
    state.report(Load(2, kv_cache_usage=0.2, at_ms=10))
    assert policy.decide(state, _request(0), now_ms=20) == 2  # 1 and 2 tie on tokens
    state.report(Load(2, kv_cache_usage=0.6, at_ms=20))
    assert policy.decide(state, _request(1), now_ms=20) == 1  # full tie: lower id
    state.report(Load(1, queued_prefill_tokens=9000, kv_cache_usage=0.6, at_ms=30))
    assert policy.decide(state, _request(2), now_ms=30) == 2  # its report counts too


# -- prefix_hash ---------------------------------------------------------------------------


def _key_owners(keys: list[str], instances: list[int], now_ms: int = 0) -> dict[str, int]:
    state = ClusterState()
    for i in instances:
        state.report(Load(i, at_ms=now_ms))
    policy = make_policy("prefix_hash")
    owners = {}
    for k in keys:
        choice = policy.decide(state, Call(k, "p", k, 10, 10), now_ms)
        assert choice is not None
        owners[k] = choice
    return owners


def test_prefix_hash_moves_only_the_keys_of_an_instance_that_leaves_or_joins() -> None:
    keys = [f"system prompt {k}" for k in range(600)]
    before = _key_owners(keys, [0, 1, 2, 3])
    counts = [list(before.values()).count(i) for i in range(4)]
    assert min(counts) >= 0.1 * len(keys), counts  # virtual nodes spread the keys
    after = _key_owners(keys, [0, 1, 3])
    moved = {k for k in keys if before[k] != after[k]}
    assert moved == {k for k in keys if before[k] == 2}
    assert len({after[k] for k in moved}) >= 2  # its keys spread over the survivors
    joined = _key_owners(keys, [0, 1, 2, 3, 4])
    moved = {k for k in keys if before[k] != joined[k]}
    assert moved and all(joined[k] == 4 for k in moved)
    assert len(moved) < 0.4 * len(keys)


def test_prefix_hash_is_stable_across_processes() -> None:
    script = (
        "from alto.scheduler.policy import Call, ClusterState, Load, make_policy\n"
        "s = ClusterState()\n"
        "[s.report(Load(i)) for i in range(5)]\n"
        "p = make_policy('prefix_hash')\n"
        "print([p.decide(s, Call('c', 'p', f'prefix {k}', 1, 1), 0) for k in range(40)])\n"
    )
    outputs = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run(
            [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        outputs.add(done.stdout)
    assert len(outputs) == 1
    assert len(set(eval(outputs.pop()))) >= 3  # noqa: S307 (our own list literal)


def test_prefix_hash_falls_back_to_the_prompt_name_without_a_prefix() -> None:
    state = ClusterState()
    for i in range(4):
        state.report(Load(i))
    policy = make_policy("prefix_hash")
    picks = {policy.decide(state, Call(f"c{k}", f"prompt{k % 8}", "", 1, 1), 0) for k in range(8)}
    assert len(picks) >= 2  # different prompt names spread
    again = {policy.decide(state, Call(f"d{k}", "prompt3", "", 1, 1), 0) for k in range(5)}
    assert len(again) == 1


# -- cache_aware ---------------------------------------------------------------------------


def test_prefix_tree_matches_splits_and_evicts_least_recently_used() -> None:
    tree = PrefixTree()
    tree.insert("hello world", tick=1)
    tree.insert("hello there", tick=2)
    assert tree.size == len("hello ") + len("world") + len("there")
    assert tree.match("hello wor") == 9
    assert tree.match("help") == 3
    assert tree.match("hello world, again") == 11
    assert tree.match("") == 0
    tree.insert("goodbye", tick=3)
    tree.insert("hello world", tick=4)  # touch: "there" is now the oldest leaf
    tree.evict(budget=tree.size - 1)
    assert tree.match("hello there") == len("hello ")
    assert tree.match("hello world") == 11
    assert tree.match("goodbye") == 7
    tree.evict(budget=0)
    assert tree.size == 0
    assert tree.match("hello") == 0


def test_cache_aware_follows_the_longest_prefix_until_the_cluster_is_imbalanced() -> None:
    policy = CacheAware()
    state = ClusterState()
    for i in range(3):
        state.report(Load(i, at_ms=0))
    sys_a, sys_b = "A" * 400, "B" * 400
    first = policy.decide(state, Call("a0", "a", sys_a, 100, 10), 0)
    second = policy.decide(state, Call("b0", "b", sys_b, 100, 10), 0)
    assert first is not None and second is not None
    assert second != first  # a new prefix goes to the instance with the smallest tree
    # Moderately more work on `first`: still balanced, so its prefix stays there.
    state.report(Load(first, queued_prefill_tokens=3000, at_ms=10))
    assert policy.decide(state, Call("a1", "a", sys_a + "more text", 100, 10), 10) == first
    # A weak match (less than half of the prefix) is no reason to go there.
    weak = "A" * 100 + "C" * 300
    assert policy.decide(state, Call("c0", "c", weak, 100, 10), 10) not in (first, second)
    # Far more work on `first`: imbalanced, so the least queued instance wins.
    state.report(Load(first, queued_prefill_tokens=20_000, at_ms=20))
    moved = policy.decide(state, Call("a2", "a", sys_a, 100, 10), 20)
    assert moved != first
    assert moved is not None and policy.trees[moved].match(sys_a) == len(sys_a)


def test_cache_aware_trees_stay_within_their_budget() -> None:
    policy = CacheAware(max_tree_chars=2000)
    state = ClusterState()
    state.report(Load(0))
    for k in range(100):
        policy.decide(state, Call(f"c{k}", "p", f"{k:04d}" + "x" * 96, 10, 10), 0)
    assert policy.trees[0].size <= 2000
    assert policy.trees[0].match("0099" + "x" * 96) == 100  # the newest prefix survives
    assert policy.trees[0].match("0000" + "x" * 96) < 100  # the oldest was evicted


# -- on synthetic traces -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["prefix_hash", "cache_aware", "prompt_aware"])
def test_same_prefix_stays_on_one_instance_at_low_load(name: str) -> None:
    rng = random.Random(5)
    arrivals = tuple(
        (k * 200, _call(k, rng.choice([0, 1, 2]))) for k in range(200)
    )  # 5 calls/s: about 25% of the cluster's capacity
    run = _simulate(make_policy(name), arrivals, EQUAL, 41_000)
    homes = {prompt: set(instances) for prompt, instances in run.placed.items()}
    assert len(homes) == 3
    assert all(len(h) == 1 for h in homes.values()), homes
    if name != "prefix_hash":  # placement by load also spreads the prompts
        assert len(set.union(*homes.values())) == 3, homes


BALANCE_RATIO = {"least_loaded": 1.5, "cache_aware": 3.5, "prompt_aware": 2.0}


@pytest.mark.parametrize("name", ["least_loaded", "cache_aware", "prompt_aware"])
def test_queues_stay_balanced_under_zipf_prompt_popularity(name: str) -> None:
    run = _zipf_run(name)
    mean = run.mean_queued()
    spread = sorted(max(q) - min(q) for q in run.queued)
    # cache_aware trades balance for cache hits up to its threshold (4096 tokens).
    assert max(mean) <= BALANCE_RATIO[name] * min(mean), mean
    assert spread[-1] <= 6000  # never more than ~12 calls apart
    assert spread[len(spread) // 2] <= 1200  # and usually within ~2 calls


def test_prefix_hash_alone_overloads_the_hot_prompts_instance() -> None:
    """The control for the test above: hashing prompts ignores popularity."""
    mean = _zipf_run("prefix_hash").mean_queued()
    assert max(mean) > 10 * min(mean), mean


def test_prompt_aware_replicates_the_hot_prompt_and_keeps_cold_prompts_on_one() -> None:
    run = _zipf_run("prompt_aware")
    steady = run.tables[10:]  # after the first 10 s
    hot = [len(t["p0"]) for t in steady]
    assert sum(n >= 2 for n in hot) >= 0.5 * len(hot), hot
    cold = [f"p{k}" for k in range(10, 20)]
    sizes = [len(t[p]) for t in steady for p in cold if p in t]
    assert sizes and max(sizes) == 1
    changes = sum(a["p0"] != b["p0"] for a, b in zip(steady, steady[1:], strict=False))
    assert changes <= 8  # no flapping
    # Most of the hot prompt's calls went to its set's members at the time, not spilled.
    policy = run.policy
    assert isinstance(policy, PromptAware)
    assert policy.spills <= 0.05 * len(run.decisions)


def test_prompt_aware_contracts_when_the_hot_prompt_cools() -> None:
    busy = _zipf_arrivals(ZIPF_RATE, 30)
    quiet = tuple((30_000 + k * 1000, _call(100_000 + k, 0)) for k in range(40))  # 1/s
    run = _simulate(make_policy("prompt_aware"), busy + quiet, EQUAL, 70_000)
    assert max(len(t["p0"]) for t in run.tables[:31]) >= 2
    assert len(run.tables[-1]["p0"]) == 1
    assert len(set(run.placed["p0"][-10:])) == 1


@pytest.mark.parametrize("name", ["least_loaded", "cache_aware", "prompt_aware"])
def test_a_slow_instance_gets_clearly_less_work(name: str) -> None:
    baseline = _zipf_run("round_robin", ONE_SLOW).sent_share(3)
    assert baseline == pytest.approx(0.25, abs=0.02)
    run = _zipf_run(name, ONE_SLOW)
    assert run.sent_share(3) < 0.5 * baseline
    assert _mean(run.latency_s) < 0.5 * _mean(_zipf_run("round_robin", ONE_SLOW).latency_s)


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_a_dead_instance_is_never_chosen_again(name: str) -> None:
    kill_ms, victim = 20_000, 2
    arrivals = _zipf_arrivals(ZIPF_RATE, 40)
    run = _simulate(make_policy(name), arrivals, EQUAL, 41_000, kill=(kill_ms, victim))
    gone_ms = kill_ms + HEARTBEAT_MS + REPORT_MS  # silent for longer than the timeout
    before = [c for t, c in run.decisions if t < kill_ms]
    after = [c for t, c in run.decisions if t > gone_ms]
    assert victim in before
    assert after and victim not in after
    assert set(after) <= {0, 1, 3}
    if name != "prefix_hash":
        assert set(after) == {0, 1, 3}
    assert all(victim not in members for members in run.policy.table().values())


def test_prompt_aware_spills_when_its_set_is_swamped_without_changing_the_set() -> None:
    policy = PromptAware()
    state = ClusterState()
    for i in range(3):
        state.report(Load(i, at_ms=0))
    home = policy.decide(state, _call(0, 0), 0)
    assert home is not None
    state.report(Load(home, queued_prefill_tokens=200_000, at_ms=10))
    choice = policy.decide(state, _call(1, 0), 10)
    assert choice is not None and choice != home
    assert policy.table() == {"p0": (home,)}
    assert policy.spills == 1


def test_prompt_aware_learns_a_prompts_cost_from_completions() -> None:
    policy = PromptAware()
    state = ClusterState()
    state.report(Load(0))
    call = Call("c0", "summarize", "S" * 100, 1000, 500)
    assert policy.decide(state, call, 0) == 0
    # Before any completion: its prompt less its prefix (100 chars = 25 tokens, cached once
    # placed), plus max_tokens.
    assert policy.prompts["summarize"].cost_tokens() == 1475
    for k in range(30):
        done = Completion(f"c{k}", 0, "summarize", 1000, 900, 20, 0.0, 0.1, 100 * k)
        state.completed(done)
        policy.on_completion(state, done)
    assert policy.prompts["summarize"].cost_tokens() == pytest.approx(120, rel=0.01)


def test_prompt_aware_table_round_trip() -> None:
    run = _zipf_run("prompt_aware")
    table = run.policy.table()
    assert set(table) == {f"p{k}" for k in range(20)}
    fresh = make_policy("prompt_aware")
    fresh.load_table(table)
    assert fresh.table() == table
    state = ClusterState()
    for i in range(4):
        state.report(Load(i, at_ms=0))
    for k, prompt in enumerate(["p0", "p7", "p19"]):
        choice = fresh.decide(state, _call(k, int(prompt[1:])), 0)
        assert choice in table[prompt]
        state.assigned(choice, _call(k, int(prompt[1:])))
    # A member that is not live is skipped; the rest of the set still serves the prompt.
    other = make_policy("prompt_aware")
    other.load_table({"p5": (9, 1)})
    assert {other.decide(state, _call(100 + k, 5), 0) for k in range(5)} == {1}


def _two_instances(policy: PromptAware, call: Call) -> tuple[ClusterState, int, int]:
    state = ClusterState()
    for i in range(2):
        state.report(Load(i, at_ms=0))
    home = policy.decide(state, call, 0)
    assert home is not None
    return state, home, 1 - home


def test_prompt_aware_spills_only_when_the_miss_still_wins() -> None:
    """A spill to an instance without the prefix pays its prefill: with 1,000 of the
    call's 1,100 prompt tokens cached at home, a queue of 1.5 s there is not worth a miss
    elsewhere (the old rule spilled beyond 1 s); a queue of 3 s is."""
    policy = PromptAware()
    big = Call("c0", "rag", "R" * 4000, 1100, 50)
    state, home, other = _two_instances(policy, big)
    assert not policy.holds(other, "rag")
    state.report(Load(home, queued_prefill_tokens=3000, at_ms=10))
    assert policy.decide(state, Call("c1", "rag", "R" * 4000, 1100, 50), 10) == home
    assert policy.spills == 0
    state.report(Load(home, queued_prefill_tokens=6000, at_ms=20))
    assert policy.decide(state, Call("c2", "rag", "R" * 4000, 1100, 50), 20) == other
    assert policy.spills == 1
    assert policy.table() == {"rag": (home,)}  # a spill does not change the set
    assert policy.holds(other, "rag")  # but the other instance now holds the prefix


def test_prompt_aware_counts_expected_uncached_work_not_whole_prompts() -> None:
    policy = PromptAware()
    call = Call("c0", "rag", "R" * 4000, 1100, 50)
    state, home, other = _two_instances(policy, call)
    state.assigned(home, call)
    assert state.queued_tokens(home) == 1150  # the engine-agnostic count: whole prompt
    # The first call misses (nothing holds its prefix yet); the next ones hit at home.
    assert policy.queued_work(state, home) == 1150
    second = Call("c1", "rag", "R" * 4000, 1100, 50)
    assert policy.work_tokens(home, "rag", second) == 150  # 100 uncached + 50 output
    assert policy.work_tokens(other, "rag", second) == 1150  # a miss there
    state.assigned(home, second)
    policy._inflight[second.call_id] = (home, 150, "rag", 0)
    assert policy.queued_work(state, home) == 1300


def _completions(policy: PromptAware, state: ClusterState, prompt: str, tokens: int) -> None:
    for k in range(3):  # queue_s 1.2 s: what vLLM reports, submission to first token
        done = Completion(f"{prompt}-done{k}", 0, prompt, tokens, 0, 10, 1.2, 0.3, 500 + k)
        policy.on_completion(state, done)


def test_prompt_aware_hotness_is_relative_to_the_prompts_own_calls() -> None:
    """1.2 s of queueing is two of a cheap prompt's calls but under one of an expensive
    prompt's: only the cheap one is hot and grows onto the idle instance."""
    for tokens, grows in ((100, True), (2800, False)):
        policy = PromptAware()
        state = ClusterState()
        for i in range(2):
            state.report(Load(i, at_ms=0))
        prompt = f"p{tokens}"
        assert policy.decide(state, Call("c0", prompt, "", tokens, 10), 0) == 0
        _completions(policy, state, prompt, tokens)
        assert policy.hot_threshold_s(prompt, 0) == pytest.approx(
            max(0.5, 2 * (tokens + 10) / 2000.0)
        )
        state.report(Load(0, queued_prefill_tokens=200, at_ms=1500))
        state.report(Load(1, at_ms=1500))
        policy.decide(state, Call("c1", prompt, "", tokens, 10), 2000)
        assert len(policy.table()[prompt]) == (2 if grows else 1), (tokens, policy.table())


def test_prompt_aware_places_a_new_set_member_where_the_prefix_already_is() -> None:
    policy = PromptAware()
    state = ClusterState()
    for i in range(3):
        state.report(Load(i, at_ms=0))
    call = Call("c0", "rag", "R" * 4000, 1100, 50)
    home = policy.decide(state, call, 0)
    assert home is not None
    holder = (home + 2) % 3
    # It served a call of this prompt lately, placed by another decider: the completion
    # (every decider reads every instance's status) says the prefix is there.
    done = Completion("elsewhere", holder, "rag", 1100, 0, 50, 0.0, 0.2, 5)
    state.completed(done)
    policy.on_completion(state, done)
    assert policy.holds(holder, "rag")
    live = {0, 1, 2}
    others = [i for i in range(3) if i != home]
    assert policy._place(state, "rag", call, others, live, 10) == holder


def test_prompt_aware_deciders_learn_each_others_prefixes_from_completions() -> None:
    """Two deciders share the table but place their own calls. The second must not count
    the first one's home for a prompt as a cache miss: it learns the prefix is there from
    the completions of the first one's calls, and keeps the prompt's calls there too."""
    first, second = PromptAware(), PromptAware()
    state_a, state_b = ClusterState(), ClusterState()
    for i in range(4):
        state_a.report(Load(i, at_ms=0))
        state_b.report(Load(i, at_ms=0))
    rag = Call("a0", "rag", "R" * 4000, 1100, 50)
    home = first.decide(state_a, rag, 0)
    assert home is not None
    second.load_table(first.table())  # the assignments topic
    assert not second.holds(home, "rag")
    done = Completion("a0", home, "rag", 1100, 1000, 50, 0.0, 0.2, 300)
    for decider, state in ((first, state_a), (second, state_b)):
        state.completed(done)
        decider.on_completion(state, done)
    assert second.holds(home, "rag")
    mine = Call("b0", "rag", "R" * 4000, 1100, 50)
    assert second.work_tokens(home, "rag", mine) == 150  # a hit: 100 uncached + 50 output
    assert second.decide(state_b, mine, 400) == home


def test_a_late_report_from_before_a_removal_does_not_revive_the_instance() -> None:
    state = ClusterState(heartbeat_timeout_ms=1000)
    state.report(Load(0, at_ms=10_000))
    state.report(Load(1, at_ms=10_000))
    state.report(Load(0, at_ms=10_400))
    state.forget(0)  # instance 0 went silent and was removed
    state.report(Load(0, at_ms=10_300))  # an older report, read late
    assert state.live(10_500) == [1]
    state.report(Load(0, at_ms=12_000))  # restarted: reports anew
    assert state.live(12_100) == [0]
