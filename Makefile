# jetevo: `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO_DIR ?= demo_out
DEMO_JETS ?= 1000
WORKERS ?= 2

.PHONY: venv test lint demo bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# the local CPU wheel first: a looser requirement would pull a multi-GB CUDA build
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check jetevo tests scripts cluster
	$(BIN)/ruff format --check jetevo tests scripts cluster

# Main job end to end on the embedded default (small Pythia samples, CPU).
demo: $(STAMP)
	$(BIN)/jetevo simulate --process top --n-jets $(DEMO_JETS) --seed 11 --out $(DEMO_DIR)/jetclass --workers $(WORKERS) --quiet
	$(BIN)/jetevo simulate --process qcd --n-jets $(DEMO_JETS) --seed 12 --out $(DEMO_DIR)/jetclass --workers $(WORKERS) --quiet
	$(BIN)/jetevo simulate --process qcd-wide --n-jets $(DEMO_JETS) --seed 13 --out $(DEMO_DIR)/aoj --workers $(WORKERS) --quiet
	$(BIN)/jetevo recluster $(DEMO_DIR)/jetclass $(DEMO_DIR)/aoj --out $(DEMO_DIR)/trees --workers $(WORKERS) --shard-size 500 --quiet
	$(BIN)/python scripts/summarize_trees.py $(DEMO_DIR)/trees

bench: $(STAMP)
	$(BIN)/python scripts/bench_recluster.py

clean:
	rm -rf $(DEMO_DIR) bench_out .pytest_cache
