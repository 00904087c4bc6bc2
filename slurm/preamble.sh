# The preamble every slurm/*.sh job shares (sourced, not run): site modules, the virtual environment,
# the python to run and the threads per rank. One place, so the three jobs cannot drift apart.
#
# Site specifics come from sbatch flags and these environment variables (all optional), read when the
# job starts:
#   HOLSTEIN_MODULES   modules to load first, e.g. "cuda/12.4 nccl" or "gcc/12 openmpi/4.1"
#   HOLSTEIN_VENV      virtual environment to activate (default: .venv of the submit directory, if any)
#   HOLSTEIN_PYTHON    the python to run (default: python on PATH after the two above)
#   HOLSTEIN_THREADS   threads per rank (default: the job script's choice, see holstein_threads)
#
# Sets PYTHON and exports OMP/NUMBA/OPENBLAS/MKL_NUM_THREADS. Usage, in a job script:
#   source "$here/preamble.sh"; holstein_threads "${SLURM_CPUS_PER_TASK:-1}"

if [[ -n "${HOLSTEIN_MODULES:-}" ]]; then
    # shellcheck disable=SC2086  # a list of module names
    module load $HOLSTEIN_MODULES
fi
holstein_venv=${HOLSTEIN_VENV:-${SLURM_SUBMIT_DIR:-.}/.venv}
if [[ -f "$holstein_venv/bin/activate" ]]; then
    # shellcheck disable=SC1091
    source "$holstein_venv/bin/activate"
elif [[ -n "${HOLSTEIN_VENV:-}" ]]; then
    echo "error: HOLSTEIN_VENV=$HOLSTEIN_VENV has no bin/activate; point it at a virtual environment" >&2
    exit 2
fi
PYTHON=${HOLSTEIN_PYTHON:-python}

# holstein_threads N: every thread pool of a rank (torch/OpenMP, numba, BLAS) gets N threads, or
# HOLSTEIN_THREADS when set. Ranks share the node: a pool sized to the whole node in every rank would
# oversubscribe it.
holstein_threads() {
    local threads=${HOLSTEIN_THREADS:-$1}
    export OMP_NUM_THREADS=$threads NUMBA_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads \
        MKL_NUM_THREADS=$threads
}
