"""The long-poll front (`alto.infra.longpoll`) in front of the real Tansu: a fetch that found
nothing is answered when a record arrives for it, not when its wait ends; it stays answered
when the record lands in a partition the consumer's fetch in flight leaves out; what it
answers from its copy of the records it relayed is what Tansu itself answers; and the
front's broker goes when the front goes.

The consumers here ask for a 60 s wait, so a fetch held until its wait ends fails the
test's 15 s limits by far: what is checked is that the front answers on the produce at all,
not how fast (that is `alto bench legs` and `alto bench hop`)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator

import psutil
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from confluent_kafka import OFFSET_BEGINNING, Consumer
from confluent_kafka import TopicPartition as RdTopicPartition

from alto.infra.broker import (
    EmbeddedBroker,
    free_port,
)
from alto.infra.longpoll import LongPollFront, serving

LONG_WAIT_MS = 60_000
ANSWER_S = 15.0


async def _topic(bootstrap: str, partitions: int) -> str:
    name = f"longpoll-{uuid.uuid4().hex[:6]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()
    return name


async def _round_trips(bootstrap: str, partitions: list[int]) -> list[tuple[int, bytes]]:
    """Produce one record at a time to `partitions` in turn, each read back before the
    next is sent, by a consumer of every partition whose fetches wait up to 60 s."""
    topic = await _topic(bootstrap, 2)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, fetch_max_wait_ms=LONG_WAIT_MS)
    await producer.start()
    await consumer.start()
    tps = [TopicPartition(topic, p) for p in (0, 1)]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    got: list[tuple[int, bytes]] = []
    try:
        for i, partition in enumerate(partitions):
            value = f"r{i}".encode()
            await producer.send_and_wait(topic, value, partition=partition)
            message = await asyncio.wait_for(consumer.getone(), ANSWER_S)
            got.append((message.partition, message.value))
    finally:
        await consumer.stop()
        await producer.stop()
    return got


def test_a_held_fetch_is_answered_when_a_record_arrives() -> None:
    # The same partition twice in a row: the consumer's next fetch, sent while it still
    # held the first record, left that partition out; the front answers that fetch so
    # that the one naming the partition goes out.
    order = [0, 0, 1, 0, 1, 1, 0]
    with EmbeddedBroker(long_poll=True) as broker:
        got = asyncio.run(_round_trips(broker.bootstrap_servers, order))
    assert got == [(p, f"r{i}".encode()) for i, p in enumerate(order)]


async def _stream(bootstrap: str, records: int) -> list[bytes]:
    """Produce `records` one at a time, as fast as each is acknowledged, while a consumer
    whose fetches wait up to 60 s reads them: most of its fetches find nothing yet and are
    woken by the next produce."""
    topic = await _topic(bootstrap, 1)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, fetch_max_wait_ms=LONG_WAIT_MS)
    await producer.start()
    await consumer.start()
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    await consumer.seek_to_beginning(tp)

    async def produce() -> None:
        for i in range(records):
            await producer.send_and_wait(topic, f"r{i}".encode(), partition=0)

    async def consume() -> list[bytes]:
        got: list[bytes] = []
        while len(got) < records:
            batches = await consumer.getmany(timeout_ms=1_000)
            got.extend(m.value for ms in batches.values() for m in ms if m.value is not None)
        return got

    try:
        sending = asyncio.create_task(produce())
        got = await asyncio.wait_for(consume(), ANSWER_S)
        await sending
    finally:
        await consumer.stop()
        await producer.stop()
    return got


def test_fetches_woken_one_after_another_are_all_answered() -> None:
    # Each wake-up sends the fetch again and closes the first one's connection to Tansu, or,
    # within the re-send gap, waits for the answer in flight: either way every record comes,
    # none waits out the 60 s, and the connections dropped leave the front working.
    records = 300
    with EmbeddedBroker(long_poll=True) as broker:
        got = asyncio.run(_stream(broker.bootstrap_servers, records))
    assert got == [f"r{i}".encode() for i in range(records)]


@contextlib.asynccontextmanager
async def _front_in_process() -> AsyncIterator[tuple[LongPollFront, str]]:
    """Tansu on a private port and the front in this process (to read its counters)."""
    public = free_port()
    async with serving("127.0.0.1", public, quiet=True) as (front, _proc):
        yield front, f"127.0.0.1:{public}"


Read = list[tuple[int, int, bytes | None, bytes | None, int, tuple[tuple[str, bytes], ...]]]


async def _read_all(
    bootstrap: str, topic: str, records: int, wait_ms: int, got: Read | None = None
) -> Read:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, fetch_max_wait_ms=wait_ms)
    await consumer.start()
    tps = [TopicPartition(topic, p) for p in range(4)]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    got = [] if got is None else got
    try:
        async with asyncio.timeout(ANSWER_S):  # all of them, or the test fails
            while len(got) < records:
                batches = await consumer.getmany(timeout_ms=1_000)
                for ms in batches.values():
                    got += [
                        (m.partition, m.offset, m.key, m.value, m.timestamp, tuple(m.headers))
                        for m in ms
                    ]
    finally:
        await consumer.stop()
    return sorted(got)


def _read_all_librdkafka(bootstrap: str, topic: str, records: int, wait_ms: int, got: Read) -> Read:
    """As `_read_all`, by librdkafka (Fetch v12, the flexible layout), in a thread."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"t-{uuid.uuid4().hex}",  # required, never joined
            "enable.auto.commit": False,
            "fetch.wait.max.ms": wait_ms,
        }
    )
    consumer.assign([RdTopicPartition(topic, p, OFFSET_BEGINNING) for p in range(4)])
    deadline = time.monotonic() + ANSWER_S  # all of them, or the test fails
    try:
        while len(got) < records and time.monotonic() < deadline:
            for m in consumer.consume(500, timeout=0.5):
                assert m.error() is None, m.error()
                headers = tuple((k, v) for k, v in m.headers() or [])
                got.append(
                    (m.partition(), m.offset(), m.key(), m.value(), m.timestamp()[1], headers)
                )
    finally:
        consumer.close()
    return sorted(got)


