"""MiniLM token embeddings and MaxSim reranking on real WordNet glosses."""

from __future__ import annotations

import numpy as np
import pytest

from alto.agents.factool.corpus import WORDNET_DIR, load_wordnet
from alto.agents.factool.encoder import DIM, Encoder, maxsim, rerank


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return Encoder()


def test_token_embeddings_are_normalised_wordpieces(encoder: Encoder) -> None:
    short, longer = encoder.token_embeddings(["the Moon", "Indian physicist who studied bosons"])
    assert short.shape == (2, DIM)  # "the", "moon": no [CLS], [SEP] or padding
    assert longer.shape[1] == DIM and longer.shape[0] > short.shape[0]
    assert np.allclose(np.linalg.norm(longer, axis=1), 1.0, atol=1e-5)
    # Same text, same vectors, whatever else is in the batch (padding is masked out).
    (alone,) = encoder.token_embeddings(["the Moon"])
    assert np.allclose(alone, short, atol=1e-5)


def test_maxsim_ranks_the_relevant_gloss_first(encoder: Encoder) -> None:
    docs = {d.doc_id: d for d in load_wordnet(WORDNET_DIR, parts=("noun",))}
    bose = "noun:10858577"  # Satyendra Nath Bose
    others = [i for i in list(docs)[20_000:20_030] if i != bose]
    ids = [bose, *others]
    passages = dict(
        zip(ids, encoder.token_embeddings([docs[i].contents for i in ids]), strict=True)
    )
    (query,) = encoder.token_embeddings(["Which Indian physicist worked with Einstein?"])
    ranked = rerank(query, passages, k=3)
    assert ranked[0][0] == bose
    assert [s for _, s in ranked] == sorted((s for _, s in ranked), reverse=True)
    assert maxsim(query, passages[bose]) == pytest.approx(ranked[0][1])
    assert maxsim(query, np.zeros((0, DIM), np.float32)) == 0.0
