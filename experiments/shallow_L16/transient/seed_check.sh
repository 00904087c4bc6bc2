#!/usr/bin/env bash
# Round 7's seed check: its transient fine-tune of round 6's model again with seed 1, calibrated the same way and scored
# on the 32 validation trajectories (lib.sh shallow_seed_check; outputs in seed1/). Run after run.sh.
#   bash experiments/shallow_L16/transient/seed_check.sh   (~18 min on 2 CPU cores; WORK / SHALLOW_DATA as for run.sh)
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/../../lib.sh"
WORK=${WORK:-$HERE/work}
SHALLOW_DATA=${SHALLOW_DATA:-$HERE/../work/data}
cd "$ROOT"
TRAIN=("${TRAIN_2RANKS[@]}")

shallow_seed_check transient train_transient_n8.yaml "$ROOT/experiments/shallow_L16/continued/model.pt" 1
write_times "$HERE/seed1/wall_times.json"
