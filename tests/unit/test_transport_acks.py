"""Our Faust consumer counts as processed only what a stream processed.

Faust's stream skips a message it reads while a rebalance has suspended the flow, or one
fetched in an earlier generation, and then acks it anyway (`faust/streams.py`). An ack that
lands after the revocation goes into the partition's next assignment, and Faust commits the
first run of acked offsets without checking where it starts: past records no agent had
processed. Those were lost at the next restart or hand-over (`alto chaos`, issue 17)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from faust.types import TP
from faust.types.tuples import ConsumerMessage

from agents.transport import FaustApp

pytestmark = pytest.mark.unit


def _consumer_of(topic_name: str) -> object:
    app = FaustApp("acks", broker="kafka://127.0.0.1:9", store="memory://")
    app.topics._acking_topics.add(topic_name)  # as an agent's subscription makes it
    return app.consumer


def _message(offset: int, *, processed: bool) -> ConsumerMessage:
    """A message as the consumer makes it (untracked); a stream tracks the ones it hands to
    its agent, and skips the others."""
    message = ConsumerMessage("in", 0, offset, 0.0, None, None, b"k", b"v", None, tp=TP("in", 0))
    assert not message.tracked
    message.tracked = processed
    return message


def test_a_message_the_stream_skipped_is_not_counted_as_processed() -> None:
    consumer = _consumer_of("in")
    assert consumer.ack(_message(5, processed=False)) is False  # type: ignore[attr-defined]
    assert not consumer._acked[TP("in", 0)]  # type: ignore[attr-defined]


def test_a_processed_message_is() -> None:
    consumer = _consumer_of("in")
    assert consumer.ack(_message(6, processed=True)) is True  # type: ignore[attr-defined]
    assert list(consumer._acked[TP("in", 0)]) == [6]  # type: ignore[attr-defined]


def _offsets_consumer() -> Any:
    consumer: Any = _consumer_of("in")
    seeks: list[tuple[TP, int]] = []

    async def seek(tp: TP, offset: int) -> None:  # the fetcher's seek, recorded
        seeks.append((tp, offset))
        consumer._read_offset[tp] = offset

    consumer.seek = seek
    consumer.assignment = lambda: {TP("in", 0)}
    consumer.seeks = seeks
    return consumer


def _ack(consumer: Any, *offsets: int) -> None:
    for offset in offsets:
        assert consumer.ack(_message(offset, processed=True))


def test_a_commit_starts_at_the_committed_offset() -> None:
    """Faust would commit 24 here: it treats the committed offset (the next record to
    process) as already processed."""
    consumer = _offsets_consumer()
    tp = TP("in", 0)
    consumer._committed_offset[tp] = 20
    _ack(consumer, 21, 22, 23)
    assert consumer._new_offset(tp) is None
    _ack(consumer, 20)
    assert consumer._new_offset(tp) == 24


def test_a_fetch_gap_above_the_committed_offset_is_read_again_not_counted() -> None:
    consumer = _offsets_consumer()
    tp = TP("in", 0)
    consumer._committed_offset[tp] = 41
    consumer._read_offset[tp] = 41

    async def fetch_jumps_to_47() -> None:
        await consumer._add_gap(tp, 42, 47)
        consumer._read_offset[tp] = 47  # the fetch loop, after handing 47 to the stream
        await asyncio.gather(*consumer._rereads)

    asyncio.run(fetch_jumps_to_47())
    _ack(consumer, 47)
    assert consumer._new_offset(tp) is None, "41-46 were never processed"
    assert consumer.seeks == [(tp, 41)]  # read again from the committed offset
    _ack(consumer, 41, 42, 43, 44, 45, 46)
    assert consumer._new_offset(tp) == 48


def test_the_same_gap_after_a_re_read_is_a_hole_and_counts() -> None:
    consumer = _offsets_consumer()
    tp = TP("in", 0)
    consumer._committed_offset[tp] = 10
    consumer._read_offset[tp] = 10

    async def twice() -> None:
        for _ in range(2):
            await consumer._add_gap(tp, 11, 15)
            consumer._read_offset[tp] = 15
            await asyncio.gather(*consumer._rereads)

    asyncio.run(twice())
    _ack(consumer, 15)
    assert consumer.seeks == [(tp, 10)]
    assert consumer._new_offset(tp) == 16
