"""`alto pipelines` and `alto topology`: what this installation serves, and how it runs it."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from alto.config import load_config


def _cmd_pipelines(args: argparse.Namespace) -> int:
    from alto.streams.registry import registry

    for name, registered in sorted(registry(load_config()).items()):
        topology = registered.topology
        stages = " -> ".join(f"{s}({topology.stages[s].kind.value})" for s in topology.order)
        print(f"{name}\t{registered.source}\t{stages}")
    return 0


def _cmd_topology(args: argparse.Namespace) -> int:
    from alto.streams.chain import describe
    from alto.streams.registry import registry

    config = load_config()
    known = registry(config)
    names = args.names or sorted(known)
    if unknown := [n for n in names if n not in known]:
        print(
            f"alto topology: unknown pipelines {unknown}; known: {sorted(known)}", file=sys.stderr
        )
        return 2
    for name in names:
        topics = (config.internal_prefix, config.requests_topic)
        lm, fallback = config.lm_requests_topic, None
        if config.scheduler.direct:  # placed by the worker that makes the call
            lm, fallback = config.lm_work_topic, config.lm_requests_topic
        print(describe(known[name].topology, *topics, lm, config.sink_topic, fallback))
    return 0


def add_pipeline_commands(sub: Any) -> None:
    """Register the commands on `sub` (the CLI's subparsers)."""
    p = sub.add_parser(
        "pipelines",
        help="list the pipelines this installation serves (built-in, `alto.pipelines` entry "
        "points, ALTO_PIPELINE_MODULES): name, source, stages",
    )
    p.set_defaults(func=_cmd_pipelines)

    p = sub.add_parser(
        "topology",
        help="print each pipeline's agents: the topic each reads, the stages it runs (chained "
        "ones in memory) and the topics it writes",
    )
    p.add_argument("names", nargs="*", metavar="PIPELINE", help="default: every pipeline")
    p.set_defaults(func=_cmd_topology)
