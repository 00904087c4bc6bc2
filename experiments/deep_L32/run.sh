#!/usr/bin/env bash
# Deep quench (g 0 -> 1) at the paper's L = 32, CPU scale: 128 train / 16 val / 64 test trajectories x 1000
# predictions. Trains the small PARC and, for the paper's central claim, a standard CNN of about the same
# size with the same data, curriculum and steps; evaluates both over the whole test split.
#   bash experiments/deep_L32/run.sh             (~3.5 h on 2 CPU cores; WORK=DIR for the large files)
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/../lib.sh"
WORK=${WORK:-$HERE/work}
cd "$ROOT"

stage generate "$PY" -m holstein_dist.generate --config "$HERE/data.yaml" --out "$WORK/data" --workers 2
for model in parc cnn; do
  config=$HERE/train.yaml; [ $model = cnn ] && config=$HERE/train_cnn.yaml
  stage "train_$model" "$PY" -m holstein_dist.train --config "$config" data="$WORK/data" run_dir="$WORK/run_$model"
  stage "export_$model" "$PY" -c "from holstein_dist.checkpoints import export_model; export_model('$WORK/run_$model', '$HERE/model_$model.pt')"
  stage "evaluate_$model" "$PY" -m holstein_dist.evaluate --checkpoint "$HERE/model_$model.pt" --data "$WORK/data" \
    --split test --out "$WORK/eval_$model"
  keep_results "$WORK/eval_$model" "$HERE/eval_$model"
  "$PY" -m holstein_dist.results curve "$WORK/run_$model" --out "$HERE/training_curve_$model.csv"
done
cp "$HERE/eval_parc/report.json" "$HERE/report.json"
"$PY" -m holstein_dist.results table "$HERE/eval_parc/report.json" "$HERE/eval_cnn/report.json" \
  --names "PARC (small)" "standard CNN" --steps 1 10 100 1000 | tee "$HERE/results.md"
write_times "$HERE/wall_times.json"
