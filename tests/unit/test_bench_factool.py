"""The FacTool benchmark's bookkeeping: arrivals, the pass rule, the summary per system."""

from __future__ import annotations

import dataclasses

import pytest

from alto.bench.factool import _arrivals
from alto.bench.factool_point import PASS_ACHIEVED, TARGET_MEDIAN_S, make_point
from alto.bench.factool_report import summarize


def test_poisson_arrivals_are_seeded_and_have_the_offered_rate() -> None:
    a = _arrivals(4000, 2.0, seed=3)
    assert a == _arrivals(4000, 2.0, seed=3) and a != _arrivals(4000, 2.0, seed=4)
    assert all(x <= y for x, y in zip(a, a[1:], strict=False))
    assert a[0] == 0.0  # a point opens with a request, not an idle gap
    gaps = [y - x for x, y in zip(a, a[1:], strict=False)]
    mean = sum(gaps) / len(gaps)
    assert mean == pytest.approx(0.5)
    # Exponential gaps: their standard deviation is their mean (a fixed interval: 0).
    sd = (sum((g - mean) ** 2 for g in gaps) / len(gaps)) ** 0.5
    assert 0.9 < sd / mean < 1.1


@pytest.mark.parametrize("seed", range(20))
def test_a_short_point_offers_exactly_its_load_whatever_the_seed(seed: int) -> None:
    """30 free Poisson draws at 2 req/s spanned 14.5 +- 2.7 s: a point labelled 2 req/s
    offered 1.50 (seed 15). Every point now offers its label."""
    a = _arrivals(30, 2.0, seed)
    assert len(a) == 30 and a[0] == 0.0
    assert (len(a) - 1) / a[-1] == pytest.approx(2.0)
    assert _arrivals(1, 2.0, seed) == [0.0] and _arrivals(0, 2.0, seed) == []


def test_a_point_passes_only_with_every_result_a_median_on_target_and_the_load_carried() -> None:
    done = [10.0 + i for i in range(10)]  # one completion a second
    ok = make_point("sim", "streaming", 1.0, 10, [1.0] * 10, done)
    assert ok.passed and ok.achieved_rps == pytest.approx(1.0)
    slow = make_point("sim", "streaming", 1.0, 10, [TARGET_MEDIAN_S + 1] * 10, done)
    assert not slow.passed
    lagging = make_point("sim", "streaming", 1.0 / (PASS_ACHIEVED - 0.1), 10, [1.0] * 10, done)
    assert not lagging.passed
    lost = make_point("sim", "streaming", 1.0, 11, [1.0] * 10, done)
    assert not lost.passed


def test_a_pass_above_a_failure_is_not_a_sustained_load() -> None:
    """A median that falls under the target at a higher load (noise near the target) does
    not lift the sustained load past a load that failed, at the 4 s rule or any target."""

    def done(rate: float) -> list[float]:  # completions at `rate`
        return [i / rate for i in range(10)]

    points = [
        make_point("sim", "streaming", 1.0, 10, [1.5] * 10, done(1.0)),
        make_point("sim", "streaming", 2.0, 10, [2.1] * 10, done(2.0)),  # over the 2 s target
        make_point("sim", "streaming", 3.0, 10, [1.7] * 10, done(1.0)),  # lags: fails them all
        make_point("sim", "streaming", 4.0, 10, [1.9] * 10, done(4.0)),
    ]
    s = summarize(points)["sim"]["streaming"]
    assert points[3].passed and not points[2].passed
    assert s["sustained_load_rps"] == 2.0  # not 4.0, the highest pass
    assert s["sustained_at_targets_rps"]["2"] == 1.0  # not 3.0 or 4.0
    assert s["sustained_at_targets_rps"]["8"] == 2.0


def test_summary_takes_the_highest_passing_load_and_the_lowest_loads_p99() -> None:
    done = [float(i) for i in range(10)]
    points = [
        make_point("sim", "baseline", 0.5, 10, [2.0] * 9 + [9.0], done),
        make_point("sim", "baseline", 1.0, 10, [3.0] * 10, done),
        make_point("sim", "baseline", 2.0, 10, [8.0] * 10, done),
    ]
    s = summarize(points)["sim"]["baseline"]
    assert s["sustained_load_rps"] == 1.0
    assert s["p99_low_load_s"] == 9.0


