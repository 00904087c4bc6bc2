#!/usr/bin/env bash
# Shallow quench (g 0.5 -> 0.8), L = 16, round 2: the tiny standard CNN trained by the suite vs the original
# published tiny model, both evaluated on the same 64 test trajectories x 1200 steps.
#   1. one long single-step stage (train_n1_long.yaml: 24,000 steps, cosine lr 1e-3 -> 1e-5);
#   2. its checkpoint with the best long-rollout score on VALIDATION (4 trajectories x 1200 steps;
#      holstein_dist.results rollout-curve --export) is fine-tuned with n_step 8 at lr 1e-4
#      (train_finetune_n8.yaml, init_from);
#   3. the fine-tune's checkpoint with the best long-rollout score on validation is the model;
#   4. it and the original are evaluated on the test split; tables.
#   bash experiments/shallow_L16/round2/run.sh   (~1 h on 2 CPU cores; WORK=DIR for the large files)
# Stage 1 and the original model's evaluation are shared with round 3 (their outputs are one level up).
HERE=$(cd "$(dirname "$0")" && pwd)
UP=$(cd "$HERE/.." && pwd)
source "$UP/../lib.sh"
WORK=${WORK:-$UP/work}
cd "$ROOT"
LONG_VAL=(--data "$WORK/data" --split val --steps 1200)

shallow_single_step "$UP"
stage train_finetune "$PY" -m holstein_dist.train --config "$HERE/train_finetune_n8.yaml" data="$WORK/data" \
  run_dir="$WORK/run_finetune_r2" init_from="$WORK/chosen_n1.pt"
stage select_finetune "$PY" -m holstein_dist.results rollout-curve "$WORK/run_finetune_r2" "${LONG_VAL[@]}" \
  --work "$WORK/curve_finetune_r2" --out "$HERE/rollout_curve_val_finetune.csv" --export "$HERE/model.pt"
shallow_vs_original "$WORK/data"
"$PY" -m holstein_dist.results curve "$WORK/run_n1" --out "$UP/training_curve_n1.csv"
"$PY" -m holstein_dist.results curve "$WORK/run_finetune_r2" --out "$HERE/training_curve_finetune.csv"
write_times "$HERE/wall_times.json"
