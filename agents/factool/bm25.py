"""Streaming BM25 (stage 4 of the FacTool pipeline): Okapi scores summed token by token.

The search-query LM streams a query's tokens one at a time; all tokens of one query reach
one stateful stage instance, which holds a `ScoreAccumulator` for the query and calls
`add(token)` as each arrives. Each call touches only the documents that contain the token
(its posting list in `BM25Index`'s inverted index), so the scores are ready the moment the
last token arrives, instead of scoring the whole corpus once the query is complete.

Scores are *bitwise identical* to `rank_bm25.BM25Okapi(corpus).get_scores(query)` (rank-bm25
0.2.2; its defaults k1=1.5, b=0.75, epsilon=0.25), not merely close:

* idf is computed as rank_bm25 does it: `math.log(N - df + 0.5) - math.log(df + 0.5)` in
  Python floats, summed in the order words first occur in the corpus to get the average
  idf, and every negative idf replaced by `epsilon * average_idf`;
* one token adds, for each document d containing it with term frequency tf,
  `idf * (tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(d) / avgdl)))`, the same float64
  operations in the same order as rank_bm25's vectorised expression (`tf` an int64, the
  lengths an int64 array). These per-posting contributions are computed once, when the
  index is built;
* rank_bm25 adds that expression for every document, and for a document without the token
  it is `idf * 0.0`, a zero, which leaves a float sum unchanged. So adding the contribution
  to the posting's documents only, token after token in query order, gives the same sums.
  A repeated query token counts each time (as in rank_bm25); a token the corpus lacks adds
  nothing.

The accumulator's state is sparse (sorted doc ids and their scores) until a query reaches
an eighth of the corpus, then a dense array; either way it converts to and from plain JSON
data (`to_state` / `from_state`: doc ids and scores), so it can live in a changelog-backed
table and a replacement worker resumes the query where the old one stopped.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

FORMAT_VERSION = 1
_TOKEN = re.compile(r"[^\W_]+")  # runs of characters for which str.isalnum() is true


def tokenize(text: str) -> list[str]:
    """The tokens of `text`, for the corpus and for queries alike: `text.lower()`, then every
    maximal run of alphanumeric characters (`str.isalnum()`, Unicode-aware). Everything
    else (spaces, punctuation, underscores, symbols) separates tokens and is dropped.

    >>> tokenize("Bose-Einstein statistics (1924), e.g. photons_2")
    ['bose', 'einstein', 'statistics', '1924', 'e', 'g', 'photons', '2']
    """
    return _TOKEN.findall(text.lower())


class BM25Index:
    """Okapi BM25 over a fixed corpus of tokenized documents (doc ids are positions 0..N-1).

    The inverted index is stored CSR-style: the postings of term t are
    `doc_ids[indptr[t]:indptr[t + 1]]` (ascending) with their term frequencies `tf[...]` and
    their precomputed score contributions `weights[...]`; terms are numbered in the order they
    first occur in the corpus.
    """

    def __init__(
        self,
        corpus: Iterable[Sequence[str]],
        k1: float = 1.5,
        b: float = 0.75,
        epsilon: float = 0.25,
    ) -> None:
        vocab: dict[str, int] = {}
        df: list[int] = []
        terms: list[int] = []
        docs: list[int] = []
        tfs: list[int] = []
        doc_len: list[int] = []
        for d, document in enumerate(corpus):
            doc_len.append(len(document))
            freqs: dict[str, int] = {}
            for word in document:
                freqs[word] = freqs.get(word, 0) + 1
            for word, f in freqs.items():  # first-occurrence order, as rank_bm25's `nd`
                t = vocab.get(word)
                if t is None:
                    t = vocab[word] = len(df)
                    df.append(0)
                df[t] += 1
                terms.append(t)
                docs.append(d)
                tfs.append(f)
        if not doc_len:
            raise ValueError("BM25Index needs at least one document")
        if not df:
            raise ValueError("BM25Index needs at least one token in the corpus")

        n_docs = len(doc_len)
        raw = [math.log(n_docs - f + 0.5) - math.log(f + 0.5) for f in df]
        idf_sum = 0.0
        for value in raw:  # sequential sum in rank_bm25's order (not fsum, not numpy)
            idf_sum += value
        average_idf = idf_sum / len(raw)
        eps = epsilon * average_idf
        idf = np.array([eps if value < 0 else value for value in raw], dtype=np.float64)

        term_arr = np.array(terms, dtype=np.int64)
        order = np.argsort(term_arr, kind="stable")  # within a term: doc ids ascending
        indptr = np.zeros(len(df) + 1, dtype=np.int64)
        np.cumsum(np.bincount(term_arr, minlength=len(df)), out=indptr[1:])
        self._setup(
            vocab=list(vocab),
            indptr=indptr,
            doc_ids=np.array(docs, dtype=np.int64)[order],
            tf=np.array(tfs, dtype=np.int64)[order],
            doc_len=np.array(doc_len, dtype=np.int64),
            idf=idf,
            k1=k1,
            b=b,
            epsilon=epsilon,
            avgdl=sum(doc_len) / n_docs,  # Python int / int, as rank_bm25
            average_idf=average_idf,
        )

    @classmethod
    def from_texts(cls, texts: Iterable[str], **params: float) -> BM25Index:
        return cls((tokenize(text) for text in texts), **params)

    def _setup(
        self,
        *,
        vocab: list[str],
        indptr: IntArray,
        doc_ids: IntArray,
        tf: IntArray,
        doc_len: IntArray,
        idf: FloatArray,
        k1: float,
        b: float,
        epsilon: float,
        avgdl: float,
        average_idf: float,
    ) -> None:
        if not (
            len(indptr) == len(vocab) + 1 == len(idf) + 1
            and len(doc_ids) == len(tf) == indptr[-1]
            and len(doc_len) > 0
        ):
            raise ValueError("inconsistent BM25 index arrays")
        self.vocab = vocab
        self.term_ids = {word: t for t, word in enumerate(vocab)}
        self.indptr, self.doc_ids, self.tf = indptr, doc_ids, tf
        self.doc_len, self.idf = doc_len, idf
        self.k1, self.b, self.epsilon = float(k1), float(b), float(epsilon)
        self.avgdl, self.average_idf = float(avgdl), float(average_idf)
        self.n_docs = len(doc_len)
        # rank_bm25: k1 * (1 - b + b * doc_len / avgdl), doc_len an int64 array
        norm = self.k1 * (1 - self.b + self.b * doc_len / self.avgdl)
        term_of_posting = np.repeat(np.arange(len(vocab)), np.diff(indptr))
        # rank_bm25: idf * (q_freq * (k1 + 1) / (q_freq + norm)), q_freq an int64 array
        self.weights: FloatArray = idf[term_of_posting] * (
            tf * (self.k1 + 1) / (tf + norm[doc_ids])
        )
        self._digest: str | None = None

    def posting(self, token: str) -> tuple[IntArray, IntArray]:
        """The documents containing `token` (ascending) and its frequency in each."""
        t = self.term_ids.get(token)
        if t is None:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        lo, hi = self.indptr[t], self.indptr[t + 1]
        return self.doc_ids[lo:hi], self.tf[lo:hi]

    def contributions(self, token: str) -> tuple[IntArray, FloatArray]:
        """The documents containing `token` and what the token adds to each one's score
        (read-only views into the index)."""
        t = self.term_ids.get(token)
        if t is None:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
        lo, hi = self.indptr[t], self.indptr[t + 1]
        return self.doc_ids[lo:hi], self.weights[lo:hi]

    def idf_of(self, token: str) -> float:
        t = self.term_ids.get(token)
        return 0.0 if t is None else float(self.idf[t])

    def accumulator(self, dense_above: int | None = None) -> ScoreAccumulator:
        return ScoreAccumulator(self, dense_above)

    def get_scores(self, query: Iterable[str]) -> FloatArray:
        """All documents' scores for a whole query (equal to BM25Okapi.get_scores)."""
        acc = ScoreAccumulator(self)
        for token in query:
            acc.add(token)
        return acc.scores()

    @property
    def digest(self) -> str:
        """A short fingerprint of the index, so a saved query state is never resumed against a
        different corpus."""
        if self._digest is None:
            h = hashlib.sha256()
            h.update(repr((self.k1, self.b, self.epsilon, self.avgdl, self.n_docs)).encode())
            h.update("\0".join(self.vocab).encode("utf-8", "surrogatepass"))
            for arr in (self.indptr, self.doc_ids, self.tf, self.idf):
                h.update(np.ascontiguousarray(arr).tobytes())
            self._digest = h.hexdigest()[:16]
        return self._digest

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the index to `path` (an uncompressed .npz, no pickles), atomically."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("wb") as f:
            np.savez(
                f,
                format_version=np.array(FORMAT_VERSION),
                vocab=np.array(self.vocab, dtype=str),
                indptr=self.indptr,
                doc_ids=self.doc_ids,
                tf=self.tf,
                doc_len=self.doc_len,
                idf=self.idf,
                params=np.array(
                    [self.k1, self.b, self.epsilon, self.avgdl, self.average_idf],
                    dtype=np.float64,
                ),
            )
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> BM25Index:
        with np.load(path, allow_pickle=False) as data:
            if int(data["format_version"]) != FORMAT_VERSION:
                raise ValueError(f"{path}: BM25 index format {int(data['format_version'])}")
            k1, b, epsilon, avgdl, average_idf = (float(x) for x in data["params"])
            index = cls.__new__(cls)
            index._setup(
                vocab=[str(w) for w in data["vocab"]],
                indptr=data["indptr"].astype(np.int64),
                doc_ids=data["doc_ids"].astype(np.int64),
                tf=data["tf"].astype(np.int64),
                doc_len=data["doc_len"].astype(np.int64),
                idf=data["idf"].astype(np.float64),
                k1=k1,
                b=b,
                epsilon=epsilon,
                avgdl=avgdl,
                average_idf=average_idf,
            )
        return index

    @classmethod
    def load_or_build(
        cls, path: str | os.PathLike[str], corpus: Callable[[], Iterable[Sequence[str]]]
    ) -> BM25Index:
        """The index cached at `path`, or build it from `corpus()` and cache it there. The
        caller names the path after the corpus: a stale cache is not detected."""
        if Path(path).is_file():
            return cls.load(path)
        index = cls(corpus())
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        index.save(path)
        return index


