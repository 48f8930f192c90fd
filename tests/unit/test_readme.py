"""The README's Python snippets run as written (they cannot drift from the API), and what
they build is a pipeline the in-process runner serves, LM stages on the SIMULATED engine."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from alto import Pipeline, Topology
from alto.lm_service.serving import serve_call
from alto.lm_service.sim import SimEngine, SimParams
from alto.schemas.messages import Mode, ResultStatus
from alto.streams.local import LocalRunner, make_request

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def _run(block: str) -> dict[str, Any]:
    scope: dict[str, Any] = {"__name__": "readme_snippet"}
    exec(compile(block, str(README), "exec"), scope)  # noqa: S102 - our own README
    return scope


def _topologies(scope: dict[str, Any]) -> list[Topology]:
    built = [v for v in scope.values() if isinstance(v, Topology)]
    built += [v.build() for v in scope.values() if isinstance(v, Pipeline)]
    if callable(scope.get("build")):
        made = scope["build"]()
        built.append(made.build() if isinstance(made, Pipeline) else made)
    return built


def test_the_readme_has_python_snippets() -> None:
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_each_snippet_runs_and_its_pipeline_serves_a_request(block: str) -> None:
    topologies = _topologies(_run(block))
    assert topologies, "the snippet builds no pipeline"
    for topology in topologies:
        for mode in (Mode.STREAMING, Mode.BASELINE):
            request = make_request(topology.pipeline, "Alpha beta. Gamma delta!", "r", mode)
            run = asyncio.run(_serve(topology, request))
            assert run.results["r"].status is ResultStatus.OK, run.results["r"].error
            assert run.results["r"].output


async def _serve(topology: Topology, request: Any) -> Any:
    engine = SimEngine(SimParams(time_scale=0.001))
    await engine.start()
    try:
        runner = LocalRunner([topology])
        runner.lm = lambda call: serve_call(call, engine, runner.routings, "readme")
        return await runner.run([request])
    finally:
        await engine.stop()
