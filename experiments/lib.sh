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

# shallow_vs_original DATA: evaluate $HERE/model.pt and the original tiny shallow-quench model on the same test
# split (1200 steps), keep both reports and plots beside the script, and write the comparison table results.md.
shallow_vs_original() {
  local data=$1
  stage evaluate "$PY" -m holstein_dist.evaluate --checkpoint "$HERE/model.pt" --data "$data" --split test \
    --steps 1200 --out "$WORK/eval"
  stage evaluate_reference "$PY" -m holstein_dist.evaluate --checkpoint "$REFERENCE/tiny-quench_0p5_0p8-L_16" \
    --data "$data" --split test --steps 1200 --out "$WORK/eval_reference"
  keep_results "$WORK/eval" "$HERE/eval"
  keep_results "$WORK/eval_reference" "$HERE/eval_reference"
  cp "$WORK/eval/report.json" "$HERE/report.json"
  cp "$WORK/eval_reference/report.json" "$HERE/reference_report.json"
  "$PY" -m holstein_dist.results table "$HERE/report.json" "$HERE/reference_report.json" --names ours original \
    --steps 1 100 600 1200 | tee "$HERE/results.md"
}
