"""Pipelines written as the data flows: handles on stage outputs.

`Pipeline.request` is a handle on the pipeline's input; calling a stage method on a handle
declares that stage after it and returns the new stage's handle:

    p = Pipeline("letters")
    words = p.request.fan_out(str.split, name="words")
    lengths = words.map(len, name="length")
    lengths.aggregate(combine(words=count(), letters=sum_of(int)), name="total")

Stage functions receive the value (`with_item=True` passes the whole `Item`: value,
request id, ancestry path, source stage). A stage is named after its function unless given
`name=`. A join takes named handles (`Pipeline.join`). Everything is declared on the same
`Pipeline`, whose string-named builder methods stay the layer underneath, so validation at
declaration and at `build()` is the same either way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from alto.errors import PipelineError
from alto.streams.operators import Item, Operator, by_source, collect, combine

if TYPE_CHECKING:
    from alto.streams.pipeline import LMCall, Pipeline


class Stream:
    """A handle on what one stage emits (or on the request: `Pipeline.request`)."""

    __slots__ = ("name", "pipeline")

    def __init__(self, pipeline: Pipeline, name: str) -> None:
        self.pipeline = pipeline
        self.name = name

    def __repr__(self) -> str:
        return f"Stream({self.pipeline.name}.{self.name})"

    def map(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        with_item: bool = False,
        concurrency: int = 1,
        blocking: bool = False,
        chain: bool = True,
        description: str = "",
    ) -> Stream:
        """One output per input (see `Pipeline.map`)."""
        stage = _stage_name(name, fn)
        self.pipeline.map(
            stage,
            _on_values(fn, with_item),
            after=self.name,
            concurrency=concurrency,
            blocking=blocking,
            chain=chain,
            description=description,
        )
        return Stream(self.pipeline, stage)

    def fan_out(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        with_item: bool = False,
        streams: bool = True,
        concurrency: int = 1,
        blocking: bool = False,
        chain: bool = True,
        description: str = "",
    ) -> Stream:
        """Zero or more children per input, one level deeper (see `Pipeline.fan_out`)."""
        stage = _stage_name(name, fn)
        self.pipeline.fan_out(
            stage,
            _on_values(fn, with_item),
            after=self.name,
            streams=streams,
            concurrency=concurrency,
            blocking=blocking,
            chain=chain,
            description=description,
        )
        return Stream(self.pipeline, stage)

    def lm(
        self,
        call: LMCall,
        *,
        name: str | None = None,
        streams: bool = True,
        chain: bool = True,
        description: str = "",
    ) -> Stream:
        """An LM call per input, its output's quanta as children (see `Pipeline.lm`); named
        after the prompt (the last part of `call.prompt_name`) unless given `name=`."""
        stage = name or call.prompt_name.rsplit(".", 1)[-1]
        self.pipeline.lm(
            stage, call, after=self.name, streams=streams, chain=chain, description=description
        )
        return Stream(self.pipeline, stage)

    def lm_words(self, *, name: str | None = None, description: str = "") -> Stream:
        """The words of each quantum of this LM stage, streamed (see `Pipeline.lm_words`)."""
        stage = name or f"{self.name}_words"
        self.pipeline.lm_words(stage, after=self.name, description=description)
        return Stream(self.pipeline, stage)

    def aggregate(
        self, operator: Operator, *, name: str, per: Stream | None = None, description: str = ""
    ) -> Stream:
        """Fold everything below each node of `per` (a fan-out's handle; default: the
        request) into one output (see `Pipeline.aggregate`)."""
        self.pipeline.aggregate(
            name,
            operator,
            after=self.name,
            per=_level(self.pipeline, per),
            description=description,
        )
        return Stream(self.pipeline, name)


def join(
    pipeline: Pipeline,
    name: str,
    finish: Callable[[dict[str, Any]], Any],
    per: Stream | None,
    sources: Mapping[str, Stream | tuple[Stream, Operator]],
    description: str = "",
) -> Stream:
    """An aggregate over several handles (see `Pipeline.join`)."""
    if not sources:
        raise PipelineError(f"{pipeline.name}: join {name!r} names no sources")
    ops: dict[str, Operator] = {}
    local: dict[str, str] = {}  # stage -> the name `finish` knows it by
    for label, source in sources.items():
        handle, op = source if isinstance(source, tuple) else (source, collect())
        if handle.pipeline is not pipeline:
            raise PipelineError(f"{pipeline.name}: join {name!r}: {handle} is another pipeline's")
        if handle.name in local:
            raise PipelineError(f"{pipeline.name}: join {name!r} names stage {handle.name!r} twice")
        ops[handle.name] = op
        local[handle.name] = label

    def finished(parts: dict[str, Any]) -> Any:
        return finish({local[stage]: value for stage, value in parts["by"].items()})

    pipeline.aggregate(
        name,
        combine(finished, by=by_source(**ops)),
        after=list(local),
        per=_level(pipeline, per),
        description=description,
    )
    return Stream(pipeline, name)


def _level(pipeline: Pipeline, per: Stream | None) -> str:
    if per is None:
        return pipeline.request.name
    if per.pipeline is not pipeline:
        raise PipelineError(f"{pipeline.name}: per={per} is another pipeline's")
    return per.name


def _stage_name(name: str | None, fn: Callable[..., Any]) -> str:
    if name:
        return name
    found = getattr(fn, "__name__", "").strip("_")
    if not found or found == "<lambda>":
        raise PipelineError(f"a stage of {fn!r} needs a name= (it has no usable __name__)")
    return found


def _on_values(fn: Callable[..., Any], with_item: bool) -> Callable[[Item], Any]:
    if with_item:
        return fn

    def on_value(item: Item) -> Any:
        return fn(item.value)

    on_value.__name__ = getattr(fn, "__name__", "on_value")
    on_value.__qualname__ = getattr(fn, "__qualname__", "on_value")
    return on_value
