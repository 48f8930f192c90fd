"""The long-poll front's copy of the records it relays (`alto.infra.fetch_cache`), driven by
frames another implementation of the protocol builds and reads: aiokafka's record batches,
Produce and Fetch requests and responses. What is checked: the front answers only with
records, only where it knows the whole range a fetch asks for, and what it answers decodes
to the records produced, at the offsets the broker gave them."""

from __future__ import annotations

import io

import pytest
from aiokafka.protocol.api import RequestHeader_v1, RequestHeader_v2
from aiokafka.protocol.fetch import FetchRequest_v11, FetchResponse_v11
from aiokafka.protocol.produce import ProduceRequest_v7, ProduceResponse_v7
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords

from alto.infra import kafka_wire as wire
from alto.infra.fetch_cache import FetchCache
from tests.kafka_v12 import FetchRequestV12, FetchResponseV12

T = "alto.claims"


def _frame(struct: object) -> bytes:
    flexible = isinstance(struct, FetchRequestV12)
    header = (RequestHeader_v2 if flexible else RequestHeader_v1)(
        struct, correlation_id=41, client_id="t", **({"tags": {}} if flexible else {})
    )
    return bytes(header.encode() + struct.encode())  # type: ignore[attr-defined]


def _batch(*values: str) -> bytes:
    builder = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, 1 << 20)
    for i, value in enumerate(values):
        builder.append(i, 1_700_000_000_000 + i, f"k-{value}".encode(), value.encode(), [])
    return bytes(builder.build())


def _produce(partitions: dict[int, bytes]) -> list[tuple[wire.Key, bytes | None]]:
    request = ProduceRequest_v7(None, -1, 30_000, [(T, list(partitions.items()))])
    acks, written = wire.produce_records(_frame(request))
    assert acks == -1
    return written


def _acked(bases: dict[int, int], error: int = 0) -> dict[wire.Key, tuple[int, int]]:
    response = ProduceResponse_v7([(T, [(p, error, b, -1, 0) for p, b in bases.items()])], 0)
    return wire.produce_response(_I32(41) + bytes(response.encode()), 7)


def _I32(value: int) -> bytes:  # noqa: N802
    return value.to_bytes(4, "big", signed=True)


def _fetch(offsets: dict[int, int], max_bytes: int = 1 << 20, v: int = 11) -> wire.FetchRequest:
    if v == 12:
        parts12 = [(p, -1, offset, -1, -1, 1 << 20, {}) for p, offset in offsets.items()]
        request: object = FetchRequestV12(
            -1, 250, 1, max_bytes, 1, 0, -1, [(T, parts12, {})], [], "", {}
        )
    else:
        parts = [(p, -1, offset, -1, 1 << 20) for p, offset in offsets.items()]
        request = FetchRequest_v11(-1, 250, 1, max_bytes, 0, 0, -1, [(T, parts)], [], "")
    return wire.parse_fetch(_frame(request))


def _tansu_answer(highs: dict[int, int], v: int = 11) -> bytes:
    """An empty Fetch response as the broker sends it: each partition's high watermark."""
    if v == 12:
        parts12 = [(p, 0, h, h, 0, [], -1, b"", {}) for p, h in highs.items()]
        return bytes(FetchResponseV12(41, {}, 0, 0, 0, [(T, parts12, {})], {}).encode())
    parts = [(p, 0, h, h, 0, [], -1, b"") for p, h in highs.items()]
    return _I32(41) + bytes(FetchResponse_v11(0, 0, 0, [(T, parts)]).encode())


def _records(frame: bytes, v: int = 11) -> dict[int, list[tuple[int, str]]]:
    """(offset, value) per partition of a Fetch response frame, read by aiokafka (v11) or
    by the v12 layout of `tests.kafka_v12`."""
    assert _I32(41) == frame[:4]  # the request's correlation id
    if v == 12:
        v12 = FetchResponseV12.decode(io.BytesIO(frame))
        assert v12.error_code == 0 and v12.session_id == 0 and v12.tags == {}
        topics: list = [(t, [p[:8] for p in ps]) for t, ps, _tags in v12.responses]
    else:
        topics = FetchResponse_v11.decode(io.BytesIO(frame[4:])).topics
    out: dict[int, list[tuple[int, str]]] = {}
    for topic, partitions in topics:
        assert topic == T
        for index, error, high, stable, _start, _aborted, _replica, data in partitions:
            assert error == 0 and stable == high
            got = out.setdefault(index, [])
            records = MemoryRecords(bytes(data))
            while (batch := records.next_batch()) is not None:
                assert batch.validate_crc()
                got += [(r.offset, r.value.decode()) for r in batch]
    return out


def _known(cache: FetchCache, highs: dict[int, int], v: int = 11) -> None:
    fetch = _fetch(highs, v=v)
    cache.learn(fetch, _tansu_answer(highs, v), cache.mark(fetch.partitions))


def _write(cache: FetchCache, partitions: dict[int, bytes], bases: dict[int, int]) -> None:
    written = _produce(partitions)
    cache.producing(written)
    cache.produced(written, _acked(bases))


