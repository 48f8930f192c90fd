"""Streaming BM25: token-by-token scores are bitwise those of rank_bm25.BM25Okapi."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rank_bm25 import BM25Okapi

from alto.agents.example import _real_sentences
from alto.agents.factool.bm25 import BM25Index, ScoreAccumulator, tokenize

N_DOCS = 400
# the accumulator's modes: default switch-over (N/8), dense from the start, always sparse
MODES = [None, 0, 10**9]


@pytest.fixture(scope="module")
def real() -> tuple[list[list[str]], list[list[str]]]:
    """A corpus of N_DOCS real sentences (standard library docs) and, as queries, the rest."""
    sentences = _real_sentences()
    assert len(sentences) > N_DOCS + 200
    random.Random(7).shuffle(sentences)
    corpus = [tokenize(s) for s in sentences[:N_DOCS]]
    queries = [q for s in sentences[N_DOCS:] if (q := tokenize(s))]
    return corpus, queries


@pytest.fixture(scope="module")
def indexes(real: tuple[list[list[str]], list[list[str]]]) -> tuple[BM25Index, BM25Okapi]:
    corpus, _ = real
    return BM25Index(corpus), BM25Okapi(corpus)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal as floats and bit for bit."""
    return a.dtype == b.dtype and np.array_equal(a, b) and a.tobytes() == b.tobytes()


