"""The long-poll front's reading of Kafka frames (`alto.infra.kafka_wire`), on frames built by
another implementation of the protocol: aiokafka's request and response classes (and its
compact types for the flexible versions, which aiokafka itself does not send)."""

from __future__ import annotations

import pytest
from aiokafka.protocol.admin import ApiVersionResponse_v0, ApiVersionResponse_v1
from aiokafka.protocol.api import RequestHeader_v1, RequestHeader_v2
from aiokafka.protocol.fetch import FetchRequest_v4, FetchRequest_v11
from aiokafka.protocol.produce import ProduceRequest_v3, ProduceRequest_v7
from aiokafka.protocol.struct import Struct
from aiokafka.protocol.types import (
    Int16,
    Int32,
    Schema,
    String,
)

from alto.infra import kafka_wire as wire
from tests.kafka_v12 import FetchRequestV12


def _request(struct: Struct, header: type[Struct] = RequestHeader_v1) -> bytes:
    return bytes(header(struct, correlation_id=7, client_id="t").encode() + struct.encode())


def _fetch_v11(max_wait: int, partitions: dict[str, list[int]]) -> bytes:
    topics = [(t, [(p, -1, 10, 0, 1 << 20) for p in ps]) for t, ps in partitions.items()]
    return _request(FetchRequest_v11(-1, max_wait, 1, 1 << 20, 0, 0, -1, topics, [], ""))


def test_a_fetch_request_gives_its_wait_and_partitions() -> None:
    frame = _fetch_v11(500, {"alto.claims": [0, 3], "alto.lm.work": [2]})
    fetch = wire.parse_fetch(frame)
    assert fetch.version == 11
    assert fetch.max_wait_ms == 500
    assert fetch.partitions == (("alto.claims", 0), ("alto.claims", 3), ("alto.lm.work", 2))
    shorter = wire.with_max_wait(frame, fetch, 1)
    assert wire.parse_fetch(shorter).max_wait_ms == 1
    assert len(shorter) == len(frame) and shorter != frame

    old = _request(FetchRequest_v4(-1, 25, 1, 1 << 20, 0, [("t", [(1, 0, 1 << 20)])]))
    assert wire.parse_fetch(old).partitions == (("t", 1),)
    assert wire.parse_fetch(old).max_wait_ms == 25


# Fetch v12 as Apache Kafka's FetchRequest.json defines it: the first flexible version.
def test_flexible_fetch_frames_are_read_too() -> None:
    request = FetchRequestV12(
        -1, 250, 1, 1 << 20, 0, 0, -1, [("a", [(0, -1, 5, -1, 0, 1 << 20, {})], {})], [], "", {}
    )
    frame = _request(request, RequestHeader_v2)  # type: ignore[arg-type]
    fetch = wire.parse_fetch(frame)
    assert (fetch.version, fetch.max_wait_ms, fetch.partitions) == (12, 250, (("a", 0),))


def test_a_produce_request_gives_its_acks_and_partitions() -> None:
    batch = b"\x00" * 80
    v7 = ProduceRequest_v7(None, -1, 30_000, [("x", [(2, batch), (0, batch)]), ("y", [(1, b"")])])
    assert wire.parse_produce(_request(v7)) == (-1, (("x", 2), ("x", 0), ("y", 1)))
    v3 = ProduceRequest_v3(None, 0, 1000, [("z", [(3, batch)])])
    assert wire.parse_produce(_request(v3)) == (0, (("z", 3),))
    with pytest.raises(wire.WireError):
        wire.parse_produce(_request(v7)[:30])
    with pytest.raises(wire.WireError):
        wire.parse_produce(_fetch_v11(5, {"x": [0]}))


def test_api_versions_cap_the_fetch_version() -> None:
    keys = [(0, 0, 11), (1, 0, 16), (18, 0, 4)]
    for response in (ApiVersionResponse_v0(0, keys), ApiVersionResponse_v1(0, keys, 0)):
        frame = b"\x00\x00\x00\x07" + response.encode()
        capped = wire.cap_api_versions(bytes(frame), response.API_VERSION, {wire.FETCH: 12})
        decoded = type(response).decode(capped[4:])
        assert [tuple(k) for k in decoded.api_versions] == [(0, 0, 11), (1, 0, 12), (18, 0, 4)]
    refused = b"\x00\x00\x00\x07" + ApiVersionResponse_v0(35, []).encode()
    assert wire.cap_api_versions(bytes(refused), 3, {wire.FETCH: 12}) == refused


def test_request_headers_flexible_or_not() -> None:
    assert wire.request_header(_fetch_v11(5, {"x": [0]}))[:2] == (wire.FETCH, 11)
    with pytest.raises(wire.WireError):
        wire.request_header(b"\x00\x01")
    header = Schema(("key", Int16), ("version", Int16), ("id", Int32), ("client", String("utf-8")))
    frame = bytes(header.encode((wire.FETCH, 13, 1, "c")))
    with pytest.raises(wire.WireError):
        wire.parse_fetch(frame + b"\x00")  # v13 names topics by id: not read here
