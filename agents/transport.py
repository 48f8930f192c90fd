"""Faust's aiokafka transport with our changes: a configurable fetch wait, Faust's
partition assignor in every worker, end offsets checked by reading, and four fixes that
keep Faust from committing records nothing processed (a producer flush that really drains,
no ack for a message a stream skipped, no read offsets with commits that start at the
committed offset, and no commit before that offset is known after a rebalance), and a fetch
that skips a record the broker does not show yet read again from it (`alto.fetch_gaps`).
README, "Where the loss under chaos came from" (the fifth fix, acks only after handling, is
in `alto.agents.events.handle_each`).

Faust hard-codes the consumer's `fetch_max_wait_ms` at 1,500 ms. Apache Kafka answers a
fetch as soon as data arrives, so there the value only bounds idle polls; so does the
embedded broker's long-poll front (`alto.infra.longpoll`), where Tansu 0.6 alone held each
fetch for its whole wait (hundreds of ms per hop at 1,500). We make it a setting.

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
from collections.abc import AsyncIterator, Mapping
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
from alto.agents.lease import MembershipLease
from alto.agents.stores import flush_changelogs
from alto.fetch_gaps import GapGuard
from alto.kafka import FetchPacer
from alto.legs import LegTrace
from alto.streams.outputs import now_ms

log = logging.getLogger(__name__)

PROBE_WAIT_MS = 200
# The longest an end-offset probe reads a partition that keeps growing (`true_end_offsets`).
PROBE_LIMIT_S = 10.0
# A partition whose committed record stays unprocessed this long is read again from it.
REREAD_AFTER_S = 10.0
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
    given (Faust's TP or aiokafka's TopicPartition).

    A partition still being written never goes quiet: once it yields a record written after
    the probe began, the end it had when asked has been passed, and it is probed no further
    (an end that takes in later records is still a true one). `PROBE_LIMIT_S` bounds the
    rest (a writer whose clock is behind ours)."""
    out = dict(reported)
    probe = [tp for tp, end in reported.items() if end > 0]
    if not probe:
        return out
    consumer = AIOKafkaConsumer(
        **settings, enable_auto_commit=False, fetch_max_wait_ms=PROBE_WAIT_MS
    )
    await consumer.start()
    started_ms, deadline = now_ms(), time.monotonic() + PROBE_LIMIT_S
    try:
        tps = {TopicPartition(tp.topic, tp.partition): tp for tp in probe}
        consumer.assign(list(tps))
        for tp, original in tps.items():
            consumer.seek(tp, reported[original] - 1)
        quiet = 0
        while quiet < 2 and len(consumer.paused()) < len(tps):
            if time.monotonic() > deadline:
                log.warning(
                    "end offsets still growing after %.0f s: taking what was read", PROBE_LIMIT_S
                )
                break
            batches = await consumer.getmany(timeout_ms=PROBE_WAIT_MS)
            quiet = 0 if any(batches.values()) else quiet + 1
            for tp, records in batches.items():
                if not records:
                    continue
                original = tps[tp]
                out[original] = max(out[original], max(r.offset for r in records) + 1)
                if max(r.timestamp for r in records) >= started_ms:
                    consumer.pause(tp)  # written since we asked: past the end it had
    finally:
        await consumer.stop()
    return out


def received_ms(message: Any) -> int:
    """When Faust's consumer handed `message` to the streams, on the wall clock (its monitor
    stamps `time_in` on the monotonic clock); 0 when it was not stamped."""
    if message.time_in is None:
        return 0
    return now_ms() - round((time.monotonic() - message.time_in) * 1000)


class _ConsumerThread(AIOKafkaConsumerThread):
    def _create_consumer(self, loop: asyncio.AbstractEventLoop) -> Any:
        consumer = super()._create_consumer(loop)
        if not self.app.client_only:
            self._assignor = self.app.assignor
            consumer._partition_assignment_strategy = (self.app.assignor,)
        # Read by AIOKafkaConsumer.start() when it builds its fetcher; set before start.
        consumer._fetch_max_wait_ms = self.app.conf.alto_fetch_max_wait_ms
        if not self.app.client_only:
            self.app.conf.alto_lease.watch(consumer)
            if self.app.conf.alto_legs is not None:
                self.app.conf.alto_legs.watch(consumer)
        return consumer

    async def _fetch_records(self, *args: Any, **kwargs: Any) -> Any:
        records = await super()._fetch_records(*args, **kwargs)
        if self.app.conf.alto_legs is not None:
            self.app.conf.alto_legs.handed(records)
        return records

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


# How long a gated consumer's fetches wait (`_Consumer.getmany`): also the longest the gate's
# opening can wait for the fetch in flight.
GATED_FETCH_WAIT_MS = 250


