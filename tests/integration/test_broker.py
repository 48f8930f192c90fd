"""`alto broker` serves any Kafka client; it stops cleanly on SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from alto.agents.transport import true_end_offsets
from alto.errors import BrokerError
from alto.infra.broker import free_port, wait_for_port
from tests.harness import REPO


async def _new_topic(bootstrap: str, prefix: str, *, partitions: int) -> str:
    """A topic no other test uses, created with plain aiokafka (no code of ours)."""
    topic = f"{prefix}-{uuid.uuid4().hex[:6]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(topic, num_partitions=partitions, replication_factor=1)]
        )
    finally:
        await admin.close()
    return topic


async def _round_trip(bootstrap: str) -> list[tuple[bytes, bytes]]:
    topic = await _new_topic(bootstrap, "independent", partitions=2)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for i in range(10):
            await producer.send_and_wait(topic, f"value-{i}".encode(), key=f"k{i}".encode())
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"g-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        session_timeout_ms=10_000,
        heartbeat_interval_ms=1_000,
    )
    await consumer.start()
    got: list[tuple[bytes, bytes]] = []
    try:
        async with asyncio.timeout(60):
            while len(got) < 10:
                batch = await consumer.getmany(timeout_ms=500)
                got += [(m.key, m.value) for msgs in batch.values() for m in msgs]
    finally:
        await consumer.stop()
    return got


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_plain_aiokafka_client_uses_alto_broker(stop_signal: signal.Signals) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "alto", "broker", "--listen", f"127.0.0.1:{port}"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port("127.0.0.1", port, 30, None)
        got = asyncio.run(_round_trip(f"127.0.0.1:{port}"))
        assert sorted(got) == sorted((f"k{i}".encode(), f"value-{i}".encode()) for i in range(10))
    finally:
        proc.send_signal(stop_signal)
        code = proc.wait(20)
        out = proc.stdout.read().decode() if proc.stdout else ""
        proc.stdout and proc.stdout.close()
    assert code == 0, out
    with pytest.raises(BrokerError):  # nothing listens any more
        wait_for_port("127.0.0.1", port, 0.5, None)


async def _ends_after_batches(bootstrap: str) -> list[tuple[int, int, int]]:
    """(records produced, end offset reported, end offset read) after batches of several
    records each (one produce request per batch)."""
    topic = await _new_topic(bootstrap, "ends", partitions=1)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=100)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await producer.start()
    await consumer.start()
    tp = TopicPartition(topic, 0)
    out, total = [], 0
    try:
        for n in (1, 3, 2, 5):
            sent = [await producer.send(topic, b"x") for _ in range(n)]
            await asyncio.gather(*sent)
            total += n
            reported = (await consumer.end_offsets([tp]))[tp]
            read = (await true_end_offsets({"bootstrap_servers": bootstrap}, {tp: reported}))[tp]
            out.append((total, reported, read))
    finally:
        await producer.stop()
        await consumer.stop()
    return out


def test_end_offsets_are_checked_by_reading(bootstrap_servers: str) -> None:
    """Tansu 0.6 reports the last batch's base offset + 1 as a partition's end (2 after a
    batch at offsets 1-3); Faust's table recovery reads changelogs up to the end it is given,
    so our transport checks it by reading (`alto.agents.transport.true_end_offsets`)."""
    ends = asyncio.run(_ends_after_batches(bootstrap_servers))
    assert [read for _, _, read in ends] == [total for total, _, _ in ends], ends
    print("produced / reported / read:", ends)


async def _probe_while_written(bootstrap: str) -> tuple[list[int], list[int]]:
    """(records acknowledged per partition before the probe, ends the probe read) while a
    writer keeps producing to both partitions every 10 ms."""
    topic = await _new_topic(bootstrap, "growing", partitions=2)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await producer.start()
    await consumer.start()
    tps = [TopicPartition(topic, p) for p in (0, 1)]
    acked = [0, 0]
    stop = asyncio.Event()

    async def write() -> None:
        while not stop.is_set():
            for p in (0, 1):
                await producer.send_and_wait(topic, b"x", partition=p)
                acked[p] += 1
            await asyncio.sleep(0.01)

    writer = asyncio.ensure_future(write())
    try:
        while min(acked) < 50:
            await asyncio.sleep(0.05)
        before = list(acked)
        reported = await consumer.end_offsets(tps)
        # Well under the probe's own limit (PROBE_LIMIT_S): it must end because it caught
        # up with the writer, not because it gave up.
        ends = await asyncio.wait_for(
            true_end_offsets({"bootstrap_servers": bootstrap}, reported), timeout=8.0
        )
    finally:
        stop.set()
        await writer
        await producer.stop()
        await consumer.stop()
    return before, [ends[tp] for tp in tps]


def test_the_end_offset_probe_ends_on_a_partition_that_keeps_growing(
    bootstrap_servers: str,
) -> None:
    """A new generation's worker probed the results topic's ends while the old generation
    kept writing results: the probe waited for two quiet fetches that never came, and the
    worker took 85 s to start. It now stops reading a partition once it has read a record
    written after it began."""
    before, ends = asyncio.run(_probe_while_written(bootstrap_servers))
    assert all(end >= n for end, n in zip(ends, before, strict=True)), (before, ends)


def test_the_broker_memory_bench_writes_what_it_reports() -> None:
    """`alto bench broker` on a small scale: each run on its own embedded broker, every
    cycle's RSS read, the records it counts written (the figures themselves are the
    benchmark's, not asserted here)."""
    from alto.bench.broker import measure

    for run, rotating, kept in (("rotate", 200, 0), ("keep", 0, 20), ("mixed", 200, 20)):
        result = measure(run, cycles=2, records=100)
        assert result["rotating_records"] == rotating and result["kept_records"] == kept, result
        rss = result["rss_mb"]
        assert isinstance(rss, list) and len(rss) == 3 and all(v > 0 for v in rss), result
