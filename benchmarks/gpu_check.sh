#!/usr/bin/env bash
# GPU readiness check in one command (<= 8 minutes on one H100/H200, set-up included):
#   bash benchmarks/gpu_check.sh [--golden DIR] [--nproc N] [--dry-run] [any benchmarks/gpu_check.py option]
# Sets up .gpu_check/venv (once), then runs benchmarks/gpu_check.py with what the 8 minutes leave, prints the
# summary table, writes gpu_check.json (and gpu_check.log) to $OUT if set, else to the current directory.
# Environment: HOLSTEIN_PYTHON=<python with torch> skips the set-up; HOLSTEIN_TORCH=<pip spec> (default:
# unpinned `torch`, the CUDA wheel); HOLSTEIN_GOLDEN=<dir> the golden trajectories (default
# ../shared/reference/golden, else .gpu_check/golden); GPU_CHECK_SECONDS (default 480) the whole run's limit.
set -euo pipefail
t0=$SECONDS
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=$ROOT/.gpu_check/venv
LIMIT=${GPU_CHECK_SECONDS:-480}
dest=${OUT:-$PWD}
mkdir -p "$dest"

log() { echo "[gpu_check] $*"; }
has_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }
# Run from / so that the checkout on sys.path cannot make a missing install look present.
imports() { (cd / && "$1" -c "$2") >/dev/null 2>&1; }

setup() {
  if [ -n "${HOLSTEIN_PYTHON:-}" ]; then PY=$HOLSTEIN_PYTHON; return; fi
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV"
    # --system-site-packages: an image that already holds a CUDA torch (and maybe no network) downloads nothing.
    "${PYTHON:-python3}" -m venv --system-site-packages "$VENV"
  fi
  PY=$VENV/bin/python
  local want_cuda="import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"
  if ! imports "$PY" "import torch" || { has_gpu && ! imports "$PY" "$want_cuda"; }; then
    log "installing ${HOLSTEIN_TORCH:-torch}"
    "$PY" -m pip install -q "${HOLSTEIN_TORCH:-torch}"
  fi
  if ! imports "$PY" "import holstein_dist, numba, h5py, yaml"; then
    log "installing holstein-dist (editable)"
    # Offline (no index reachable) the project alone is installed against what the image has.
    "$PY" -m pip install -q -e . \
      || "$PY" -m pip install -q --no-deps --no-build-isolation -e . \
      || log "pip install -e . failed; running from the checkout (PYTHONPATH)"
  fi
  export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
}

setup
budget=$(( LIMIT - (SECONDS - t0) - 30 ))   # 30 s for start-up, the report and exit
[ "$budget" -lt 120 ] && budget=120
log "set-up took $(( SECONDS - t0 )) s; sections get ${budget} s"
set +e
PYTHONUNBUFFERED=1 "$PY" benchmarks/gpu_check.py --out "$dest" --budget-s "$budget" "$@" 2>&1 | tee "$dest/gpu_check.log"
rc=${PIPESTATUS[0]}
log "finished in $(( SECONDS - t0 )) s (exit $rc)"
exit "$rc"