@pytest.mark.parametrize("v", [11, 12], ids=["aiokafka-v11", "librdkafka-v12"])
def test_records_just_produced_are_answered_at_the_offsets_the_broker_gave_them(v: int) -> None:
    cache = FetchCache()
    _known(cache, {0: 5, 1: 0}, v)  # learnt from a response of the fetch's own version
    _write(cache, {0: _batch("a", "b"), 1: _batch("c")}, {0: 5, 1: 0})
    _write(cache, {0: _batch("d")}, {0: 7})

    answer = cache.answer(_fetch({0: 5, 1: 0}, v=v))
    assert answer is not None
    assert _records(answer, v) == {0: [(5, "a"), (6, "b"), (7, "d")], 1: [(0, "c")]}
    # From the middle of a batch: the whole batch, as a broker sends it (the client skips).
    answer = cache.answer(_fetch({0: 6, 1: 1}, v=v))
    assert answer is not None
    assert _records(answer, v) == {0: [(5, "a"), (6, "b"), (7, "d")], 1: []}
    assert cache.served == {v: 2}
    # What the front writes, it reads back as it reads Tansu's answers.
    states = wire.fetch_response_states(answer, v)
    assert {k: (s.error, s.high_watermark) for k, s in states.items()} == {
        (T, 0): (0, 8),
        (T, 1): (0, 1),
    }


def test_a_fetch_with_nothing_to_read_or_an_unknown_range_goes_to_the_broker() -> None:
    cache = FetchCache()
    _write(cache, {0: _batch("a")}, {0: 0})  # before the front knew the partition: not kept
    assert cache.answer(_fetch({0: 0})) is None
    _known(cache, {0: 1, 1: 0})
    assert cache.answer(_fetch({0: 1, 1: 0})) is None  # nothing new anywhere
    assert cache.holds(_fetch({0: 1, 1: 0}))  # ... so the front may hold it itself
    assert not cache.holds(_fetch({0: 1, 1: 0, 2: 0}))  # not with a partition it does not know
    _write(cache, {1: _batch("b")}, {1: 0})
    assert cache.answer(_fetch({0: 0, 1: 0})) is None  # offset 0 of partition 0 is not kept
    assert cache.answer(_fetch({0: 1, 1: 0, 2: 0})) is None  # partition 2 is unknown
    assert cache.answer(_fetch({0: 2, 1: 0})) is None  # past the end the front knows
    assert cache.answer(_fetch({0: 1, 1: 0})) is not None
    assert not cache.holds(_fetch({0: 1, 1: 0}))  # partition 1 has a record


def test_produces_answered_out_of_order_are_served_once_the_gap_closes() -> None:
    cache = FetchCache()
    _known(cache, {0: 0})
    first, second = _produce({0: _batch("a")}), _produce({0: _batch("b")})
    cache.producing(first)
    cache.producing(second)
    cache.produced(second, _acked({0: 1}))
    assert cache.answer(_fetch({0: 0})) is None
    cache.produced(first, _acked({0: 0}))
    answer = cache.answer(_fetch({0: 0}))
    assert answer is not None and _records(answer) == {0: [(0, "a"), (1, "b")]}


def test_what_the_front_cannot_account_for_is_forgotten_until_the_broker_says_again() -> None:
    cache = FetchCache()
    _known(cache, {0: 0, 1: 0})
    _write(cache, {0: _batch("a"), 1: _batch("b")}, {0: 0, 1: 0})
    written = _produce({0: _batch("c")})
    cache.producing(written)
    cache.produced(written, _acked({0: 1}, error=6))  # not the leader: the outcome is unknown
    assert cache.answer(_fetch({0: 0})) is None
    assert cache.answer(_fetch({1: 0})) is not None

    # A fetch whose partition was written while it was out says nothing trustworthy.
    fetch = _fetch({1: 1})
    mark = cache.mark(fetch.partitions)
    _write(cache, {1: _batch("d")}, {1: 1})
    cache.learn(fetch, _tansu_answer({1: 1}), mark)
    answer = cache.answer(_fetch({1: 0}))
    assert answer is not None and _records(answer) == {1: [(0, "b"), (1, "d")]}

    # The broker's end differs from the front's with nothing in flight: start again there.
    _known(cache, {1: 9})
    assert cache.answer(_fetch({1: 0})) is None
    _write(cache, {1: _batch("e")}, {1: 9})
    answer = cache.answer(_fetch({1: 9}))
    assert answer is not None and _records(answer) == {1: [(9, "e")]}

    cache.forget()
    assert cache.answer(_fetch({1: 9})) is None and cache.size == 0


def test_what_is_kept_is_bounded_per_partition_and_in_all() -> None:
    one = len(_batch("x" * 100))
    cache = FetchCache(partition_bytes=3 * one, total_bytes=5 * one)
    _known(cache, {0: 0, 1: 0})
    for i in range(5):
        _write(cache, {0: _batch("x" * 100)}, {0: i})
    assert cache.size == 3 * one
    assert cache.answer(_fetch({0: 1})) is None  # dropped
    assert len(_records(cache.answer(_fetch({0: 2})) or b"")[0]) == 3
    for i in range(3):
        _write(cache, {1: _batch("y" * 100)}, {1: i})
    assert cache.size <= 5 * one
    assert cache.answer(_fetch({0: 2})) is None  # the least recently written went first
    assert cache.answer(_fetch({1: 0})) is not None


def test_a_fetch_answer_respects_the_fetch_size_but_carries_at_least_one_batch() -> None:
    cache = FetchCache()
    _known(cache, {0: 0, 1: 0})
    _write(cache, {0: _batch("a" * 50), 1: _batch("b" * 50)}, {0: 0, 1: 0})
    _write(cache, {0: _batch("c" * 50)}, {0: 1})
    answer = cache.answer(_fetch({0: 0, 1: 0}, max_bytes=10))
    assert answer is not None
    assert _records(answer) == {0: [(0, "a" * 50)], 1: []}  # the rest next time
