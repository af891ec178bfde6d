#!/bin/bash
# DDP training of a jetevo model with torchrun: one process per GPU, on this machine or on
# several (run it on every node with the same NODES and MASTER_ADDR, NODE_RANK 0..NODES-1).
# Lightning reads the ranks from torchrun; every argument goes to `jetevo train`.
#
#   cluster/torchrun_train.sh --config configs/tree_pretrain_aoj.yaml \
#       --train tokens/aoj --val tokens/aoj_val --out runs/pretrain
#   GPUS=2 cluster/torchrun_train.sh ...                                  # 2 of the GPUs
#   NODES=2 NODE_RANK=0 MASTER_ADDR=node01 cluster/torchrun_train.sh ...  # on node01
#   NODES=2 NODE_RANK=1 MASTER_ADDR=node01 cluster/torchrun_train.sh ...  # on node02
#   GPUS=2 cluster/torchrun_train.sh ... train.accelerator=cpu            # 2 CPU processes (gloo)
#
# train.batch_size is per process: the global batch is batch_size x GPUS x NODES. Running
# it again resumes from OUT/lightning/last.ckpt, also with other GPUS or NODES.
set -euo pipefail

VENV=${VENV:-.venv}
GPUS=${GPUS:-$( (nvidia-smi --list-gpus 2>/dev/null || true) | wc -l)}
NODES=${NODES:-1}
if [ "$GPUS" -lt 1 ]; then
    echo "torchrun_train.sh: no GPU found; set GPUS (and train.accelerator=cpu for CPU processes)" >&2
    exit 2
fi
if [ "$NODES" -eq 1 ]; then
    where=(--standalone)
else
    where=(--nnodes="$NODES" --node-rank="${NODE_RANK:?set NODE_RANK}"
           --rdzv-backend=c10d --rdzv-id="${RUN_ID:-jetevo}"
           --rdzv-endpoint="${MASTER_ADDR:?set MASTER_ADDR}:${MASTER_PORT:-29500}")
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}

exec "$VENV/bin/python" -m torch.distributed.run "${where[@]}" --nproc-per-node="$GPUS" \
    -m jetevo.cli train "$@" train.devices="$GPUS" train.num_nodes="$NODES"
