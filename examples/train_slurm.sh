#!/bin/bash
# Train a limace MACE potential on GPU nodes with SLURM: Lightning's own DDP, one task per GPU.
#
#   sbatch examples/train_slurm.sh examples/train_medium.yaml
#
# The config must agree with the allocation:
#   trainer: {accelerator: gpu, devices: 4, num_nodes: 2, strategy: ddp, precision: float32}
# Lightning detects SLURM (SLURM_NTASKS, SLURM_PROCID, ...) and sets up the process group itself; `srun` starts
# the tasks. The batch size in the config is per GPU.
#
# Restarts: submitting the same script again continues from RUN_DIR/checkpoints/last.ckpt (model, EMA,
# optimizer, scheduler and position in the epoch), so a job killed by the time limit or a node failure loses at
# most checkpoint.every_n_steps steps. `--dependency=afterany:<jobid>` chains the next part.
#
#SBATCH --job-name=limace-train
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4          # = trainer.devices
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=8
#SBATCH --mem=0
#SBATCH --time=24:00:00
#SBATCH --output=limace-train-%j.out

set -euo pipefail
CONFIG=${1:?usage: sbatch examples/train_slurm.sh CONFIG.yaml}

# one environment with limace installed (pip install -e . or the wheel), on every node
source "${LIMACE_VENV:-$HOME/limace/.venv}/bin/activate"

export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-8}
export WANDB_MODE=${WANDB_MODE:-offline}   # compute nodes often have no network; `wandb sync` later
export NCCL_ASYNC_ERROR_HANDLING=1

# validate the config once (one-line error, before any GPU is touched)
python -c "import sys; from limace.training.config import load_config; load_config(sys.argv[1])" "$CONFIG"

srun --kill-on-bad-exit=1 limace train "$CONFIG"
