#!/usr/bin/env bash
# Ensemble evaluation of a surrogate: every Slurm task is one rank of `python -m holstein_dist.evaluate`;
# the ranks split the rollouts, rank 0 gathers and writes report.json, plots and TensorBoard entries.
#
#   sbatch [--nodes 1 --ntasks-per-node 4 --gpus-per-task 1 --partition P --account A --time 01:00:00] \
#       slurm/evaluate.sh --checkpoint runs/parc --data /scratch/$USER/deep_L32 --out runs/parc/eval [args]
#
# Arguments: anything `python -m holstein_dist.evaluate` accepts (--checkpoint, --data, --split,
# --rollouts, --steps, --max-lag, --out, --device, --batch-size, --bf16, --truth-only, --baseline-steps).
# With GPUs, ask for one per task: hpc.dist gives each rank the GPU of its local rank.
# Site specifics come from sbatch flags and these environment variables (all optional):
#   HOLSTEIN_MODULES    modules to load first, e.g. "cuda/12.4"
#   HOLSTEIN_VENV       virtual environment to activate (default: .venv of the submit directory, if any)
#   HOLSTEIN_PYTHON     interpreter (default: python)
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

if [[ -n "${HOLSTEIN_MODULES:-}" ]]; then
    # shellcheck disable=SC2086  # a list of module names
    module load $HOLSTEIN_MODULES
fi
venv=${HOLSTEIN_VENV:-${SLURM_SUBMIT_DIR:-.}/.venv}
if [[ -f "$venv/bin/activate" ]]; then
    # shellcheck disable=SC1091
    source "$venv/bin/activate"
fi

# Each rank uses its task's cores, no more: torch for the surrogate, numba for the exact-simulator
# baseline (the evaluation gives numba torch's thread count, so both sides of the speed-up match).
threads=${SLURM_CPUS_PER_TASK:-1}
export OMP_NUM_THREADS=$threads NUMBA_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads MKL_NUM_THREADS=$threads

echo "holstein-evaluate: ${SLURM_NTASKS:-?} ranks on ${SLURM_JOB_NUM_NODES:-?} node(s), $threads threads each"
exec srun --kill-on-bad-exit=1 "${HOLSTEIN_PYTHON:-python}" -m holstein_dist.evaluate "$@"
