#!/usr/bin/env bash
# Shallow quench, L = 16: points on the line between round 5's single-step model and its n_step-8 fine-tune.
# On the deep quench the point halfway between a model and its fine-tune beat both (../../deep_L32/interpolation).
# Round 5 (../budget) was fine-tuned from its chosen single-step checkpoint, so the two share a basin:
#   1. results average --weights (1-w) w of budget's chosen_n1.pt and the fine-tune's last checkpoint, w = 0.25 / 0.5 /
#      0.75 (the grid fixed before any was read);
#   2. each group-averaged and rate-calibrated exactly as round 5 (--symmetrize --score balanced, coarse +-1.2 % then
#      fine +-0.05 %) on the 4 validation trajectories; the best balanced score among them goes on;
#   3. it, round 5 and the original on the 32 validation trajectories of another seed; only if it is ahead of round 5
#      there, the test split (lib.sh shallow_candidate with BASE = round 5). This ran under the rule before
#      ahead_on_target, the balanced score alone, which sent w = 0.75 (7 target checks met on val32) to the test split
#      past round 5 (9); a rerun stops after val32.
#   bash experiments/shallow_L16/budget_interpolation/run.sh   (~15 min on 2 CPU cores after ../budget/run.sh;
#   BUDGET_WORK=DIR for budget's work directory, WORK=DIR for this one's large files)
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/../../lib.sh"
WORK=${WORK:-$HERE/work}
BUDGET_WORK=${BUDGET_WORK:-$HERE/../budget/work}
SHALLOW_DATA=${SHALLOW_DATA:-$HERE/../work/data}
cd "$ROOT"
LONG_VAL=(--data "$SHALLOW_DATA" --split val --steps 1200)
[ -f "$BUDGET_WORK/calibrated.pt" ] || WORK=$BUDGET_WORK SHALLOW_DATA=$SHALLOW_DATA bash "$HERE/../budget/run.sh"
last=$(ls "$BUDGET_WORK/run_finetune/checkpoints"/step-*.pt | sort | tail -1)
mkdir -p "$WORK"
best= best_score=
for w in 0.25 0.5 0.75; do
  "$PY" -m holstein_dist.results average "$BUDGET_WORK/chosen_n1.pt" "$last" \
    --weights "$("$PY" -c "print(1 - $w)")" "$w" --out "$WORK/mix$w.pt"
  CALIBRATION=mix$w calibrate_twice "$WORK/mix$w.pt" "$WORK/mix${w}_calibrated.pt" 0.012 13 "${LONG_VAL[@]}" \
    --symmetrize --score balanced
  score=$(best_calibrated_score "$HERE/mix${w}_fine.csv")
  echo "w = $w: balanced score on the 4 validation trajectories $score" | tee -a "$HERE/scores_val4.txt"
  if [ -z "$best" ] || lower "$score" "$best_score"; then best=$w best_score=$score; fi
done
echo "best on the 4: w = $best ($best_score); round 5: $(best_calibrated_score "$HERE/../budget/calibration_fine.csv")" \
  | tee -a "$HERE/scores_val4.txt"
BASE="round5:$HERE/../budget/model.pt:round 5" shallow_candidate "mix$best" "round 5 interpolated, w = $best" \
  "$WORK/mix${best}_calibrated.pt" "$SHALLOW_DATA"
write_times "$HERE/wall_times.json"
