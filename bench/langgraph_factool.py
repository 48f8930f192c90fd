"""The FacTool pipeline as a LangGraph graph: the baseline system of `alto bench factool`.

Same work as `alto.agents.factool.pipeline`, step for step: the same prompts (the `LMCall` render
functions), the same LM request ids (so the SIMULATED engine writes the same text), the same
quantum rules, BM25 index, MiniLM encoder, rerank, evidence, claim search, verdict parsing and
report code. What differs is only how the steps are run, as a LangGraph user would run them:

    request graph:  answer -> claims -> Send(check_claim) per claim -> report
    claim graph:    queries -> Send(retrieve) per query -> evidence -> claim_search -> verify -> judge
    retrieve:       BM25 top-k || MiniLM encoding (threads), then rerank (thread)

Each claim runs as its own subgraph, so a claim's retrieval and verification never wait
for another claim's (LangGraph runs a graph in supersteps, and one flat graph would hold
every claim's verification until the slowest claim's retrieval is done). Independent
calls run concurrently (`Send` map-reduce), CPU-bound steps in threads (`asyncio.to_thread`)
so the event loop keeps serving the LM calls. Unlike our streaming pipeline, a step starts
only when the LM call before it has finished: that is how LangGraph nodes work.
"""

from __future__ import annotations

import argparse
import asyncio
import operator
import random
import statistics
import time
from collections.abc import AsyncIterator, Sequence
from typing import Annotated, Any, Protocol, TypedDict, cast

from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Send

from alto.agents.factool import pipeline as factool
from alto.agents.factool.bm25 import ScoreAccumulator, tokenize
from alto.agents.factool.resources import resources
from alto.lm_service.engine import GenerationParams, Prompt
from alto.lm_service.quanta import QuantumRule, split_all
from alto.schemas.messages import PathEntry
from alto.streams import REQUEST
from alto.streams.ancestry import node_key, path_str
from alto.streams.critical_path import KINDS
from alto.streams.operators import Item
from alto.streams.pipeline import LMCall

Path = tuple[PathEntry, ...]
# (step, the claim's path ('' for the request's own steps), start, end): time.monotonic() s
Span = tuple[str, str, float, float]
LM_STEPS = frozenset({"answer", "claims", "queries", "verify"})


class Generator(Protocol):
    """What the graph needs of an LM engine: `alto.lm_service.engine.Engine.generate` (an
    `Engine`, or a pool that spreads calls over several)."""

    def generate(
        self, request_id: str, prompt: Prompt, params: GenerationParams
    ) -> AsyncIterator[str | bytes]: ...


class RequestState(TypedDict, total=False):
    request_id: str
    question: str
    answer: list[str]  # the answer's quanta (one: its rule is "whole")
    claims: list[tuple[Path, str]]  # each claim with its ancestry path
    judged: Annotated[list[tuple[tuple[int, ...], dict[str, Any]]], operator.add]
    report: dict[str, Any]
    spans: Annotated[list[Span], operator.add]


class ClaimState(TypedDict, total=False):
    request_id: str
    path: Path  # the claim's: (answer i, claims j)
    claim: str
    queries: list[str]
    reranked: Annotated[list[tuple[int, dict[str, Any]]], operator.add]
    evidence: dict[str, Any]
    checked: dict[str, Any]  # evidence after the claim's own search
    verdict: list[str]
    judged: dict[str, Any]
    spans: Annotated[list[Span], operator.add]


class QueryInput(TypedDict):
    request_id: str
    path: Path  # the query's: (answer i, claims j, queries k)
    query: str


async def _lm(engine: Generator, call: LMCall, stage: str, item: Item) -> list[str]:
    """One LM call, as our LM worker makes it: same prompt, same request id, same split."""
    prompt = Prompt(call.prompt_name, tuple(call.render(item)), prefix_chars=call.prefix_chars)
    params = GenerationParams(max_tokens=call.max_tokens, temperature=call.temperature)
    lm_id = f"{node_key(item.request_id, item.path)}#{stage}"
    deltas: list[str | bytes] = [d async for d in engine.generate(lm_id, prompt, params)]
    return split_all(deltas, cast(QuantumRule, call.rule))


