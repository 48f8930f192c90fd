"""The membership lease (`alto.agents.lease`): a worker that may have been evicted from its
consumer group holds its next event until a heartbeat confirms it, or drops it once a
rebalance begins (the partition's next owner reads it again)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from alto.agents.lease import MembershipLease


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@dataclass(eq=False)
class _Message:
    acked: bool = False
    topic: str = "t"
    partition: int = 0
    offset: int = 7


@dataclass
class _Event:
    message: _Message = field(default_factory=_Message)


@dataclass
class _Consumer:
    _unacked_messages: set[Any] = field(default_factory=set)


@dataclass
class _App:
    """What the lease reads of a Faust app: its rebalance flag and count, its consumer."""

    rebalancing: bool = False
    rebalancing_count: int = 0
    consumer: _Consumer = field(default_factory=_Consumer)


@dataclass
class _Stream:
    """What the lease uses of a Faust stream: its app, and `ack` for a dropped event."""

    app: _App = field(default_factory=_App)
    acked: list[Any] = field(default_factory=list)

    async def ack(self, event: Any) -> None:
        self.acked.append(event)


def test_the_lease_lapses_a_session_timeout_after_the_last_confirmation() -> None:
    clock = _Clock()
    lease = MembershipLease(6.0, clock)
    assert lease.live()
    clock.now += 5.9
    assert lease.live()
    clock.now += 0.2
    assert not lease.live()
    lease.confirm(clock.now - 1.0)  # a heartbeat sent a second ago succeeded
    assert lease.live()
    lease.confirm(clock.now - 50.0)  # an older confirmation moves nothing back
    clock.now += 5.5
    assert not lease.live()


def test_an_event_is_handled_at_once_while_the_lease_is_live() -> None:
    lease, stream, event = MembershipLease(6.0, _Clock()), _Stream(), _Event()
    assert asyncio.run(lease.admit(stream, event))
    assert not event.message.acked and not stream.acked


def test_a_held_event_is_handled_once_a_heartbeat_confirms_the_lease() -> None:
    clock = _Clock()
    lease, stream, event = MembershipLease(6.0, clock), _Stream(), _Event()
    clock.now += 10.0  # the worker was stopped past its session timeout

    async def run() -> bool:
        admitted = asyncio.ensure_future(lease.admit(stream, event))
        await asyncio.sleep(0)
        assert not admitted.done()  # held
        lease.confirm(clock.now)  # the group still counts us a member
        return await admitted

    assert asyncio.run(run())
    assert not event.message.acked and not stream.acked


def test_a_held_event_is_dropped_unprocessed_when_a_rebalance_begins() -> None:
    clock = _Clock()
    lease, stream, event = MembershipLease(6.0, clock), _Stream(), _Event()
    app = stream.app
    clock.now += 10.0

    async def run() -> bool:
        admitted = asyncio.ensure_future(lease.admit(stream, event))
        await asyncio.sleep(0)
        assert not admitted.done()
        app.rebalancing, app.rebalancing_count = True, 1  # the heartbeat learnt we were out
        return await admitted

    app.consumer._unacked_messages = {event.message}  # type: ignore[assignment]
    assert not asyncio.run(run())
    # No longer holds up the revocation (which waits for every event in hand), and marked
    # acked before the stream's ack, so its offset is never counted as processed.
    assert event.message.acked
    assert not app.consumer._unacked_messages
    assert stream.acked == [event]  # the stream's own bookkeeping of the event
