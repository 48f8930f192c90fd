"""Faust's aiokafka transport with our changes: a configurable fetch wait, Faust's
partition assignor in every worker, end offsets checked by reading, two fixes that keep
Faust from committing records nothing processed (a producer flush that really drains, and no
ack for a message a stream skipped), and a loud log of fetch gaps above the committed offset
(the third way, not fixed yet). README, "Where the loss under chaos came from".

Faust hard-codes the consumer's `fetch_max_wait_ms` at 1,500 ms. Apache Kafka answers a
fetch as soon as data arrives, so there the value only bounds idle polls; the embedded
broker (Tansu 0.6) holds a fetch for most of that time even when data is waiting, which
measured here as hundreds of ms per hop (`alto bench hop`). We make it a setting.

Faust picks aiokafka's round-robin assignor for a worker with no changelog tables and no
standby replicas (a scheduler-only worker, `ALTO_ROLES=scheduler`). Its group protocol then
differs from its peers' and the broker refuses the whole group (InconsistentGroupProtocol):
no worker gets a partition. Workers of one app must share the assignor, so ours always use
Faust's.

The embedded broker (Tansu 0.6) answers ListOffsets(latest) with the last batch's *base*
offset plus one: after a batch of 3 records at offsets 1-3 it says 2, not 4, while fetch
responses carry the right highwater (tests/integration/test_broker.py). Faust reads a
changelog up to that end when it recovers a table, so it missed the tail of the last batch:
a worker that took over a partition lost the newest state updates (a request of
`alto chaos` never finished), or refused to start ("persisted offset ... higher than the
highwater"). `true_end_offsets` reads past the reported end, and the recovery uses it.

Faust commits a consumer's offsets only after `producer.flush()`, so that every write an
event caused is on the broker before the event counts as processed. Table updates do not go
to the client directly: `table[key] = value` puts the changelog record in a buffer
(`ProducerBuffer`) that a background task moves to aiokafka. Faust's `flush` of that buffer
gives up after waiting 0.1 s for one message to move and returns with the rest still
buffered; the commit then goes ahead. On a loaded machine (2 cores, a broker and five
processes under `alto chaos`) that happens: the input offsets were committed while the state
updates they made were still in the buffer, and a worker SIGKILLed at that moment left its
successor a table without them and no inputs to replay. A node then never completed, and
neither did its request (issue 17). `_DrainingBuffer.flush` waits until the buffer is empty
and no message is between the buffer and the client.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.transport.drivers.aiokafka import (
    AIOKafkaConsumerThread,
    Consumer,
    Producer,
    Transport,
)
from faust.transport.producer import ProducerBuffer

from alto import metrics

log = logging.getLogger(__name__)

PROBE_WAIT_MS = 200
# Refused acks (see `_Consumer.ack`) are logged at most this often, with their count.
REFUSED_LOG_EVERY_S = 1.0
# Faust's flush gives up after this long without a message moving.
FAUST_FLUSH_S = 0.1
# A flush that has waited this long for the buffer to drain says so (once per flush).
SLOW_FLUSH_S = 1.0


async def true_end_offsets(
    settings: Mapping[str, Any], reported: Mapping[Any, int]
) -> dict[Any, int]:
    """The end offset (next offset to be written) of each partition in `reported`, checked
    by fetching from just below the reported end until nothing more comes back. A broker
    that reports ends correctly costs one empty fetch per partition; keys are returned as
    given (Faust's TP or aiokafka's TopicPartition)."""
    out = dict(reported)
    probe = [tp for tp, end in reported.items() if end > 0]
    if not probe:
        return out
    consumer = AIOKafkaConsumer(
        **settings, enable_auto_commit=False, fetch_max_wait_ms=PROBE_WAIT_MS
    )
    await consumer.start()
    try:
        tps = {TopicPartition(tp.topic, tp.partition): tp for tp in probe}
        consumer.assign(list(tps))
        for tp, original in tps.items():
            consumer.seek(tp, reported[original] - 1)
        quiet = 0
        while quiet < 2:
            batches = await consumer.getmany(timeout_ms=PROBE_WAIT_MS)
            quiet = 0 if any(batches.values()) else quiet + 1
            for tp, records in batches.items():
                original = tps[tp]
                out[original] = max(out[original], max(r.offset for r in records) + 1)
    finally:
        await consumer.stop()
    return out


class _ConsumerThread(AIOKafkaConsumerThread):
    def _create_consumer(self, loop: asyncio.AbstractEventLoop) -> Any:
        consumer = super()._create_consumer(loop)
        if not self.app.client_only:
            self._assignor = self.app.assignor
            consumer._partition_assignment_strategy = (self.app.assignor,)
        # Read by AIOKafkaConsumer.start() when it builds its fetcher; set before start.
        consumer._fetch_max_wait_ms = self.app.conf.alto_fetch_max_wait_ms
        return consumer

    async def _highwaters(self, partitions: list[Any]) -> Mapping[Any, int]:
        reported = await super()._highwaters(partitions)
        settings = self.app.conf.alto_client_settings
        if settings is None or self.consumer.in_transaction:
            return reported
        ends = await true_end_offsets(settings, reported)
        wrong = {tp: (reported[tp], end) for tp, end in ends.items() if end != reported[tp]}
        if wrong:
            sample = dict(list(wrong.items())[:3])
            log.warning(
                "the broker reported the end of %d partitions short (reported, read), e.g. %s",
                len(wrong),
                sample,
            )
        return ends


class _Consumer(Consumer):
    # When the last refused ack was logged (monotonic s) and how many since.
    _refused_logged_at = 0.0
    _refused_since_log = 0

    def _new_consumer_thread(self) -> AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def ack(self, message: Any) -> bool:
        # A stream that reads a message while a rebalance has suspended the flow, or that
        # was fetched in an earlier generation, skips it unprocessed and then acks it
        # anyway (faust/streams.py, `skipped_value`). Acked, its offset joins the offsets
        # to commit; revocation empties those, but an ack that comes after it lands in the
        # partition's next assignment, and Faust commits the first run of acked offsets
        # without checking that it starts at the committed offset. So the commit passed
        # records no agent had processed: lost, at the next restart or hand-over. A message
        # a stream processed was tracked first; one it skipped was not. Only the first count.
        if not message.tracked and self.app.topics.acks_enabled_for(message.topic):
            message.acked = True
            metrics.SKIPPED_ACKS_REFUSED.inc()
            self._refused_since_log += 1
            now = time.monotonic()
            if now - self._refused_logged_at >= REFUSED_LOG_EVERY_S:
                log.warning(
                    "refused to count %d messages as processed that the stream skipped "
                    "during a rebalance (e.g. %s@%d): they are read again",
                    self._refused_since_log,
                    message.tp,
                    message.offset,
                )
                self._refused_logged_at, self._refused_since_log = now, 0
            return False
        return bool(super().ack(message))

    async def _add_gap(self, tp: Any, offset_from: int, offset_to: int) -> None:
        # Faust counts offsets a fetch jumped over as processed. Below the committed offset
        # that is harmless (processed before, here or elsewhere: a stale read offset after a
        # partition moved, seen on rebalances in `alto chaos`). At or above it, nothing
        # processed those records and the commit will pass them: say so, loudly.
        committed = self._committed_offset.get(tp)
        uncommitted = committed is None or offset_to > committed
        log.log(
            logging.WARNING if uncommitted else logging.DEBUG,
            "fetch of %s jumped from offset %d to %d (committed: %s): Faust counts the "
            "offsets between as processed",
            tp,
            offset_from - 1,
            offset_to,
            committed,
        )
        if uncommitted:
            metrics.UNCOMMITTED_GAPS.inc()
        await super()._add_gap(tp, offset_from, offset_to)


class _DrainingBuffer(ProducerBuffer):
    """Faust's producer buffer whose `flush` returns only once every message put before it
    (and during it) has been handed to the client: the buffer is empty and none is being
    moved. Faust's returns after 0.1 s without progress, whatever is left."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.moving = 0  # messages taken from the queue and not yet handed to the client

    async def _send_pending(self, fut: Any) -> None:
        # `_handle_pending` takes a message off the queue and calls this in the same step,
        # so `size + moving` counts every message not yet with the client at any await.
        self.moving += 1
        try:
            await super()._send_pending(fut)
        finally:
            self.moving -= 1

    async def flush(self) -> None:
        started = time.monotonic()
        gave_up = warned = False
        while self.size or self.moving:
            if self.state != "running":
                raise RuntimeError("Cannot flush: Producer not Running")
            self.message_sent.clear()
            try:
                await asyncio.wait_for(self.message_sent.wait(), timeout=FAUST_FLUSH_S)
            except TimeoutError:
                if not gave_up:  # where Faust's flush returns, and its commit goes ahead
                    gave_up = True
                    metrics.PRODUCER_FLUSH_WAITS.inc()
            if not warned and time.monotonic() - started > SLOW_FLUSH_S:
                warned = True
                log.warning(
                    "producer flush: %d messages still buffered after %.1f s; the commit "
                    "waits for them",
                    self.size + self.moving,
                    time.monotonic() - started,
                )


class _Producer(Producer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        buffer = _DrainingBuffer(loop=self.loop, beacon=self.beacon)
        buffer.app = self.app
        if self.threaded_producer is not None:
            buffer.threaded_producer = self.threaded_producer
        self.buffer = buffer


class _Transport(Transport):
    Consumer = _Consumer
    Producer = _Producer


class FaustApp(faust.App):
    """A Faust app whose consumer fetch wait is `fetch_max_wait_ms` (milliseconds) and whose
    table recovery checks end offsets by reading (`client_settings`: how to connect)."""

    def __init__(
        self,
        *args: Any,
        fetch_max_wait_ms: int = 10,
        client_settings: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.conf.alto_fetch_max_wait_ms = fetch_max_wait_ms
        # aiokafka connection settings for checking end offsets (None: trust the broker).
        self.conf.alto_client_settings = client_settings

    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)
