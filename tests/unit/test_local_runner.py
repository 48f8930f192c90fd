"""Pipelines end to end without a broker: shuffled, replayed delivery; failures; both modes."""

from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alto.agents import example
from alto.schemas.messages import Mode, QuantumKind, ResultStatus
from alto.streams import REQUEST, Item, Pipeline, collect, count, sum_of
from alto.streams.local import LocalRunner, make_request

TEXTS = example.example_texts(30, seed=11)


def _run(topologies, requests, **kw):  # type: ignore[no-untyped-def]
    return asyncio.run(LocalRunner(topologies, **kw).run(requests))


@pytest.mark.parametrize("mode", [Mode.STREAMING, Mode.BASELINE])
def test_example_pipeline_is_exact_under_reordering_and_replays(mode: Mode) -> None:
    reqs = [make_request("example", t, f"r{i}", mode) for i, t in enumerate(TEXTS)]
    run = _run([example.build()], reqs, shuffle=True, duplicate=0.3, seed=5)
    assert not run.dead_letters
    assert set(run.results) == {r.request_id for r in reqs}
    for req, text in zip(reqs, TEXTS, strict=True):
        result = run.results[req.request_id]
        assert result.status is ResultStatus.OK and result.mode is mode
        assert json.loads(result.output or "") == example.expected_output(text)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.floats(0, 0.5))
def test_any_delivery_order_gives_the_same_results(seed: int, duplicate: float) -> None:
    reqs = [make_request("example", t, f"r{i}") for i, t in enumerate(TEXTS[:8])]
    run = _run([example.build()], reqs, shuffle=True, duplicate=duplicate, seed=seed)
    for req, text in zip(reqs, TEXTS[:8], strict=True):
        assert json.loads(run.results[req.request_id].output or "") == example.expected_output(text)


def test_trace_records_every_stage_and_the_aggregating_worker() -> None:
    run = _run([example.build()], [make_request("example", TEXTS[1], "r")])
    spans = run.results["r"].trace
    assert {s.stage for s in spans} >= {
        REQUEST,
        "sentences",
        "words",
        "normalize",
        "sentence_stats",
        "request_stats",
    }
    assert all(s.processed_by == ("local",) for s in spans if s.stage.endswith("_stats"))


def _boom(item: Item) -> int:
    if "boom" in item.value:
        raise ValueError("no booms here")
    return len(item.value)


def _split(item: Item) -> list[str]:
    return item.value.split()


FRAGILE = (
    Pipeline("fragile")
    .fan_out("split", _split)
    .map("measure", _boom, after="split")
    .aggregate("total", sum_of(), after="measure")
    .build()
)


def test_a_failing_stage_fails_its_request_only() -> None:
    reqs = [make_request("fragile", "a boom b", "bad"), make_request("fragile", "a bb ccc", "good")]
    run = _run([FRAGILE], reqs)
    assert (
        run.results["good"].status is ResultStatus.OK
        and json.loads(run.results["good"].output or "") == 6
    )
    assert run.results["bad"].status is ResultStatus.FAILED
    assert "no booms here" in (run.results["bad"].error or "")
    assert [d.reason for d in run.dead_letters] == ["stage_error"]
    assert run.dead_letters[0].request_id == "bad"


def test_unknown_pipeline_and_oversized_input_fail_with_dead_letters() -> None:
    reqs = [make_request("nope", "x", "r1"), make_request("fragile", "y" * 101, "r2")]
    run = _run([FRAGILE], reqs, max_input_chars=100)
    assert run.results["r1"].status is ResultStatus.FAILED and "unknown pipeline" in (
        run.results["r1"].error or ""
    )
    assert run.results["r2"].status is ResultStatus.FAILED and "limit is 100" in (
        run.results["r2"].error or ""
    )
    assert sorted(d.reason for d in run.dead_letters) == ["input_too_large", "unknown_pipeline"]


def test_empty_fan_out_completes() -> None:
    run = _run([FRAGILE], [make_request("fragile", "   ", "r")])
    assert json.loads(run.results["r"].output or "") == 0


@pytest.mark.parametrize("mode", [Mode.STREAMING, Mode.BASELINE])
def test_streaming_forwards_children_before_the_generator_ends(mode: Mode) -> None:
    """In streaming mode the first child leaves before the fan-out finishes; in baseline, after."""
    from alto.schemas.messages import Quantum
    from alto.streams.processor import Routing, Send, StageProcessor

    events: list[str] = []

    async def slow(item: Item):  # type: ignore[no-untyped-def]
        for word in item.value.split():
            events.append(f"made {word}")
            yield word
        events.append("done")

    topology = Pipeline("s").fan_out("gen", slow).aggregate("all", collect(), after="gen").build()
    proc = StageProcessor(Routing(topology, "p.", "p.sink"), "gen", "w")
    root = Quantum(
        "r", "s", mode, REQUEST, (), 0, QuantumKind.DATA, 0, 0, payload=json.dumps("a b")
    )

    async def drive() -> None:
        async for out in proc.process(root):
            assert isinstance(out, Send)
            events.append(f"sent {out.quantum.kind}")

    asyncio.run(drive())
    if mode is Mode.STREAMING:
        assert events == ["made a", "sent DATA", "made b", "sent DATA", "done", "sent END"]
    else:
        assert events == ["made a", "made b", "done", "sent DATA", "sent DATA", "sent END"]


def test_count_operator_in_a_pipeline() -> None:
    t = Pipeline("c").fan_out("w", _split).aggregate("n", count(), after="w").build()
    run = _run([t], [make_request("c", "one two three", "r")])
    assert json.loads(run.results["r"].output or "") == 3


def test_blocking_stages_run_off_the_event_loop() -> None:
    import threading

    loop_thread = threading.get_ident()
    seen: list[int] = []

    def heavy(item: Item) -> int:
        seen.append(threading.get_ident())
        return len(item.value)

    def heavy_split(item: Item) -> list[str]:
        seen.append(threading.get_ident())
        return item.value.split()

    t = (
        Pipeline("b")
        .fan_out("w", heavy_split, blocking=True)
        .map("n", heavy, after="w", blocking=True)
        .aggregate("s", sum_of(), after="n")
        .build()
    )
    run = _run([t], [make_request("b", "aa bbb c", "r")])
    assert json.loads(run.results["r"].output or "") == 6
    assert seen and loop_thread not in seen
