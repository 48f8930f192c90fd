"""The passage store (int8 token embeddings, built ahead, memory-mapped) against the exact
online encoding, on real WordNet glosses and the packaged MiniLM."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from alto.agents.factool import passages as passages_mod
from alto.agents.factool.corpus import WORDNET_DIR, Document, load_wordnet
from alto.agents.factool.encoder import DIM, Encoder, score
from alto.agents.factool.passages import PassageStore, dequantise, quantise
from alto.agents.factool.resources import Resources
from alto.config import AltoConfig

QUERIES = [
    "Which Indian physicist worked with Einstein?",
    "a large body of salt water",
    "the capital city of France",
    "an instrument for measuring temperature",
    "a person who writes novels",
    "the planet nearest the sun",
    "a disease caused by a virus",
    "music played by an orchestra",
    "to move quickly on foot",
    "a tree that bears acorns",
    "sweet",
    "the act of buying goods",
]


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return Encoder()


@pytest.fixture(scope="module")
def docs() -> list[Document]:
    return load_wordnet(WORDNET_DIR, parts=("noun",))[30_000:30_080]


def _texts(docs: list[Document]):  # type: ignore[no-untyped-def]
    return lambda r: [docs[i].contents for i in r]


def test_quantisation_error_is_at_most_half_a_step() -> None:
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(50, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    q, scales = quantise(vectors)
    assert q.dtype == np.int8 and scales.dtype == np.float32 and q.shape == vectors.shape
    error = np.abs(dequantise(q, scales) - vectors)
    assert np.all(error <= scales[:, None] / 2 + 1e-7)
    assert np.abs(q).max() == 127  # each row's largest component uses the full range
    empty_q, empty_s = quantise(np.zeros((0, DIM), np.float32))
    assert empty_q.shape == (0, DIM) and empty_s.shape == (0,)


def test_stored_maxsim_ranks_as_the_exact_encoding_does(
    tmp_path: Path, encoder: Encoder, docs: list[Document]
) -> None:
    store = PassageStore(tmp_path / "store", len(docs), shard_docs=32)
    assert store.build(_texts(docs), encoder) == 3  # 32 + 32 + 16 passages
    exact = encoder.token_embeddings([d.contents for d in docs])
    stored = store.get(range(len(docs)))
    assert sorted(stored) == list(range(len(docs)))
    for i, emb in stored.items():
        assert emb.shape == exact[i].shape
    worst = 0.0
    for query in encoder.token_embeddings(QUERIES):
        want = np.array([score(query, e) for e in exact])
        got = np.array([score(query, stored[i]) for i in range(len(docs))])
        worst = max(worst, float(np.abs(want - got).max()))
        # The top 3 (what rerank keeps) in the same order; every score within 2e-3.
        assert list(np.argsort(-want, kind="stable")[:3]) == list(
            np.argsort(-got, kind="stable")[:3]
        )
    assert worst < 2e-3, worst


def test_a_partial_store_serves_its_shards_and_a_build_resumes(
    tmp_path: Path, encoder: Encoder, docs: list[Document], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = PassageStore(tmp_path / "store", len(docs), shard_docs=32)
    reader = PassageStore(tmp_path / "store", len(docs), shard_docs=32)  # another process
    assert store.build(_texts(docs), encoder, shards=[1]) == 1
    assert sorted(reader.get(range(len(docs)))) == list(range(32, 64))
    assert store.missing() == [0, 2]
    coverage = store.coverage()
    assert (coverage.built, coverage.shards, coverage.passages_built) == (1, 3, 32)
    assert not coverage.complete and coverage.bytes_on_disk > 32 * 5 * (DIM + 4)
    manifest = json.loads((tmp_path / "store" / "store.json").read_text())
    assert manifest["passages"] == len(docs) and manifest["dim"] == DIM

    assert sorted(store.get(range(len(docs)))) == list(range(32, 64))  # 0 and 2 missed now
    # A half-written shard (a build killed before its rename) is not a shard.
    (tmp_path / "store" / ".shard-00000.123.456").mkdir()
    assert store.missing() == [0, 2]

    assert store.build(_texts(docs), encoder) == 2  # resumes: only the missing two
    assert store.build(_texts(docs), encoder) == 0
    # The builder reads its new shards at once; another process that missed them looks
    # again after RESCAN_S.
    assert sorted(store.get(range(len(docs)))) == list(range(len(docs)))
    monkeypatch.setattr(passages_mod, "RESCAN_S", 0.0)
    assert sorted(reader.get(range(len(docs)))) == list(range(len(docs)))
    assert store.coverage().complete


def test_resources_read_the_store_and_encode_only_what_it_lacks(
    tmp_path: Path, encoder: Encoder, docs: list[Document]
) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "".join(json.dumps({"id": d.doc_id, "title": d.title, "text": d.text}) + "\n" for d in docs)
    )
    settings = {"corpus": str(corpus), "passage_cache": 0}
    config = AltoConfig(data_dir=tmp_path / "data", pipeline_settings={"factool": settings})
    res = Resources(config)
    res.__dict__["encoder"] = encoder  # the module's encoder (a cached property)
    assert res.store.n_shards == 1 and res.store.folder.name.startswith("passages-jsonl-")
    before = res.passage_embeddings([3, 5])  # nothing stored yet: encoded online, exact
    (three,) = encoder.token_embeddings([res.docs[3].contents])
    assert np.allclose(before[3], three, atol=1e-5)

    assert res.build_store() == 1  # read at once by the process that built it
    stored = res.store.get([3, 5])
    after = res.passage_embeddings([3, 5])
    assert all(np.array_equal(after[i], stored[i]) for i in (3, 5))
    assert not np.array_equal(after[3], three)  # quantised: close, not equal
    assert np.abs(after[3] - three).max() < 0.01

    off = AltoConfig(
        data_dir=tmp_path / "data",
        pipeline_settings={"factool": {**settings, "passage_store": False}},
    )
    online = Resources(off)
    online.__dict__["encoder"] = encoder
    assert np.allclose(online.passage_embeddings([3])[3], three, atol=1e-5)
