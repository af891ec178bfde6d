# jetevo: `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO_DIR ?= demo_out
DEMO_JETS ?= 1000
DEMO_GEN_JETS ?= 1000
WORKERS ?= 2

.PHONY: venv test lint demo compare study-tagging bench bench-memory fuzz clean

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
	$(BIN)/python -m mypy

# Main job end to end on the embedded default (small Pythia samples, CPU).
demo: $(STAMP)
	rm -rf $(DEMO_DIR)
	$(BIN)/jetevo simulate --process top --n-jets $(DEMO_JETS) --seed 11 --out $(DEMO_DIR)/jetclass --workers $(WORKERS) --quiet
	$(BIN)/jetevo simulate --process qcd --n-jets $(DEMO_JETS) --seed 12 --out $(DEMO_DIR)/jetclass --workers $(WORKERS) --quiet
	$(BIN)/jetevo simulate --process qcd-wide --n-jets $(DEMO_JETS) --seed 13 --out $(DEMO_DIR)/aoj --workers $(WORKERS) --quiet
	$(BIN)/jetevo recluster $(DEMO_DIR)/jetclass $(DEMO_DIR)/aoj --out $(DEMO_DIR)/trees --workers $(WORKERS) --shard-size 500 --quiet
	$(BIN)/python scripts/summarize_trees.py $(DEMO_DIR)/trees
	# tokenizer: trained on AOJ-like QCD + QCD + the first half of the top jets, evaluated on the held-out half
	$(BIN)/jetevo tokenizer train --config configs/tokenizer_demo.yaml --out $(DEMO_DIR)/tokenizer/tok.ckpt --quiet \
		--trees $(DEMO_DIR)/trees/RunG_batch0.*.parquet $(DEMO_DIR)/trees/ZJetsToNuNu_000.*.parquet $(DEMO_DIR)/trees/TTBar_000.0000.trees.parquet
	$(BIN)/jetevo tokenizer eval --ckpt $(DEMO_DIR)/tokenizer/tok.ckpt --trees $(DEMO_DIR)/trees/TTBar_000.0001.trees.parquet \
		--json $(DEMO_DIR)/tokenizer/report.json
	$(BIN)/jetevo tokenizer encode --ckpt $(DEMO_DIR)/tokenizer/tok.ckpt --trees $(DEMO_DIR)/trees --out $(DEMO_DIR)/tokens > /dev/null
	# jet-evolution model: pretrain on AOJ-like QCD, fine-tune on top jets, split metrics on held-out tops
	$(BIN)/jetevo train --config configs/tree_demo.yaml --out $(DEMO_DIR)/model/pretrain --quiet \
		--train $(DEMO_DIR)/tokens/RunG_batch0.0000.trees.parquet --val $(DEMO_DIR)/tokens/RunG_batch0.0001.trees.parquet
	$(BIN)/jetevo train --config configs/tree_demo_finetune.yaml --out $(DEMO_DIR)/model/finetune --quiet \
		--init-from $(DEMO_DIR)/model/pretrain/model.ckpt \
		--train $(DEMO_DIR)/tokens/TTBar_000.0000.trees.parquet --val $(DEMO_DIR)/tokens/ZJetsToNuNu_000.0001.trees.parquet
	$(BIN)/jetevo evaluate-splits --ckpt $(DEMO_DIR)/model/finetune/model.ckpt \
		--tokens $(DEMO_DIR)/tokens/TTBar_000.0001.trees.parquet --json $(DEMO_DIR)/model/splits.json
	# fidelity as a likelihood: the exact log P(tree) of every held-out top
	$(BIN)/jetevo score --ckpt $(DEMO_DIR)/model/finetune/model.ckpt \
		--tokens $(DEMO_DIR)/tokens/TTBar_000.0001.trees.parquet --out $(DEMO_DIR)/model/scores.parquet
	# generation: top jets from the fine-tuned model, compared with the held-out simulated tops
	$(BIN)/jetevo generate --ckpt $(DEMO_DIR)/model/finetune/model.ckpt --n-jets $(DEMO_GEN_JETS) --seed 1 \
		--out $(DEMO_DIR)/generated --quiet
	$(BIN)/jetevo evaluate --generated $(DEMO_DIR)/generated --reference $(DEMO_DIR)/trees/TTBar_000.0001.trees.parquet \
		--out $(DEMO_DIR)/evaluate
	# the same on massless particles (energies |p| in both samples), and the bigram reference generator
	$(BIN)/jetevo evaluate --generated $(DEMO_DIR)/generated --reference $(DEMO_DIR)/trees/TTBar_000.0001.trees.parquet \
		--out $(DEMO_DIR)/evaluate_massless --massless --no-plots
	$(BIN)/jetevo generate --ckpt $(DEMO_DIR)/model/finetune/model.ckpt --n-jets $(DEMO_GEN_JETS) --seed 1 \
		--baseline bigram --out $(DEMO_DIR)/generated_bigram --quiet
	$(BIN)/jetevo evaluate --generated $(DEMO_DIR)/generated_bigram --reference $(DEMO_DIR)/trees/TTBar_000.0001.trees.parquet \
		--out $(DEMO_DIR)/evaluate_bigram_massless --massless --no-plots
	# evolving real jets: held-out tops kept down to depth 2, the rest sampled (2 completions each);
	# the completions share their roots with the reference, so pT, mass and the like sit below the
	# independent-halves floor by construction (calibration: scripts/study_evolution.py)
	$(BIN)/jetevo generate --ckpt $(DEMO_DIR)/model/finetune/model.ckpt --prefix $(DEMO_DIR)/tokens/TTBar_000.0001.trees.parquet \
		--prefix-depth 2 --completions 2 --seed 1 --out $(DEMO_DIR)/completions --quiet
	$(BIN)/jetevo evaluate --generated $(DEMO_DIR)/completions --reference $(DEMO_DIR)/trees/TTBar_000.0001.trees.parquet \
		--out $(DEMO_DIR)/evaluate_completions_massless --massless --no-plots

