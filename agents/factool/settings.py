"""FacTool's own settings: a deployment sets them under `pipeline_settings.factool`
(`ALTO_PIPELINE_SETTINGS__FACTOOL__CORPUS=...`, or a `[pipeline_settings.factool]` table of
the settings file); the core configuration knows nothing of them."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from alto.config import AltoConfig
from alto.streams.registry import own_settings

NAME = "factool"


class FacToolSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # The retrieval corpus: a JSONL file (id, title, text); None: WordNet (Debian's
    # wordnet-base, shipped in the `wn` data we install).
    corpus: Path | None = None
    # Corpus passages whose token embeddings a worker keeps for reranking (0: none; the
    # FacTool benchmark uses 0 so that no system gains from another's run of a question).
    passage_cache: int = Field(default=4096, ge=0)
    # Read passages' token embeddings from the passage store (`alto index build`) where it
    # holds them; False: encode every reranked passage online (the store is not read).
    passage_store: bool = True
    # Where the BM25 index and the passage store are kept (None: ALTO_DATA_DIR); a
    # benchmark with a data folder of its own points here to reuse what was built.
    index_dir: Path | None = None


def factool_settings(config: AltoConfig) -> FacToolSettings:
    """FacTool's settings in `config` (the registry has validated them once already)."""
    return own_settings(config, NAME, FacToolSettings)
