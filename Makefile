# Two entry points for a fresh clone: `make repro` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(CURDIR)/$(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1
export MPLBACKEND := Agg

.PHONY: setup repro test lint bench clean-venv browser

setup: $(STAMP)

# Reinstall when the pins change. torch/torchvision are pinned to the CPU builds in pip's
# local wheel directory (find-links), see docs/install.md.
$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

repro: $(STAMP)
	$(BIN)/dvc repro

test: lint browser
	$(BIN)/python -m pytest -q

# Lint, format check and type check (settings in pyproject.toml). `ruff check --fix` and
# `ruff format` apply what these report.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Headless Chromium for the audit-page test (Debian packages); installed only when missing.
browser:
	@test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null; }

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_geometry.py

clean-venv:
	rm -rf $(VENV)
