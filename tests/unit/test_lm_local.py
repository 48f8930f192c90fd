"""LM stages in-process: the SIMULATED engine serves the calls through the same serving code
as an LM worker; results must equal the engine's deterministic output split into quanta."""

from __future__ import annotations

import asyncio
import json

import pytest

from alto.agents import claims
from alto.lm_service.quanta import split_all
from alto.lm_service.serving import serve_call
from alto.lm_service.sim import SimEngine, SimParams, sim_text
from alto.schemas.messages import Mode, ResultStatus
from alto.streams.ancestry import node_key
from alto.streams.local import LocalRunner, make_request


def _expected(request_id: str) -> dict:  # type: ignore[type-arg]
    lm_id = f"{node_key(request_id, ())}#claims"
    return claims.expected_output(split_all(sim_text(lm_id, "claims", 96), "item"))  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", [Mode.STREAMING, Mode.BASELINE])
def test_lm_pipeline_on_the_simulated_engine(mode: Mode) -> None:
    async def run():  # type: ignore[no-untyped-def]
        engine = SimEngine(SimParams(time_scale=0.001))
        await engine.start()
        runner = LocalRunner([claims.build()], shuffle=True, duplicate=0.2, seed=4)
        runner.lm = lambda req: serve_call(req, engine, runner.routings, "lm-local")
        reqs = [make_request("claims", f"topic {i}", f"q{i}", mode) for i in range(12)]
        out = await runner.run(reqs)
        await engine.stop()
        return reqs, out

    reqs, out = asyncio.run(run())
    assert not out.dead_letters
    for req in reqs:
        result = out.results[req.request_id]
        assert result.status is ResultStatus.OK
        assert json.loads(result.output or "") == _expected(req.request_id)
        assert any(s.stage == "claims" for s in result.trace)


def test_engine_refusal_fails_the_request_with_a_dead_letter() -> None:
    async def run():  # type: ignore[no-untyped-def]
        engine = SimEngine(SimParams(time_scale=0.001, context_tokens=64))
        await engine.start()
        runner = LocalRunner([claims.build()])
        runner.lm = lambda req: serve_call(req, engine, runner.routings, "lm-local")
        out = await runner.run([make_request("claims", "x " * 400, "big")])
        await engine.stop()
        return out

    out = asyncio.run(run())
    assert out.results["big"].status is ResultStatus.FAILED
    assert "prompt_too_long" in [d.reason for d in out.dead_letters]
