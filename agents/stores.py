"""The stage processors' view of Faust tables: one partition's keys of an aggregator's
table, and the sink's memory of emitted results (whose changelog is the results topic)."""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any

from alto.errors import BadInputError
from alto.schemas.messages import PipelineResult


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
