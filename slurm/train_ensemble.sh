#!/usr/bin/env bash
# An ensemble of K independently trained surrogates as ONE Slurm job array: array task i trains member i
# (seed + i) into RUN_DIR/member-0i; RUN_DIR/ensemble.json lists the members and their state.
#
#   sbatch --array=0-4 [SBATCH FLAGS] slurm/train_ensemble.sh CONFIG run_dir=DIR ensemble.members=5 [KEY=VALUE ...]
#
#   sbatch --array=0-4 --gpus-per-node=1 --ntasks-per-node=1 --partition=gpu \
#       slurm/train_ensemble.sh configs/train/deep_quench.yaml data=/scratch/deep_L32 \
#       run_dir=/scratch/runs/deep_ensemble ensemble.members=5
#   sbatch --array=3 ... (same arguments)      # rerun member 3 alone, e.g. after it failed
#   sbatch --array=0-4%2 ...                   # at most 2 members at a time
#
# Each task is a normal training job (one srun task per GPU, DDP when there are several): it resumes from
# its member's checkpoints, and on the USR1 warning before its time limit it checkpoints and requeues
# itself, exactly as slurm/train_parc.sh. `python -m holstein_dist.ensemble status DIR` shows progress;
# `python -m hpc.submit ensemble --members 5 ...` does the same as this script through submitit.
#SBATCH --job-name=holstein-ensemble
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --signal=USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%A_%a.out
set -euo pipefail

if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
    echo "usage: sbatch --array=0-(K-1) slurm/train_ensemble.sh CONFIG run_dir=DIR ensemble.members=K [KEY=VALUE ...]" >&2
    exit 2
fi
if [ -z "${SLURM_ARRAY_TASK_ID:-}" ]; then
    echo "train_ensemble.sh: not an array task; submit with sbatch --array=0-(K-1), one task per member" >&2
    exit 2
fi
case " $* " in
    *" ensemble.members="*) ;;
    *) echo "train_ensemble.sh: pass ensemble.members=K (the whole ensemble's size, also when rerunning one member)" >&2
       exit 2 ;;
esac
# The training itself is slurm/train_parc.sh's (preamble, threads, srun, signals), with this task's member.
# sbatch runs a copy of this script from its spool directory: its siblings sit beside the original.
here=$(dirname "${BASH_SOURCE[0]}")
if [[ ! -f "$here/train_parc.sh" && -n "${SLURM_JOB_ID:-}" ]]; then
    here=$(dirname "$(scontrol show job "$SLURM_JOB_ID" | sed -n 's/^ *Command=\([^ ]*\).*/\1/p' | head -1)")
fi
echo "$(date -u +%FT%TZ) array task ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}: member ${SLURM_ARRAY_TASK_ID}"
exec bash "$here/train_parc.sh" "$@" "ensemble.member=${SLURM_ARRAY_TASK_ID}"
