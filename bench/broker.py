"""`alto bench broker`: what the embedded broker (Tansu 0.6, memory engine) keeps in memory,
and what deleting a topic gives back.

Three runs, each on a fresh embedded broker, each a number of cycles:
- `rotate`: a cycle creates 20 topics of 8 partitions (a generation's worth), writes
  records of 300 B to them one per batch, and deletes them (what a rotation does);
- `keep`: a cycle writes a tenth as many records of 2 KB, one per batch, to one topic that
  is never deleted (what the contract topics get: a request, a result);
- `mixed`: both in one cycle, the kept records interleaved with the rotating ones (what the
  stack does: results written among a generation's traffic).

After each cycle (and the deletion) it waits for the broker to settle and reads its RSS. It
prints the RSS per cycle, the growth per cycle, and per kept record. The measure behind the
README's "Steady state": whether what still grows on a rotating stack is the rotation or the
records nothing may delete.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psutil
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from alto.bench.common import progress, write_json
from alto.infra.broker import EmbeddedBroker

PARTITIONS = 8
TOPICS_PER_GENERATION = 20
ROTATING_BYTES = 300
KEPT_BYTES = 2000
KEPT_EVERY = 10  # one kept record per this many rotating ones
SETTLE_S = 2.0
RUNS = ("rotate", "keep", "mixed")


def _create(admin: AdminClient, names: list[str]) -> None:
    for future in admin.create_topics([NewTopic(n, PARTITIONS, 1) for n in names]).values():
        future.result()


def _delete(admin: AdminClient, names: list[str]) -> None:
    for future in admin.delete_topics(names).values():
        future.result()


def _cycle(
    admin: AdminClient, bootstrap: str, run: str, cycle: int, records: int
) -> tuple[int, int]:
    """One cycle of `run`: (rotating records, kept records) written."""
    rotating = run in ("rotate", "mixed")
    names = [f"g{cycle}.t{i}" for i in range(TOPICS_PER_GENERATION)] if rotating else []
    if names:
        _create(admin, names)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    written = kept = 0
    for k in range(records):
        partition = k % PARTITIONS
        if rotating:
            topic = names[k % len(names)]
            producer.produce(topic, uuid.uuid4().hex.encode(), b"r" * ROTATING_BYTES, partition)
            written += 1
        if run != "rotate" and k % KEPT_EVERY == 0:
            producer.produce("kept", uuid.uuid4().hex.encode(), b"k" * KEPT_BYTES, partition)
            kept += 1
        if k % 20 == 0:
            producer.flush()  # small batches, as at a few requests per second
    producer.flush()
    if names:
        _delete(admin, names)
    return written, kept


def measure(run: str, cycles: int, records: int) -> dict[str, object]:
    with EmbeddedBroker() as broker:
        assert broker.proc is not None
        proc = psutil.Process(broker.proc.pid)
        admin = AdminClient({"bootstrap.servers": broker.bootstrap_servers})
        _create(admin, ["kept"])

        def rss_mb() -> float:
            # The broker's whole tree: Tansu, and the long-poll front in front of it.
            time.sleep(SETTLE_S)
            tree = [proc, *proc.children(recursive=True)]
            return round(sum(p.memory_info().rss for p in tree) / 2**20, 1)

        rss = [rss_mb()]
        kept = rotating = 0
        for c in range(cycles):
            written, k = _cycle(admin, broker.bootstrap_servers, run, c, records)
            rotating, kept = rotating + written, kept + k
            rss.append(rss_mb())
    growth = (rss[-1] - rss[1]) / max(1, cycles - 1)  # from the first cycle's end on
    return {
        "run": run,
        "rss_mb": rss,
        "growth_mb_per_cycle": round(growth, 2),
        "rotating_records": rotating,
        "kept_records": kept,
        "kb_per_kept_record": round((rss[-1] - rss[0]) * 1024 / kept, 2) if kept else None,
    }


def main(*, quick: bool, json_path: Path | None) -> int:
    cycles, records = (4, 2000) if quick else (8, 4000)
    results = []
    for run in RUNS:
        progress(f"{run}: {cycles} cycles of {records} records")
        results.append(measure(run, cycles, records))
    print("## alto bench broker (embedded broker, Tansu 0.6 memory engine)\n")
    print(
        f"A cycle: {records} records of {ROTATING_BYTES} B to {TOPICS_PER_GENERATION} topics x "
        f"{PARTITIONS} partitions, then those topics deleted (`rotate`); one record of "
        f"{KEPT_BYTES} B per {KEPT_EVERY} of those to a topic never deleted (`keep`); both "
        "interleaved (`mixed`). Small batches (a flush every 20 records). RSS after each "
        f"cycle, {SETTLE_S:.0f} s after its deletion.\n"
    )
    _table(results, cycles)
    write_json(json_path, {"cycles": cycles, "records_per_cycle": records, "runs": results})
    return 0


def _table(results: list[dict[str, object]], cycles: int) -> None:
    cell: Callable[[object], str] = lambda v: "-" if v is None else str(v)  # noqa: E731
    cells = " | ".join(f"cycle {c + 1}" for c in range(cycles))
    print(f"| run | RSS at start (MB) | {cells} |")
    print("|---" * (cycles + 2) + "|")
    for r in results:
        rss = r["rss_mb"]
        assert isinstance(rss, list)
        print(f"| {r['run']} | " + " | ".join(str(v) for v in rss) + " |")
    print("\n| run | growth per cycle after the first (MB) | kept records | KB per kept record |")
    print("|---|---|---|---|")
    for r in results:
        print(
            f"| {r['run']} | {r['growth_mb_per_cycle']} | {r['kept_records']} | "
            f"{cell(r['kb_per_kept_record'])} |"
        )
