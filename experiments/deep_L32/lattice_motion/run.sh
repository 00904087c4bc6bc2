#!/usr/bin/env bash
# Deep quench, L = 32: why the rollouts freeze or blow up, read from the report's lattice_motion section (the
# lattice's kinetic energy and the CDW's domain walls per 100-step window). Three 6,000-step single-step
# continuations of the CPU experiment's PARC (../model.pt), batch 64, lr 3e-4, one thread each (~80 min each;
# two run side by side, then the third): input noise 2e-2 (the control), 5e-3, and 2e-2 carried into the
# targets (curriculum noise_carry: 1, so the model is not taught to remove noise). The parent and the
# checkpoints are evaluated on the 16 validation trajectories x 500 steps (no test-split tuning).
# Needs ../run.sh's data ($PARENT_WORK/data, generated here if absent) and ../model.pt.
#   bash experiments/deep_L32/lattice_motion/run.sh    (~2.7 h on 2 CPU cores; WORK=DIR for the large files)
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/../../lib.sh"
WORK=${WORK:-$HERE/work}
PARENT_WORK=${PARENT_WORK:-$HERE/../work}
cd "$ROOT"
DATA=$PARENT_WORK/data
VAL=(--data "$DATA" --split val --steps 500 --baseline-steps 0 --no-plots)

[ -f "$DATA/manifest.json" ] || stage generate "$PY" -m holstein_dist.generate --config "$HERE/../data.yaml" \
  --out "$DATA" --workers 2

train() {  # train NAME: one continuation in the background, one thread (its config says threads: 1)
  OMP_NUM_THREADS=1 in_background "train_$1" "$PY" -m holstein_dist.train --config "$HERE/$1.yaml" data="$DATA" \
    run_dir="$WORK/run_$1" init_from="$HERE/../model.pt"
}
train continue_noise2e-2
train continue_carried
wait_background
train continue_noise5e-3
wait_background

evaluate() {  # evaluate NAME MODEL
  stage "evaluate_$1" "$PY" -m holstein_dist.evaluate --checkpoint "$2" "${VAL[@]}" --out "$WORK/eval_$1"
  mkdir -p "$HERE/$1" && cp "$WORK/eval_$1/report.json" "$HERE/$1/"
}
evaluate parent "$HERE/../model.pt"
evaluate n1_6000 "$WORK/run_continue_noise2e-2/checkpoints/step-00006000.pt"
evaluate low6000 "$WORK/run_continue_noise5e-3/checkpoints/step-00006000.pt"
evaluate carry1000 "$WORK/run_continue_carried/checkpoints/step-00001000.pt"
evaluate carry6000 "$WORK/run_continue_carried/checkpoints/step-00006000.pt"
"$PY" -m holstein_dist.results table "$HERE"/{parent,n1_6000,low6000,carry1000,carry6000}/report.json \
  --names "parent (model.pt)" "+6000 n1, noise 2e-2" "+6000 n1, noise 5e-3" "+1000 n1, noise 2e-2 carried" \
  "+6000 n1, noise 2e-2 carried" --steps 1 500 | tee "$HERE/results.md"
write_times "$HERE/wall_times.json"
