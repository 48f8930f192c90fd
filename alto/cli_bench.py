"""`alto bench NAME`: the benchmarks' command line (what each prints: README, Benchmarks)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def _rates(text: str) -> tuple[float, ...]:
    """`R1,R2,...`: offered loads in requests a second, each above 0."""
    try:
        rates = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: loads are numbers, R1,R2,...") from None
    if not all(r > 0 for r in rates):  # also NaN
        raise argparse.ArgumentTypeError(f"{text!r}: every load must be above 0 req/s")
    return rates


# The flags passed on to a benchmark when set (`alto.bench.run_bench` says which take which).
_OPTIONS = (
    "sim_time_scale",
    "sim_profile",
    "sim_loads",
    "cluster_loads",
    "cluster_point_s",
    "minutes",
    "fetch_wait_ms",
)


def _cmd_bench(args: argparse.Namespace) -> int:
    from alto.bench import run_bench

    options: dict[str, object] = {"tiers": (args.tier,)} if args.tier else {}
    for name in _OPTIONS:  # argparse's dest is the benchmark's keyword
        value = getattr(args, name)
        if value is not None:
            options[name] = value
    return run_bench(args.name, quick=args.quick, json_path=args.json, **options)


def add_bench_command(sub: Any) -> None:
    """Register `bench` on `sub` (the CLI's subparsers)."""
    p = sub.add_parser("bench", help="run a benchmark: a markdown table on stdout")
    p.add_argument(
        "name",
        choices=[
            "hop",
            "lm",
            "scheduler",
            "bm25",
            "rerank",
            "factool",
            "overload",
            "idle",
            "broker",
            "records",
            "legs",
        ],
    )
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", type=Path, default=None, help="write raw figures here")
    p.add_argument(
        "--tier", choices=["sim", "vllm", "cluster"], default=None, help="factool: one tier only"
    )
    p.add_argument(
        "--sim-time-scale",
        type=float,
        default=None,
        help="factool: the sim tier's LM speed (default: the profile's, 0.25 for cpu, 1.0 "
        "for paper; 1.0 = the profile's own hardware), an ablation of LM time's share",
    )
    p.add_argument(
        "--sim-profile",
        choices=["cpu", "paper"],
        default=None,
        help="factool: the sim tier's LM hardware: cpu (SmolLM2 on this machine, the default) "
        "or paper (a 7B model on an A100, from cited measurements)",
    )
    p.add_argument(
        "--sim-loads",
        type=_rates,
        default=None,
        metavar="R1,R2,...",
        help="factool: the sim tier's offered loads (req/s) instead of its sweep, each point "
        "as many requests as the sweep's (8 with --quick, else 30)",
    )
    p.add_argument(
        "--cluster-loads",
        type=_rates,
        default=None,
        metavar="R1,R2,...",
        help="factool: the cluster tier's offered loads (req/s) instead of its sweep",
    )
    p.add_argument(
        "--cluster-point-s",
        type=float,
        default=None,
        help="factool: virtual seconds of arrivals per cluster point (default 30, --full 180)",
    )
    p.add_argument(
        "--fetch-wait-ms",
        type=int,
        default=None,
        help="factool, legs: the stack's fetch wait (default 250 ms, the stack's default)",
    )
    p.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="hop: hold 1,000 quanta/s this long and report latency per 10 s window (a soak)",
    )
    p.set_defaults(func=_cmd_bench)