class ScoreAccumulator:
    """The BM25 scores of one query whose tokens arrive one by one.

    State: the documents some token so far occurs in and their scores; every other document
    scores 0.0. While few documents are reached it is sparse (sorted unique doc ids and their
    scores, and `add` merges a posting list in with numpy: a binary search for the documents
    already there, an insert for new ones, O(state + posting)). Once the state would cover
    more than `dense_above` documents (default: an eighth of the corpus, past which merging
    costs more than it saves) it switches to a dense float64 array plus a mask of the
    documents reached (9 bytes per document), and `add` is a scatter-add over the posting
    list only (O(posting)). Both give the same sums in the same order, so the same bits; the JSON state
    is sparse either way.
    """

    def __init__(self, index: BM25Index, dense_above: int | None = None) -> None:
        self.index = index
        self.dense_above = index.n_docs // 8 if dense_above is None else dense_above
        self.tokens: list[str] = []
        self._ids: IntArray = np.zeros(0, dtype=np.int64)
        self._vals: FloatArray = np.zeros(0, dtype=np.float64)
        self._dense: FloatArray | None = None  # when dense: every document's score
        self._seen: npt.NDArray[np.bool_] | None = None  # when dense: documents reached

    @property
    def is_dense(self) -> bool:
        return self._dense is not None

    def add(self, token: str) -> int:
        """Add one query token; returns how many documents it touched (0 if unknown)."""
        self.tokens.append(token)
        ids, w = self.index.contributions(token)
        if ids.size == 0:
            return 0
        if self._dense is None and self._ids.size + ids.size > self.dense_above:
            self._to_dense()
        if self._dense is not None and self._seen is not None:
            self._dense[ids] += w  # ids are unique within a posting list
            self._seen[ids] = True
            return int(ids.size)
        n = self._ids.size
        if n == 0:
            self._ids = ids.copy()
            self._vals = 0.0 + w  # as rank_bm25's np.zeros(N) + contribution
            return int(ids.size)
        pos = np.searchsorted(self._ids, ids)
        hit = pos < n
        hit[hit] = self._ids[pos[hit]] == ids[hit]
        self._vals[pos[hit]] += w[hit]
        miss = ~hit
        if miss.any():
            at = pos[miss]
            self._ids = np.insert(self._ids, at, ids[miss])
            self._vals = np.insert(self._vals, at, 0.0 + w[miss])
        return int(ids.size)

    def _to_dense(self) -> None:
        self._dense = np.zeros(self.index.n_docs, dtype=np.float64)
        self._seen = np.zeros(self.index.n_docs, dtype=np.bool_)
        self._dense[self._ids] = self._vals
        self._seen[self._ids] = True
        self._ids = np.zeros(0, dtype=np.int64)
        self._vals = np.zeros(0, dtype=np.float64)

    def extend(self, tokens: Iterable[str]) -> None:
        for token in tokens:
            self.add(token)

    def __len__(self) -> int:
        """How many documents have a (possibly zero) score entry."""
        if self._seen is not None:
            return int(np.count_nonzero(self._seen))
        return int(self._ids.size)

    def sparse(self) -> tuple[IntArray, FloatArray]:
        """The state as sorted doc ids and their scores (copies)."""
        if self._dense is not None and self._seen is not None:
            ids = np.flatnonzero(self._seen).astype(np.int64)
            return ids, self._dense[ids]
        return self._ids.copy(), self._vals.copy()

    def scores(self) -> FloatArray:
        """Every document's score, as `BM25Okapi.get_scores(self.tokens)` gives it."""
        if self._dense is not None:
            return self._dense.copy()
        out = np.zeros(self.index.n_docs, dtype=np.float64)
        out[self._ids] = self._vals
        return out

    def top_k(self, k: int) -> list[tuple[int, float]]:
        """The min(k, N) best documents as (doc id, score): score descending, ties by doc id
        ascending, i.e. `np.argsort(-scores(), kind="stable")[:k]` over all documents
        (documents no token reached score 0.0 and take part like any other)."""
        k = min(k, self.index.n_docs)
        if k <= 0:
            return []
        if self._dense is not None:
            all_vals = self._dense
            positive = np.flatnonzero(all_vals > 0.0)
            pos_ids = positive
        else:
            all_vals = self._vals
            positive = np.flatnonzero(all_vals > 0.0)
            pos_ids = self._ids[positive]
        if positive.size < k:  # zero-score (or negative) documents make the cut
            dense = self.scores()
            best = np.argsort(-dense, kind="stable")[:k]
            return [(int(d), float(dense[d])) for d in best]
        vals = all_vals[positive]
        if positive.size > k:  # keep everything >= the k-th largest score (ties included)
            kth = np.partition(vals, positive.size - k)[positive.size - k]
            keep = vals >= kth
            pos_ids, vals = pos_ids[keep], vals[keep]
        order = np.lexsort((pos_ids, -vals))[:k]
        return [(int(pos_ids[i]), float(vals[i])) for i in order]

    def to_state(self, with_scores: bool = True) -> dict[str, Any]:
        """Plain JSON data (floats survive json exactly: Python writes their shortest repr).

        With `with_scores=False` only the tokens are kept: `from_state` then replays them,
        which gives the same bits again (O(sum of their posting lengths)). Use it where the
        sparse scores would be large (queries of common words reach much of the corpus)."""
        state: dict[str, Any] = {"index": self.index.digest, "tokens": list(self.tokens)}
        if with_scores:
            ids, vals = self.sparse()
            state["ids"], state["scores"] = ids.tolist(), vals.tolist()
        return state

    @classmethod
    def from_state(
        cls, index: BM25Index, state: dict[str, Any], dense_above: int | None = None
    ) -> ScoreAccumulator:
        """Resume a query from `to_state`'s data (e.g. after a changelog restore)."""
        if state.get("index") != index.digest:
            raise ValueError("query state belongs to a different BM25 index")
        if "ids" not in state and "scores" not in state:  # tokens only: replay them
            acc = cls(index, dense_above)
            acc.extend(str(t) for t in state["tokens"])
            return acc
        ids = np.asarray(state["ids"], dtype=np.int64).reshape(-1)
        vals = np.asarray(state["scores"], dtype=np.float64).reshape(-1)
        if ids.size != vals.size or (
            ids.size and (ids[0] < 0 or ids[-1] >= index.n_docs or bool(np.any(np.diff(ids) <= 0)))
        ):
            raise ValueError("malformed query state")
        acc = cls(index, dense_above)
        acc.tokens = [str(t) for t in state["tokens"]]
        acc._ids, acc._vals = ids, vals
        if ids.size > acc.dense_above:
            acc._to_dense()
        return acc
