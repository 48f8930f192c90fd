"""Faust's aiokafka transport with two changes: a configurable fetch wait, and Faust's
partition assignor in every worker.

Faust hard-codes the consumer's `fetch_max_wait_ms` at 1,500 ms. Apache Kafka answers a
fetch as soon as data arrives, so there the value only bounds idle polls; the embedded
broker (Tansu 0.6) holds a fetch for most of that time even when data is waiting, which
measured here as hundreds of ms per hop (`alto bench hop`). We make it a setting.

Faust picks aiokafka's round-robin assignor for a worker with no changelog tables and no
standby replicas (a scheduler-only worker, `ALTO_ROLES=scheduler`). Its group protocol then
differs from its peers' and the broker refuses the whole group (InconsistentGroupProtocol):
no worker gets a partition. Workers of one app must share the assignor, so ours always use
Faust's.
"""

from __future__ import annotations

import asyncio
from typing import Any

import faust
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread, Consumer, Transport


class _ConsumerThread(AIOKafkaConsumerThread):
    def _create_consumer(self, loop: asyncio.AbstractEventLoop) -> Any:
        consumer = super()._create_consumer(loop)
        if not self.app.client_only:
            self._assignor = self.app.assignor
            consumer._partition_assignment_strategy = (self.app.assignor,)
        # Read by AIOKafkaConsumer.start() when it builds its fetcher; set before start.
        consumer._fetch_max_wait_ms = self.app.conf.alto_fetch_max_wait_ms
        return consumer


class _Consumer(Consumer):
    def _new_consumer_thread(self) -> AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _Transport(Transport):
    Consumer = _Consumer


class FaustApp(faust.App):
    """A Faust app whose consumer fetch wait is `fetch_max_wait_ms` (milliseconds)."""

    def __init__(self, *args: Any, fetch_max_wait_ms: int = 10, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conf.alto_fetch_max_wait_ms = fetch_max_wait_ms

    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)
