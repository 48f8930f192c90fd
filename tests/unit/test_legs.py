"""The hop trace (`alto.legs`): a record's stamps from the fetch that brought it to
the handler that took it, and the parts they cut a hop into."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from faust.types import TP

from alto.bench.legs import summary
from alto.legs import PARTS, LegTrace, parts_of, read_rows


@dataclass
class _Record:
    offset: int


@dataclass
class _Message:
    topic: str
    partition: int
    offset: int
    timestamp: float  # seconds, as Faust gives a record's CreateTime
    time_in: float  # monotonic, as Faust's monitor stamps it


class _Fetcher:
    """Stands in for aiokafka's: a fetch answer adds buffered records per partition."""

    def __init__(self, tp: TP) -> None:
        self.tp = tp
        self._records: dict[TP, Any] = {}

    async def _proc_fetch_request(self, assignment: Any, node_id: int, request: Any) -> bool:
        await asyncio.sleep(0.02)  # the broker holds the fetch
        if request == "data":
            self._records[self.tp] = object()
            return True
        return False


class _Consumer:
    def __init__(self, tp: TP) -> None:
        self.tp = tp
        self._fetcher: _Fetcher | None = None

    async def start(self) -> None:
        self._fetcher = _Fetcher(self.tp)


def test_a_row_is_cut_into_parts_that_add_up_to_the_hop() -> None:
    # topic, request, emitted, produced, fetch sent, answered, handed, taken, started (ms)
    row = ["alto.x", "r-1", 1000.0, 1001.0, 999.0, 1009.0, 1010.0, 1013.0, 1013.5]
    parts = parts_of(row)
    assert parts == {
        "send": 1.0,
        "late": 0.0,  # the fetch was in flight when the record came: all of it is hold
        "hold": 8.0,
        "handoff": 1.0,
        "queue": 3.0,
        "start": 0.5,
    }
    late = parts_of(["alto.x", "r-1", 1000.0, 1001.0, 1004.0, 1006.0, 1006.0, 1006.0, 1006.0])
    assert late["late"] == 3.0 and late["hold"] == 2.0  # a fetch sent only after the record
    assert sum(parts.values()) == row[-1] - row[2]


def _fetched(path: Path, tp: TP, *answers: str) -> LegTrace:
    """A trace watching a consumer whose fetches get `answers` ("data" or "nothing")."""
    trace = LegTrace(path)
    consumer = _Consumer(tp)
    trace.watch(consumer)

    async def fetch() -> None:
        await consumer.start()
        assert consumer._fetcher is not None
        for answer in answers:
            await consumer._fetcher._proc_fetch_request(None, 0, answer)
            assert (tp in trace._answered) == (answer == "data")  # only fetches that bring any

    asyncio.run(fetch())
    return trace


def test_a_fetched_record_is_traced_from_its_fetch_to_its_handler(tmp_path: Path) -> None:
    tp = TP("alto.x", 1)
    produced_s = time.time()
    trace = _fetched(tmp_path / "w.legs.jsonl", tp, "nothing", "data")
    trace.handed({tp: [_Record(7)]})
    started_ms = time.time() * 1000 + 2
    message = _Message("alto.x", 1, 7, produced_s, time.monotonic())
    trace.received(message, "r-1", int(produced_s * 1000) - 1, started_ms)
    trace.received(_Message("alto.x", 1, 8, produced_s, time.monotonic()), "r-1", 0, started_ms)
    trace.close()

    rows = read_rows(tmp_path)
    assert len(rows) == 1  # offset 8 was never handed over: nothing to cut
    parts = parts_of(rows[0])
    assert parts["hold"] >= 15  # the fetch held about 20 ms after the record
    assert all(parts[p] >= -1 for p in PARTS)  # CreateTime is whole milliseconds
    stats = summary(rows)
    assert set(stats) == {*PARTS, "leg"}
    assert stats["leg"]["p50_ms"] == round(sum(parts.values()), 2)


def test_the_bench_reports_every_part_and_each_topic() -> None:
    from alto.bench.legs import by_topic, table

    rows = [
        ["alto.g1.factool.join", "legs-0~streaming", 0.0, 1.0, 0.0, 9.0, 9.5, 11.0, 11.2],
        ["alto.g1.factool.join", "legs-1~streaming", 0.0, 0.0, 0.0, 3.0, 3.0, 4.0, 4.0],
        ["alto.g1.factool.report", "legs-0~streaming", 0.0, 0.0, 2.0, 6.0, 6.0, 6.0, 6.0],
    ]
    lines = table(summary(rows))
    assert [line.split(" | ")[0] for line in lines[2:]] == [f"| {p}" for p in (*PARTS, "leg")]
    assert by_topic(rows) == {
        "join": {"records": 2, "leg_p50_ms": 7.6},  # legs of 11.2 and 4.0 ms
        "report": {"records": 1, "leg_p50_ms": 6.0},
    }


@dataclass
class _CallRecord:
    """An aiokafka record, as an LM worker takes it (CreateTime in milliseconds)."""

    topic: str
    partition: int
    offset: int
    timestamp: int


def test_an_lm_call_is_traced_from_its_fetch_to_its_serving(tmp_path: Path) -> None:
    tp = TP("alto.lm.work", 0)
    placed_ms = int(time.time() * 1000)
    trace = _fetched(tmp_path / "lm-0.legs.jsonl", tp, "data")
    record = _CallRecord("alto.lm.work", 0, 3, placed_ms)
    trace.handed({tp: [record]})
    trace.served(record, "r-2", placed_ms, time.time() * 1000 + 1)
    trace.close()

    (row,) = read_rows(tmp_path)
    parts = parts_of(row)
    assert parts["queue"] == 0.0  # no stream between the fetch and the worker
    assert parts["hold"] >= 15 and parts["start"] >= 1
