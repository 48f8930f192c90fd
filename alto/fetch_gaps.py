"""Offset gaps in a fetch, repaired at once: read the partition again from the missing
record (foundation layer: every consumer of ours uses it).

The embedded broker (Tansu 0.6) can answer a fetch with a record whose offset is past one
that is not visible yet, when several producers write to the partition at once (README,
reliability item 6). A probe on a bare broker (4 producers x 3,000 single-record batches to
one partition, a consumer reading it live at a 10 ms fetch wait) saw 5 such gaps in 12,000
records; the consumer's position moved past each missing record and never came back to it.
Every stage topic of ours has several producers per partition, so a worker met the same:
the record at its committed offset stayed unprocessed while later ones were processed, and
only the transport's stall re-read (`REREAD_AFTER_S`, 10 s) read it again, a 10 s stall of
whatever request it belonged to. With a seek back to the missing offset at the gap, the same
probe read every record live, each gap at the first seek.

`GapGuard` keeps, per partition, the offset the next fetched record should have (the one
after the last record handed on, or where the consumer last sought). `screen` hands on a
fetch's records up to a gap and returns where to seek; the records from the gap on are read
again by the next fetch. A gap that persists through `seeks` seek-backs in a row and for
`patience_s` is no race (a compacted or truncated log has real holes): it is passed, logged,
and left to the stall re-read. Only topics the caller watches are screened (append-only
ones). The patience is in time as well as in seek-backs because a seek-back's fetch can come
back within a millisecond (the long-poll front answers at once where records are waiting):
five of them could all fall inside the moment the missing record takes to become visible (a
precaution: not seen in a run)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

log = logging.getLogger(__name__)

# Seek-backs to one missing offset, and seconds since the first, before the gap is taken as
# a real hole in the log.
GAP_SEEKS = 5
GAP_PATIENCE_S = 0.5


class GapGuard:
    """Per partition, the offset the next fetched record should have (see the module)."""

    def __init__(
        self,
        watched: Callable[[Any], bool] = lambda tp: True,
        seeks: int = GAP_SEEKS,
        offset_of: Callable[[Any], int] = lambda record: int(record.offset),
        patience_s: float = GAP_PATIENCE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._watched = watched
        self._seeks = seeks
        self._patience_s = patience_s
        self._clock = clock
        self._offset = offset_of  # aiokafka's records have `.offset`, confluent's `.offset()`
        self._next: dict[Any, int] = {}
        # tp -> (missing offset, seek-backs, when the first was)
        self._tries: dict[Any, tuple[int, int, float]] = {}

    def expect(self, tp: Any, offset: int) -> None:
        """The consumer sought `tp` to `offset`: its next record should have that offset."""
        self._next[tp] = offset

    def forget(self, tps: Iterable[Any]) -> None:
        """Partitions revoked: nothing is expected of them until they are sought again."""
        for tp in tps:
            self._next.pop(tp, None)
            self._tries.pop(tp, None)

    def expected(self, tp: Any) -> int | None:
        return self._next.get(tp)

    def screen(
        self, records: Mapping[Any, Sequence[Any]]
    ) -> tuple[dict[Any, Sequence[Any]], dict[Any, int]]:
        """The records to hand on (each partition's up to its first gap) and, per partition
        with a gap, the offset to seek back to."""
        kept: dict[Any, Sequence[Any]] = {}
        seek: dict[Any, int] = {}
        for tp, batch in records.items():
            if not self._watched(tp):
                kept[tp] = batch
                continue
            gap = self._first_gap(tp, batch)
            if gap is None:
                kept[tp] = batch
                if batch:  # any hole before it is filled (or passed)
                    self._next[tp] = self._offset(batch[-1]) + 1
                    self._tries.pop(tp, None)
                continue
            cut, missing = gap
            kept[tp] = batch[:cut]
            seek[tp] = self._next[tp] = missing
        if seek:
            log.info("fetch skipped records not yet visible, reading again from them: %s", seek)
        return kept, seek

    def _first_gap(self, tp: Any, batch: Sequence[Any]) -> tuple[int, int] | None:
        """Where the batch skips the offset it should have next: (index, missing offset)."""
        want = self._next.get(tp)
        if not batch:
            return None
        first, last = self._offset(batch[0]), self._offset(batch[-1])
        if (want is None or first == want) and last - first == len(batch) - 1:
            return None  # the usual fetch: contiguous from the expected offset
        for i, record in enumerate(batch):
            offset = self._offset(record)
            if want is not None and offset > want:
                now = self._clock()
                missing, tries, since = self._tries.get(tp, (want, 0, now))
                if missing != want:
                    tries, since = 0, now
                if tries < self._seeks or now - since < self._patience_s:
                    self._tries[tp] = (want, tries + 1, since)
                    return i, want
                log.warning(
                    "%s: offset %d still missing after %d seek-backs in %.2f s (record %d is "
                    "there): passing it; the stall re-read reads it if it appears",
                    tp,
                    want,
                    tries,
                    now - since,
                    offset,
                )
                self._tries.pop(tp, None)
            want = offset + 1
        return None
