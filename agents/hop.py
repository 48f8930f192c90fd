"""The one-stage relay pipeline used to measure the cost of a stage hop (`alto bench hop`)."""

from __future__ import annotations

from typing import Any

from alto.streams import REQUEST, Item, Pipeline, Topology

NAME = "hop"


def _relay(item: Item) -> Any:
    return item.value


def build() -> Topology:
    return (
        Pipeline(NAME, "one map stage that relays its input")
        .map("relay", _relay, after=REQUEST)
        .build()
    )
