"""What the runtime derives from stage annotations, and the declarations it refuses."""

from __future__ import annotations

import pytest

from alto.agents import example
from alto.errors import PipelineError
from alto.streams import REQUEST, Pipeline, collect, count


def _noop(item):  # type: ignore[no-untyped-def]
    return item.value


def test_example_topology_is_derived_from_annotations() -> None:
    t = example.build()
    assert t.depth == {
        "request": 0,
        "sentences": 1,
        "words": 2,
        "normalize": 2,
        "sentence_stats": 1,
        "request_stats": 0,
    }
    assert t.level == {"sentence_stats": 1, "request_stats": 0}
    assert t.key_level("sentence_stats") == 1 and t.key_level("words") is None
    assert t.terminal == "request_stats"
    assert t.roots() == ("sentences",)
    assert t.stage_topic("alto.", "words") == "alto.example.words"
    assert t.levels["normalize"] == ("sentences", "words")


def test_join_at_a_shared_level() -> None:
    t = (
        Pipeline("j")
        .fan_out("claims", _noop)
        .fan_out("queries", _noop, after="claims")
        .map("bm25", _noop, after="queries")
        .map("encode", _noop, after="queries")
        .aggregate("rerank", collect(), after=["bm25", "encode"], per="queries")
        .aggregate("final", collect(), after="rerank", per=REQUEST)
        .build()
    )
    assert t.level["rerank"] == 2 and t.consumers["queries"] == ("bm25", "encode")


@pytest.mark.parametrize(
    "build",
    [
        lambda: Pipeline("p").build(),
        lambda: Pipeline("p").fan_out("a", _noop).build(),  # final output not per request
        lambda: Pipeline("p").map("a", _noop, after="nope").build(),
        lambda: (
            Pipeline("p").fan_out("a", _noop).aggregate("b", count(), after="a", per="zzz").build()
        ),
        lambda: (
            Pipeline("p").map("a", _noop).aggregate("b", count(), after="a").build()
        ),  # nothing below
        lambda: Pipeline("p").map("a", _noop).map("a", _noop),
        lambda: Pipeline("p").map("a b", _noop),
        lambda: (
            Pipeline("p")
            .fan_out("a", _noop)
            .aggregate("b", count(), after="a")
            .map("c", _noop, after="b")
            .map("d", _noop, after="b")
            .build()
        ),
        lambda: (
            Pipeline("p")
            .fan_out("a", _noop)
            .fan_out("b", _noop)
            .aggregate("c", count(), after=["a", "b"], per="a")
            .build()
        ),
    ],
)
def test_inconsistent_declarations_are_refused(build) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(PipelineError):
        build()


def test_aggregates_cannot_be_concurrent() -> None:
    with pytest.raises(PipelineError):
        Pipeline("p").fan_out("a", _noop).aggregate("b", count(), after="a").map(
            "c", _noop, after="b"
        )._add(
            __import__("streams").Stage(
                "x",
                __import__("streams").StageKind.AGGREGATE,
                ("a",),
                operator=count(),
                concurrency=4,
            )
        )
