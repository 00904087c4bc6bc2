#!/usr/bin/env bash
# Deep quench (g 0 -> 1) at the paper's L = 32, CPU scale: 128 train / 16 val / 64 test trajectories x 1000
# predictions. Trains the small PARC (train.yaml; stopped after stage 3 of 4, step 4500, for the session's
# time: max_steps=4500) and, for the paper's central claim, a standard CNN of the same size with the same
# data and curriculum for the same 3000 steps (stages 1-2) as the PARC's step-3000 checkpoint.
#   bash experiments/deep_L32/run.sh             (~2.5 h on 2 CPU cores; WORK=DIR for the large files)
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/../lib.sh"
WORK=${WORK:-$HERE/work}
cd "$ROOT"
SMALL=(--rollouts 32 --steps 500 --baseline-steps 0)

stage generate "$PY" -m holstein_dist.generate --config "$HERE/data.yaml" --out "$WORK/data" --workers 2
stage train_parc "$PY" -m holstein_dist.train --config "$HERE/train.yaml" data="$WORK/data" run_dir="$WORK/run_parc" \
  max_steps=4500
stage train_cnn "$PY" -m holstein_dist.train --config "$HERE/train_cnn.yaml" data="$WORK/data" run_dir="$WORK/run_cnn" \
  max_steps=3000
export_model "$WORK/run_parc" "$HERE/model.pt"                       # best.pt: chosen on validation
export_model "$WORK/run_parc/checkpoints/step-00003000.pt" "$HERE/model_parc_3000.pt"
export_model "$WORK/run_cnn" "$HERE/model_cnn_3000.pt"
# The main result: the whole test split, 1000 steps, autocorrelation lags 0..200.
stage evaluate "$PY" -m holstein_dist.evaluate --checkpoint "$HERE/model.pt" --data "$WORK/data" --split test \
  --out "$WORK/eval_parc"
keep_results "$WORK/eval_parc" "$HERE/eval_parc"
cp "$WORK/eval_parc/report.json" "$HERE/report.json"
# PARC vs CNN at equal data and steps, and the rollout-time projection: 32 rollouts x 500 steps (CPU time).
for name in cnn_3000 parc_3000 parc_500 parc_500_projected; do
  case $name in
    cnn_3000) args=(--checkpoint "$HERE/model_cnn_3000.pt") ;;
    parc_3000) args=(--checkpoint "$HERE/model_parc_3000.pt") ;;
    parc_500) args=(--checkpoint "$HERE/model.pt") ;;
    parc_500_projected) args=(--checkpoint "$HERE/model.pt" --project) ;;
  esac
  stage "evaluate_$name" "$PY" -m holstein_dist.evaluate "${args[@]}" --data "$WORK/data" --split test "${SMALL[@]}" \
    --out "$WORK/eval_$name"
  keep_results "$WORK/eval_$name" "$HERE/eval_$name"
done
"$PY" -m holstein_dist.results curve "$WORK/run_parc" --out "$HERE/training_curve.csv"
"$PY" -m holstein_dist.results curve "$WORK/run_cnn" --out "$HERE/training_curve_cnn.csv"
"$PY" -m holstein_dist.results table "$HERE/eval_parc_3000/report.json" "$HERE/eval_cnn_3000/report.json" \
  --names "PARC, 3000 steps" "standard CNN, 3000 steps" --steps 1 10 100 500 | tee "$HERE/results_parc_vs_cnn.md"
"$PY" -m holstein_dist.results table "$HERE/eval_parc_500/report.json" "$HERE/eval_parc_500_projected/report.json" \
  --names "PARC" "PARC + --project" --steps 1 10 100 500 | tee "$HERE/results_projection.md"
write_times "$HERE/wall_times.json"
