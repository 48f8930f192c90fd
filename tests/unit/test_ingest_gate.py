"""A new generation's ingest gate (`alto.agents.handover`): nothing of the requests topic is
read before the handoff file exists, and then each partition starts at the file's offset,
which counts as committed, so the old generation's requests are never read and nothing
waits for the stall re-read."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from faust.types import TP
from faust.types.tuples import ConsumerMessage

from alto.agents.handover import IngestHandover
from alto.agents.transport import FaustApp

REQUESTS = "alto.requests"


def test_the_gate_opens_at_the_handoff_file(tmp_path: Path) -> None:
    handoff = tmp_path / "handoff-g2.json"
    gate = IngestHandover(handoff, REQUESTS)
    assert gate.gated

    async def scenario() -> list[bool]:
        waiting = asyncio.create_task(gate.wait_for_handoff())
        early = asyncio.create_task(gate.ours(0, 40))
        await asyncio.sleep(0.3)
        assert gate.gated and not waiting.done() and not early.done()
        handoff.write_text(json.dumps({"0": 32, "1": 33}))
        await asyncio.wait_for(waiting, 5)
        return [await early, await gate.ours(0, 31), await gate.ours(1, 33), await gate.ours(2, 0)]

    assert asyncio.run(scenario()) == [True, False, True, True]
    assert not gate.gated
    assert gate.start(0, 25) == 32  # the handoff's offset, above what the group committed
    assert gate.start(0, 36) == 36  # what the group committed since
    assert gate.start(5, 7) == 7  # a partition the file does not name


def test_the_first_generation_has_no_gate() -> None:
    gate = IngestHandover(None, REQUESTS)
    assert not gate.gated
    assert asyncio.run(gate.ours(3, 0))
    assert gate.start(3, 12) == 12


def _consumer(gate: IngestHandover, committed: dict[TP, int]) -> tuple[Any, list[tuple[TP, int]]]:
    app = FaustApp("gate", broker="kafka://127.0.0.1:9", store="memory://")
    app.conf.alto_ingest_gate = gate
    app.topics._acking_topics.add(REQUESTS)  # as the ingest agent's subscription makes it
    consumer: Any = app.consumer
    seeks: list[tuple[TP, int]] = []

    async def seek(tp: TP, offset: int) -> None:
        seeks.append((tp, offset))

    consumer.assignment = lambda: set(committed)
    consumer.seek = seek
    for tp, offset in committed.items():  # as `perform_seek` leaves them after a rebalance
        consumer._committed_offset[tp] = offset
        consumer._seeked.add(tp)
    consumer._gate_due = True
    return consumer, seeks


def test_the_consumer_starts_each_requests_partition_at_the_handoff(tmp_path: Path) -> None:
    handoff = tmp_path / "handoff-g2.json"
    gate = IngestHandover(handoff, REQUESTS)
    r0, r1, other = TP(REQUESTS, 0), TP(REQUESTS, 1), TP("alto.g2.sink", 0)
    consumer, seeks = _consumer(gate, {r0: 25, r1: 40, other: 3})

    asyncio.run(consumer._open_gate())  # no handoff yet: nothing moves, still due
    assert seeks == [] and consumer._gate_due

    handoff.write_text(json.dumps({"0": 32, "1": 33}))
    asyncio.run(gate.wait_for_handoff())
    asyncio.run(consumer._open_gate())
    assert seeks == [(r0, 32)]  # r1's group had committed past its start already
    assert consumer._committed_offset[r0] == 32 and consumer._committed_offset[r1] == 40
    assert consumer._committed_offset[other] == 3 and not consumer._gate_due

    # The first records read at the start commit at once: no stall waits for offset 25.
    for offset in (32, 33):
        message = ConsumerMessage(REQUESTS, 0, offset, 0.0, None, None, b"k", b"v", None, tp=r0)
        message.tracked = True
        assert consumer.ack(message)
    assert consumer._new_offset(r0) == 34
    assert r0 not in consumer._stalled_since


def test_closing_commits_after_a_commit_already_in_flight() -> None:
    """Faust's `commit` only waits when another commit is in flight; the close must still
    commit what it acknowledged (else the handoff starts below it: duplicates)."""
    gate = IngestHandover(None, REQUESTS)
    acked = {"offset": 40}
    committed: list[int] = []
    in_flight = {"offset": 38}  # a periodic commit that computed its offsets earlier

    async def commit() -> bool:
        if in_flight:  # as Faust: wait for the commit in flight, commit nothing ourselves
            committed.append(in_flight.pop("offset"))
            return False
        committed.append(acked["offset"])
        return True

    asyncio.run(gate.close(commit))
    assert gate.state == "closed" and committed[-1] == 40, committed
