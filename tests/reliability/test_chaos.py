"""The chaos run (`alto chaos`) as a test: 500 requests while a Faust worker, an LM worker and
the scheduler are SIGKILLed at random moments and restarted; every request must end with
exactly one result, and every result must be the correct one."""

from __future__ import annotations

from pathlib import Path

import pytest

from alto.config import AltoConfig
from alto.infra.chaos import run_chaos


@pytest.mark.slow
def test_kills_and_restarts_lose_and_duplicate_nothing(
    alto_config: AltoConfig, tmp_path: Path
) -> None:
    config = alto_config.with_overrides(
        lm={"status_interval_s": 0.5},
    )
    report = run_chaos(config, tmp_path / "chaos", requests=500, rate=5.0, seed=11)
    print(report.markdown())
    assert len(report.faults) == 3
    assert all(f.killed_at > 0 and f.restarted_at > f.killed_at for f in report.faults)
    assert not report.lost, report.markdown()
    assert not report.duplicated, report.markdown()
    assert not report.wrong, report.markdown()
    assert report.dead_letters == 0


@pytest.mark.slow
def test_a_worker_paused_past_its_session_loses_and_duplicates_nothing(
    alto_config: AltoConfig, tmp_path: Path
) -> None:
    """SIGSTOP a Faust worker for longer than its session timeout, then SIGCONT: the group
    has moved its partitions on, and the zombie wakes up mid-event with output to produce."""
    config = alto_config.with_overrides(
        lm={"status_interval_s": 0.5},
        kafka={"session_timeout_s": 6.0},
    )
    report = run_chaos(
        config, tmp_path / "chaos", requests=200, rate=5.0, seed=5, faults=(), pauses=("faust",)
    )
    print(report.markdown())
    assert [f.action for f in report.faults] == ["SIGSTOP"]
    assert report.faults[0].restart_after_s > config.kafka.session_timeout_s
    assert not report.lost, report.markdown()
    assert not report.duplicated, report.markdown()
    assert not report.wrong, report.markdown()
