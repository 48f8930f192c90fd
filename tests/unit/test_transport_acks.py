"""Our Faust consumer counts as processed only what a stream processed.

Faust's stream skips a message it reads while a rebalance has suspended the flow, or one
fetched in an earlier generation, and then acks it anyway (`faust/streams.py`). An ack that
lands after the revocation goes into the partition's next assignment, and Faust commits the
first run of acked offsets without checking where it starts: past records no agent had
processed, lost at the next restart or hand-over. (A hole found by reading Faust; no chaos
run has logged such an ack yet.)"""

from __future__ import annotations

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
