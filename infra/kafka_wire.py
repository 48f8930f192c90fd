"""The few parts of the Kafka wire protocol that the long-poll front reads (`infra/longpoll.py`).

Every request and response is a frame: a big-endian int32 size, then that many bytes. A
request's header is the API key (int16), its version (int16), a correlation id (int32) and
the client id (an int16-sized nullable string), followed by tagged fields in the "flexible"
versions (KIP-482: compact strings, arrays and bytes carry an unsigned varint length + 1,
and every structure ends in tagged fields). A response's header is the correlation id,
plus tagged fields in flexible versions, except for ApiVersions, whose response header is
never flexible. Field layouts per version follow the protocol's JSON message definitions in
Apache Kafka (`clients/src/main/resources/common/message/FetchRequest.json`, ...).

Read here: a Fetch request (its wait, the partitions it names, their offsets and sizes), a
Produce request (its acks, partitions and records) and its response, a Fetch response's
partition states, and an ApiVersions response (to cap the Fetch version at the last one
that names topics rather than topic ids). Written here: Fetch responses of versions 5 to 12
(aiokafka sends v11, librdkafka v12, the first flexible one), for the front's copy of the
records it relayed (`infra/fetch_cache.py`). Anything else passes through the front as
bytes. Every reader raises `WireError` on a frame it cannot read; the front then forwards
that frame untouched.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

PRODUCE = 0
FETCH = 1
API_VERSIONS = 18
# First flexible version of each API read here.
FLEXIBLE = {PRODUCE: 9, FETCH: 12, API_VERSIONS: 3}
# Fetch v13 names topics by id; the front caps clients at v12 so that a fetch's partitions
# and a produce's are named alike.
MAX_FETCH_VERSION = 12

# A partition as the front keys it: (topic name, partition index).
Key = tuple[str, int]

_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")


class WireError(ValueError):
    """A frame this module cannot read (truncated, or a version it does not know)."""


class _Reader:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes, pos: int = 0) -> None:
        self.buf = buf
        self.pos = pos

    def _take(self, fmt: struct.Struct) -> int:
        try:
            (value,) = fmt.unpack_from(self.buf, self.pos)
        except struct.error as exc:
            raise WireError(f"frame ends at byte {self.pos}") from exc
        self.pos += fmt.size
        return int(value)

    def int16(self) -> int:
        return self._take(_I16)

    def int32(self) -> int:
        return self._take(_I32)

    def int64(self) -> int:
        return self._take(_I64)

    def skip(self, count: int) -> None:
        if count < 0 or self.pos + count > len(self.buf):
            raise WireError(f"frame ends before byte {self.pos + count}")
        self.pos += count

    def uvarint(self) -> int:
        value = shift = 0
        while True:
            if self.pos >= len(self.buf) or shift > 28:
                raise WireError(f"bad varint at byte {self.pos}")
            byte = self.buf[self.pos]
            self.pos += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7

    def length(self, flexible: bool) -> int:
        """A string's, bytes' or array's length; -1 for null."""
        return self.uvarint() - 1 if flexible else self.int32()

    def string(self, flexible: bool) -> str | None:
        size = self.uvarint() - 1 if flexible else self.int16()
        if size < 0:
            return None
        start = self.pos
        self.skip(size)
        return self.buf[start : self.pos].decode("utf-8", "replace")

    def tags(self, flexible: bool) -> None:
        if flexible:
            for _ in range(self.uvarint()):
                self.uvarint()
                self.skip(self.uvarint())


def request_header(frame: bytes) -> tuple[int, int, int]:
    """(API key, version, offset of the body) of a request frame (without its size)."""
    reader = _Reader(frame)
    key, version = reader.int16(), reader.int16()
    reader.int32()  # correlation id
    reader.string(flexible=False)  # the client id is never compact
    reader.tags(key in FLEXIBLE and version >= FLEXIBLE[key])
    return key, version, reader.pos


@dataclass(frozen=True)
class FetchRequest:
    version: int
    max_wait_ms: int
    wait_at: int  # byte offset of max_wait_ms in the frame
    partitions: tuple[Key, ...]
    offsets: tuple[int, ...] = ()  # each partition's fetch offset
    partition_max_bytes: tuple[int, ...] = ()
    max_bytes: int = 0x7FFFFFFF
    correlation_id: int = 0
    session_epoch: int = -1  # v7+: -1 names no fetch session (each fetch whole)


