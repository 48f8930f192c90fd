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
        out = io.BytesIO()
        out.write(MAGIC)
        out.write(self.fingerprint)
        fastavro.schemaless_writer(out, self.parsed, record)
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
                "undecodable", f"{self.name} body does not decode: {exc!r}"
            ) from exc
        if body.tell() != len(data) - HEADER_LEN:
            raise BadInputError("undecodable", f"{self.name} body has trailing bytes")
        if not isinstance(record, dict):
            raise BadInputError("undecodable", f"{self.name} body is not a record")
        return record


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
