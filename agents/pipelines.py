"""The registry of pipelines a worker serves, by name."""

from __future__ import annotations

from collections.abc import Callable

from agents import claims, example, hop
from agents.factool import pipeline as factool
from streams import Topology

BUILDERS: dict[str, Callable[[], Topology]] = {
    example.NAME: example.build,
    hop.NAME: hop.build,
    claims.NAME: claims.build,
    factool.NAME: factool.build,
}


def all_topologies() -> list[Topology]:
    return [build() for build in BUILDERS.values()]
