"""The chaos run (`alto chaos`) as a test: 500 requests while a Faust worker, an LM worker and
the scheduler are SIGKILLed at random moments and restarted; every request must end with
exactly one result, and every result must be the correct one."""

from __future__ import annotations

from pathlib import Path

import pytest

from alto.config import AltoConfig
from alto.infra.chaos import plan_faults, run_chaos
from alto.infra.chaos_workload import expected_output, workload


@pytest.mark.unit
def test_faults_are_planned_inside_the_window_apart_and_reproducibly() -> None:
    plan = plan_faults(3, 60.0, ("faust", "lm", "scheduler"))
    assert plan == plan_faults(3, 60.0, ("faust", "lm", "scheduler"))
    assert sorted(t for t, _, _ in plan) == ["faust", "lm", "scheduler"]
    moments = sorted(at for _, at, _ in plan)
    assert all(6.0 <= at <= 48.0 for at in moments)
    assert all(b - a >= 8.0 for a, b in zip(moments, moments[1:], strict=False))


@pytest.mark.unit
def test_the_workload_is_checkable() -> None:
    work = workload(60, seed=5)
    assert {r.pipeline for r in work} == {"claims", "example"}
    claims_out = [expected_output(r) for r in work if r.pipeline == "claims"]
    assert all(out["n"] == len(out["claims"]) >= 1 for out in claims_out)
    assert len({r.request_id for r in work}) == 60


@pytest.mark.integration
@pytest.mark.reliability
@pytest.mark.slow
def test_kills_and_restarts_lose_and_duplicate_nothing(
    alto_config: AltoConfig, tmp_path: Path
) -> None:
    config = alto_config.with_overrides(lm_status_interval_s=0.5)
    report = run_chaos(config, tmp_path / "chaos", requests=500, rate=5.0, seed=11)
    print(report.markdown())
    assert len(report.faults) == 3
    assert all(f.killed_at > 0 and f.restarted_at > f.killed_at for f in report.faults)
    assert not report.lost, report.markdown()
    assert not report.duplicated, report.markdown()
    assert not report.wrong, report.markdown()
    assert report.dead_letters == 0


@pytest.mark.integration
@pytest.mark.reliability
@pytest.mark.slow
def test_a_worker_paused_past_its_session_loses_and_duplicates_nothing(
    alto_config: AltoConfig, tmp_path: Path
) -> None:
    """SIGSTOP a Faust worker for longer than its session timeout, then SIGCONT: the group
    has moved its partitions on, and the zombie wakes up mid-event with output to produce."""
    config = alto_config.with_overrides(lm_status_interval_s=0.5, session_timeout_s=6.0)
    report = run_chaos(
        config, tmp_path / "chaos", requests=200, rate=5.0, seed=5, faults=(), pauses=("faust",)
    )
    print(report.markdown())
    assert [f.action for f in report.faults] == ["SIGSTOP"]
    assert report.faults[0].restart_after_s > config.session_timeout_s
    assert not report.lost, report.markdown()
    assert not report.duplicated, report.markdown()
    assert not report.wrong, report.markdown()
