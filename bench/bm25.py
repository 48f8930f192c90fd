"""`alto bench bm25`: streaming BM25 against `rank_bm25.BM25Okapi` on the full corpus.

Corpus: WordNet 3.0 (every synset's lemmas and gloss, ~117k documents; `ALTO_PIPELINE_SETTINGS__FACTOOL__CORPUS` for a
JSONL one). Queries: 5-6 consecutive tokens of a randomly chosen document's gloss (the
length of the paper's search queries, 5.5 +- 3.1 tokens), seeded. For each query the
streaming accumulator takes the tokens one by one (as they stream from the LM) and then
gives the top 10; `rank_bm25` scores the whole query at once (`get_scores`). Every query
of the reference run is checked for bitwise-identical scores on every document.

JSON keys: `speedup_vs_rank_bm25` (query tokens/s, streaming incl. the top-10 / rank_bm25),
`identical_scores` (all checked queries equal on all documents), plus the raw figures.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import numpy as np

from alto.agents.factool.bm25 import BM25Index, tokenize
from alto.agents.factool.corpus import load_corpus
from alto.agents.factool.settings import factool_settings
from alto.bench.common import progress, write_json
from alto.config import load_config


def _queries(texts: list[list[str]], n: int, seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    out: list[list[str]] = []
    while len(out) < n:
        tokens = texts[rng.randrange(len(texts))]
        length = rng.choice((5, 6))
        if len(tokens) > length:
            start = rng.randrange(len(tokens) - length)
            out.append(tokens[start : start + length])
    return out


def main(*, quick: bool, json_path: Path | None) -> int:
    from rank_bm25 import BM25Okapi

    config = load_config()
    progress("loading the corpus")
    docs = load_corpus(factool_settings(config).corpus)
    corpus = [tokenize(d.contents) for d in docs]
    t0 = time.perf_counter()
    index = BM25Index(corpus)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    reference = BM25Okapi(corpus)
    ref_build_s = time.perf_counter() - t0
    n_ref, n_stream = (5, 200) if quick else (30, 2000)
    queries = _queries(corpus, n_stream, seed=7)

    progress(f"rank_bm25 get_scores on {n_ref} queries")
    ref_scores = []
    t0 = time.perf_counter()
    for q in queries[:n_ref]:
        ref_scores.append(reference.get_scores(q))
    ref_s = time.perf_counter() - t0
    ref_tokens = sum(len(q) for q in queries[:n_ref])

    progress(f"streaming BM25 on {n_stream} queries, token by token, then the top 10")
    t0 = time.perf_counter()
    for q in queries:
        acc = index.accumulator()
        for token in q:
            acc.add(token)
        acc.top_k(10)
    stream_s = time.perf_counter() - t0
    stream_tokens = sum(len(q) for q in queries)

    identical = True
    for q, ref in zip(queries[:n_ref], ref_scores, strict=True):
        acc = index.accumulator()
        acc.extend(q)
        got = acc.scores()
        identical &= bool(np.array_equal(got, ref)) and got.tobytes() == ref.tobytes()

    ref_rate = ref_tokens / ref_s
    stream_rate = stream_tokens / stream_s
    figures: dict[str, Any] = {
        "speedup_vs_rank_bm25": round(stream_rate / ref_rate, 1),
        "identical_scores": identical,
        "documents": len(docs),
        "vocabulary": len(index.vocab),
        "streaming_tokens_per_s": round(stream_rate, 1),
        "rank_bm25_tokens_per_s": round(ref_rate, 1),
        "streaming_queries": n_stream,
        "checked_queries": n_ref,
        "index_build_s": round(build_s, 2),
        "rank_bm25_build_s": round(ref_build_s, 2),
        "quick": quick,
    }
    print(f"## alto bench bm25 ({len(docs)} documents, queries of 5-6 real tokens)\n")
    print("| | query tokens/s | per query | build s |")
    print("|---|---|---|---|")
    print(
        f"| rank_bm25 `get_scores` ({n_ref} queries) | {ref_rate:.0f} | "
        f"{1000 * ref_s / n_ref:.1f} ms | {ref_build_s:.1f} |"
    )
    print(
        f"| streaming, token by token + top-10 ({n_stream} queries) | {stream_rate:.0f} | "
        f"{1000 * stream_s / n_stream:.2f} ms | {build_s:.1f} |"
    )
    print(
        f"\nspeedup {figures['speedup_vs_rank_bm25']}x (goal >= 50x); scores identical to "
        f"rank_bm25 on every document for all {n_ref} checked queries: {identical}"
    )
    write_json(json_path, figures)
    return 0 if identical else 1