def _bm25(query: str) -> list[tuple[int, float]]:
    """`StreamingBM25`'s result for one whole query: its words' tokens, in order."""
    tokens = [t for word in query.split() for t in tokenize(word)]
    scores = ScoreAccumulator(resources().index)
    scores.extend(tokens)
    return scores.top_k(factool.BM25_K) if tokens else []


def _encode(query: str) -> Any:
    """The pipeline's encode stage itself (packed as it sends it, so rerank scores agree)."""
    return factool.encode(query)["emb"]


def _span(step: str, start: float, claim: str = "") -> list[Span]:
    return [(step, claim, start, time.monotonic())]


def _claim(state: ClaimState | QueryInput) -> str:
    """The claim's path, as our traces write it (a query's: its claim's)."""
    return path_str(state["path"] if "claim" in state else state["path"][:-1])


def _claim_graph(engine: Generator) -> CompiledStateGraph[Any, Any, Any, Any]:
    async def queries(state: ClaimState) -> dict[str, Any]:
        start = time.monotonic()
        item = Item(state["claim"], state["request_id"], state["path"], "claims")
        found = await _lm(engine, factool.QUERIES, "queries", item)
        return {"queries": found, "spans": _span("queries", start, _claim(state))}

    def fan_out(state: ClaimState) -> list[Send] | str:
        sends = [
            Send(
                "retrieve",
                QueryInput(
                    request_id=state["request_id"],
                    path=(*state["path"], PathEntry("queries", k)),
                    query=query,
                ),
            )
            for k, query in enumerate(state["queries"])
        ]
        return sends or "evidence"  # no query: the claim's own search still finds evidence

    async def retrieve(state: QueryInput) -> dict[str, Any]:
        query = state["query"]
        start = time.monotonic()
        candidates, emb = await asyncio.gather(
            asyncio.to_thread(_bm25, query), asyncio.to_thread(_encode, query)
        )
        searched = time.monotonic()
        joined = {"query": query, "candidates": candidates, "emb": emb}
        reranked = await asyncio.to_thread(factool.rerank, joined)
        return {
            "reranked": [(state["path"][-1].index, reranked)],
            "spans": [
                ("search", _claim(state), start, searched),
                *_span("rerank", searched, _claim(state)),
            ],
        }

    def evidence(state: ClaimState) -> dict[str, Any]:
        start = time.monotonic()
        ranked = [r for _, r in sorted(state.get("reranked", []), key=lambda e: e[0])]
        found = factool._evidence({"claims": [state["claim"]], "rerank": ranked})
        return {"evidence": found, "spans": _span("evidence", start, _claim(state))}

    async def claim_search(state: ClaimState) -> dict[str, Any]:
        start = time.monotonic()
        checked = await asyncio.to_thread(factool.claim_search, state["evidence"])
        return {"checked": checked, "spans": _span("claim_search", start, _claim(state))}

    async def verify(state: ClaimState) -> dict[str, Any]:
        start = time.monotonic()
        item = Item(state["checked"], state["request_id"], state["path"], "claim_search")
        texts = await _lm(engine, factool.VERIFY, "verify", item)
        return {"verdict": texts, "spans": _span("verify", start, _claim(state))}

    def judge(state: ClaimState) -> dict[str, Any]:
        return {
            "judged": factool._judged(
                {"claim_search": [state["checked"]], "verify": state["verdict"]}
            )
        }

    graph = StateGraph(ClaimState)
    graph.add_node("queries", queries)
    graph.add_node("retrieve", retrieve)
    graph.add_node("evidence", evidence)
    graph.add_node("claim_search", claim_search)
    graph.add_node("verify", verify)
    graph.add_node("judge", judge)
    graph.add_edge(START, "queries")
    graph.add_conditional_edges("queries", fan_out, ["retrieve", "evidence"])
    graph.add_edge("retrieve", "evidence")
    graph.add_edge("evidence", "claim_search")
    graph.add_edge("claim_search", "verify")
    graph.add_edge("verify", "judge")
    graph.add_edge("judge", END)
    return graph.compile(name="factool-claim")


