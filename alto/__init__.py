"""ALTO on Kafka: a streaming serving system for compound AI pipelines.

The public API for writing a pipeline is re-exported here (`from alto import Pipeline, count,
...`). It is loaded on first use, so that importing the foundation (`alto.config`,
`alto.errors`) does not load the stream runtime above it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# The stream runtime's API (`alto.streams` defines each of these).
__all__ = [
    "REQUEST",
    "Item",
    "LMCall",
    "Operator",
    "Pipeline",
    "PipelineIndex",
    "Stage",
    "StageKind",
    "Stream",
    "Topology",
    "by_source",
    "collect",
    "combine",
    "count",
    "filter_by",
    "map_values",
    "sum_of",
    "top_k",
]

if TYPE_CHECKING:
    from alto.streams.handles import Stream
    from alto.streams.operators import (
        Item,
        Operator,
        by_source,
        collect,
        combine,
        count,
        filter_by,
        map_values,
        sum_of,
        top_k,
    )
    from alto.streams.pipeline import (
        REQUEST,
        LMCall,
        Pipeline,
        PipelineIndex,
        Stage,
        StageKind,
        Topology,
    )


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'alto' has no attribute {name!r}")
    return getattr(importlib.import_module("alto.streams"), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
