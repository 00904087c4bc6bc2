#!/usr/bin/env bash
# Shallow quench (g 0.5 -> 0.8), L = 16, round 4: the tiny standard CNN trained by the suite vs the original
# published tiny model, both evaluated on the same 64 test trajectories x 1200 steps.
#   1. one long single-step stage (train_n1_long.yaml: 24,000 steps, cosine lr 1e-3 -> 1e-5);
#   2. its checkpoint with the best long-rollout score on VALIDATION (4 trajectories x 1200 steps;
#      holstein_dist.results rollout-curve --export) is fine-tuned with n_step 8 at lr 1e-4 for 8,000 steps
#      (train_finetune_n8_long.yaml, init_from); every kept checkpoint's long validation errors are tabulated;
#   3. the fine-tune's LAST checkpoint gets group averaging over the ring's reflection and particle-hole
#      symmetries (--symmetrize: exactly equivariant, no new weights) and is rate-calibrated on validation
#      (holstein_dist.results calibrate: one factor on its increments, a coarse grid of +-1.2 % then a fine one
#      of +-0.05 % around the best), scored by --score balanced (RMSE pooled over 100-step windows and the
#      autocorrelation errors, half each): the model;
#   4. it and the original (as published, and with --symmetrize) are evaluated on the test split; tables;
#   5. a check on 32 more validation trajectories (another seed), which the calibration never saw.
#   bash experiments/shallow_L16/run.sh          (~1.5 h on 2 CPU cores; WORK=DIR for the large files)
# Round 1 (a curriculum of restarts at lr 1e-3) is in round1/, round 2 (a checkpoint chosen among a short
# fine-tune's, no calibration) in round2/, round 3 (steps 1-2 as here, calibrated without symmetrization by
# the per-step RMSE score) in round3/.
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/../lib.sh"
WORK=${WORK:-$HERE/work}
cd "$ROOT"
LONG_VAL=(--data "$WORK/data" --split val --steps 1200)

shallow_single_step "$HERE"
stage train_finetune "$PY" -m holstein_dist.train --config "$HERE/train_finetune_n8_long.yaml" data="$WORK/data" \
  run_dir="$WORK/run_finetune" init_from="$WORK/chosen_n1.pt"
stage curve_finetune "$PY" -m holstein_dist.results rollout-curve "$WORK/run_finetune" "${LONG_VAL[@]}" \
  --work "$WORK/curve_finetune" --out "$HERE/rollout_curve_val_finetune_long.csv"
last=$(ls "$WORK/run_finetune/checkpoints"/step-*.pt | sort | tail -1)
CALIBRATE=(--symmetrize --score balanced)
calibrate_twice "$last" "$HERE/model.pt" 0.012 13 "${LONG_VAL[@]}" "${CALIBRATE[@]}"
shallow_vs_original "$WORK/data"
# The original with the same group averaging (it cannot be rate-calibrated: its format has no increment factor).
stage evaluate_reference_symmetrized "$PY" -m holstein_dist.evaluate --checkpoint \
  "$REFERENCE/tiny-quench_0p5_0p8-L_16" --symmetrize --data "$WORK/data" --split test --steps 1200 \
  --out "$WORK/eval_reference_symmetrized"
keep_results "$WORK/eval_reference_symmetrized" "$HERE/eval_reference_symmetrized"
"$PY" -m holstein_dist.results table "$HERE/report.json" "$HERE/reference_report.json" \
  "$HERE/eval_reference_symmetrized/report.json" "$HERE/round3/report.json" \
  --names ours original "original + symmetrize" "round 3" --steps 1 100 600 1200 --window 100 \
  | tee "$HERE/results_pooled.md"

# The check: 32 validation trajectories of another seed (none of the 4 the factor was fitted on), three models.
shallow_val32 model:"$HERE/model.pt" round3:"$HERE/round3/model.pt" original:"$REFERENCE/tiny-quench_0p5_0p8-L_16"
"$PY" -m holstein_dist.results table "$WORK"/val32_{model,round3,original} --names "round 4" "round 3" original \
  --steps 1 100 600 1200 --window 100 | tee "$HERE/validation_32.md"
for score in balanced rmse; do
  echo "score $score:"
  "$PY" -m holstein_dist.results score "$WORK"/val32_{model,round3,original} --score $score
done | tee -a "$HERE/validation_32.md"

"$PY" -m holstein_dist.results curve "$WORK/run_n1" --out "$HERE/training_curve_n1.csv"
"$PY" -m holstein_dist.results curve "$WORK/run_finetune" --out "$HERE/training_curve_finetune_long.csv"
write_times "$HERE/wall_times.json"
