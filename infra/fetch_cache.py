"""The long-poll front's copy of the newest records of each partition, so that it answers a
fetch for records it has just relayed itself instead of asking Tansu to read them again.

Why. Under load most fetches the front sends Tansu are fetches it sent before and woke when
a produce landed: Tansu reads every partition the fetch names once more, at a cost that grows
with the batches a partition holds (README, "What the broker is asked to do"). Each of those
records went through the front a moment earlier, in a produce Tansu has acknowledged.

What is kept. Per partition: the offset after its last record (`end`), its log start, and
the record batches of acknowledged produces from `first` to `end`, contiguous, each with the
base offset Tansu gave it (the producer sends 0; the base offset lies outside the batch's
CRC, so the bytes are otherwise those Tansu stores). A partition is known only once a fetch
answered by Tansu has told the front its high watermark. At most `PARTITION_BYTES` a partition
and `TOTAL_BYTES` in all are kept, the least recently written partitions' first.

When it answers. Only with records: when every partition a fetch names is known, its offset
lies within what is kept (or at `end`), and at least one has a record. A fetch with nothing
to read (`holds`) the front holds itself until a produce brings records or its wait ends;
then Tansu reads it once, so a partition the front misjudged costs at most one wait, never
a stall. Anything the front cannot account for forgets the partition until Tansu tells it
again: a produce that failed, was not acknowledged (acks=0) or could not be read; a high
watermark from Tansu that disagrees with `end` while no produce to it is in flight; a
transactional batch. A request that creates or deletes topics or records forgets them all.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from alto.infra import kafka_wire as wire

PARTITION_BYTES = 1 << 20
TOTAL_BYTES = 64 << 20
# Batches kept beyond a gap in a partition (produces answered out of order) before the
# partition is forgotten.
MAX_AHEAD = 64
# Requests after which no partition is trusted: CreateTopics, DeleteTopics, DeleteRecords,
# CreatePartitions.
FORGET_ALL = frozenset({19, 20, 21, 37})


def _servable(fetch: wire.FetchRequest) -> bool:
    """A fetch the front can answer: a version whose response `wire.fetch_response` writes,
    outside any fetch session (each fetch names all it wants)."""
    return 5 <= fetch.version <= wire.MAX_FETCH_VERSION and fetch.session_epoch == -1


@dataclass
class _Log:
    first: int
    end: int
    log_start: int
    batches: collections.deque[tuple[int, int, bytes]] = field(
        default_factory=collections.deque
    )  # (base offset, records, bytes), contiguous from `first` to `end`
    ahead: dict[int, tuple[int, bytes]] = field(default_factory=dict)  # base -> (records, bytes)
    size: int = 0

    def append(self, base: int, count: int, batch: bytes) -> int:
        """Keep an acknowledged batch; returns the bytes kept in addition."""
        if base < self.end:
            return 0  # a duplicate acknowledged again (an idempotent producer's retry)
        if base > self.end:  # an earlier produce is still unanswered
            self.ahead[base] = (count, batch)
            return 0
        added = 0
        while True:
            self.batches.append((base, count, batch))
            self.end = base + count
            added += len(batch)
            nxt = self.ahead.pop(self.end, None)
            if nxt is None:
                break
            base, (count, batch) = self.end, nxt
        self.size += added
        return added

    def trim(self, limit: int) -> int:
        """Drop the oldest batches over `limit` bytes; returns the bytes dropped."""
        dropped = 0
        while self.size > limit and self.batches:
            base, count, batch = self.batches.popleft()
            self.size -= len(batch)
            dropped += len(batch)
            self.first = base + count
        return dropped

    def read(self, offset: int, max_bytes: int) -> list[bytes] | None:
        """The batches from the one holding `offset`, up to `max_bytes` (at least one); []
        at `end`; None when `offset` is outside what is kept."""
        if offset == self.end:
            return []
        if not self.first <= offset < self.end:
            return None
        # From the newest batch back to the one holding `offset` (a consumer reads near the
        # end, so this walks few batches), then forward within `max_bytes`.
        tail: list[bytes] = []
        for base, _count, batch in reversed(self.batches):
            tail.append(batch)
            if base <= offset:
                break
        out: list[bytes] = []
        size = 0
        for batch in reversed(tail):
            if out and size + len(batch) > max_bytes:
                break
            out.append(batch)
            size += len(batch)
        return out


class FetchCache:
    """See the module's docstring. Not thread-safe: the front's event loop owns it."""

    def __init__(
        self, partition_bytes: int = PARTITION_BYTES, total_bytes: int = TOTAL_BYTES
    ) -> None:
        self.partition_bytes = partition_bytes
        self.total_bytes = total_bytes
        self._logs: collections.OrderedDict[wire.Key, _Log] = collections.OrderedDict()
        self._inflight: collections.Counter[wire.Key] = collections.Counter()
        self._acked: collections.Counter[wire.Key] = collections.Counter()
        self._size = 0
        self.served: collections.Counter[int] = collections.Counter()  # answered here, by version

    @property
    def size(self) -> int:
        return self._size

    def forget(self, keys: list[wire.Key] | None = None) -> None:
        """Forget `keys` (every partition when None)."""
        for k in list(self._logs) if keys is None else keys:
            log = self._logs.pop(k, None)
            if log is not None:
                self._size -= log.size

    # produces -----------------------------------------------------------------------------

    def producing(self, written: list[tuple[wire.Key, bytes | None]]) -> None:
        for k, _ in written:
            self._inflight[k] += 1

    def produced(
        self,
        written: list[tuple[wire.Key, bytes | None]],
        answer: dict[wire.Key, tuple[int, int]] | None,
    ) -> None:
        """A produce's outcome: its partitions' records and Tansu's answer (None: unknown,
        the produce failed or was not answered)."""
        for k, records in written:
            self._inflight[k] -= 1
            if self._inflight[k] <= 0:
                del self._inflight[k]
            self._acked[k] += 1
            outcome = None if answer is None else answer.get(k)
            log = self._logs.get(k)
            if log is None:
                continue
            if outcome is None or outcome[0] != 0 or records is None:
                self.forget([k])
                continue
            try:
                batches = wire.record_batches(records)
            except wire.WireError:
                self.forget([k])
                continue
            base = outcome[1]
            for start, size, count in batches:
                self._size += log.append(
                    base, count, wire.with_base_offset(records[start : start + size], base)
                )
                base += count
            self._logs.move_to_end(k)
            self._size -= log.trim(self.partition_bytes)
            if len(log.ahead) > MAX_AHEAD:  # answers that never came: trust Tansu again
                self.forget([k])
        while self._size > self.total_bytes and self._logs:
            self.forget([next(iter(self._logs))])

    # fetches ------------------------------------------------------------------------------

    def mark(self, keys: tuple[wire.Key, ...]) -> tuple[int, ...]:
        """Acknowledged produces to `keys` so far: taken as a fetch goes to Tansu, so that
        `learn` skips a partition written while the fetch was out (its answer may predate
        the produce the front has already counted, or follow it)."""
        return tuple(self._acked[k] for k in keys)

    def learn(self, fetch: wire.FetchRequest, reply: bytes, mark: tuple[int, ...]) -> None:
        """What a fetch Tansu answered says of its partitions' ends."""
        try:
            states = wire.fetch_response_states(reply, fetch.version)
        except wire.WireError:
            return
        for k, before in zip(fetch.partitions, mark, strict=True):
            state = states.get(k)
            if state is None or self._acked[k] != before:
                continue
            if state.error != 0:
                self.forget([k])
                continue
            log = self._logs.get(k)
            if log is not None and log.end == state.high_watermark:
                log.log_start = max(log.log_start, state.log_start)
            elif log is None or not self._inflight[k]:
                # unknown, or ending elsewhere than the front thought: start again from here
                self.forget([k])
                high = state.high_watermark
                self._logs[k] = _Log(high, high, state.log_start)

    def holds(self, fetch: wire.FetchRequest) -> bool:
        """Whether every partition `fetch` names is known and read to its end: nothing to
        answer until a produce to one of them completes."""
        if not _servable(fetch):
            return False
        for k, offset in zip(fetch.partitions, fetch.offsets, strict=True):
            log = self._logs.get(k)
            if log is None or offset != log.end:
                return False
        return True

    def answer(self, fetch: wire.FetchRequest) -> bytes | None:
        """A Fetch response frame for `fetch` from what is kept, or None (see the module's
        docstring for when)."""
        if not _servable(fetch):
            return None
        parts: list[tuple[wire.Key, int, int, list[bytes]]] = []
        budget = fetch.max_bytes
        for k, offset, limit in zip(
            fetch.partitions, fetch.offsets, fetch.partition_max_bytes, strict=True
        ):
            log = self._logs.get(k)
            batches = None if log is None else log.read(offset, min(limit, budget))
            if log is None or batches is None:
                return None
            if budget <= 0:
                batches = []  # the response is full: this partition's records next time
            budget -= sum(map(len, batches))
            parts.append((k, log.end, log.log_start, batches))
        if budget == fetch.max_bytes:
            return None  # no records: Tansu holds the fetch until some come
        self.served[fetch.version] += 1
        return wire.fetch_response(fetch, parts)
