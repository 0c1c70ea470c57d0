# fungilib — `make demo` and `make test` set everything up on a fresh machine through `make setup`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fungilib-installed
# nbval runs the data notebooks top to bottom with their defaults, in one process after the tests (their cells
# share a kernel, which pytest-xdist's scheduling can restart between cells); 04 (training) and 06 (comparison) run under
# papermill in tests/test_sweep.py with small parameters, as sweeps run them. They run on copies in
# $(NBVAL_DIR)/notebooks, so their default outputs (../runs/demo/…) land in $(NBVAL_DIR)/runs, never over the demo's.
STAGE_NOTEBOOKS := $(sort $(wildcard notebooks/0[1-3]_*.ipynb))
NBVAL_DIR := .nbval

.PHONY: setup demo test lint bench clean-runs lab

NPM_STAMP := node_modules/.fungilib-installed
CHROMIUM := /usr/bin/chromium

POSTGRES := /usr/lib/postgresql

# GPU=1 (make setup GPU=1) adds CUDA TensorFlow (requirements-gpu.txt) on a GPU machine.
GPU ?= 0
GPU_STAMP := $(VENV)/.fungilib-gpu-installed

setup: $(STAMP) $(NPM_STAMP) $(CHROMIUM) $(POSTGRES) $(if $(filter 1,$(GPU)),$(GPU_STAMP))

$(GPU_STAMP): $(STAMP) requirements-gpu.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-gpu.txt
	$(BIN)/python -c "import tensorflow as tf; print('GPUs visible to TensorFlow:', tf.config.list_physical_devices('GPU'))"
	@touch $(GPU_STAMP)

# The venv is (re)built when missing or older than the pinned requirements or the package metadata.
$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml jupyter/overrides.json
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-nodeps.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(BIN)/python -c "from fungilib.notebooks import ensure_kernel; ensure_kernel(force=True)"
	@mkdir -p $(VENV)/share/jupyter/lab/settings && cp jupyter/overrides.json $(VENV)/share/jupyter/lab/settings/
	@touch $(STAMP)
	@echo "fungilib is set up: $(BIN)/fungilib"

# TF.js for the web page (tf.min.js) and for the export's parity check in Node, pinned in package-lock.json.
$(NPM_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $(NPM_STAMP)

# Debian's Chromium for the browser tests (Playwright drives it; no browser download).
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium chromium-driver; \
	elif command -v sudo >/dev/null; then sudo apt-get update -qq && sudo apt-get install -y -qq chromium chromium-driver; \
	else echo "install Debian's chromium (apt-get install chromium chromium-driver) as root, then rerun"; exit 1; fi

# Debian's PostgreSQL for the Optuna storage tests (a test starts its own server with initdb + pg_ctl on loopback).
$(POSTGRES):
	@if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq postgresql; \
	elif command -v sudo >/dev/null; then sudo apt-get update -qq && sudo apt-get install -y -qq postgresql; \
	else echo "install Debian's postgresql (apt-get install postgresql) as root, then rerun"; exit 1; fi

demo: setup
	$(BIN)/fungilib demo --out runs/demo --sweep params/sweeps/demo.yaml

test: setup lint
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup tests -p no:cacheprovider --durations=20
	rm -rf $(NBVAL_DIR)/notebooks && mkdir -p $(NBVAL_DIR)/notebooks && cp $(STAGE_NOTEBOOKS) $(NBVAL_DIR)/notebooks/
	cd $(NBVAL_DIR) && $(CURDIR)/$(BIN)/python -m pytest -q notebooks --nbval-lax -p no:cacheprovider

# The peers fungilib is measured against live in their own venv, never in .venv.
PEERS_STAMP := bench/work/peers-venv/.installed
$(PEERS_STAMP): bench/requirements-peers.txt
	@test -x bench/work/peers-venv/bin/python || $(PYTHON) -m venv bench/work/peers-venv
	bench/work/peers-venv/bin/python -m pip install --quiet --disable-pip-version-check -r bench/requirements-peers.txt
	@touch $(PEERS_STAMP)

bench: setup $(PEERS_STAMP)
	$(BIN)/python bench/ingest_scale.py
	$(BIN)/python bench/ingest_vs_peers.py
	$(BIN)/python bench/download_loopback.py
	$(BIN)/python bench/download_vs_img2dataset.py
	test -f runs/demo/clean/manifest.h5 || $(MAKE) demo
	$(BIN)/python bench/train_speed.py
	$(BIN)/python bench/sweep_overhead.py
	$(BIN)/python bench/inference.py

# JupyterLab at the project root with the project's kernel ("Python (fungilib)"), on loopback unless
# LAB_IP says otherwise; the token is printed in the URL. `make lab LAB_PORT=8890 LAB_IP=0.0.0.0`.
LAB_IP ?= 127.0.0.1
LAB_PORT ?= 8888
# The kernel and the lab settings (no "Jupyter news" question: jupyter/overrides.json) are installed by setup.
lab: setup
	$(BIN)/jupyter lab --no-browser --ip=$(LAB_IP) --port=$(LAB_PORT) --ServerApp.root_dir=$(CURDIR) \
		--ServerApp.port_retries=0 --KernelSpecManager.ensure_native_kernel=False \
		--MultiKernelManager.default_kernel_name=fungilib $$([ "$$(id -u)" = 0 ] && echo --allow-root)

lint: setup
	$(BIN)/ruff check fungilib tests bench

clean-runs:
	rm -rf runs/demo
