#!/usr/bin/env bash
# Multi-node dataset generation: every Slurm task is one MPI rank of
# `python -m holstein_dist.generate --backend mpi`; rank 0 hands out shards and computes too.
#
#   sbatch [--nodes 4 --ntasks-per-node 64 --partition P --account A --time 04:00:00] \
#       slurm/generate.sh configs/data/deep_L32.yaml --out /scratch/$USER/deep_L32 [KEY=VALUE ...]
#
# Arguments: the data config first, then anything `python -m holstein_dist.generate` accepts
# (--out, KEY=VALUE overrides). Resubmitting the same command resumes an interrupted dataset.
# Site specifics come from sbatch flags and these environment variables (all optional):
#   HOLSTEIN_MODULES    modules to load first, e.g. "gcc/12 openmpi/4.1"
#   HOLSTEIN_VENV       virtual environment to activate (default: .venv of the submit directory, if any)
#   HOLSTEIN_PYTHON     interpreter (default: python)
#   SLURM_MPI_TYPE      srun's MPI plugin, e.g. pmix for Open MPI, pmi2 for MPICH (Slurm's own variable)
#SBATCH --job-name=holstein-generate
#SBATCH --ntasks=4
#SBATCH --cpus-per-task=1
#SBATCH --time=04:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail

if [[ $# -lt 1 || "$1" == -* ]]; then
    echo "usage: sbatch [sbatch options] slurm/generate.sh CONFIG.yaml [--out DIR] [KEY=VALUE ...]" >&2
    exit 2
fi
config=$1
shift

if [[ -n "${HOLSTEIN_MODULES:-}" ]]; then
    # shellcheck disable=SC2086  # a list of module names
    module load $HOLSTEIN_MODULES
fi
venv=${HOLSTEIN_VENV:-${SLURM_SUBMIT_DIR:-.}/.venv}
if [[ -f "$venv/bin/activate" ]]; then
    # shellcheck disable=SC1091
    source "$venv/bin/activate"
fi

# One single-threaded rank per core: keep numba/BLAS from starting a thread pool in every rank.
export NUMBA_NUM_THREADS=1 OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1

echo "holstein-generate: ${SLURM_NTASKS:-?} ranks on ${SLURM_JOB_NUM_NODES:-?} node(s), config $config"
exec srun --kill-on-bad-exit=1 "${HOLSTEIN_PYTHON:-python}" -m holstein_dist.generate \
    --config "$config" --backend mpi "$@"
