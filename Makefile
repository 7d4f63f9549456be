# make demo   - venv, install, register the MLC scripts, run the synthetic end-to-end benchmark
# make test   - install (fast when done), the docs build (strict), then the test suite
# make docs   - the documentation site (mkdocs.yml, docs/) built with --strict into .site/
# make bench  - every benchmark in bench/, report in bench/REPORT.md
# make lint   - ruff check and format check
# make valid-closed - one full valid closed run on the automotive LoadGen, officially checked (> 20 min)
# make valid-constantstream - the rate search and one full valid ConstantStream run, officially checked (> 40 min)

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch goes in first and alone: the CPU wheel of this version lies on the machines' disk.
TORCH_SPEC ?= torch==2.13.0
# Our own MLC repos folder: mlcr never touches ~/MLC, and with this repo registered in it
# nothing is pulled from GitHub.
export MLC_REPOS ?= $(CURDIR)/.mlc
INSTALLED := $(VENV)/.abtf-installed

DEMO_TAGS := run-abtf-inference,reference,_v0.5,_synthetic,_performance-and-accuracy
DEMO_ARGS := --model=ssd --device=cpu --framework=onnxruntime --scenario=SingleStream --quiet

.PHONY: demo test docs install register bench lint format clean-mlc valid-closed valid-constantstream

demo: register
	$(BIN)/mlcr $(DEMO_TAGS) $(DEMO_ARGS)

test: install docs
	$(BIN)/python -m pytest

# Any warning (a broken link or #anchor, a page missing from the nav) fails the build.
SITE_DIR ?= .site
docs: install
	$(BIN)/mkdocs build --strict --site-dir "$(SITE_DIR)"

install: $(INSTALLED)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(INSTALLED): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -e '.[test,docs]'
	touch $@

# `mlc add repo` fails on a path that is already registered, so look first. It runs inside
# $(MLC_REPOS) because mlc writes its .mlc-log.txt into the current folder.
register: install
	@grep -qF '"$(CURDIR)"' "$(MLC_REPOS)/repos.json" 2>/dev/null || \
		(mkdir -p "$(MLC_REPOS)" && cd "$(MLC_REPOS)" && "$(abspath $(BIN))/mlc" add repo "$(CURDIR)")

# Every bench/bench_*.py; writes bench/REPORT.md and bench/REPORT.json (bench/README.md).
bench: install
	$(BIN)/python bench/run_all.py

# The demo model, closed division, SingleStream, valid rules, on the round's automotive LoadGen built from
# ../shared/upstream; then the round's official checker (bench/valid_closed.py). ROUND=v1.0 for the other round.
ROUND ?= v0.5
valid-closed: install
	$(BIN)/python bench/valid_closed.py --round $(ROUND)

# ConstantStream: the rate search, then a full valid ConstantStream run (100000 queries, >= 600 s),
# accuracy, the open submission tree and the round's official checker (bench/valid_constantstream.py).
# The small config (the demo network on a 72x128 input) in INT8 by default; over 40 min on 2 cores.
valid-constantstream: install
	$(BIN)/python bench/valid_constantstream.py --round $(ROUND)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Forget every cached model and dataset of this checkout (they are rebuilt on the next run).
clean-mlc:
	rm -rf "$(MLC_REPOS)"
