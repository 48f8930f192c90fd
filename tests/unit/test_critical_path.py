"""The critical path of a request through its trace (`alto.streams.critical_path`): on
hand-built traces whose answer is known, and on real traces of in-process runs."""

from __future__ import annotations

import asyncio

from alto.agents import claims, example
from alto.lm_service.serving import serve_call
from alto.lm_service.sim import SimEngine, SimParams
from alto.schemas.messages import Mode, PipelineResult, ResultStatus, TraceSpan
from alto.streams.critical_path import KINDS, breakdown_ms, critical_path, medians
from alto.streams.local import LocalRunner, make_request
from alto.streams.pipeline import REQUEST


def _result(spans: list[TraceSpan], submitted: int, completed: int) -> PipelineResult:
    return PipelineResult(
        request_id="r",
        pipeline="claims",
        status=ResultStatus.OK,
        output="{}",
        error=None,
        latency_ms=completed - submitted,
        submitted_at_ms=submitted,
        completed_at_ms=completed,
        mode=Mode.STREAMING,
        trace=tuple(spans),
    )


def _span(
    stage: str, path: str, start: int, end: int, input_ms: int = 0, received_ms: int = 0
) -> TraceSpan:
    return TraceSpan(stage, path, "w", start, end, input_ms=input_ms, received_ms=received_ms)


def test_the_path_follows_the_child_that_finished_last_and_adds_up_to_the_latency() -> None:
    # claims: request -> claims (LM: 3 children) -> words (fan-out per claim)
    #         -> claim_stats (per claim) -> answer (per request).
    # Claim 1's words are the last to be folded: the path runs through claim 1, and through
    # the LM call up to claim 1's emission (the second child, ended at 260).
    spans = [
        _span(REQUEST, "", 1000, 1010),
        _span("claims", "", 1100, 1200),  # claim 0
        _span("claims", "", 1100, 1260),  # claim 1
        _span("claims", "", 1100, 1300),  # claim 2
        _span("words", "claims:0", 1210, 1220),
        _span("words", "claims:1", 1280, 1400),  # slow: claim 1 holds the request up
        _span("words", "claims:2", 1310, 1320),
        _span("claim_stats", "claims:0", 1225, 1230),
        _span("claim_stats", "claims:1", 1285, 1410),
        _span("claim_stats", "claims:2", 1315, 1330),
        _span("answer", "", 1232, 1420),
    ]
    result = _result(spans, 1000, 1450)
    path = critical_path(result, claims.build())
    assert [(s.kind, s.stage, s.start_ms, s.end_ms) for s in path] == [
        ("ingest", REQUEST, 1000, 1010),
        ("lm_dispatch", "claims", 1010, 1100),
        ("lm", "claims", 1100, 1260),
        ("transit", "words", 1260, 1280),
        ("compute", "words", 1280, 1400),
        ("transit", "claim_stats", 1400, 1410),  # the fold after its last input
        ("transit", "answer", 1410, 1420),
        ("delivery", "answer", 1420, 1450),
    ]
    parts = breakdown_ms(result, claims.build())
    assert set(parts) == set(KINDS)
    assert sum(parts.values()) == result.latency_ms
    assert parts["lm"] == 160 and parts["compute"] == 120 and parts["unattributed"] == 0


def test_recorded_emission_times_follow_a_call_whose_children_share_one_span() -> None:
    # What an aggregation keeps: one span per (stage, node), so the LM call's three
    # children are one span (the first child's, ended at 1200). Claim 2's words started
    # from a quantum emitted at 1300 (`input_ms`): the LM time runs to 1300, not 1200.
    spans = [
        _span(REQUEST, "", 1000, 1010, input_ms=1000),
        _span("claims", "", 1100, 1200, input_ms=1010),
        _span("words", "claims:0", 1205, 1210, input_ms=1200),
        _span("words", "claims:2", 1320, 1330, input_ms=1300),
        _span("claim_stats", "claims:0", 1212, 1215, input_ms=1211),
        _span("claim_stats", "claims:2", 1331, 1345, input_ms=1340),
        _span("answer", "", 1216, 1360, input_ms=1345),
    ]
    result = _result(spans, 1000, 1380)
    path = critical_path(result, claims.build())
    assert [(s.kind, s.stage, s.start_ms, s.end_ms) for s in path] == [
        ("ingest", REQUEST, 1000, 1010),
        ("lm_dispatch", "claims", 1010, 1100),
        ("lm", "claims", 1100, 1300),
        ("transit", "words", 1300, 1320),
        ("compute", "words", 1320, 1340),  # to its last child's emission
        ("transit", "claim_stats", 1340, 1345),
        ("transit", "answer", 1345, 1360),
        ("delivery", "answer", 1360, 1380),
    ]


