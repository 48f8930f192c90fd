"""`alto bench rerank`: FacTool's rerank stage with the passage store against encoding each
candidate online (what every rerank did before the store), on the same queries.

Queries: 5-6 consecutive words of a randomly chosen passage (the paper's search-query length,
5.5 +- 3.1 tokens), seeded, as `alto bench bm25`'s. Per query: BM25's top 10 candidates (the
pipeline's `BM25_K`), the query's token embeddings, then the rerank stage's work both ways:
- online: the candidates' token embeddings encoded now (the store off, no passage cache);
- stored: the candidates' int8 vectors read from the memory-mapped store and dequantised;
each followed by MaxSim against every candidate. The stage time excludes the query's own
encoding (stage 5, the same both ways), which is reported beside it. The two rankings are
compared: the top 3 (what the stage keeps) in the same order, and the largest score change.

The store must hold the candidates' shards: the bench builds the ones it lacks first and
reports that build's rate (passages per second). The store's size is that of the whole
corpus when it is complete, else projected from the shards built (and labelled so).

JSON keys: `speedup` (online / stored, median stage time per query), `same_top3`
(fraction of queries), `max_score_change`, plus the raw figures.
"""

from __future__ import annotations

import random
import statistics
import time
from pathlib import Path
from typing import Any

from alto.agents.factool.bm25 import ScoreAccumulator, tokenize
from alto.agents.factool.encoder import Matrix, score
from alto.agents.factool.pipeline import BM25_K, EVIDENCE_K
from alto.agents.factool.resources import Resources
from alto.bench.common import percentile, progress, write_json
from alto.config import load_config


def _queries(res: Resources, n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < n:
        words = tokenize(res.docs[rng.randrange(len(res.docs))].contents)
        length = rng.choice((5, 6))
        if len(words) > length:
            start = rng.randrange(len(words) - length)
            out.append(" ".join(words[start : start + length]))
    return out


def _scores(query: Matrix, passages: dict[int, Matrix]) -> dict[int, float]:
    return {doc: score(query, emb) for doc, emb in passages.items()}


def _top(scores: dict[int, float]) -> list[int]:
    return [d for d, _ in sorted(scores.items(), key=lambda s: (-s[1], s[0]))[:EVIDENCE_K]]


def main(*, quick: bool, json_path: Path | None) -> int:
    config = load_config()
    res = Resources(config)
    progress("loading the corpus, its BM25 index and the encoder")
    index, encoder, store = res.index, res.encoder, res.store
    queries = _queries(res, 20 if quick else 200, seed=11)
    candidates = []
    for query in queries:
        acc = ScoreAccumulator(index)
        acc.extend(tokenize(query))
        candidates.append([doc for doc, _ in acc.top_k(BM25_K)])

    needed = {doc // store.shard_docs for docs in candidates for doc in docs}
    todo = store.missing(needed)
    progress(f"building {len(todo)} of the store's {store.n_shards} shards the candidates need")
    t0 = time.perf_counter()
    res.build_store(shards=todo)
    build_s = time.perf_counter() - t0
    built_passages = sum(len(store.shard_range(s)) for s in todo)

    progress(f"reranking {len(queries)} queries both ways")
    encoder.token_embeddings([res.docs[0].contents])  # the first forward pass warms up
    encode_ms, online_ms, stored_ms, changes = [], [], [], []
    same = 0
    gaps: list[float] = []  # per query whose top 3 differ: the closest online scores
    for query, docs in zip(queries, candidates, strict=True):
        t0 = time.perf_counter()
        (q,) = encoder.token_embeddings([query])
        t1 = time.perf_counter()
        online = _scores(
            q,
            dict(
                zip(
                    docs,
                    encoder.token_embeddings([res.docs[d].contents for d in docs]),
                    strict=True,
                )
            ),
        )
        t2 = time.perf_counter()
        stored = _scores(q, store.get(docs))
        t3 = time.perf_counter()
        encode_ms.append((t1 - t0) * 1e3)
        online_ms.append((t2 - t1) * 1e3)
        stored_ms.append((t3 - t2) * 1e3)
        if _top(online) == _top(stored):
            same += 1
        else:  # how close the online scores were where the two orders differ
            ranked = sorted(online.values(), reverse=True)[: EVIDENCE_K + 1]
            gaps.append(min(a - b for a, b in zip(ranked, ranked[1:], strict=False)))
        changes.append(max(abs(online[d] - stored[d]) for d in docs))

    coverage = store.coverage()
    per_passage = coverage.bytes_on_disk / max(1, coverage.passages_built)
    size_mb = (
        coverage.bytes_on_disk if coverage.complete else per_passage * coverage.passages
    ) / 1e6
    online_ms.sort()
    stored_ms.sort()
    speedup = statistics.median(online_ms) / statistics.median(stored_ms)
    rate = built_passages / build_s if built_passages else None
    print(
        f"## Rerank stage per query: passage store against online encoding ({len(queries)} queries, BM25 top {BM25_K})\n"
    )
    print("| | p50 ms | p90 ms |")
    print("|---|---|---|")
    print(
        f"| query encoding (stage 5, both ways) | {statistics.median(encode_ms):.2f} | {percentile(sorted(encode_ms), 90):.2f} |"
    )
    print(
        f"| rerank, candidates encoded online | {statistics.median(online_ms):.2f} | {percentile(online_ms, 90):.2f} |"
    )
    print(
        f"| rerank, candidates from the store | {statistics.median(stored_ms):.3f} | {percentile(stored_ms, 90):.3f} |"
    )
    print(
        f"\nspeedup (median): {speedup:,.0f}x; same top {EVIDENCE_K} in the same order: {same}/{len(queries)}; largest score change {max(changes):.2e}"
    )
    print(
        f"store: {store.folder.name}: {coverage.line()}; whole corpus {'' if coverage.complete else 'projected '}{size_mb:,.0f} MB on disk"
    )
    if gaps:
        print(
            f"where the top {EVIDENCE_K} differ, the online scores of neighbours in it were "
            f"{', '.join(f'{g:.1e}' for g in gaps)} apart (near ties the rounding reorders)"
        )
    if rate is not None:
        print(
            f"built {built_passages:,} passages for this run at {rate:,.0f} passages/s (whole corpus: ~{coverage.passages / rate / 60:,.0f} min)"
        )
    data: dict[str, Any] = {
        "queries": len(queries),
        "speedup": speedup,
        "same_top3": same / len(queries),
        "max_score_change": max(changes),
        "differing_top3_min_gaps": gaps,
        "encode_ms": encode_ms,
        "online_ms": online_ms,
        "stored_ms": stored_ms,
        "store_bytes_whole_corpus": size_mb * 1e6,
        "store_complete": coverage.complete,
        "build_passages_per_s": rate,
    }
    write_json(json_path, data)
    return 0
