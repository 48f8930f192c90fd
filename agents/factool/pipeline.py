"""The FacTool chatbot-verification pipeline (the product's main job).

    request (a question)
      -> answer       LM, the whole answer (claims are extracted from all of it, as in FacTool)
      -> claims       LM, one quantum per claim (a sentence of its output) as each is written
      -> queries      LM per claim, one quantum per search query (line)
         -> query_words   the words of each query, streamed by the LM worker as written
            -> bm25       per query: Okapi scores summed word by word, top-k documents
         -> encode        per whole query: MiniLM token embeddings
      -> join         per query: BM25 candidates + query embeddings
      -> rerank       MaxSim of the query's tokens against each candidate's tokens
      -> evidence     per claim: the claim and its best passages over all its queries
      -> claim_search the claim's own text is searched too, ranked with its queries' finds
      -> verify       LM per claim: verdict and reason (parsed defensively)
      -> judged       per claim: claim, evidence, verdict
      -> report       per request: answer, claims, factuality score -> alto.results

In streaming mode every arrow carries a quantum the moment it exists: the first claim's
queries are written, and their words scored by BM25, while the model is still listing later
claims. In baseline mode each LM stage releases its outputs only
when its call has finished (the paper's baseline).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from alto.agents.factool.bm25 import BM25Index, ScoreAccumulator, tokenize
from alto.agents.factool.encoder import score
from alto.agents.factool.resources import PassageIndex, pack, resources, unpack
from alto.agents.factool.settings import NAME, FacToolSettings
from alto.agents.factool.verdict import SUPPORTED, parse_verdict
from alto.streams import Item, Pipeline, Topology
from alto.streams.ancestry import node_key
from alto.streams.operators import Operator
from alto.streams.pipeline import LMCall

BM25_K = 10  # candidates per query from BM25
EVIDENCE_K = 3  # passages kept per query after reranking, and per claim

# Prompts are written for the packaged SmolLM2-135M-Instruct, which mostly restates its
# input: asked for facts it rewrites the answer sentence by sentence (so claims are sentences),
# asked for queries it writes the fact back (a fine BM25 query), and "True or False, then
# explain" is the verification format it follows most reliably (checked by hand on WordNet
# questions; its verdicts are often wrong, which is the model's limit, not the pipeline's).
ANSWER_SYSTEM = "You are a knowledgeable assistant. Answer in three short factual sentences."
CLAIMS_SYSTEM = "Rewrite the text as short sentences, one fact per sentence."
QUERIES_SYSTEM = (
    "Write two short search queries that would find evidence about the fact, one per line."
)
VERIFY_SYSTEM = (
    "Decide if the claim is true given the evidence. Start your reply with True or False, "
    "then explain in one sentence."
)


def _render_answer(item: Item) -> list[tuple[str, str]]:
    return [("system", ANSWER_SYSTEM), ("user", str(item.value))]


def _render_claims(item: Item) -> list[tuple[str, str]]:
    return [("system", CLAIMS_SYSTEM), ("user", str(item.value))]


def _render_queries(item: Item) -> list[tuple[str, str]]:
    return [("system", QUERIES_SYSTEM), ("user", f"Fact: {item.value}\nQueries:")]


def _render_verify(item: Item) -> list[tuple[str, str]]:
    claim = item.value
    lines = [f"{p['title']}: {p['text']}" for p in claim["evidence"]]
    evidence = "\n".join(lines) or "(none found)"
    return [("system", VERIFY_SYSTEM), ("user", f"Evidence: {evidence}\nClaim: {claim['claim']}")]


ANSWER = LMCall("factool.answer", _render_answer, "whole", 96, prefix_chars=len(ANSWER_SYSTEM))
CLAIMS = LMCall("factool.claims", _render_claims, "sentence", 128, prefix_chars=len(CLAIMS_SYSTEM))
QUERIES = LMCall("factool.queries", _render_queries, "item", 32, prefix_chars=len(QUERIES_SYSTEM))
VERIFY = LMCall("factool.verify", _render_verify, "whole", 48, prefix_chars=len(VERIFY_SYSTEM))


class StreamingBM25(Operator):
    """Stage 4: one query's words in, its top-k documents out; scored as the words arrive.

    The table state (JSON, changelogged) is the query's words by index. The scores live in
    this process, one `ScoreAccumulator` per open query, fed each word's tokens in word
    order the moment the word arrives (a word that overtakes an earlier one waits for it).
    If the process did not see every word (a replacement worker resumed the query from the
    table), the result rebuilds the scores from the words: the same bits either way.
    """

    def __init__(
        self,
        k: int = BM25_K,
        max_open: int = 10_000,
        index: Callable[[], BM25Index] = lambda: resources().index,
    ) -> None:
        self.k = k
        self.index = index
        self.max_open = max_open
        self._open: OrderedDict[str, tuple[ScoreAccumulator, int, dict[int, str]]] = OrderedDict()
        self._lock = threading.Lock()

    def init(self) -> dict[str, Any]:
        return {"node": None, "words": {}}

    def add(self, acc: dict[str, Any], item: Item) -> dict[str, Any]:
        node = node_key(item.request_id, item.path[:-1])
        index = item.indices[-1]
        acc["node"] = node
        acc["words"][str(index)] = str(item.value)
        with self._lock:
            entry = self._open.pop(node, None)
            if entry is None:
                entry = (ScoreAccumulator(self.index()), 0, {})
            scores, upto, early = entry
            early[index] = str(item.value)
            while upto in early:
                scores.extend(tokenize(early.pop(upto)))
                upto += 1
            self._open[node] = (scores, upto, early)
            while len(self._open) > self.max_open:
                self._open.popitem(last=False)
        return acc

    def result(self, acc: dict[str, Any]) -> dict[str, Any]:
        words = [w for _, w in sorted((int(i), w) for i, w in acc["words"].items())]
        tokens = [t for w in words for t in tokenize(w)]
        with self._lock:
            entry = self._open.pop(acc["node"], None) if acc["node"] else None
        if entry is not None and entry[1] == len(words) and entry[0].tokens == tokens:
            scores = entry[0]
        else:  # resumed elsewhere: rebuild from the words (same sums, same order)
            scores = ScoreAccumulator(self.index())
            scores.extend(tokens)
        top = scores.top_k(self.k) if tokens else []
        return {"query": " ".join(words), "tokens": tokens, "candidates": top}


def encode(query: str) -> dict[str, Any]:
    """Stage 5: the whole query's token embeddings."""
    (emb,) = resources().encoder.token_embeddings([str(query)])
    return {"query": str(query), "emb": pack(emb)}


