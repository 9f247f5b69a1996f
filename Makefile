# llmtune developer entry points. `make demo` and `make test` work on a fresh machine (pip only).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU build by default; for CUDA pass e.g. TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu124"
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install test test-fast lint format demo bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# Install torch before llmtune: a bare `torch` requirement would pull a multi-GB CUDA build.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e '.[dev,demo]'
	touch $@

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check llmtune tests benchmarks
	$(BIN)/ruff format --check llmtune tests benchmarks
	$(BIN)/lint-imports --no-cache

format: install
	$(BIN)/ruff check --fix llmtune tests benchmarks
	$(BIN)/ruff format llmtune tests benchmarks

demo: install
	$(BIN)/llmtune finetune --recipe sentiment-demo --overwrite

bench: install
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) outputs build dist *.egg-info .pytest_cache .ruff_cache