def parse_fetch(frame: bytes) -> FetchRequest:
    key, version, body = request_header(frame)
    if key != FETCH or version > MAX_FETCH_VERSION:
        raise WireError(f"not a Fetch this front reads (key {key}, v{version})")
    flexible = version >= FLEXIBLE[FETCH]
    reader = _Reader(frame, body)
    reader.int32()  # replica id
    wait_at = reader.pos
    max_wait_ms = reader.int32()
    reader.int32()  # min bytes
    max_bytes = reader.int32() if version >= 3 else 0x7FFFFFFF
    if version >= 4:
        reader.skip(1)  # isolation level
    session_epoch = -1
    if version >= 7:
        reader.int32()  # session id
        session_epoch = reader.int32()
    partitions: list[Key] = []
    offsets: list[int] = []
    limits: list[int] = []
    for _ in range(reader.length(flexible)):
        topic = reader.string(flexible) or ""
        for _ in range(reader.length(flexible)):
            partitions.append((topic, reader.int32()))
            if version >= 9:
                reader.int32()  # current leader epoch
            offsets.append(reader.int64())
            if version >= 12:
                reader.int32()  # last fetched epoch
            if version >= 5:
                reader.int64()  # the follower's log start offset
            limits.append(reader.int32())
            reader.tags(flexible)
        reader.tags(flexible)
    return FetchRequest(
        version,
        max_wait_ms,
        wait_at,
        tuple(partitions),
        tuple(offsets),
        tuple(limits),
        max_bytes,
        _I32.unpack_from(frame, 4)[0],
        session_epoch,
    )


def with_max_wait(frame: bytes, fetch: FetchRequest, max_wait_ms: int) -> bytes:
    """The same Fetch request frame with another wait."""
    out = bytearray(frame)
    _I32.pack_into(out, fetch.wait_at, max_wait_ms)
    return bytes(out)


def parse_produce(frame: bytes) -> tuple[int, tuple[Key, ...]]:
    """(acks, the partitions written) of a Produce request frame."""
    acks, written = produce_records(frame)
    return acks, tuple(k for k, _ in written)


def produce_records(frame: bytes) -> tuple[int, list[tuple[Key, bytes | None]]]:
    """(acks, each partition written with its records) of a Produce request frame."""
    key, version, body = request_header(frame)
    if key != PRODUCE:
        raise WireError(f"not a Produce (key {key})")
    flexible = version >= FLEXIBLE[PRODUCE]
    reader = _Reader(frame, body)
    if version >= 3:
        reader.string(flexible)  # transactional id
    acks = reader.int16()
    reader.int32()  # timeout
    written: list[tuple[Key, bytes | None]] = []
    for _ in range(reader.length(flexible)):
        topic = reader.string(flexible) or ""
        for _ in range(reader.length(flexible)):
            k = (topic, reader.int32())
            size = reader.length(flexible)
            start = reader.pos
            reader.skip(max(size, 0))
            written.append((k, frame[start : reader.pos] if size >= 0 else None))
            reader.tags(flexible)
        reader.tags(flexible)
    return acks, written


def produce_response(frame: bytes, version: int) -> dict[Key, tuple[int, int]]:
    """Each partition's (error code, base offset) in a Produce response frame."""
    flexible = version >= FLEXIBLE[PRODUCE]
    reader = _Reader(frame)
    reader.int32()  # correlation id
    reader.tags(flexible)
    out: dict[Key, tuple[int, int]] = {}
    for _ in range(reader.length(flexible)):
        topic = reader.string(flexible) or ""
        for _ in range(reader.length(flexible)):
            index, error, base = reader.int32(), reader.int16(), reader.int64()
            if version >= 2:
                reader.int64()  # log append time
            if version >= 5:
                reader.int64()  # log start offset
            if version >= 8:
                for _ in range(max(reader.length(flexible), 0)):  # record errors
                    reader.int32()
                    reader.string(flexible)
                    reader.tags(flexible)
                reader.string(flexible)  # error message
            reader.tags(flexible)
            out[(topic, index)] = (error, base)
        reader.tags(flexible)
    return out


# Record batches (magic 2): base offset (int64), batch length (int32, the bytes after it),
# partition leader epoch (int32), magic (int8), CRC (uint32, over attributes to the end),
# attributes (int16), last offset delta (int32), ...
_BATCH_HEAD = 61
_TRANSACTIONAL_OR_CONTROL = 0x30


def record_batches(records: bytes) -> list[tuple[int, int, int]]:
    """(start, size, record count) of each whole record batch in `records`; raises
    `WireError` for a batch of another magic, a transactional or control batch, or a cut one."""
    out: list[tuple[int, int, int]] = []
    pos = 0
    while pos < len(records):
        if pos + _BATCH_HEAD > len(records):
            raise WireError("a record batch is cut short")
        size = 12 + _I32.unpack_from(records, pos + 8)[0]
        if records[pos + 16] != 2 or pos + size > len(records):
            raise WireError("not a whole magic-2 record batch")
        if _I16.unpack_from(records, pos + 21)[0] & _TRANSACTIONAL_OR_CONTROL:
            raise WireError("a transactional or control batch")
        out.append((pos, size, _I32.unpack_from(records, pos + 23)[0] + 1))
        pos += size
    return out


