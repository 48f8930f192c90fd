"""Pipelines written with handles: the same topology as the string-named builder, values
in and out of stage functions, joins of named handles, and the mistakes refused."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from alto.agents import claims
from alto.errors import PipelineError
from alto.schemas.messages import Mode, ResultStatus
from alto.streams import REQUEST, Item, Pipeline, collect, combine, count, sum_of
from alto.streams.local import LocalRunner, make_request


def test_claims_by_handles_is_the_topology_of_the_string_builder() -> None:
    strings = (
        Pipeline(claims.NAME, "claims about a question, streamed one by one from an LM")
        .lm("claims", claims.CLAIMS, after=REQUEST)
        .fan_out("words", claims.words, after="claims")
        .aggregate("claim_stats", collect(), after="words", per="claims")
        .aggregate("answer", collect(), after="claim_stats", per=REQUEST)
        .build()
    )
    handles = claims.build()
    assert handles.order == strings.order
    for name, stage in strings.stages.items():
        got = handles.stages[name]
        assert (got.kind, got.after, got.per, got.lm) == (
            stage.kind,
            stage.after,
            stage.per,
            stage.lm,
        )
    assert handles.topics("alto.") == strings.topics("alto.")


def test_stages_are_named_after_their_functions_and_receive_values() -> None:
    def split(text: str) -> list[str]:
        return text.split()

    def tag(item: Item) -> str:
        return f"{item.source}:{item.value}"

    p = Pipeline("names")
    words = p.request.fan_out(split)
    tagged = words.map(tag, with_item=True)
    tagged.aggregate(collect(), name="all")
    t = p.build()
    assert t.order == ("split", "tag", "all")
    result = _serve(t, "a bb")
    assert json.loads(result.output or "") == ["split:a", "split:bb"]


def test_a_join_takes_named_handles_and_an_operator_per_source() -> None:
    def split(text: str) -> list[str]:
        return text.split()

    seen: list[dict[str, Any]] = []

    def finish(parts: dict[str, Any]) -> dict[str, Any]:
        seen.append(parts)
        return {"lengths": sorted(parts["lengths"]), "upper": parts["shouted"]}

    p = Pipeline("joined")
    words = p.request.fan_out(split)
    lengths = words.map(len, name="length")
    upper = words.map(str.upper, name="upper")
    both = p.join("both", finish, lengths=lengths, shouted=(upper, count()))
    assert both.name == "both" and p.build().stages["both"].after == ("length", "upper")
    result = _serve(p.build(), "a bb ccc")
    assert json.loads(result.output or "") == {"lengths": [1, 2, 3], "upper": 3}
    assert set(seen[-1]) == {"lengths", "shouted"}  # the keyword names, not the stage names


@pytest.mark.parametrize(
    "declare",
    [
        lambda p: p.request.map(lambda v: v),  # a lambda has no usable name
        lambda p: p.join("j", dict),  # a join of nothing
        lambda p: p.join("j", dict, a=Pipeline("other").request.map(len)),  # another pipeline's
        lambda p: p.request.map(len).aggregate(count(), name="n", per=Pipeline("x").request),
        lambda p: (lambda m: p.join("j", dict, a=m, b=m))(p.request.map(len)),  # one stage twice
        lambda p: (p.request.map(len), p.request.map(len)),  # the same name twice
    ],
)
def test_mistakes_are_refused_when_declared(declare: Any) -> None:
    with pytest.raises(PipelineError):
        declare(Pipeline("p"))


def test_the_default_level_of_an_aggregate_is_the_request() -> None:
    p = Pipeline("sum")
    p.request.fan_out(str.split, name="words").map(len, name="n").aggregate(
        combine(letters=sum_of(int)), name="total"
    )
    t = p.build()
    assert t.stages["total"].per == REQUEST
    assert json.loads(_serve(t, "ab cde").output or "") == {"letters": 5}


def _serve(topology: Any, text: str) -> Any:
    runner = LocalRunner([topology])
    run = asyncio.run(runner.run([make_request(topology.pipeline, text, "r", Mode.STREAMING)]))
    result = run.results["r"]
    assert result.status is ResultStatus.OK, result.error
    return result
