#!/usr/bin/env bash
# Shallow quench (g 0.5 -> 0.8), L = 16, round 7 candidate: round 6's continuation without dropout. Round 6
# (../continued) ran round 5's n_step-8 fine-tune a second time; this runs it again from round 5's model with
# dropout 0 instead of 0.2 and nothing else changed (train_no_dropout_n8.yaml says why), so the recipe's budget is
# round 6's (114 min of training on 2 cores). It is judged like every round:
#   1. train_no_dropout_n8.yaml: 7,200 n_step-8 steps on 2 ranks x 64 from ../budget/model.pt (~45 min);
#   2. its last checkpoint group-averaged and rate-calibrated exactly as rounds 4-6 (lib.sh shallow_finetune);
#   3. it, round 6 and the original on the 32 validation trajectories of another seed; only if it is ahead of round 6
#      there (lib.sh ahead_on_target), all three on the test split (lib.sh shallow_candidate, BASE = round 6).
#   bash experiments/shallow_L16/no_dropout/run.sh   (~55 min on 2 CPU cores; WORK=DIR for the large files;
#   SHALLOW_DATA=DIR to reuse ../run.sh's data set, default its work/data)
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/../../lib.sh"
WORK=${WORK:-$HERE/work}
SHALLOW_DATA=${SHALLOW_DATA:-$HERE/../work/data}
ROUND5=$ROOT/experiments/shallow_L16/budget/model.pt
cd "$ROOT"

shallow_round no_dropout train_no_dropout_n8.yaml "$ROUND5" no_dropout "round 7 candidate (no dropout)" \
  "round6:$ROOT/experiments/shallow_L16/continued/model.pt:round 6 (continued)"
