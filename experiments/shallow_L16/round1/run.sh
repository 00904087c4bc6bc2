#!/usr/bin/env bash
# Shallow quench (g 0.5 -> 0.8), L = 16, ROUND 1 (superseded by ../run.sh): the tiny standard CNN with a
# curriculum of n_step 1 / 8 / 16 stages each restarting at lr 1e-3, vs the original published tiny model, both
# evaluated on the same 64 test trajectories x 1200 steps. Kept because round 2's recipe was learned from it.
#   bash experiments/shallow_L16/round1/run.sh   (~2 h on 2 CPU cores; WORK=DIR for the large files)
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/../../lib.sh"
WORK=${WORK:-$HERE/work}
cd "$ROOT"

stage generate "$PY" -m holstein_dist.generate --config configs/data/shallow_L16.yaml --out "$WORK/data" --workers 2
stage train "$PY" -m holstein_dist.train --config "$HERE/train.yaml" data="$WORK/data" run_dir="$WORK/run"
stage export "$PY" -c "from holstein_dist.checkpoints import export_model; export_model('$WORK/run', '$HERE/model.pt')"
shallow_vs_original "$WORK/data"
"$PY" -m holstein_dist.results curve "$WORK/run" --out "$HERE/training_curve.csv"
# Error vs training time on long rollouts of the validation split, one row per kept checkpoint (every 1000 steps).
"$PY" -m holstein_dist.results rollout-curve "$WORK/run" --data "$WORK/data" --split val --steps 1200 \
  --work "$WORK/rollout_curve" --out "$HERE/rollout_curve_val.csv"
write_times "$HERE/wall_times.json"
