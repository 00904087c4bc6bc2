#!/usr/bin/env bash
# The transient search's best aggregate (early_fraction 0.5, early_window 16: balanced -2.680 on val32 against round
# 7's -2.585) again with seed 1, calibrated the same way and scored on the 32 validation trajectories
# (lib.sh shallow_seed_check; outputs in f0.5_w16/seed1/). Run after run.sh.
#   bash experiments/shallow_L16/transient_search/seed_check.sh   (~8 min on 2 CPU cores; WORK / SHALLOW_DATA as
#   for run.sh)
SEARCH=$(cd "$(dirname "$0")" && pwd)
source "$SEARCH/../../lib.sh"
HERE=$SEARCH/f0.5_w16
WORK=${WORK:-$SEARCH/work}/f0.5_w16
SHALLOW_DATA=${SHALLOW_DATA:-$SEARCH/../work/data}
cd "$ROOT"
TRAIN=("${TRAIN_2RANKS[@]}")

shallow_seed_check f0.5_w16 "$TRANSIENT_CONFIG" "$ROUND6_MODEL" 1 curriculum.early_fraction=0.5 curriculum.early_window=16
write_times "$HERE/seed1/wall_times.json"
