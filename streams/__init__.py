"""The streaming runtime: quanta, ancestry, the stage API, keyed routing, aggregation, completion."""

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
