#!/bin/bash
# The closure study of docs/results/exact_representation.md (2 CPU cores, commit 780fa20 for the
# new representation, 2fa4129 for the old one). Paths are relative to a work folder.
set -e
jetevo simulate --process top --n-jets 4000 --seed 21 --out jetclass --workers 2 --quiet
jetevo simulate --process qcd --n-jets 2000 --seed 22 --out jetclass --workers 2 --quiet
jetevo simulate --process qcd-wide --n-jets 2000 --seed 23 --out aoj --workers 2 --quiet
jetevo recluster jetclass aoj --out trees --workers 2 --shard-size 2000 --quiet
TRAIN="trees/RunG_batch0.trees.parquet trees/ZJetsToNuNu_000.trees.parquet trees/TTBar_000.0000.trees.parquet"
# the old representation (parent-relative-v1) from a checkout of 2fa4129 at $OLD
for K in 8192 2048; do
  PYTHONPATH=$OLD python -m jetevo.cli tokenizer train --config $OLD/configs/tokenizer.yaml \
      --out old$K/tok.ckpt --quiet --trees $TRAIN max_steps=1500 n_codes=$K
  PYTHONPATH=$OLD python -m jetevo.cli tokenizer eval --ckpt old$K/tok.ckpt \
      --trees trees/TTBar_000.0001.trees.parquet --json old$K/report.json
  PYTHONPATH=$OLD python -m jetevo.cli tokenizer encode --ckpt old$K/tok.ckpt \
      --trees trees/TTBar_000.0001.trees.parquet --out old$K/tokens
  PYTHONPATH=$OLD python -m jetevo.cli tokenizer decode --ckpt old$K/tok.ckpt \
      --tokens old$K/tokens --out old$K/rebuilt
done
# the new one (split-exact-v2), and both closures measured by the same code
python scripts/study_representation.py --train $TRAIN --heldout trees/TTBar_000.0001.trees.parquet \
    --out repr --rebuilt old_k8192=old8192/rebuilt --rebuilt old_k2048=old2048/rebuilt \
    --variant new_k8192=8192:1500 --variant new_k8192_kmeans=8192:0 \
    --variant new_k2048=2048:1500 --variant new_k2048_kmeans=2048:0
