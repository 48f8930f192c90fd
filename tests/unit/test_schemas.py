"""The `.avsc` files and the Python types agree; every message round-trips; bad bytes are bad input."""

from __future__ import annotations

import dataclasses
import io
import types
import typing

import avro.io
import avro.schema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alto.errors import BadInputError
from alto.schemas import codec
from alto.schemas.messages import (
    MESSAGE_TYPES,
    ChatMessage,
    DeadLetter,
    LMAssignment,
    LMCompletion,
    LMRequest,
    LMStatus,
    Mode,
    PathEntry,
    PipelineRequest,
    PipelineResult,
    Quantum,
    QuantumKind,
    QuantumRule,
    ResultStatus,
    TraceSpan,
)

SPAN = TraceSpan("words", "sentences:0", "w1", 1, 2, ("w1", "w2"))
SAMPLES = [
    PipelineRequest("r1", "example", "Hello there. General.", 1700000000000, Mode.BASELINE),
    PipelineRequest("r2", "example", "ünïcödé ✓", 1, None),
    PipelineResult(
        "r1", "example", ResultStatus.OK, 12, 1, 13, Mode.STREAMING, '{"a":1}', None, (SPAN,)
    ),
    PipelineResult("r3", "x", ResultStatus.FAILED, 0, 5, 5, Mode.BASELINE, None, "boom", ()),
    DeadLetter(
        "undecodable",
        "bad header",
        "alto.requests",
        3,
        42,
        "w1",
        99,
        b"k",
        b"\x00\xff",
        "r1",
        "request",
    ),
    DeadLetter("undecodable", "bad", "t", 0, 0, "w", 0),
    Quantum(
        "r1",
        "example",
        Mode.STREAMING,
        "words",
        (PathEntry("sentences", 2), PathEntry("words", 0)),
        0,
        QuantumKind.DATA,
        1,
        2,
        payload='"hi"',
        trace=(SPAN,),
    ),
    Quantum(
        "r1",
        "example",
        Mode.BASELINE,
        "words",
        (PathEntry("sentences", 2),),
        7,
        QuantumKind.END,
        1,
        2,
        count=7,
    ),
    Quantum("r1", "example", Mode.BASELINE, "words", (), 0, QuantumKind.FAILED, 1, 2, error="why"),
    LMRequest(
        "r1|claims|",
        "r1",
        "factool",
        "claims",
        "claims",
        (ChatMessage("system", "You extract claims."), ChatMessage("user", "The Moon.")),
        128,
        QuantumRule.ITEM,
        b"\xc3\x01parent",
        5,
        prefix_chars=20,
        temperature=0.5,
        seed=7,
        instance=2,
        attempt=1,
    ),
    LMStatus(0, "lm-0", "sim", True, 3, 1, 100, 400, 0.25, 0.5, 123.4, 99, ("a", "b")),
    LMStatus(
        1,
        "lm-1",
        "vllm",
        False,
        0,
        0,
        0,
        0,
        0.0,
        0.0,
        0.0,
        5,
        completed=(LMCompletion("c1", "claims", 120, 96, 40, 0.01, 1.5, 4),),
    ),
    LMAssignment("claims", (0, 2), "prompt_aware", "w1", 7),
]

_AVRO_TO_PY: dict[str, set[type]] = {
    "string": {str},
    "long": {int},
    "int": {int},
    "bytes": {bytes},
    "boolean": {bool},
    "double": {float},
}


def _python_types(annotation: object) -> set[object]:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return {t for arg in typing.get_args(annotation) for t in _python_types(arg)}
    return {typing.get_origin(annotation) or annotation}


def _avro_types(avro_type: object) -> set[object]:
    if isinstance(avro_type, list):
        return {t for branch in avro_type for t in _avro_types(branch)}
    if avro_type == "null":
        return {type(None)}
    if isinstance(avro_type, str):
        return _AVRO_TO_PY.get(avro_type, {avro_type})
    assert isinstance(avro_type, dict)
    if avro_type["type"] == "array":
        return {tuple}
    if avro_type["type"] in ("enum", "record"):
        return {avro_type["name"]}
    return _avro_types(avro_type["type"])


