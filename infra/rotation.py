"""`alto up`'s rotation of generations (`alto.infra.generations`) on the embedded broker.

Every `ALTO_GENERATION_S` the stack starts the next generation's Faust workers beside the
current ones, hands ingest over to them, and once the old generation has drained (no
request it admitted is without a result, or `ALTO_REQUEST_DEADLINE_S` has passed) stops
its workers, tells the LM workers to let it go, and deletes its topics. The LM workers
serve every live generation on one engine (`alto.lm_service.generations`).

`Rotation.step` runs in `Stack.supervise`: starting the next generation waits (there, for
a minute or so) until its workers own their partitions; draining is checked once a call.
A worker of the old generation that dies while it drains is restarted without the ingest
role (ingest is the new generation's now).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from alto.config import AltoConfig
from alto.errors import AltoError
from alto.infra import generations
from alto.infra.processes import wait_assigned

if TYPE_CHECKING:
    from alto.infra.stack import Stack

log = logging.getLogger(__name__)

FIRST = 1
DRAIN_MARGIN_S = 30.0
LM_RELEASE_TIMEOUT_S = 60.0


@dataclass
class _Old:
    config: AltoConfig
    names: list[str]
    deadline: float  # monotonic: drained by then whatever the workers report


class Rotation:
    def __init__(self, stack: Stack, every_s: float) -> None:
        self.stack = stack
        self.every_s = every_s
        self.live_file = stack.workdir / "generations.json"
        self.generation = FIRST
        self.started_at = time.monotonic()
        self.old: _Old | None = None
        self.rotations = 0

    def first_config(self, config: AltoConfig) -> AltoConfig:
        """The configuration of the first generation (a fresh broker)."""
        self.generation, self.old, self.started_at = FIRST, None, time.monotonic()
        self._write_live([FIRST])
        return config.with_overrides(
            generation=FIRST, ingest_handoff=None, generations_file=self.live_file
        )

    def step(self) -> None:
        if self.old is not None:
            self._retire_if_drained(self.old)
        elif time.monotonic() - self.started_at >= self.every_s:
            self._next()

    def _next(self) -> None:
        stack = self.stack
        old_config = stack.config
        new = self.generation + 1
        config = old_config.with_overrides(
            generation=new, ingest_handoff=generations.handoff_file(stack.workdir, new)
        )
        t0 = time.monotonic()
        generations.create(config)
        self._write_live([self.generation, new])
        old_names = stack.faust_worker_names()
        new_names = [stack.spawn_faust_worker(i, config) for i in range(stack.workers)]
        procs = [stack.process(n) for n in new_names]
        wait_assigned(procs, stack.assigned_topics(config), config.partitions, 300.0)
        if stack.lm_instances:
            from alto.infra.client import wait_lm_reporting

            wait_lm_reporting(config, range(stack.lm_instances), 300.0)
        for name in old_names:  # restarted while draining: no ingest (it is handed over)
            stack.respawn_without_ingest(name, old_config)
        starts = generations.hand_over([stack.process(n) for n in old_names], old_config, config)
        stack.use_generation(config, new_names)
        self.old = _Old(
            old_config,
            old_names,
            time.monotonic() + old_config.request_deadline_s + DRAIN_MARGIN_S,
        )
        self.generation, self.started_at = new, time.monotonic()
        self.rotations += 1
        log.warning(
            "generation %d took over ingest at %s (%.1f s to start it); generation %d drains",
            new,
            starts,
            time.monotonic() - t0,
            old_config.generation,
        )

    def _retire_if_drained(self, old: _Old) -> None:
        stack = self.stack
        procs = [stack.process(n) for n in old.names if stack.has_process(n)]
        if not generations.drained(procs) and time.monotonic() < old.deadline:
            return
        self._write_live([self.generation])
        self._wait_lm_released(old.config.generation)
        for name in old.names:
            stack.remove_process(name)
        deleted = generations.delete(old.config)
        if old.config.ingest_handoff is not None:
            old.config.ingest_handoff.unlink(missing_ok=True)
        self.old = None
        log.warning(
            "generation %d retired: its workers stopped, %d topics deleted",
            old.config.generation,
            len(deleted),
        )

    def _wait_lm_released(self, generation: int) -> None:
        deadline = time.monotonic() + LM_RELEASE_TIMEOUT_S
        for i in range(self.stack.lm_instances):
            proc = self.stack.process(f"lm-{i}")
            while generation in (proc.status() or {}).get("generations", []):
                if time.monotonic() > deadline or not proc.alive():
                    raise AltoError(f"lm-{i} still serves generation {generation}")
                time.sleep(0.1)

    def _write_live(self, live: list[int]) -> None:
        tmp = self.live_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"live": live}))
        tmp.replace(self.live_file)
