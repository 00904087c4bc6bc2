#!/usr/bin/env bash
# Shallow quench (g 0.5 -> 0.8), L = 16: which of the target checks could another test split of this size turn?
# Round 8 (the chosen model) and the original on the 64 test trajectories x 1200 steps, their reports keeping each
# rollout's errors (mse_by_rollout), and round 8's target checks against the original with each RMSE ratio's paired
# bootstrap interval over the rollouts (results target; docs/evaluation.md). No model is trained or chosen here.
#   bash experiments/shallow_L16/sampling_noise/run.sh   (~1 min on 2 CPU cores with the shallow set generated;
#   SHALLOW_DATA=DIR for that set, default ../work/data, generated when missing)
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/../../lib.sh"
WORK=${WORK:-$HERE/work}
SHALLOW_DATA=${SHALLOW_DATA:-$HERE/../work/data}
cd "$ROOT"

shallow_generate
shallow_test "$SHALLOW_DATA" "eval_round8:${ROUND8_BASE#*:}" \
  "eval_reference:$REFERENCE/tiny-quench_0p5_0p8-L_16:original"
against_original "$HERE/eval_reference/report.json" round8:"$HERE/eval_round8/report.json" | tee "$HERE/target.md"
write_times "$HERE/wall_times.json"
