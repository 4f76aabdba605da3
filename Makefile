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

lint: setup  ## Ruff (lint + format check), mypy strict, import-linter layers (pyproject.toml)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

bench: setup  ## Benchmarks; results in bench/results/*.json
	$(BIN)/python -m bench

.PHONY: bench-pacing
bench-pacing: setup  ## Budget pacing on a replayed day with a traffic peak (3 seeds, ~4 min)
	$(BIN)/python -m bench pacing

.PHONY: bench-tuning
bench-tuning: setup  ## Parameter tuner vs grid and random search on simulated response surfaces (20 seeds, ~3 min)
	$(BIN)/python -m bench tuning

.PHONY: bench-cascade
bench-cascade: setup  ## Cascades in replay (optimistic, noisy verifier) vs single-shot routing (5 seeds, ~7 min)
	$(BIN)/python -m bench cascade

.PHONY: bench-serving
bench-serving: setup  ## Decision service vs bare starlette at 500 req/s (open loop), swap under load
	$(BIN)/python -m bench.serving

.PHONY: bench-checkpoint
bench-checkpoint: setup  ## Served p99 at 500/s: WAL checkpoints on their own thread vs in commits (~3 min)
	$(BIN)/python -m bench.wal_checkpoint

.PHONY: bench-gateway
bench-gateway: setup  ## Gateway vs direct upstream at 200 req/s, streaming TTFB, fallback, lost feedback (~9 min)
	$(BIN)/python -m bench.gateway

.PHONY: audit
audit: setup  ## pip-audit of the locked dependencies (needs PyPI's JSON API or OSV reachable)
	$(UV) export --frozen --no-hashes --no-emit-project -q > .audit-requirements.txt
	$(BIN)/pip-audit --progress-spinner off --no-deps --disable-pip -r .audit-requirements.txt \
	  | tee .audit-report.txt; status=$${PIPESTATUS[0]}; \
	if grep -q "could not be audited" .audit-report.txt; then \
	  echo "audit incomplete: no vulnerability service reachable from this machine" >&2; exit 2; fi; \
	exit $$status

.PHONY: soak
soak: setup  ## Sustained load: 10 minutes at 500 decide/s + feedback; errors, p99, memory (URLS=u1,u2: running replicas)
	$(BIN)/python -m bench.soak --minutes $${SOAK_MINUTES:-10} --rate $${SOAK_RATE:-500} \
	  --feedback-rate $${SOAK_FEEDBACK_RATE:-20} $(if $(URLS),--url $(URLS)) $(SOAK_ARGS)

clean:  ## Remove the venv, the tool venv and local state
	rm -rf $(VENV) .tools .llmopt .pytest_cache .mypy_cache .ruff_cache

# -- production profile on this machine, and its cluster manifests (issue #8): infra/README.md --
.PHONY: up down status lint-infra

up: setup  ## Start the production profile as processes: PostgreSQL, Redis, MLflow, Prefect, BentoML (REPLICAS=N)
	$(if $(REPLICAS),LLMOPT_INFRA_REPLICAS=$(REPLICAS) )bash infra/up.sh

down:  ## Stop what `make up` started (PostgreSQL/Redis it found running stay up)
	bash infra/down.sh

status:  ## Health of every component of `make up`
	$(if $(REPLICAS),LLMOPT_INFRA_REPLICAS=$(REPLICAS) )bash infra/status.sh

lint-infra: setup  ## Validate infra/k8s (strict schemas), ShellCheck infra scripts, consistency tests
	$(BIN)/kubernetes-validate --strict --quiet $(filter-out %/kustomization.yaml,$(wildcard infra/k8s/*.yaml))
	$(BIN)/shellcheck --external-sources --source-path=SCRIPTDIR infra/*.sh infra/bento/*.sh
	$(BIN)/pytest -q -p no:cacheprovider tests/unit/infra/test_manifests.py