def _joined(parts: dict[str, Any]) -> dict[str, Any]:
    (bm25,), (encoded,) = parts["bm25"], parts["encode"]
    return {"query": encoded["query"], "candidates": bm25["candidates"], "emb": encoded["emb"]}


def rerank(joined: dict[str, Any]) -> dict[str, Any]:
    """Stage 6: MaxSim of the query's token vectors against each candidate's, per query
    token (so scores of queries of different lengths compare)."""
    query = unpack(joined["emb"])
    candidates = {int(doc): float(bm25) for doc, bm25 in joined["candidates"]}
    res = resources()
    passages = res.passage_embeddings(sorted(candidates))
    scored: list[dict[str, Any]] = []
    for doc, emb in passages.items():
        passage_score = score(query, emb)
        p = res.passage(doc)
        scored.append(
            {
                "doc_id": p.doc_id,
                "title": p.title,
                "text": p.text,
                "bm25": candidates[doc],
                "score": round(passage_score, 6),
            }
        )
    scored.sort(key=lambda e: (-e["score"], e["doc_id"]))
    return {"query": joined["query"], "evidence": scored[:EVIDENCE_K]}


def _evidence(parts: dict[str, Any]) -> dict[str, Any]:
    (claim,) = parts["claims"]
    best: dict[str, dict[str, Any]] = {}
    for reranked in parts["rerank"]:
        for passage in reranked["evidence"]:
            seen = best.get(passage["doc_id"])
            if seen is None or passage["score"] > seen["score"]:
                best[passage["doc_id"]] = passage
    ranked = sorted(best.values(), key=lambda e: (-e["score"], e["doc_id"]))
    return {
        "claim": claim,
        "queries": [r["query"] for r in parts["rerank"]],
        "evidence": ranked[:EVIDENCE_K],
    }


