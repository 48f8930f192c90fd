"""Avro single-object encoding (spec: C3 01, CRC-64-AVRO fingerprint, body) over fastavro."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import fastavro
from fastavro.schema import to_parsing_canonical_form

from alto.errors import BadInputError

MAGIC = b"\xc3\x01"
HEADER_LEN = len(MAGIC) + 8

_CRC64_EMPTY = 0xC15D213AA4D7A795


def _crc64_table() -> list[int]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (_CRC64_EMPTY & -(fp & 1))
        table.append(fp)
    return table


_TABLE = _crc64_table()


def crc64_avro(data: bytes) -> int:
    """The Avro spec's 64-bit Rabin fingerprint of `data` (as an unsigned integer)."""
    fp = _CRC64_EMPTY
    for byte in data:
        fp = (fp >> 8) ^ _TABLE[(fp ^ byte) & 0xFF]
    return fp


def fingerprint(schema: dict[str, Any]) -> bytes:
    """The 8-byte little-endian CRC-64-AVRO fingerprint of a schema's parsing canonical form."""
    canonical = to_parsing_canonical_form(schema)
    return crc64_avro(canonical.encode("utf-8")).to_bytes(8, "little")


@dataclass(frozen=True)
class AvroSchema:
    """One parsed `.avsc` with its fingerprint; encodes and decodes single-object messages."""

    name: str
    raw: dict[str, Any]
    parsed: Any
    fingerprint: bytes

    def encode(self, record: dict[str, Any]) -> bytes:
        """Encode one record; raises BadInputError when a value does not fit the schema
        (e.g. a long out of range or a string that is not valid Unicode, carried over from
        an input)."""
        out = io.BytesIO()
        out.write(MAGIC)
        out.write(self.fingerprint)
        try:
            fastavro.schemaless_writer(out, self.parsed, record)
        except (ValueError, TypeError, OverflowError) as exc:  # UnicodeError is a ValueError
            raise BadInputError(
                "unencodable", f"{self.name} record does not encode: {_describe(exc)}"
            ) from exc
        return out.getvalue()

    def decode(self, data: bytes | None) -> dict[str, Any]:
        """Decode one message, raising BadInputError for anything that is not ours or is broken."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise BadInputError("undecodable", f"expected bytes, got {type(data).__name__}")
        data = bytes(data)
        if len(data) < HEADER_LEN or data[:2] != MAGIC:
            raise BadInputError(
                "undecodable", "not Avro single-object encoding (missing C3 01 header)"
            )
        if data[2:HEADER_LEN] != self.fingerprint:
            raise BadInputError(
                "unknown_fingerprint",
                f"writer schema fingerprint {data[2:HEADER_LEN].hex()} is not {self.name}'s "
                f"({self.fingerprint.hex()})",
            )
        body = io.BytesIO(data[HEADER_LEN:])
        try:
            record = fastavro.schemaless_reader(body, self.parsed, None)
        except Exception as exc:  # fastavro raises many types for broken bodies
            raise BadInputError(
                "undecodable", f"{self.name} body does not decode: {_describe(exc)}"
            ) from exc
        if body.tell() != len(data) - HEADER_LEN:
            raise BadInputError("undecodable", f"{self.name} body has trailing bytes")
        if not isinstance(record, dict):
            raise BadInputError("undecodable", f"{self.name} body is not a record")
        return record


def _describe(exc: Exception) -> str:
    """An error in words that never quotes the message's content: a UnicodeError's repr
    carries the whole string it failed on (a request's input, a prompt), and this text
    goes to logs and dead letters."""
    if isinstance(exc, UnicodeError):
        start = getattr(exc, "start", None)
        at = f" at position {start}" if start is not None else ""
        return (
            f"{type(exc).__name__}: a string is not valid UTF-8{at} ({getattr(exc, 'reason', '')})"
        )
    return f"{type(exc).__name__}: {exc}"[:300]


@cache
def load_schema(name: str) -> AvroSchema:
    """Load `schemas/<name>.avsc` (shipped as package data)."""
    text = resources.files(__package__).joinpath(f"{name}.avsc").read_text(encoding="utf-8")
    raw = json.loads(text)
    parsed = fastavro.parse_schema(raw)
    return AvroSchema(name=name, raw=raw, parsed=parsed, fingerprint=fingerprint(raw))


SCHEMA_NAMES = (
    "pipeline_request",
    "pipeline_result",
    "dead_letter",
    "quantum",
    "lm_request",
    "lm_status",
)
