"""The retrieval corpus and the questions asked of it: real text, installable offline.

Default: WordNet 3.0 (Debian package `wordnet-base`, files `/usr/share/wordnet/data.*`):
one document per synset, its lemmas as the title and its gloss (definition and usage
examples) as the text; about 117k documents, many of them encyclopedic (people, places,
elements, works). Any other corpus: a JSONL file with `id`, `title` and `text` per line
(`ALTO_PIPELINE_SETTINGS__FACTOOL__CORPUS=path`), e.g. a Wikipedia dump.

Questions come from the same data, never from a hand-written list: WordNet's *instance*
synsets (pointer `@i`: a particular person, place or thing, such as "Satyendra Nath Bose,
Indian physicist ...") make factual questions whose answers the corpus can check.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from alto.errors import ConfigError

WORDNET_DIR = Path("/usr/share/wordnet")
PARTS = ("noun", "verb", "adj", "adv")


@dataclass(frozen=True, slots=True)
class Document:
    doc_id: str
    title: str
    text: str
    instance: bool = False  # a particular person, place or thing (WordNet `@i`)

    @property
    def contents(self) -> str:
        """What retrieval indexes: the title, then the text."""
        return f"{self.title}: {self.text}"


def parse_wordnet_line(line: str, part: str) -> Document | None:
    """One synset of a WordNet `data.*` file; None for the license header."""
    if not line or line.startswith(" "):
        return None
    head, _, gloss = line.partition(" | ")
    fields = head.split()
    offset, n_words = fields[0], int(fields[3], 16)  # the word count is hexadecimal
    lemmas = [fields[4 + 2 * k].replace("_", " ") for k in range(n_words)]
    pointers = fields[4 + 2 * n_words + 1 :]
    return Document(
        doc_id=f"{part}:{offset}",
        title=", ".join(dict.fromkeys(lemma.split("(")[0] for lemma in lemmas)),
        text=gloss.strip(),
        instance="@i" in pointers,
    )


def load_wordnet(folder: Path = WORDNET_DIR, parts: tuple[str, ...] = PARTS) -> list[Document]:
    missing = [folder / f"data.{p}" for p in parts if not (folder / f"data.{p}").is_file()]
    if missing:
        raise ConfigError(
            f"WordNet is not installed ({missing[0]} is missing): apt-get install wordnet-base, "
            "or set ALTO_PIPELINE_SETTINGS__FACTOOL__CORPUS to a JSONL corpus"
        )
    docs: list[Document] = []
    for part in parts:
        with (folder / f"data.{part}").open(encoding="utf-8") as f:
            docs.extend(d for line in f if (d := parse_wordnet_line(line, part)) is not None)
    return docs


def load_jsonl(path: Path) -> list[Document]:
    """A corpus of JSON lines with `text` (required), `id` and `title` (optional)."""
    docs: list[Document] = []
    try:
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    docs.append(
                        Document(str(row.get("id", n)), str(row.get("title", "")), row["text"])
                    )
                except (ValueError, KeyError, TypeError) as exc:
                    raise ConfigError(f"{path}:{n}: not a corpus line ({exc})") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read the corpus {path}: {exc}") from exc
    return docs


def load_corpus(path: Path | None = None) -> list[Document]:
    """The JSONL corpus at `path`, or WordNet when none is given."""
    return load_jsonl(path) if path is not None else load_wordnet()


def questions(docs: list[Document], n: int, seed: int = 0) -> list[str]:
    """`n` factual questions about particular people, places and things of the corpus
    (deterministic per seed); for a corpus without instance entries, about any titled one."""
    pool = [d for d in docs if d.instance] or [d for d in docs if d.title]
    rng = random.Random(seed)
    forms = ("Who or what is {}?", "Tell me about {}.", "What is {} known for?")
    return [
        rng.choice(forms).format(d.title.split(", ")[-1])
        for d in rng.sample(pool, min(n, len(pool)))
    ]


def iter_texts(docs: list[Document]) -> Iterator[str]:
    return (d.contents for d in docs)
