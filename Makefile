# llm-auto-optimizer. `make demo` and `make test` work on a machine with only python3 and PyPI.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: help setup demo test lint bench clean

help:  ## List the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-8s %s\n", $$1, $$2}'

.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet uv

$(BIN)/llmopt: pyproject.toml uv.lock | $(if $(filter .tools/bin/uv,$(UV)),.tools/bin/uv)
	$(UV) sync --frozen --python $(PYTHON)
	@touch $@

setup: $(BIN)/llmopt  ## Create .venv with the locked dependencies

demo: setup  ## Run the whole learning loop on real data shipped in the repo
	$(BIN)/llmopt demo

test: setup  ## Run the test suite (services tests skip unless PostgreSQL/Redis answer)
	$(BIN)/pytest $(PYTEST_ARGS)

lint: setup  ## Ruff (lint + format check) and mypy strict
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: setup  ## Benchmarks; results in bench/results/*.json
	$(BIN)/python -m bench

.PHONY: bench-serving
bench-serving: setup  ## Decision service vs bare starlette at 500 req/s (open loop), swap under load
	$(BIN)/python -m bench.serving

clean:  ## Remove the venv, the tool venv and local state
	rm -rf $(VENV) .tools .llmopt .pytest_cache .mypy_cache .ruff_cache
