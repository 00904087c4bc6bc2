#!/usr/bin/env bash
# Deep quench, L = 32: does unrolled training, with or without the loss term on the lattice temperature
# (curriculum kinetic_weight), keep the lattice warm? Two 1,500-step runs of 8-step unrolled training (batch 16,
# lr 1e-4 cosine, input noise 5e-3, one thread each, side by side) from ../lattice_motion's noise-carried
# continuation at step 6,000: unroll_control.yaml (no term) and unroll_kinetic.yaml (kinetic_weight: 1).
# Their checkpoints are read on the 16 validation trajectories x 500 steps, plain and with evaluate --conserve.
# Needs ../run.sh's data and ../lattice_motion's continuations (its run.sh is run first when they are absent).
#   bash experiments/deep_L32/lattice_temperature/run.sh    (~50 min on 2 CPU cores when those exist)
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/../../lib.sh"
WORK=${WORK:-$HERE/work}
cd "$ROOT"
needs_lattice_motion
INIT=$MOTION_WORK/run_continue_carried/checkpoints/step-00006000.pt

train() {  # train NAME: one run in the background, one thread (its config says threads: 1)
  OMP_NUM_THREADS=1 in_background "train_$1" "$PY" -m holstein_dist.train --config "$HERE/$1.yaml" data="$DATA" \
    run_dir="$WORK/run_$1" init_from="$INIT"
}
train unroll_control
train unroll_kinetic
wait_background

REPORTS=() NAMES=()
for run in unroll_control unroll_kinetic; do
  for step in 00000500 00001500; do
    for mode in plain conserve; do
      name=${run}_${step#0000}_$mode flags=() && [ "$mode" = conserve ] && flags=(--conserve)
      stage "evaluate_$name" "$PY" -m holstein_dist.evaluate --checkpoint "$WORK/run_$run/checkpoints/step-$step.pt" \
        --data "$DATA" --split val --steps 500 --baseline-steps 0 --no-plots "${flags[@]}" --out "$WORK/eval_$name"
      mkdir -p "$HERE/val/$name" && cp "$WORK/eval_$name/report.json" "$HERE/val/$name/"
      REPORTS+=("$HERE/val/$name/report.json") NAMES+=("${name#unroll_}")
    done
  done
  "$PY" -m holstein_dist.results curve "$WORK/run_$run" --out "$HERE/training_curve_$run.csv"
done
"$PY" -m holstein_dist.results table "${REPORTS[@]}" --names "${NAMES[@]}" --steps 1 500 | tee "$HERE/results.md"
write_times "$HERE/wall_times.json"
