"""Operator chaining: which stages run in their producer's agent (derived from the
annotations, for every pipeline we ship), and that a chained run gives the same results,
traces and failures as one with a topic per stage, under shuffled and duplicated delivery."""

from __future__ import annotations

import asyncio
import json

import pytest

from alto.agents import claims, example, hop
from alto.agents.factool import pipeline as factool
from alto.config import AltoConfig
from alto.schemas.messages import Mode, ResultStatus
from alto.streams import REQUEST, Item, Pipeline, collect, count
from alto.streams.chain import Chains, describe
from alto.streams.local import LocalRunner, make_request
from alto.streams.outputs import Routing, Send
from alto.streams.registry import registry

TEXTS = example.example_texts(20, seed=23)


@pytest.mark.parametrize(
    ("build", "chained", "topics"),
    [
        (
            example.build,
            {"sentences", "words", "normalize"},
            ("sentence_stats", "request_stats"),
        ),
        (claims.build, {"claims"}, ("words", "claim_stats", "answer")),
        (hop.build, set(), ("relay",)),  # declared chain=False: the hop is what it measures
        (
            factool.build,
            {"answer", "rerank", "claim_search", "verify"},
            ("claims", "queries", "bm25", "encode", "join", "evidence", "judged", "report"),
        ),
    ],
)
def test_every_pipeline_chains_exactly_its_stateless_stages_behind_our_agents(
    build, chained, topics
) -> None:  # type: ignore[no-untyped-def]
    topology = build()
    assert topology.chained == chained
    assert topology.topic_stages == topics
    # Every stage runs somewhere: in the agent of its topic, or chained behind one.
    chains = topology.chains()
    run_by = [s for head, rest in chains.items() for s in ((head, *rest))]
    words = {s for s, spec in topology.stages.items() if spec.kind.value == "lm_words"}
    assert sorted(run_by) == sorted({REQUEST, *topology.stages} - words)
    unchained = topology.unchained()
    assert unchained.chained == frozenset()
    assert set(unchained.topic_stages) == set(topology.stages) - words


def test_chaining_follows_the_annotations() -> None:
    p = Pipeline("t")
    up = p.request.fan_out(str.split, name="split")  # stateless, after ingest: chained
    kept = up.map(str.upper, name="kept", chain=False)  # opted out: a topic
    after_kept = kept.map(str.lower, name="after_kept")  # behind a topic stage: chained
    llm = p.request.lm(factool.ANSWER, name="ask")  # an LM call placed by ingest: chained
    behind_lm = llm.map(len, name="behind_lm")  # an LM worker produces it: a topic
    stats = after_kept.aggregate(count(), name="stats")  # keyed: always a topic
    p.join("both", lambda parts: parts, stats=stats, lens=behind_lm)
    topology = p.build()
    assert topology.chained == {"split", "after_kept", "ask"}
    assert topology.chains()[REQUEST] == ("split", "ask")
    assert topology.chains()["kept"] == ("after_kept",)
    text = describe(topology, "x.", "x.requests", "x.lm", "x.sink")
    assert "agent kept: reads x.t.kept\n  runs kept(map) -> after_kept(map)" in text
    assert "writes x.t.stats" in text and "LM workers write: x.t.behind_lm" in text
    assert "writes x.lm (its LM calls; an LM worker" in text
    direct = describe(topology, "x.", "x.requests", "x.work", "x.sink", "x.lm")
    assert "writes x.work (its LM calls; x.lm while every LM instance is saturated" in direct


def test_the_config_switch_puts_every_stage_on_a_topic() -> None:
    off = registry(AltoConfig(chaining=False))["example"].topology
    on = registry(AltoConfig())["example"].topology
    assert off.chained == frozenset() and on.chained == {"sentences", "words", "normalize"}


def _run(topologies, requests, **kw):  # type: ignore[no-untyped-def]
    return asyncio.run(LocalRunner(topologies, **kw).run(requests))


@pytest.mark.parametrize("mode", [Mode.STREAMING, Mode.BASELINE])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_chained_and_unchained_runs_agree_under_shuffled_and_duplicated_delivery(
    mode: Mode, seed: int
) -> None:
    reqs = [make_request("example", t, f"r{i}", mode) for i, t in enumerate(TEXTS)]
    runs = {
        chained: _run(
            [example.build() if chained else example.build().unchained()],
            reqs,
            shuffle=True,
            duplicate=0.3,
            seed=seed,
        )
        for chained in (True, False)
    }
    for run in runs.values():
        assert not run.dead_letters
        for req, text in zip(reqs, TEXTS, strict=True):
            result = run.results[req.request_id]
            assert result.status is ResultStatus.OK and result.mode is mode
            assert json.loads(result.output or "") == example.expected_output(text)
    # Fewer deliveries through topics with chaining: the chained stages' inputs never
    # travel (the runner counts what it takes from a topic).
    assert runs[True].delivered < runs[False].delivered


def test_a_chained_stage_adds_its_span_and_its_hand_over_has_no_transit() -> None:
    run = _run([example.build()], [make_request("example", TEXTS[3], "r")])
    spans = run.results["r"].trace
    chained = [s for s in spans if s.stage in ("sentences", "words", "normalize")]
    assert {s.stage for s in chained} == {"sentences", "words", "normalize"}
    for span in chained:  # handed over in memory the moment it was emitted
        assert 0 <= span.received_ms - span.input_ms <= 50, span


def _explode(item: Item) -> str:
    if "boom" in item.value:
        raise ValueError("boom")
    return str(item.value)


def test_a_chained_stage_that_raises_fails_its_request_with_a_dead_letter() -> None:
    p = Pipeline("t")
    words = p.request.fan_out(str.split, name="split")
    checked = words.map(_explode, name="check", with_item=True)
    checked.aggregate(collect(), name="all")
    topology = p.build()
    assert topology.chained == {"split", "check"}
    reqs = [make_request("t", "fine words here", "ok"), make_request("t", "a boom b", "bad")]
    run = _run([topology], reqs, shuffle=True, duplicate=0.2, seed=4)
    assert run.results["ok"].status is ResultStatus.OK
    assert json.loads(run.results["ok"].output or "") == ["fine", "words", "here"]
    assert run.results["bad"].status is ResultStatus.FAILED
    assert "check" in (run.results["bad"].error or "")
    assert [(d.reason, d.stage) for d in run.dead_letters] == [("stage_error", "check")]


def test_chains_expand_only_sends_to_chained_stages() -> None:
    topology = example.build()
    routing = Routing(topology, "p.", "p.sink")
    chains = Chains([routing], "w")
    assert set(chains.stages) == {f"p.example.{s}" for s in ("sentences", "words", "normalize")}
    aggregate = Send("p.example.sentence_stats", "k", None)  # type: ignore[arg-type]
    assert chains.get(aggregate) is None


def test_the_readme_shows_what_alto_topology_prints_for_the_example() -> None:
    from pathlib import Path

    config = AltoConfig()
    text = describe(
        example.build(),
        config.internal_prefix,
        config.requests_topic,
        config.lm_requests_topic,
        config.sink_topic,
    )
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert "\n".join("  " + line for line in text.splitlines()) in readme