class _Consumer(Consumer):
    # When the last refused ack was logged (monotonic s) and how many since.
    _refused_logged_at = 0.0
    _refused_since_log = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        self._read_offset = _NoReadOffsets()
        self._reread_due: dict[Any, int] = {}  # tp -> offset to seek to before the next fetch
        self._stalled_since: dict[Any, float] = {}  # tp -> when its commit first stalled
        # Partitions whose committed offset is known for the current assignment (read from
        # the broker by `perform_seek`, after each rebalance): the only ones we commit.
        self._seeked: set[Any] = set()
        self._gate_due = False  # the ingest gate's starts are to be applied (`_open_gate`)
        self._gate_opened = False  # once: a later rebalance is no sign that requests come
        # Offset gaps a fetch shows on the topics agents process (`alto.fetch_gaps`). Not on
        # the tables' changelogs: compacted, and positioned by Faust's recovery and standby
        # reading, not by the committed offsets this consumer expects from (the results
        # table's changelog is `alto.results`, which agents do not read but is acked).
        self._changelogs: frozenset[str] = frozenset()  # as of the last assignment
        self._gaps = GapGuard(
            lambda tp: (
                tp.topic not in self._changelogs and self.app.topics.acks_enabled_for(tp.topic)
            )
        )
        idle_ms, idle_after_s = self.app.conf.alto_idle_fetch
        self._pacer = FetchPacer(
            lambda: getattr(self._thread, "_consumer", None),
            self.app.conf.alto_fetch_max_wait_ms,
            idle_ms,
            idle_after_s,
        )

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

    # Faust tracks a read offset per partition and uses it to skip work: it drops a fetched
    # record below it, and counts the offsets between it and a record further on as
    # processed (`_add_gap`). Around rebalances that offset is wrong (it lags or leads the
    # fetch position: `alto chaos` logged `jumped from offset 35 to 45 (committed: 42)`), and
    # `alto chaos --seed 4` lost exactly the records such a jump passed over (alto.requests[6]
    # offsets 48-51). Its commit bookkeeping also treats the committed offset, which is the
    # next record to process, as processed. So here:
    # - no read offsets (`_NoReadOffsets`): every fetched record is handed to its stream, none
    #   is counted as processed unless an agent processed it; a record fetched twice is
    #   processed twice, which every stage tolerates (they are idempotent);
    # - a commit covers only a run of processed offsets that starts at the committed one;
    # - a partition whose record at the committed offset stays unprocessed for
    #   `REREAD_AFTER_S` (a fetch that started past it) is read again from there, at the start
    #   of the next fetch round (`getmany`).

    def _new_offset(self, tp: Any) -> int | None:
        if tp not in self._seeked:
            # Between a rebalance and the seek to the committed offsets, Faust knows no
            # committed offset for a partition and commits the first run of acked offsets
            # wherever it starts. Acks do arrive then (events handled when the rebalance
            # began), and an `alto chaos` run under load lost 69 requests that way: runs
            # such as alto.requests[1] offsets 30-39, passed by a commit from 40 on.
            return None
        committed = self._committed_offset.get(tp)
        if committed is not None:
            acked = self._acked.get(tp) or []
            lowest = min(acked, default=None)
            if lowest is not None and lowest > committed:
                self._stalled(tp, committed)
                return None  # the record at the committed offset is not processed yet
            self._stalled_since.pop(tp, None)
        return super()._new_offset(tp)  # type: ignore[no-any-return]

    def _stalled(self, tp: Any, committed: int) -> None:
        now = time.monotonic()
        since = self._stalled_since.setdefault(tp, now)
        if now - since >= REREAD_AFTER_S:
            self._stalled_since[tp] = now
            self._reread_due[tp] = committed
            metrics.PARTITION_REREADS.inc()
            log.warning(
                "%s: offset %d (committed) still unprocessed after %.0f s while later ones "
                "are: reading the partition again from it",
                tp,
                committed,
                REREAD_AFTER_S,
            )

    async def perform_seek(self) -> None:
        """Seek every assigned partition to its committed offset (Faust), and know where
        each starts: the committed offset, or the partition's first offset where nothing was
        ever committed (Faust leaves those unknown)."""
        await super().perform_seek()
        assigned = set(self.assignment())
        unknown = [tp for tp in assigned if self._committed_offset.get(tp) is None]
        if unknown:
            first = await self.earliest_offsets(*unknown)
            for tp in unknown:
                if (start := first.get(tp)) is not None:
                    self._committed_offset[tp] = start
        self._seeked = set()
        for tp in assigned:
            if (committed := self._committed_offset.get(tp)) is not None:
                self._seeked.add(tp)
                self._gaps.expect(tp, committed)
        self._gate_due = True

    async def _seek(self, partition: Any, offset: int) -> None:
        self._gaps.expect(partition, offset)
        # Faust's `_seek` moves the aiokafka consumer from this thread, while its fetcher
        # runs on the consumer thread's loop: the fetcher could be between looking a
        # partition's buffered records up and reading them when the seek drops them (a
        # KeyError ends the fetcher routine: the worker fetches nothing more), and the
        # wake-up the seek sends its loop is not thread-safe (the seek applied up to 0.2 s
        # late). `seek_wait` runs it on the consumer thread.
        await self._thread.seek_wait({partition: offset})

    # A new generation's ingest (`alto.agents.handover`): its consumer fetches nothing of the
    # requests topic until the handoff file exists, then starts each partition at the file's
    # offset, which counts as committed (the records below it are the old generation's).
    # Until then nothing can reach any of its topics, so it fetches every
    # `GATED_FETCH_WAIT_MS` rather than at the busy wait: the 10-20 s a new generation waits
    # beside the old one cost the broker a second set of busy consumers otherwise.

    def _gate(self) -> Any:
        return getattr(self.app.conf, "alto_ingest_gate", None)

    async def _getmany(self, active_partitions: Any, timeout: float) -> Any:
        gate = self._gate()
        if gate is not None and gate.gated and active_partitions:
            active_partitions = {tp for tp in active_partitions if tp.topic != gate.topic}
            if not active_partitions:
                await asyncio.sleep(timeout)
                return {}
        records, gaps = self._gaps.screen(await super()._getmany(active_partitions, timeout))
        if gaps:  # read again from the records the fetch skipped (in the consumer's thread)
            metrics.FETCH_GAPS.inc(len(gaps))
            try:
                await self.seek_wait(gaps)
            except Exception as exc:  # revoked meanwhile: the next owner starts at the commit
                log.warning("seek back to %s failed (%r): the stall re-read covers it", gaps, exc)
        return records

    async def _open_gate(self) -> None:
        gate = self._gate()
        if gate is None or gate.gated:
            return
        self._gate_due = False
        for tp in self.assignment():
            committed = self._committed_offset.get(tp)
            if tp.topic != gate.topic or committed is None:
                continue
            start = gate.start(tp.partition, committed)
            if start > committed:
                await self.seek(tp, start)
                self._committed_offset[tp] = start
        if not self._gate_opened:  # requests come now: back to the configured wait at once
            self._gate_opened = True
            self._pacer.saw(1)

    async def on_partitions_revoked(self, revoked: set[Any]) -> None:
        await super().on_partitions_revoked(revoked)
        self._seeked.difference_update(revoked)
        self._gaps.forget(revoked)

    async def on_partitions_assigned(self, assigned: set[Any], generation_id: int = 0) -> None:
        self.app.conf.alto_lease.confirm()  # the group just counted us in
        self._changelogs = frozenset(self.app.tables.changelog_topics)  # before recovery
        await super().on_partitions_assigned(assigned, generation_id)

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[Any, Any]]:
        if self._gate_due:
            await self._open_gate()
        gate = self._gate()
        gated = gate is not None and gate.gated
        if gated:  # nothing reaches this generation before its ingest opens: fetch rarely
            self._pacer.hold(GATED_FETCH_WAIT_MS)
        if self._reread_due:
            due, self._reread_due = self._reread_due, {}
            assigned = self.assignment()
            for tp, start in due.items():
                if tp in assigned:  # else its next owner starts at the committed offset
                    await self.seek(tp, start)
        records = 0
        async for item in super().getmany(timeout):
            records += 1
            yield item
        if not gated:
            self._pacer.saw(records)


