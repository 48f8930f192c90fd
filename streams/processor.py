"""Transport-independent stage logic: one input quantum in, outputs and outcomes out.

The Faust agents (`agents/runtime.py`) and the in-process runner (`streams/local.py`)
both drive these classes, so the broker-free tests exercise the same code as the
workers. Outputs are explicit values: `Send` (produce a quantum) and `DeadLetterOut`.
Aggregator state goes through a `StateStore` (a Faust table in a worker, a dict here).
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
import time
from collections.abc import AsyncIterator, MutableMapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from alto.errors import BadInputError
from alto.schemas.messages import (
    ChatMessage,
    DeadLetter,
    LMRequest,
    Mode,
    PathEntry,
    PipelineRequest,
    PipelineResult,
    Quantum,
    QuantumKind,
    QuantumRule,
    ResultStatus,
    TraceSpan,
)
from alto.streams.admission import Admission
from alto.streams.ancestry import (
    KEY_SEPARATOR,
    key_at_level,
    node_key,
    path_str,
    relative_indices,
    request_id_of_key,
)
from alto.streams.completion import CompletionTracker
from alto.streams.operators import Item
from alto.streams.pipeline import REQUEST, StageKind, Topology

StateStore = MutableMapping[str, Any]
"""Where aggregator state lives: node key -> JSON value."""

# The error prefix of a FAILED quantum that the sink reports as an OVERLOADED result.
OVERLOADED = "overloaded"

# The producers' request limit unless told otherwise (`AltoConfig.max_message_bytes`).
DEFAULT_MAX_MESSAGE_BYTES = 1_000_000
# Room a dead letter keeps for its own fields' framing and the record around it.
LETTER_MARGIN_BYTES = 4096


def now_ms() -> int:
    return int(time.time() * 1000)


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

# The error prefix of a FAILED result for a request that passed its deadline.
DEADLINE = "deadline"
# Spans one node's trace keeps unless told otherwise (`AltoConfig.max_trace_spans`).
DEFAULT_MAX_SPANS = 256


@dataclass(frozen=True, slots=True)
class Expiry:
    """What a sweep does with one key of an aggregator's state: delete it (`marker` None),
    or replace it with `marker` (a done marker) and produce `outputs` (a FAILED result)."""

    marker: dict[str, Any] | None = None
    outputs: tuple[Output, ...] = ()


@dataclass(frozen=True)
class Routing:
    """Where quanta go: topic names and the keys their consumers need."""

    topology: Topology
    prefix: str
    sink_topic: str
    lm_requests_topic: str = ""

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
            key = key_at_level(quantum.request_id, quantum.path, self.topology.key_level(c))
            sends.append(Send(self.topology.stage_topic(self.prefix, c), key, quantum))
        return sends

    def failed(self, quantum_like: Quantum, stage: str, error: str) -> Send:
        """A FAILED marker for the request, addressed to the sink."""
        q = replace(
            quantum_like,
            stage=stage,
            kind=QuantumKind.FAILED,
            error=error,
            payload=None,
            count=None,
            created_at_ms=now_ms(),
        )
        return Send(self.sink_topic, q.request_id, q)


def _value(q: Quantum) -> Any:
    if q.payload is None:
        raise BadInputError("bad_payload", f"DATA quantum from {q.stage!r} has no payload")
    try:
        return json.loads(q.payload)
    except ValueError as exc:
        raise BadInputError("bad_payload", f"payload from {q.stage!r} is not JSON: {exc}") from exc


def _dumps(value: Any) -> str:
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
    ) -> None:
        self.routing = routing
        self.stage = stage
        self.worker = worker
        self.parent = parent
        self.stream = stream and parent.mode is Mode.STREAMING
        self.simulated = simulated  # the children are SIMULATED LM output
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
        )
        return replace(
            q,
            stage=self.stage,
            path=(*q.path, PathEntry(self.stage, index)),
            seq=index,
            kind=QuantumKind.DATA,
            count=None,
            payload=_dumps(value),
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


class Ingest:
    """Turns a `PipelineRequest` into the root quantum of its pipeline."""

    def __init__(
        self,
        routings: dict[str, Routing],
        worker: str,
        default_mode: Mode,
        max_input_chars: int,
        sink_topic: str,
        admission: Admission[PipelineRequest] | None = None,
    ) -> None:
        self.routings = routings
        self.worker = worker
        self.default_mode = default_mode
        self.max_input_chars = max_input_chars
        self.sink_topic = sink_topic
        self.admission = admission

    def handle(self, req: PipelineRequest) -> list[Output]:
        if not req.request_id:
            # No id to send a FAILED result under (and one empty id would stand for many).
            return [DeadLetterOut("bad_request_id", "the request id is empty", None, REQUEST)]
        start = now_ms()
        mode = req.mode or self.default_mode
        root = Quantum(
            request_id=req.request_id,
            pipeline=req.pipeline,
            mode=mode,
            stage=REQUEST,
            path=(),
            seq=0,
            kind=QuantumKind.DATA,
            submitted_at_ms=req.submitted_at_ms,
            created_at_ms=start,
            payload=_dumps(req.input),
        )
        routing = self.routings.get(req.pipeline)
        error: tuple[str, str] | None = None
        if routing is None:
            known = ", ".join(sorted(self.routings)) or "none"
            error = ("unknown_pipeline", f"unknown pipeline {req.pipeline!r} (known: {known})")
        elif len(req.input) > self.max_input_chars:
            error = (
                "input_too_large",
                f"input has {len(req.input)} characters, the limit is {self.max_input_chars}",
            )
        if error is not None:
            reason, text = error
            failed = replace(root, kind=QuantumKind.FAILED, payload=None, error=f"{reason}: {text}")
            return [
                DeadLetterOut(reason, text, req.request_id, REQUEST),
                Send(self.sink_topic, req.request_id, failed),
            ]
        assert routing is not None  # narrowed above; not input validation
        if self.admission is not None and not self.admission.admit(req.request_id, start, req):
            limit = self.admission.capacity
            why = f"{OVERLOADED}: {limit} requests already in flight at this ingest worker"
            failed = replace(root, kind=QuantumKind.FAILED, payload=None, error=why)
            return [Send(self.sink_topic, req.request_id, failed)]
        span = TraceSpan(REQUEST, "", self.worker, req.submitted_at_ms, start, (self.worker,))
        return list(routing.sends(REQUEST, replace(root, trace=(span,))))


class StageProcessor:
    """Runs one stage of one pipeline on the quanta of its input topic."""

    def __init__(
        self, routing: Routing, stage: str, worker: str, *, max_spans: int = DEFAULT_MAX_SPANS
    ) -> None:
        self.routing = routing
        self.topology = routing.topology
        self.stage = self.topology.stages[stage]
        self.name = stage
        self.worker = worker
        self.max_spans = max_spans

    async def process(self, q: Quantum, store: StateStore | None = None) -> AsyncIterator[Output]:
        """Outputs for one input, yielded the moment they exist (streaming)."""
        try:
            if q.kind is QuantumKind.FAILED:
                yield Send(self.routing.sink_topic, q.request_id, q)
                return
            if q.stage not in self.stage.after:
                raise BadInputError(
                    "unexpected_producer",
                    f"{self.name!r} does not consume from {q.stage!r} (expects {self.stage.after})",
                )
            if self.stage.kind is StageKind.AGGREGATE:
                if store is None:
                    raise TypeError("an aggregating stage needs a state store")
                for out in self._aggregate(q, store):
                    yield out
            elif q.kind is QuantumKind.END:
                for send in self.routing.sends(self.name, self._forwarded_end(q)):
                    yield send
            elif self.stage.kind is StageKind.MAP:
                async for out in self._map(q):
                    yield out
            elif self.stage.kind is StageKind.LM:
                for out in self._lm_call(q):
                    yield out
            else:
                async for out in self._fan_out(q):
                    yield out
        except BadInputError as exc:
            yield DeadLetterOut(exc.reason, str(exc), q.request_id, self.name)
            yield self.routing.failed(q, self.name, f"{exc.reason}: {exc}")

    # -- stateless -----------------------------------------------------------------

    def _forwarded_end(self, q: Quantum) -> Quantum:
        return replace(q, stage=self.name, created_at_ms=now_ms(), trace=())

    def _item(self, q: Quantum) -> Item:
        return Item(_value(q), q.request_id, q.path, q.stage)

    def _child(
        self, q: Quantum, path: tuple[PathEntry, ...], seq: int, value: Any, start: int
    ) -> Quantum:
        end = now_ms()
        span = TraceSpan(self.name, path_str(q.path), self.worker, start, end, (self.worker,))
        return replace(
            q,
            stage=self.name,
            path=path,
            seq=seq,
            kind=QuantumKind.DATA,
            count=None,
            payload=_dumps(value),
            created_at_ms=end,
            trace=(*q.trace, span),
        )

    async def _call_failed(self, q: Quantum, exc: Exception) -> AsyncIterator[Output]:
        text = f"stage {self.name!r} raised {type(exc).__name__}: {exc}"
        yield DeadLetterOut("stage_error", text, q.request_id, self.name)
        yield self.routing.failed(q, self.name, text)

    async def _map(self, q: Quantum) -> AsyncIterator[Output]:
        start = now_ms()
        item = self._item(q)
        assert self.stage.fn is not None
        try:
            if self.stage.blocking:
                value = await asyncio.to_thread(self.stage.fn, item)
            else:
                value = self.stage.fn(item)
            if inspect.isawaitable(value):
                value = await value
            out = self._child(q, q.path, q.seq, value, start)
        except Exception as exc:  # the stage's own code: its failure fails the request only
            async for o in self._call_failed(q, exc):
                yield o
            return
        for send in self.routing.sends(self.name, out):
            yield send

    async def _fan_out(self, q: Quantum) -> AsyncIterator[Output]:
        item = self._item(q)
        children = Children(self.routing, self.name, self.worker, q, stream=self.stage.streams)
        assert self.stage.fn is not None
        try:
            fn = self.stage.fn
            if self.stage.blocking:
                produced: Any = await asyncio.to_thread(lambda: list(fn(item)))  # type: ignore[arg-type]
            else:
                produced = fn(item)
            async for value in _aiter(produced):
                for send in children.add(value):
                    yield send
        except Exception as exc:  # the stage's own code
            async for o in self._call_failed(q, exc):
                yield o
            return
        for send in children.end():
            yield send

    def _lm_call(self, q: Quantum) -> list[Output]:
        """An LM stage hands the call to the LM service; a worker there emits the children."""
        call = self.stage.lm
        assert call is not None
        try:
            messages = call.render(self._item(q))
        except Exception as exc:  # the stage's own prompt code
            text = f"stage {self.name!r} could not render its prompt: {type(exc).__name__}: {exc}"
            return [
                DeadLetterOut("stage_error", text, q.request_id, self.name),
                self.routing.failed(q, self.name, text),
            ]
        request = LMRequest(
            lm_request_id=f"{node_key(q.request_id, q.path)}#{self.name}",
            request_id=q.request_id,
            pipeline=q.pipeline,
            stage=self.name,
            prompt_name=call.prompt_name,
            messages=tuple(ChatMessage(role, content) for role, content in messages),
            max_tokens=call.max_tokens,
            quantum_rule=QuantumRule(call.rule.upper()),
            parent=q.encode(),
            enqueued_at_ms=now_ms(),
            prefix_chars=call.prefix_chars,
            temperature=call.temperature,
        )
        return [CallLM(self.routing.lm_requests_topic, q.request_id, request)]

    # -- stateful ------------------------------------------------------------------

    def _aggregate(self, q: Quantum, store: StateStore) -> list[Output]:
        level = self.topology.level[self.name]
        if q.kind is QuantumKind.END and len(q.path) < level:
            # The END of a node above our level: not ours to count, our consumers need it.
            return list(self.routing.sends(self.name, self._forwarded_end(q)))
        depth = self.topology.input_depth(q.stage)
        if len(q.path) > depth or (q.kind is QuantumKind.DATA and len(q.path) != depth):
            raise BadInputError(
                "bad_ancestry",
                f"{self.name!r} got a {q.kind} at depth {len(q.path)} from {q.stage!r}, "
                f"whose output is at depth {depth}",
            )
        node = q.path[:level]
        key = node_key(q.request_id, node)
        state = store.get(key)
        if state is None:
            state = self._new_state(q)
        elif state.get("done"):
            return self._replayed(q, level, state)
        tracker = CompletionTracker.from_json(state["trackers"][q.stage])
        rel = relative_indices(q.path, level)
        if q.kind is QuantumKind.END:
            if q.count is None:
                raise BadInputError("bad_end", "END without a count")
            changed = tracker.add_end(rel, q.count)
        else:
            changed = tracker.add_leaf(rel)
            if changed:
                assert self.stage.operator is not None
                item = Item(_value(q), q.request_id, q.path, q.stage)
                state["acc"] = self.stage.operator.add(state["acc"], item)
                spans = state["spans"]
                for span in q.trace:
                    if len(spans) < self.max_spans:
                        spans.setdefault(f"{span.stage}|{span.path}", span.to_record())
                    else:  # a bounded trace: count what did not fit
                        state["spans_dropped"] = state.get("spans_dropped", 0) + 1
        if not changed:
            return []
        state["trackers"][q.stage] = tracker.to_json()
        state["first_ms"] = state["first_ms"] or now_ms()
        if self.worker not in state["workers"]:
            state["workers"].append(self.worker)
        if not all("" in t["complete"] for t in state["trackers"].values()):
            store[key] = state
            return []
        return self._emit(q, node, key, state, store)

    def _new_state(self, q: Quantum) -> dict[str, Any]:
        assert self.stage.operator is not None
        trackers = {}
        for up in self.stage.after:
            depth = self.topology.input_depth(up) - self.topology.level[self.name]
            trackers[up] = CompletionTracker(depth).to_json()
        return {
            "acc": self.stage.operator.init(),
            "trackers": trackers,
            "spans": {},
            "workers": [],
            "first_ms": 0,
            "done": False,
            # For a deadline's FAILED result: when the node opened (this worker's clock),
            # and what the request's result needs to say.
            "since": now_ms(),
            "req": [q.pipeline, q.mode.value, q.submitted_at_ms],
        }

    @staticmethod
    def _marker(at_ms: int, sent: Sequence[Output] = ()) -> dict[str, Any]:
        """What a node keeps once emitted (or failed): late replays of its inputs are
        recognised, and what the node sent (its output, or its FAILED marker) is kept so
        that a replay of the node's own END can send it again (`_replayed`). The marker
        lives until it expires (`expire`)."""
        kept = [
            [o.topic, o.key, base64.b64encode(o.quantum.encode()).decode("ascii")]
            for o in sent
            if isinstance(o, Send)
        ]
        return {"done": True, "at": at_ms, "sent": kept}

    def _replayed(self, q: Quantum, level: int, marker: dict[str, Any]) -> list[Output]:
        """An input of a node already emitted. Dropped, except the node's own END (or, for a
        node whose first input has no END, that input at the node itself) from its first
        upstream: then the node sends its output again. A replay from the request's root
        (the end-to-end retry) reaches every node again, so it repairs an output lost
        anywhere below; consumers that already hold the output drop the copy."""
        if len(q.path) != level or q.stage != self.stage.after[0]:
            return []
        if q.kind is not QuantumKind.END and self.topology.input_depth(q.stage) != level:
            return []
        return [
            Send(topic, key, Quantum.decode(base64.b64decode(data)))
            for topic, key, data in marker.get("sent", ())
        ]

    def expire(
        self, key: str, state: Any, now: int, retention_ms: int, deadline_ms: int
    ) -> Expiry | None:
        """What a sweep at `now` does with `key`'s state (None: keep it).

        A done marker older than `retention_ms` is deleted. A node open for `deadline_ms`
        or more (0: no deadline) fails its request, naming this stage and the inputs it
        still waits for, and becomes a done marker: its state is freed, and inputs that
        arrive later are dropped."""
        if not isinstance(state, dict):
            return None
        if state.get("done"):
            # A marker without a time predates retention: it is old.
            return Expiry() if now - int(state.get("at", 0)) >= retention_ms else None
        since = int(state.get("since") or state.get("first_ms") or 0)
        if deadline_ms <= 0 or not since or now - since < deadline_ms:
            return None
        pipeline, mode, submitted = state.get("req") or [self.topology.pipeline, "streaming", 0]
        waiting = sorted(
            up for up, t in state.get("trackers", {}).items() if "" not in t["complete"]
        )
        node = key.rpartition(KEY_SEPARATOR)[2]
        error = (
            f"{DEADLINE}: stage {self.name!r} held node {node or 'request'} open for "
            f"{(now - since) / 1000:.0f} s without completing (waiting on "
            f"{', '.join(repr(w) for w in waiting) or 'nothing'})"
        )
        request = Quantum(
            request_id_of_key(key), pipeline, Mode.parse(mode), self.name, (), 0,
            QuantumKind.DATA, int(submitted), now,
        )  # fmt: skip
        failed = self.routing.failed(request, self.name, error)
        return Expiry(self._marker(now, (failed,)), (failed,))

    def _emit(
        self,
        q: Quantum,
        node: tuple[PathEntry, ...],
        key: str,
        state: dict[str, Any],
        store: StateStore,
    ) -> list[Output]:
        assert self.stage.operator is not None
        try:
            value = self.stage.operator.result(state["acc"])
        except Exception as exc:  # the operator's own code
            text = f"stage {self.name!r} raised {type(exc).__name__}: {exc}"
            failed = self.routing.failed(q, self.name, text)
            store[key] = self._marker(now_ms(), (failed,))
            return [DeadLetterOut("stage_error", text, q.request_id, self.name), failed]
        end = now_ms()
        spans = [TraceSpan.from_record(s) for s in state["spans"].values()]
        spans.append(
            TraceSpan(
                self.name,
                path_str(node),
                self.worker,
                state["first_ms"],
                end,
                tuple(sorted(state["workers"])),
            )
        )
        out = replace(
            q,
            stage=self.name,
            path=node,
            seq=node[-1].index if node else 0,
            kind=QuantumKind.DATA,
            count=None,
            payload=_dumps(value),
            created_at_ms=end,
            trace=tuple(spans),
        )
        # Keep only a marker (and what was sent): late replays of this node's inputs are
        # recognised, and a replay of its END sends the output again.
        sends = self.routing.sends(self.name, out)
        store[key] = self._marker(end, sends)
        return list(sends)


class Sink:
    """Turns the final stage's output (or a FAILED marker) into the request's one result.

    `emitted` maps request id -> encoded result. In a worker it is the table whose
    changelog *is* the results topic, so writing a result and remembering it are one
    write; a replayed request finds its result there and is not emitted again.

    Only final outputs and FAILED markers are routed to the sink. Anything else there is
    bad input (a forged or misrouted quantum): `reject` says so, for the caller to
    dead-letter, and `handle` fails its request (if it has no result yet).
    """

    def __init__(self, topologies: dict[str, Topology]) -> None:
        self.terminals = {name: t.terminal for name, t in topologies.items()}

    def _final(self, q: Quantum) -> bool:
        return (
            q.kind is QuantumKind.DATA
            and q.path == ()
            and q.stage == self.terminals.get(q.pipeline)
        )

    def reject(self, q: Quantum) -> DeadLetterOut | None:
        """The dead letter for a quantum that is neither a final output nor FAILED."""
        if q.kind is QuantumKind.FAILED or self._final(q):
            return None
        return DeadLetterOut("not_final", _not_final(q), q.request_id, "sink")

    def handle(self, q: Quantum, emitted: MutableMapping[str, Any]) -> PipelineResult | None:
        if q.request_id in emitted:
            return None
        if self._final(q):
            status, output, error = ResultStatus.OK, q.payload, None
        elif q.kind is QuantumKind.FAILED:
            error = q.error or "failed"
            overloaded = error.startswith(f"{OVERLOADED}:")
            status = ResultStatus.OVERLOADED if overloaded else ResultStatus.FAILED
            output = None
        else:
            status, output, error = ResultStatus.FAILED, None, f"not_final: {_not_final(q)}"
        done = now_ms()
        result = PipelineResult(
            request_id=q.request_id,
            pipeline=q.pipeline,
            status=status,
            output=output,
            error=error,
            # Any submitted_at_ms decodes (a client's clock, or a forged quantum's); the
            # difference must still be an Avro long, or the result could not be written.
            latency_ms=min(max(done - q.submitted_at_ms, -(2**63)), 2**63 - 1),
            submitted_at_ms=q.submitted_at_ms,
            completed_at_ms=done,
            mode=q.mode,
            trace=q.trace,
            simulated=any(span.simulated for span in q.trace),
        )
        emitted[q.request_id] = result
        return result


def _not_final(q: Quantum) -> str:
    return (
        f"not a final output: {q.kind} from {q.pipeline!r} stage {q.stage!r} "
        f"at {path_str(q.path) or 'the request'}"
    )


async def _aiter(produced: Any) -> AsyncIterator[Any]:
    if hasattr(produced, "__aiter__"):
        async for value in produced:
            yield value
    else:
        for value in produced:
            yield value
