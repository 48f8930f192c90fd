"""`alto up`'s rotation of generations (`alto.infra.generations`) on the embedded broker.

Every `ALTO_GENERATIONS__ROTATE_S` the stack starts the next generation's Faust workers beside the
current ones, hands ingest over to them, and once the old generation has drained (no
request it admitted is without a result, as its admission control counts; at the latest
after `ALTO_ADMISSION__TTL_S`, when admission forgets a request anyway) stops
its workers, tells the LM workers to let it go, and deletes its topics. The LM workers
serve every live generation on one engine (`alto.lm_service.generations`).

`Rotation.step` runs in `Stack.supervise` (once a second under `alto up`) and never waits
long: each call looks at the status files and moves on when the next generation serves,
when the old one has drained, when the LM workers have let it go. Only the handover itself
waits (the old workers' commit, a second or two). A worker of the old generation that dies
while it drains is restarted without the ingest role (ingest is the new generation's now).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from alto.config import AltoConfig
from alto.errors import AltoError
from alto.files import write_json
from alto.infra import generations
from alto.infra.processes import Assignment

if TYPE_CHECKING:
    from alto.infra.stack import Stack

log = logging.getLogger(__name__)

FIRST = 1
# The embedded broker's default (`ALTO_GENERATIONS__ROTATE_S` unset): at half the sustainable load a
# generation then stores about 150,000 records before it is deleted (README, Steady state).
DEFAULT_GENERATION_S = 300.0
DRAIN_MARGIN_S = 30.0
START_TIMEOUT_S = 300.0
LM_RELEASE_TIMEOUT_S = 60.0


@dataclass
class _Next:
    config: AltoConfig
    names: list[str]
    assignment: Assignment
    deadline: float  # monotonic: started by then, or the stack fails


@dataclass
class _Old:
    config: AltoConfig
    names: list[str]
    deadline: float  # monotonic: drained by then whatever the workers report
    released: bool = False  # the LM workers have been told to let it go


class Rotation:
    """The rotation's state machine; `step` never waits long (a handover's commit)."""

    def __init__(self, stack: Stack, every_s: float) -> None:
        self.stack = stack
        self.every_s = every_s
        self.live_file = stack.workdir / "generations.json"
        self.started_at = time.monotonic()
        self.next: _Next | None = None
        self.old: _Old | None = None
        self.rotations = 0

    def first_config(self, config: AltoConfig) -> AltoConfig:
        """The configuration of the first generation (a fresh broker)."""
        self.started_at = time.monotonic()
        self.next = self.old = None
        self._write_live([FIRST])
        return config.with_overrides(
            generations={"current": FIRST, "handoff_file": None, "live_file": self.live_file},
        )

    @property
    def generation(self) -> int:
        """The generation that ingests."""
        return self.stack.config.generation

    def step(self) -> None:
        if self.next is not None:
            self._take_over(self.next)
        elif self.old is not None:
            self._retire(self.old)
        elif time.monotonic() - self.started_at >= self.every_s:
            self._start_next()

    def _start_next(self) -> None:
        stack = self.stack
        new = self.generation + 1
        config = stack.config.with_overrides(
            generations={
                "current": new,
                "handoff_file": generations.handoff_file(stack.workdir, new),
            },
        )
        app = generations.create(config, after=stack.config)
        self._write_live([self.generation, new])
        names = [stack.spawn_faust_worker(i, config) for i in range(stack.workers)]
        assignment = Assignment(
            [stack.process(n) for n in names],
            generations.assigned_topics(app),
            config.kafka.partitions,
        )
        self.next = _Next(config, names, assignment, time.monotonic() + START_TIMEOUT_S)
        log.info("generation %d starting beside generation %d", new, self.generation)

    def _take_over(self, nxt: _Next) -> None:
        """Once the next generation serves (its workers own their partitions, every LM
        instance serves it), hand ingest over to it."""
        stack = self.stack
        if time.monotonic() > nxt.deadline:
            raise AltoError(
                f"generation {nxt.config.generation} did not start in {START_TIMEOUT_S:.0f} s"
            )
        if not nxt.assignment.check() or not self._lm_serve(nxt.config.generation, True):
            return
        old_config, old_names = stack.config, stack.faust_worker_names()
        for name in old_names:  # restarted while draining: no ingest (it is handed over)
            stack.respawn_without_ingest(name, old_config)
        starts = generations.hand_over(
            [stack.process(n) for n in old_names], old_config, nxt.config
        )
        stack.use_generation(nxt.config, nxt.names, nxt.assignment.topics)
        # Drained when no request the old workers admitted is without a result; admission
        # forgets a request after its TTL, so that is the longest it can take.
        self.old = _Old(
            old_config,
            old_names,
            time.monotonic() + old_config.admission.ttl_s + DRAIN_MARGIN_S,
        )
        self.next = None
        self.started_at = time.monotonic()
        self.rotations += 1
        log.warning(
            "generation %d took over ingest at %s; generation %d drains",
            self.generation,
            starts,
            old_config.generation,
        )

    def _retire(self, old: _Old) -> None:
        """Once the old generation has drained, let the LM workers release it, then stop its
        workers and delete its topics."""
        stack = self.stack
        if not old.released:
            procs = [stack.process(n) for n in old.names if stack.has_process(n)]
            if not generations.drained(procs) and time.monotonic() < old.deadline:
                return
            self._write_live([self.generation])
            old.released = True
            old.deadline = time.monotonic() + LM_RELEASE_TIMEOUT_S
        if not self._lm_serve(old.config.generation, False):
            if time.monotonic() > old.deadline:
                raise AltoError(f"LM workers still serve generation {old.config.generation}")
            return
        for name in old.names:
            stack.remove_process(name)
        deleted = generations.delete(old.config)
        if old.config.generations.handoff_file is not None:
            old.config.generations.handoff_file.unlink(missing_ok=True)
        self.old = None
        log.warning(
            "generation %d retired: its workers stopped, %d topics deleted",
            old.config.generation,
            len(deleted),
        )

    def _lm_serve(self, generation: int, serving: bool) -> bool:
        """Whether every live LM worker does (`serving`) or does not serve `generation`,
        by its status file."""
        for i in range(self.stack.lm_instances):
            proc = self.stack.process(f"lm-{i}")
            if not proc.alive():
                continue
            served = generation in (proc.status() or {}).get("generations", [])
            if served is not serving:
                return False
        return True

    def _write_live(self, live: list[int]) -> None:
        write_json(self.live_file, {"live": live})
