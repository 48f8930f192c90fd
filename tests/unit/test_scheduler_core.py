"""The scheduler's shell without a broker: admission control, feedback, the shared table."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from alto.config import AltoConfig
from alto.scheduler.agent import Overloaded, SchedulerCore, _now_ms
from alto.scheduler.policy import Call
from alto.schemas.messages import (
    ChatMessage,
    LMAssignment,
    LMCompletion,
    LMRequest,
    LMStatus,
    QuantumRule,
)
from tests.harness import until


def _call(i: int, prompt: str = "claims") -> LMRequest:
    return LMRequest(
        f"c{i}",
        f"r{i}",
        "claims",
        "claims",
        prompt,
        (ChatMessage("system", "You list claims."), ChatMessage("user", f"topic {i}")),
        16,
        QuantumRule.ITEM,
        b"",
        0,
        prefix_chars=16,
    )


def _status(instance: int, running: int = 0, completed: tuple[str, ...] = ()) -> bytes:
    done = tuple(LMCompletion(c, "claims", 10, 4, 16, 0.01, 0.5, _now_ms()) for c in completed)
    return LMStatus(
        instance, f"lm-{instance}", "sim", True, running, 0, 0, 0, 0.0, 0.0, 0.0, _now_ms(),
        completed=done,
    ).encode()  # fmt: skip


class _Sent(list[tuple[str, bytes, bytes, int | None]]):
    async def __call__(self, topic: str, key: bytes, value: bytes, part: int | None) -> None:
        self.append((topic, key, value, part))


def test_saturated_calls_wait_then_overflow_fails_fast() -> None:
    async def run() -> None:
        config = AltoConfig(
            scheduler={"saturation": 2, "queue": 1},
        )
        sent = _Sent()
        core = SchedulerCore(config, sent, name="s1")
        await core._on_status(_status(0))
        assert [await core.place(_call(i)) for i in range(2)] == [0, 0]
        waiter = asyncio.ensure_future(core.place(_call(2)))  # instance 0 is saturated
        await until(lambda: core.waiting == 1)
        assert not waiter.done()
        with pytest.raises(Overloaded):  # the queue (1) is full: refused at once
            await core.place(_call(3))
        # Instance 0 reports c0 finished: capacity frees and the waiting call is placed.
        await core._on_status(_status(0, completed=("c0",)))
        assert await asyncio.wait_for(waiter, 2.0) == 0
        assert core.waiting == 0

    asyncio.run(run())


def test_a_new_instance_takes_load_and_the_table_is_published() -> None:
    async def run() -> None:
        config = AltoConfig(
            scheduler={"policy": "prompt_aware", "saturation": 1},
        )
        sent = _Sent()
        core = SchedulerCore(config, sent, name="s1")
        await core._on_status(_status(0))
        assert await core.place(_call(0)) == 0
        waiter = asyncio.ensure_future(core.place(_call(1)))  # 0 is saturated
        await until(lambda: core.waiting == 1)
        assert not waiter.done()
        await core._on_status(_status(1))  # a new instance joins by reporting
        assert await asyncio.wait_for(waiter, 2.0) == 1
        table = [LMAssignment.decode(v) for t, _, v, _ in sent if t == config.lm_assignments_topic]
        assert table and table[0].prompt_name == "claims" and table[0].scheduler == "s1"
        assert 0 in table[0].instances

    asyncio.run(run())


def test_another_replicas_table_is_loaded() -> None:
    async def run() -> None:
        config = AltoConfig(
            scheduler={"policy": "prompt_aware"},
        )
        core = SchedulerCore(config, _Sent(), name="s2")
        for i in (0, 1, 2):
            await core._on_status(_status(i))
        entry = LMAssignment("claims", (2,), "prompt_aware", "s1", _now_ms())
        await core._on_assignment(entry.encode())
        assert await core.place(_call(0)) == 2  # resumes the shared placement

    asyncio.run(run())


def test_a_replayed_call_stays_on_its_engine() -> None:
    async def run() -> None:
        core = SchedulerCore(
            AltoConfig(
                scheduler={"policy": "least_loaded"},
            ),
            _Sent(),
            name="s1",
        )
        for i, engine in ((0, "sim"), (1, "sim"), (2, "vllm")):
            status = LMStatus.decode(_status(i))
            busy = 500 * (i < 2)
            await core._on_status(
                replace(status, engine=engine, queued_decode_tokens=busy).encode()
            )
        call = Call.of(_call(0))
        assert await core._decide(call) == 2  # least loaded
        assert await core._decide(call, engine="sim") in (0, 1)  # a sim call's replay
        assert await core._decide(call, engine="gone") == 2  # no such engine live: any

    asyncio.run(run())


def test_a_stage_places_its_call_now_only_while_an_instance_has_room() -> None:
    """`place_now` (a stage's LM call with no hop through `lm.requests`): an instance while
    one has room, else None (the call then goes to the scheduler agent to wait or be
    refused); it never waits and never counts against the scheduler's queue."""

    async def run() -> None:
        config = AltoConfig(scheduler={"saturation": 2, "queue": 1})
        sent = _Sent()
        core = SchedulerCore(config, sent, name="s1")
        assert await core.place_now(_call(0)) is None  # no instance has reported yet
        await core._on_status(_status(0))
        assert [await core.place_now(_call(i)) for i in range(2)] == [0, 0]
        assert await core.place_now(_call(2)) is None  # saturated: the agent's road
        assert core.waiting == 0 and core.decisions == 2
        # The placement is the agent's own: recorded as load, the table published.
        assert core.state.outstanding(0) == 2
        assert [t for t, *_ in sent] == [config.lm_assignments_topic]
        await core._on_status(_status(0, completed=("c0",)))
        assert await core.place_now(_call(3)) == 0

    asyncio.run(run())


def test_a_dead_instance_is_drained_by_the_leader_and_by_each_replica_that_placed_there(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The leader drains a removed instance's whole partition; another replica drains only
    the calls it placed there itself (which may have landed after the leader's drain), and
    a replica that placed nothing there leaves it alone."""

    async def removal(leader: bool, place: bool) -> list[tuple[int, set[str] | None]]:
        config = AltoConfig(scheduler={"policy": "least_loaded"})
        core = SchedulerCore(config, _Sent(), name="s", is_leader=lambda: leader)
        drains: list[tuple[int, set[str] | None]] = []

        async def drain(instance: int, only: set[str] | None = None) -> int:
            drains.append((instance, only))
            return 0

        monkeypatch.setattr(core, "drain", drain)
        await core._on_status(_status(0))
        await core._on_status(_status(1, running=5))
        if place:
            assert await core.place_now(_call(7)) == 0  # the least loaded
        # Instance 0 stops reporting; instance 1 goes on.
        later = _now_ms() + 6_000
        core.state.report(replace(core.state.loads[1], at_ms=later))
        assert await core.remove_dead(later) == [0]
        assert core.state.live(later) == [1]
        return drains

    async def run() -> None:
        assert await removal(leader=True, place=False) == [(0, None)]
        assert await removal(leader=True, place=True) == [(0, None)]
        assert await removal(leader=False, place=True) == [(0, {"c7"})]
        assert await removal(leader=False, place=False) == []

    asyncio.run(run())
