"""What the FacTool stages read: the corpus, its BM25 index (built once, cached on disk), the
passage store (token embeddings encoded ahead, memory-mapped; `passages.py`) and the MiniLM
encoder, loaded once per process on first use.

A worker process serves many requests; loading these per call would cost seconds each. They
are immutable after loading, so the stage threads (`blocking=True` stages) share them. The
index cache is named after the corpus (WordNet, or a JSONL file's path, size and mtime) and
written atomically, so two workers starting together never read a half-written file.
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from alto.agents.factool.bm25 import BM25Index, tokenize
from alto.agents.factool.corpus import Document, load_corpus
from alto.agents.factool.encoder import Encoder, Matrix
from alto.agents.factool.passages import PassageStore
from alto.agents.factool.settings import factool_settings
from alto.config import AltoConfig, load_config

_lock = threading.Lock()
_loaded: Resources | None = None


def resources(config: AltoConfig | None = None) -> Resources:
    """This process's resources (the first call's config wins)."""
    global _loaded
    with _lock:
        if _loaded is None:
            _loaded = Resources(config or load_config())
        return _loaded


def _corpus_id(path: Path | None) -> str:
    if path is None:
        return "wordnet"
    st = Path(path).stat()
    key = f"{Path(path).resolve()}|{st.st_size}|{st.st_mtime_ns}"
    return "jsonl-" + hashlib.blake2b(key.encode(), digest_size=8).hexdigest()


@dataclass(frozen=True, slots=True)
class Passage:
    index: int  # position in the corpus (the BM25 document number)
    doc_id: str
    title: str
    text: str


class Resources:
    def __init__(self, config: AltoConfig) -> None:
        self.config = config
        self.settings = factool_settings(config)
        self._load_lock = threading.Lock()
        self._embeddings: OrderedDict[int, Matrix] = OrderedDict()
        self._cache_size = self.settings.passage_cache
        self._cache_lock = threading.Lock()

    @property
    def index_dir(self) -> Path:
        return self.settings.index_dir or self.config.data_dir

    @cached_property
    def docs(self) -> list[Document]:
        return load_corpus(self.settings.corpus)

    @cached_property
    def index(self) -> BM25Index:
        with self._load_lock:
            path = self.index_dir / f"bm25-{_corpus_id(self.settings.corpus)}.npz"
            if path.is_file():
                return BM25Index.load(path)
            index = BM25Index([tokenize(d.contents) for d in self.docs])
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.stem}.{os.getpid()}.npz")
            index.save(tmp)
            os.replace(tmp, path)
            return index

    @cached_property
    def store(self) -> PassageStore:
        return PassageStore.for_corpus(
            self.index_dir,
            _corpus_id(self.settings.corpus),
            len(self.docs),
            Encoder.MAX_TOKENS,
        )

    def build_store(self, shards: list[int] | None = None, progress: bool = False) -> int:
        """Encode the store's missing shards (all, or `shards`); returns the shards written."""
        store = self.store
        todo = store.missing(shards)
        bar = None
        if progress:
            from tqdm import tqdm

            passages = sum(len(store.shard_range(s)) for s in todo)
            bar = tqdm(total=passages, unit="passage", desc=f"index {store.folder.name}")
        try:
            return store.build(
                lambda docs: [self.docs[i].contents for i in docs],
                self.encoder,
                todo,
                progress=bar.update if bar is not None else None,
            )
        finally:
            if bar is not None:
                bar.close()

    @cached_property
    def encoder(self) -> Encoder:
        return Encoder(threads=self.config.compute_threads)

    def passage(self, index: int) -> Passage:
        doc = self.docs[index]
        return Passage(index, doc.doc_id, doc.title, doc.text)

    def passage_embeddings(self, indices: list[int]) -> dict[int, Matrix]:
        """Token embeddings of corpus documents: from the passage store where it holds them,
        else from a per-process LRU cache, else encoded now."""
        out: dict[int, Matrix] = self.store.get(indices) if self.settings.passage_store else {}
        with self._cache_lock:
            for i in indices:
                if i in out:
                    continue
                if i in self._embeddings:
                    self._embeddings.move_to_end(i)
                    out[i] = self._embeddings[i]
        missing = [i for i in indices if i not in out]
        if missing:
            fresh = self.encoder.token_embeddings([self.docs[i].contents for i in missing])
            with self._cache_lock:
                for i, emb in zip(missing, fresh, strict=True):
                    out[i] = self._embeddings[i] = emb
                while self._embeddings and len(self._embeddings) > self._cache_size:
                    self._embeddings.popitem(last=False)
        return out


def pack(matrix: Matrix) -> dict[str, object]:
    """A token-embedding matrix as JSON: float16, base64 (a query's is a few KB)."""
    data = np.ascontiguousarray(matrix, dtype=np.float16)
    return {"shape": list(data.shape), "f16": base64.b64encode(data.tobytes()).decode()}


def unpack(packed: dict[str, object]) -> Matrix:
    shape = tuple(int(n) for n in packed["shape"])  # type: ignore[attr-defined]
    raw = base64.b64decode(str(packed["f16"]))
    return np.frombuffer(raw, dtype=np.float16).reshape(shape).astype(np.float32)


class PassageIndex:
    """FacTool's `PipelineIndex`: the passage store of the configured corpus."""

    def status(self, config: AltoConfig) -> str:
        store = resources(config).store
        return f"{store.folder}: {store.coverage().line()}"

    def build(self, config: AltoConfig, progress: bool) -> str:
        res = resources(config)
        started = time.monotonic()
        written = res.build_store(progress=progress)
        took = time.monotonic() - started
        return f"{written} shards written in {took:,.1f} s; {self.status(config)}"
