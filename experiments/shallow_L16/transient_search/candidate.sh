#!/usr/bin/env bash
# The seed-1 model of early_fraction 0.5 / early_window 16 (seed_check.sh) judged like every round: on val32 against
# round 7 (lib.sh ahead_on_target) and, only if it is ahead there, it, round 7 and the original on the test split
# (lib.sh shallow_candidate; outputs in f0.5_w16/seed1/). Run after seed_check.sh.
#   bash experiments/shallow_L16/transient_search/candidate.sh   (~3 min on 2 CPU cores; WORK / SHALLOW_DATA as for run.sh)
SEARCH=$(cd "$(dirname "$0")" && pwd)
source "$SEARCH/../../lib.sh"
HERE=$SEARCH/f0.5_w16/seed1
WORK=${WORK:-$SEARCH/work}/f0.5_w16
SHALLOW_DATA=${SHALLOW_DATA:-$SEARCH/../work/data}
cd "$ROOT"

BASE=$ROUND7_BASE shallow_candidate seed1 "round 8 candidate (0.5 / 16, seed 1)" "$WORK/calibrated_seed1.pt" "$SHALLOW_DATA"
write_times "$HERE/wall_times_test.json"
