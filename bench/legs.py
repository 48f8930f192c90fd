"""`alto bench legs`: where a hop spends its time, on the FacTool stack.

The critical path (`alto bench factool`) charges each hop as `transit`. This runs the sim
tier's stack (`alto bench factool`'s deployment: SIMULATED LM engines, everything else real)
with its Faust and LM workers tracing every record they receive (`alto.legs`), sends
FacTool requests in streaming mode at low load (0.25 requests/s, one at a time: the regime
where the hops are what we trail in-process LangGraph by), and prints each part of a hop:
p50, p90 and mean milliseconds over every record received, and the leg as a whole (emitted
upstream until the stage's handler, or the LM worker's serving, began): one table for the
hops into Faust workers, one for the LM calls into LM workers. `--fetch-wait-ms W` runs the
stack at another fetch wait. JSON: `parts` -> `faust` / `lm` -> part (and `leg`) ->
`p50_ms`, `p90_ms`, `mean_ms`; `by_topic` (the leg's p50 by destination topic), `records`,
`requests`, `p50_s`, `cpu_s_per_request`, `fetch_wait_ms`.
"""

from __future__ import annotations

import shutil
import statistics
from pathlib import Path
from typing import Any

from alto.agents.factool.corpus import questions
from alto.bench.common import OUT_DIR, percentile, progress, stdout_to_stderr, write_json
from alto.bench.factool import _arrivals, _run_kafka, tier_stack, warm
from alto.bench.factool_point import FETCH_WAIT_MS, SEED, SimSetup
from alto.legs import PARTS, parts_of, read_rows
from alto.schemas.messages import Mode

RATE = 0.25
REQUESTS = {"quick": 12, "full": 40}

WHAT = {
    "send": "emitted (a call: placed) until the producer stamped the record",
    "late": "the record until the fetch that returned it was sent (when after it)",
    "hold": "the later of the two until the broker answered",
    "handoff": "answer until the records were handed over (Faust: thread to app loop)",
    "queue": "handed until its stream took it (Faust: behind the worker's other events)",
    "start": "taken until the handler (an LM worker: its serving) began",
    "leg": "the whole hop",
}


def summary(rows: list[list[Any]]) -> dict[str, dict[str, float]]:
    """Per part and for the whole leg: p50, p90 and mean milliseconds over `rows`."""
    if not rows:
        return {}
    cut = [parts_of(r) for r in rows]
    series = {part: sorted(c[part] for c in cut) for part in PARTS}
    series["leg"] = sorted(sum(c.values()) for c in cut)
    return {
        name: {
            "p50_ms": round(percentile(values, 50), 2),
            "p90_ms": round(percentile(values, 90), 2),
            "mean_ms": round(statistics.fmean(values), 2),
        }
        for name, values in series.items()
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
    into_lm = [r for r in rows if r[0].endswith(".lm.work")]  # a call to an LM worker
    into_faust = [r for r in rows if not r[0].endswith(".lm.work")]
    progress(
        f"{point.completed}/{n} OK, p50 {point.p50_s:.2f} s, {point.cpu_s_per_request:.2f} CPU s "
        f"a request; {len(into_faust)} hops into Faust workers and {len(into_lm)} into LM "
        "workers traced"
    )
    parts = {"faust": summary(into_faust), "lm": summary(into_lm)}
    lines = [
        f"## Where a hop goes ({n} FacTool requests at {RATE:g}/s, streaming, fetch wait "
        f"{fetch_wait_ms} ms; SIMULATED LM engines; request p50 {point.p50_s:.2f} s, "
        f"{point.cpu_s_per_request:.2f} CPU s a request)",
    ]
    for name, group, what in (
        ("faust", into_faust, "a Faust worker"),
        ("lm", into_lm, "an LM worker (a call; `queue` nil, `start` its wait for a slot)"),
    ):
        if group:
            lines += ["", f"### Into {what}: {len(group)} records", "", *table(parts[name])]
    print("\n".join(lines))
    write_json(
        json_path or OUT_DIR / "legs.json",
        {
            "requests": n,
            "rate_rps": RATE,
            "fetch_wait_ms": fetch_wait_ms,
            "p50_s": point.p50_s,
            "cpu_s_per_request": point.cpu_s_per_request,
            "records": {"faust": len(into_faust), "lm": len(into_lm)},
            "parts": parts,
            "by_topic": by_topic(rows),
        },
    )
    return 0
