#!/usr/bin/env bash
# Multi-node training under SLURM: one accelerate launcher per node, all GPUs of each node.
#   sbatch --nodes=2 --gres=gpu:8 --ntasks-per-node=1 tools/slurm-train.sh recipes/qlora-multigpu.yml
# Needs the project's .venv on every node (shared filesystem) and data/prepared/ prepared once.
#SBATCH --job-name=icd10-qlora
#SBATCH --exclusive
set -euo pipefail
RECIPE=${1:-recipes/qlora-multigpu.yml}
GPUS_PER_NODE=${GPUS_PER_NODE:-$(nvidia-smi -L | wc -l)}
HEAD_IP=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
# Telemetry off on every node (tools/offline.env; values already set in the environment win).
while IFS='=' read -r name value; do
  [[ $name =~ ^[A-Z_]+$ ]] && export "$name=${!name:-$value}"
done < tools/offline.env
srun bash -c ".venv/bin/accelerate launch \
  --num_machines $SLURM_NNODES --machine_rank \$SLURM_NODEID \
  --num_processes $((SLURM_NNODES * GPUS_PER_NODE)) \
  --main_process_ip $HEAD_IP --main_process_port 29500 \
  -m axolotl.cli.train $RECIPE"