def test_where_the_input_was_received_transit_and_waiting_are_split() -> None:
    # The same request as above, with each stage's span recording when its worker's consumer
    # handed the input over: the hop up to there is transit, the rest until the work started
    # (an aggregation: until it emitted) waiting. The LM call's hop stays lm_dispatch.
    spans = [
        _span(REQUEST, "", 1000, 1010, input_ms=1000),
        _span("claims", "", 1100, 1200, input_ms=1010, received_ms=1020),
        _span("words", "claims:0", 1205, 1210, input_ms=1200, received_ms=1202),
        _span("words", "claims:2", 1320, 1330, input_ms=1300, received_ms=1306),
        _span("claim_stats", "claims:0", 1212, 1215, input_ms=1211, received_ms=1213),
        _span("claim_stats", "claims:2", 1331, 1345, input_ms=1340, received_ms=1342),
        _span("answer", "", 1216, 1360, input_ms=1345, received_ms=1355),
    ]
    result = _result(spans, 1000, 1380)
    path = critical_path(result, claims.build())
    assert [(s.kind, s.stage, s.start_ms, s.end_ms) for s in path] == [
        ("ingest", REQUEST, 1000, 1010),
        ("lm_dispatch", "claims", 1010, 1100),
        ("lm", "claims", 1100, 1300),
        ("transit", "words", 1300, 1306),
        ("waiting", "words", 1306, 1320),
        ("compute", "words", 1320, 1340),
        ("transit", "claim_stats", 1340, 1342),
        ("waiting", "claim_stats", 1342, 1345),
        ("transit", "answer", 1345, 1355),
        ("waiting", "answer", 1355, 1360),
        ("delivery", "answer", 1360, 1380),
    ]
    parts = breakdown_ms(result, claims.build())
    assert (parts["transit"], parts["waiting"]) == (18, 22)
    assert sum(parts.values()) == result.latency_ms


def test_a_missing_span_leaves_the_rest_unattributed_not_lost() -> None:
    spans = [_span("claim_stats", "claims:0", 1225, 1230), _span("answer", "", 1232, 1300)]
    result = _result(spans, 1000, 1320)
    parts = breakdown_ms(result, claims.build())
    assert parts["delivery"] == 20 and parts["transit"] == 70
    assert parts["unattributed"] == 230  # no words span: the walk stops at claim_stats
    assert sum(parts.values()) == 320
    assert breakdown_ms(_result([], 1000, 1100), claims.build())["unattributed"] == 100


def test_overlapping_steps_are_cut_so_the_segments_partition_the_latency() -> None:
    # The words stage started before the claim's span ended (a word emitted while its line
    # was still being written): nothing is counted twice.
    spans = [
        _span(REQUEST, "", 0, 5),
        _span("claims", "", 50, 300),
        _span("words", "claims:0", 200, 320),
        _span("claim_stats", "claims:0", 200, 330),
        _span("answer", "", 200, 340),
    ]
    path = critical_path(_result(spans, 0, 350), claims.build())
    assert all(a.end_ms == b.start_ms for a, b in zip(path, path[1:], strict=False))
    assert path[0].start_ms == 0 and path[-1].end_ms == 350


def test_real_traces_of_both_pipelines_partition_their_latency() -> None:
    async def run() -> tuple[dict[str, PipelineResult], dict[str, PipelineResult]]:
        engine = SimEngine(SimParams(time_scale=0.002))
        await engine.start()
        runner = LocalRunner([claims.build()], seed=3)
        runner.lm = lambda req: serve_call(req, engine, runner.routings, "lm-local")
        lm_run = await runner.run([make_request("claims", f"topic {i}", f"c{i}") for i in range(4)])
        await engine.stop()
        texts = example.example_texts(4, seed=2)
        plain = await LocalRunner([example.build()]).run(
            [make_request("example", t, f"e{i}") for i, t in enumerate(texts)]
        )
        return lm_run.results, plain.results

    lm_results, plain_results = asyncio.run(run())
    for results, topology in ((lm_results, claims.build()), (plain_results, example.build())):
        assert results
        for result in results.values():
            parts = breakdown_ms(result, topology)
            assert sum(parts.values()) == result.latency_ms
            assert parts["unattributed"] == 0, (result.request_id, parts)
        shares = medians(results.values(), topology).shares
        assert set(shares) == set(KINDS)
    assert medians(lm_results.values(), claims.build()).shares["lm"] > 0