def build_graph(engine: Generator) -> CompiledStateGraph[Any, Any, Any, Any]:
    """One request's graph: input ``{"request_id", "question"}``, output state with ``report``
    (the dict our pipeline's report stage writes) and ``spans`` (per-step timings)."""
    claim_graph = _claim_graph(engine)

    async def answer(state: RequestState) -> dict[str, Any]:
        start = time.monotonic()
        item = Item(state["question"], state["request_id"], (), REQUEST)
        text = await _lm(engine, factool.ANSWER, "answer", item)
        return {"answer": text, "spans": _span("answer", start)}

    async def claims(state: RequestState) -> dict[str, Any]:
        start = time.monotonic()

        async def of(i: int, text: str) -> list[tuple[Path, str]]:
            at = (PathEntry("answer", i),)
            item = Item(text, state["request_id"], at, "answer")
            found = await _lm(engine, factool.CLAIMS, "claims", item)
            return [((*at, PathEntry("claims", j)), c) for j, c in enumerate(found)]

        per_answer = await asyncio.gather(*(of(i, a) for i, a in enumerate(state["answer"])))
        found = [c for cs in per_answer for c in cs]
        return {"claims": found, "spans": _span("claims", start)}

    def fan_out(state: RequestState) -> list[Send] | str:
        sends = [
            Send("check_claim", ClaimState(request_id=state["request_id"], path=path, claim=claim))
            for path, claim in state["claims"]
        ]
        return sends or "report"

    async def check_claim(state: ClaimState) -> dict[str, Any]:
        out = await claim_graph.ainvoke(state)
        key = tuple(p.index for p in state["path"])
        return {"judged": [(key, out["judged"])], "spans": out["spans"]}

    def report(state: RequestState) -> dict[str, Any]:
        judged = [j for _, j in sorted(state.get("judged", []), key=lambda e: e[0])]
        return {"report": factool._report({"answer": state["answer"], "judged": judged})}

    graph = StateGraph(RequestState)
    graph.add_node("answer", answer)
    graph.add_node("claims", claims)
    graph.add_node("check_claim", check_claim)
    graph.add_node("report", report)
    graph.add_edge(START, "answer")
    graph.add_edge("answer", "claims")
    graph.add_conditional_edges("claims", fan_out, ["check_claim", "report"])
    graph.add_edge("check_claim", "report")
    graph.add_edge("report", END)
    return graph.compile(name="factool")


def _steps(spans: Sequence[Span], origin: float) -> dict[str, dict[str, float]]:
    """Per step: calls, summed busy time, and its window relative to `origin` (seconds)."""
    out: dict[str, dict[str, float]] = {}
    for step, _, start, end in spans:
        s = out.setdefault(
            step, {"calls": 0, "busy_s": 0.0, "first_start_s": start - origin, "last_end_s": 0.0}
        )
        s["calls"] += 1
        s["busy_s"] += end - start
        s["first_start_s"] = min(s["first_start_s"], start - origin)
        s["last_end_s"] = max(s["last_end_s"], end - origin)
    return out


def critical_ms(spans: Sequence[Span], origin: float, end: float) -> dict[str, int]:
    """One request's critical path through its spans, in the kinds of our own
    (`alto.streams.critical_path.KINDS`, every kind, zeros included), partitioning `origin`
    (arrival) to `end` (report): answer and claims, then the claim verified last: its
    queries, the retrieval that finished last (BM25 and MiniLM, then rerank), evidence,
    claim search, verify. LM calls are `lm`, the other steps `compute`, and the time between
    steps `waiting` (the event loop, a free thread, LangGraph's supersteps, the report)."""

    def to_ms(t: float) -> int:
        return round((t - origin) * 1000)

    path = [s for s in spans if not s[1]]
    claims: dict[str, list[Span]] = {}
    for s in spans:
        if s[1]:
            claims.setdefault(s[1], []).append(s)
    if claims:
        last = max(claims.values(), key=lambda ss: max(s[3] for s in ss))
        for step in ("queries", "evidence", "claim_search", "verify"):
            found = max((s for s in last if s[0] == step), key=lambda s: s[3], default=None)
            if found is not None:
                path.append(found)
        rerank = max((s for s in last if s[0] == "rerank"), key=lambda s: s[3], default=None)
        if rerank is not None:  # its search ended where it started
            path += [rerank, *(s for s in last if s[0] == "search" and s[3] == rerank[2])]
    totals = dict.fromkeys(KINDS, 0)
    cursor = to_ms(end)
    for step, _, start, stop in sorted(path, key=lambda s: s[3], reverse=True):
        for kind, at in (
            ("waiting", to_ms(stop)),
            ("lm" if step in LM_STEPS else "compute", to_ms(start)),
        ):
            at = max(0, min(at, cursor))
            totals[kind] += cursor - at
            cursor = at
    totals["waiting"] += cursor
    return totals


