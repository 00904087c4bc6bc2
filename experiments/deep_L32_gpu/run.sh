#!/usr/bin/env bash
# Deep quench (g 0 -> 1), L = 32, on ONE GPU inside a fixed wall-time budget: the CPU experiment's data set
# (../deep_L32/data.yaml: 128 train / 16 val / 64 test trajectories x 1000 predictions, same seed) and model
# (the small PARC), trained with the shallow round-2 recipe scaled to whatever the budget allows:
#   1. generate the data set (Dask, all cores);
#   2. pilot: time 300 single-step and 100 unrolled (n_step 8) training steps (PILOT_STEPS), to size the stages;
#   3. stage 1, train_n1.yaml: one annealed single-step stage (55 % of the training time);
#   4. its checkpoints scored on validation (16 trajectories x 1000 steps; `results rollout-curve --score
#      climate`: autocorrelation error of both order parameters, divergence ranked last); the best is
#   5. fine-tuned, train_finetune.yaml: n_step 8, lr 1e-4, one cosine decay (45 %); scored the same way;
#   6. the chosen model on the test split (1000 steps, lags 0..200), plain and with --project, beside the CPU
#      experiment's model (../deep_L32/model.pt) on the same test split; one table.
#   BUDGET_S=490 bash experiments/deep_L32_gpu/run.sh     (the committed run: one H200, 490 s in all)
# Environment: BUDGET_S (whole run, seconds; default 540), WORK (large files; default <here>/work), RESULTS (small
# outputs; default <here>), WORKERS (generation; default all cores), BATCH (64), TRAIN_ARGS (KEY=VALUE for both trainings, e.g.
# num_workers=2), PYTHON; a rehearsal on a small data set (CPU, minutes): DATA_ARGS="splits.train=4 splits.val=2
# splits.test=2 n_steps=60" EVAL_STEPS=50 AT="1 5 10" PILOT_STEPS="30 10" MIN_STEPS=20 BATCH=8
# TRAIN_ARGS="num_workers=1 threads=1".
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/../lib.sh"
T0=$SECONDS
BUDGET_S=${BUDGET_S:-540}
WORK=${WORK:-$HERE/work}
RESULTS=${RESULTS:-$HERE}
WORKERS=${WORKERS:-$(nproc)}
EVAL_STEPS=${EVAL_STEPS:-1000}
RESERVE_S=${RESERVE_S:-170}   # after training: two selections (~10 checkpoints each) and three test evaluations
read -r -a DATA_ARGS <<< "${DATA_ARGS:-}"
read -r -a TRAIN_ARGS <<< "${TRAIN_ARGS:-}"
read -r PILOT_N1 PILOT_N8 <<< "${PILOT_STEPS:-300 100}"
read -r -a AT <<< "${AT:-1 10 100}"   # RMSE columns of the curves and the table (with EVAL_STEPS)
MIN_STEPS=${MIN_STEPS:-200}
BATCH=${BATCH:-64}
TRAIN_ARGS+=(batch_size="$BATCH")
mkdir -p "$WORK" "$RESULTS"
cd "$ROOT"
left() { echo $(( BUDGET_S - (SECONDS - T0) )); }
note() { echo "[deep_L32_gpu $(( SECONDS - T0 )) s] $*"; }
# steps_for SECONDS RATE_FILE: optimizer steps that fit in SECONDS at the pilot's steps/s (85 %: validation and
# checkpoints are not in the pilot's rate), at least MIN_STEPS
steps_for() {
  "$PY" -c "import sys; print(max($MIN_STEPS, int(0.85 * float(sys.argv[1]) * float(open(sys.argv[2]).read()))))" "$1" "$2"
}
# pilot_rate LOG BATCH > steps/s of the last logged training interval
pilot_rate() { grep -o '[0-9.]* samples/s' "$1" | tail -1 | awk -v b="$2" '{print $1 / b}'; }
select_best() {  # select_best RUN NAME: score every kept checkpoint on validation, export the best
  stage "select_$2" "$PY" -m holstein_dist.results rollout-curve "$1" --data "$WORK/data" --split val \
    --steps "$EVAL_STEPS" --at "${AT[@]}" --score climate --work "$WORK/curve_$2" \
    --out "$RESULTS/rollout_curve_val_$2.csv" --export "$WORK/chosen_$2.pt"
}

stage generate "$PY" -m holstein_dist.generate --config "$HERE/../deep_L32/data.yaml" --out "$WORK/data" \
  --workers "$WORKERS" "${DATA_ARGS[@]}"

note "pilot"
rm -rf "$WORK/pilot_n1" "$WORK/pilot_n8"
stage pilot "$PY" -m holstein_dist.train --config "$HERE/train_n1.yaml" data="$WORK/data" run_dir="$WORK/pilot_n1" \
  max_steps="$PILOT_N1" val_every=100000 ckpt_every=100000 log_every=$(( PILOT_N1 / 3 )) "${TRAIN_ARGS[@]}" \
  > "$WORK/pilot_n1.log" 2>&1
