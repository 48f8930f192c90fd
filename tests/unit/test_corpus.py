"""The corpus loaders and question generation on the real WordNet files and JSONL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alto.agents.factool.corpus import (
    WORDNET_DIR,
    load_corpus,
    load_jsonl,
    load_wordnet,
    parse_wordnet_line,
    questions,
)
from alto.errors import ConfigError

BOSE = (
    "10858577 18 n 03 Bose 0 Satyendra_N._Bose 0 Satyendra_Nath_Bose 0 001 @i 10364643 n 0000 "
    "| Indian physicist who with Albert Einstein proposed statistical laws  \n"
)


def test_a_synset_line_becomes_a_document() -> None:
    doc = parse_wordnet_line(BOSE, "noun")
    assert doc is not None
    assert doc.doc_id == "noun:10858577"
    assert doc.title == "Bose, Satyendra N. Bose, Satyendra Nath Bose"
    assert doc.text == "Indian physicist who with Albert Einstein proposed statistical laws"
    assert doc.instance
    assert parse_wordnet_line("  1 This software and database ...", "noun") is None


def test_wordnet_loads_every_synset() -> None:
    docs = load_wordnet(WORDNET_DIR)
    # WordNet 3.0: 82,115 noun, 13,767 verb, 18,156 adjective and 3,621 adverb synsets.
    assert len(docs) == 82_115 + 13_767 + 18_156 + 3_621
    assert len({d.doc_id for d in docs}) == len(docs)
    assert all(d.text and d.title for d in docs)
    bose = next(d for d in docs if d.doc_id == "noun:10858577")
    assert "Albert Einstein" in bose.text and bose.instance
    assert 7_000 < sum(d.instance for d in docs) < 9_000  # people, places, works, ...


def test_questions_come_from_instance_entries_deterministically() -> None:
    docs = load_wordnet(WORDNET_DIR, parts=("noun",))
    first, again = questions(docs, 5, seed=3), questions(docs, 5, seed=3)
    assert first == again and len(set(first)) == 5
    titles = {d.title.split(", ")[-1] for d in docs if d.instance}
    assert all(any(t in q for t in titles) for q in first)
    assert questions(docs, 5, seed=4) != first


def test_jsonl_corpus_and_clear_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    rows = [{"id": "a", "title": "Moon", "text": "The Moon orbits the Earth."}, {"text": "x"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    docs = load_corpus(path)
    assert [(d.doc_id, d.title) for d in docs] == [("a", "Moon"), ("2", "")]
    path.write_text('{"title": "no text"}\n')
    with pytest.raises(ConfigError, match="c.jsonl:1"):
        load_jsonl(path)
    with pytest.raises(ConfigError, match="wordnet-base"):
        load_wordnet(tmp_path)
