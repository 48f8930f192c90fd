"""The one-stage relay pipeline used to measure the cost of a stage hop (`alto bench hop`)."""

from __future__ import annotations

from typing import Any

from alto.streams import Pipeline, Topology

NAME = "hop"


def relay(value: Any) -> Any:
    return value


def build() -> Topology:
    pipeline = Pipeline(NAME, "one map stage that relays its input")
    # Its own topic and agent: the hop is what this pipeline measures.
    pipeline.request.map(relay, chain=False)
    return pipeline.build()
