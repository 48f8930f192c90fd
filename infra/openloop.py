"""Open-loop load: requests submitted at set moments, whatever the system's state, and every
result they get collected. `alto chaos`, `alto bench overload` and `alto bench factool`
drive their deployments with it.

A request's outcome records when it was submitted, when its first result came (wall clock,
this process), that result, and how many results came in all (more than one is a
duplicate). Results of requests this driver did not submit are ignored, as are records on
the results topic that do not decode.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from types import TracebackType

from alto.config import AltoConfig
from alto.errors import BadInputError
from alto.infra.client import Submitter, TopicReader
from alto.schemas.messages import PipelineRequest, PipelineResult, ResultStatus

POLL_S = 0.05  # the longest a submission can be late because the driver was reading results


@dataclass
class Outcome:
    request: PipelineRequest
    phase: str
    submitted: float  # wall clock
    finished: float | None = None  # wall clock of the first result
    result: PipelineResult | None = None  # the first result
    results: int = 0  # results received; more than one is a duplicate
    extra: list[PipelineResult] = field(default_factory=list)  # the results after the first

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def status(self) -> ResultStatus | None:
        return None if self.result is None else self.result.status

    @property
    def latency_s(self) -> float:
        """Seconds from submission to the first result (NaN while there is none)."""
        return (self.finished or math.nan) - self.submitted


class OpenLoop:
    """Submits requests at given offsets from the start of each `run` and reads results.

    `on_result(outcome)` is called when a request gets its first result; `on_poll()` after
    every read of the results topic (a sampler's hook); `tick(elapsed_s)`, given to `run`
    or `wait`, between reads (a fault injector's hook).
    """

    def __init__(
        self,
        config: AltoConfig,
        *,
        on_result: Callable[[Outcome], None] | None = None,
        on_poll: Callable[[], None] | None = None,
    ) -> None:
        self.submitter = Submitter(config)
        self.reader = TopicReader(config, config.results_topic, from_beginning=False)
        self.outcomes: dict[str, Outcome] = {}
        self.on_result = on_result
        self.on_poll = on_poll

    def __enter__(self) -> OpenLoop:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self.reader.close()

    def submit(self, request: PipelineRequest, phase: str = "") -> Outcome:
        """Submit now (the request's `submitted_at_ms` becomes now)."""
        now = time.time()
        request = dataclasses.replace(request, submitted_at_ms=int(now * 1000))
        outcome = Outcome(request, phase, now)
        self.outcomes[request.request_id] = outcome
        self.submitter.submit(request)
        return outcome

    def run(
        self,
        requests: Iterable[PipelineRequest],
        offsets: Iterable[float],
        phase: str = "",
        *,
        tick: Callable[[float], None] | None = None,
    ) -> list[Outcome]:
        """Submit each request at its offset (s from now), reading results meanwhile;
        return once the last one is submitted and delivered to the broker."""
        t0 = time.time()
        out = []
        for request, offset in zip(requests, offsets, strict=True):
            while (left := offset - (time.time() - t0)) > 0:
                if tick is not None:
                    tick(time.time() - t0)
                self.poll(min(left, POLL_S))
            out.append(self.submit(request, phase))
        self.submitter.flush()
        return out

    def closed_loop(
        self,
        requests: Iterator[PipelineRequest],
        concurrency: int,
        duration_s: float,
        phase: str = "",
        *,
        poll_s: float = 0.02,
    ) -> list[Outcome]:
        """Keep `concurrency` requests of `requests` in flight for `duration_s`, a new one as
        each gets its result (a closed loop: a deployment's throughput when full); return
        every one submitted."""
        mine: list[Outcome] = []
        deadline = time.time() + duration_s
        while time.time() < deadline:
            missing = concurrency - sum(1 for o in mine if o.finished is None)
            if missing > 0:
                batch = list(itertools.islice(requests, missing))
                mine += self.run(batch, [0.0] * len(batch), phase)
            self.poll(poll_s)
        return mine

    def poll(self, timeout_s: float) -> None:
        """Read results for up to `timeout_s` seconds."""
        for _, value in self.reader.poll(timeout_s):
            try:
                result = PipelineResult.decode(value)
            except BadInputError:
                continue
            outcome = self.outcomes.get(result.request_id)
            if outcome is None:
                continue
            outcome.results += 1
            if outcome.finished is not None:
                outcome.extra.append(result)
            else:
                outcome.finished, outcome.result = time.time(), result
                if self.on_result is not None:
                    self.on_result(outcome)
        if self.on_poll is not None:
            self.on_poll()

    def wait(
        self,
        outcomes: Iterable[Outcome],
        timeout_s: float,
        *,
        tick: Callable[[float], None] | None = None,
    ) -> bool:
        """Read results until each of `outcomes` has one or `timeout_s` passes; whether all
        have one. `tick` gets the seconds since the wait began."""
        waiting = list(outcomes)
        started = time.monotonic()
        deadline = started + timeout_s
        while any(o.finished is None for o in waiting):
            if time.monotonic() >= deadline:
                return False
            if tick is not None:
                tick(time.monotonic() - started)
            self.poll(min(POLL_S * 4, max(0.0, deadline - time.monotonic())))
        return True
