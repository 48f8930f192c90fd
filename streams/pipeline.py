"""Declaring a pipeline as annotated stages, and the topology derived from the annotations.

A stage says what it consumes (`after`), whether it maps, fans out (and whether that
fan-out may stream) or aggregates, and for an aggregate the level it aggregates at
(`per`: the fan-out stage whose nodes it folds, or "request"). Everything else is
derived here, with no hand-written tags: each stage's input topic, the ancestry depth
of every edge, the partition key each consumer needs (see `alto.streams.ancestry`), which
END markers each aggregator counts, and which it only forwards.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel

from alto.errors import PipelineError
from alto.streams.handles import Stream, join
from alto.streams.operators import Item, Operator

if TYPE_CHECKING:
    from alto.config import AltoConfig

REQUEST = "request"
"""Name of the pipeline's input (the root of every ancestry tree) and of its level."""

MapFn = Callable[[Item], Any | Awaitable[Any]]
FanOutFn = Callable[[Item], Iterable[Any] | AsyncIterable[Any]]


class StageKind(enum.StrEnum):
    MAP = "map"
    FAN_OUT = "fan_out"
    AGGREGATE = "aggregate"
    LM = "lm"  # a fan-out whose children an LM worker produces
    LM_WORDS = "lm_words"  # the words of each quantum of an LM stage, streamed by the worker


@dataclass(frozen=True)
class LMCall:
    """How an LM stage calls the model: the prompt template and the output's quantum rule.

    `render` turns an input item into chat messages ``[(role, content), ...]``; the first
    `prefix_chars` characters of the first message are the same for every call of this
    template (the cacheable prefix the scheduler keeps together for KV reuse).
    """

    prompt_name: str
    render: Callable[[Item], list[tuple[str, str]]]
    rule: str = "line"
    max_tokens: int = 256
    temperature: float = 0.0
    prefix_chars: int = 0


@dataclass(frozen=True)
class Stage:
    """One declared stage. Build these through `Pipeline`'s methods."""

    name: str
    kind: StageKind
    after: tuple[str, ...]
    fn: Callable[[Item], Any] | None = None
    operator: Operator | None = None
    per: str | None = None
    streams: bool = True
    concurrency: int = 1
    blocking: bool = False
    lm: LMCall | None = None
    description: str = ""
    chain: bool = True  # may run in its producer's agent (see `Topology.chained`)

    @property
    def stateful(self) -> bool:
        return self.kind is StageKind.AGGREGATE


class PipelineIndex(Protocol):
    """What a pipeline builds ahead of serving and reads from disk while it serves (an
    embedding store, say), so that no request pays for it: `alto index status|build`."""

    def status(self, config: AltoConfig) -> str:
        """One line: how much of the index is built, and where."""
        ...

    def build(self, config: AltoConfig, progress: bool) -> str:
        """Build what is missing (resumable); one line on what was done."""
        ...


