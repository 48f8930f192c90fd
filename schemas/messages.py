"""Python types of the messages in `schemas/*.avsc`, with their single-object encoding.

The `.avsc` files are the source of truth: `tests/unit/test_schemas.py` checks that
every field here matches its schema, so the two cannot drift apart silently.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, Self

from alto.enums import Mode as Mode  # the wire enum, defined once with the settings (alto.enums)
from alto.schemas.codec import AvroSchema, load_schema


class ResultStatus(enum.StrEnum):
    OK = "OK"
    FAILED = "FAILED"
    OVERLOADED = "OVERLOADED"


class QuantumKind(enum.StrEnum):
    DATA = "DATA"
    END = "END"
    FAILED = "FAILED"


@dataclass(frozen=True, slots=True)
class PathEntry:
    """One level of ancestry: the fan-out stage that made the level, and the index in it."""

    stage: str
    index: int


@dataclass(frozen=True, slots=True)
class TraceSpan:
    stage: str
    path: str
    worker: str
    start_ms: int
    end_ms: int
    processed_by: tuple[str, ...] = ()
    simulated: bool = False  # done by the SIMULATED LM engine
    # When the input this work began on (an aggregation: the input that completed it) was
    # emitted (0: not recorded); the critical path's hops (`alto.streams.critical_path`).
    input_ms: int = 0
    # When this worker's consumer handed that input over (0: not recorded): `input_ms` to
    # here is broker transit, from here to `start_ms` (an aggregation: `end_ms`) waiting.
    received_ms: int = 0

    def to_record(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "path": self.path,
            "worker": self.worker,
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "processed_by": list(self.processed_by),
            "simulated": self.simulated,
            "input_ms": self.input_ms,
            "received_ms": self.received_ms,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> TraceSpan:
        return cls(**{**record, "processed_by": tuple(record.get("processed_by", ()))})


class _AvroMessage:
    """Encoding shared by the top-level records."""

    schema_name: ClassVar[str]

    @classmethod
    def schema(cls) -> AvroSchema:
        return load_schema(cls.schema_name)

    def to_record(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Self:
        return cls(**record)

    def encode(self) -> bytes:
        return self.schema().encode(self.to_record())

    @classmethod
    def decode(cls, data: bytes | None) -> Self:
        """Decode single-object bytes; raises `BadInputError` on anything malformed (or None)."""
        return cls.from_record(cls.schema().decode(data))


def _spans(raw: list[dict[str, Any]]) -> tuple[TraceSpan, ...]:
    return tuple(TraceSpan.from_record(s) for s in raw)


@dataclass(frozen=True, slots=True)
class PipelineRequest(_AvroMessage):
    schema_name: ClassVar[str] = "pipeline_request"

    request_id: str
    pipeline: str
    input: str
    submitted_at_ms: int
    mode: Mode | None = None

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> PipelineRequest:
        mode = record.get("mode")
        return cls(**{**record, "mode": Mode(mode) if mode else None})


@dataclass(frozen=True, slots=True)
class PipelineResult(_AvroMessage):
    schema_name: ClassVar[str] = "pipeline_result"

    request_id: str
    pipeline: str
    status: ResultStatus
    latency_ms: int
    submitted_at_ms: int
    completed_at_ms: int
    mode: Mode
    output: str | None = None
    error: str | None = None
    trace: tuple[TraceSpan, ...] = ()
    simulated: bool = False  # some LM output in it came from the SIMULATED engine

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> PipelineResult:
        return cls(
            **{
                **record,
                "status": ResultStatus(record["status"]),
                "mode": Mode(record["mode"]),
                "trace": _spans(record.get("trace", [])),
            }
        )


@dataclass(frozen=True, slots=True)
class DeadLetter(_AvroMessage):
    schema_name: ClassVar[str] = "dead_letter"

    reason: str
    error: str
    source_topic: str
    partition: int
    offset: int
    worker: str
    at_ms: int
    key: bytes | None = None
    value: bytes | None = None
    request_id: str | None = None
    stage: str | None = None


@dataclass(frozen=True, slots=True)
class Quantum(_AvroMessage):
    """The envelope every stage exchanges (see `schemas/quantum.avsc`)."""

    schema_name: ClassVar[str] = "quantum"

    request_id: str
    pipeline: str
    mode: Mode
    stage: str
    path: tuple[PathEntry, ...]
    seq: int
    kind: QuantumKind
    submitted_at_ms: int
    created_at_ms: int
    count: int | None = None
    payload: str | None = None
    error: str | None = None
    trace: tuple[TraceSpan, ...] = field(default=())

    def to_record(self) -> dict[str, Any]:
        # asdict() deep-copies; a hand-written dict is several times faster on the hot path.
        return {
            "request_id": self.request_id,
            "pipeline": self.pipeline,
            "mode": self.mode.value,
            "stage": self.stage,
            "path": [{"stage": p.stage, "index": p.index} for p in self.path],
            "seq": self.seq,
            "kind": self.kind.value,
            "count": self.count,
            "payload": self.payload,
            "error": self.error,
            "submitted_at_ms": self.submitted_at_ms,
            "created_at_ms": self.created_at_ms,
            "trace": [s.to_record() for s in self.trace],
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Quantum:
        return cls(
            request_id=record["request_id"],
            pipeline=record["pipeline"],
            mode=Mode(record["mode"]),
            stage=record["stage"],
            path=tuple(PathEntry(p["stage"], p["index"]) for p in record["path"]),
            seq=record["seq"],
            kind=QuantumKind(record["kind"]),
            count=record["count"],
            payload=record["payload"],
            error=record["error"],
            submitted_at_ms=record["submitted_at_ms"],
            created_at_ms=record["created_at_ms"],
            trace=_spans(record["trace"]),
        )


class QuantumRule(enum.StrEnum):
    TOKEN = "TOKEN"  # noqa: S105 - a quantum rule, not a secret
    WORD = "WORD"
    LINE = "LINE"
    ITEM = "ITEM"
    SENTENCE = "SENTENCE"
    WHOLE = "WHOLE"


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True, slots=True)
class LMRequest(_AvroMessage):
    """One LM call of an LM stage (see `schemas/lm_request.avsc`)."""

    schema_name: ClassVar[str] = "lm_request"

    lm_request_id: str
    request_id: str
    pipeline: str
    stage: str
    prompt_name: str
    messages: tuple[ChatMessage, ...]
    max_tokens: int
    quantum_rule: QuantumRule
    parent: bytes
    enqueued_at_ms: int
    prefix_chars: int = 0
    temperature: float = 0.0
    seed: int = 0
    instance: int = -1
    attempt: int = 0

    def to_record(self) -> dict[str, Any]:
        record = {f.name: getattr(self, f.name) for f in fields(self)}
        record["messages"] = [{"role": m.role, "content": m.content} for m in self.messages]
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> LMRequest:
        return cls(
            **{
                **record,
                "messages": tuple(ChatMessage(**m) for m in record["messages"]),
                "quantum_rule": QuantumRule(record["quantum_rule"]),
            }
        )


@dataclass(frozen=True, slots=True)
class LMStatus(_AvroMessage):
    """An LM worker's load report and heartbeat (see `schemas/lm_status.avsc`)."""

    schema_name: ClassVar[str] = "lm_status"

    instance: int
    worker: str
    engine: str
    simulated: bool
    running: int
    waiting: int
    queued_prefill_tokens: int
    queued_decode_tokens: int
    kv_cache_usage: float
    prefix_cache_hit_rate: float
    tokens_per_s: float
    at_ms: int
    in_flight: tuple[str, ...] = ()
    completed: tuple[LMCompletion, ...] = ()

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> LMStatus:
        return cls(
            **{
                **record,
                "in_flight": tuple(record["in_flight"]),
                "completed": tuple(LMCompletion(**c) for c in record.get("completed", ())),
            }
        )


@dataclass(frozen=True, slots=True)
class LMCompletion:
    """A finished LM call and what it cost (inside `LMStatus.completed`)."""

    lm_request_id: str
    prompt_name: str
    prompt_tokens: int
    cached_tokens: int
    output_tokens: int
    queue_s: float
    service_s: float
    at_ms: int


@dataclass(frozen=True, slots=True)
class LMAssignment(_AvroMessage):
    """One prompt's LM instances in the scheduler's shared table (`schemas/lm_assignment.avsc`)."""

    schema_name: ClassVar[str] = "lm_assignment"

    prompt_name: str
    instances: tuple[int, ...]
    policy: str
    scheduler: str
    at_ms: int

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> LMAssignment:
        return cls(**{**record, "instances": tuple(record["instances"])})


MESSAGE_TYPES: tuple[type[_AvroMessage], ...] = (
    PipelineRequest,
    PipelineResult,
    DeadLetter,
    Quantum,
    LMRequest,
    LMStatus,
    LMAssignment,
)


def field_names(cls: type) -> list[str]:
    return [f.name for f in fields(cls)]
