"""Overload, short: 3x the sustainable load for 20 s (the full two minutes are
`alto bench overload`). Past the admission limit requests fail fast with OVERLOADED, admitted
ones finish, nothing is lost or doubled, and once the load drops every request is served."""

from __future__ import annotations

from pathlib import Path

import pytest

from alto.bench.overload import run_overload
from alto.config import AltoConfig
from alto.schemas.messages import ResultStatus

pytestmark = pytest.mark.slow


def test_overload_fails_fast_past_admission_and_recovers(
    alto_config: AltoConfig, tmp_path: Path
) -> None:
    report = run_overload(alto_config, tmp_path / "stack", limit=32, overload_s=20, calm_s=15)
    print(report.markdown())
    phases = report.phases
    assert all(p["lost"] == 0 and p["duplicated"] == 0 for p in phases.values()), phases
    assert all(p["failed"] == 0 for p in phases.values()), phases
    over = phases["overload"]
    assert over["overloaded"] > 0, "3x the sustainable load refused nothing"
    assert over["ok"] > 0
    # Refusals come back faster than admitted requests are served.
    assert over["overloaded_p50_s"] < over["ok_p50_s"]
    # Recovered: requests submitted once the overload's admitted requests were done are
    # all served.
    settled = report.dropped_at + (report.drained_after_s or 0.0) + 2.0
    late = [o for o in report.outcomes if o.phase == "after" and o.submitted > settled]
    assert late, "the calm phase after the overload was too short to check recovery"
    assert all(o.status is ResultStatus.OK for o in late), [o.status for o in late]
