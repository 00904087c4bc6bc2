#!/usr/bin/env bash
# Shallow quench (g 0.5 -> 0.8), L = 16, round 8 candidate: round 7's transient fine-tune without dropout. Round 7's
# lost rho_diag checks sit on its one-step error, which dropout 0 lowered (../no_dropout); round 7's transient windows
# fixed the phase that dropout 0 lost. train_transient_no_dropout_n8.yaml says more. Judged like every round:
#   1. train_transient_no_dropout_n8.yaml: 1,800 n_step-8 steps on 2 ranks x 64 from ../continued/model.pt (~13 min);
#   2. its last checkpoint group-averaged and rate-calibrated exactly as rounds 4-7 (lib.sh shallow_finetune);
#   3. it, round 7 and the original on the 32 validation trajectories of another seed; only if it is ahead of round 7
#      there (lib.sh ahead_on_target), all three on the test split (lib.sh shallow_candidate, BASE = round 7).
#   bash experiments/shallow_L16/transient_no_dropout/run.sh   (~22 min on 2 CPU cores; WORK=DIR for the large
#   files; SHALLOW_DATA=DIR to reuse ../run.sh's data set, default its work/data)
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/../../lib.sh"
WORK=${WORK:-$HERE/work}
SHALLOW_DATA=${SHALLOW_DATA:-$HERE/../work/data}
cd "$ROOT"

shallow_round transient_no_dropout train_transient_no_dropout_n8.yaml \
  "$ROOT/experiments/shallow_L16/continued/model.pt" transient_no_dropout "round 8 candidate (transient, no dropout)" \
  "$ROUND7_BASE"
