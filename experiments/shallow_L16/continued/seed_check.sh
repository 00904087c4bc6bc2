#!/usr/bin/env bash
# Round 6's continuation with another seed (seed 1: other dropout masks, windows and input noise), calibrated the same
# way: is round 6's one more target check over round 5 (rho_offdiag at step 1200, 0.5 % ahead of the original on the
# test split, 0.3 % on val32) a property of the recipe or of the draw? Only validation sets are read: the 4 trajectories
# the calibration fits on and the 32 of another seed (results target against the original, as in validation_32.md).
#   bash experiments/shallow_L16/continued/seed_check.sh   (~50 min on 2 CPU cores; after run.sh, whose val32 set and
#   original-model report it reuses; WORK=DIR as for run.sh)
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/../../lib.sh"
WORK=${WORK:-$HERE/work}
SHALLOW_DATA=${SHALLOW_DATA:-$HERE/../work/data}
LONG_VAL=(--data "$SHALLOW_DATA" --split val --steps 1200)
OUT=$HERE/seed1
mkdir -p "$OUT"
cd "$ROOT"
stage train_continue_seed1 "${TRAIN_2RANKS[@]}" --config "$HERE/train_continue_n8.yaml" data="$SHALLOW_DATA" \
  run_dir="$WORK/run_continue_seed1" init_from="$ROOT/experiments/shallow_L16/budget/model.pt" seed=1
last=$(ls "$WORK/run_continue_seed1/checkpoints"/step-*.pt | sort | tail -1)
HERE=$OUT CALIBRATION=seed1 calibrate_twice "$last" "$WORK/calibrated_seed1.pt" 0.012 13 "${LONG_VAL[@]}" \
  --symmetrize --score balanced
"$PY" -m holstein_dist.results curve "$WORK/run_continue_seed1" --out "$OUT/training_curve.csv"
HERE=$OUT shallow_val32 seed1:"$WORK/calibrated_seed1.pt"
mkdir -p "$OUT/val32" && cp "$WORK/val32_seed1/report.json" "$OUT/val32/"
{
  "$PY" -m holstein_dist.results score "$OUT/val32/report.json" "$HERE"/val32/{continued,round5}/report.json \
    --score balanced
  for n in seed1 continued round5; do
    report=$HERE/val32/$n/report.json && [ "$n" = seed1 ] && report=$OUT/val32/report.json
    printf '\n%s against the original (results target)\n\n' "$n"
    "$PY" -m holstein_dist.results target "$report" --reference "$HERE/val32/original/report.json"
  done
} | tee "$OUT/validation_32.md"
write_times "$OUT/wall_times.json"
