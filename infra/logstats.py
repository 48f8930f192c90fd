"""What a broker stores, batch by batch: the measure behind the embedded broker's cost.

Tansu 0.6's memory engine keeps one object per produced batch and lists every object of a
partition on each fetch that returns data (see the design's measured facts), so what makes
its fetches slower over time is the number of *batches* a partition has ever stored, not
records or bytes. `log_stats` reads every partition from its start with raw fetch requests
and counts both (and the bytes of their keys and values). It reads the whole log: a probe for the end of a run or a test, not for a
loop.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiokafka import AIOKafkaClient
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import TopicPartition

from alto.config import AltoConfig
from alto.kafka import aiokafka_settings

FETCH_BYTES = 8 * 2**20
# Tansu answers a fetch with no wait before reading anything: wait a little.
FETCH_WAIT_MS = 5
MAX_WAIT_MS = 2000


@dataclass(frozen=True)
class PartitionLog:
    topic: str
    partition: int
    batches: int
    records: int
    bytes: int = 0  # keys and values of the records (what the broker holds, less overhead)


async def _partition_log(client: AIOKafkaClient, topic: str, partition: int) -> PartitionLog:
    node = client.cluster.leader_for_partition(TopicPartition(topic, partition))
    offset, batches, records, size, high = 0, 0, 0, 0, None
    wait_ms = FETCH_WAIT_MS
    while node is not None and (high is None or offset < high):
        request = FetchRequest(
            wait_ms, 1, FETCH_BYTES, 0, [(topic, [(partition, offset, FETCH_BYTES)])]
        )
        response = await client.send(node, request)
        progressed = False
        for _topic, parts in response.topics:
            for _p, error, highwater, *data in parts:
                if error:
                    return PartitionLog(topic, partition, batches, records, size)
                high = highwater
                raw = MemoryRecords(data[-1])
                while raw.has_next():
                    batch = raw.next_batch()
                    if batch is None:
                        break
                    last = None
                    for record in batch:
                        records += 1
                        size += len(record.key or b"") + len(record.value or b"")
                        last = record.offset
                    batches += 1
                    if last is not None and last >= offset:
                        offset, progressed = last + 1, True
        if not progressed:
            # Nothing came back below the highwater: the broker answered before it read
            # (its fetch may take longer than the wait on a long log). Wait longer.
            if wait_ms >= MAX_WAIT_MS:
                break
            wait_ms = min(MAX_WAIT_MS, wait_ms * 10)
    return PartitionLog(topic, partition, batches, records, size)


async def _log_stats(config: AltoConfig, topics: list[str] | None) -> list[PartitionLog]:
    settings = aiokafka_settings(config)
    client = AIOKafkaClient(**settings)
    await client.bootstrap()
    try:
        await client.force_metadata_update()
        names = sorted(topics if topics is not None else client.cluster.topics())
        out = []
        for topic in names:
            for partition in sorted(client.cluster.partitions_for_topic(topic) or ()):
                out.append(await _partition_log(client, topic, partition))
        return out
    finally:
        await client.close()


def log_stats(config: AltoConfig, topics: list[str] | None = None) -> list[PartitionLog]:
    """Batches and records stored in each partition of `topics` (default: every topic)."""
    return asyncio.run(_log_stats(config, topics))
