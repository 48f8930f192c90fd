"""Our Faust transport against the real broker: a producer flush leaves nothing behind.

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

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from alto.agents.transport import FaustApp

# How long each buffered message takes to reach the client: a loaded event loop or a client
# applying back-pressure, well past the 0.1 s after which Faust's flush gave up.
MOVE_S = 0.4


async def _flush_with_slow_buffer(bootstrap: str) -> tuple[int, list[float], float]:
    """(messages put, moments each reached the client, moment flush returned)."""
    name = f"flush-{uuid.uuid4().hex[:6]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
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
