"""Draining a dead LM instance's partition of `alto.lm.work` through the real broker: the
leader places every unfinished call again and commits past them; another replica places
only the calls it made itself and leaves the partition's offset to the leader."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from alto.config import AltoConfig
from alto.kafka import aiokafka_settings, ensure_topics
from alto.scheduler.agent import SchedulerCore
from alto.schemas.messages import LMRequest
from tests.unit.test_scheduler_core import _call, _Sent, _status

DEAD, LIVE = 0, 1


async def _committed(config: AltoConfig) -> int | None:
    consumer = AIOKafkaConsumer(
        **aiokafka_settings(config), group_id=f"{config.group_id}-lm-{DEAD}"
    )
    await consumer.start()
    try:
        return await consumer.committed(TopicPartition(config.lm_work_topic, DEAD))
    finally:
        await consumer.stop()


def _moved(config: AltoConfig, sent: _Sent) -> list[tuple[str, int | None, int]]:
    out = []
    for topic, _, value, partition in sent:
        if topic == config.lm_work_topic:
            call = LMRequest.decode(value)
            out.append((call.lm_request_id, partition, call.attempt))
    return out


def test_a_replica_drains_only_its_own_calls_and_the_leader_drains_all(
    alto_config: AltoConfig,
) -> None:
    config = alto_config
    ensure_topics(config, {config.lm_work_topic: config.lm.max_instances})

    async def run() -> None:
        producer = AIOKafkaProducer(**aiokafka_settings(config))
        await producer.start()
        try:
            for i in range(3):  # three calls placed on the instance that then died
                call = replace(_call(i), instance=DEAD)
                await producer.send_and_wait(
                    config.lm_work_topic,
                    call.encode(),
                    key=call.request_id.encode(),
                    partition=DEAD,
                )
        finally:
            await producer.stop()

        replica_sent, leader_sent = _Sent(), _Sent()
        replica = SchedulerCore(config, replica_sent, name="s2", is_leader=lambda: False)
        leader = SchedulerCore(config, leader_sent, name="s1", is_leader=lambda: True)
        for core in (replica, leader):
            await core._on_status(_status(LIVE))

        assert await replica.drain(DEAD, only={"c1"}) == 1
        assert _moved(config, replica_sent) == [("c1", LIVE, 1)]
        assert await _committed(config) is None  # the partition's offset is the leader's

        assert await leader.drain(DEAD) == 3
        assert _moved(config, leader_sent) == [("c0", LIVE, 1), ("c1", LIVE, 1), ("c2", LIVE, 1)]
        assert await _committed(config) == 3

        # After the leader's drain a replica's drain starts where it ended: nothing left.
        assert await replica.drain(DEAD, only={"c2"}) == 0

    asyncio.run(run())
