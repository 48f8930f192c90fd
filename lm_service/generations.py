"""One LM instance serving every live generation of the internal topics.

An engine (vLLM above all) is too costly to start per generation, so an LM worker keeps
one engine and runs an `LMWorker` per live generation on it: each with its own partition of
that generation's `lm.work`, its own consumer group, commits and status reports. Which
generations are live, `alto up` writes to `ALTO_GENERATIONS__LIVE_FILE` (`{"live": [N, ...]}`):
a generation that appears is served at once; one that disappears is stopped (its calls
were all finished: its requests drained first) before `alto up` deletes its topics, which
waits until this worker's status file no longer lists it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterable

from alto.config import AltoConfig
from alto.lm_service.engine import Engine
from alto.lm_service.worker import LMWorker, write_status
from alto.streams.pipeline import Topology

log = logging.getLogger(__name__)

POLL_S = 0.25
STOP_TIMEOUT_S = 30.0


def live_generations(config: AltoConfig) -> set[int]:
    """The generations `config.generations.live_file` says are live (none while it is missing
    or being replaced)."""
    assert config.generations.live_file is not None
    try:
        return {int(g) for g in json.loads(config.generations.live_file.read_text())["live"]}
    except (OSError, ValueError, KeyError, TypeError):
        return set()


class GenerationalLMWorker:
    def __init__(
        self, config: AltoConfig, instance: int, engine: Engine, topologies: Iterable[Topology]
    ) -> None:
        self.config = config
        self.instance = instance
        self.engine = engine
        self.topologies = list(topologies)
        self.worker_id = f"lm-{instance}@{config.worker_id}"
        self.metrics_port: int | None = None  # written to the status file (set by the caller)
        self._workers: dict[int, tuple[LMWorker, asyncio.Task[None]]] = {}
        self._stop = asyncio.Event()

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        await self.engine.start()
        try:
            while not self._stop.is_set():
                live = live_generations(self.config)
                for generation in sorted(live - self._workers.keys()):
                    self._start(generation)
                for generation in sorted(self._workers.keys() - live):
                    await self._stop_one(generation)
                for generation, (_, task) in list(self._workers.items()):
                    if task.done():  # it failed: logged, and started again next round
                        log.error("generation %d's LM loop ended: %r", generation, task)
                        del self._workers[generation]
                self._write_status()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), POLL_S)
        finally:
            for generation in list(self._workers):
                await self._stop_one(generation)
            await self.engine.stop()

    def _start(self, generation: int) -> None:
        config = self.config.with_overrides(
            status_file=None,
            generations={"current": generation, "live_file": None},
        )
        worker = LMWorker(config, self.instance, self.engine, self.topologies, owns_engine=False)
        self._workers[generation] = (worker, asyncio.ensure_future(worker.run()))
        log.info("LM instance %d serves generation %d", self.instance, generation)

    async def _stop_one(self, generation: int) -> None:
        worker, task = self._workers.pop(generation)
        worker.request_stop()
        try:
            await asyncio.wait_for(task, STOP_TIMEOUT_S)
        except TimeoutError:
            log.warning("generation %d's LM loop did not stop in time: cancelled", generation)
        except Exception:
            log.exception("generation %d's LM loop failed", generation)
        log.info("LM instance %d no longer serves generation %d", self.instance, generation)

    def _write_status(self) -> None:
        if self.config.status_file is not None:
            write_status(self.config.status_file, self, generations=sorted(self._workers))
