"""Our Faust consumer moves a partition's position on the consumer's own thread.

Faust runs the aiokafka consumer, fetcher included, on a thread of its own. Its `seek` calls
aiokafka from the app's thread, where it deletes the partition's buffered records while the
fetcher may be between finding and reading them (`Fetcher._get_actions_per_node`): a
KeyError there ends the fetcher, and the worker fetches nothing more. Found by reading
aiokafka; not seen in a run. The stall re-read and the ingest gate seek this way."""

from __future__ import annotations

import asyncio
from typing import Any

from faust.types import TP

from alto.agents.transport import FaustApp


class _Thread:
    """Stands in for Faust's consumer thread: `seek_wait` is what runs there."""

    def __init__(self) -> None:
        self.on_thread: list[dict[TP, int]] = []

    async def seek_wait(self, partitions: dict[TP, int]) -> None:
        self.on_thread.append(dict(partitions))

    def seek(self, partition: TP, offset: int) -> None:
        raise AssertionError(f"seek of {partition} from the app's thread")


def test_a_seek_runs_on_the_consumer_thread_and_sets_the_gap_expectation() -> None:
    app = FaustApp("seek", broker="kafka://127.0.0.1:9", store="memory://")
    consumer: Any = app.consumer
    thread = _Thread()
    consumer._thread = thread
    tp = TP("alto.requests", 2)

    asyncio.run(consumer.seek(tp, 41))  # as the stall re-read and the ingest gate do

    assert thread.on_thread == [{tp: 41}]
    assert consumer._gaps.expected(tp) == 41  # the next record handed on must be 41
