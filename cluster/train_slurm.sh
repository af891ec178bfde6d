#!/bin/bash
# DDP training of the jet-evolution model on SLURM: one torchrun per node, one process per GPU.
#
#   sbatch --nodes=2 --gpus-per-node=4 cluster/train_slurm.sh \
#       --config configs/tree_pretrain_aoj.yaml --train tokens/aoj --val tokens/aoj_val --out runs/pretrain
#
# Every argument is passed to `jetevo train` (config overrides too: trainer settings such as
# train.batch_size are per process). Resubmitting the same command resumes from
# OUT/lightning/last.ckpt. Set JETEVO_VENV to the environment to activate (default: .venv).
#SBATCH --job-name=jetevo-train
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=16
#SBATCH --time=24:00:00
#SBATCH --output=jetevo-train-%j.out
set -euo pipefail

source "${JETEVO_VENV:-.venv}/bin/activate"
GPUS_PER_NODE=${SLURM_GPUS_ON_NODE:-$(nvidia-smi --list-gpus | wc -l)}
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export OMP_NUM_THREADS=$(( ${SLURM_CPUS_PER_TASK:-16} / GPUS_PER_NODE ))

srun torchrun \
    --nnodes="$SLURM_JOB_NUM_NODES" \
    --nproc-per-node="$GPUS_PER_NODE" \
    --rdzv-id="$SLURM_JOB_ID" \
    --rdzv-backend=c10d \
    --rdzv-endpoint="$MASTER_ADDR:29500" \
    -m jetevo.cli train "$@"
