#!/usr/bin/env bash
# Multi-node dataset generation: every Slurm task is one MPI rank of
# `python -m holstein_dist.generate --backend mpi`; rank 0 hands out shards and computes too.
#
#   sbatch [--nodes 4 --ntasks-per-node 64 --partition P --account A --time 04:00:00] \
#       slurm/generate.sh configs/data/deep_L32.yaml --out /scratch/$USER/deep_L32 [KEY=VALUE ...]
#
# Arguments: the data config first, then anything `python -m holstein_dist.generate` accepts
# (--out, KEY=VALUE overrides). Resubmitting the same command resumes an interrupted dataset.
# Site specifics (modules, venv, python, threads) come from sbatch flags and the HOLSTEIN_* variables
# that slurm/preamble.sh documents.
# SLURM_MPI_TYPE (Slurm's own variable) picks srun's MPI plugin, e.g. pmix for Open MPI, pmi2 for MPICH.
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

# sbatch runs a copy of this script from its spool directory: the shared preamble sits beside the
# original, whose path Slurm keeps as the job's Command.
here=$(dirname "${BASH_SOURCE[0]}")
if [[ ! -f "$here/preamble.sh" && -n "${SLURM_JOB_ID:-}" ]]; then
    here=$(dirname "$(scontrol show job "$SLURM_JOB_ID" | sed -n 's/^ *Command=\([^ ]*\).*/\1/p')")
fi
# shellcheck source=preamble.sh
source "$here/preamble.sh" || { echo "error: no preamble.sh in '$here'; submit the script from slurm/" >&2; exit 2; }
# One single-threaded rank per core: keep numba/BLAS from starting a thread pool in every rank.
holstein_threads 1

echo "holstein-generate: ${SLURM_NTASKS:-?} ranks on ${SLURM_JOB_NUM_NODES:-?} node(s), config $config"
exec srun --kill-on-bad-exit=1 "$PYTHON" -m holstein_dist.generate \
    --config "$config" --backend mpi "$@"
