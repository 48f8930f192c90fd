"""Our Faust transport against the real broker: a producer flush leaves nothing behind, the
membership lease follows the group's heartbeats, and a fetch that skips a record not yet
visible is read again from it at once.

Faust commits a consumer's offsets right after `producer.flush()`. Table updates reach the
client through Faust's producer buffer; Faust's own flush of that buffer returns after 0.1 s
without progress, whatever is still in it, so offsets could be committed before the state
updates their events made (the loss under `alto chaos` and a worker SIGKILL, issue 17).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from alto.agents.lease import MembershipLease
from alto.agents.transport import FaustApp
from alto.config import AltoConfig
from alto.fetch_gaps import GapGuard
from alto.infra.client import TopicReader

# How long each buffered message takes to reach the client: a loaded event loop or a client
# applying back-pressure, well past the 0.1 s after which Faust's flush gave up.
MOVE_S = 0.4


async def _one_partition_topic(bootstrap: str, name: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()


async def _flush_with_slow_buffer(bootstrap: str) -> tuple[int, list[float], float]:
    """(messages put, moments each reached the client, moment flush returned)."""
    name = f"flush-{uuid.uuid4().hex[:6]}"
    await _one_partition_topic(bootstrap, name)
    app = FaustApp(f"app-{name}", broker=f"kafka://{bootstrap}", store="memory://")
    topic = app.topic(name, key_type=bytes, value_type=bytes, internal=True)
    handed: list[float] = []
    publish = topic.publish_message

    async def slow_publish(fut: Any, wait: bool = False) -> Any:
        await asyncio.sleep(MOVE_S)
        out = await publish(fut, wait=wait)
        handed.append(time.monotonic())
        return out

    topic.publish_message = slow_publish  # type: ignore[method-assign]
    producer = app.producer
    await producer.start()
    try:
        put = 3
        for i in range(put):
            topic.send_soon(key=f"k{i}".encode(), value=b"state update")
        await producer.flush()
        flushed = time.monotonic()
    finally:
        await producer.stop()
    return put, handed, flushed


def test_a_flush_returns_only_once_the_buffer_is_with_the_client(bootstrap_servers: str) -> None:
    put, handed, flushed = asyncio.run(_flush_with_slow_buffer(bootstrap_servers))
    assert len(handed) == put, f"flush returned with {put - len(handed)} of {put} still buffered"
    assert max(handed) <= flushed


async def _lease_through_a_stall(bootstrap: str) -> tuple[bool, bool, bool]:
    """(confirmed by a heartbeat after start, live right after a stall past the session
    timeout, confirmed again afterwards) for a real consumer in a group."""
    name = f"lease-{uuid.uuid4().hex[:6]}"
    await _one_partition_topic(bootstrap, name)
    session_s = 2.0
    lease = MembershipLease(session_s)
    consumer = AIOKafkaConsumer(
        name,
        bootstrap_servers=bootstrap,
        group_id=name,
        session_timeout_ms=int(session_s * 1000),
        heartbeat_interval_ms=100,
    )
    lease.watch(consumer)
    started = time.monotonic()
    await consumer.start()
    try:
        await _until(lambda: lease.confirmed_at > started, "a heartbeat confirms the lease")
        time.sleep(session_s + 0.5)  # the fault: the whole process stalls past its session
        live_after_stall = lease.live()
        woke = time.monotonic()
        await _until(lambda: lease.confirmed_at > woke, "the lease is confirmed again")
        return True, live_after_stall, lease.live()
    finally:
        await consumer.stop()


async def _until(condition: Any, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.02)


def test_heartbeats_confirm_the_membership_lease_and_a_stall_lapses_it(
    bootstrap_servers: str,
) -> None:
    """The lease reads aiokafka's heartbeats (a private method it wraps): against the real
    broker a heartbeat confirms it, a stall past the session timeout lapses it, and the
    group's next confirmation (a heartbeat, or a rejoin's) renews it."""
    confirmed, live_after_stall, live_again = asyncio.run(_lease_through_a_stall(bootstrap_servers))
    assert confirmed
    assert not live_after_stall
    assert live_again


# Concurrent producers to one partition: the embedded broker then shows a later record before
# an earlier one now and then (5 of 12,000 in a probe; README, reliability item 6).
PRODUCERS, EACH = 4, 3000
TOTAL = PRODUCERS * EACH


async def _produce_concurrently(bootstrap: str, topic: str) -> None:
    async def produce() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
        await producer.start()
        try:
            for _ in range(EACH):
                await producer.send_and_wait(topic, b"x" * 100, partition=0)
        finally:
            await producer.stop()

    await asyncio.gather(*(produce() for _ in range(PRODUCERS)))


async def _aiokafka_reads_live(bootstrap: str) -> list[int]:
    """The offsets an aiokafka consumer screened by `GapGuard` hands on, in order, while
    4 producers write (Faust's consumer, the LM worker and `follow` read this way)."""
    name = f"gaps-{uuid.uuid4().hex[:6]}"
    await _one_partition_topic(bootstrap, name)
    tp = TopicPartition(name, 0)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, fetch_max_wait_ms=10, enable_auto_commit=False
    )
    await consumer.start()
    consumer.assign([tp])
    consumer.seek(tp, 0)
    gaps = GapGuard()
    gaps.expect(tp, 0)
    handed: list[int] = []

    async def read() -> None:
        deadline = time.monotonic() + 60
        while len(handed) < TOTAL and time.monotonic() < deadline:
            kept, seek = gaps.screen(await consumer.getmany(tp, timeout_ms=200))
            handed.extend(r.offset for r in kept.get(tp, []))
            for part, offset in seek.items():
                consumer.seek(part, offset)

    try:
        reader = asyncio.create_task(read())
        await _produce_concurrently(bootstrap, name)
        await reader
    finally:
        await consumer.stop()
    return handed


async def _topic_reader_reads_live(config: AltoConfig) -> list[int]:
    """The offsets our client's `TopicReader` (confluent-kafka) yields while 4 producers
    write (results, dead letters, the benchmarks' readers)."""
    bootstrap = config.kafka.bootstrap_servers
    name = f"gaps-{uuid.uuid4().hex[:6]}"
    await _one_partition_topic(bootstrap, name)
    reader = TopicReader(config, name)
    handed: list[int] = []

    def read() -> None:
        deadline = time.monotonic() + 60
        while len(handed) < TOTAL and time.monotonic() < deadline:
            handed.extend(msg.offset() for msg in reader.messages(0.5))

    try:
        reading = asyncio.create_task(asyncio.to_thread(read))
        await _produce_concurrently(bootstrap, name)
        await reading
    finally:
        reader.close()
    return handed


def _assert_all_live(handed: list[int]) -> None:
    skipped = sorted(set(range(TOTAL)) - set(handed))
    assert not skipped, f"never read live: offsets {skipped[:10]}"
    assert handed == list(range(TOTAL))


def test_a_fetch_that_skips_a_record_is_read_again_from_it(bootstrap_servers: str) -> None:
    """Every record reaches the reader live and in order: without the guard the broker's
    early records moved the position past the missing one, which no fetch returned again."""
    _assert_all_live(asyncio.run(_aiokafka_reads_live(bootstrap_servers)))


def test_the_clients_topic_reader_reads_every_record_live(alto_config: AltoConfig) -> None:
    _assert_all_live(asyncio.run(_topic_reader_reads_live(alto_config)))
