"""Message schemas: the `.avsc` files are the source of truth; Python types are checked against them."""

from alto.schemas.codec import AvroSchema, load_schema
from alto.schemas.messages import (
    DeadLetter,
    Mode,
    PathEntry,
    PipelineRequest,
    PipelineResult,
    Quantum,
    QuantumKind,
    ResultStatus,
    TraceSpan,
)

__all__ = [
    "AvroSchema",
    "DeadLetter",
    "Mode",
    "PathEntry",
    "PipelineRequest",
    "PipelineResult",
    "Quantum",
    "QuantumKind",
    "ResultStatus",
    "TraceSpan",
    "load_schema",
]