def with_base_offset(batch: bytes, base: int) -> bytes:
    """`batch` (one record batch) with another base offset (outside the batch's CRC)."""
    return _I64.pack(base) + batch[8:]


@dataclass(frozen=True)
class PartitionState:
    """What a Fetch response says of a partition besides its records."""

    error: int
    high_watermark: int
    log_start: int


def _uvarint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def fetch_response_states(frame: bytes, version: int) -> dict[Key, PartitionState]:
    """Each partition's state in a Fetch response frame of version 5 to 12 (the records are
    skipped, not read)."""
    if not 5 <= version <= MAX_FETCH_VERSION:
        raise WireError(f"Fetch responses v{version} are not read here")
    flexible = version >= FLEXIBLE[FETCH]
    reader = _Reader(frame)
    reader.int32()  # correlation id
    reader.tags(flexible)  # the response header's
    reader.int32()  # throttle time
    if version >= 7:
        reader.int16()  # error code
        reader.int32()  # session id
    out: dict[Key, PartitionState] = {}
    for _ in range(reader.length(flexible)):
        topic = reader.string(flexible) or ""
        for _ in range(reader.length(flexible)):
            index, error = reader.int32(), reader.int16()
            high, _stable, start = reader.int64(), reader.int64(), reader.int64()
            for _ in range(max(reader.length(flexible), 0)):  # aborted transactions
                reader.skip(16)
                reader.tags(flexible)
            if version >= 11:
                reader.int32()  # preferred read replica
            reader.skip(max(reader.length(flexible), 0))  # records
            reader.tags(flexible)
            out[(topic, index)] = PartitionState(error, high, start)
        reader.tags(flexible)
    reader.tags(flexible)
    return out


def fetch_response(fetch: FetchRequest, parts: list[tuple[Key, int, int, list[bytes]]]) -> bytes:
    """A Fetch response frame (version 5 to 12, no fetch session) answering `fetch` with,
    per partition: (partition, high watermark, log start offset, record batches)."""
    version = fetch.version
    if not 5 <= version <= MAX_FETCH_VERSION:
        raise WireError(f"Fetch responses v{version} are not written here")
    flexible = version >= FLEXIBLE[FETCH]
    # An array's or bytes' length: compact (unsigned varint of length + 1) in flexible versions.
    length = (lambda n: _uvarint(n + 1)) if flexible else _I32.pack
    tags = b"\x00" if flexible else b""  # no tagged fields
    by_topic: dict[str, list[tuple[int, int, int, list[bytes]]]] = {}
    for (topic, index), high, start, batches in parts:
        by_topic.setdefault(topic, []).append((index, high, start, batches))
    out = [_I32.pack(fetch.correlation_id), tags, _I32.pack(0)]  # throttle time
    if version >= 7:
        out += [_I16.pack(0), _I32.pack(0)]  # error code, session id (none)
    out.append(length(len(by_topic)))
    for topic, partitions in by_topic.items():
        name = topic.encode()
        out += [length(len(name)) if flexible else _I16.pack(len(name)), name]
        out.append(length(len(partitions)))
        for index, high, start, batches in partitions:
            # error 0, high watermark, last stable offset (no transactions), log start,
            # no aborted transactions
            out += [struct.pack(">ihqqq", index, 0, high, high, start), length(0)]
            if version >= 11:
                out.append(_I32.pack(-1))  # no preferred read replica
            out.append(length(sum(map(len, batches))))
            out += [*batches, tags]
        out.append(tags)
    out.append(tags)
    return b"".join(out)


def cap_api_versions(frame: bytes, version: int, caps: dict[int, int]) -> bytes:
    """An ApiVersions response frame whose highest version of each API in `caps` is at most
    the cap given (the frame is rewritten in place: same size)."""
    flexible = version >= FLEXIBLE[API_VERSIONS]
    reader = _Reader(frame)
    reader.int32()  # correlation id (this response's header is never flexible)
    if reader.int16() != 0:
        return frame  # an error answer (e.g. an unsupported version) is passed on as it is
    out = bytearray(frame)
    for _ in range(reader.length(flexible)):
        api = reader.int16()
        reader.int16()  # min version
        at = reader.pos
        highest = reader.int16()
        if api in caps and highest > caps[api]:
            _I16.pack_into(out, at, caps[api])
        reader.tags(flexible)
    return bytes(out)
