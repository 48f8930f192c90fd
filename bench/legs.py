"""`alto bench legs`: where a hop into a Faust worker spends its time, on the FacTool stack.

The critical path (`alto bench factool`) charges each hop as `transit`. This runs the sim
tier's stack (`alto bench factool`'s deployment: SIMULATED LM engines, everything else real)
with its Faust workers tracing every record they receive (`alto.agents.legs`), sends
FacTool requests in streaming mode at low load (0.25 requests/s, one at a time: the regime
where the hops are what we trail in-process LangGraph by), and prints each part of a hop:
p50, p90 and mean milliseconds over every record the workers received, and the leg as a
whole (emitted upstream until the stage's handler began). Also by topic, the leg's p50.
The LM workers' own hop (an LM call to its engine) is not traced here; the critical path's
`lm_dispatch` covers it. `--fetch-wait-ms W` runs the stack at another fetch wait.
JSON: `parts` (per part and `leg`: `p50_ms`, `p90_ms`, `mean_ms`), `by_topic`, `records`,
`requests`, `p50_s`, `cpu_s_per_request`, `fetch_wait_ms`.
"""

from __future__ import annotations

import shutil
import statistics
from pathlib import Path
from typing import Any

from alto.agents.factool.corpus import questions
from alto.agents.legs import PARTS, parts_of, read_rows, summary
from alto.bench.common import OUT_DIR, progress, stdout_to_stderr, write_json
from alto.bench.factool import _arrivals, _run_kafka, tier_stack, warm
from alto.bench.factool_point import FETCH_WAIT_MS, SEED, SimSetup
from alto.schemas.messages import Mode

RATE = 0.25
REQUESTS = {"quick": 12, "full": 40}

WHAT = {
    "send": "emitted until the producer stamped the record",
    "late": "the record until the fetch that returned it was sent (when after it)",
    "hold": "the later of the two until the broker answered",
    "handoff": "answer until Faust's consumer thread handed it to the app",
    "queue": "handed until its stream took it (behind the worker's other events)",
    "start": "taken until the stage's handler began",
    "leg": "the whole hop",
}


def table(parts: dict[str, dict[str, float]]) -> list[str]:
    lines = ["| part | p50 (ms) | p90 (ms) | mean (ms) | what |", "|---|---|---|---|---|"]
    for name in (*PARTS, "leg"):
        f = parts[name]
        lines.append(
            f"| {name} | {f['p50_ms']:.1f} | {f['p90_ms']:.1f} | {f['mean_ms']:.1f} | {WHAT[name]} |"
        )
    return lines


def by_topic(rows: list[list[Any]]) -> dict[str, dict[str, float]]:
    """Per topic (its last dotted part): records and the leg's median."""
    legs: dict[str, list[float]] = {}
    for row in rows:
        legs.setdefault(row[0].rsplit(".", 1)[-1], []).append(sum(parts_of(row).values()))
    return {
        topic: {"records": len(v), "leg_p50_ms": round(statistics.median(v), 2)}
        for topic, v in sorted(legs.items())
    }


def main(*, quick: bool, json_path: Path | None, fetch_wait_ms: int = FETCH_WAIT_MS) -> int:
    n = REQUESTS["quick" if quick else "full"]
    folder = OUT_DIR / "legs"
    shutil.rmtree(folder, ignore_errors=True)
    stack, docs = tier_stack("sim", SimSetup(), fetch_wait_ms, leg_trace_dir=folder)
    asked = questions(docs, n, seed=SEED)
    arrivals = _arrivals(n, RATE, SEED)
    try:
        with stdout_to_stderr():
            stack.start()
            stack.wait_ready(600)
            warm(stack, "sim", docs)
        point = _run_kafka(
            stack.config, "sim", Mode.STREAMING, asked, arrivals, "legs", RATE, stack.pids()
        )
    finally:
        stack.stop()
    rows = [r for r in read_rows(folder) if r[1].startswith("legs-")]  # not the warm-up's
    progress(
        f"{point.completed}/{n} OK, p50 {point.p50_s:.2f} s, {point.cpu_s_per_request:.2f} CPU s "
        f"a request; {len(rows)} records traced"
    )
    parts = summary(rows)
    lines = [
        f"## Where a hop into a Faust worker goes ({n} FacTool requests at {RATE:g}/s, "
        f"streaming, fetch wait {fetch_wait_ms} ms, {len(rows)} records; SIMULATED LM engines; "
        f"request p50 {point.p50_s:.2f} s, {point.cpu_s_per_request:.2f} CPU s a request)",
        "",
        *table(parts),
    ]
    print("\n".join(lines))
    write_json(
        json_path or OUT_DIR / "legs.json",
        {
            "requests": n,
            "rate_rps": RATE,
            "fetch_wait_ms": fetch_wait_ms,
            "p50_s": point.p50_s,
            "cpu_s_per_request": point.cpu_s_per_request,
            "records": len(rows),
            "parts": parts,
            "by_topic": by_topic(rows),
        },
    )
    return 0
