"""The long-poll front (`alto.infra.longpoll`) in front of the real Tansu: a fetch that found
nothing is answered when a record arrives for it, not when its wait ends; it stays answered
when the record lands in a partition the consumer's fetch in flight leaves out; and the
front's broker goes when the front goes.

The consumers here ask for a 60 s wait, so a fetch held until its wait ends fails the
test's 15 s limits by far: what is checked is that the front answers on the produce at all,
not how fast (that is `alto bench legs` and `alto bench hop`)."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid

import psutil
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from alto.infra.broker import EmbeddedBroker

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
