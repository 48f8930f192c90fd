"""The stage processors' view of Faust tables: an aggregator's table whose changelog writes
are coalesced per commit, one partition's keys of it, and the sink's memory of emitted
results (whose changelog is the results topic)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, MutableMapping
from typing import Any

import faust

from alto import metrics
from alto.config import AltoConfig
from alto.errors import BadInputError
from alto.schemas.messages import PipelineResult
from alto.streams.outputs import now_ms


class CoalescedTable(faust.Table):  # type: ignore[misc]
    """A Faust table that writes a changed key to its changelog once per producer flush, with
    its value at that moment, rather than once per update (Kafka Streams' record cache does
    the same per commit interval). An aggregator's node is updated by every quantum it
    gathers (a sentence's words, a claim's passages) and its whole state, trace included, was
    written each time: a soak's `sentence_stats` changelog held 16 MB in 5,949 records where
    its input topic held 1.7 MB.

    Correctness rests on when the producer is flushed (`flush_changelogs`, called by the
    producer's `flush`): before every offset commit (Faust computes the offsets first, from
    events already processed, whose writes are therefore pending), after a revocation has
    waited for the events in hand and before the partitions move, and at shutdown. So a
    committed input's state is on the changelog before its offset, as before; what an
    unflushed write loses on a crash is the state of inputs not committed, which are read
    again (every stage is idempotent). Values are serialized at the flush: the latest wins."""

    def __post_init__(self) -> None:
        super().__post_init__()
        # (partition, key) -> (value, value serializer); None with "raw" is a tombstone.
        self._pending: dict[tuple[int | None, Any], tuple[Any, Any]] = {}

    def on_key_set(self, key: Any, value: Any) -> None:
        self._defer(self.partition_for_key(key), key, value, None)
        self._sensor_on_set(self, key, value)

    def on_key_del(self, key: Any) -> None:
        self._defer(self.partition_for_key(key), key, None, "raw")
        self._sensor_on_del(self, key)

    def send_changelog(  # type: ignore[override]
        self,
        partition: int | None,
        key: Any,
        value: Any,
        key_serializer: Any = None,
        value_serializer: Any = None,
    ) -> None:
        """A write from outside an event (the state sweep's tombstones and markers), deferred
        like the rest: there is no message to return until the flush."""
        self._defer(partition, key, value, value_serializer)

    def _defer(self, partition: int | None, key: Any, value: Any, serializer: Any) -> None:
        if (partition, key) in self._pending:
            metrics.CHANGELOG_COALESCED.labels(self.name).inc()
        self._pending[(partition, key)] = (value, serializer)

    def flush_changelog(self) -> int:
        """Hand every pending write to the producer (its buffer); returns how many."""
        pending, self._pending = self._pending, {}
        if pending:
            metrics.CHANGELOG_WRITES.labels(self.name).inc(len(pending))
        for (partition, key), (value, serializer) in pending.items():
            super().send_changelog(partition, key, value, value_serializer=serializer)
        return len(pending)


def aggregate_table(app: Any, name: str, config: AltoConfig) -> Any:
    """An aggregating stage's table (JSON keys and values), coalesced unless
    `state.coalesce_changelog` is off."""
    options: dict[str, Any] = {
        "default": None,
        "partitions": config.kafka.partitions,
        "schema": faust.Schema(key_type=str, key_serializer="json", value_serializer="json"),
    }
    if not config.state.coalesce_changelog:
        return app.Table(name, **options)
    return app.tables.add(CoalescedTable(app, name=name, beacon=app.tables.beacon, **options))


def flush_changelogs(tables: Iterable[Any]) -> int:
    """Flush the pending changelog writes of every `CoalescedTable` among `tables`."""
    return sum(t.flush_changelog() for t in tables if isinstance(t, CoalescedTable))


class PartitionStore(MutableMapping[str, Any]):
    """An aggregator's table as the processor sees it while handling one event: every state
    it writes records the partition it belongs to (`"p"`), so that a sweep, which runs
    outside any event, can write the key's tombstone to the right changelog partition."""

    def __init__(self, table: Any, partition: int) -> None:
        self.table = table
        self.partition = partition

    def __getitem__(self, key: str) -> Any:
        return self.table[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if isinstance(value, dict):
            value["p"] = self.partition
        self.table[key] = value

    def __delitem__(self, key: str) -> None:
        del self.table[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.table)

    def __len__(self) -> int:
        return len(self.table)

    def __contains__(self, key: object) -> bool:
        return key in self.table


class ResultsTable(faust.Table):  # type: ignore[misc]
    """The results table, whose changelog is the results topic: recovery keeps only the
    results emitted within `retention_ms` (by each record's own timestamp; 0 keeps all).

    A worker that recovers the table (every new generation's does, at its start) reads the
    results topic from its start, and the topic is a contract topic that nothing trims. The
    state sweep forgets old results afterwards (`ResultsStore.forget_older_than`), but the
    process had already held the whole history once: a 30-minute `alto soak` (5 rotations,
    7,663 results on the topic) ended with each new generation's workers at +11% RSS over
    the first ones', growing with every result ever written."""

    retention_ms = 0

    def apply_changelog_batch(self, batch: Iterable[Any]) -> None:
        if self.retention_ms > 0:
            oldest_s = (now_ms() - self.retention_ms) / 1000
            batch = [e for e in batch if _stamped_s(e) >= oldest_s]
        super().apply_changelog_batch(batch)


def results_table(app: Any, topic: Any, config: AltoConfig) -> Any:
    """The sink's results table over the results topic `topic` (raw bytes)."""
    table = ResultsTable(
        app,
        name="results",
        beacon=app.tables.beacon,
        default=None,
        partitions=config.kafka.partitions,
        schema=faust.Schema(
            key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
        ),
        changelog_topic=topic,
    )
    table.retention_ms = round(config.state.results_retention_s * 1000)
    return app.tables.add(table)


def _stamped_s(event: Any) -> float:
    """A changelog record's timestamp (s); infinity where it has none (kept)."""
    stamp = event.message.timestamp
    return math.inf if stamp is None or stamp < 0 else float(stamp)


class ResultsStore:
    """Request id -> result, over the table whose changelog is the results topic."""

    def __init__(self, table: Any) -> None:
        self.table = table
        self.first_seen: dict[bytes, int] = {}  # key -> when the result was emitted (ms)

    def forget_older_than(self, now: int, retention_ms: int) -> int:
        """Drop results emitted more than `retention_ms` ago from memory (not from the
        results topic, which is the contract: no tombstone goes there). Returns how many. A
        result's age is its own (`completed_at_ms`), not the time this worker first saw it:
        a worker that recovered the table from the results topic (every new generation's
        does) would otherwise hold the topic's whole history for another retention period."""
        data = self.table.data
        seen = self.first_seen
        for key in data.keys():
            if key not in seen:
                seen[key] = _emitted_at(data.get(key), now)
        old = [k for k, at in seen.items() if now - at >= retention_ms or k not in data]
        for key in old:
            data.pop(key, None)
            del seen[key]
        return len(old)

    def __contains__(self, request_id: object) -> bool:
        return isinstance(request_id, str) and request_id.encode() in self.table

    def __setitem__(self, request_id: str, result: Any) -> None:
        self.table[request_id.encode()] = result.encode()


def _emitted_at(value: Any, default: int) -> int:
    """When a stored result was emitted (its `completed_at_ms`); `default` for one that
    does not decode."""
    try:
        return PipelineResult.decode(value).completed_at_ms
    except (BadInputError, TypeError):
        return default