class _NoReadOffsets(dict[Any, Any]):
    """Faust's read offsets, always unknown: Faust then neither drops a fetched record nor
    counts skipped offsets as processed (see `_Consumer`)."""

    def __getitem__(self, key: Any) -> None:
        return None

    def __setitem__(self, key: Any, value: Any) -> None:
        return None

    def get(self, key: Any, default: Any = None) -> Any:
        return default

    def update(self, *args: Any, **kwargs: Any) -> None:
        return None


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

    async def flush(self) -> None:
        """Hand the tables' coalesced changelog writes to the buffer, then drain it: every
        flush (before each offset commit, at a revocation) makes the state of what was
        processed durable (`alto.agents.stores.CoalescedTable`). A buffer that has stopped
        takes nothing: those writes' inputs are not committed and are read again."""
        if self.buffer.state == "running":
            flush_changelogs(self.app.tables.values())
        await super().flush()


class _Transport(Transport):
    Consumer = _Consumer
    Producer = _Producer


class FaustApp(faust.App):
    """A Faust app whose consumer fetch wait is `fetch_max_wait_ms` (milliseconds; paced to
    `idle_fetch_wait_ms` after `idle_after_s` without records, `alto.kafka.FetchPacer`) and whose
    table recovery checks end offsets by reading (`client_settings`: how to connect)."""

    def __init__(
        self,
        *args: Any,
        fetch_max_wait_ms: int = 10,
        idle_fetch_wait_ms: int = 0,
        idle_after_s: float = 10.0,
        client_settings: Mapping[str, Any] | None = None,
        legs: LegTrace | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.conf.alto_fetch_max_wait_ms = fetch_max_wait_ms
        self.conf.alto_idle_fetch = (idle_fetch_wait_ms, idle_after_s)  # `FetchPacer`
        # aiokafka connection settings for checking end offsets (None: trust the broker).
        self.conf.alto_client_settings = client_settings
        # When the group last confirmed this worker a member (`alto.agents.lease`).
        self.conf.alto_lease = MembershipLease(self.conf.broker_session_timeout)
        self.conf.alto_legs = legs  # each hop received, cut into parts (`alto.legs`)

    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)