def _named(py: set[object]) -> set[object]:
    return {
        t.__name__
        if isinstance(t, type) and t.__module__ in ("alto.schemas.messages", "alto.enums")
        else t
        for t in py
    }


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=lambda c: c.__name__)
def test_python_type_matches_its_avsc(cls: type) -> None:
    schema = cls.schema().raw  # type: ignore[attr-defined]
    assert schema["name"] == cls.__name__
    hints = typing.get_type_hints(cls)
    py_fields = [f.name for f in dataclasses.fields(cls)]
    avro_fields = {f["name"]: f for f in schema["fields"]}
    assert sorted(py_fields) == sorted(avro_fields), "field names differ"
    for name in py_fields:
        avro_field = avro_fields[name]
        assert _named(_python_types(hints[name])) == _avro_types(avro_field["type"]), name
        has_default = dataclasses.fields(cls)[
            py_fields.index(name)
        ].default is not dataclasses.MISSING or (
            dataclasses.fields(cls)[py_fields.index(name)].default_factory
            is not dataclasses.MISSING
        )
        if "default" in avro_field:
            assert has_default, f"{name}: the schema has a default, the type does not"


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(message: object) -> None:
    data = message.encode()  # type: ignore[attr-defined]
    assert data[:2] == b"\xc3\x01"
    assert type(message).decode(data) == message  # type: ignore[attr-defined]


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_any_avro_library_reads_it_with_the_avsc_alone(message: object) -> None:
    """The official Avro library (an independent implementation) agrees on fingerprint and body."""
    raw = message.schema().raw  # type: ignore[attr-defined]
    parsed = avro.schema.parse(__import__("json").dumps(raw))
    data = message.encode()  # type: ignore[attr-defined]
    assert data[2:10] == parsed.fingerprint("CRC-64-AVRO")
    record = avro.io.DatumReader(parsed).read(avro.io.BinaryDecoder(io.BytesIO(data[10:])))
    assert record == _plain(message.to_record())  # type: ignore[attr-defined]


def _plain(value: object) -> object:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, str):
        return str(value)  # StrEnum -> its symbol
    if dataclasses.is_dataclass(value):
        return _plain(dataclasses.asdict(value))  # type: ignore[arg-type]
    return value


def test_crc64_matches_the_spec_example() -> None:
    # Avro's Java SchemaNormalization.parsingFingerprint64 of "string" is 0x8F014872634503C7.
    assert codec.crc64_avro(b'"string"') == 0x8F014872634503C7


def test_unknown_fingerprint_is_bad_input() -> None:
    data = SAMPLES[0].encode()
    other = SAMPLES[2].encode()
    with pytest.raises(BadInputError) as info:
        PipelineRequest.decode(other[:10] + data[10:])
    assert info.value.reason == "unknown_fingerprint"


@pytest.mark.parametrize(
    "data",
    [
        None,
        b"",
        b"\xc3",
        b"\xc3\x01",
        b"{}",
        b"\x00" * 20,
        SAMPLES[0].encode()[:-3],
        SAMPLES[0].encode() + b"x",
    ],
)
def test_malformed_bytes_are_bad_input(data: bytes | None) -> None:
    with pytest.raises(BadInputError):
        PipelineRequest.decode(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.sampled_from(MESSAGE_TYPES))
def test_random_bytes_never_escape_as_other_errors(junk: bytes, cls: type) -> None:
    header = cls.schema().fingerprint  # type: ignore[attr-defined]
    for data in (junk, b"\xc3\x01" + header + junk):
        try:
            cls.decode(data)  # type: ignore[attr-defined]
        except BadInputError:
            pass


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_faust_codecs_round_trip_through_the_registry(message: object) -> None:
    from faust.serializers import codecs

    from alto.schemas.faust_codecs import codec_name, register

    register()
    name = codec_name(type(message))
    data = codecs.dumps(name, message)
    assert data == message.encode()  # type: ignore[attr-defined]
    assert codecs.loads(name, data) == message