@dataclass(frozen=True)
class Topology:
    """What the runtime derives from a pipeline's stage annotations."""

    pipeline: str
    stages: dict[str, Stage]
    order: tuple[str, ...]  # a topological order
    depth: dict[str, int]  # ancestry depth of each stage's output (REQUEST: 0)
    levels: dict[str, tuple[str, ...]]  # fan-out stage that created each level of the output
    level: dict[str, int]  # aggregates only: the depth they reduce to
    consumers: dict[str, tuple[str, ...]]
    terminal: str
    warmup: Callable[[], None] | None = None  # loads what the stages need, before traffic
    # The pipeline's own settings (`AltoConfig.pipeline_settings[pipeline]`), validated by
    # the registry when a process loads it.
    settings: type[BaseModel] | None = None
    index: PipelineIndex | None = None  # built ahead of serving (`alto index build`)
    # Stages run in memory by the agent that produces their input, with no topic of their
    # own (operator chaining, derived in `Pipeline.build`; see `chainable`).
    chained: frozenset[str] = frozenset()

    def stage_topic(self, prefix: str, stage: str) -> str:
        """The input topic of `stage`."""
        return f"{prefix}{self.pipeline}.{stage}"

    @property
    def topic_stages(self) -> tuple[str, ...]:
        """Stages with an input topic, in topological order. An LM_WORDS stage has none (the
        LM worker serving its upstream LM stage emits its children), nor has a chained one
        (its producer runs it)."""
        return tuple(
            s
            for s in self.order
            if self.stages[s].kind is not StageKind.LM_WORDS and s not in self.chained
        )

    def chains(self) -> dict[str, tuple[str, ...]]:
        """Each agent's chain: the stage (or REQUEST, the ingest agent) that reads a topic,
        and the chained stages it runs in memory behind it, in topological order."""
        head: dict[str, str] = {REQUEST: REQUEST}
        out: dict[str, list[str]] = {REQUEST: []}
        for name in self.order:
            if name in self.chained:
                (up,) = self.stages[name].after
                head[name] = head[up]
                out[head[name]].append(name)
            elif self.stages[name].kind is not StageKind.LM_WORDS:
                head[name] = name
                out[name] = []
        return {h: tuple(stages) for h, stages in out.items()}

    def unchained(self) -> Topology:
        """This topology with every stage on its own topic (chaining off)."""
        return replace(self, chained=frozenset())

    def topics(self, prefix: str) -> list[str]:
        return [self.stage_topic(prefix, s) for s in self.topic_stages]

    def word_stages(self, lm_stage: str) -> tuple[str, ...]:
        """The LM_WORDS stages that split `lm_stage`'s quanta into streamed words."""
        return tuple(
            c for c in self.consumers[lm_stage] if self.stages[c].kind is StageKind.LM_WORDS
        )

    def roots(self) -> tuple[str, ...]:
        """Stages fed directly by the request."""
        return self.consumers[REQUEST]

    def key_level(self, stage: str) -> int | None:
        """The ancestry level `stage` is keyed at (None: stateless, keyed by full path)."""
        return self.level.get(stage)

    def input_depth(self, upstream: str) -> int:
        return self.depth[upstream]


