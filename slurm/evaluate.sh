#!/usr/bin/env bash
# Ensemble evaluation of a surrogate: every Slurm task is one rank of `python -m holstein_dist.evaluate`;
# the ranks split the rollouts, rank 0 gathers and writes report.json, plots and TensorBoard entries.
#
#   sbatch [--nodes 1 --ntasks-per-node 4 --gpus-per-task 1 --partition P --account A --time 01:00:00] \
#       slurm/evaluate.sh --checkpoint runs/parc --data /scratch/$USER/deep_L32 --out runs/parc/eval [args]
#
# Arguments: anything `python -m holstein_dist.evaluate` accepts (--checkpoint, --data, --out, --rollouts,
# ..., KEY=VALUE overrides; README "Command lines").
# With GPUs, ask for one per task: hpc.dist gives each rank the GPU of its local rank.
# Site specifics (modules, venv, python, threads) come from sbatch flags and the HOLSTEIN_* variables
# that slurm/preamble.sh documents.
#SBATCH --job-name=holstein-evaluate
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=2
#SBATCH --cpus-per-task=4
#SBATCH --time=01:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail

if [[ $# -lt 1 ]]; then
    echo "usage: sbatch [sbatch options] slurm/evaluate.sh --checkpoint PATH --data DIR [evaluate options]" >&2
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
# Each rank uses its task's cores, no more: torch for the surrogate, numba for the exact-simulator
# baseline (the evaluation gives numba torch's thread count, so both sides of the speed-up match).
holstein_threads "${SLURM_CPUS_PER_TASK:-1}"

echo "holstein-evaluate: ${SLURM_NTASKS:-?} ranks on ${SLURM_JOB_NUM_NODES:-?} node(s), ${OMP_NUM_THREADS} threads each"
exec srun --kill-on-bad-exit=1 "$PYTHON" -m holstein_dist.evaluate "$@"
