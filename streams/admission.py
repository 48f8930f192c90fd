"""Request admission: a bound on the requests in flight, so that overload fails fast.

Without one, a deployment offered more than it can serve queues the excess on its stage
topics: every request's latency grows without bound, the broker's memory with it, and when
the load drops the system still works through minutes of requests whose clients gave up.
With one, ingest admits a request only while fewer than `limit` requests are in flight; the
rest get an OVERLOADED result at once (milliseconds, not a timeout).

Each ingest worker counts the requests *it* admitted and sees them finish on the results
topic (keys only). Requests are spread over ingest workers by key, so a worker holding a
share s of the requests topic's partitions admits up to ``ceil(limit * s)``: the deployment
as a whole stays near `limit`. A request whose result never shows (its result went to a
worker that died before producing it, then was replayed elsewhere) is forgotten after
`ttl_ms`, so lost bookkeeping cannot shrink capacity for good.

The same bookkeeping gives an end-to-end guarantee: a request admitted `retry_ms` ago with
no result is handed back (`overdue`) to be replayed from its root, once. Every stage is
idempotent (aggregators drop quanta they already folded, the sink emits once), so a replay
can only fill in what went missing. It exists because something did: `alto chaos` once lost
one request in 500 with no fault near it (one stage's outputs for one node never reached
the topic; cause not found). A replay is logged at WARNING and counted.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

Request = TypeVar("Request")

# Answered requests remembered at most (far above what `ttl_ms` holds at any real rate).
MAX_ANSWERED = 200_000


@dataclass
class _Entry(Generic[Request]):
    admitted_at: int
    request: Request | None
    replayed: bool = False


class Admission(Generic[Request]):
    """The requests this ingest worker admitted and has not yet seen a result for."""

    def __init__(self, limit: int, ttl_ms: int, retry_ms: int = 0) -> None:
        if limit < 1:
            raise ValueError(f"the in-flight limit must be at least 1, got {limit}")
        self.limit = limit
        self.ttl_ms = ttl_ms
        self.retry_ms = retry_ms  # 0: never replay
        self.share = 1.0  # of the requests topic's partitions this worker holds
        self._inflight: OrderedDict[str, _Entry[Request]] = OrderedDict()
        # Requests answered in the last `ttl_ms` (by any worker): one read again (a
        # partition re-read, a new generation's first records) is let through uncounted,
        # or it would wait as "in flight" for a result that was already given, and then
        # be replayed for nothing.
        self._answered: OrderedDict[str, int] = OrderedDict()
        self.rejected = 0

    @property
    def capacity(self) -> int:
        return max(1, math.ceil(self.limit * self.share))

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    def admit(self, request_id: str, now_ms: int, request: Request | None = None) -> bool:
        """True if `request_id` may enter (a request read again is admitted again).
        `request` is kept for a replay (`overdue`)."""
        self._expire(now_ms)
        if request_id in self._inflight or request_id in self._answered:
            return True
        if len(self._inflight) >= self.capacity:
            self.rejected += 1
            return False
        self._inflight[request_id] = _Entry(now_ms, request)
        return True

    def overdue(self, now_ms: int) -> list[Request]:
        """Requests admitted at least `retry_ms` ago with no result and not yet replayed;
        each is returned once."""
        if self.retry_ms <= 0:
            return []
        out = []
        for entry in self._inflight.values():
            if now_ms - entry.admitted_at < self.retry_ms:
                break  # admission order: the rest are younger
            if not entry.replayed and entry.request is not None:
                entry.replayed = True
                out.append(entry.request)
        return out

    def finished(self, request_id: str, now_ms: int) -> None:
        """A result for `request_id` was published (by any worker) at `now_ms`."""
        self._inflight.pop(request_id, None)
        self._answered[request_id] = now_ms
        self._answered.move_to_end(request_id)
        while len(self._answered) > MAX_ANSWERED:
            self._answered.popitem(last=False)

    def _expire(self, now_ms: int) -> None:
        while self._answered:
            oldest, at = next(iter(self._answered.items()))
            if now_ms - at < self.ttl_ms:
                break
            del self._answered[oldest]
        while self._inflight:
            oldest, entry = next(iter(self._inflight.items()))
            if now_ms - entry.admitted_at < self.ttl_ms:
                return
            del self._inflight[oldest]
