"""`alto chaos`'s workload and its check: requests of the `claims` and `example` pipelines
in both modes, and the exact output each must get (the SIMULATED engine's text is a
function of the call id)."""

from __future__ import annotations

import json
import logging
import random
from typing import Any

from alto.agents import claims, example
from alto.infra.client import new_request
from alto.lm_service.quanta import split_all
from alto.lm_service.sim import sim_text
from alto.schemas.messages import Mode, PipelineRequest, PipelineResult, ResultStatus
from alto.streams.ancestry import node_key

log = logging.getLogger(__name__)


def expected_output(request: PipelineRequest) -> dict[str, Any]:
    """The correct output of a chaos request (SIMULATED engine for the LM stage)."""
    if request.pipeline == claims.NAME:
        lm_id = f"{node_key(request.request_id, ())}#claims"
        call = claims.CLAIMS
        return claims.expected_output(
            split_all(sim_text(lm_id, call.prompt_name, call.max_tokens), call.rule)  # type: ignore[arg-type]
        )
    return example.expected_output(request.input)


def wrong_reason(request: PipelineRequest, result: PipelineResult) -> str | None:
    """Why `result` is not the correct answer to chaos request `request` (None: it is)."""
    if result.status is not ResultStatus.OK:
        return f"{result.status}: {result.error}"
    if json.loads(result.output or "null") != expected_output(request):
        return f"output differs: {result.output!r:.200}"
    return None


def workload(n: int, seed: int) -> list[PipelineRequest]:
    """`n` requests: two in three of the LM pipeline, the rest of the example; modes alternate."""
    rng = random.Random(seed)
    texts = example.example_texts(n, seed=seed)
    out = []
    for i, text in enumerate(texts):
        pipeline = claims.NAME if rng.random() < 2 / 3 else example.NAME
        mode = Mode.STREAMING if i % 2 == 0 else Mode.BASELINE
        # The claims pipeline takes a topic; the first words of a text make one.
        value = (" ".join(text.split()[:4]) or f"subject {i}") if pipeline == claims.NAME else text
        out.append(new_request(pipeline, value, mode=mode, request_id=f"chaos-{seed}-{i}"))
    return out
