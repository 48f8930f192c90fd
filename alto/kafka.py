"""How every process reaches Kafka (foundation layer): client settings for confluent-kafka and
aiokafka (security included), idempotent topic creation with partition counts, and a reader
that follows every partition of a topic."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import AsyncGenerator, Iterable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from alto.config import AltoConfig
from alto.errors import BrokerError
from alto.fetch_gaps import GapGuard

log = logging.getLogger(__name__)


def client_settings(config: AltoConfig) -> dict[str, str | int | float | bool]:
    """librdkafka settings for our admin client and plain producers."""
    sec = config.kafka.security
    settings: dict[str, str | int | float | bool] = {
        "bootstrap.servers": config.kafka.bootstrap_servers
    }
    if sec.protocol != "PLAINTEXT":
        settings["security.protocol"] = sec.protocol
        if sec.sasl_mechanism:
            settings["sasl.mechanism"] = sec.sasl_mechanism
        if sec.sasl_username:
            settings["sasl.username"] = sec.sasl_username
        if sec.sasl_password:
            settings["sasl.password"] = sec.sasl_password.get_secret_value()
        if sec.ssl_cafile:
            settings["ssl.ca.location"] = sec.ssl_cafile
    return settings


def aiokafka_settings(config: AltoConfig) -> dict[str, Any]:
    """Connection settings for our aiokafka clients (bootstrap servers plus SASL/SSL), the
    counterpart of `client_settings`: every Kafka client we open gets the same security."""
    sec = config.kafka.security
    settings: dict[str, Any] = {"bootstrap_servers": config.kafka.bootstrap_servers}
    if sec.protocol == "PLAINTEXT":
        return settings
    settings["security_protocol"] = sec.protocol
    if sec.protocol in ("SSL", "SASL_SSL"):
        settings["ssl_context"] = ssl.create_default_context(cafile=sec.ssl_cafile)
    if sec.protocol.startswith("SASL"):
        settings["sasl_mechanism"] = sec.sasl_mechanism or "PLAIN"
        settings["sasl_plain_username"] = sec.sasl_username
        if sec.sasl_password is not None:
            settings["sasl_plain_password"] = sec.sasl_password.get_secret_value()
    return settings


def append_only(config: AltoConfig, topic: str) -> bool:
    """Whether `topic`'s offsets run without holes, so that a fetch skipping one is the
    broker's race (`alto.fetch_gaps`): not for compacted topics (ours, and Faust's
    changelogs, which Faust creates compacted)."""
    return topic not in config.compacted_topics and not topic.endswith("-changelog")


# The fetch wait of a consumer that only watches a topic (status reports, table entries,
# finished results) on a broker that answers a fetch as soon as data arrives.
WATCH_FETCH_WAIT_MS = 1000
# ... and on one that holds every fetch for its whole wait (Tansu without its front): there
# the wait delays what the watcher sees.
WATCH_FETCH_WAIT_HELD_MS = 250


def watch_fetch_wait_ms(config: AltoConfig) -> int:
    """How long a watcher's fetch may wait. Where a fetch is answered when a record arrives
    (Apache Kafka; the embedded broker behind its long-poll front, `kafka.long_poll`) the
    wait costs a watcher nothing and sets only how often it polls: a status topic written
    once a second kept each scheduler replica's watcher at 4 fetches a second at 250 ms,
    the largest share of an idle stack's fetches."""
    k = config.kafka
    held = WATCH_FETCH_WAIT_MS if k.long_poll else WATCH_FETCH_WAIT_HELD_MS
    return max(k.fetch_max_wait_ms, held)


async def follow(
    config: AltoConfig, topic: str, *, tail: int | None, fetch_wait_ms: int
) -> AsyncGenerator[ConsumerRecord[bytes, bytes], None]:
    """Every record of every partition of `topic`, forever, by manual assignment (no group):
    from `tail` records before each partition's end (0: only new ones; None: all). Waits for
    the topic to exist. Use it under `contextlib.aclosing`, so the consumer stops with it."""
    consumer = AIOKafkaConsumer(
        **aiokafka_settings(config), enable_auto_commit=False, fetch_max_wait_ms=fetch_wait_ms
    )
    await consumer.start()
    try:
        parts = None
        while not parts:
            parts = consumer.partitions_for_topic(topic)
            if not parts:
                await consumer._client.force_metadata_update()  # topic may be new
                await asyncio.sleep(0.5)
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        # a fetch may skip a record the broker does not show yet
        gaps = GapGuard(lambda tp: append_only(config, tp.topic))
        if tail is None:
            await consumer.seek_to_beginning(*tps)
        else:
            ends = await consumer.end_offsets(tps)
            for tp in tps:
                consumer.seek(tp, max(0, ends[tp] - tail))  # gaps learns where from the fetch
        k = config.kafka
        pacer = FetchPacer(consumer, fetch_wait_ms, k.idle_fetch_wait_ms, k.idle_after_s)
        while True:
            batch, skipped = gaps.screen(await consumer.getmany(timeout_ms=1000))
            for tp, offset in skipped.items():  # read again from the skipped record
                consumer.seek(tp, offset)
            pacer.saw(sum(map(len, batch.values())))
            for records in batch.values():
                for record in records:
                    yield record
    finally:
        await consumer.stop()