@dataclass
class Pipeline:
    """A named pipeline under construction: add stages, then `build()` the topology."""

    name: str
    description: str = ""
    warmup: Callable[[], None] | None = None
    """Run once per worker at start, in a thread (e.g. load an index or a model), so the
    first request does not pay for it."""
    settings: type[BaseModel] | None = None
    """The pipeline's own settings model (frozen pydantic): a deployment sets its fields in
    `pipeline_settings.<name>` (`ALTO_PIPELINE_SETTINGS__<NAME>__<FIELD>`), and every
    process validates them when it loads the pipeline (`alto.streams.registry`)."""
    index: PipelineIndex | None = None
    """What the stages read from disk, built ahead by `alto index build` (see `PipelineIndex`);
    stages must still serve (more slowly) while it is incomplete."""
    _stages: dict[str, Stage] = field(default_factory=dict)

    @property
    def request(self) -> Stream:
        """A handle on the pipeline's input: declare the first stages on it
        (`alto.streams.handles`)."""
        return Stream(self, REQUEST)

    def join(
        self,
        name: str,
        finish: Callable[[dict[str, Any]], Any],
        *,
        per: Stream | None = None,
        description: str = "",
        **sources: Stream | tuple[Stream, Operator],
    ) -> Stream:
        """An aggregate over several stages' outputs at level `per` (default: the request):
        each source is collected (or folded by the operator paired with its handle), and
        `finish` gets a dict of the results under the sources' keyword names."""
        return join(self, name, finish, per, sources, description)

    def map(
        self,
        name: str,
        fn: MapFn,
        *,
        after: str = REQUEST,
        concurrency: int = 1,
        blocking: bool = False,
        chain: bool = True,
        description: str = "",
    ) -> Pipeline:
        """One output per input, same ancestry (a stateless transform).

        `concurrency` > 1 lets one worker have that many inputs in flight (for stages that
        wait on I/O); order is not kept, which a stateless stage does not need.
        `blocking` runs a synchronous `fn` in a thread so it never stalls the event loop
        (Faust's other agents, heartbeats and commits keep running).
        `chain=False` keeps the stage on its own topic and agent even where it could run in
        its producer's (see `Topology.chained`).
        """
        stage = Stage(
            name,
            StageKind.MAP,
            (after,),
            fn=fn,
            concurrency=concurrency,
            blocking=blocking,
            description=description,
            chain=chain,
        )
        return self._add(stage)

    def fan_out(
        self,
        name: str,
        fn: FanOutFn,
        *,
        after: str = REQUEST,
        streams: bool = True,
        concurrency: int = 1,
        blocking: bool = False,
        chain: bool = True,
        description: str = "",
    ) -> Pipeline:
        """Zero or more children per input, one ancestry level deeper.

        `fn` may be a generator or an async generator; with `streams` each child is
        forwarded as soon as it is yielded (in streaming mode), otherwise all at once.
        `blocking` runs a synchronous `fn` to completion in a thread (then it cannot stream).
        """
        stage = Stage(
            name,
            StageKind.FAN_OUT,
            (after,),
            fn=fn,
            streams=streams,
            concurrency=concurrency,
            blocking=blocking,
            description=description,
            chain=chain,
        )
        return self._add(stage)

    def lm(
        self,
        name: str,
        call: LMCall,
        *,
        after: str = REQUEST,
        streams: bool = True,
        chain: bool = True,
        description: str = "",
    ) -> Pipeline:
        """An LM call per input; each quantum of its output (by `call.rule`) is a child,
        one ancestry level deeper, emitted by the LM worker the moment it is complete."""
        stage = Stage(
            name,
            StageKind.LM,
            (after,),
            lm=call,
            streams=streams,
            description=description,
            chain=chain,
        )
        return self._add(stage)

    def lm_words(self, name: str, *, after: str, description: str = "") -> Pipeline:
        """The words of each quantum of LM stage `after` (rule `line` or `item`), one
        ancestry level below it, each emitted by the LM worker the moment the model has
        written it, with an END per quantum once its line is complete. Consumers of `after`
        get the whole line; consumers of this stage get its words while it is being
        written (e.g. search-query words streaming into BM25 while the query is generated).
        A quantum's words are exactly `line.split()` of that quantum."""
        return self._add(Stage(name, StageKind.LM_WORDS, (after,), description=description))

    def aggregate(
        self,
        name: str,
        operator: Operator,
        *,
        after: str | Iterable[str],
        per: str = REQUEST,
        description: str = "",
    ) -> Pipeline:
        """Fold everything below each node of level `per` into one output at that node.

        `per` names the fan-out stage whose nodes are aggregated, or REQUEST for one
        output per request. Several `after` stages make a join at that level.
        """
        inputs = (after,) if isinstance(after, str) else tuple(after)
        stage = Stage(
            name, StageKind.AGGREGATE, inputs, operator=operator, per=per, description=description
        )
        return self._add(stage)

    def _add(self, stage: Stage) -> Pipeline:
        if stage.name in self._stages or stage.name == REQUEST:
            raise PipelineError(f"{self.name}: duplicate stage name {stage.name!r}")
        if not stage.name.replace("_", "").replace("-", "").isalnum():
            raise PipelineError(f"{self.name}: stage name {stage.name!r} must be alphanumeric")
        if not stage.after:
            raise PipelineError(f"{self.name}: stage {stage.name!r} consumes nothing")
        if stage.concurrency < 1 or (stage.stateful and stage.concurrency != 1):
            # Concurrent handling reorders a keyed stream; aggregation relies on its order.
            raise PipelineError(
                f"{self.name}: {stage.name!r}: concurrency must be 1 for aggregates, >= 1 otherwise"
            )
        self._stages[stage.name] = stage
        return self

    def build(self) -> Topology:
        """Validate the declarations and derive the topology."""
        stages = dict(self._stages)
        if not stages:
            raise PipelineError(f"{self.name}: no stages")
        consumers: dict[str, list[str]] = {REQUEST: [], **{s: [] for s in stages}}
        for stage in stages.values():
            for up in stage.after:
                if up not in consumers:
                    raise PipelineError(f"{self.name}: {stage.name!r} consumes unknown {up!r}")
                consumers[up].append(stage.name)
        order = _topological_order(self.name, stages)
        depth: dict[str, int] = {REQUEST: 0}
        levels: dict[str, tuple[str, ...]] = {REQUEST: ()}
        level: dict[str, int] = {}
        for name in order:
            stage = stages[name]
            chains = {levels[up] for up in stage.after}
            if stage.kind is StageKind.AGGREGATE:
                if stage.per == REQUEST:
                    lvl = 0
                else:
                    first = next(iter(chains))
                    if stage.per not in first:
                        raise PipelineError(
                            f"{self.name}: {name!r} aggregates per {stage.per!r}, "
                            f"which is not a level of its input {first}"
                        )
                    lvl = first.index(stage.per) + 1
                prefixes = {c[:lvl] for c in chains}
                if len(prefixes) != 1:
                    raise PipelineError(
                        f"{self.name}: {name!r} joins inputs whose ancestry differs above "
                        f"level {stage.per!r}: {sorted(chains)}"
                    )
                # A join may take one item per node from each side (depth == level); a
                # single input must come from below the level, or there is nothing to fold.
                floor = lvl if len(stage.after) > 1 else lvl + 1
                for up in stage.after:
                    if depth[up] < floor:
                        raise PipelineError(
                            f"{self.name}: {name!r} aggregates per {stage.per!r} but its input "
                            f"{up!r} is not below that level"
                        )
                level[name] = lvl
                depth[name] = lvl
                levels[name] = next(iter(prefixes))
            else:
                if len(stage.after) != 1:
                    raise PipelineError(f"{self.name}: {name!r} must consume exactly one stage")
                (up,) = stage.after
                if stage.kind is StageKind.LM_WORDS:
                    upstream = stages.get(up)
                    if (
                        upstream is None
                        or upstream.lm is None
                        or upstream.lm.rule
                        not in (
                            "line",
                            "item",
                        )
                    ):
                        raise PipelineError(
                            f"{self.name}: {name!r} splits words of {up!r}, which must be an "
                            "LM stage with rule 'line' or 'item'"
                        )
                if stage.kind in (StageKind.FAN_OUT, StageKind.LM, StageKind.LM_WORDS):
                    depth[name] = depth[up] + 1
                    levels[name] = (*levels[up], name)
                else:
                    depth[name] = depth[up]
                    levels[name] = levels[up]
        terminals = [s for s in order if not consumers[s]]
        if len(terminals) != 1:
            raise PipelineError(f"{self.name}: need exactly one final stage, found {terminals}")
        (terminal,) = terminals
        if depth[terminal] != 0:
            raise PipelineError(
                f"{self.name}: final stage {terminal!r} emits at depth {depth[terminal]}; "
                "aggregate per request first"
            )
        if not consumers[REQUEST]:
            raise PipelineError(f"{self.name}: no stage consumes the request")
        return Topology(
            chained=frozenset(s for s in order if chainable(stages, s)),
            pipeline=self.name,
            stages=stages,
            order=tuple(order),
            depth=depth,
            levels=levels,
            level=level,
            consumers={k: tuple(v) for k, v in consumers.items()},
            terminal=terminal,
            warmup=self.warmup,
            settings=self.settings,
            index=self.index,
        )


def chainable(stages: dict[str, Stage], name: str) -> bool:
    """Whether `name` can run in memory in the agent that produces its input (Flink's
    operator chaining; Kafka Streams' sub-topology): it is stateless, so its input needs no
    repartitioning, and its producer is ours (ingest, or a stage's agent), not an LM worker.
    Topics remain where a key changes (aggregates), where an LM worker produces, and at the
    pipeline's edges. A stage declared with `chain=False` keeps its topic."""
    stage = stages[name]
    if stage.kind not in (StageKind.MAP, StageKind.FAN_OUT, StageKind.LM) or not stage.chain:
        return False
    (up,) = stage.after
    return up == REQUEST or stages[up].kind not in (StageKind.LM, StageKind.LM_WORDS)


def _topological_order(pipeline: str, stages: dict[str, Stage]) -> list[str]:
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(name: str) -> None:
        if state.get(name) == 2 or name == REQUEST:
            return
        if state.get(name) == 1:
            raise PipelineError(f"{pipeline}: cycle through {name!r}")
        state[name] = 1
        for up in stages[name].after:
            visit(up)
        state[name] = 2
        order.append(name)

    for name in stages:
        visit(name)
    return order
