"""A small LM pipeline: list claims about a question (streamed, one claim per quantum), then
per-claim word statistics, then the request's claims in order.

request -> `claims` (LM, item quanta) -> `words` (fan-out) -> `claim_stats` (per claim) ->
`answer` (per request). It exercises LM stages end to end on any engine (the FacTool
pipeline has the same shape at its front).
"""

from __future__ import annotations

from typing import Any

from alto.streams import Item, Pipeline, Topology, collect, combine, count
from alto.streams.pipeline import LMCall

NAME = "claims"

SYSTEM = "You list short factual claims. Answer with a numbered list, one claim per line."


def _render(item: Item) -> list[tuple[str, str]]:
    return [("system", SYSTEM), ("user", f"List three facts about: {item.value}")]


CLAIMS = LMCall(
    prompt_name="claims", render=_render, rule="item", max_tokens=96, prefix_chars=len(SYSTEM)
)


def words(claim: str) -> list[str]:
    return claim.split()


def _claim(parts: dict[str, Any]) -> dict[str, Any]:
    words = parts["words"]
    return {"claim": " ".join(words), "words": len(words)}


def build() -> Topology:
    pipeline = Pipeline(NAME, "claims about a question, streamed one by one from an LM")
    claims = pipeline.request.lm(CLAIMS)  # stage "claims", one quantum per list item
    stats = claims.fan_out(words).aggregate(
        combine(_claim, words=collect()), name="claim_stats", per=claims
    )
    stats.aggregate(combine(claims=collect(), n=count()), name="answer")
    return pipeline.build()


def expected_output(claim_texts: list[str]) -> dict[str, Any]:
    """The pipeline's result for a given list of claims (the LM's item quanta)."""
    claims = [{"claim": " ".join(c.split()), "words": len(c.split())} for c in claim_texts]
    return {"claims": claims, "n": len(claims)}
