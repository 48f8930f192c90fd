"""Where a hop spends its time, record by record (opt-in: the setting
`ALTO_METRICS__LEG_TRACE_DIR`, used by `alto bench legs`).

The critical path (`alto.streams.critical_path`) charges a hop into a Faust worker as one
`transit` segment (an upstream span's end until the worker handed the input to its stream),
and an LM call's trip to its worker as part of `lm_dispatch`. This trace cuts a hop into the
parts it is made of, each measured on this host's wall clock:

- `send`: the quantum emitted (its span's end; an LM call: when it was placed) until the
  producer stamped the record (its CreateTime, taken when the producer appended it);
- `late`: until the fetch that returned it was sent, where that was after the record: the
  consumer was not fetching when the record arrived (aiokafka sends no fetch for a broker
  while records it returned are not yet taken, and the worker may be busy);
- `hold`: from the later of the record and that fetch until the fetch's answer: the embedded
  broker answers a fetch that found nothing at once only when its wait is over;
- `handoff`: the answer until the records were handed over (Faust: by its consumer thread to
  the app's loop; an LM worker: by its `getmany`);
- `queue`: until the record's stream took it (Faust hands a fetch's records on one by one,
  between the events the worker is processing; nil in an LM worker, which has no stream);
- `start`: until the stage's handler began (an LM worker: until it began serving the call,
  after waiting for one of its `max_inflight` slots).

Rows are JSON lines, one file per worker process. Writing them costs a few microseconds a
record; the setting is for measurements, not for production.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from alto.config import AltoConfig

PARTS = ("send", "late", "hold", "handoff", "queue", "start")
# Records handed over but not yet received (a revoked partition's never are): kept at most.
MAX_PENDING = 100_000


def _now_ms() -> float:
    return time.time() * 1000


class LegTrace:
    """One worker's trace. In a Faust worker `watch` (the consumer, before it starts) and
    `handed` run on the consumer's thread, `received` on the app's; an LM worker calls
    `watch`, `handed` and `served` on its one loop."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._out = path.open("a", buffering=1)  # line by line: a worker may be killed
        self._answered: dict[Any, tuple[float, float]] = {}  # tp -> (fetch sent, answered)
        self._pending: dict[tuple[str, int, int], tuple[float, float, float]] = {}

    @classmethod
    def for_config(cls, config: AltoConfig) -> LegTrace | None:
        """This worker's trace, where the setting asks for one."""
        folder = config.metrics.leg_trace_dir
        if folder is None:
            return None
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in config.worker_id)
        return cls(folder / f"{name}.legs.jsonl")

    def watch(self, consumer: Any) -> None:
        """Stamp each fetch of `consumer` (an `AIOKafkaConsumer` not yet started) that brings
        records: when it was sent and answered. aiokafka keeps both to itself, so its fetcher's
        request handler is wrapped once `start` has built the fetcher."""
        start = consumer.start

        async def start_watching() -> None:
            await start()
            fetcher = consumer._fetcher
            handle = fetcher._proc_fetch_request

            async def stamped(assignment: Any, node_id: int, request: Any) -> bool:
                sent = _now_ms()
                before = set(fetcher._records)
                added = bool(await handle(assignment, node_id, request))
                if added:
                    answered = _now_ms()
                    for tp in fetcher._records:
                        if tp not in before:
                            self._answered[tp] = (sent, answered)
                return added

            fetcher._proc_fetch_request = stamped

        consumer.start = start_watching

    def handed(self, records: Mapping[Any, Iterable[Any]]) -> None:
        """The consumer thread hands `records` (by partition) to the app."""
        if not records:
            return
        now = _now_ms()
        if len(self._pending) > MAX_PENDING:
            self._pending.clear()
        for tp, batch in records.items():
            # Kept until the partition's next fetch: aiokafka sends none while records of the
            # last are still to be handed over, which may take several calls.
            sent, answered = self._answered.get(tp, (now, now))
            for record in batch:
                self._pending[(tp.topic, tp.partition, record.offset)] = (sent, answered, now)

    def received(self, message: Any, request_id: str, emitted_ms: int, started_ms: float) -> None:
        """A Faust stage's handler began (`started_ms`) on `message`, a quantum of
        `request_id` emitted at `emitted_ms`."""
        if message.time_in is None or not message.timestamp:
            return
        taken = started_ms - (time.monotonic() - message.time_in) * 1000
        tp = (message.topic, message.partition, message.offset)
        self._row(tp, message.timestamp * 1000, taken, request_id, emitted_ms, started_ms)

    def served(self, record: Any, request_id: str, emitted_ms: int, started_ms: float) -> None:
        """An LM worker began serving (`started_ms`) `record` (an aiokafka record: no stream
        between the fetch and the worker, so `queue` is nil and `start` is the wait for a
        slot), a call placed at `emitted_ms`."""
        if record.timestamp is None or record.timestamp < 0:
            return
        tp = (record.topic, record.partition, record.offset)
        self._row(tp, float(record.timestamp), None, request_id, emitted_ms, started_ms)

    def _row(
        self,
        at: tuple[str, int, int],
        produced_ms: float,
        taken_ms: float | None,
        request_id: str,
        emitted_ms: int,
        started_ms: float,
    ) -> None:
        stamps = self._pending.pop(at, None)
        if stamps is None:  # not handed over by a watched fetch
            return
        taken = stamps[2] if taken_ms is None else taken_ms
        row = [at[0], request_id, emitted_ms, produced_ms, *stamps, taken, started_ms]
        self._out.write(json.dumps(row) + "\n")

    def close(self) -> None:
        self._out.close()


def parts_of(row: list[Any]) -> dict[str, float]:
    """A row cut into `PARTS` (ms); they add up to the quantum's emission until its handler."""
    _, _, emitted, produced, sent, answered, handed, time_in, started = row
    fetched_from = max(sent, produced)
    return {
        "send": produced - emitted,
        "late": fetched_from - produced,
        "hold": answered - fetched_from,
        "handoff": handed - answered,
        "queue": time_in - handed,
        "start": started - time_in,
    }


def read_rows(folder: Path) -> list[list[Any]]:
    rows = []
    for path in sorted(folder.glob("*.legs.jsonl")):
        with path.open() as lines:
            rows += [json.loads(line) for line in lines if line.strip()]
    return rows
