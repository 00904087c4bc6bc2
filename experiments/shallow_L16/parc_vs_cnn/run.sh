#!/usr/bin/env bash
# The paper's central claim on the shallow quench, at equal data and optimizer budget: the small PARC
# (train_parc.yaml) and the tiny standard CNN (../../ensembles/shallow_train.yaml as one model: the same
# recipe, member 0's seed) trained for the same 6,000 single-step steps of batch 64 on the same data; each
# evaluated at its last checkpoint on the 64 test trajectories x 1200 steps, then rate-calibrated on
# validation (results calibrate) and evaluated again. Tables in results.md.
#   bash experiments/shallow_L16/parc_vs_cnn/run.sh   (~50 min on 2 CPU cores; DATA=DIR reuses a generated set)
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/../../lib.sh"
WORK=${WORK:-$HERE/work}
DATA=${DATA:-$WORK/data}
cd "$ROOT"
stage generate "$PY" -m holstein_dist.generate --config configs/data/shallow_L16.yaml --out "$DATA" --workers 2
stage train_parc "$PY" -m holstein_dist.train --config "$HERE/train_parc.yaml" data="$DATA" run_dir="$WORK/run_parc"
stage train_cnn "$PY" -m holstein_dist.train --config "$HERE/../../ensembles/shallow_train.yaml" data="$DATA" \
  run_dir="$WORK/run_cnn" ensemble.members=1
for name in parc cnn; do
  last="$WORK/run_$name/checkpoints/step-00006000.pt"
  stage "evaluate_$name" "$PY" -m holstein_dist.evaluate --checkpoint "$last" --data "$DATA" --split test \
    --steps 1200 --out "$WORK/eval_$name"
  stage "calibrate_$name" "$PY" -m holstein_dist.results calibrate "$last" --data "$DATA" --split val --steps 1200 \
    --span 0.012 --points 13 --work "$WORK/calibrate_$name" --out "$HERE/calibration_$name.csv" \
    --export "$HERE/model_${name}_calibrated.pt"
  stage "evaluate_${name}_calibrated" "$PY" -m holstein_dist.evaluate --checkpoint "$HERE/model_${name}_calibrated.pt" \
    --data "$DATA" --split test --steps 1200 --out "$WORK/eval_${name}_calibrated"
  cp "$WORK/eval_$name/report.json" "$HERE/report_$name.json"
  cp "$WORK/eval_${name}_calibrated/report.json" "$HERE/report_${name}_calibrated.json"
done
"$PY" -m holstein_dist.results table "$HERE"/report_{parc_calibrated,cnn_calibrated,parc,cnn}.json \
  --names "PARC, calibrated" "CNN, calibrated" "PARC" "CNN" --steps 1 100 600 1200 | tee "$HERE/results.md"
write_times "$HERE/wall_times.json"
