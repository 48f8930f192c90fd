"""The example pipeline: two levels of random fan-out, one streamed edge, aggregation at both.

request text -> `sentences` (fan-out, streamed: emits each sentence as it is found, as an
LM emits a claim) -> `words` (fan-out) -> `normalize` (map) -> `sentence_stats` (aggregate
per sentence: word count, letters, longest word) -> `request_stats` (aggregate per
request: sentence and word counts, words per sentence, the three sentences with most
letters). `expected_output` computes the same result directly, for checking.
"""

from __future__ import annotations

import asyncio
import importlib
import random
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

from alto.streams import (
    Pipeline,
    Topology,
    collect,
    combine,
    count,
    filter_by,
    sum_of,
    top_k,
)

NAME = "example"

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_STRIP = re.compile(r"[^\w]+", re.UNICODE)

# Pause between sentences, as a stand-in for generation time; makes streaming observable.
SENTENCE_DELAY_S = 0.002


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def split_words(sentence: str) -> list[str]:
    return sentence.split()


def normalize_word(word: str) -> str:
    return _STRIP.sub("", word).lower()


async def sentences(text: str) -> AsyncIterator[str]:
    for sentence in split_sentences(text):
        await asyncio.sleep(SENTENCE_DELAY_S)
        yield sentence


def words(sentence: str) -> Iterator[str]:
    yield from split_words(sentence)


def _sentence_result(parts: dict[str, Any]) -> dict[str, Any]:
    longest = parts["longest"]
    return {
        "words": parts["words"],
        "letters": parts["letters"],
        "longest": longest[0] if longest else None,
    }


def _request_result(parts: dict[str, Any]) -> dict[str, Any]:
    per_sentence = parts["per_sentence"]
    return {
        "sentences": parts["sentences"],
        "words": parts["words"],
        "words_per_sentence": [s["words"] for s in per_sentence],
        "top_sentences": parts["top"],
    }


def build() -> Topology:
    nonempty = bool
    pipeline = Pipeline(NAME, "sentence and word statistics (the runtime's example)")
    found = pipeline.request.fan_out(sentences, streams=True, concurrency=64)
    normalized = found.fan_out(words).map(normalize_word, name="normalize")
    per_sentence = normalized.aggregate(
        filter_by(
            nonempty,
            combine(
                _sentence_result, words=count(), letters=sum_of(len), longest=top_k(1, key=len)
            ),
        ),
        name="sentence_stats",
        per=found,
    )
    per_sentence.aggregate(
        combine(
            _request_result,
            sentences=count(),
            words=sum_of(lambda s: s["words"]),
            per_sentence=collect(),
            top=top_k(3, key=lambda s: s["letters"]),
        ),
        name="request_stats",
    )
    return pipeline.build()


def expected_output(text: str) -> dict[str, Any]:
    """The example pipeline's result for `text`, computed directly (no runtime)."""
    stats: list[dict[str, Any]] = []
    for sentence in split_sentences(text):
        words = [w for w in (normalize_word(x) for x in split_words(sentence)) if w]
        longest = None
        for w in words:  # first of the longest, as top-k breaks ties by ancestry order
            if longest is None or len(w) > len(longest):
                longest = w
        stats.append({"words": len(words), "letters": sum(map(len, words)), "longest": longest})
    ranked = sorted(range(len(stats)), key=lambda i: (-stats[i]["letters"], i))[:3]
    return {
        "sentences": len(stats),
        "words": sum(s["words"] for s in stats),
        "words_per_sentence": [s["words"] for s in stats],
        "top_sentences": [stats[i] for i in ranked],
    }


_CORPUS_MODULES = (
    "json",
    "argparse",
    "asyncio",
    "collections",
    "logging",
    "subprocess",
    "unittest",
    "email",
    "http.client",
    "csv",
)


def _real_sentences() -> list[str]:
    """Sentences of the standard library's own documentation: real English, present offline."""
    found: list[str] = []
    for name in _CORPUS_MODULES:
        module = importlib.import_module(name)
        docs = [module.__doc__ or ""]
        docs += [
            obj.__doc__
            for obj in vars(module).values()
            if callable(obj) and isinstance(obj.__doc__, str)
        ]
        for doc in docs:
            text = " ".join(doc.split())
            found += [s for s in split_sentences(text) if 3 <= len(s.split()) <= 40]
    return sorted(set(found))


def example_texts(n: int, seed: int = 0, max_sentences: int = 6) -> list[str]:
    """`n` texts of 0..max_sentences real sentences each (random fan-out at both levels)."""
    sentences = _real_sentences()
    rng = random.Random(seed)
    return [" ".join(rng.sample(sentences, rng.randint(0, max_sentences))) for _ in range(n)]
