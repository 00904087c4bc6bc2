#!/usr/bin/env bash
# Deep quench, L = 32: weight-space interpolation between the chosen deep model of its time and its fine-tune; the
# result is the chosen deep model now (model.pt). The model before (../long_unroll/model.pt) swings too slowly late
# in its rollouts (lattice autocorrelation trough at lag 57-60, truth 42 / 55 / 58 by third of 1000 steps); 400 more
# steps of its guarded recipe (../work_share/momenta.yaml, the momenta-split control there) swing too fast (45-48).
# Both score ~0.14 on the 64 extra validation trajectories. The two lie in one basin (one is the other's fine-tune at
# lr 1e-4), so points on the line between their weights are models too (results average --weights):
#   1. the control, trained here when $WORK has no momenta_best.pt (400 steps on one core, ~22 min);
#   2. the interpolations with weights 0.25, 0.5 and 0.75 on the fine-tune, each on the 64 extra validation
#      trajectories x 1000 steps (2 ranks, the momenta-split guard --conserve, ~5 min each);
#   3. the best two there (64 rollouts cannot rank points this close) on the 256 validation trajectories x 1000
#      steps (~17 min each), and the better of them on to the 256 test trajectories, where it beats the chosen model
#      on both validation sets (lib.sh promote; the model to beat: ../long_unroll/model.pt, CHOSEN_BY=long_unroll);
#   4. the promoted model on the 64-trajectory test split of ../run.sh too (~5 min).
#   bash experiments/deep_L32/interpolation/run.sh    (~1 h 30 min on 2 CPU cores once the deep data sets exist)
HERE=$(cd "$(dirname "$0")" && pwd)
CHOSEN_BY=long_unroll  # the chosen deep model when this ran: the one to beat
source "$HERE/../../lib.sh"
deep_data
deep_val64
CHOSEN=$DEEP/long_unroll/model.pt

# 1. the fine-tune: ../work_share's momenta control, its first 400 of 800 steps
if [ ! -f "$WORK/momenta_best.pt" ]; then
  train_side_by_side "momenta:$DEEP/work_share/momenta.yaml:$CHOSEN" max_steps=400
  export_model "$WORK/run_momenta/checkpoints/step-00000400.pt" "$WORK/momenta_best.pt"
fi
# 2. the line between them; the endpoints' val64 reports are ../long_unroll's and ../work_share's
RUNS=()
for weight in ${WEIGHTS:-0.25 0.5 0.75}; do
  "$PY" -m holstein_dist.results average "$CHOSEN" "$WORK/momenta_best.pt" \
    --weights "$("$PY" -c "print(1 - $weight)")" "$weight" --out "$WORK/mix$weight"_best.pt
  validate_2ranks val64 "mix$weight" "$WORK/mix${weight}_best.pt" "$VAL64_DATA" --conserve
  RUNS+=("mix$weight")
done
# 3. the tables and the promotion
beside_chosen_val64 "${RUNS[@]}"
deep_val256
TOP=()
for name in $(REPORTS=val64 ranked "${RUNS[@]}" | sed -n 1,2p); do
  validate_2ranks val256 "$name" "$WORK/${name}_best.pt" "$VAL256_DATA" --conserve
  TOP+=("$name")
done
"$PY" -m holstein_dist.results table "$CHOSEN_VAL256" "${TOP[@]/#/$HERE/val256/}" \
  --names "chosen deep model ($CHOSEN_BY)" "${TOP[@]}" --steps 1 1000 | tee "$HERE/results_val256_top2.md"
BEST=$(REPORTS=val256 best_of "${TOP[@]}")
promote "$BEST" "weight ${BEST#mix} on the fine-tune" --conserve
# 4. the promoted model on ../run.sh's 64-trajectory test split as well, the set of the README's deep table
if [ -f "$HERE/test_chosen/report.json" ]; then
  evaluate_2ranks test64 "$WORK/test64" --checkpoint "$HERE/model.pt" --data "$DATA" --split test --conserve \
    --baseline-steps 0 --no-plots
  mkdir -p "$HERE/test64" && cp "$WORK/test64/report.json" "$HERE/test64/"
fi
write_times "$HERE/wall_times.json"
