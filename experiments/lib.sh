# Shared by the experiments' run.sh scripts: the project's python, stage timing, export and tables.
# Each script reruns its experiment from nothing: generate -> train -> export -> evaluate -> tables.
# Large outputs (dataset, run directory) go to $WORK (default: <experiment>/work, git-ignored); the
# small results (model.pt, reports, plots, curves, wall times) are written beside the script.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
REFERENCE=${HOLSTEIN_REFERENCE:-$ROOT/../shared/reference/pretrained}
TIMES=()

# stage NAME COMMAND...: run one stage, record its wall time (seconds) for wall_times.json
stage() {
  local name=$1; shift
  echo "=== $name: $*"
  local t0=$SECONDS
  "$@"
  TIMES+=("\"$name\": $((SECONDS - t0))")
}

write_times() {  # write_times FILE
  (IFS=,; echo "{${TIMES[*]}}") | "$PY" -c 'import json,sys; print(json.dumps(json.load(sys.stdin), indent=1))' > "$1"
}

# keep_results EVAL_DIR DEST_DIR: the report and its plots (not the TensorBoard copy)
keep_results() {
  mkdir -p "$2"
  cp "$1"/report.json "$1"/*.png "$2"/
}
