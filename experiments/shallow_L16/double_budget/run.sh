#!/usr/bin/env bash
# Shallow quench (g 0.5 -> 0.8), L = 16: does twice the training win the checks round 8 loses? Round 8's recipe from
# nothing (lib.sh round8_recipe) with its single-step stage and both n_step-8 stages twice as long: 48,000 + 14,400 +
# 14,400 steps on 2 ranks x 64, then the same 1,800-step transient fine-tune. Round 5 doubled round 4's windows and
# named "2x again" as the next point on the cost curve; on this project's current VM it fits the issue's ~2 h.
# The model is judged on the 32 validation trajectories of another seed against round 8 (lib.sh shallow_candidate,
# BASE = round 8) and goes to the test split only where it is ahead there.
#   bash experiments/shallow_L16/double_budget/run.sh   (~1.6 h of training on the 2-core VM;
#   WORK=DIR for the large files; SHALLOW_DATA=DIR to reuse a generated shallow set, default WORK/data)
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/../../lib.sh"
WORK=${WORK:-$HERE/work}
SHALLOW_DATA=${SHALLOW_DATA:-$WORK/data}
cd "$ROOT"

round8_recipe 2
BASE=$ROUND8_BASE shallow_candidate round9 "2x budget" "$WORK/round8.pt" "$SHALLOW_DATA"
write_times "$HERE/wall_times.json"