def _stable_top(scores: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The documented order: score descending, ties by doc id ascending."""
    return [(int(d), float(scores[d])) for d in np.argsort(-scores, kind="stable")[:k]]


def test_tokenize_lowercases_and_splits_on_non_alphanumerics() -> None:
    assert tokenize("Bose-Einstein statistics (1924), e.g. photons_2") == [
        "bose",
        "einstein",
        "statistics",
        "1924",
        "e",
        "g",
        "photons",
        "2",
    ]
    assert tokenize("Ünïcode ÀND çafé!") == ["ünïcode", "ànd", "çafé"]
    assert tokenize("  ...  ") == []


def test_idf_and_lengths_are_rank_bm25s(indexes: tuple[BM25Index, BM25Okapi]) -> None:
    index, ref = indexes
    assert index.vocab == list(ref.idf)  # same words, same (first-occurrence) order
    assert index.idf.tolist() == [ref.idf[w] for w in index.vocab]
    assert index.avgdl == ref.avgdl
    assert index.average_idf == ref.average_idf
    assert index.doc_len.tolist() == ref.doc_len
    for word in ("the", "a", "file", "return"):
        ids, tf = index.posting(word)
        assert ids.tolist() == [d for d, f in enumerate(ref.doc_freqs) if word in f]
        assert tf.tolist() == [ref.doc_freqs[d][word] for d in ids]


@pytest.mark.parametrize("dense_above", MODES)
def test_streaming_scores_equal_rank_bm25_on_real_text(
    real: tuple[list[list[str]], list[list[str]]],
    indexes: tuple[BM25Index, BM25Okapi],
    dense_above: int | None,
) -> None:
    _, queries = real
    index, ref = indexes
    assert len(queries) >= 200
    modes = set()
    for query in queries:
        acc = index.accumulator(dense_above)
        for token in query:
            acc.add(token)
        assert _same(acc.scores(), ref.get_scores(query)), query
        modes.add(acc.is_dense)
    assert modes == ({True, False} if dense_above is None else {dense_above == 0})
    # and after every prefix, as the tokens stream in
    for query in queries[:40]:
        acc = index.accumulator(dense_above)
        for n, token in enumerate(query, 1):
            acc.add(token)
            assert _same(acc.scores(), ref.get_scores(query[:n])), query[:n]


@pytest.mark.parametrize("dense_above", MODES)
def test_top_k_is_the_stable_argsort_of_rank_bm25(
    real: tuple[list[list[str]], list[list[str]]],
    indexes: tuple[BM25Index, BM25Okapi],
    dense_above: int | None,
) -> None:
    _, queries = real
    index, ref = indexes
    for query in queries[:150]:
        acc = index.accumulator(dense_above)
        acc.extend(query)
        expected_scores = ref.get_scores(query)
        matched = int(np.count_nonzero(expected_scores > 0))
        for k in (1, 5, 10, matched, matched + 3, N_DOCS, N_DOCS + 10):
            assert acc.top_k(k) == _stable_top(expected_scores, k), (query, k)
    assert index.accumulator(dense_above).top_k(3) == [(0, 0.0), (1, 0.0), (2, 0.0)]
    assert index.accumulator(dense_above).top_k(0) == []


@pytest.mark.parametrize("dense_above", MODES)
def test_top_k_breaks_ties_by_doc_id(dense_above: int | None) -> None:
    corpus = [["x", "y"], ["z"], ["x", "y"], ["x", "y"], ["w"], ["x", "y"]]
    acc = BM25Index(corpus).accumulator(dense_above)
    acc.add("x")
    top = acc.top_k(3)
    assert [d for d, _ in top] == [0, 2, 3]
    assert top[0][1] == top[1][1] == top[2][1] > 0


@pytest.mark.parametrize("dense_above", MODES)
def test_repeated_and_unknown_tokens(
    real: tuple[list[list[str]], list[list[str]]],
    indexes: tuple[BM25Index, BM25Okapi],
    dense_above: int | None,
) -> None:
    _, queries = real
    index, ref = indexes
    for query in queries[:60]:
        noisy = [query[0], "zzqxunknownzz", *query, query[-1], query[0], "", "NotLowered"]
        acc = index.accumulator(dense_above)
        touched = [acc.add(t) for t in noisy]
        assert touched[1] == 0 and touched[-1] == 0 and touched[-2] == 0
        assert _same(acc.scores(), ref.get_scores(noisy))
        twice = index.get_scores([query[0], query[0]])
        once = index.get_scores([query[0]])
        assert _same(twice, ref.get_scores([query[0], query[0]]))
        if np.any(once != 0):
            assert not np.array_equal(twice, once)  # a repeated token counts twice
    only_unknown = index.accumulator(dense_above)
    only_unknown.extend(["zzqxunknownzz", "qqqnope"])
    assert len(only_unknown) == 0
    assert _same(only_unknown.scores(), ref.get_scores(["zzqxunknownzz", "qqqnope"]))


@pytest.mark.parametrize("before", MODES)
@pytest.mark.parametrize("after", MODES)
def test_json_state_round_trip_mid_query_then_continue(
    real: tuple[list[list[str]], list[list[str]]],
    indexes: tuple[BM25Index, BM25Okapi],
    before: int | None,
    after: int | None,
) -> None:
    _, queries = real
    index, ref = indexes
    for query in [q for q in queries if len(q) >= 3][:80]:
        cut = len(query) // 2
        first = index.accumulator(before)
        first.extend(query[:cut])
        wire = json.dumps(first.to_state())  # what a changelog-backed table would hold
        resumed = ScoreAccumulator.from_state(index, json.loads(wire), after)
        assert resumed.to_state() == first.to_state()
        assert len(resumed) == len(first)
        assert resumed.is_dense == (
            after == 0 and len(first) > 0 or after is None and len(first) > N_DOCS // 8
        )
        assert resumed.tokens == query[:cut]
        assert _same(resumed.scores(), first.scores())
        resumed.extend(query[cut:])
        assert _same(resumed.scores(), ref.get_scores(query))
        assert resumed.top_k(10) == _stable_top(ref.get_scores(query), 10)
        # the compact state (tokens only) is replayed to the same bits
        compact = json.loads(json.dumps(first.to_state(with_scores=False)))
        assert set(compact) == {"index", "tokens"}
        replayed = ScoreAccumulator.from_state(index, compact, after)
        assert replayed.to_state() == first.to_state()
        replayed.extend(query[cut:])
        assert _same(replayed.scores(), ref.get_scores(query))


def test_state_from_another_index_or_malformed_is_refused(
    indexes: tuple[BM25Index, BM25Okapi],
) -> None:
    index, _ = indexes
    other = BM25Index([["a", "b"], ["c"]])
    acc = other.accumulator()
    acc.add("a")
    with pytest.raises(ValueError, match="different BM25 index"):
        ScoreAccumulator.from_state(index, acc.to_state())
    state = index.accumulator().to_state()
    for bad in ({"ids": [3, 1], "scores": [1.0, 2.0]}, {"ids": [N_DOCS], "scores": [1.0]}):
        with pytest.raises(ValueError, match="malformed"):
            ScoreAccumulator.from_state(index, {**state, **bad})


def test_save_load_round_trip(
    tmp_path: Path,
    real: tuple[list[list[str]], list[list[str]]],
    indexes: tuple[BM25Index, BM25Okapi],
) -> None:
    corpus, queries = real
    index, ref = indexes
    path = tmp_path / "cache" / "bm25.npz"
    built = BM25Index.load_or_build(path, lambda: corpus)
    assert path.is_file()
    loaded = BM25Index.load_or_build(path, lambda: pytest.fail("the cache must be used"))
    assert loaded.vocab == index.vocab and loaded.digest == index.digest == built.digest
    for name in ("indptr", "doc_ids", "tf", "doc_len", "idf", "weights"):
        assert _same(getattr(loaded, name), getattr(index, name)), name
    assert (loaded.avgdl, loaded.average_idf) == (ref.avgdl, ref.average_idf)
    for query in queries[:50]:
        assert _same(loaded.get_scores(query), ref.get_scores(query))
    # a query state saved against the original resumes against the loaded copy
    acc = index.accumulator()
    acc.extend(queries[0][:2])
    resumed = ScoreAccumulator.from_state(loaded, json.loads(json.dumps(acc.to_state())))
    resumed.extend(queries[0][2:])
    assert _same(resumed.scores(), ref.get_scores(queries[0]))


def test_negative_idf_takes_epsilon_times_average_idf() -> None:
    corpus = [["a", "b"], ["a", "c"], ["a", "b", "d"], ["a"], ["e", "b"]]
    index, ref = BM25Index(corpus), BM25Okapi(corpus)
    assert index.idf_of("a") == ref.idf["a"] == 0.25 * ref.average_idf  # 'a' in 4 of 5 docs
    for query in (["a"], ["a", "b", "a"], ["d", "a", "e", "q"]):
        assert _same(index.get_scores(query), ref.get_scores(query))


def test_empty_corpus_is_refused() -> None:
    with pytest.raises(ValueError):
        BM25Index([])
    with pytest.raises(ValueError):
        BM25Index([[], []])


WORDS = ["alpha", "beta", "gamma", "delta", "eps", "zeta"]


@settings(max_examples=300, deadline=None)
@given(
    corpus=st.lists(st.lists(st.sampled_from(WORDS), max_size=8), min_size=1, max_size=12).filter(
        lambda c: any(c)
    ),
    queries=st.lists(
        st.lists(st.sampled_from([*WORDS, "unseen"]), min_size=1, max_size=7),
        min_size=1,
        max_size=4,
    ),
    cut=st.integers(0, 7),
    k=st.integers(1, 14),
    before=st.sampled_from([*MODES, 3]),
    after=st.sampled_from([*MODES, 3]),
)
def test_property_streaming_equals_rank_bm25(
    corpus: list[list[str]],
    queries: list[list[str]],
    cut: int,
    k: int,
    before: int | None,
    after: int | None,
) -> None:
    index, ref = BM25Index(corpus), BM25Okapi(corpus)
    assert index.idf.tolist() == [ref.idf[w] for w in index.vocab]
    for query in queries:
        acc = index.accumulator(before)
        acc.extend(query[:cut])
        acc = ScoreAccumulator.from_state(index, json.loads(json.dumps(acc.to_state())), after)
        acc.extend(query[cut:])
        expected = ref.get_scores(query)
        assert _same(acc.scores(), expected)
        assert acc.top_k(k) == _stable_top(expected, k)
