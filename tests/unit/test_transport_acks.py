"""Our Faust consumer counts as processed only what a stream processed.

Faust's stream skips a message it reads while a rebalance has suspended the flow, or one
fetched in an earlier generation, and then acks it anyway (`faust/streams.py`). An ack that
lands after the revocation goes into the partition's next assignment, and Faust commits the
first run of acked offsets without checking where it starts: past records no agent had
processed, lost at the next restart or hand-over. (A hole found by reading Faust; no chaos
run has logged such an ack yet.)"""

from __future__ import annotations

from typing import Any

import pytest
from faust.types import TP
from faust.types.tuples import ConsumerMessage

from alto.agents.transport import FaustApp


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


def _seeked(consumer: Any, tp: TP, committed: int) -> None:
    """As `perform_seek` leaves a partition after a rebalance: its committed offset known."""
    consumer._committed_offset[tp] = committed
    consumer._seeked.add(tp)


def _ack(consumer: Any, *offsets: int) -> None:
    for offset in offsets:
        assert consumer.ack(_message(offset, processed=True))


def test_no_record_is_dropped_or_counted_by_a_read_offset() -> None:
    """Faust drops a fetched record below its read offset and counts the offsets between
    its read offset and a record further on as processed; ours has none to go by."""
    consumer: Any = _consumer_of("in")
    tp = TP("in", 0)
    consumer._read_offset[tp] = 52  # what Faust's fetch loop writes after each record
    assert consumer._read_offset[tp] is None
    consumer._read_offset.update({tp: 48})  # what Faust's seek to the committed does
    assert consumer._read_offset.get(tp) is None


def test_a_commit_starts_at_the_committed_offset() -> None:
    """Faust would commit 53 here (it treats the committed offset, the next record to
    process, as processed): `alto chaos --seed 4` lost offsets 48-51 that way."""
    consumer: Any = _consumer_of("in")
    tp = TP("in", 0)
    _seeked(consumer, tp, 48)
    _ack(consumer, 49, 50, 51, 52)
    assert consumer._new_offset(tp) is None
    _ack(consumer, 48)
    assert consumer._new_offset(tp) == 53


def test_a_partition_stalled_at_its_committed_offset_is_read_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import alto.agents.transport as transport

    monkeypatch.setattr(transport, "REREAD_AFTER_S", 0.0)
    consumer: Any = _consumer_of("in")
    tp = TP("in", 0)
    _seeked(consumer, tp, 48)
    _ack(consumer, 52)  # a fetch that started past 48
    assert consumer._new_offset(tp) is None
    assert consumer._reread_due == {tp: 48}  # sought back before the next fetch round


def test_nothing_is_committed_before_the_committed_offset_is_known() -> None:
    """After a rebalance Faust forgets the committed offsets until it seeks to them, and in
    between it commits the first run of acked offsets wherever it starts (here 41: an
    `alto chaos` run under load lost alto.requests[1] offsets 30-39 that way)."""
    consumer: Any = _consumer_of("in")
    tp = TP("in", 0)
    _ack(consumer, 34, 35, 36, 37, 38, 39, 40)  # events handled as the rebalance began
    assert consumer._new_offset(tp) is None
    _seeked(consumer, tp, 30)  # the broker's committed offset: 30-33 never processed
    assert consumer._new_offset(tp) is None


def test_a_revoked_partition_is_not_committed_until_seeked_again() -> None:
    import asyncio

    consumer: Any = _consumer_of("in")
    tp = TP("in", 0)
    _seeked(consumer, tp, 10)
    asyncio.run(consumer.on_partitions_revoked({tp}))
    _ack(consumer, 10, 11)
    assert consumer._new_offset(tp) is None
