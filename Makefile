# fsl-xai: `make lab` sets up and starts the workbench; `make test` sets up and runs every test.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   := .venv
BIN    := $(CURDIR)/$(VENV)/bin
STAMP  := $(VENV)/.installed
PIP    := $(BIN)/python -m pip

# The shared data folder beside the project, when there is one: tests that need it must find it
# (FSL_XAI_REQUIRE_DATA=1 turns their skip into a failure).
SHARED_DATA := $(abspath $(CURDIR)/../shared/data)
ifneq ($(wildcard $(SHARED_DATA)/.),)
export FSL_XAI_DATA_DIR ?= $(SHARED_DATA)
export FSL_XAI_REQUIRE_DATA ?= 1
endif
export FSL_XAI_CACHE_DIR ?= $(CURDIR)/.cache
# The machines have 2 cores; more threads than cores only slows torch down.
export OMP_NUM_THREADS ?= 2
export MKL_NUM_THREADS ?= 2
# Jupyter kernels (nbval, Voila, JupyterLab) are started as `python`: make it the venv's.
export PATH := $(BIN):$(PATH)
export PYTHONDONTWRITEBYTECODE := 1

PYTEST_ARGS ?=
NOTEBOOKS := $(wildcard notebooks)

.PHONY: help venv browser models lint test lab app bench clean distclean

help:
	@echo "make lab    set up .venv and start JupyterLab on notebooks/"
	@echo "make app    set up .venv and serve the workbench app (Voila) on http://127.0.0.1:8866/"
	@echo "make test   set up .venv and Chromium, then lint and run every test (unit, notebooks, browser)"
	@echo "make lint   only ruff (fsl_xai widgets tests benchmarks) and mypy (fsl_xai widgets)"
	@echo "make bench  run the benchmark scripts in benchmarks/ (not the _helpers)"
	@echo "make venv   only create/update .venv"

venv: $(STAMP)

# Re-installs only when pyproject.toml or constraints.txt change, a top-level package appears
# (the editable install maps each package by name), or the venv is new.
$(STAMP): pyproject.toml constraints.txt $(wildcard */__init__.py)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --no-input -c constraints.txt -e '.[all]'
	@touch $@

# Debian's Chromium for the browser tests (Playwright drives it; never `playwright install`).
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
	    sudo=; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	    echo "installing Debian chromium and chromium-driver"; \
	    $$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	    $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; \
	fi

# Notebooks run under nbval in lax mode: every cell must run without error, and cells marked
# `# NBVAL_CHECK_OUTPUT` must also reproduce their stored output (plotly outputs carry random ids).
NBVAL_ARGS := --nbval-lax --nbval-current-env --nbval-kernel-startup-timeout=120

# The default models the notebooks and the browser tests open, trained once into the cache (the
# same models a user gets from `make lab`), so no test waits on a training.
models: venv
	$(BIN)/fsl-xai prepare

# Style and types: ruff's rules and mypy's settings are in pyproject.toml.
lint: venv
	$(BIN)/ruff check fsl_xai widgets tests benchmarks
	$(BIN)/mypy

# lint comes first so that a style or type error fails the run early, before Chromium and the models.
test: venv lint browser models
	$(BIN)/python -m pytest tests $(if $(NOTEBOOKS),$(NOTEBOOKS) $(NBVAL_ARGS)) $(PYTEST_ARGS)

# Options for JupyterLab go after --, e.g. make lab LAB_ARGS='--port 8899 -- --ServerApp.token=abc'
# (as root, --allow-root is added by fsl-xai lab itself).
LAB_ARGS ?=

lab: venv
	$(BIN)/fsl-xai lab $(LAB_ARGS)

# Options for fsl-xai app, e.g. make app APP_ARGS='--port 8899 --preheat 2'
APP_ARGS ?=

app: venv
	$(BIN)/fsl-xai app $(APP_ARGS)

bench: venv
	@set -e; for script in benchmarks/[!_]*.py; do \
	    [ -e "$$script" ] || { echo "no benchmarks/*.py yet"; break; }; \
	    echo "== $$script"; $(BIN)/python "$$script"; \
	done

clean:
	rm -rf .pytest_cache artifacts build *.egg-info

distclean: clean
	rm -rf $(VENV)
