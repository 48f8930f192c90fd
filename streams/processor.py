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
from collections.abc import AsyncIterator, MutableMapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from alto.errors import BadInputError
from alto.schemas.messages import (
    ChatMessage,
    LMRequest,
    Mode,
    PathEntry,
    Quantum,
    QuantumKind,
    QuantumRule,
    TraceSpan,
)
from alto.streams.ancestry import (
    KEY_SEPARATOR,
    node_key,
    path_str,
    relative_indices,
    request_id_of_key,
)
from alto.streams.completion import CompletionTracker
from alto.streams.operators import Item
from alto.streams.outputs import (
    DEFAULT_MAX_MESSAGE_BYTES,
    OVERLOADED,
    CallLM,
    Children,
    DeadLetterOut,
    Output,
    Routing,
    Send,
    now_ms,
    payload_text,
    payload_value,
)
from alto.streams.pipeline import StageKind

StateStore = MutableMapping[str, Any]
"""Where aggregator state lives: node key -> JSON value."""

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

    async def process(
        self, q: Quantum, store: StateStore | None = None, received_ms: int = 0
    ) -> AsyncIterator[Output]:
        """Outputs for one input, yielded the moment they exist (streaming). `received_ms`:
        when the consumer handed `q` over (wall clock; 0: unknown), for the trace."""
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
                for out in self._aggregate(q, store, received_ms):
                    yield out
            elif q.kind is QuantumKind.END:
                for send in self.routing.sends(self.name, self._forwarded_end(q)):
                    yield send
            elif self.stage.kind is StageKind.MAP:
                async for out in self._map(q, received_ms):
                    yield out
            elif self.stage.kind is StageKind.LM:
                for out in self._lm_call(q):
                    yield out
            else:
                async for out in self._fan_out(q, received_ms):
                    yield out
        except BadInputError as exc:
            yield DeadLetterOut(exc.reason, str(exc), q.request_id, self.name)
            yield self.routing.failed(q, self.name, f"{exc.reason}: {exc}")

    # -- stateless -----------------------------------------------------------------

    def _forwarded_end(self, q: Quantum) -> Quantum:
        return replace(q, stage=self.name, created_at_ms=now_ms(), trace=())

    def _item(self, q: Quantum) -> Item:
        return Item(payload_value(q), q.request_id, q.path, q.stage)

    def _child(
        self,
        q: Quantum,
        path: tuple[PathEntry, ...],
        seq: int,
        value: Any,
        start: int,
        received_ms: int,
    ) -> Quantum:
        end = now_ms()
        span = TraceSpan(
            self.name,
            path_str(q.path),
            self.worker,
            start,
            end,
            (self.worker,),
            input_ms=q.created_at_ms,
            received_ms=received_ms,
        )
        return replace(
            q,
            stage=self.name,
            path=path,
            seq=seq,
            kind=QuantumKind.DATA,
            count=None,
            payload=payload_text(value),
            created_at_ms=end,
            trace=(*q.trace, span),
        )

    async def _call_failed(self, q: Quantum, exc: Exception) -> AsyncIterator[Output]:
        text = f"stage {self.name!r} raised {type(exc).__name__}: {exc}"
        yield DeadLetterOut("stage_error", text, q.request_id, self.name)
        yield self.routing.failed(q, self.name, text)

    async def _map(self, q: Quantum, received_ms: int) -> AsyncIterator[Output]:
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
            out = self._child(q, q.path, q.seq, value, start, received_ms)
        except Exception as exc:  # the stage's own code: its failure fails the request only
            async for o in self._call_failed(q, exc):
                yield o
            return
        for send in self.routing.sends(self.name, out):
            yield send

    async def _fan_out(self, q: Quantum, received_ms: int) -> AsyncIterator[Output]:
        item = self._item(q)
        children = Children(
            self.routing,
            self.name,
            self.worker,
            q,
            stream=self.stage.streams,
            received_ms=received_ms,
        )
        assert self.stage.fn is not None
        try:
            fn = self.stage.fn
            if self.stage.blocking:
                produced: Any = await asyncio.to_thread(lambda: list(fn(item)))  # type: ignore[arg-type]
            else:
                produced = fn(item)
            async for value in each_async(produced):
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

    def _aggregate(self, q: Quantum, store: StateStore, received_ms: int) -> list[Output]:
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
                item = Item(payload_value(q), q.request_id, q.path, q.stage)
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
        return self._emit(q, node, key, state, store, received_ms)

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
        received_ms: int,
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
                input_ms=q.created_at_ms,  # the input that completed the node
                received_ms=received_ms,
            )
        )
        out = replace(
            q,
            stage=self.name,
            path=node,
            seq=node[-1].index if node else 0,
            kind=QuantumKind.DATA,
            count=None,
            payload=payload_text(value),
            created_at_ms=end,
            trace=tuple(spans),
        )
        # Keep only a marker (and what was sent): late replays of this node's inputs are
        # recognised, and a replay of its END sends the output again.
        sends = self.routing.sends(self.name, out)
        store[key] = self._marker(end, sends)
        return list(sends)


async def each_async(produced: Any) -> AsyncIterator[Any]:
    """The items of an iterable or an async iterable, either way asynchronously."""
    if hasattr(produced, "__aiter__"):
        async for value in produced:
            yield value
    else:
        for value in produced:
            yield value


# The stage runtime's values, from the modules that define them (callers import them here).
from alto.streams.ingest import Ingest  # noqa: E402
from alto.streams.sink import Sink  # noqa: E402

__all__ = [
    "DEADLINE",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_MAX_SPANS",
    "OVERLOADED",
    "CallLM",
    "Children",
    "DeadLetterOut",
    "Expiry",
    "Ingest",
    "Output",
    "Routing",
    "Send",
    "Sink",
    "StageProcessor",
    "StateStore",
    "now_ms",
]
