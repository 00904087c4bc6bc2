#!/usr/bin/env bash
# Shallow quench (g 0.5 -> 0.8), L = 16: the chosen model's recipe (round 8) from nothing, in one script. Rounds 5, 6
# and 8 ran as separate experiments, each starting from the previous round's committed model; here their four
# trainings run back to back, each from the model the previous stage made (lib.sh round8_recipe 1: generate, 24,000
# single-step steps, 7,200 + 7,200 n_step-8 steps, 1,800 transient steps, each stage chosen or calibrated on
# validation). Then it, the committed round 8 and the original on the test split (results.md, eval*/) and each
# one's target checks against the original (target.md): does the recipe reproduce the chosen model?
# Every choice (checkpoint, rate) is made on validation; the test split is read once, at the end.
#   bash experiments/shallow_L16/from_nothing/run.sh   (~1 h on this project's 2-core VM, ~2.3 h on slower ones;
#   WORK=DIR for the large files; SHALLOW_DATA=DIR to reuse a generated shallow set, default WORK/data)
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/../../lib.sh"
WORK=${WORK:-$HERE/work}
SHALLOW_DATA=${SHALLOW_DATA:-$WORK/data}
cd "$ROOT"

round8_recipe 1
cp "$WORK/round8.pt" "$HERE/model.pt"
shallow_test "$SHALLOW_DATA" "eval:$HERE/model.pt:round 8 from nothing" \
  "eval_round8:${ROUND8_BASE#*:}" "eval_reference:$REFERENCE/tiny-quench_0p5_0p8-L_16:original"
against_original "$HERE/eval_reference/report.json" eval:"$HERE/eval/report.json" \
  eval_round8:"$HERE/eval_round8/report.json" | tee "$HERE/target.md"
write_times "$HERE/wall_times.json"
