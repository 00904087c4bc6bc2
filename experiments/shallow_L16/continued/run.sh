#!/usr/bin/env bash
# Shallow quench (g 0.5 -> 0.8), L = 16, round 6: round 5's fine-tune continued. Round 5 (../budget) doubled round 4's
# windows and took two checkpoints from the original; its notes name more windows as the next lever, and the largest
# shortfall against the original is in n_step-8 windows (round 5 0.92 M, the original 21 M). This round spends the
# rest of the ~2 h recipe budget (round 5: 71 min of training) on them:
#   1. train_continue_n8.yaml: 7,200 more n_step-8 steps on 2 ranks x 64 from round 5's model (1.84 M in all, ~45 min);
#   2. its last checkpoint, group-averaged and rate-calibrated exactly as rounds 4 and 5 (--symmetrize --score balanced);
#   3. it, round 5 and the original on the 32 validation trajectories of another seed; only if it is ahead of round 5
#      there (lib.sh ahead_on_target: more target checks met against the original, or as many and a better balanced
#      score), all three on the test split (lib.sh shallow_candidate, BASE=round 5). notes.md says how this ran.
# seed_check.sh repeats stages 1-2 with another seed and scores it on the same 32 validation trajectories.
#   bash experiments/shallow_L16/continued/run.sh   (~55 min on 2 CPU cores; WORK=DIR for the large files;
#   SHALLOW_DATA=DIR to reuse ../run.sh's data set, default its work/data)
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/../../lib.sh"
WORK=${WORK:-$HERE/work}
SHALLOW_DATA=${SHALLOW_DATA:-$HERE/../work/data}
ROUND5=$ROOT/experiments/shallow_L16/budget/model.pt
cd "$ROOT"

shallow_round continue train_continue_n8.yaml "$ROUND5" continued "round 6 (continued)" "round5:$ROUND5:round 5 (budget)"
