#!/usr/bin/env bash
# Multi-node, multi-GPU training: one srun task per GPU, DDP over NCCL (gloo when the nodes have no GPU).
#
#   sbatch [SBATCH FLAGS] slurm/train_parc.sh CONFIG [KEY=VALUE ...]
#
#   sbatch --nodes=2 --gpus-per-node=4 --ntasks-per-node=4 --partition=gpu --account=myproj \
#       slurm/train_parc.sh configs/train/deep_quench.yaml data=/scratch/deep_L32 run_dir=/scratch/runs/deep
#   sbatch --gpus-per-node=0 --ntasks-per-node=2 --cpus-per-task=1 \
#       slurm/train_parc.sh configs/train/tiny.yaml data=data/tiny run_dir=runs/tiny     # CPU-only nodes
#
# Keep --ntasks-per-node equal to --gpus-per-node. Site specifics come from sbatch flags (partition,
# account, time, GPUs) and the HOLSTEIN_* variables that slurm/preamble.sh documents (modules, venv,
# python, threads).
#
# Preemption and time limits: Slurm sends SIGUSR1 to every task 120 s before the end (no "B:", so the
# python ranks get it, not just this shell); the trainer writes a checkpoint at the next step boundary and
# runs `scontrol requeue`. The requeued job re-runs this script with the same arguments, and the trainer
# resumes from run_dir/checkpoints. Give an explicit run_dir=... so every restart finds the same one.
#SBATCH --job-name=holstein-train
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=4
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --signal=USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail

if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
    echo "usage: sbatch [SBATCH FLAGS] slurm/train_parc.sh CONFIG [KEY=VALUE ...]  (config first)" >&2
    exit 2
fi
CONFIG=$1
shift
if [ ! -f "$CONFIG" ]; then
    echo "train_parc.sh: config file '$CONFIG' not found from $(pwd); pass a path such as configs/train/deep_quench.yaml" >&2
    exit 2
fi

# sbatch runs a copy of this script from its spool directory: the shared preamble sits beside the
# original, whose path Slurm keeps as the job's Command.
here=$(dirname "${BASH_SOURCE[0]}")
if [[ ! -f "$here/preamble.sh" && -n "${SLURM_JOB_ID:-}" ]]; then
    here=$(dirname "$(scontrol show job "$SLURM_JOB_ID" | sed -n 's/^ *Command=\([^ ]*\).*/\1/p')")
fi
# shellcheck source=preamble.sh
source "$here/preamble.sh" || { echo "error: no preamble.sh in '$here'; submit the script from slurm/" >&2; exit 2; }
# One intra-op thread pool per rank sized to its cores.
holstein_threads "${SLURM_CPUS_PER_TASK:-1}"

echo "$(date -u +%FT%TZ) job ${SLURM_JOB_ID} (restart ${SLURM_RESTART_COUNT:-0}) on ${SLURM_JOB_NODELIST}:" \
     "${SLURM_NTASKS} task(s); $PYTHON -m holstein_dist.train --config $CONFIG $*"

# Rank, world size and rendezvous come from SLURM_* in each task (hpc/dist.py). --kill-on-bad-exit: one
# crashed rank ends the step instead of leaving the others blocked in a collective until the timeout.
# --cpus-per-task is passed on explicitly: srun no longer inherits it from sbatch (Slurm >= 22.05).
srun --kill-on-bad-exit=1 ${SLURM_CPUS_PER_TASK:+--cpus-per-task=$SLURM_CPUS_PER_TASK} \
    "$PYTHON" -u -m holstein_dist.train --config "$CONFIG" "$@"