# head-to-head of the tree model, the flat (OmniJet-alpha) baseline and the bigram reference
# (demo: ~10 minutes on 2 cores; COMPARE_PROFILE=medium: ~1 hour, docs/results/compare_modes.md)
COMPARE_PROFILE ?= demo
compare: $(STAMP)
	$(BIN)/python scripts/compare_modes.py --profile $(COMPARE_PROFILE) --out compare_$(COMPARE_PROFILE) --workers $(WORKERS)

# likelihood-ratio top tagging (tree and flat models vs mass window, tau32, histogram LR,
# gradient boosting), then the completions of held-out tops by depth (calibration,
# sharpness); ~20 minutes on 2 cores, docs/results/likelihood_tagging.md and evolution.md
study-tagging: $(STAMP)
	$(BIN)/python scripts/study_likelihood_tagging.py --profile quick --out tagging_quick --workers $(WORKERS)
	$(BIN)/python scripts/study_evolution.py --ckpt tagging_quick/tree/model/top/model.ckpt \
		--heldout tagging_quick/trees/jetclass/TTBar_002.trees.parquet --out evolution_quick

bench: $(STAMP)
	$(BIN)/python scripts/bench_recluster.py
	$(BIN)/python scripts/bench_tokenizer.py
	$(BIN)/python scripts/bench_train.py
	$(BIN)/python scripts/bench_generate.py

# peak memory of reclustering an AOJ-sized file (2.2M jets; several minutes, ~3 GB of disk)
bench-memory: $(STAMP)
	$(BIN)/python scripts/bench_recluster_memory.py

# corrupted inputs through every command for FUZZ_MINUTES (make test runs a few dozen cases)
FUZZ_MINUTES ?= 10
fuzz: $(STAMP)
	$(BIN)/python scripts/fuzz.py --minutes $(FUZZ_MINUTES) --out bench_out/fuzz

clean:
	rm -rf $(DEMO_DIR) bench_out compare_* tagging_* evolution_* .pytest_cache