def ensure_topics(
    config: AltoConfig,
    topics: Mapping[str, int] | Iterable[str],
    *,
    timeout_s: float = 30.0,
) -> dict[str, int]:
    """Create the topics that do not exist yet; returns name -> partition count.

    `topics` maps names to partition counts (a plain list uses `config.kafka.partitions`).
    An existing topic with a different partition count is an error: keyed routing
    (and so aggregation) depends on it.
    """
    wanted = (
        dict(topics)
        if isinstance(topics, Mapping)
        else dict.fromkeys(topics, config.kafka.partitions)
    )
    admin = AdminClient(client_settings(config))
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            existing = admin.list_topics(timeout=5).topics
            break
        except KafkaException as exc:
            if time.monotonic() > deadline:
                raise BrokerError(f"cannot reach {config.kafka.bootstrap_servers}: {exc}") from exc
            time.sleep(0.5)
    compacted = {"cleanup.policy": "compact"}
    missing = [
        NewTopic(
            name,
            num_partitions=n,
            replication_factor=config.kafka.replication_factor,
            config=compacted if name in config.compacted_topics else {},
        )
        for name, n in wanted.items()
        if name not in existing
    ]
    if missing:
        for name, future in admin.create_topics(missing, operation_timeout=timeout_s).items():
            try:
                future.result(timeout=timeout_s)
                log.info("created topic %s", name)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise BrokerError(f"cannot create topic {name}: {exc}") from exc
    # Metadata can lag creation; wait until every topic shows its partitions.
    while True:
        meta = admin.list_topics(timeout=5).topics
        counts = {name: len(meta[name].partitions) for name in wanted if name in meta}
        if len(counts) == len(wanted) and all(counts[n] > 0 for n in wanted):
            break
        if time.monotonic() > deadline:
            raise BrokerError(
                f"topics not visible after {timeout_s:.0f} s: {sorted(set(wanted) - set(counts))}"
            )
        time.sleep(0.2)
    wrong = {n: (counts[n], wanted[n]) for n in wanted if counts[n] != wanted[n]}
    if wrong:
        raise BrokerError(f"topics exist with other partition counts (have, want): {wrong}")
    return counts


class FetchPacer:
    """Paces one aiokafka consumer's fetches: the configured wait (`fetch_max_wait_ms`) while
    records come; after each further `idle_after_s` without one the wait doubles, up to
    `idle_fetch_wait_ms`; the first record brings it back. The embedded broker holds every
    fetch for its whole wait, so the wait is at once a hop's latency floor and, idle, 1000 /
    wait fetches a second per consumer, each costing the broker in proportion to the
    partitions it names. Paced, an idle stack fetches about once a second per consumer, and
    the first record after an idle spell waits at most one fetch at the wait then reached
    (per consumer on its path): 20 ms after 10 s of silence, 40 ms after 20 s, the maximum
    after about a minute. A steady stream never leaves the configured wait. On a broker
    that answers as soon as data arrives (Apache Kafka) pacing costs nothing.

    `consumer` is the `AIOKafkaConsumer` or a callable returning it (Faust's runs in its own
    thread and may be replaced); its fetcher reads the wait whenever it builds a request."""

    def __init__(self, consumer: Any, busy_ms: int, idle_ms: int, idle_after_s: float) -> None:
        self.busy_ms = busy_ms
        self.idle_ms = idle_ms
        self.idle_after_s = idle_after_s
        self._consumer = consumer
        self._last_record = time.monotonic()
        self.wait_ms = busy_ms  # as last set

    @classmethod
    def for_config(cls, config: AltoConfig, consumer: Any) -> FetchPacer:
        k = config.kafka
        return cls(consumer, k.fetch_max_wait_ms, k.idle_fetch_wait_ms, k.idle_after_s)

    @property
    def enabled(self) -> bool:
        return self.idle_ms > self.busy_ms

    @property
    def idle(self) -> bool:
        return self.wait_ms > self.busy_ms

    def saw(self, records: int, now: float | None = None) -> None:
        """Call after every poll with how many records it returned (`now`: monotonic s)."""
        if not self.enabled:
            return
        now = time.monotonic() if now is None else now
        if records:
            self._last_record = now
            wait = self.busy_ms
        else:
            spells = int((now - self._last_record) / self.idle_after_s)
            wait = min(self.idle_ms, self.busy_ms << min(spells, 16))
        if wait != self.wait_ms:
            self._set(wait)

    def hold(self, wait_ms: int) -> None:
        """Fetch at `wait_ms` (at least the configured wait) until the next `saw`: for a
        consumer that knows no record can come yet (a new generation before its handoff,
        `alto.agents.handover`); its `saw` with a record brings it back."""
        wait = max(wait_ms, self.busy_ms)
        if self.enabled and wait != self.wait_ms:
            self._set(wait)

    def _set(self, wait_ms: int) -> None:
        consumer = self._consumer() if callable(self._consumer) else self._consumer
        fetcher = getattr(consumer, "_fetcher", None)
        if fetcher is None:  # not started yet: nothing to pace
            return
        fetcher._fetch_max_wait_ms = wait_ms
        self.wait_ms = wait_ms