async def _copy_and_tansu(records: int) -> tuple[Read, Read, Read, collections.Counter[int]]:
    """Records produced to 4 partitions while two consumers (60 s fetch wait; aiokafka and
    librdkafka) read them through the front's copy; then the same topic read again with the
    copy turned off, from Tansu."""
    async with _front_in_process() as (front, bootstrap):
        topic = await _topic(bootstrap, 4)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
        await producer.start()
        try:
            got: Read = []
            got_rd: Read = []
            reading = asyncio.create_task(_read_all(bootstrap, topic, records, LONG_WAIT_MS, got))
            reading_rd = asyncio.create_task(
                asyncio.to_thread(
                    _read_all_librdkafka, bootstrap, topic, records, LONG_WAIT_MS, got_rd
                )
            )
            first = 8  # produced alone first, until both consumers read them: both are live
            for i in range(records):
                sent = await producer.send(
                    topic,
                    f"v{i}".encode(),
                    key=b"k%d" % i,
                    partition=i * 7 % 4,
                    headers=[("n", b"%d" % i)],
                )
                if i % 5 == 0 or i < first:
                    await sent  # some records alone, some in batches
                if i == first - 1:
                    async with asyncio.timeout(ANSWER_S):
                        while min(len(got), len(got_rd)) < first:
                            await asyncio.sleep(0.01)
            through_copy, through_copy_rd = await reading, await reading_rd
        finally:
            await producer.stop()
        assert front.cache is not None
        served = front.cache.served
        front.cache = None
        from_tansu = await _read_all(bootstrap, topic, records, 100)
    return through_copy, through_copy_rd, from_tansu, served


def test_what_the_front_answers_from_its_copy_is_what_tansu_answers() -> None:
    records = 400
    through_copy, through_copy_rd, from_tansu, served = asyncio.run(_copy_and_tansu(records))
    # The copy answered fetches of both layouts: aiokafka's v11 and librdkafka's v12.
    assert served[11] > 0 and served[12] > 0, served
    assert through_copy == from_tansu
    assert through_copy_rd == from_tansu
    by_partition: dict[int, list[int]] = {}
    for partition, offset, key, value, _, headers in from_tansu:
        by_partition.setdefault(partition, []).append(offset)
        assert value is not None and key == b"k" + value[1:] and headers == (("n", value[1:]),)
    assert sum(map(len, by_partition.values())) == records
    assert all(offsets == list(range(len(offsets))) for offsets in by_partition.values())


def test_the_broker_behind_the_front_ends_with_it() -> None:
    broker = EmbeddedBroker(long_poll=True).start()
    try:
        assert broker.proc is not None
        front = psutil.Process(broker.proc.pid)
        (tansu,) = front.children()
        assert "tansu" in " ".join(tansu.cmdline())
        os.kill(front.pid, signal.SIGKILL)
        front.wait(10)
        tansu.wait(10)  # raises psutil.TimeoutExpired if it lived on
        assert not tansu.is_running()
    finally:
        broker.stop()


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_the_front_stops_its_broker_on_a_signal(stop: signal.Signals) -> None:
    broker = EmbeddedBroker(long_poll=True).start()
    assert broker.proc is not None
    (tansu,) = psutil.Process(broker.proc.pid).children()
    broker.signal(stop)
    assert broker.wait() == 0
    tansu.wait(10)
