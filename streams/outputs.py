"""What a stage produces, as values: a quantum to send, an LM call, a dead letter; and
where quanta go (`Routing`: topic names and the keys their consumers need) with the
bookkeeping of one node's children (`Children`)."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from alto.errors import BadInputError
from alto.schemas.messages import (
    DeadLetter,
    LMRequest,
    Mode,
    PathEntry,
    Quantum,
    QuantumKind,
    TraceSpan,
)
from alto.streams.ancestry import (
    key_at_level,
    path_str,
)
from alto.streams.pipeline import StageKind, Topology

# The error prefix of a FAILED quantum that the sink reports as an OVERLOADED result.
OVERLOADED = "overloaded"

# The producers' request limit unless told otherwise (`AltoConfig.max_message_bytes`).
DEFAULT_MAX_MESSAGE_BYTES = 1_000_000
# Room a dead letter keeps for its own fields' framing and the record around it.
LETTER_MARGIN_BYTES = 4096


# What every stamp of the stream runtime (trace spans, created and received times, the
# sink's completion) reads: the wall clock, or the cluster tier's virtual clock (`clock`).
_clock: Callable[[], float] = time.time


def now_ms() -> int:
    return int(_clock() * 1000)


@contextlib.contextmanager
def clock(seconds: Callable[[], float]) -> Iterator[None]:
    """Within the block, stamps read `seconds()` instead of the wall clock (the cluster
    tier's virtual-time loop, so that its traces give critical paths in virtual time).
    Not thread-safe: the process's stamps all change."""
    global _clock
    before, _clock = _clock, seconds
    try:
        yield
    finally:
        _clock = before


@dataclass(frozen=True, slots=True)
class Send:
    """Produce `quantum` to `topic` under `key`."""

    topic: str
    key: str
    quantum: Quantum


@dataclass(frozen=True, slots=True)
class DeadLetterOut:
    """Record the input as a dead letter with `reason` (the request, if known, fails)."""

    reason: str
    error: str
    request_id: str | None = None
    stage: str | None = None

    def letter(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        worker: str,
        max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> DeadLetter:
        """The dead letter for the input at `topic`[`partition`]@`offset`, bytes as read.

        The letter, produced under the letter's `key`, must fit in `max_bytes` (the
        producer's request limit): an input near that size would otherwise make a letter
        the producer refuses, and the input would be lost instead of dead-lettered. Then
        the original key and value are cut to what fits, and `error` says so."""
        error = self.error
        # Key twice (record key and field), value once, the rest small; a margin for the
        # record and batch framing.
        budget = max_bytes - LETTER_MARGIN_BYTES - len(error) - len(topic) - len(worker)
        budget -= len(self.request_id or "") + len(self.stage or "")
        sizes = (len(key or b""), len(value or b""))
        if 2 * sizes[0] + sizes[1] > budget:
            key_budget = max(0, min(sizes[0], budget // 4))
            key = None if key is None else key[:key_budget]
            value = None if value is None else value[: max(0, budget - 2 * key_budget)]
            error += (
                f" (original key of {sizes[0]} bytes and value of {sizes[1]} bytes cut to "
                f"{len(key or b'')} and {len(value or b'')} to fit a dead letter)"
            )
        return DeadLetter(
            reason=self.reason,
            error=error,
            source_topic=topic,
            partition=partition,
            offset=offset,
            worker=worker,
            at_ms=now_ms(),
            key=key,
            value=value,
            request_id=self.request_id,
            stage=self.stage,
        )


@dataclass(frozen=True, slots=True)
class CallLM:
    """Produce an LM call to the LM service's request topic."""

    topic: str
    key: str
    request: LMRequest


Output = Send | DeadLetterOut | CallLM


@dataclass(frozen=True)
class Routing:
    """Where quanta go: topic names and the keys their consumers need."""

    topology: Topology
    prefix: str
    sink_topic: str
    lm_requests_topic: str = ""
    _wanted: dict[tuple[str, str, int], bool] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def sends(self, producer: str, quantum: Quantum) -> list[Send]:
        """One Send per consumer of `producer` (the sink for the final stage)."""
        consumers = self.topology.consumers[producer]
        if not consumers:
            return [Send(self.sink_topic, quantum.request_id, quantum)]
        sends = []
        for c in consumers:
            if self.topology.stages[c].kind is StageKind.LM_WORDS:
                # No topic: the LM worker emits its children itself. It forwards ENDs as
                # any stateless stage would, so they go straight on to its consumers.
                if quantum.kind is QuantumKind.END:
                    sends += self.sends(c, replace(quantum, stage=c))
                continue
            if quantum.kind is QuantumKind.END and not self.wants_end(
                producer, c, len(quantum.path)
            ):
                continue
            key = key_at_level(quantum.request_id, quantum.path, self.topology.key_level(c))
            sends.append(Send(self.topology.stage_topic(self.prefix, c), key, quantum))
        return sends

    def wants_end(self, producer: str, consumer: str, depth: int) -> bool:
        """Whether `consumer` needs, from `producer`, the END of a node at `depth` (the
        length of its path). An aggregate counts the ENDs at or below its level; one above
        it it only forwards, and every one of its inputs carries that END (they descend
        from the same fan-outs above its level, which `Pipeline.build` checks), so it takes
        it from its first input (`after[0]`) alone. A stateless stage forwards every END:
        it needs one that some consumer of its own needs (the last stage's go to the sink).
        Sent along every path, FacTool's `report` got each request's two upper ENDs six
        times over and `encode` ENDs that no stage after it counts: 178 quanta a request
        in all, 134 with this rule."""
        memo = (producer, consumer, depth)
        if (known := self._wanted.get(memo)) is not None:
            return known
        stage = self.topology.stages[consumer]
        if stage.kind is StageKind.AGGREGATE and depth >= self.topology.level[consumer]:
            wanted = True
        elif stage.kind is StageKind.AGGREGATE and stage.after[0] != producer:
            wanted = False
        else:
            after = self.topology.consumers[consumer]
            wanted = not after or any(self.wants_end(consumer, c, depth) for c in after)
        self._wanted[memo] = wanted
        return wanted

    def failed(self, quantum_like: Quantum, stage: str, error: str) -> Send:
        """A FAILED marker for the request, addressed to the sink."""
        q = failed(quantum_like.request_id, stage, error, like=quantum_like)
        return Send(self.sink_topic, q.request_id, q)


def failed(
    request_id: str,
    stage: str,
    error: str,
    *,
    like: Quantum | None = None,
    pipeline: str = "",
    mode: Mode = Mode.STREAMING,
) -> Quantum:
    """A request's FAILED marker, for the sink: the one way every process of ours (stage
    workers, ingest, the scheduler, LM workers) fails a request. Made from `like`, the
    quantum at hand (its pipeline, mode, path and submission time carry over), else from
    what is known. An `error` starting with `overloaded(...)`'s prefix becomes an OVERLOADED
    result at the sink."""
    now = now_ms()
    if like is not None:
        return replace(
            like,
            stage=stage,
            kind=QuantumKind.FAILED,
            error=error,
            payload=None,
            count=None,
            created_at_ms=now,
        )
    return Quantum(
        request_id, pipeline, mode, stage, (), 0, QuantumKind.FAILED, now, now, error=error
    )


def failed_call(request: LMRequest, error: str) -> Quantum:
    """The FAILED marker of an LM call's request: from the call's parent quantum, or from
    the call alone when the parent does not decode."""
    try:
        parent: Quantum | None = Quantum.decode(request.parent)
    except BadInputError:
        parent = None
    return failed(request.request_id, request.stage, error, like=parent, pipeline=request.pipeline)


def overloaded(why: str) -> str:
    """The error of a FAILED marker that the sink reports as an OVERLOADED result."""
    return f"{OVERLOADED}: {why}"


def payload_value(q: Quantum) -> Any:
    if q.payload is None:
        raise BadInputError("bad_payload", f"DATA quantum from {q.stage!r} has no payload")
    try:
        return json.loads(q.payload)
    except ValueError as exc:
        raise BadInputError("bad_payload", f"payload from {q.stage!r} is not JSON: {exc}") from exc


def payload_text(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class Children:
    """Emits the children of one parent quantum for a fan-out stage, then their END.

    In streaming mode (and for a stage that may stream) each child is returned for sending
    the moment it is added; otherwise children are held and released with the END, which
    is the paper's baseline. Shared by in-process fan-outs and the LM workers.
    """

    def __init__(
        self,
        routing: Routing,
        stage: str,
        worker: str,
        parent: Quantum,
        *,
        stream: bool = True,
        simulated: bool = False,
        received_ms: int = 0,
    ) -> None:
        self.routing = routing
        self.stage = stage
        self.worker = worker
        self.parent = parent
        self.stream = stream and parent.mode is Mode.STREAMING
        self.simulated = simulated  # the children are SIMULATED LM output
        self.received_ms = received_ms  # when the parent was handed over (0: unknown)
        self.start_ms = now_ms()
        self.count = 0
        self._held: list[Send] = []

    def add(self, value: Any) -> list[Send]:
        child = self.child(self.count, value)
        self.count += 1
        sends = self.routing.sends(self.stage, child)
        if self.stream:
            return sends
        self._held.extend(sends)
        return []

    def child(self, index: int, value: Any) -> Quantum:
        """Child number `index` with `value` (also the parent of a nested level's children
        before the child itself is complete, as in `Pipeline.lm_words`)."""
        q = self.parent
        end = now_ms()
        span = TraceSpan(
            self.stage,
            path_str(q.path),
            self.worker,
            self.start_ms,
            end,
            (self.worker,),
            self.simulated,
            input_ms=q.created_at_ms,
            received_ms=self.received_ms,
        )
        return replace(
            q,
            stage=self.stage,
            path=(*q.path, PathEntry(self.stage, index)),
            seq=index,
            kind=QuantumKind.DATA,
            count=None,
            payload=payload_text(value),
            created_at_ms=end,
            trace=(*q.trace, span),
        )

    def end(self) -> list[Send]:
        """Held children (baseline) and the END carrying the child count."""
        end = replace(
            self.parent,
            stage=self.stage,
            kind=QuantumKind.END,
            count=self.count,
            payload=None,
            seq=self.count,
            created_at_ms=now_ms(),
            trace=(),
        )
        held, self._held = self._held, []
        return [*held, *self.routing.sends(self.stage, end)]
