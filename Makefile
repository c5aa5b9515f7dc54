# Two commands do all setup on a fresh machine: `make demo` (materialize the whole asset graph on the
# embedded default) and `make test` (the full suite). Both create and fill .venv first.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# pip prints one harmless line per package about an absent extra local index; keep the log readable.
QUIET_PIP := { grep -v "^WARNING: Location '" || true; }

# The same defaults as the .env that `make install` writes (unime-assets init), which is what lets the
# Dagster CLI and unime-assets run from the project root without make; an exported value wins in both.
export UNIME_HOME ?= $(CURDIR)/.unime
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
export MLFLOW_TRACKING_URI ?= sqlite:///$(UNIME_HOME)/mlflow/mlflow.db
export HF_HUB_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export MLFLOW_DISABLE_TELEMETRY := true
export TOKENIZERS_PARALLELISM := false

# `make ablation` keeps its own state (the `ablation` embedded size has a second judge): look at it with
# `make ui UNIME_HOME=$PWD/.unime-ablation DAGSTER_HOME=$PWD/.unime-ablation/dagster_home`.
ABLATION_HOME := $(CURDIR)/.unime-ablation
ABLATION_ENV := UNIME_HOME=$(ABLATION_HOME) DAGSTER_HOME=$(ABLATION_HOME)/dagster_home \
	MLFLOW_TRACKING_URI=sqlite:///$(ABLATION_HOME)/mlflow/mlflow.db

.PHONY: help install init demo ablation test ui lint clean

help:
	@echo "make demo  - install, build the embedded default, materialize every asset, print a summary"
	@echo "make ablation - install, build the ablation default, run every (variant, seed) of the ablation job"
	@echo "make test  - install and run the full test suite"
	@echo "make ui    - Dagster UI on 127.0.0.1:3000 and MLflow UI on 127.0.0.1:5000"
	@echo "make init  - (re)write .env, .dagster_home/ and .unime/mlflow/ for this checkout (make install does it)"
	@echo "make lint  - ruff"

# uv (pinned in constraints.txt) installs the stack: downloads, installs and byte-compiles in parallel
# (measured on 2 cores: the ~190 pins other than torch 36 s vs pip's 127 s, the same package set). torch
# first and alone, so nothing else can pull a CUDA build: the pinned 2.13.0 is a local CPU wheel on this
# project's machines, found through pip's find-links ($PIP_FIND_LINKS, else pip's global.find-links), which
# uv gets passed (it reads no pip configuration; torch 15 s vs pip's 36 s). Without find-links pip installs
# torch, with whatever index it is configured for. The last step keeps that torch, as it satisfies the pin.
# Compiled bytecode because uv skips it by default and every process (each Dagster step, each torchrun
# rank) would then compile its imports again where PYTHONDONTWRITEBYTECODE is set (it is here).
UV_PIP = $(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python -c constraints.txt
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt uv 2>&1 | $(QUIET_PIP)
	set -f; links="$${PIP_FIND_LINKS:-$$($(BIN)/pip config get global.find-links 2>/dev/null || true)}"; \
	if [ -n "$$links" ]; then $(UV_PIP) $$(for l in $$links; do printf -- '--find-links %s ' "$$l"; done) torch==2.13.0; \
	else $(BIN)/pip install -q torch==2.13.0 2>&1 | $(QUIET_PIP); fi
	@$(BIN)/python -c 'import importlib.metadata as m; print("installed torch", m.version("torch"))'
	$(UV_PIP) -e '.[dev]'
	$(BIN)/pip check
	touch $@

# .env (DAGSTER_HOME, UNIME_HOME for this checkout), .dagster_home/dagster.yaml -> ./dagster.yaml, .unime/mlflow/;
# `init` alone (no reinstall) is what tests/e2e/test_fresh_clone.py runs in its copy of the checkout.
install: $(STAMP)
	@$(BIN)/unime-assets init

init:
	@$(BIN)/unime-assets init

demo: install
	@start=$$(date +%s); \
	$(BIN)/unime-assets build-default --size demo; \
	$(BIN)/unime-assets materialize --summary; \
	echo "make demo (after install): $$(( $$(date +%s) - start ))s"

# The paper's ablations (Tables 4, 5, 6, 10, mining rules) x 3 seeds as Dagster runs, 2 at a time; the
# last line printed is `ablation report: <path to ablation.json>`.
ablation: install
	mkdir -p $(ABLATION_HOME)/dagster_home $(ABLATION_HOME)/mlflow
	ln -sf $(CURDIR)/dagster.yaml $(ABLATION_HOME)/dagster_home/dagster.yaml
	$(ABLATION_ENV) $(BIN)/unime-assets build-default --size ablation
	$(ABLATION_ENV) $(BIN)/unime-assets ablate --workers 2

test: install
	$(BIN)/python -m pytest

ui: install
	@echo "Dagster: http://127.0.0.1:3000   MLflow: http://127.0.0.1:5000/#/experiments?workflowType=machine_learning"
	@trap 'kill 0' EXIT INT TERM; \
	$(BIN)/mlflow ui --backend-store-uri "$(MLFLOW_TRACKING_URI)" --host 127.0.0.1 --port 5000 & \
	$(BIN)/dagster dev -h 127.0.0.1 -p 3000 -w workspace.yaml

lint: install
	$(BIN)/ruff check unime_assets tests

clean:
	rm -rf $(UNIME_HOME) $(DAGSTER_HOME) $(ABLATION_HOME) .env
