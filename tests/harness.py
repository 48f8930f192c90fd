"""Test helpers: the broker fixture's backends and fresh per-test configurations."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from alto.config import AltoConfig, load_config, merge
from alto.infra.client import TopicReader
from alto.infra.processes import REPO, WorkerProcess, wait_assigned
from alto.kafka import client_settings

__all__ = [
    "REPO",
    "WorkerProcess",
    "wait_assigned",
    "docker_engine_available",
    "fresh_config",
    "kafka_container",
]


def docker_engine_available() -> bool:
    """True when a Docker engine answers (then testcontainers' Kafka is used)."""
    try:
        import docker  # testcontainers' dependency
    except ImportError:
        return False
    try:
        client = docker.from_env(timeout=3)
        client.ping()
        return True
    except Exception:
        return False


@contextlib.contextmanager
def kafka_container() -> Iterator[str]:
    from testcontainers.kafka import KafkaContainer

    with KafkaContainer().with_kraft() as kafka:
        yield kafka.get_bootstrap_server()


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Let other tasks run until `condition` holds (an assertion error after `timeout_s`)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def wait_committed_to_the_end(config: AltoConfig, topic: str, timeout_s: float = 60.0) -> None:
    """The workers' group commits what it processed: every partition of `topic` committed
    up to its end (our consumer commits only once it knows where a partition starts)."""
    reader = TopicReader(config, topic)
    ends: dict[int, int] = {}
    try:
        for msg in reader.drain_messages():
            ends[msg.partition()] = max(ends.get(msg.partition(), 0), msg.offset() + 1)
    finally:
        reader.close()
    group = Consumer({**client_settings(config), "group.id": config.group_id})
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            parts = [TopicPartition(topic, p) for p in ends]
            committed = {tp.partition: tp.offset for tp in group.committed(parts, timeout=10)}
            if committed == ends or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        group.close()
    assert committed == ends


def fresh_config(bootstrap: str, tmp: Path, **overrides: object) -> AltoConfig:
    """A config with a topic prefix and app id (consumer group) no other test uses."""
    tag = uuid.uuid4().hex[:8]
    values: dict[str, object] = {
        "kafka": {
            "bootstrap_servers": bootstrap,
            "topic_prefix": f"t{tag}.",
            "partitions": 4,
            "session_timeout_s": 6.0,
        },
        "app_id": f"t{tag}",
        "data_dir": tmp / "data",
        "warmup": False,
    }
    return load_config(environ={}, **merge(values, overrides))


# A user's own pipeline module, as README's "Serving your own pipeline" shows it: words and
# letters of a text (tests/unit/test_pipeline_registry.py, tests/integration/test_user_pipeline.py).
USER_PIPELINE_MODULE = """
from alto.streams import Pipeline, combine, count, sum_of


def words(text):
    yield from text.split()


def build():
    pipeline = Pipeline("letters")
    lengths = pipeline.request.fan_out(words).map(len, name="length")
    lengths.aggregate(combine(words=count(), letters=sum_of(int)), name="total")
    return pipeline
"""
