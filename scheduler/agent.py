"""The scheduler's I/O shell: a live view of LM instances from `alto.lm.status`, and placement.

Each worker running the scheduler role reads *every* partition of the status topic (manual
assignment, no consumer group), so every replica sees every instance; LM calls themselves
are spread over replicas by the consumer group on `alto.lm.requests`.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka import AIOKafkaConsumer, TopicPartition

from alto.config import AltoConfig
from alto.errors import BadInputError
from scheduler.policy import ClusterState, make_policy
from schemas.messages import LMRequest, LMStatus

log = logging.getLogger(__name__)


def _now_ms() -> int:
    return int(time.time() * 1000)


class SchedulerCore:
    def __init__(self, config: AltoConfig) -> None:
        self.config = config
        self.state = ClusterState(heartbeat_timeout_ms=int(config.lm_status_interval_s * 5000))
        self.policy = make_policy("round_robin")
        self._changed = asyncio.Event()

    async def watch_status(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.config.bootstrap_servers,
            enable_auto_commit=False,
            fetch_max_wait_ms=self.config.fetch_max_wait_ms,
        )
        await consumer.start()
        try:
            topic = self.config.lm_status_topic
            parts = None
            while not parts:
                parts = consumer.partitions_for_topic(topic)
                if not parts:
                    await consumer._client.force_metadata_update()  # topic may be new
                    await asyncio.sleep(0.5)
            tps = [TopicPartition(topic, p) for p in parts]
            consumer.assign(tps)
            # Recent history is enough: a live instance reports every interval.
            ends = await consumer.end_offsets(tps)
            for tp in tps:
                consumer.seek(tp, max(0, ends[tp] - 50))
            while True:
                batch = await consumer.getmany(timeout_ms=1000)
                for records in batch.values():
                    for record in records:
                        try:
                            status = LMStatus.decode(record.value)
                        except BadInputError as exc:
                            log.warning("undecodable LM status ignored: %s", exc)
                            continue
                        self.policy.observe(self.state, status)
                        self._changed.set()
        finally:
            await consumer.stop()

    async def place(self, request: LMRequest) -> int:
        """An instance for `request`; waits while no LM instance is live."""
        while (instance := self.policy.decide(self.state, request, _now_ms())) is None:
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=1.0)
            except TimeoutError:
                pass
        return instance