def test_evidence_ready_is_the_last_evidence_span_after_submission() -> None:
    from alto.bench.factool import _evidence_ready_s
    from alto.schemas.messages import Mode, PipelineResult, ResultStatus, TraceSpan

    spans = (
        TraceSpan("answer", "0", "w", 1_000, 1_500),
        TraceSpan("evidence", "0.0", "w", 2_000, 2_100),
        TraceSpan("evidence", "0.1", "w", 2_900, 3_250),
        TraceSpan("report", "0", "w", 4_000, 4_010),
    )
    result = PipelineResult(
        "r", "factool", ResultStatus.OK, 3_010, 1_000, 4_010, Mode.STREAMING, trace=spans
    )
    assert _evidence_ready_s(result) == pytest.approx(2.25)
    assert _evidence_ready_s(dataclasses.replace(result, trace=spans[:1])) is None
    point = make_point("sim", "streaming", 1.0, 3, [3.0] * 3, [1.0, 2.0, 3.0], [1.0, 2.0, 9.0])
    assert point.evidence_p50_s == 2.0 and point.evidence_p99_s == 9.0
    assert summarize([point])["sim"]["streaming"]["evidence_p99_low_load_s"] == 9.0


def test_the_report_prints_the_critical_path_of_our_points_only(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from alto.bench.factool_point import SimSetup
    from alto.bench.factool_report import print_points

    done = [float(i) for i in range(10)]
    ours = make_point("sim", "streaming", 0.5, 10, [2.0] * 10, done)
    ours.critical_ms = {"transit": 700.0, "lm": 1300.0}
    ours.critical_shares = {"transit": 0.35, "lm": 0.65}
    ours.cpu_s_by_role = {"broker": 0.4, "client": 0.1, "faust": 0.6, "lm": 0.3}
    ours.cpu_s_per_request = 1.4
    theirs = make_point("sim", "langgraph", 0.5, 10, [2.0] * 10, done)
    points = [ours, theirs]
    print_points(points, summarize(points), {"sim": 0.3}, SimSetup("paper"))
    out = capsys.readouterr().out
    assert "SIMULATED LM engines (7 instances, profile `paper`, time scale 1)" in out
    assert "| kind | streaming @0.5/s |" in out
    assert "| broker | client | faust | lm | total |" in out
    assert "| sim | streaming | 0.5 | 0.40 | 0.10 | 0.60 | 0.30 | 1.40 |" in out
    assert "| transit | 0.70 (35%) |" in out and "| lm | 1.30 (65%) |" in out


def test_the_sim_setup_names_its_profile_and_scale() -> None:
    from alto.bench.factool_point import SIM_TIME_SCALE, SimSetup

    assert SimSetup().scale == SIM_TIME_SCALE and SimSetup().suffix() == ""
    assert SimSetup("paper").scale == 1.0 and SimSetup("paper").suffix() == "_paper_scale1"
    assert SimSetup("cpu", 1.0).suffix() == "_cpu_scale1"


def test_sim_loads_replace_the_sim_sweep_only_and_keep_its_requests_a_point() -> None:
    from alto.bench.factool import tier_loads
    from alto.bench.factool_point import SIM_LOADS, VLLM_LOADS

    assert tier_loads("sim", True) == SIM_LOADS["quick"]
    assert tier_loads("sim", False, (2.0, 3.0)) == ((2.0, 3.0), SIM_LOADS["full"][1])
    assert tier_loads("sim", True, (4.0,)) == ((4.0,), SIM_LOADS["quick"][1])
    assert tier_loads("vllm", True, (4.0,)) == VLLM_LOADS["quick"]


def test_the_cli_reads_load_lists_and_refuses_bad_ones(capsys: pytest.CaptureFixture[str]) -> None:
    from alto.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["bench", "factool", "--sim-loads", "2,3.5", "--cluster-loads", "32"])
    assert args.sim_loads == (2.0, 3.5)
    assert args.cluster_loads == (32.0,)
    for bad in ("2,x", "2,0", "nan", ""):
        with pytest.raises(SystemExit):
            parser.parse_args(["bench", "factool", "--sim-loads", bad])
        assert "--sim-loads" in capsys.readouterr().err


def test_sim_loads_reach_the_factool_bench_and_no_other() -> None:
    from alto.bench import run_bench

    with pytest.raises(SystemExit, match="sim_loads"):
        run_bench("hop", quick=True, json_path=None, sim_loads=(2.0,))
