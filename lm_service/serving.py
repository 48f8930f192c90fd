"""Serving one LM call: generate, split into quanta, emit each as a child of the LM stage.

Transport-free (like `alto.streams.processor`): the LM worker process and the in-process runner
both use it. A call's children carry the parent's ancestry plus (stage, index), so the
derived keys route them exactly as an in-process fan-out's would.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from alto.errors import BadInputError, EngineError
from alto.lm_service.engine import Engine, GenerationParams, Prompt
from alto.lm_service.quanta import LineWords, Splitter
from alto.schemas.messages import LMRequest, Quantum
from alto.streams.outputs import failed, failed_call
from alto.streams.processor import Children, DeadLetterOut, Routing, Send


def prompt_of(request: LMRequest) -> Prompt:
    return Prompt(
        request.prompt_name,
        tuple((m.role, m.content) for m in request.messages),
        prefix_chars=request.prefix_chars,
    )


async def serve_call(
    request: LMRequest,
    engine: Engine,
    routings: dict[str, Routing],
    worker: str,
    on_first_delta: Callable[[], object] | None = None,
) -> AsyncIterator[Send | DeadLetterOut]:
    """Outputs of one LM call, yielded the moment each quantum of the output is complete.
    `on_first_delta` is called once, when the engine's first text arrives (TTFT)."""
    try:
        parent = Quantum.decode(request.parent)
    except BadInputError as exc:
        for refusal in _refused(request, routings, None, exc.reason, f"LM call's parent: {exc}"):
            yield refusal
        return
    routing = routings.get(request.pipeline)
    stage = routing.topology.stages.get(request.stage) if routing else None
    if routing is None or stage is None or stage.lm is None:
        text = f"no LM stage {request.stage!r} in pipeline {request.pipeline!r}"
        for refusal in _refused(request, routings, parent, "unknown_stage", text):
            yield refusal
        return
    children = Children(
        routing, request.stage, worker, parent, stream=stage.streams, simulated=engine.simulated
    )
    rule = request.quantum_rule.value.lower()
    splitter = Splitter(rule)  # type: ignore[arg-type]
    nested = [
        _Words(routing, name, worker, children, LineWords(rule))  # type: ignore[arg-type]
        for name in routing.topology.word_stages(request.stage)
    ]
    held: list[Send] = []  # nested words in baseline mode: released with the call's END

    def out(sends: list[Send]) -> list[Send]:
        if children.stream:
            return sends
        held.extend(sends)
        return []

    params = GenerationParams(
        max_tokens=request.max_tokens, temperature=request.temperature, seed=request.seed
    )
    try:
        async for delta in engine.generate(request.lm_request_id, prompt_of(request), params):
            if on_first_delta is not None:
                on_first_delta()
                on_first_delta = None
            for words in nested:
                for send in out(words.feed(delta)):
                    yield send
            for quantum in splitter.feed(delta):
                for send in children.add(quantum):
                    yield send
    except EngineError as exc:
        text = f"LM stage {request.stage!r}: {exc}"
        yield DeadLetterOut(exc.reason, text, request.request_id, request.stage)
        yield routing.failed(parent, request.stage, f"{exc.reason}: {text}")
        return
    for words in nested:
        for send in out(words.finish()):
            yield send
    for quantum in splitter.finish():
        for send in children.add(quantum):
            yield send
    for send in [*children.end(), *held]:
        yield send


def _refused(
    request: LMRequest,
    routings: dict[str, Routing],
    parent: Quantum | None,
    reason: str,
    text: str,
) -> list[Send | DeadLetterOut]:
    """A call that cannot be served: its dead letter, and a FAILED result for its request
    (built from the call itself when its parent quantum is unreadable)."""
    outs: list[Send | DeadLetterOut] = [
        DeadLetterOut(reason, text, request.request_id, request.stage)
    ]
    routing = routings.get(request.pipeline) or next(iter(routings.values()), None)
    if routing is None or not request.request_id:
        return outs
    error = f"{reason}: {text}"
    marker = (
        failed_call(request, error)
        if parent is None
        else failed(request.request_id, request.stage, error, like=parent)
    )
    outs.append(Send(routing.sink_topic, request.request_id, marker))
    return outs


class _Words:
    """One `lm_words` stage under an LM call: a `Children` per line of the output, whose
    parent is that line's quantum-to-be (same path as the line `children` will emit)."""

    def __init__(
        self, routing: Routing, stage: str, worker: str, lines: Children, words: LineWords
    ) -> None:
        self.routing = routing
        self.stage = stage
        self.worker = worker
        self.lines = lines
        self.words = words
        self.current: Children | None = None

    def feed(self, delta: str | bytes) -> list[Send]:
        return self._sends(self.words.feed(delta))

    def finish(self) -> list[Send]:
        return self._sends(self.words.finish())

    def _sends(self, events: list[tuple[int, str | None]]) -> list[Send]:
        sends: list[Send] = []
        for line, word in events:
            if self.current is None:
                self.current = Children(
                    self.routing,
                    self.stage,
                    self.worker,
                    self.lines.child(line, None),
                    simulated=self.lines.simulated,
                )
            if word is None:
                sends += self.current.end()
                self.current = None
            else:
                sends += self.current.add(word)
        return sends
