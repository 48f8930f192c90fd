"""The few parts of the Kafka wire protocol that the long-poll front reads (`infra/longpoll.py`).

Every request and response is a frame: a big-endian int32 size, then that many bytes. A
request's header is the API key (int16), its version (int16), a correlation id (int32) and
the client id (an int16-sized nullable string), followed by tagged fields in the "flexible"
versions (KIP-482: compact strings, arrays and bytes carry an unsigned varint length + 1,
and every structure ends in tagged fields). A response's header is the correlation id,
plus tagged fields in flexible versions, except for ApiVersions, whose response header is
never flexible. Field layouts per version follow the protocol's JSON message definitions in
Apache Kafka (`clients/src/main/resources/common/message/FetchRequest.json`, ...).

Read here: a Fetch request (its wait and the partitions it names), a Produce request (its
acks and partitions), and an ApiVersions response (to cap the Fetch version at the last one that names topics rather than
topic ids). Anything else passes through the front as bytes. Every reader raises
`WireError` on a frame it cannot read; the front then forwards that frame untouched.
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
    if version >= 3:
        reader.int32()  # max bytes
    if version >= 4:
        reader.skip(1)  # isolation level
    if version >= 7:
        reader.skip(8)  # session id and epoch
    partitions: list[Key] = []
    for _ in range(reader.length(flexible)):
        topic = reader.string(flexible) or ""
        for _ in range(reader.length(flexible)):
            partitions.append((topic, reader.int32()))
            # current leader epoch (v9+), fetch offset, last fetched epoch (v12+), log start
            # offset (v5+), partition max bytes
            reader.skip(
                (4 if version >= 9 else 0)
                + 8
                + (4 if version >= 12 else 0)
                + (8 if version >= 5 else 0)
                + 4
            )
            reader.tags(flexible)
        reader.tags(flexible)
    return FetchRequest(version, max_wait_ms, wait_at, tuple(partitions))


def with_max_wait(frame: bytes, fetch: FetchRequest, max_wait_ms: int) -> bytes:
    """The same Fetch request frame with another wait."""
    out = bytearray(frame)
    _I32.pack_into(out, fetch.wait_at, max_wait_ms)
    return bytes(out)


def parse_produce(frame: bytes) -> tuple[int, tuple[Key, ...]]:
    """(acks, the partitions written) of a Produce request frame."""
    key, version, body = request_header(frame)
    if key != PRODUCE:
        raise WireError(f"not a Produce (key {key})")
    flexible = version >= FLEXIBLE[PRODUCE]
    reader = _Reader(frame, body)
    if version >= 3:
        reader.string(flexible)  # transactional id
    acks = reader.int16()
    reader.int32()  # timeout
    partitions: list[Key] = []
    for _ in range(reader.length(flexible)):
        topic = reader.string(flexible) or ""
        for _ in range(reader.length(flexible)):
            partitions.append((topic, reader.int32()))
            reader.skip(max(reader.length(flexible), 0))  # the records
            reader.tags(flexible)
        reader.tags(flexible)
    return acks, tuple(partitions)


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
