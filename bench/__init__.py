"""Benchmarks: `alto bench NAME [--quick] [--json PATH]` prints a markdown table, writes raw
figures to `--json` and plots under `bench-out/`."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def run_bench(name: str, *, quick: bool, json_path: Path | None, **options: Any) -> int:
    """`options` (set ones only) go to benchmarks that take them: factool's `tiers` and
    `sim_time_scale`, `sim_profile`, `sim_loads`, `cluster_loads`, `cluster_point_s` and
    `fetch_wait_ms` (legs' too), hop's `minutes`."""
    allowed = {
        "factool": {
            "tiers",
            "sim_time_scale",
            "sim_profile",
            "sim_loads",
            "cluster_loads",
            "cluster_point_s",
            "fetch_wait_ms",
        },
        "hop": {"minutes"},
        "legs": {"fetch_wait_ms"},
    }
    allowed_here = allowed.get(name, set())
    if set(options) - allowed_here:
        raise SystemExit(f"options {sorted(set(options) - allowed_here)} do not apply to {name!r}")
    if name == "hop":
        from alto.bench.hop import main

        return main(quick=quick, json_path=json_path, **options)
    if name == "lm":
        from alto.bench.lm import main as lm_main

        return lm_main(quick=quick, json_path=json_path)
    if name == "scheduler":
        from alto.bench.scheduler import main as scheduler_main

        return scheduler_main(quick=quick, json_path=json_path)
    if name == "bm25":
        from alto.bench.bm25 import main as bm25_main

        return bm25_main(quick=quick, json_path=json_path)
    if name == "rerank":
        from alto.bench.rerank import main as rerank_main

        return rerank_main(quick=quick, json_path=json_path)
    if name == "legs":
        from alto.bench.legs import main as legs_main

        return legs_main(quick=quick, json_path=json_path, **options)
    if name == "factool":
        from alto.bench.factool import main as factool_main

        return factool_main(quick=quick, json_path=json_path, **options)
    if name == "idle":
        from alto.bench.idle import main as idle_main

        return idle_main(quick=quick, json_path=json_path)
    if name == "broker":
        from alto.bench.broker import main as broker_main

        return broker_main(quick=quick, json_path=json_path)
    if name == "records":
        from alto.bench.records import main as records_main

        return records_main(quick=quick, json_path=json_path)
    if name == "overload":
        from alto.bench.overload import main as overload_main

        return overload_main(quick=quick, json_path=json_path)
    raise SystemExit(f"unknown benchmark {name!r}")
