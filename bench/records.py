"""`alto bench records`: what a FacTool request costs the broker, topic by topic.

The embedded broker's work (and much of a Faust worker's) grows with the records and, above
all, the batches it is sent (the design's measured facts: Tansu keeps an object per batch).
This runs the sim tier's stack (`alto bench factool`'s deployment: SIMULATED LM engines,
everything else real), sends the same questions in streaming mode and then in baseline mode
at 1 request/s, and reads every partition's log before and after each (`log_stats`). It
prints, per mode, the records, batches and kilobytes (keys and values) each request added
to each topic, largest first. JSON: `modes` -> mode -> `topics` (per topic: `records`,
`batches`, `kb`, per request) and `total`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from alto.agents.factool.corpus import questions
from alto.bench.common import OUT_DIR, progress, stdout_to_stderr, write_json
from alto.bench.factool import _arrivals, _run_kafka, tier_stack, warm
from alto.bench.factool_point import FETCH_WAIT_MS, SEED, SimSetup
from alto.infra.logstats import PartitionLog, log_stats
from alto.schemas.messages import Mode

RATE = 1.0
REQUESTS = {"quick": 8, "full": 30}


@dataclass(frozen=True)
class TopicCost:
    topic: str
    records: float  # per request
    batches: float
    kb: float


def per_request(
    before: Iterable[PartitionLog], after: Iterable[PartitionLog], requests: int
) -> list[TopicCost]:
    """What `requests` added to each topic between two `log_stats` reads, per request,
    largest batch count first (a topic created in between counts from nothing)."""
    totals: dict[str, list[int]] = {}
    for sign, logs in ((-1, before), (1, after)):
        for log in logs:
            t = totals.setdefault(log.topic, [0, 0, 0])
            t[0] += sign * log.records
            t[1] += sign * log.batches
            t[2] += sign * log.bytes
    rows = [
        TopicCost(topic, records / requests, batches / requests, size / 1024 / requests)
        for topic, (records, batches, size) in totals.items()
        if records > 0
    ]
    return sorted(rows, key=lambda r: (-r.batches, r.topic))


def totals(rows: list[TopicCost]) -> TopicCost:
    """All topics together."""
    return TopicCost(
        "all",
        sum(r.records for r in rows),
        sum(r.batches for r in rows),
        sum(r.kb for r in rows),
    )


def table(mode: str, rows: list[TopicCost]) -> list[str]:
    lines = [
        f"\n### {mode}: added to the broker per request\n",
        "| topic | records | batches | KB |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r.topic} | {r.records:.1f} | {r.batches:.1f} | {r.kb:.1f} |" for r in rows]
    total = totals(rows)
    lines.append(
        f"| **all** | **{total.records:.1f}** | **{total.batches:.1f}** | **{total.kb:.1f}** |"
    )
    return lines


def main(*, quick: bool, json_path: Path | None) -> int:
    n = REQUESTS["quick" if quick else "full"]
    stack, docs = tier_stack("sim", SimSetup(), FETCH_WAIT_MS)
    asked = questions(docs, n, seed=SEED)
    arrivals = _arrivals(n, RATE, SEED)
    out: dict[str, Any] = {"requests": n, "rate_rps": RATE, "modes": {}}
    lines = [
        f"## Broker records per FacTool request ({n} requests a mode at {RATE:g}/s, "
        "SIMULATED LM engines)"
    ]
    try:
        with stdout_to_stderr():
            stack.start()
            stack.wait_ready(600)
            warm(stack, "sim", docs)
        for mode in (Mode.STREAMING, Mode.BASELINE):
            name = mode.value.lower()
            before = log_stats(stack.config)
            point = _run_kafka(
                stack.config, "sim", mode, asked, arrivals, f"rec-{name}", RATE, stack.pids()
            )
            rows = per_request(before, log_stats(stack.config), n)
            progress(f"{name}: {point.completed}/{n} OK, p50 {point.p50_s:.2f} s")
            lines += table(name, rows)
            out["modes"][name] = {
                "ok": point.completed,
                "topics": {
                    r.topic: {"records": r.records, "batches": r.batches, "kb": r.kb} for r in rows
                },
                "total": {k: v for k, v in asdict(totals(rows)).items() if k != "topic"},
            }
    finally:
        stack.stop()
    print("\n".join(lines))
    write_json(json_path or OUT_DIR / "records.json", out)
    return 0
