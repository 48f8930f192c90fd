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
- the new generation's ingest waits for that file, acknowledges without handling the
  requests below those offsets (the old generation's), and handles the rest.

The new generation runs and is warm before the old one closes, so requests wait only for
the handoff itself (a commit and a file), not for a worker to start.
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

    def __init__(self, handoff: Path | None) -> None:
        self.handoff = handoff
        self._starts: dict[int, int] | None = None if handoff is not None else {}
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

    async def ours(self, partition: int, offset: int) -> bool:
        """Whether this generation ingests the request at `offset`. Waits for the handoff
        file first; a closed ingest never returns (the request is left unacknowledged, for
        the next generation)."""
        if self.closed.is_set():
            await asyncio.Future()  # cancelled when the worker stops
        starts = self._starts
        if starts is None:
            starts = self._starts = await self._wait_for_handoff()
        return offset >= starts.get(partition, 0)

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
        await commit()
        self.committed = True
        log.info("ingest closed: what it handled is committed")

    async def _wait_for_handoff(self) -> dict[int, int]:
        assert self.handoff is not None
        log.info("ingest waits for the previous generation's handoff (%s)", self.handoff)
        while not self.handoff.is_file():
            await asyncio.sleep(HANDOFF_POLL_S)
        starts = {int(p): int(o) for p, o in json.loads(self.handoff.read_text()).items()}
        log.info("ingest starts after the previous generation: %s", starts)
        return starts


def define_handover(rt: AltoApp) -> None:
    """SIGUSR1 closes this worker's ingest (see the module docstring)."""

    @rt.app.task
    async def on_sigusr1() -> None:
        loop = asyncio.get_running_loop()

        def closing() -> None:
            loop.create_task(rt.handover.close(rt.app.consumer.commit))

        if os.name == "posix":
            loop.add_signal_handler(signal.SIGUSR1, closing)
