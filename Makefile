# The two quickstart commands: `make demo` (main job) and `make test` (the suite).
# Each creates or reuses the local virtual environment .venv.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test lint test-torch bench clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

## The survey of the default model (trained once into the cache where --model default
## finds it; a process of its own, so the survey starts fresh): every method, one
## report at survey/index.html.
demo: $(STAMP)
	$(BIN)/python -c "import cnnvis_jax; cnnvis_jax.default_model()"
	$(BIN)/cnnvis survey --model default --quick --out survey

lint: $(STAMP)
	$(BIN)/ruff check cnnvis_jax tests benchmarks experiments
	$(BIN)/ruff format --check cnnvis_jax tests benchmarks experiments

## Lint, then the whole test suite (parity tests run when torch/torchvision are installed),
## in two worker processes (pytest-xdist): many tests are compile-bound and single-threaded.
test: lint
	$(BIN)/python -m pytest -q -n 2 --durations=25

## Install the optional torch extra (torch 2.14.1 + torchvision 0.29.1, ~5.5 GB) and run parity tests.
test-torch: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[test,torch]"
	$(BIN)/python -m pytest -q -m torch

## Benchmarks; the torch/Captum columns need the optional extra: pip install -e '.[bench]'.
bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

clean-venv:
	rm -rf $(VENV)
