"""Handing the requests topic from one generation of workers to the next, exactly.

Generations (`alto.infra.generations`) rotate every internal topic; the requests topic is a
contract topic and stays. Two generations are two consumer groups on it, so a request must
be ingested by exactly one of them:

- the old generation **closes** its ingest (SIGUSR1): the request being handled finishes and
  is acknowledged, every later one is left unacknowledged (never handled here), and the
  worker commits what it acknowledged and reports `ingest: closed` in its status file;
- the operator (`alto.infra.generations.hand_over`) then reads the old group's committed
  offsets, which are now exactly the requests it handled, and writes them to the new
  generation's handoff file (`ALTO_GENERATIONS__HANDOFF_FILE`);
- the new generation's consumer does not fetch the requests topic until that file exists
  (`IngestHandover.gated`): then it starts each partition at the file's offset, which
  counts as that partition's committed offset from then on (`IngestHandover.start`), so the
  old generation's requests are never read here. After a later rebalance a partition whose
  group has committed less (nothing yet) is started there too.

The new generation runs and is warm before the old one closes, so requests wait only for
the handoff itself (a commit and a file), not for a worker to start.

Before the gate, the new generation's ingest read the requests topic from its group's
offsets (where the old generation had committed when the new one was created), and its
agent waited on the first request for the file. At every handover most partitions' first
record then stayed unprocessed while later ones were, so the consumer's stall re-read
(`alto.agents.transport`) read them again 10 s later: a 5-11 s p99 bump in `alto soak` after
each rotation (3-4 re-reads per worker per handover, ALTO_GENERATIONS__ROTATE_S=60).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from alto.agents.runtime import AltoApp

log = logging.getLogger(__name__)

HANDOFF_POLL_S = 0.1


class IngestHandover:
    """This worker's side of a handover: the gate of a new generation's ingest (`ours`) and
    the closing of an old one's (`close`)."""

    def __init__(self, handoff: Path | None, topic: str) -> None:
        self.handoff = handoff
        self.topic = topic  # the requests topic
        # Where this generation's reading of each requests partition begins (None: waiting
        # for the handoff file; empty: the first generation, which takes every request).
        self._starts: dict[int, int] | None = None if handoff is not None else {}
        self._known = asyncio.Event()
        if handoff is None:
            self._known.set()
        self.closed = asyncio.Event()
        self.committed = False  # closed, and what it handled committed
        self._busy = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def state(self) -> str:
        if not self.closed.is_set():
            return "open"
        return "closed" if self.committed else "closing"

    @property
    def gated(self) -> bool:
        """Whether the requests topic must not be fetched yet (no handoff file so far)."""
        return self._starts is None

    def start(self, partition: int, committed: int) -> int:
        """The offset this generation's reading of a requests partition begins at, given the
        group's `committed` one: never below the handoff's (call once not `gated`)."""
        return max(committed, (self._starts or {}).get(partition, 0))

    async def ours(self, partition: int, offset: int) -> bool:
        """Whether this generation ingests the request at `offset` (a request below the
        handoff's offsets is the old generation's). A closed ingest never returns (the
        request is left unacknowledged, for the next generation)."""
        if self.closed.is_set():
            await asyncio.Future()  # cancelled when the worker stops
        await self._known.wait()  # the gate keeps requests away until then
        return offset >= (self._starts or {}).get(partition, 0)

    @contextlib.asynccontextmanager
    async def handling(self) -> AsyncIterator[None]:
        self._busy += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._busy -= 1
            if not self._busy:
                self._idle.set()

    async def close(self, commit: Callable[[], Awaitable[object]]) -> None:
        """Stop ingesting: let the request in hand finish, then commit (`commit`: the
        consumer's commit)."""
        if self.closed.is_set():
            return
        self.closed.set()
        log.info("ingest closing (generation handover)")
        await self._idle.wait()
        # Faust's `commit` returns without committing when a commit is already in flight
        # (it waits for that one, whose offsets predate our last acks): the handoff then
        # started below requests this generation had handled, and the next one answered
        # them again (`alto soak` named one: answered by g6, then by g7). The second call
        # commits, or waits for a commit that began after every ack here.
        await commit()
        await commit()
        self.committed = True
        log.info("ingest closed: what it handled is committed")

    async def wait_for_handoff(self) -> None:
        """Open the gate once the previous generation's handoff file exists."""
        if self.handoff is None or not self.gated:
            return
        log.info("ingest waits for the previous generation's handoff (%s)", self.handoff)
        while not self.handoff.is_file():
            await asyncio.sleep(HANDOFF_POLL_S)
        starts = {int(p): int(o) for p, o in json.loads(self.handoff.read_text()).items()}
        self._starts = starts
        self._known.set()
        log.info("ingest starts after the previous generation: %s", starts)


def define_handover(rt: AltoApp) -> None:
    """SIGUSR1 closes this worker's ingest; a new generation's ingest opens once its handoff
    file exists (see the module docstring)."""
    rt.app.conf.alto_ingest_gate = rt.handover  # read by the consumer (`_Consumer`)

    @rt.app.task
    async def open_the_gate() -> None:
        await rt.handover.wait_for_handoff()

    @rt.app.task
    async def on_sigusr1() -> None:
        loop = asyncio.get_running_loop()

        def closing() -> None:
            loop.create_task(rt.handover.close(rt.app.consumer.commit))

        if os.name == "posix":
            loop.add_signal_handler(signal.SIGUSR1, closing)
