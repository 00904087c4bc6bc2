#!/usr/bin/env bash
# Probe for a weight soup (session 18): the two seeds of round 6's continuation (../continued/run.sh, seed 0, and
# ../continued/seed_check.sh, seed 1; both fine-tuned from round 5's model) averaged weight by weight into ONE tiny
# CNN (results average, w = 0.5 / 0.5, fixed before anything was read), group-averaged and rate-calibrated exactly
# as round 6 was, then judged on the 32 validation trajectories against round 6 (lib.sh shallow_val32_vs_base). It
# never reads the test split: with both seeds the recipe costs 71 + 2 x 43 min of training, over the ~2 h budget.
# It asks whether averaging two seeds' weights helps at all before a recipe within the budget (two half-length
# seeds side by side) is spent on it. It did not (notes.md), so that recipe was not run.
#   bash experiments/shallow_L16/soup/probe.sh   (~7 min on 2 CPU cores after both continuations; CONTINUED_WORK=DIR
#   their work directory, default ../continued/work; SHALLOW_DATA=DIR as for ../continued/run.sh)
SOUP=$(cd "$(dirname "$0")" && pwd)
source "$SOUP/../../lib.sh"
HERE=$SOUP/probe  # the probe's small outputs
WORK=${WORK:-$SOUP/work/probe}
CONTINUED_WORK=${CONTINUED_WORK:-$SOUP/../continued/work}
SHALLOW_DATA=${SHALLOW_DATA:-$SOUP/../work/data}
mkdir -p "$HERE" "$WORK"
cd "$ROOT"

stage average "$PY" -m holstein_dist.results average "$CONTINUED_WORK"/run_continue{,_seed1}/checkpoints/step-00007200.pt \
  --out "$WORK/soup.pt"
calibrate_twice "$WORK/soup.pt" "$WORK/calibrated.pt" 0.012 13 --data "$SHALLOW_DATA" --split val --steps 1200 \
  --symmetrize --score balanced
BASE="round6:$ROOT/experiments/shallow_L16/continued/model.pt:round 6 (continued)" \
  shallow_val32_vs_base soup "soup of two seeds" "$WORK/calibrated.pt" || true
write_times "$HERE/wall_times.json"