async def run_open_loop(
    engine: Generator, questions: list[str], arrivals_s: list[float], request_ids: list[str]
) -> list[dict[str, Any]]:
    """Runs each question at its arrival time (seconds from the start), all concurrently.

    Per request, in input order: ``request_id``, ``latency_s`` (arrival -> report, so a
    late start counts), ``output`` (the report, None if the request failed), ``error``,
    ``steps`` (per-step timings, see `_steps`). The corpus, index and encoder are loaded
    before the clock starts (our Faust workers warm up too).
    """
    if not len(questions) == len(arrivals_s) == len(request_ids):
        raise ValueError("questions, arrivals_s and request_ids differ in length")
    await asyncio.to_thread(factool.warm_up)
    graph = build_graph(engine)
    t0 = time.monotonic()

    async def one(question: str, arrival: float, request_id: str) -> dict[str, Any]:
        await asyncio.sleep(max(0.0, t0 + arrival - time.monotonic()))
        due = t0 + arrival
        try:
            state = await graph.ainvoke({"request_id": request_id, "question": question})
        except Exception as exc:  # one request's failure is its result, not the run's
            return {
                "request_id": request_id,
                "latency_s": time.monotonic() - due,
                "output": None,
                "error": f"{type(exc).__name__}: {exc}",
                "steps": {},
            }
        return {
            "request_id": request_id,
            "latency_s": time.monotonic() - due,
            "output": state["report"],
            "error": None,
            "steps": _steps(state.get("spans", []), due),
            "critical_ms": critical_ms(state.get("spans", []), due, time.monotonic()),
        }

    return list(
        await asyncio.gather(
            *(one(q, a, r) for q, a, r in zip(questions, arrivals_s, request_ids, strict=True))
        )
    )


def main(argv: list[str] | None = None) -> int:
    """`python -m alto.bench.langgraph_factool --engine sim --n 5 --rate 0.5`: a manual check."""
    from alto.agents.factool.corpus import questions as ask
    from alto.config import load_config
    from alto.lm_service.worker import make_engine

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=("sim", "vllm"), default="sim")
    parser.add_argument("--n", type=int, default=5, help="requests")
    parser.add_argument("--rate", type=float, default=0.5, help="Poisson arrivals per second")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--time-scale", type=float, help="SIMULATED engine speed-up (< 1)")
    args = parser.parse_args(argv)
    lm = {} if args.time_scale is None else {"sim_time_scale": args.time_scale}
    config = load_config(lm=lm)
    asked = ask(resources(config).docs, args.n, seed=args.seed)
    rng = random.Random(args.seed)
    arrivals, t = [], 0.0
    for _ in asked:
        arrivals.append(t)
        t += rng.expovariate(args.rate)
    engine = make_engine(config, args.engine)

    async def run() -> list[dict[str, Any]]:
        await engine.start()
        try:
            ids = [f"lg-{i}" for i in range(len(asked))]
            return await run_open_loop(engine, asked, arrivals, ids)
        finally:
            await engine.stop()

    runs = asyncio.run(run())
    label = " (SIMULATED engine)" if engine.simulated else ""
    print(f"LangGraph FacTool{label}: {len(runs)} requests at {args.rate:g}/s")
    for arrival, r in zip(arrivals, runs, strict=True):
        out = r["output"]
        what = (
            r["error"]
            if out is None
            else f"{len(out['claims'])} claims, factuality {out['factuality']}"
        )
        steps = " ".join(f"{k}={v['last_end_s']:.2f}" for k, v in r["steps"].items())
        print(
            f"  {r['request_id']} at {arrival:6.2f} s: {r['latency_s']:6.2f} s  {what}  [{steps}]"
        )
    lat = sorted(r["latency_s"] for r in runs if r["output"] is not None)
    if lat:
        print(f"median {statistics.median(lat):.2f} s, max {lat[-1]:.2f} s")
    return 0 if len(lat) == len(runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