def claim_search(claim: dict[str, Any]) -> dict[str, Any]:
    """The claim's own text is searched too, always (BM25, then MaxSim), and ranked with what
    its queries found; its best passage keeps a place in the evidence.

    Our deviation from FacTool, for weak models: FacTool retrieves only by the generated
    queries. SmolLM2's queries are often a paraphrase that drifts off the subject (or none
    at all), while BM25 on the claim's own words ranks relevant entries first."""
    res = resources()
    scores = ScoreAccumulator(res.index)
    scores.extend(tokenize(claim["claim"]))
    (emb,) = res.encoder.token_embeddings([claim["claim"]])
    own = rerank({"query": claim["claim"], "candidates": scores.top_k(BM25_K), "emb": pack(emb)})[
        "evidence"
    ]
    kept = {e["doc_id"] for e in own[:1]}
    best: dict[str, dict[str, Any]] = {}
    for passage in [*claim["evidence"], *own]:
        seen = best.get(passage["doc_id"])
        if seen is None or passage["score"] > seen["score"]:
            best[passage["doc_id"]] = passage
    ranked = sorted(best.values(), key=lambda e: (-e["score"], e["doc_id"]))
    chosen = [e for e in ranked if e["doc_id"] in kept]
    chosen += [e for e in ranked if e["doc_id"] not in kept][: EVIDENCE_K - len(chosen)]
    return {**claim, "evidence": sorted(chosen, key=lambda e: (-e["score"], e["doc_id"]))}


def _judged(parts: dict[str, Any]) -> dict[str, Any]:
    (claim,) = parts["claim_search"]
    texts = parts["verify"]
    verdict = parse_verdict(texts[0] if texts else None)
    return {**claim, **verdict.to_json()}


def _report(parts: dict[str, Any]) -> dict[str, Any]:
    claims = parts["judged"]
    supported = sum(1 for c in claims if c["verdict"] == SUPPORTED)
    return {
        "answer": " ".join(parts["answer"]),
        "claims": claims,
        "factuality": round(supported / len(claims), 4) if claims else None,
        "verdicts": {
            v: sum(1 for c in claims if c["verdict"] == v)
            for v in ("supported", "refuted", "unverifiable")
        },
    }


def warm_up() -> None:
    """Load the corpus, the BM25 index and the encoder (a worker's first request would
    otherwise wait seconds for them)."""
    res = resources()
    res.index  # noqa: B018 (cached properties: touching them loads them)
    res.encoder.token_embeddings([res.docs[0].contents])


def build() -> Topology:
    p = Pipeline(
        NAME,
        "FacTool: answer, extract claims, retrieve and rerank evidence, verify",
        warmup=warm_up,
        settings=FacToolSettings,
        index=PassageIndex(),
    )
    answer = p.request.lm(ANSWER)
    claims = answer.lm(CLAIMS)
    queries = claims.lm(QUERIES)
    bm25 = queries.lm_words(name="query_words").aggregate(StreamingBM25(), name="bm25", per=queries)
    encoded = queries.map(encode, blocking=True, concurrency=4)
    joined = p.join("join", _joined, per=queries, bm25=bm25, encode=encoded)
    reranked = joined.map(rerank, blocking=True, concurrency=4)
    evidence = p.join("evidence", _evidence, per=claims, claims=claims, rerank=reranked)
    searched = evidence.map(claim_search, blocking=True, concurrency=4)
    verdicts = searched.lm(VERIFY)
    judged = p.join("judged", _judged, per=claims, claim_search=searched, verify=verdicts)
    p.join("report", _report, answer=answer, judged=judged)
    return p.build()
