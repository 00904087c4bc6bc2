#!/usr/bin/env bash
# Deep quench, L = 32: train WITH the rollout guard. The best deep model so far is ../conserve/model.pt read
# with evaluate --conserve (rho back onto its initial spectrum, the total energy back to its initial value after
# every step). Here the guard is also in training: two 1,500-step runs of 8-step unrolled training from that
# model (batch 16, lr 1e-4 cosine, input noise 5e-3, one thread each, side by side), unroll_guarded.yaml (stage
# guard: conserve, restored straight through) and its control unroll_plain.yaml (no guard in training). Every
# checkpoint of both is read with --conserve on the 16 validation trajectories x 500 steps; the best by the climate
# score (chosen on validation) is then evaluated on the whole test split, 1000 steps, beside ../conserve's model.
#   bash experiments/deep_L32/guarded_training/run.sh    (~1 h on 2 CPU cores once the deep data exist)
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/../../lib.sh"
WORK=${WORK:-$HERE/work}
PARENT_WORK=${PARENT_WORK:-$HERE/../work}
DATA=$PARENT_WORK/data
cd "$ROOT"
# ../run.sh's data set; the generator skips the shards that are complete, so this is quick when they exist
stage generate "$PY" -m holstein_dist.generate --config "$HERE/../data.yaml" --out "$DATA" --workers 2

RUNS=(unroll_guarded unroll_plain)
for run in "${RUNS[@]}"; do
  OMP_NUM_THREADS=1 in_background "train_$run" "$PY" -m holstein_dist.train --config "$HERE/$run.yaml" data="$DATA" \
    run_dir="$WORK/run_$run" init_from="$HERE/../conserve/model.pt"
done
wait_background

for run in "${RUNS[@]}"; do
  stage "curve_$run" "$PY" -m holstein_dist.results rollout-curve "$WORK/run_$run" --data "$DATA" --split val \
    --steps 500 --at 1 10 100 --score climate --conserve --out "$HERE/rollout_curve_${run}_conserve.csv" \
    --work "$WORK/curve_$run" --export "$WORK/${run}_best.pt"
  "$PY" -m holstein_dist.results curve "$WORK/run_$run" --out "$HERE/training_curve_$run.csv"
done
# The parent and the two runs' best checkpoints, side by side on validation (the parent re-read here: a data set
# regenerated on another machine can differ from ../conserve's in the last bits, and the chaotic rollouts amplify
# that); the better run by the climate score goes to test.
PARENT=$HERE/../conserve/model.pt
checkpoint() { case $1 in parent) echo "$PARENT" ;; *) echo "$WORK/${1}_best.pt" ;; esac; }
REPORTS=()
for name in parent "${RUNS[@]}"; do
  stage "val_$name" "$PY" -m holstein_dist.evaluate --checkpoint "$(checkpoint "$name")" --data "$DATA" --split val \
    --steps 500 --baseline-steps 0 --no-plots --conserve --out "$WORK/val_$name"
  mkdir -p "$HERE/val/$name" && cp "$WORK/val_$name/report.json" "$HERE/val/$name/"
  REPORTS+=("$HERE/val/$name/report.json")
done
"$PY" -m holstein_dist.results table "${REPORTS[@]}" --names parent "${RUNS[@]}" --steps 1 500 | tee "$HERE/results_val.md"
best=$("$PY" -m holstein_dist.results score --score climate "${REPORTS[@]:1}" | sort -g | head -1 | awk '{print $2}')
ROUND1=$(basename "$(dirname "$best")")
echo "round 1, chosen on validation: $ROUND1"

# Round 2, from round 1's choice: 16-step guarded unrolls (batch 8) against the same 1,000 extra steps at 8.
ROUND2=(continue_guarded_n16 continue_guarded_n8)
for run in "${ROUND2[@]}"; do
  OMP_NUM_THREADS=1 in_background "train_$run" "$PY" -m holstein_dist.train --config "$HERE/$run.yaml" data="$DATA" \
    run_dir="$WORK/run_$run" init_from="$WORK/${ROUND1}_best.pt"
done
wait_background
for run in "${ROUND2[@]}"; do
  stage "curve_$run" "$PY" -m holstein_dist.results rollout-curve "$WORK/run_$run" --data "$DATA" --split val \
    --steps 500 --at 1 10 100 --score climate --conserve --out "$HERE/rollout_curve_${run}_conserve.csv" \
    --work "$WORK/curve_$run" --export "$WORK/${run}_best.pt"
  "$PY" -m holstein_dist.results curve "$WORK/run_$run" --out "$HERE/training_curve_$run.csv"
  stage "val_$run" "$PY" -m holstein_dist.evaluate --checkpoint "$WORK/${run}_best.pt" --data "$DATA" --split val \
    --steps 500 --baseline-steps 0 --no-plots --conserve --out "$WORK/val_$run"
  mkdir -p "$HERE/val/$run" && cp "$WORK/val_$run/report.json" "$HERE/val/$run/"
done
FINAL=("$ROUND1" "${ROUND2[@]}")
FINAL_REPORTS=() && for run in "${FINAL[@]}"; do FINAL_REPORTS+=("$HERE/val/$run/report.json"); done
"$PY" -m holstein_dist.results table "$HERE/val/parent/report.json" "${FINAL_REPORTS[@]}" --names parent "${FINAL[@]}" \
  --steps 1 500 | tee "$HERE/results_val_round2.md"
best=$("$PY" -m holstein_dist.results score --score climate "${FINAL_REPORTS[@]}" | sort -g | head -1 | awk '{print $2}')
CHOSEN=$(basename "$(dirname "$best")")
echo "chosen on validation: $CHOSEN"
export_model "$WORK/${CHOSEN}_best.pt" "$HERE/model.pt"
for name in parent chosen; do
  ckpt=$PARENT && [ "$name" = chosen ] && ckpt=$HERE/model.pt
  stage "test_$name" "$PY" -m holstein_dist.evaluate --checkpoint "$ckpt" --data "$DATA" --split test --conserve \
    --out "$WORK/test_$name"
  keep_results "$WORK/test_$name" "$HERE/test_$name"
done
"$PY" -m holstein_dist.results table "$HERE/test_parent/report.json" "$HERE/test_chosen/report.json" \
  --names "parent + --conserve" "$CHOSEN + --conserve" --steps 1 10 100 1000 | tee "$HERE/results.md"
write_times "$HERE/wall_times.json"
