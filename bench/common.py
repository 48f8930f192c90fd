"""What the benchmarks share: a broker (embedded unless one is configured), output files."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alto.config import AltoConfig, load_config, merge
from alto.infra.broker import EmbeddedBroker
from alto.infra.processes import tree_usage

OUT_DIR = Path("bench-out")


@contextlib.contextmanager
def bench_config(name: str, **overrides: Any) -> Iterator[AltoConfig]:
    """A fresh topic prefix and app id on the configured broker, or on an embedded one."""
    tag = f"bench-{name}-{uuid.uuid4().hex[:6]}"
    values = merge(
        {"kafka": {"topic_prefix": f"{tag}."}, "app_id": tag, "data_dir": OUT_DIR / "data" / tag},
        overrides,
    )
    configured = load_config(**values)
    if configured.names_a_broker:
        yield configured
        return
    with EmbeddedBroker() as broker:
        yield configured.with_overrides(kafka={"bootstrap_servers": broker.bootstrap_servers})


def cpu_seconds() -> float:
    """CPU time (user + system) used so far by this process and every live descendant: the
    whole system under test whether it runs in-process (LangGraph) or as child processes
    (the stack: broker, workers, LM engines). Differences over a run give its CPU cost."""
    usage = tree_usage(os.getpid())
    return usage[1] if usage is not None else 0.0


# The kinds of process of a stack, by the name `Stack.pids` gives each (`worker-2`: faust).
ROLES = {"broker": "broker", "worker": "faust", "lm": "lm"}


def cpu_by_role(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds used so far, summed per kind of process of a stack (`ROLES`; each with its
    descendants, e.g. vLLM's engine core), plus `client`: this process alone (the bench's
    producer and result reader, or LangGraph itself)."""
    import psutil

    out: dict[str, float] = collections.defaultdict(float)
    for name, pid in pids.items():
        usage = tree_usage(pid)
        if usage is not None:
            out[ROLES.get(name.split("-")[0], "other")] += usage[1]
    times = psutil.Process().cpu_times()
    out["client"] = times.user + times.system
    return dict(out)


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    idx = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[idx]


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def write_json(path: Path | None, data: dict[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
    progress(f"raw figures written to {path}")


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """File descriptor 1 points at stderr meanwhile (child processes included), so that
    stdout keeps only the markdown."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
