#!/usr/bin/env bash
# Sharded generation on one machine: N processes (one per GPU, or CPU processes) fill one
# folder with one sample, each making shard K of N with its own seed stream and files
# (jetevo generate --shard K/N; docs/generation.md#sharded-generation---shard).
#
#   cluster/generate_shards.sh CKPT N_JETS OUT N_SHARDS [extra jetevo generate options]
#   cluster/generate_shards.sh runs/finetune/model.ckpt 10000000 generated 8 --device cuda --batch-size 4096
set -euo pipefail
if [ $# -lt 4 ]; then
    echo "usage: $0 CKPT N_JETS OUT N_SHARDS [jetevo generate options]" >&2
    exit 2
fi
ckpt=$1 n_jets=$2 out=$3 shards=$4
shift 4
jetevo=${JETEVO:-jetevo}
gpus=$(command -v nvidia-smi >/dev/null && nvidia-smi -L | wc -l || echo 0)
mkdir -p "$out"
pids=()
for ((k = 0; k < shards; k++)); do
    # one GPU per shard when there are GPUs (shards beyond the GPU count share them)
    if [ "$gpus" -gt 0 ]; then export CUDA_VISIBLE_DEVICES=$((k % gpus)); fi
    "$jetevo" generate --ckpt "$ckpt" --n-jets "$n_jets" --out "$out" --shard "$k/$shards" \
        --quiet "$@" > "$out/shard-$k.log" 2>&1 &
    pids+=($!)
done
status=0
for k in "${!pids[@]}"; do
    if ! wait "${pids[$k]}"; then
        echo "shard $k/$shards failed: $out/shard-$k.log" >&2
        status=1
    fi
done
exit $status
