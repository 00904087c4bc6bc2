#!/usr/bin/env bash
# Shallow quench (g 0.5 -> 0.8), L = 16: the chosen model's recipe (round 8) from nothing, in one script. Rounds 5, 6
# and 8 ran as separate experiments, each starting from the previous round's committed model; here the four
# trainings run back to back, each from the model the previous stage made:
#   1. the shallow set; round 5's single-step stage (../budget/train_n1.yaml: 24,000 steps on 2 ranks x 64) and its
#      checkpoint with the best 1200-step score on the 4 validation trajectories;
#   2. round 5's n_step-8 fine-tune from it (../budget/train_finetune_n8.yaml: 7,200 steps), its last checkpoint
#      group-averaged and rate-calibrated on validation (lib.sh shallow_finetune);
#   3. round 6's continuation from that (../continued/train_continue_n8.yaml: 7,200 steps), calibrated the same way;
#   4. round 8's transient fine-tune from that (../transient/train_transient_n8.yaml with early_fraction 0.5,
#      early_window 16, seed 1: 1,800 steps), calibrated the same way: model.pt;
#   5. it, the committed round 8 and the original on the test split (results.md, eval*/) and each one's target
#      checks against the original (target.md): does the recipe reproduce the chosen model?
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