"$PY" -m holstein_dist.train --config "$HERE/train_finetune.yaml" data="$WORK/data" run_dir="$WORK/pilot_n8" \
  init_from="$WORK/pilot_n1" max_steps="$PILOT_N8" val_every=100000 ckpt_every=100000 log_every=$(( PILOT_N8 / 2 )) \
  "${TRAIN_ARGS[@]}" > "$WORK/pilot_n8.log" 2>&1
pilot_rate "$WORK/pilot_n1.log" "$BATCH" > "$WORK/rate_n1"
pilot_rate "$WORK/pilot_n8.log" "$BATCH" > "$WORK/rate_n8"
train_s=$(( $(left) - RESERVE_S - 30 ))   # 30 s: two trainings' start-up
time_n1=$(( train_s * 55 / 100 )); time_ft=$(( train_s * 45 / 100 ))
(( time_n1 < 10 )) && time_n1=10; (( time_ft < 10 )) && time_ft=10   # an overrun budget still trains a little
steps_n1=$(steps_for "$time_n1" "$WORK/rate_n1")
steps_ft=$(steps_for "$time_ft" "$WORK/rate_n8")
note "pilot: $(cat "$WORK/rate_n1") steps/s at n_step 1, $(cat "$WORK/rate_n8") at n_step 8; $train_s s for" \
  "training: $steps_n1 single-step + $steps_ft fine-tune steps"
epoch_n1=$(( steps_n1 / 10 )); epoch_ft=$(( steps_ft / 8 ))

rm -rf "$WORK/run_n1" "$WORK/run_finetune"
capped $(( time_n1 + 20 )) train_n1 "$PY" -m holstein_dist.train --config "$HERE/train_n1.yaml" data="$WORK/data" \
  run_dir="$WORK/run_n1" curriculum.batches_per_epoch=$epoch_n1 curriculum.warmup_steps=$(( epoch_n1 / 5 )) val_every=$epoch_n1 \
  ckpt_every=$epoch_n1 "${TRAIN_ARGS[@]}"
select_best "$WORK/run_n1" n1
capped $(( time_ft + 20 )) train_finetune "$PY" -m holstein_dist.train --config "$HERE/train_finetune.yaml" \
  data="$WORK/data" run_dir="$WORK/run_finetune" init_from="$WORK/chosen_n1.pt" curriculum.batches_per_epoch=$epoch_ft \
  curriculum.warmup_steps=$(( epoch_ft / 10 )) val_every=$epoch_ft ckpt_every=$epoch_ft "${TRAIN_ARGS[@]}"
select_best "$WORK/run_finetune" finetune
# The model: the fine-tune's best unless it scores worse on validation than the single-step choice it started from.
best=$("$PY" - "$RESULTS/rollout_curve_val_n1.csv" "$RESULTS/rollout_curve_val_finetune.csv" <<'EOF'
import csv, sys
best = {name: min(float(r["score"]) for r in csv.DictReader(open(path)))
        for name, path in zip(("n1", "finetune"), sys.argv[1:])}
print("finetune" if best["finetune"] <= best["n1"] else "n1")
EOF
)
note "model: the $best stage's choice"
cp "$WORK/chosen_$best.pt" "$RESULTS/model.pt"

TEST=(--data "$WORK/data" --split test --steps "$EVAL_STEPS" --baseline-steps 0)
stage evaluate "$PY" -m holstein_dist.evaluate --checkpoint "$RESULTS/model.pt" "${TEST[@]}" --out "$WORK/eval"
keep_results "$WORK/eval" "$RESULTS/eval"
cp "$WORK/eval/report.json" "$RESULTS/report.json"
stage evaluate_projected "$PY" -m holstein_dist.evaluate --checkpoint "$RESULTS/model.pt" "${TEST[@]}" --project \
  --out "$WORK/eval_projected"
keep_results "$WORK/eval_projected" "$RESULTS/eval_projected"
stage evaluate_cpu_model "$PY" -m holstein_dist.evaluate --checkpoint "$HERE/../deep_L32/model.pt" "${TEST[@]}" \
  --out "$WORK/eval_cpu_model"
keep_results "$WORK/eval_cpu_model" "$RESULTS/eval_cpu_model"
"$PY" -m holstein_dist.results table "$RESULTS/eval/report.json" "$RESULTS/eval_projected/report.json" \
  "$RESULTS/eval_cpu_model/report.json" --names "GPU recipe" "GPU recipe + --project" "CPU experiment's model" \
  --steps "${AT[@]}" "$EVAL_STEPS" | tee "$RESULTS/results.md"
"$PY" -m holstein_dist.results curve "$WORK/run_n1" --out "$RESULTS/training_curve_n1.csv"
"$PY" -m holstein_dist.results curve "$WORK/run_finetune" --out "$RESULTS/training_curve_finetune.csv"
TIMES+=("\"steps_n1\": $steps_n1" "\"steps_finetune\": $steps_ft" "\"pilot_steps_per_s_n1\": $(cat "$WORK/rate_n1")"
        "\"pilot_steps_per_s_n8\": $(cat "$WORK/rate_n8")" "\"total\": $(( SECONDS - T0 ))")
write_times "$RESULTS/wall_times.json"
note "done in $(( SECONDS - T0 )) s (budget $BUDGET_S s)"
