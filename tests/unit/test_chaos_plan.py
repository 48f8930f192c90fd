"""`alto chaos`'s plan, broker-free: faults inside the window, apart and reproducible, and a
workload whose every output is known in advance."""

from __future__ import annotations

from alto.infra.chaos import plan_faults
from alto.infra.chaos_workload import expected_output, workload


def test_faults_are_planned_inside_the_window_apart_and_reproducibly() -> None:
    plan = plan_faults(3, 60.0, ("faust", "lm", "scheduler"))
    assert plan == plan_faults(3, 60.0, ("faust", "lm", "scheduler"))
    assert sorted(t for t, _, _ in plan) == ["faust", "lm", "scheduler"]
    moments = sorted(at for _, at, _ in plan)
    assert all(6.0 <= at <= 48.0 for at in moments)
    assert all(b - a >= 8.0 for a, b in zip(moments, moments[1:], strict=False))


def test_the_workload_is_checkable() -> None:
    work = workload(60, seed=5)
    assert {r.pipeline for r in work} == {"claims", "example"}
    claims_out = [expected_output(r) for r in work if r.pipeline == "claims"]
    assert all(out["n"] == len(out["claims"]) >= 1 for out in claims_out)
    assert len({r.request_id for r in work}) == 60
