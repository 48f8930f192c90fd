"""A worker's membership lease: an agent handles an event only while the consumer group may
still count this worker a member.

Kafka fences a consumer that has lost its partitions when it commits (the commit fails), and
with transactions when it produces. Without transactions a worker stopped past its session
timeout (SIGSTOP, a frozen VM, a long stall) wakes up believing it still owns its partitions,
while the group has handed them to another worker that processes the same uncommitted
records. Whatever the zombie produces before its next heartbeat tells it so is a second copy:
for the sink, a second result of the request (`alto chaos --pause faust` saw one).

The lease is the last moment the group confirmed our membership: when a heartbeat that
succeeded was sent, or when an assignment arrived. While that is longer ago than the session
timeout the group may have evicted us, and an agent holds its next event until one of two
things happens: a heartbeat succeeds (still a member: the event is handled), or a rebalance
begins (the partition is revoked and its next owner reads it from the committed offset: the
event is dropped, counted as neither processed nor failed).

What the lease cannot stop: an event already being handled when the worker stopped, and
outputs already in the producer's buffer then, both go out when it wakes. Those windows are
the length of one event's handling, not of everything the worker had fetched.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from alto import metrics

log = logging.getLogger(__name__)

# How often a held event looks again at the lease and the rebalance count.
POLL_S = 0.05


class MembershipLease:
    """When the consumer group last confirmed this worker's membership (monotonic clock)."""

    def __init__(
        self, session_timeout_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.session_timeout_s = session_timeout_s
        self.clock = clock
        self.confirmed_at = clock()  # nothing is assigned before the first confirmation
        self._warned_for: float | None = None

    def confirm(self, at: float | None = None) -> None:
        """The group confirmed our membership at `at` (now by default)."""
        at = self.clock() if at is None else at
        self.confirmed_at = max(self.confirmed_at, at)

    def live(self) -> bool:
        """Whether the group cannot yet have evicted us for silence."""
        return self.clock() - self.confirmed_at < self.session_timeout_s

    def watch(self, consumer: Any) -> None:
        """Confirm the lease on every heartbeat of `consumer` (an `AIOKafkaConsumer` not yet
        started) that succeeds, dated when it was sent: the broker renewed the session on
        receiving it, no earlier. aiokafka keeps that moment to itself, so its coordinator's
        heartbeat is wrapped once `start` has built the coordinator."""
        start = consumer.start

        async def start_watching() -> None:
            await start()
            coordinator = consumer._coordinator
            beat = coordinator._do_heartbeat

            async def confirmed_beat() -> bool:
                sent = self.clock()
                ok = bool(await beat())
                if ok:
                    self.confirm(sent)
                return ok

            coordinator._do_heartbeat = confirmed_beat

        consumer.start = start_watching

    async def hold(self, app: Any) -> bool:
        """Wait while the lease has lapsed. True: handle the event (the lease is live, or came
        back); False: drop it (a rebalance began while it was held)."""
        if self.live():
            return True
        rebalances = app.rebalancing_count
        metrics.LEASE_HELD_EVENTS.inc()
        if self._warned_for != self.confirmed_at:  # once a lapse, not once an agent
            self._warned_for = self.confirmed_at
            log.warning(
                "no heartbeat confirmed for %.1f s (session timeout %.1f s): the group may "
                "have moved this worker's partitions; events are held",
                self.clock() - self.confirmed_at,
                self.session_timeout_s,
            )
        while not self.live():
            if app.rebalancing or app.rebalancing_count != rebalances:
                metrics.LEASE_DROPPED_EVENTS.inc()
                return False
            await asyncio.sleep(POLL_S)
        return True

    async def admit(self, stream: Any, event: Any) -> bool:
        """Whether to handle `event` of `stream` (after `hold`). One not to handle is dropped
        and then acknowledged to the stream, which keeps the stream's bookkeeping and, the
        message being marked acked already, counts no offset."""
        if await self.hold(stream.app):
            return True
        drop(stream.app.consumer, event)
        message = event.message
        log.warning(
            "dropped %s[%d]@%d held through a rebalance: read again by its next owner",
            message.topic,
            message.partition,
            message.offset,
        )
        await stream.ack(event)
        return False


def drop(consumer: Any, event: Any) -> None:
    """Let go of `event` unprocessed: it no longer holds up a rebalance (which waits for every
    event in hand) and its offset is not counted as processed, so the partition's next owner
    reads it again from the committed offset."""
    message = event.message
    message.acked = True
    consumer._unacked_messages.discard(message)
