"""The passage store: every corpus passage's token embeddings, encoded once, ahead of serving,
and memory-mapped by every worker (ColBERT's offline index; only the query is encoded online).

Form. One vector per wordpiece, 384 int8 components with one float32 scale per vector
(symmetric, per-vector: `v ~ q * scale`, `scale = max|v| / 127`), so a token costs 388 bytes
against 1,536 as float32. The rounding error of each component is at most `scale / 2`; on
unit vectors that moves a cosine by well under 1e-2, and MaxSim rankings of real queries come
out the same (`tests/unit/test_passages.py`, `alto bench rerank`).

Layout. The corpus is cut into shards of `SHARD_DOCS` consecutive passages. A shard is a
folder `shard-NNNNN/` of three `.npy` files: `offsets` (int64, docs + 1: where each passage's
rows start), `vectors` (int8, rows x 384) and `scales` (float32, rows). A shard is written
whole into a temporary folder and renamed into place, so a reader sees all of it or none, and
a build that is stopped resumes at the first missing shard. The store's folder is named after
the corpus and the encoder (`passages-<corpus>-<encoder>-int8`), so a new corpus or encoder
never reads another's vectors.

Readers take whatever shards exist: a passage whose shard is not built yet is encoded online,
as before the store existed (the same vectors, unquantised). `alto index build` fills the
store; it can also run in the background beside a serving stack (`--background`: lowest CPU
priority), and workers pick up its shards as they appear.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import numpy.typing as npt

from alto.agents.factool.encoder import DIM, PACKAGE, Encoder, Matrix

SHARD_DOCS = 2048
BATCH = 32  # passages per forward pass when building (sorted by length: little padding)
RESCAN_S = 2.0  # how often a reader looks again for a shard that was missing
FORMAT = 1

Int8s = npt.NDArray[np.int8]
Floats = npt.NDArray[np.float32]


def encoder_tag(max_tokens: int) -> str:
    """The encoder's name in the store's folder: package, version and truncation."""
    try:
        version = metadata.version(PACKAGE.replace("_", "-"))
    except metadata.PackageNotFoundError:
        version = "unknown"
    return f"minilm-l6-v2-{version}-t{max_tokens}"


def quantise(vectors: Matrix) -> tuple[Int8s, Floats]:
    """Rows as int8 with one scale each (`vectors ~ q * scale[:, None]`)."""
    peak = np.abs(vectors).max(axis=1) if len(vectors) else np.zeros(0, np.float32)
    scales = (np.maximum(peak, 1e-12) / 127.0).astype(np.float32)
    q = np.rint(vectors / scales[:, None]).clip(-127, 127).astype(np.int8)
    return q, scales


def dequantise(q: Int8s, scales: Floats) -> Matrix:
    return (q.astype(np.float32) * scales[:, None]).astype(np.float32)


@dataclass(frozen=True, slots=True)
class _Shard:
    offsets: npt.NDArray[np.int64]
    vectors: Int8s
    scales: Floats

    @classmethod
    def open(cls, folder: Path) -> _Shard:
        return cls(
            np.load(folder / "offsets.npy"),
            np.load(folder / "vectors.npy", mmap_mode="r"),
            np.load(folder / "scales.npy", mmap_mode="r"),
        )

    def passage(self, local: int) -> Matrix:
        lo, hi = int(self.offsets[local]), int(self.offsets[local + 1])
        return dequantise(np.asarray(self.vectors[lo:hi]), np.asarray(self.scales[lo:hi]))


@dataclass(frozen=True, slots=True)
class Coverage:
    shards: int
    built: int
    passages: int
    passages_built: int
    bytes_on_disk: int

    @property
    def complete(self) -> bool:
        return self.built == self.shards

    def line(self) -> str:
        return (
            f"{self.built}/{self.shards} shards, {self.passages_built:,}/{self.passages:,} "
            f"passages, {self.bytes_on_disk / 2**20:,.1f} MiB"
        )


class PassageStore:
    """Quantised token embeddings of `n_docs` passages under `folder` (see the module doc)."""

    def __init__(self, folder: Path, n_docs: int, shard_docs: int = SHARD_DOCS) -> None:
        self.folder = folder
        self.n_docs = n_docs
        self.shard_docs = shard_docs
        self.n_shards = (n_docs + shard_docs - 1) // shard_docs
        self._shards: dict[int, _Shard] = {}
        self._missing_since: dict[int, float] = {}
        self._lock = threading.Lock()

    @classmethod
    def for_corpus(
        cls, data_dir: Path, corpus_id: str, n_docs: int, max_tokens: int
    ) -> PassageStore:
        folder = data_dir / f"passages-{corpus_id}-{encoder_tag(max_tokens)}-int8"
        return cls(folder, n_docs)

    def shard_dir(self, shard: int) -> Path:
        return self.folder / f"shard-{shard:05d}"

    def shard_range(self, shard: int) -> range:
        return range(shard * self.shard_docs, min(self.n_docs, (shard + 1) * self.shard_docs))

    def _shard(self, shard: int) -> _Shard | None:
        with self._lock:
            found = self._shards.get(shard)
            if found is not None:
                return found
            missed = self._missing_since.get(shard)
            if missed is not None and time.monotonic() - missed < RESCAN_S:
                return None
            if not self.is_built(shard):
                self._missing_since[shard] = time.monotonic()
                return None
            self._missing_since.pop(shard, None)
            found = self._shards[shard] = _Shard.open(self.shard_dir(shard))
            return found

    def get(self, indices: Iterable[int]) -> dict[int, Matrix]:
        """The stored embeddings among `indices` (those whose shard is built)."""
        out: dict[int, Matrix] = {}
        for i in indices:
            number, local = divmod(i, self.shard_docs)
            shard = self._shard(number)
            if shard is not None:
                out[i] = shard.passage(local)
        return out

    def is_built(self, shard: int) -> bool:
        return (self.shard_dir(shard) / "scales.npy").is_file()

    def missing(self, shards: Iterable[int] | None = None) -> list[int]:
        """The shards among `shards` (all by default) not built yet, in order."""
        wanted = range(self.n_shards) if shards is None else set(shards)
        return sorted(s for s in wanted if not self.is_built(s))

    def coverage(self) -> Coverage:
        built = [s for s in range(self.n_shards) if self.is_built(s)]
        size = sum(
            f.stat().st_size for s in built for f in self.shard_dir(s).iterdir() if f.is_file()
        )
        return Coverage(
            shards=self.n_shards,
            built=len(built),
            passages=self.n_docs,
            passages_built=sum(len(self.shard_range(s)) for s in built),
            bytes_on_disk=size,
        )

    def build(
        self,
        texts: Callable[[range], list[str]],
        encoder: Encoder,
        shards: Iterable[int] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Encode and write every missing shard among `shards` (all by default); `progress`
        is told how many passages each written shard held. Returns the shards written."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._write_manifest(encoder.max_tokens)
        written = 0
        for shard in self.missing(shards):
            docs = self.shard_range(shard)
            self._write_shard(shard, encode_passages(encoder, texts(docs)))
            written += 1
            if progress is not None:
                progress(len(docs))
        return written

    def _write_manifest(self, max_tokens: int) -> None:
        path = self.folder / "store.json"
        if path.is_file():
            return
        manifest = {
            "format": FORMAT,
            "passages": self.n_docs,
            "shard_docs": self.shard_docs,
            "dim": DIM,
            "dtype": "int8+f32-scale",
            "encoder": encoder_tag(max_tokens),
        }
        tmp = path.with_name(f".store.{os.getpid()}.json")
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
        os.replace(tmp, path)

    def _write_shard(self, shard: int, embeddings: list[Matrix]) -> None:
        offsets = np.zeros(len(embeddings) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in embeddings], out=offsets[1:])
        rows = np.concatenate(embeddings) if embeddings else np.zeros((0, DIM), np.float32)
        q, scales = quantise(rows)
        final = self.shard_dir(shard)
        tmp = self.folder / f".{final.name}.{os.getpid()}.{threading.get_ident()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        np.save(tmp / "offsets.npy", offsets)
        np.save(tmp / "vectors.npy", q)
        np.save(tmp / "scales.npy", scales)  # last: its presence marks a whole shard
        try:
            os.rename(tmp, final)
        except OSError:  # another builder finished it first: theirs is the same
            shutil.rmtree(tmp, ignore_errors=True)
        with self._lock:  # this process reads it at once, not after RESCAN_S
            self._missing_since.pop(shard, None)


def encode_passages(encoder: Encoder, texts: list[str]) -> list[Matrix]:
    """Token embeddings of `texts`, in order, batched by length (little padding)."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: list[Matrix | None] = [None] * len(texts)
    for start in range(0, len(order), BATCH):
        chunk = order[start : start + BATCH]
        for i, emb in zip(chunk, encoder.token_embeddings([texts[i] for i in chunk]), strict=True):
            out[i] = emb
    return [e if e is not None else np.zeros((0, DIM), np.float32) for e in out]
